//! The store: a directory of collections, each a sequence of generations; the only module that
//! touches sled or the files of a store (names in [`crate::keys`]), apart from the A/B event
//! log that [`crate::events`] keeps beside the generations.
//!
//! ```text
//! STORE/attune-store.json
//! STORE/collections/NAME/collection.json        manifest: current and building generation
//! STORE/collections/NAME/gen-000007/db/         sled: documents, ids, vectors per space, fields
//! STORE/collections/NAME/gen-000007/tuned.graph frozen HNSW graph of space "tuned"
//! ```
//!
//! **Generations.** A re-index job writes a new generation directory while the current one keeps
//! serving, and switches by rewriting `collection.json` (temporary file, fsync, rename, fsync of
//! the directory): the manifest is the commit point, so after a crash the store serves either
//! the previous generation or the finished new one. Each generation has its own sled database,
//! so a process serving generation N and a job writing N+1 never contend for sled's lock.
//!
//! **Truth and derived data.** Vectors in sled are the source of truth. Graph files are derived:
//! a graph that is missing, corrupt, or built for another model is rebuilt from the vectors when
//! the collection opens. Node numbers are never reused and a node's vectors never change, so a
//! graph stays valid as documents change: deleted nodes are filtered out during search
//! (tombstones) and nodes added after the graph was built are searched exactly (the delta) until
//! compaction rebuilds the graph.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::corpus::Document;
use crate::distance::{dot, normalize};
use crate::error::{IndexError, Result};
use crate::filter::{indexed_pairs, scalar_key, value_of_key, Filter};
use crate::graph::{Graph, GraphPoint, HnswParams, DEAD_LABEL};
use crate::identity::ModelIdentity;
use crate::keys;

/// A collection's manifest (`collection.json`); rewriting it atomically is how generations
/// switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionManifest {
    /// Collection name.
    pub name: String,
    /// The generation being served, if a build has finished.
    pub current: Option<u64>,
    /// A generation being built (resumed by the next build after a crash).
    pub building: Option<u64>,
    /// The generation served before `current` (kept for inspection; removed by the next build).
    #[serde(default)]
    pub previous: Option<u64>,
    /// HNSW parameters of the current generation.
    pub hnsw: HnswParams,
    /// Spaces of the current generation and their models.
    pub spaces: BTreeMap<String, ModelIdentity>,
    /// Documents in the current generation when it was committed.
    pub documents: usize,
    /// When the current generation was committed (seconds since the Unix epoch).
    pub committed_unix: u64,
}

/// A stored document: what the corpus gave, plus the hash of its embedded text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDocument {
    /// External id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Body text.
    pub text: String,
    /// Metadata object.
    pub metadata: Map<String, Value>,
    /// Hex of [`content_hash`] of the embedded text.
    pub hash: String,
}

impl StoredDocument {
    fn new(document: &Document, hash: &[u8; 16]) -> Self {
        Self {
            id: document.id.clone(),
            title: document.title.clone(),
            text: document.text.clone(),
            metadata: document.metadata.clone(),
            hash: hex(hash),
        }
    }

    pub(crate) fn same_as(&self, document: &Document, hash: &[u8; 16]) -> bool {
        self.hash == hex(hash)
            && self.title == document.title
            && self.text == document.text
            && self.metadata == document.metadata
    }
}

