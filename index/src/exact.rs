//! An exact, in-memory [`VectorStore`]: every search scans every live document. It is the
//! second implementation of the vector-store seam (the API and pipeline tests run against it as
//! well as against the embedded [`crate::Store`]) and the ground truth an approximate store is
//! measured against. It keeps data for the life of the process only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::build::{
    BuildEvent, BuildMode, BuildReport, BuildSettings, BuildSource, SpaceSpec, SpecEmbedder,
};
use crate::corpus::Document;
use crate::distance::{dot, normalize};
use crate::error::{IndexError, Result};
use crate::events::{FeedbackRecord, ServedRequest};
use crate::filter::value_of_key;
use crate::graph::HnswParams;
use crate::identity::ModelIdentity;
use crate::journal::{resolve, JournalOp, JournalRecord, Replay, SpaceEmbedder};
use crate::lexical::{LexicalIndex, LexicalSettings};
use crate::retrieval::LexicalRequest;
use crate::store::{
    content_hash, hex, validate_name, CollectionStats, Facet, FacetValue, SearchHit, SearchRequest,
    SpaceStats, StoredDocument, UpsertDocument, UpsertReport,
};
use crate::vector_store::{unit_vector, upsert_vectors, AbEventLog, ServedCollection, VectorStore};

/// An exact in-memory store (see the module docs).
#[derive(Debug, Default)]
pub struct ExactStore {
    collections: Mutex<BTreeMap<String, Entry>>,
}

#[derive(Debug, Default)]
struct Entry {
    current: Option<Arc<ExactCollection>>,
    /// Acknowledged writes, shared by every generation of the collection (see
    /// [`crate::journal`]; here in memory, sequence number = position + 1).
    journal: Journal,
    events: Arc<MemoryEvents>,
    report: BTreeMap<String, Vec<u8>>,
}

/// A document with its unit vectors by space.
#[derive(Debug, Clone)]
struct Stored {
    document: StoredDocument,
    vectors: BTreeMap<String, Vec<f32>>,
}

type Journal = Arc<Mutex<Vec<JournalRecord>>>;

/// The documents of a generation and the last journal record applied to them.
#[derive(Debug, Default)]
struct Documents {
    by_id: BTreeMap<String, Stored>,
    applied: u64,
}

/// One collection of an [`ExactStore`] at one generation.
#[derive(Debug)]
pub struct ExactCollection {
    name: String,
    generation: u64,
    spaces: BTreeMap<String, ModelIdentity>,
    hnsw: HnswParams,
    journal: Journal,
    documents: RwLock<Documents>,
    /// The lexical space's settings, if it has one.
    lexical: Option<LexicalSettings>,
    /// The lexical index in memory at a journal position, with the ids of its node numbers;
    /// rebuilt when a search finds the documents moved on.
    lexical_index: Mutex<Option<LexicalCache>>,
}

#[derive(Debug)]
struct LexicalCache {
    applied: u64,
    index: LexicalIndex,
    ids: Vec<String>,
}

impl ExactStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn unknown(&self, name: &str, names: Vec<String>) -> IndexError {
        IndexError::UnknownCollection {
            name: name.to_string(),
            store: PathBuf::from(self.location()),
            available: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        }
    }

    fn with_entry<T>(&self, name: &str, f: impl FnOnce(&mut Entry) -> Result<T>) -> Result<T> {
        let mut collections = self.collections.lock().expect("store lock");
        match collections.get_mut(name) {
            Some(entry) => f(entry),
            None => Err(self.unknown(name, collections.keys().cloned().collect())),
        }
    }
}

/// Unit vectors of `texts` from `spec`'s embedder, checked against its identity.
fn embed(spec: &mut SpaceSpec<'_>, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
    let identity = spec.embedder.identity().clone();
    let vectors = spec
        .embedder
        .embed_documents(texts)
        .map_err(|e| IndexError::Embedding {
            space: spec.name.clone(),
            message: e.to_string(),
        })?;
    let what = || format!("a vector of space {:?}", spec.name);
    vectors
        .iter()
        .map(|v| unit_vector(v, &identity, &what))
        .collect()
}

