//! The sled schema of a generation: documents, ids, vectors per space, metadata fields, and
//! the only code that reads or writes a generation database.

use super::*;

/// A unit vector of one space.
pub(crate) type SpaceVector = (String, Vec<f32>);

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

pub(crate) fn node_key(node: u32) -> [u8; 4] {
    node.to_be_bytes()
}

pub(crate) fn node_from(bytes: &[u8], what: &str) -> Result<u32> {
    let array: [u8; 4] = bytes.try_into().map_err(|_| IndexError::CorruptRecord {
        what: what.to_string(),
        reason: format!("node key of {} bytes", bytes.len()),
    })?;
    Ok(u32::from_be_bytes(array))
}

pub(crate) fn field_prefix(field: &str, value_key: &str) -> Vec<u8> {
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
        let db = crate::open_sled(&path, 128 << 20)?;
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

    pub(crate) fn err(&self, e: sled::Error) -> IndexError {
        IndexError::storage(&self.path, e)
    }

    pub(crate) fn vectors(&self, space: &str) -> Result<sled::Tree> {
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

    /// The last journal sequence number applied to this generation (0 before any).
    pub(crate) fn journal_seq(&self) -> Result<u64> {
        match self
            .meta
            .get(keys::KEY_JOURNAL_SEQ)
            .map_err(|e| self.err(e))?
        {
            None => Ok(0),
            Some(bytes) => Ok(u64::from_be_bytes(bytes.as_ref().try_into().map_err(
                |_| IndexError::CorruptRecord {
                    what: format!("{} journal position", self.path.display()),
                    reason: format!("{} bytes", bytes.len()),
                },
            )?)),
        }
    }

    /// Records that journal records up to `seq` are applied.
    pub(crate) fn set_journal_seq(&self, seq: u64) -> Result<()> {
        self.meta
            .insert(keys::KEY_JOURNAL_SEQ, &seq.to_be_bytes())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every live document, by id.
    pub(crate) fn live_documents(&self) -> Result<Vec<StoredDocument>> {
        let mut out = Vec::new();
        for (id, node) in self.live()? {
            let document = self
                .document(node)?
                .ok_or_else(|| IndexError::CorruptRecord {
                    what: format!("{} document {id:?}", self.path.display()),
                    reason: format!("live node {node} has no record"),
                })?;
            out.push(document);
        }
        Ok(out)
    }

    /// Reserves `count` fresh node numbers (persisted before they are used, so a crash never
    /// hands one out twice).
    pub(crate) fn reserve_nodes(&self, count: u32) -> Result<u32> {
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

    /// The id of the document at `node`, read without decoding the rest of the record.
    pub(crate) fn id_of(&self, node: u32) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct IdOnly {
            id: String,
        }
        match self
            .documents
            .get(node_key(node))
            .map_err(|e| self.err(e))?
        {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice::<IdOnly>(&bytes)
                .map(|record| Some(record.id))
                .map_err(|e| IndexError::CorruptRecord {
                    what: format!("document at node {node}"),
                    reason: e.to_string(),
                }),
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

    pub(crate) fn remove_node_data(&self, node: u32) -> Result<()> {
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
    pub(crate) fn load_fields(&self) -> Result<FieldIndex> {
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

pub(crate) fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
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

pub(crate) fn decode_vector(bytes: &[u8], node: u32) -> Result<([u8; 16], Vec<f32>)> {
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