/// The first 16 bytes of SHA-256 of the text that is embedded: two documents with equal hashes
/// get equal vectors from the same model.
pub fn content_hash(embedding_text: &str) -> [u8; 16] {
    let digest = Sha256::digest(embedding_text.as_bytes());
    digest[..16].try_into().expect("16 bytes")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a collection or space name: 1–64 of `[A-Za-z0-9_.-]`, not starting with a dot.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason| IndexError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > 64 {
        return Err(invalid("names are 1 to 64 characters"));
    }
    if name.starts_with('.') {
        return Err(invalid("names do not start with a dot"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(invalid("names use letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct StoreMarker {
    format: u32,
}

impl Store {
    /// Opens the store at `root`, creating it when the directory is missing or empty.
    pub fn open_or_create(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join(keys::COLLECTIONS_DIR))
            .map_err(|e| IndexError::io(root, e))?;
        let marker = root.join(keys::STORE_FILE);
        if !marker.exists() {
            let body = serde_json::to_vec(&StoreMarker {
                format: keys::STORE_FORMAT,
            })
            .expect("marker serializes");
            write_atomically(&marker, &body)?;
        }
        Self::open(root)
    }

    /// Opens an existing store; a directory that is not one is an error naming it.
    pub fn open(root: &Path) -> Result<Self> {
        let marker = root.join(keys::STORE_FILE);
        let bytes = match fs::read(&marker) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IndexError::NotAStore {
                    path: root.to_path_buf(),
                })
            }
            Err(e) => return Err(IndexError::io(&marker, e)),
        };
        let parsed: StoreMarker =
            serde_json::from_slice(&bytes).map_err(|e| IndexError::CorruptRecord {
                what: marker.display().to_string(),
                reason: e.to_string(),
            })?;
        if parsed.format != keys::STORE_FORMAT {
            return Err(IndexError::CorruptRecord {
                what: marker.display().to_string(),
                reason: format!(
                    "store format {}, this attune reads {}",
                    parsed.format,
                    keys::STORE_FORMAT
                ),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names of all collections (built or being built), sorted.
    pub fn collection_names(&self) -> Result<Vec<String>> {
        let dir = self.root.join(keys::COLLECTIONS_DIR);
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| IndexError::io(&dir, e))? {
            let entry = entry.map_err(|e| IndexError::io(&dir, e))?;
            if entry.path().join(keys::MANIFEST_FILE).exists() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    pub(crate) fn collection_dir(&self, name: &str) -> PathBuf {
        self.root.join(keys::COLLECTIONS_DIR).join(name)
    }

    pub(crate) fn generation_dir(&self, name: &str, generation: u64) -> PathBuf {
        self.collection_dir(name)
            .join(format!("{}{generation:06}", keys::GENERATION_PREFIX))
    }

    fn unknown(&self, name: &str) -> IndexError {
        let available = self
            .collection_names()
            .map(|names| {
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            })
            .unwrap_or_else(|_| "unreadable".into());
        IndexError::UnknownCollection {
            name: name.to_string(),
            store: self.root.clone(),
            available,
        }
    }

    /// The manifest of collection `name`.
    pub fn manifest(&self, name: &str) -> Result<CollectionManifest> {
        validate_name(name)?;
        let path = self.collection_dir(name).join(keys::MANIFEST_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.unknown(name)),
            Err(e) => return Err(IndexError::io(&path, e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| IndexError::CorruptRecord {
            what: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes a collection's manifest atomically (the commit point of a generation switch).
    pub(crate) fn write_manifest(&self, manifest: &CollectionManifest) -> Result<()> {
        let dir = self.collection_dir(&manifest.name);
        fs::create_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
        let body = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        write_atomically(&dir.join(keys::MANIFEST_FILE), &body)
    }

    /// Opens the current generation of collection `name` for search and updates.
    pub fn open_collection(&self, name: &str) -> Result<Collection> {
        self.open_collection_with(name, CompactionPolicy::default())
    }

    /// [`Store::open_collection`] with an explicit compaction policy.
    pub fn open_collection_with(&self, name: &str, policy: CompactionPolicy) -> Result<Collection> {
        let manifest = self.manifest(name)?;
        let generation = manifest.current.ok_or_else(|| IndexError::NotBuilt {
            name: name.to_string(),
        })?;
        Collection::open(self, manifest, generation, policy)
    }

    /// Removes collection `name` and all its generations. Returns false when it did not exist.
    pub fn drop_collection(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        let dir = self.collection_dir(name);
        if !dir.exists() {
            return Ok(false);
        }
        // Remove the manifest first: a crash halfway leaves no half-collection that looks built.
        let manifest = dir.join(keys::MANIFEST_FILE);
        if manifest.exists() {
            fs::remove_file(&manifest).map_err(|e| IndexError::io(&manifest, e))?;
        }
        fs::remove_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
        Ok(true)
    }

    /// Generation numbers that have a directory in collection `name`, ascending.
    pub(crate) fn generation_numbers(&self, name: &str) -> Result<Vec<u64>> {
        let dir = self.collection_dir(name);
        let mut numbers = Vec::new();
        if !dir.exists() {
            return Ok(numbers);
        }
        for entry in fs::read_dir(&dir).map_err(|e| IndexError::io(&dir, e))? {
            let entry = entry.map_err(|e| IndexError::io(&dir, e))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = file_name
                .strip_prefix(keys::GENERATION_PREFIX)
                .and_then(|s| s.parse::<u64>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// Removes generation directories that are neither current, previous nor building.
    pub(crate) fn remove_stale_generations(&self, manifest: &CollectionManifest) -> Result<()> {
        for n in self.generation_numbers(&manifest.name)? {
            if Some(n) != manifest.current
                && Some(n) != manifest.building
                && Some(n) != manifest.previous
            {
                let dir = self.generation_dir(&manifest.name, n);
                fs::remove_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
            }
        }
        Ok(())
    }

    /// Bytes on disk under collection `name` (every generation).
    pub fn disk_bytes(&self, name: &str) -> Result<u64> {
        dir_bytes(&self.collection_dir(name))
    }
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for entry in fs::read_dir(dir).map_err(|e| IndexError::io(dir, e))? {
        let entry = entry.map_err(|e| IndexError::io(dir, e))?;
        let meta = entry
            .metadata()
            .map_err(|e| IndexError::io(&entry.path(), e))?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, then fsyncs the
/// directory: readers see the old or the new content, never a mix.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| IndexError::io(&tmp, e))?;
    file.sync_all().map_err(|e| IndexError::io(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))?;
    crate::fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// A unit vector of one space.
type SpaceVector = (String, Vec<f32>);

/// A stored vector: node, content hash, unit vector.
pub(crate) type StoredVector = (u32, [u8; 16], Vec<f32>);

/// One document version to write into a generation database.
pub(crate) struct DocumentWrite<'a> {
    pub document: &'a Document,
    pub hash: [u8; 16],
    /// Unit vectors by space; spaces not given keep their stored vector (content unchanged).
    pub vectors: Vec<(&'a str, &'a [f32])>,
}

/// What a write did to one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// New id: written at a new node.
    Added { node: u32 },
    /// New content: a new node; the old one is gone.
    Replaced { node: u32, old: u32 },
    /// Same content (metadata may have changed): same node.
    Kept { node: u32 },
}

/// The sled database of one generation.
pub(crate) struct GenerationDb {
    path: PathBuf,
    db: sled::Db,
    documents: sled::Tree,
    ids: sled::Tree,
    fields: sled::Tree,
    meta: sled::Tree,
}

fn node_key(node: u32) -> [u8; 4] {
    node.to_be_bytes()
}

fn node_from(bytes: &[u8], what: &str) -> Result<u32> {
    let array: [u8; 4] = bytes.try_into().map_err(|_| IndexError::CorruptRecord {
        what: what.to_string(),
        reason: format!("node key of {} bytes", bytes.len()),
    })?;
    Ok(u32::from_be_bytes(array))
}

fn field_prefix(field: &str, value_key: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(field.len() + value_key.len() + 6);
    key.extend_from_slice(field.as_bytes());
    key.push(0);
    key.extend_from_slice(value_key.as_bytes());
    key.push(0);
    key
}

impl GenerationDb {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(keys::DATABASE_DIR);
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(128 << 20)
            .open()
            .map_err(|e| IndexError::storage(&path, e))?;
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| IndexError::storage(&path, e))
        };
        Ok(Self {
            documents: tree(keys::TREE_DOCUMENTS)?,
            ids: tree(keys::TREE_IDS)?,
            fields: tree(keys::TREE_FIELDS)?,
            meta: tree(keys::TREE_META)?,
            db,
            path,
        })
    }

    fn err(&self, e: sled::Error) -> IndexError {
        IndexError::storage(&self.path, e)
    }

    fn vectors(&self, space: &str) -> Result<sled::Tree> {
        self.db
            .open_tree(format!("{}{space}", keys::TREE_VECTORS_PREFIX))
            .map_err(|e| self.err(e))
    }

    pub(crate) fn drop_space(&self, space: &str) -> Result<()> {
        self.db
            .drop_tree(format!("{}{space}", keys::TREE_VECTORS_PREFIX))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(crate) fn clear_space(&self, space: &str) -> Result<()> {
        self.vectors(space)?.clear().map_err(|e| self.err(e))
    }

    pub(crate) fn spaces(&self) -> Result<BTreeMap<String, ModelIdentity>> {
        match self.meta.get(keys::KEY_SPACES).map_err(|e| self.err(e))? {
            None => Ok(BTreeMap::new()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| IndexError::CorruptRecord {
                what: format!("{} spaces", self.path.display()),
                reason: e.to_string(),
            }),
        }
    }

    pub(crate) fn set_spaces(&self, spaces: &BTreeMap<String, ModelIdentity>) -> Result<()> {
        let body = serde_json::to_vec(spaces).expect("spaces serialize");
        self.meta
            .insert(keys::KEY_SPACES, body)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Reserves `count` fresh node numbers (persisted before they are used, so a crash never
    /// hands one out twice).
    fn reserve_nodes(&self, count: u32) -> Result<u32> {
        let first = match self
            .meta
            .get(keys::KEY_NEXT_NODE)
            .map_err(|e| self.err(e))?
        {
            Some(bytes) => node_from(&bytes, "next node")?,
            None => 0,
        };
        let next = first
            .checked_add(count)
            .ok_or_else(|| IndexError::CorruptRecord {
                what: "next node".into(),
                reason: "node numbers exhausted (2^32); rebuild the collection".into(),
            })?;
        self.meta
            .insert(keys::KEY_NEXT_NODE, &node_key(next))
            .map_err(|e| self.err(e))?;
        Ok(first)
    }

    pub(crate) fn node_of(&self, id: &str) -> Result<Option<u32>> {
        match self.ids.get(id.as_bytes()).map_err(|e| self.err(e))? {
            Some(bytes) => Ok(Some(node_from(&bytes, "id index")?)),
            None => Ok(None),
        }
    }

    pub(crate) fn document(&self, node: u32) -> Result<Option<StoredDocument>> {
        match self
            .documents
            .get(node_key(node))
            .map_err(|e| self.err(e))?
        {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| IndexError::CorruptRecord {
                        what: format!("document at node {node}"),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// The stored vector of `node` in `space` and the content hash it was embedded from.
    pub(crate) fn vector(&self, space: &str, node: u32) -> Result<Option<([u8; 16], Vec<f32>)>> {
        let tree = self.vectors(space)?;
        match tree.get(node_key(node)).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => decode_vector(&bytes, node).map(Some),
        }
    }

    /// Every live document: (id, node).
    pub(crate) fn live(&self) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::with_capacity(self.ids.len());
        for item in self.ids.iter() {
            let (key, value) = item.map_err(|e| self.err(e))?;
            out.push((
                String::from_utf8_lossy(&key).into_owned(),
                node_from(&value, "id index")?,
            ));
        }
        Ok(out)
    }

    /// Every stored vector of `space`: (node, hash, vector), ascending by node.
    pub(crate) fn all_vectors(&self, space: &str) -> Result<Vec<StoredVector>> {
        let tree = self.vectors(space)?;
        let mut out = Vec::with_capacity(tree.len());
        for item in tree.iter() {
            let (key, value) = item.map_err(|e| self.err(e))?;
            let node = node_from(&key, "vector key")?;
            let (hash, vector) = decode_vector(&value, node)?;
            out.push((node, hash, vector));
        }
        Ok(out)
    }

    /// Writes document versions. Order inside the batch: vectors, documents, field index, and
    /// the id index last, so that a crash halfway leaves at worst unreferenced nodes (swept by
    /// [`GenerationDb::sweep`]), never an id pointing at a node without its data.
    pub(crate) fn write(&self, writes: &[DocumentWrite<'_>]) -> Result<Vec<WriteOutcome>> {
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut fresh_needed = 0u32;
        let mut existing = Vec::with_capacity(writes.len());
        for write in writes {
            let node = self.node_of(&write.document.id)?;
            let stored = match node {
                Some(node) => self.document(node)?.map(|doc| (node, doc)),
                None => None,
            };
            let keeps = stored
                .as_ref()
                .is_some_and(|(_, doc)| doc.hash == hex(&write.hash));
            if !keeps {
                fresh_needed += 1;
            }
            existing.push((stored, keeps));
        }
        let mut next = if fresh_needed > 0 {
            self.reserve_nodes(fresh_needed)?
        } else {
            0
        };
        let mut vector_batches: BTreeMap<&str, sled::Batch> = BTreeMap::new();
        let mut documents = sled::Batch::default();
        let mut fields = sled::Batch::default();
        let mut ids = sled::Batch::default();
        let mut removed_nodes: Vec<(u32, StoredDocument)> = Vec::new();
        for (write, (stored, keeps)) in writes.iter().zip(existing) {
            let outcome = match (&stored, keeps) {
                (Some((node, _)), true) => WriteOutcome::Kept { node: *node },
                (Some((old, _)), false) => {
                    let node = next;
                    next += 1;
                    WriteOutcome::Replaced { node, old: *old }
                }
                (None, _) => {
                    let node = next;
                    next += 1;
                    WriteOutcome::Added { node }
                }
            };
            let node = match outcome {
                WriteOutcome::Added { node }
                | WriteOutcome::Replaced { node, .. }
                | WriteOutcome::Kept { node } => node,
            };
            for (space, vector) in &write.vectors {
                let mut value = Vec::with_capacity(16 + vector.len() * 4);
                value.extend_from_slice(&write.hash);
                vector
                    .iter()
                    .for_each(|x| value.extend_from_slice(&x.to_le_bytes()));
                vector_batches
                    .entry(space)
                    .or_default()
                    .insert(&node_key(node), value);
            }
            let record = StoredDocument::new(write.document, &write.hash);
            documents.insert(
                &node_key(node),
                serde_json::to_vec(&record).expect("document serializes"),
            );
            if let Some((_, old_doc)) = &stored {
                // The old entries of this node (Kept) or of the old node (Replaced) go.
                let old_node = match outcome {
                    WriteOutcome::Replaced { old, .. } => old,
                    _ => node,
                };
                for (field, value) in indexed_pairs(&old_doc.metadata) {
                    let mut key = field_prefix(&field, &value);
                    key.extend_from_slice(&node_key(old_node));
                    fields.remove(key);
                }
                if let WriteOutcome::Replaced { old, .. } = outcome {
                    removed_nodes.push((old, old_doc.clone()));
                }
            }
            for (field, value) in indexed_pairs(&write.document.metadata) {
                let mut key = field_prefix(&field, &value);
                key.extend_from_slice(&node_key(node));
                fields.insert(key, &[] as &[u8]);
            }
            ids.insert(write.document.id.as_bytes(), &node_key(node));
            outcomes.push(outcome);
        }
        for (space, batch) in vector_batches {
            self.vectors(space)?
                .apply_batch(batch)
                .map_err(|e| self.err(e))?;
        }
        self.documents
            .apply_batch(documents)
            .map_err(|e| self.err(e))?;
        self.fields.apply_batch(fields).map_err(|e| self.err(e))?;
        self.ids.apply_batch(ids).map_err(|e| self.err(e))?;
        // Old nodes are unreferenced now; drop their data.
        for (old, _) in removed_nodes {
            self.remove_node_data(old)?;
        }
        Ok(outcomes)
    }

    /// Deletes document `id`; returns its node when it existed.
    pub(crate) fn delete(&self, id: &str) -> Result<Option<u32>> {
        let Some(node) = self.node_of(id)? else {
            return Ok(None);
        };
        self.ids.remove(id.as_bytes()).map_err(|e| self.err(e))?;
        if let Some(doc) = self.document(node)? {
            for (field, value) in indexed_pairs(&doc.metadata) {
                let mut key = field_prefix(&field, &value);
                key.extend_from_slice(&node_key(node));
                self.fields.remove(key).map_err(|e| self.err(e))?;
            }
        }
        self.remove_node_data(node)?;
        Ok(Some(node))
    }

    fn remove_node_data(&self, node: u32) -> Result<()> {
        self.documents
            .remove(node_key(node))
            .map_err(|e| self.err(e))?;
        for name in self.db.tree_names() {
            if name.starts_with(keys::TREE_VECTORS_PREFIX.as_bytes()) {
                let tree = self.db.open_tree(&name).map_err(|e| self.err(e))?;
                tree.remove(node_key(node)).map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// Removes documents, vectors and field entries whose node no id points at (left by a crash
    /// between the writes of one batch). Returns how many nodes were swept.
    pub(crate) fn sweep(&self) -> Result<usize> {
        let live: std::collections::HashSet<u32> =
            self.live()?.into_iter().map(|(_, node)| node).collect();
        let mut swept = std::collections::HashSet::new();
        for item in self.documents.iter() {
            let (key, _) = item.map_err(|e| self.err(e))?;
            let node = node_from(&key, "document key")?;
            if !live.contains(&node) {
                swept.insert(node);
            }
        }
        for name in self.db.tree_names() {
            if name.starts_with(keys::TREE_VECTORS_PREFIX.as_bytes()) {
                let tree = self.db.open_tree(&name).map_err(|e| self.err(e))?;
                for item in tree.iter() {
                    let (key, _) = item.map_err(|e| self.err(e))?;
                    let node = node_from(&key, "vector key")?;
                    if !live.contains(&node) {
                        swept.insert(node);
                    }
                }
            }
        }
        let mut stale_fields = Vec::new();
        for item in self.fields.iter() {
            let (key, _) = item.map_err(|e| self.err(e))?;
            if key.len() >= 4 {
                let node = node_from(&key[key.len() - 4..], "field key")?;
                if !live.contains(&node) {
                    stale_fields.push(key);
                }
            }
        }
        for key in stale_fields {
            self.fields.remove(key).map_err(|e| self.err(e))?;
        }
        for &node in &swept {
            self.remove_node_data(node)?;
        }
        Ok(swept.len())
    }

    /// The metadata index, loaded into memory (one sorted node list per field value).
    fn load_fields(&self) -> Result<FieldIndex> {
        let mut index = FieldIndex::default();
        for item in self.fields.iter() {
            let (key, _) = item.map_err(|e| self.err(e))?;
            let corrupt = || IndexError::CorruptRecord {
                what: "field index".into(),
                reason: format!("malformed key of {} bytes", key.len()),
            };
            if key.len() < 6 || key[key.len() - 5] != 0 {
                return Err(corrupt());
            }
            let node = node_from(&key[key.len() - 4..], "field key")?;
            let head = &key[..key.len() - 5];
            let split = head.iter().position(|&b| b == 0).ok_or_else(corrupt)?;
            let field = String::from_utf8_lossy(&head[..split]).into_owned();
            let value = String::from_utf8_lossy(&head[split + 1..]).into_owned();
            index.postings.entry((field, value)).or_default().push(node);
        }
        // Keys are sorted by field, value, then big-endian node: every list is sorted already.
        Ok(index)
    }

    pub(crate) fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn decode_vector(bytes: &[u8], node: u32) -> Result<([u8; 16], Vec<f32>)> {
    if bytes.len() < 16 || !(bytes.len() - 16).is_multiple_of(4) {
        return Err(IndexError::CorruptRecord {
            what: format!("vector of node {node}"),
            reason: format!("{} bytes", bytes.len()),
        });
    }
    let hash: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
    let vector = bytes[16..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok((hash, vector))
}

/// When a space's graph is rebuilt: once `tombstones + delta ≥ max(min_changes, ratio × graph
/// points)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionPolicy {
    /// Changes (deleted or replaced points in the graph, plus points outside it) below which the
    /// graph is never rebuilt. Default 1,024.
    pub min_changes: usize,
    /// Fraction of the graph's points. Default 0.1.
    pub ratio: f64,
}

impl CompactionPolicy {
    /// True when a graph of `graph_points` with `changes` tombstones and outside points is due
    /// for a rebuild.
    pub fn due(&self, changes: usize, graph_points: usize) -> bool {
        let threshold = (self.ratio * graph_points as f64).ceil() as usize;
        changes > 0 && changes >= threshold.max(self.min_changes)
    }
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            min_changes: 1_024,
            ratio: 0.1,
        }
    }
}

/// Metadata filters in memory: for each (field, canonical value), the nodes that have it,
/// sorted. Lists may hold nodes that are no longer live; searches intersect with the live set.
#[derive(Debug, Default)]
struct FieldIndex {
    postings: HashMap<(String, String), Vec<u32>>,
}

impl FieldIndex {
    fn add(&mut self, node: u32, metadata: &Map<String, Value>) {
        for pair in indexed_pairs(metadata) {
            let list = self.postings.entry(pair).or_default();
            if let Err(at) = list.binary_search(&node) {
                list.insert(at, node);
            }
        }
    }

    fn remove(&mut self, node: u32, metadata: &Map<String, Value>) {
        for pair in indexed_pairs(metadata) {
            if let Some(list) = self.postings.get_mut(&pair) {
                if let Ok(at) = list.binary_search(&node) {
                    list.remove(at);
                }
            }
        }
    }

    /// Nodes passing `filter`, sorted and deduplicated.
    fn matching(&self, filter: &Filter) -> Vec<u32> {
        let mut result: Option<Vec<u32>> = None;
        for clause in &filter.clauses {
            let mut nodes = Vec::new();
            for value in &clause.values {
                if let Some(value_key) = scalar_key(value) {
                    if let Some(list) = self.postings.get(&(clause.field.clone(), value_key)) {
                        nodes.extend_from_slice(list);
                    }
                }
            }
            if clause.values.len() > 1 {
                nodes.sort_unstable();
                nodes.dedup();
            }
            result = Some(match result {
                None => nodes,
                Some(previous) => intersect(&previous, &nodes),
            });
        }
        result.unwrap_or_default()
    }
}

/// A set of node numbers as a bitset.
#[derive(Debug, Clone, Default)]
struct NodeSet {
    words: Vec<u64>,
}

impl NodeSet {
    fn insert(&mut self, node: u32) {
        let word = node as usize / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (node % 64);
    }
    fn remove(&mut self, node: u32) {
        if let Some(w) = self.words.get_mut(node as usize / 64) {
            *w &= !(1 << (node % 64));
        }
    }
    #[inline]
    fn contains(&self, node: u32) -> bool {
        self.words
            .get(node as usize / 64)
            .is_some_and(|w| w & (1 << (node % 64)) != 0)
    }
}

/// One space of an open collection: its graph, the points added since, and where each node's
/// vector is.
struct SpaceIndex {
    identity: ModelIdentity,
    graph: Graph,
    /// node → graph slot (`u32::MAX`: not in the graph), indexed by node number.
    slot_of_node: Vec<u32>,
    /// Live nodes not in the graph, with their vectors (row-major).
    delta_nodes: Vec<u32>,
    delta_vectors: Vec<f32>,
    /// node → position in `delta_nodes`.
    delta_position: HashMap<u32, usize>,
    /// Graph points whose node is no longer live.
    tombstones: usize,
}

impl SpaceIndex {
    /// The graph slot of `node`, if the graph has it.
    #[inline]
    fn slot(&self, node: u32) -> Option<u32> {
        self.slot_of_node
            .get(node as usize)
            .copied()
            .filter(|&slot| slot != u32::MAX)
    }

    fn new(identity: ModelIdentity, graph: Graph) -> Self {
        let len = graph
            .labels()
            .iter()
            .filter(|&&n| n != DEAD_LABEL)
            .map(|&n| n as usize + 1)
            .max()
            .unwrap_or(0);
        let mut slot_of_node = vec![u32::MAX; len];
        for (slot, &node) in graph.labels().iter().enumerate() {
            if node != DEAD_LABEL {
                slot_of_node[node as usize] = slot as u32;
            }
        }
        Self {
            identity,
            graph,
            slot_of_node,
            delta_nodes: Vec::new(),
            delta_vectors: Vec::new(),
            delta_position: HashMap::new(),
            tombstones: 0,
        }
    }

    /// Adds a point outside the graph.
    fn push_delta(&mut self, node: u32, vector: &[f32]) {
        self.delta_position.insert(node, self.delta_nodes.len());
        self.delta_nodes.push(node);
        self.delta_vectors.extend_from_slice(vector);
    }

    /// The vector of `node`, from the graph or the delta.
    fn vector_of(&self, node: u32) -> Option<&[f32]> {
        let dim = self.identity.dim;
        match self.slot(node) {
            Some(slot) => Some(self.graph.vector(slot as usize)),
            None => self
                .delta_position
                .get(&node)
                .map(|&i| &self.delta_vectors[i * dim..(i + 1) * dim]),
        }
    }

    fn changes(&self) -> usize {
        self.tombstones + self.delta_nodes.len()
    }
}

struct State {
    spaces: BTreeMap<String, SpaceIndex>,
    live: NodeSet,
    fields: FieldIndex,
    documents: usize,
}

/// One filterable metadata field of a collection and its most frequent values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Facet {
    /// Top-level metadata field.
    pub field: String,
    /// Distinct values in the collection (`values` may hold fewer).
    pub distinct: usize,
    /// Values, most frequent first.
    pub values: Vec<FacetValue>,
}

/// A value of a [`Facet`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FacetValue {
    /// The value as stored (string, number or boolean).
    pub value: Value,
    /// Live documents with it.
    pub count: usize,
}

/// A search over one space.
#[derive(Debug, Clone)]
pub struct SearchRequest<'a> {
    /// The space to search.
    pub space: &'a str,
    /// The query vector (normalised here).
    pub vector: &'a [f32],
    /// The model that embedded the query; must be the space's model.
    pub model: &'a ModelIdentity,
    /// Results wanted.
    pub k: usize,
    /// Candidate list size; `None` uses the collection's `ef_search`.
    pub ef: Option<usize>,
    /// Metadata filter, applied inside the search.
    pub filter: &'a Filter,
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    /// External id.
    pub id: String,
    /// Cosine similarity to the query.
    pub score: f32,
    /// Title.
    pub title: String,
    /// Metadata.
    pub metadata: Map<String, Value>,
}

/// Filtered searches whose filter passes at most this many live documents (or few enough that
/// scanning them costs less than the graph walk, see `Collection::search`) are answered exactly:
/// a walk under a selective filter must skip almost every point it visits.
pub const EXACT_FILTER_LIMIT: usize = 2_048;

/// Per-space figures of an open collection.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceStats {
    /// Space name.
    pub name: String,
    /// Its model.
    pub model: ModelIdentity,
    /// Points in the graph (live or not).
    pub graph_points: usize,
    /// Graph points deleted or replaced since the graph was built.
    pub tombstones: usize,
    /// Live points outside the graph (searched exactly until compaction).
    pub delta: usize,
}

/// Figures of an open collection.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionStats {
    /// Collection name.
    pub name: String,
    /// Generation served.
    pub generation: u64,
    /// Live documents.
    pub documents: usize,
    /// HNSW parameters.
    pub hnsw: HnswParams,
    /// Spaces.
    pub spaces: Vec<SpaceStats>,
    /// Bytes on disk of the served generation (sled database and graph files).
    pub disk_bytes: u64,
    /// Bytes of sled's database alone.
    pub database_bytes: u64,
}

/// What an upsert did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpsertReport {
    /// New ids.
    pub added: usize,
    /// Ids whose content changed (new vectors).
    pub updated: usize,
    /// Ids whose content was unchanged (metadata or title may have changed; no new vectors).
    pub unchanged: usize,
    /// Spaces whose graph was rebuilt afterwards.
    pub compacted: Vec<String>,
}

/// An upsert: a document and its vectors by space.
#[derive(Debug, Clone)]
pub struct UpsertDocument {
    /// The document.
    pub document: Document,
    /// One vector per space of the collection.
    pub vectors: BTreeMap<String, Vec<f32>>,
}

/// The current generation of a collection, open for search and updates. Searches take a read
/// lock; updates a write lock. Blocking (sled, graph walks): call it off async threads.
pub struct Collection {
    name: String,
    generation: u64,
    dir: PathBuf,
    db: GenerationDb,
    hnsw: HnswParams,
    policy: CompactionPolicy,
    state: RwLock<State>,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Collection {
    fn open(
        store: &Store,
        manifest: CollectionManifest,
        generation: u64,
        policy: CompactionPolicy,
    ) -> Result<Self> {
        let dir = store.generation_dir(&manifest.name, generation);
        let db = GenerationDb::open(&dir)?;
        let mut live = NodeSet::default();
        let live_nodes = db.live()?;
        for (_, node) in &live_nodes {
            live.insert(*node);
        }
        let mut spaces = BTreeMap::new();
        for (name, identity) in db.spaces()? {
            let path = dir.join(format!("{name}.{}", keys::GRAPH_EXTENSION));
            let graph = match Graph::read(&path) {
                Ok(graph)
                    if graph.identity() == identity.fingerprint && graph.dim() == identity.dim =>
                {
                    Some(graph)
                }
                Ok(_) => {
                    tracing::warn!("{}: built for another model; rebuilding", path.display());
                    None
                }
                Err(e) => {
                    tracing::warn!("{e}; rebuilding it from the stored vectors");
                    None
                }
            };
            let index = match graph {
                Some(graph) => {
                    let mut index = SpaceIndex::new(identity, graph);
                    index.tombstones = index
                        .graph
                        .labels()
                        .iter()
                        .filter(|&&node| !live.contains(node))
                        .count();
                    for (_, node) in &live_nodes {
                        if index.slot(*node).is_none() {
                            let Some((_, vector)) = db.vector(&name, *node)? else {
                                return Err(IndexError::CorruptRecord {
                                    what: format!("space {name:?}"),
                                    reason: format!("live node {node} has no vector"),
                                });
                            };
                            index.push_delta(*node, &vector);
                        }
                    }
                    index
                }
                None => {
                    let graph = build_space_graph(&db, &name, &identity, &manifest.hnsw)?;
                    graph.write(&path)?;
                    SpaceIndex::new(identity, graph)
                }
            };
            spaces.insert(name, index);
        }
        let fields = db.load_fields()?;
        let collection = Self {
            name: manifest.name.clone(),
            generation,
            dir,
            db,
            hnsw: manifest.hnsw,
            policy,
            state: RwLock::new(State {
                spaces,
                live,
                documents: live_nodes.len(),
                fields,
            }),
        };
        collection.compact_if_needed()?;
        Ok(collection)
    }

    /// Collection name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Generation being served.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// HNSW parameters.
    pub fn hnsw(&self) -> HnswParams {
        self.hnsw
    }

    /// Spaces and their models.
    pub fn spaces(&self) -> BTreeMap<String, ModelIdentity> {
        let state = self.state.read().expect("collection lock");
        state
            .spaces
            .iter()
            .map(|(name, index)| (name.clone(), index.identity.clone()))
            .collect()
    }

    /// Live documents.
    pub fn len(&self) -> usize {
        self.state.read().expect("collection lock").documents
    }

    /// True when the collection has no live document.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn unknown_space(&self, state: &State, space: &str) -> IndexError {
        IndexError::UnknownSpace {
            collection: self.name.clone(),
            space: space.to_string(),
            available: state.spaces.keys().cloned().collect::<Vec<_>>().join(", "),
        }
    }

    /// The stored document `id`, if live.
    pub fn document(&self, id: &str) -> Result<Option<StoredDocument>> {
        match self.db.node_of(id)? {
            Some(node) => self.db.document(node),
            None => Ok(None),
        }
    }

    /// The stored vector of document `id` in `space`, if live.
    pub fn vector(&self, space: &str, id: &str) -> Result<Option<Vec<f32>>> {
        {
            let state = self.state.read().expect("collection lock");
            if !state.spaces.contains_key(space) {
                return Err(self.unknown_space(&state, space));
            }
        }
        match self.db.node_of(id)? {
            Some(node) => Ok(self.db.vector(space, node)?.map(|(_, v)| v)),
            None => Ok(None),
        }
    }

    /// Ids of all live documents (unordered).
    pub fn ids(&self) -> Result<Vec<String>> {
        Ok(self.db.live()?.into_iter().map(|(id, _)| id).collect())
    }

    /// Top-k documents of a space for a query vector, best first.
    /// The filterable metadata fields of the live documents: per field, its values with how
    /// many documents have each, most frequent first (ties by value), at most `max_values` per
    /// field. Fields are sorted by name. Array fields count each element.
    pub fn facets(&self, max_values: usize) -> Vec<Facet> {
        let state = self.state.read().expect("collection lock");
        let mut by_field: BTreeMap<&str, Vec<FacetValue>> = BTreeMap::new();
        for ((field, key), nodes) in &state.fields.postings {
            let count = nodes.iter().filter(|&&n| state.live.contains(n)).count();
            if count == 0 {
                continue;
            }
            if let Some(value) = value_of_key(key) {
                by_field
                    .entry(field.as_str())
                    .or_default()
                    .push(FacetValue { value, count });
            }
        }
        by_field
            .into_iter()
            .map(|(field, mut values)| {
                values.sort_by(|a, b| {
                    b.count
                        .cmp(&a.count)
                        .then_with(|| a.value.to_string().cmp(&b.value.to_string()))
                });
                let distinct = values.len();
                values.truncate(max_values);
                Facet {
                    field: field.to_string(),
                    distinct,
                    values,
                }
            })
            .collect()
    }

    pub fn search(&self, request: &SearchRequest<'_>) -> Result<Vec<SearchHit>> {
        let nodes = self.search_nodes(request)?;
        let mut hits = Vec::with_capacity(nodes.len());
        for (node, score) in nodes {
            if let Some(doc) = self.db.document(node)? {
                hits.push(SearchHit {
                    id: doc.id,
                    score,
                    title: doc.title,
                    metadata: doc.metadata,
                });
            }
        }
        Ok(hits)
    }

    /// [`Collection::search`] returning node numbers and scores only.
    fn search_nodes(&self, request: &SearchRequest<'_>) -> Result<Vec<(u32, f32)>> {
        request.filter.validate()?;
        if request.k == 0 {
            return Err(IndexError::InvalidSetting("k must be at least 1".into()));
        }
        let state = self.state.read().expect("collection lock");
        let space = state
            .spaces
            .get(request.space)
            .ok_or_else(|| self.unknown_space(&state, request.space))?;
        if !space.identity.same_model(request.model) {
            return Err(IndexError::ModelMismatch {
                collection: self.name.clone(),
                space: request.space.to_string(),
                stored: space.identity.fingerprint.clone(),
                given: request.model.fingerprint.clone(),
            });
        }
        if request.vector.len() != space.identity.dim {
            return Err(IndexError::DimensionMismatch {
                what: "query vector".into(),
                expected: space.identity.dim,
                found: request.vector.len(),
            });
        }
        let mut query = request.vector.to_vec();
        if !normalize(&mut query) {
            return Err(IndexError::InvalidVector {
                what: "query vector".into(),
            });
        }
        let ef = request.ef.unwrap_or(self.hnsw.ef_search).max(request.k);
        let graph = &space.graph;
        let live = &state.live;
        let mut results: Vec<(u32, f32)> = Vec::with_capacity(request.k * 2);
        if request.filter.is_empty() {
            let eligible = |slot: u32| live.contains(graph.label(slot));
            let use_filter = space.tombstones > 0;
            let hits = graph.search(
                &query,
                request.k,
                ef,
                if use_filter { Some(&eligible) } else { None },
            );
            results.extend(hits.iter().map(|h| (graph.label(h.slot), h.similarity)));
            for (i, node) in space.delta_nodes.iter().enumerate() {
                if live.contains(*node) {
                    let v =
                        &space.delta_vectors[i * space.identity.dim..(i + 1) * space.identity.dim];
                    results.push((*node, dot(&query, v)));
                }
            }
        } else {
            let matching: Vec<u32> = state
                .fields
                .matching(request.filter)
                .into_iter()
                .filter(|&node| live.contains(node))
                .collect();
            // A graph walk under a filter passing m of n points visits about ef·2M·n/m points;
            // scanning the m points exactly costs m. Scan when that is cheaper.
            let walk_cost = ef as f64 * 2.0 * self.hnsw.m as f64 * graph.len() as f64;
            let m = matching.len() as f64;
            if matching.len() <= EXACT_FILTER_LIMIT || m * m <= walk_cost {
                for node in matching {
                    if let Some(vector) = space.vector_of(node) {
                        results.push((node, dot(&query, vector)));
                    }
                }
            } else {
                let mut allowed = NodeSet::default();
                for &node in &matching {
                    allowed.insert(node);
                }
                let eligible = |slot: u32| allowed.contains(graph.label(slot));
                let hits = graph.search(&query, request.k, ef, Some(&eligible));
                results.extend(hits.iter().map(|h| (graph.label(h.slot), h.similarity)));
                for (i, node) in space.delta_nodes.iter().enumerate() {
                    if allowed.contains(*node) {
                        let v = &space.delta_vectors
                            [i * space.identity.dim..(i + 1) * space.identity.dim];
                        results.push((*node, dot(&query, v)));
                    }
                }
            }
        }
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if results.len() > request.k {
            results.select_nth_unstable_by(request.k - 1, order);
            results.truncate(request.k);
        }
        results.sort_by(order);
        Ok(results)
    }

    /// Inserts or replaces documents. Every space of the collection needs a vector per
    /// document, from the space's model (`models`). A document whose embedded text is unchanged
    /// keeps its vectors (the ones given are ignored); one whose text changed gets a new node and
    /// its old vectors become tombstones. Rebuilds graphs when the compaction policy says so.
    pub fn upsert(
        &self,
        documents: &[UpsertDocument],
        models: &BTreeMap<String, ModelIdentity>,
    ) -> Result<UpsertReport> {
        let mut state = self.state.write().expect("collection lock");
        for (name, space) in &state.spaces {
            match models.get(name) {
                None => {
                    return Err(IndexError::InvalidDocument {
                        id: String::new(),
                        message: format!("no model given for space {name:?}"),
                    })
                }
                Some(model) if !space.identity.same_model(model) => {
                    return Err(IndexError::ModelMismatch {
                        collection: self.name.clone(),
                        space: name.clone(),
                        stored: space.identity.fingerprint.clone(),
                        given: model.fingerprint.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        // Validate and normalise everything before the first write.
        let mut prepared: Vec<(&Document, [u8; 16], Vec<SpaceVector>)> = Vec::new();
        for upsert in documents {
            let document = &upsert.document;
            if document.id.is_empty() {
                return Err(IndexError::InvalidDocument {
                    id: String::new(),
                    message: "empty id".into(),
                });
            }
            let mut vectors = Vec::new();
            for (name, space) in &state.spaces {
                let Some(vector) = upsert.vectors.get(name) else {
                    return Err(IndexError::InvalidDocument {
                        id: document.id.clone(),
                        message: format!("no vector for space {name:?}"),
                    });
                };
                if vector.len() != space.identity.dim {
                    return Err(IndexError::DimensionMismatch {
                        what: format!("vector of document {:?} in space {name:?}", document.id),
                        expected: space.identity.dim,
                        found: vector.len(),
                    });
                }
                let mut unit = vector.clone();
                if !normalize(&mut unit) {
                    return Err(IndexError::InvalidVector {
                        what: format!("vector of document {:?} in space {name:?}", document.id),
                    });
                }
                vectors.push((name.clone(), unit));
            }
            prepared.push((document, content_hash(&document.embedding_text()), vectors));
        }
        let writes: Vec<DocumentWrite<'_>> = prepared
            .iter()
            .map(|(document, hash, vectors)| DocumentWrite {
                document,
                hash: *hash,
                vectors: vectors
                    .iter()
                    .map(|(s, v)| (s.as_str(), v.as_slice()))
                    .collect(),
            })
            .collect();
        // Unchanged content keeps its stored vectors: drop them from the write.
        let mut filtered = Vec::with_capacity(writes.len());
        let mut old_metadata = Vec::with_capacity(writes.len());
        for mut write in writes {
            let old = match self.db.node_of(&write.document.id)? {
                Some(node) => self.db.document(node)?,
                None => None,
            };
            if old.as_ref().is_some_and(|doc| doc.hash == hex(&write.hash)) {
                write.vectors.clear();
            }
            old_metadata.push(old.map(|doc| doc.metadata));
            filtered.push(write);
        }
        let outcomes = self.db.write(&filtered)?;
        self.db.flush()?;
        let mut report = UpsertReport::default();
        for ((write, outcome), old) in filtered.iter().zip(outcomes).zip(old_metadata) {
            let new_node = match outcome {
                WriteOutcome::Kept { node } => {
                    report.unchanged += 1;
                    if let Some(old) = old {
                        state.fields.remove(node, &old);
                    }
                    state.fields.add(node, &write.document.metadata);
                    continue;
                }
                WriteOutcome::Added { node } => {
                    report.added += 1;
                    state.documents += 1;
                    node
                }
                WriteOutcome::Replaced { node, old } => {
                    report.updated += 1;
                    state.live.remove(old);
                    for space in state.spaces.values_mut() {
                        mark_removed(space, old);
                    }
                    node
                }
            };
            state.live.insert(new_node);
            state.fields.add(new_node, &write.document.metadata);
            for (space_name, vector) in &write.vectors {
                if let Some(space) = state.spaces.get_mut(*space_name) {
                    space.push_delta(new_node, vector);
                }
            }
        }
        drop(state);
        report.compacted = self.compact_if_needed()?;
        Ok(report)
    }

    /// Deletes document `id`; returns false when there was none. It never appears in results
    /// afterwards.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let mut state = self.state.write().expect("collection lock");
        let Some(node) = self.db.delete(id)? else {
            return Ok(false);
        };
        self.db.flush()?;
        state.live.remove(node);
        state.documents = state.documents.saturating_sub(1);
        for space in state.spaces.values_mut() {
            mark_removed(space, node);
        }
        drop(state);
        self.compact_if_needed()?;
        Ok(true)
    }

    /// Rebuilds the graph of every space whose tombstones and delta pass the policy; returns
    /// their names.
    pub fn compact_if_needed(&self) -> Result<Vec<String>> {
        let due: Vec<String> = {
            let state = self.state.read().expect("collection lock");
            state
                .spaces
                .iter()
                .filter(|(_, space)| self.policy.due(space.changes(), space.graph.len()))
                .map(|(name, _)| name.clone())
                .collect()
        };
        for name in &due {
            self.compact(name)?;
        }
        Ok(due)
    }

    /// Rebuilds the graph of `space` from the live stored vectors and persists it.
    pub fn compact(&self, space: &str) -> Result<()> {
        let mut state = self.state.write().expect("collection lock");
        let identity = state
            .spaces
            .get(space)
            .ok_or_else(|| self.unknown_space(&state, space))?
            .identity
            .clone();
        self.db.sweep()?;
        state.fields = self.db.load_fields()?;
        let graph = build_space_graph(&self.db, space, &identity, &self.hnsw)?;
        graph.write(&self.dir.join(format!("{space}.{}", keys::GRAPH_EXTENSION)))?;
        state
            .spaces
            .insert(space.to_string(), SpaceIndex::new(identity, graph));
        Ok(())
    }

    /// Figures for `attune index stats`.
    pub fn stats(&self) -> Result<CollectionStats> {
        let state = self.state.read().expect("collection lock");
        Ok(CollectionStats {
            name: self.name.clone(),
            generation: self.generation,
            documents: state.documents,
            hnsw: self.hnsw,
            spaces: state
                .spaces
                .iter()
                .map(|(name, space)| SpaceStats {
                    name: name.clone(),
                    model: space.identity.clone(),
                    graph_points: space.graph.len(),
                    tombstones: space.tombstones,
                    delta: space.delta_nodes.len(),
                })
                .collect(),
            disk_bytes: dir_bytes(&self.dir)?,
            database_bytes: dir_bytes(&self.dir.join(keys::DATABASE_DIR))?,
        })
    }
}

fn mark_removed(space: &mut SpaceIndex, node: u32) {
    if space.slot(node).is_some() {
        space.tombstones += 1;
    } else if let Some(i) = space.delta_position.remove(&node) {
        let dim = space.identity.dim;
        space.delta_nodes.swap_remove(i);
        let last = space.delta_vectors.len() - dim;
        if i * dim != last {
            let (head, tail) = space.delta_vectors.split_at_mut(last);
            head[i * dim..(i + 1) * dim].copy_from_slice(tail);
        }
        space.delta_vectors.truncate(last);
        if let Some(&moved) = space.delta_nodes.get(i) {
            space.delta_position.insert(moved, i);
        }
    }
}

/// Builds the graph of `space` from the live vectors stored in `db`.
pub(crate) fn build_space_graph(
    db: &GenerationDb,
    space: &str,
    identity: &ModelIdentity,
    params: &HnswParams,
) -> Result<Graph> {
    let ids: HashMap<u32, String> = db
        .live()?
        .into_iter()
        .map(|(id, node)| (node, id))
        .collect();
    let mut points = Vec::with_capacity(ids.len());
    for (node, hash, vector) in db.all_vectors(space)? {
        if let Some(id) = ids.get(&node) {
            if vector.len() != identity.dim {
                return Err(IndexError::DimensionMismatch {
                    what: format!("stored vector of document {id:?} in space {space:?}"),
                    expected: identity.dim,
                    found: vector.len(),
                });
            }
            points.push(GraphPoint {
                node,
                hash,
                id: id.clone(),
                vector,
            });
        }
    }
    if points.len() != ids.len() {
        return Err(IndexError::CorruptRecord {
            what: format!("space {space:?}"),
            reason: format!("{} live documents but {} vectors", ids.len(), points.len()),
        });
    }
    Graph::build(points, identity.dim, &identity.fingerprint, params)
}