fn stored_document(document: &Document) -> StoredDocument {
    StoredDocument {
        id: document.id.clone(),
        title: document.title.clone(),
        text: document.text.clone(),
        metadata: document.metadata.clone(),
        hash: hex(&content_hash(&document.embedding_text())),
    }
}

impl VectorStore for ExactStore {
    fn location(&self) -> String {
        "memory".into()
    }

    fn collection_names(&self) -> Result<Vec<String>> {
        Ok(self
            .collections
            .lock()
            .expect("store lock")
            .keys()
            .cloned()
            .collect())
    }

    fn current_generation(&self, name: &str) -> Result<Option<u64>> {
        self.with_entry(name, |e| Ok(e.current.as_ref().map(|c| c.generation)))
    }

    fn spaces(&self, name: &str) -> Result<BTreeMap<String, ModelIdentity>> {
        self.with_entry(name, |e| {
            Ok(e.current
                .as_ref()
                .map(|c| c.spaces.clone())
                .unwrap_or_default())
        })
    }

    fn open_collection(&self, name: &str) -> Result<Arc<dyn ServedCollection>> {
        self.with_entry(name, |e| match &e.current {
            Some(current) => Ok(current.clone() as Arc<dyn ServedCollection>),
            None => Err(IndexError::NotBuilt { name: name.into() }),
        })
    }

