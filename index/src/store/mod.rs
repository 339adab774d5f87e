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
use std::sync::{Arc, RwLock};
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
use crate::journal::{self, Journal, JournalOp, Replay, SpaceEmbedder};
use crate::keys;
use crate::lexical::{LexicalIndex, LexicalSettings};
use crate::retrieval::LexicalRequest;

mod collection;
mod fields;
mod generation;
mod lease;
mod snapshot;
mod space;

pub use collection::*;
pub(crate) use fields::*;
pub(crate) use generation::*;
pub(crate) use lease::*;
pub(crate) use snapshot::*;
pub(crate) use space::*;

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
    /// The lexical space of the current generation, if it has one.
    #[serde(default)]
    pub lexical: Option<LexicalSettings>,
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
    pub(crate) fn new(document: &Document, hash: &[u8; 16]) -> Self {
        Self {
            id: document.id.clone(),
            title: document.title.clone(),
            text: document.text.clone(),
            metadata: document.metadata.clone(),
            hash: hex(hash),
        }
    }

    /// The document as written (without its hash).
    pub fn to_document(&self) -> Document {
        Document {
            id: self.id.clone(),
            title: self.title.clone(),
            text: self.text.clone(),
            metadata: self.metadata.clone(),
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
pub(crate) struct StoreMarker {
    pub(crate) format: u32,
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

    /// The write journal of collection `name` (see [`crate::journal`]).
    pub(crate) fn journal_dir(&self, name: &str) -> PathBuf {
        self.collection_dir(name).join(keys::JOURNAL_DIR)
    }

    pub(crate) fn generation_dir(&self, name: &str, generation: u64) -> PathBuf {
        self.collection_dir(name)
            .join(format!("{}{generation:06}", keys::GENERATION_PREFIX))
    }

    pub(crate) fn unknown(&self, name: &str) -> IndexError {
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

    /// Removes generation directories that are neither current, previous nor building, and that
    /// no live process holds a lease on (a server may still serve one while it picks up a newer
    /// generation). One that cannot be removed does not keep the others: the first error is
    /// returned after every removal was tried.
    pub(crate) fn remove_stale_generations(&self, manifest: &CollectionManifest) -> Result<()> {
        let leased = leased_generations(self, &manifest.name)?;
        let mut first_error = None;
        for n in self.generation_numbers(&manifest.name)? {
            if Some(n) != manifest.current
                && Some(n) != manifest.building
                && Some(n) != manifest.previous
                && !leased.contains(&n)
            {
                let dir = self.generation_dir(&manifest.name, n);
                if let Err(e) = fs::remove_dir_all(&dir) {
                    first_error.get_or_insert(IndexError::io(&dir, e));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Bytes on disk under collection `name` (every generation).
    pub fn disk_bytes(&self, name: &str) -> Result<u64> {
        dir_bytes(&self.collection_dir(name))
    }
}

pub(crate) fn dir_bytes(dir: &Path) -> Result<u64> {
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