    fn build(
        &self,
        name: &str,
        source: BuildSource<'_>,
        spaces: &mut [SpaceSpec<'_>],
        settings: &BuildSettings,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<BuildReport> {
        crate::build::check_inputs(name, spaces, settings)?;
        let started = Instant::now();
        let (previous, journal) = {
            let mut collections = self.collections.lock().expect("store lock");
            if matches!(source, BuildSource::Collection) && !collections.contains_key(name) {
                return Err(self.unknown(name, collections.keys().cloned().collect()));
            }
            let entry = collections.entry(name.to_string()).or_default();
            (entry.current.clone(), entry.journal.clone())
        };
        let (old, base_seq): (BTreeMap<String, StoredDocument>, u64) = match &previous {
            Some(c) => {
                let documents = c.documents.read().expect("collection lock");
                let old = documents
                    .by_id
                    .iter()
                    .map(|(id, s)| (id.clone(), s.document.clone()))
                    .collect();
                (old, documents.applied)
            }
            None => (
                BTreeMap::new(),
                journal.lock().expect("journal lock").len() as u64,
            ),
        };
        let (target, removed, kept): (Vec<Document>, Vec<String>, usize) = match source {
            BuildSource::Collection => (
                old.values().map(StoredDocument::to_document).collect(),
                Vec::new(),
                0,
            ),
            BuildSource::Corpus { corpus, mode } => {
                let mut target = corpus.documents.clone();
                let listed: std::collections::HashSet<&str> =
                    target.iter().map(|d| d.id.as_str()).collect();
                let others: Vec<&StoredDocument> = old
                    .values()
                    .filter(|d| !listed.contains(d.id.as_str()))
                    .collect();
                match mode {
                    BuildMode::Merge => {
                        let kept = others.len();
                        target.extend(others.into_iter().map(StoredDocument::to_document));
                        (target, Vec::new(), kept)
                    }
                    BuildMode::Replace => {
                        (target, others.iter().map(|d| d.id.clone()).collect(), 0)
                    }
                }
            }
        };
        let generation = previous.as_ref().map_or(1, |c| c.generation + 1);
        progress(BuildEvent::Planned {
            documents: target.len(),
            to_embed: target.len(),
            resumed: false,
            generation,
        });
        let mut documents: BTreeMap<String, Stored> = target
            .iter()
            .map(|d| {
                let stored = Stored {
                    document: stored_document(d),
                    vectors: BTreeMap::new(),
                };
                (d.id.clone(), stored)
            })
            .collect();
        let mut embedded = BTreeMap::new();
        let batch = settings.batch_size.max(1);
        let mut done = 0;
        for chunk in target.chunks(batch) {
            let texts: Vec<String> = chunk.iter().map(Document::embedding_text).collect();
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            for spec in spaces.iter_mut() {
                for (document, vector) in chunk.iter().zip(embed(spec, &texts)?) {
                    let stored = documents.get_mut(&document.id).expect("every id is stored");
                    stored.vectors.insert(spec.name.clone(), vector);
                }
                *embedded.entry(spec.name.clone()).or_insert(0) += chunk.len();
            }
            done += chunk.len();
            progress(BuildEvent::Embedded { done });
        }
        let embed_seconds = started.elapsed().as_secs_f64();
        let (mut added, mut updated, mut unchanged) = (0, 0, 0);
        for (id, stored) in &documents {
            match old.get(id) {
                None => added += 1,
                Some(before) if before.hash == stored.document.hash => unchanged += 1,
                Some(_) => updated += 1,
            }
        }
        let identities: BTreeMap<String, ModelIdentity> = spaces
            .iter()
            .map(|s| (s.name.clone(), s.embedder.identity().clone()))
            .collect();
        let mut state = Documents {
            by_id: documents,
            applied: base_seq,
        };
        // Writes acknowledged while this build ran, then the switch, under the store's lock
        // (no write lands in between).
        let mut collections = self.collections.lock().expect("store lock");
        let records = pending(&journal, base_seq);
        let mut embedder = SpecEmbedder(spaces);
        let replayed = apply_journal(&mut state, &records, &identities, Some(&mut embedder))?;
        let count = state.by_id.len();
        let collection = ExactCollection {
            name: name.to_string(),
            generation,
            spaces: identities,
            hnsw: settings.hnsw,
            journal,
            documents: RwLock::new(state),
            lexical: settings.lexical.clone(),
            lexical_index: Mutex::new(None),
        };
        collections.entry(name.to_string()).or_default().current = Some(Arc::new(collection));
        drop(collections);
        Ok(BuildReport {
            collection: name.to_string(),
            generation,
            previous_generation: previous.map(|c| c.generation),
            resumed: false,
            documents: count,
            added,
            updated,
            unchanged,
            deleted: removed.len(),
            removed,
            kept,
            replayed,
            embedded,
            duplicate_ids: source.duplicate_ids(),
            embed_seconds,
            graph_seconds: 0.0,
            lexical_seconds: 0.0,
            seconds: started.elapsed().as_secs_f64(),
            cleanup_errors: Vec::new(),
        })
    }

    fn drop_collection(&self, name: &str) -> Result<bool> {
        Ok(self
            .collections
            .lock()
            .expect("store lock")
            .remove(name)
            .is_some())
    }

    fn open_events(&self, name: &str) -> Result<Arc<dyn AbEventLog>> {
        validate_name(name)?;
        let mut collections = self.collections.lock().expect("store lock");
        let entry = collections.entry(name.to_string()).or_default();
        Ok(entry.events.clone() as Arc<dyn AbEventLog>)
    }

    fn publish_report(&self, name: &str, files: &[(&str, &[u8])]) -> Result<()> {
        for (file, _) in files {
            validate_name(file)?;
        }
        self.with_entry(name, |e| {
            e.report = files
                .iter()
                .map(|(f, b)| (f.to_string(), b.to_vec()))
                .collect();
            Ok(())
        })
    }

    fn report_files(&self, name: &str) -> Result<Vec<String>> {
        self.with_entry(name, |e| Ok(e.report.keys().cloned().collect()))
    }

    fn report_file(&self, name: &str, file: &str) -> Result<Option<Vec<u8>>> {
        self.with_entry(name, |e| Ok(e.report.get(file).cloned()))
    }
}

/// Journal records after `after`.
fn pending(journal: &Journal, after: u64) -> Vec<JournalRecord> {
    journal.lock().expect("journal lock")[after as usize..].to_vec()
}

/// Applies `records` to `state` (see [`resolve`]); returns how many were applied.
fn apply_journal(
    state: &mut Documents,
    records: &[JournalRecord],
    spaces: &BTreeMap<String, ModelIdentity>,
    embedder: Option<&mut dyn SpaceEmbedder>,
) -> Result<usize> {
    let (replays, covered) = resolve(records, spaces, embedder, state.applied)?;
    let count = replays.len();
    for replay in replays {
        match replay {
            Replay::Delete(id) => {
                state.by_id.remove(&id);
            }
            Replay::Upsert(upsert) => {
                let vectors = upsert_vectors(&upsert, spaces)?.into_iter().collect();
                let stored = Stored {
                    document: stored_document(&upsert.document),
                    vectors,
                };
                state.by_id.insert(upsert.document.id.clone(), stored);
            }
        }
    }
    state.applied = covered;
    Ok(count)
}

impl ExactCollection {
    /// Before a write: applies what this generation lacks, or refuses the write when that needs
    /// embedding (the server catches up first).
    fn sync(&self, state: &mut Documents, journal: &[JournalRecord]) -> Result<()> {
        let last = journal.len() as u64;
        if state.applied < last {
            let records = journal[state.applied as usize..].to_vec();
            apply_journal(state, &records, &self.spaces, None)?;
        }
        if state.applied < last {
            return Err(IndexError::behind_journal(&self.name, self.generation));
        }
        Ok(())
    }

    fn space(&self, space: &str) -> Result<&ModelIdentity> {
        self.spaces
            .get(space)
            .ok_or_else(|| IndexError::UnknownSpace {
                collection: self.name.clone(),
                space: space.to_string(),
                available: self.spaces.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    fn check_model(&self, space: &str, model: &ModelIdentity) -> Result<()> {
        let identity = self.space(space)?;
        if !identity.same_model(model) {
            return Err(IndexError::ModelMismatch {
                collection: self.name.clone(),
                space: space.to_string(),
                stored: identity.fingerprint.clone(),
                given: model.fingerprint.clone(),
            });
        }
        Ok(())
    }
}

impl ServedCollection for ExactCollection {
    fn name(&self) -> &str {
        &self.name
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn spaces(&self) -> BTreeMap<String, ModelIdentity> {
        self.spaces.clone()
    }

    fn len(&self) -> usize {
        self.documents.read().expect("collection lock").by_id.len()
    }

    fn document(&self, id: &str) -> Result<Option<StoredDocument>> {
        let guard = self.documents.read().expect("collection lock");
        let documents = &guard.by_id;
        Ok(documents.get(id).map(|s| s.document.clone()))
    }

    fn vector(&self, space: &str, id: &str) -> Result<Option<Vec<f32>>> {
        self.space(space)?;
        let guard = self.documents.read().expect("collection lock");
        let documents = &guard.by_id;
        Ok(documents
            .get(id)
            .and_then(|s| s.vectors.get(space).cloned()))
    }

    fn facets(&self, max_values: usize) -> Vec<Facet> {
        let guard = self.documents.read().expect("collection lock");
        let documents = &guard.by_id;
        let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for stored in documents.values() {
            for (field, key) in crate::filter::indexed_pairs(&stored.document.metadata) {
                *counts.entry(field).or_default().entry(key).or_insert(0) += 1;
            }
        }
        counts
            .into_iter()
            .map(|(field, values)| {
                let mut values: Vec<FacetValue> = values
                    .into_iter()
                    .filter_map(|(key, count)| {
                        Some(FacetValue {
                            value: value_of_key(&key)?,
                            count,
                        })
                    })
                    .collect();
                values.sort_by(|a, b| {
                    b.count
                        .cmp(&a.count)
                        .then_with(|| a.value.to_string().cmp(&b.value.to_string()))
                });
                let distinct = values.len();
                values.truncate(max_values);
                Facet {
                    field,
                    distinct,
                    values,
                }
            })
            .collect()
    }

    fn search(&self, request: &SearchRequest<'_>) -> Result<Vec<SearchHit>> {
        crate::vector_store::check_search(request.filter, request.k)?;
        self.check_model(request.space, request.model)?;
        let identity = self.space(request.space)?;
        if request.vector.len() != identity.dim {
            return Err(IndexError::DimensionMismatch {
                what: "the query vector".into(),
                expected: identity.dim,
                found: request.vector.len(),
            });
        }
        let mut query = request.vector.to_vec();
        if !normalize(&mut query) {
            return Err(IndexError::InvalidVector {
                what: "the query vector".into(),
            });
        }
        let guard = self.documents.read().expect("collection lock");
        let documents = &guard.by_id;
        let mut scored: Vec<(f32, &Stored)> = documents
            .values()
            .filter(|s| request.filter.matches(&s.document.metadata))
            .filter_map(|s| Some((dot(&query, s.vectors.get(request.space)?), s)))
            .collect();
        scored.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.document.id.cmp(&b.1.document.id))
        });
        scored.truncate(request.k);
        Ok(scored
            .into_iter()
            .map(|(score, s)| SearchHit {
                id: s.document.id.clone(),
                score,
                title: s.document.title.clone(),
                metadata: s.document.metadata.clone(),
            })
            .collect())
    }

    fn lexical(&self) -> Option<LexicalSettings> {
        self.lexical.clone()
    }

    fn lexical_search(&self, request: &LexicalRequest<'_>) -> Result<Vec<SearchHit>> {
        crate::vector_store::check_search(request.filter, request.k)?;
        let Some(settings) = &self.lexical else {
            return Err(IndexError::UnknownSpace {
                collection: self.name.clone(),
                space: crate::LEXICAL_SPACE.into(),
                available: self.spaces.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let guard = self.documents.read().expect("collection lock");
        let mut cache = self.lexical_index.lock().expect("lexical lock");
        if cache.as_ref().is_none_or(|c| c.applied != guard.applied) {
            let index = LexicalIndex::create(None, settings)?;
            let stored: Vec<&Stored> = guard.by_id.values().collect();
            index.fill(
                stored
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i as u32, &s.document)),
                guard.applied,
            )?;
            *cache = Some(LexicalCache {
                applied: guard.applied,
                index,
                ids: guard.by_id.keys().cloned().collect(),
            });
        }
        let cache = cache.as_ref().expect("built above");
        let passes = |node: u32| {
            let document = &guard.by_id[&cache.ids[node as usize]].document;
            request.filter.matches(&document.metadata)
        };
        let nodes = cache.index.search(request.text, request.k, &passes)?;
        Ok(nodes
            .into_iter()
            .map(|(node, score)| {
                let document = &guard.by_id[&cache.ids[node as usize]].document;
                SearchHit {
                    id: document.id.clone(),
                    score,
                    title: document.title.clone(),
                    metadata: document.metadata.clone(),
                }
            })
            .collect())
    }

    fn upsert(
        &self,
        documents: &[UpsertDocument],
        models: &BTreeMap<String, ModelIdentity>,
    ) -> Result<UpsertReport> {
        for space in self.spaces.keys() {
            let Some(model) = models.get(space) else {
                return Err(IndexError::InvalidDocument {
                    id: String::new(),
                    message: format!("no model given for space {space:?}"),
                });
            };
            self.check_model(space, model)?;
        }
        // Validate and normalise everything before the first write.
        let mut prepared = Vec::with_capacity(documents.len());
        for upsert in documents {
            prepared.push(upsert_vectors(upsert, &self.spaces)?);
        }
        let mut state = self.documents.write().expect("collection lock");
        let mut journal = self.journal.lock().expect("journal lock");
        self.sync(&mut state, &journal)?;
        let mut report = UpsertReport::default();
        for (upsert, vectors) in documents.iter().zip(prepared) {
            let new = Stored {
                document: stored_document(&upsert.document),
                vectors: vectors.iter().cloned().collect(),
            };
            match state.by_id.get(&new.document.id) {
                None => report.added += 1,
                Some(old) if old.document.hash == new.document.hash => report.unchanged += 1,
                Some(_) => report.updated += 1,
            }
            let seq = journal.len() as u64 + 1;
            journal.push(JournalRecord {
                seq,
                op: JournalOp::upsert(&upsert.document, &vectors, &self.spaces),
            });
            state.by_id.insert(new.document.id.clone(), new);
            state.applied = seq;
        }
        Ok(report)
    }

    fn delete(&self, id: &str) -> Result<bool> {
        let mut state = self.documents.write().expect("collection lock");
        let mut journal = self.journal.lock().expect("journal lock");
        self.sync(&mut state, &journal)?;
        if state.by_id.remove(id).is_none() {
            return Ok(false);
        }
        let seq = journal.len() as u64 + 1;
        journal.push(JournalRecord {
            seq,
            op: JournalOp::Delete { id: id.to_string() },
        });
        state.applied = seq;
        Ok(true)
    }

    fn catch_up(&self, embedder: Option<&mut dyn SpaceEmbedder>) -> Result<usize> {
        let mut state = self.documents.write().expect("collection lock");
        let records = pending(&self.journal, state.applied);
        apply_journal(&mut state, &records, &self.spaces, embedder)
    }

    fn stats(&self) -> Result<CollectionStats> {
        let documents = self.len();
        Ok(CollectionStats {
            name: self.name.clone(),
            generation: self.generation,
            documents,
            hnsw: self.hnsw,
            spaces: self
                .spaces
                .iter()
                .map(|(name, model)| SpaceStats {
                    name: name.clone(),
                    model: model.clone(),
                    graph_points: 0,
                    tombstones: 0,
                    delta: documents,
                })
                .collect(),
            disk_bytes: 0,
            database_bytes: 0,
            lexical: self.lexical.clone(),
        })
    }
}

/// A/B events kept in memory.
#[derive(Debug)]
struct MemoryEvents {
    salt: String,
    served: Mutex<BTreeMap<String, ServedRequest>>,
    feedback: Mutex<Vec<FeedbackRecord>>,
}

impl Default for MemoryEvents {
    fn default() -> Self {
        let bytes: [u8; 16] = rand::random();
        Self {
            salt: hex(&bytes),
            served: Mutex::default(),
            feedback: Mutex::default(),
        }
    }
}

impl AbEventLog for MemoryEvents {
    fn salt(&self) -> Result<String> {
        Ok(self.salt.clone())
    }
    fn record_served(&self, served: &ServedRequest) -> Result<()> {
        let mut all = self.served.lock().expect("events lock");
        all.insert(served.request_id.clone(), served.clone());
        Ok(())
    }

    fn served(&self, request_id: &str) -> Result<Option<ServedRequest>> {
        Ok(self
            .served
            .lock()
            .expect("events lock")
            .get(request_id)
            .cloned())
    }

    fn record_feedback(&self, feedback: &FeedbackRecord) -> Result<bool> {
        let mut all = self.feedback.lock().expect("events lock");
        let seen = all.iter().any(|f| {
            (&f.request_id, &f.doc_id, &f.event)
                == (&feedback.request_id, &feedback.doc_id, &feedback.event)
        });
        if !seen {
            all.push(feedback.clone());
        }
        Ok(!seen)
    }

    fn all_served(&self) -> Result<Vec<ServedRequest>> {
        Ok(self
            .served
            .lock()
            .expect("events lock")
            .values()
            .cloned()
            .collect())
    }

    fn all_feedback(&self) -> Result<Vec<FeedbackRecord>> {
        Ok(self.feedback.lock().expect("events lock").clone())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
