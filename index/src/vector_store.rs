//! The vector-store seam: what the re-index job, the pipeline and the server need from a store
//! of collections, as traits, so that another engine (an exact in-memory store in tests, a
//! distributed vector engine) can stand where the embedded hnsw_rs + sled [`Store`] stands.
//!
//! - [`VectorStore`]: the store. Collections, their current generation, the atomic switch to a
//!   new generation (a build), dropping; and the owners of what lives beside the generations:
//!   a collection's A/B event log and its published report.
//! - [`ServedCollection`]: one collection at its current generation, searched and updated.
//! - [`AbEventLog`]: a collection's A/B events (served requests and feedback).
//!
//! Every implementation keeps the same guarantees: a generation switch is atomic (readers see
//! the old generation or the new one whole), vectors are bound to the [`ModelIdentity`] of their
//! space (a search or an upsert with another model's vectors is refused), and an acknowledged
//! write is durable for as long as the implementation promises to keep data (the embedded store:
//! on disk; an in-memory store: for the life of the process).
//!
//! Calls block (disk, graph walks, network): call them off async threads.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::build::{BuildEvent, BuildReport, BuildSettings, BuildSource, SpaceSpec};
use crate::error::Result;
use crate::events::{EventLog, FeedbackRecord, ServedRequest};
use crate::identity::ModelIdentity;
use crate::journal::SpaceEmbedder;
use crate::lexical::LexicalSettings;
use crate::retrieval::LexicalRequest;
use crate::store::{
    Collection, CollectionStats, Facet, SearchHit, SearchRequest, Store, StoredDocument,
    UpsertDocument, UpsertReport,
};

/// A store of collections (see the module docs).
pub trait VectorStore: Send + Sync {
    /// Where the store lives, for messages (a directory, a URL).
    fn location(&self) -> String;
    /// Names of the collections, sorted.
    fn collection_names(&self) -> Result<Vec<String>>;
    /// The generation `name` serves, `None` until its first build finishes;
    /// [`crate::IndexError::UnknownCollection`] when there is no such collection.
    fn current_generation(&self, name: &str) -> Result<Option<u64>>;
    /// The spaces of `name`'s current generation and their models.
    fn spaces(&self, name: &str) -> Result<BTreeMap<String, ModelIdentity>>;
    /// Opens `name` at its current generation for search and updates.
    fn open_collection(&self, name: &str) -> Result<Arc<dyn ServedCollection>>;
    /// Embeds the documents of `source` into a new generation of `name` (created if missing,
    /// unless the source is the collection itself), one space per entry of `spaces`, and
    /// switches to it atomically. Writes acknowledged by a served collection while the build
    /// runs are applied to the new generation: none is lost, whatever the timing.
    fn build(
        &self,
        name: &str,
        source: BuildSource<'_>,
        spaces: &mut [SpaceSpec<'_>],
        settings: &BuildSettings,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<BuildReport>;
    /// Deletes `name`, its generations, events and reports; false when it did not exist.
    fn drop_collection(&self, name: &str) -> Result<bool>;
    /// Opens (creating) the A/B event log of `name`; it outlives generations.
    fn open_events(&self, name: &str) -> Result<Arc<dyn AbEventLog>>;
    /// Replaces `name`'s published report with `files` (name, bytes), whole.
    fn publish_report(&self, name: &str, files: &[(&str, &[u8])]) -> Result<()>;
    /// File names of `name`'s published report (empty when none was published).
    fn report_files(&self, name: &str) -> Result<Vec<String>>;
    /// One file of `name`'s published report; `None` when absent.
    fn report_file(&self, name: &str, file: &str) -> Result<Option<Vec<u8>>>;
}

/// One collection at its current generation (see the module docs).
pub trait ServedCollection: Send + Sync + std::fmt::Debug {
    /// Collection name.
    fn name(&self) -> &str;
    /// The generation open.
    fn generation(&self) -> u64;
    /// Spaces and their models.
    fn spaces(&self) -> BTreeMap<String, ModelIdentity>;
    /// Live documents.
    fn len(&self) -> usize;
    /// True when no document is live.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The document `id`, if live.
    fn document(&self, id: &str) -> Result<Option<StoredDocument>>;
    /// The stored vector of `id` in `space` (unit length), if live.
    fn vector(&self, space: &str, id: &str) -> Result<Option<Vec<f32>>>;
    /// The settings of the collection's lexical space; `None` when it has none (built without
    /// one).
    fn lexical(&self) -> Option<LexicalSettings>;
    /// The `k` best documents of the lexical space (BM25) that pass the filter, best first;
    /// [`crate::IndexError::UnknownSpace`] when the collection has no lexical space.
    fn lexical_search(&self, request: &LexicalRequest<'_>) -> Result<Vec<SearchHit>>;
    /// [`ServedCollection::search`] as (id, score) pairs, without reading the documents (what
    /// fusion ranks before it reads the `k` it keeps).
    fn search_ids(&self, request: &SearchRequest<'_>) -> Result<Vec<(String, f32)>> {
        Ok(self
            .search(request)?
            .into_iter()
            .map(|hit| (hit.id, hit.score))
            .collect())
    }
    /// [`ServedCollection::lexical_search`] as (id, score) pairs, without reading the
    /// documents.
    fn lexical_search_ids(&self, request: &LexicalRequest<'_>) -> Result<Vec<(String, f32)>> {
        Ok(self
            .lexical_search(request)?
            .into_iter()
            .map(|hit| (hit.id, hit.score))
            .collect())
    }
    /// The cosine similarity of `query` (unit length) with each live document of `ids` in
    /// `space`, as (id, score); ids not live are left out.
    fn score_ids(&self, space: &str, query: &[f32], ids: &[&str]) -> Result<Vec<(String, f32)>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(vector) = self.vector(space, id)? {
                out.push((id.to_string(), crate::distance::dot(query, &vector)));
            }
        }
        Ok(out)
    }
    /// The filterable metadata fields and their most frequent values (at most `max_values`
    /// each).
    fn facets(&self, max_values: usize) -> Vec<Facet>;
    /// The `k` documents nearest the query in one space that pass the filter, best first.
    fn search(&self, request: &SearchRequest<'_>) -> Result<Vec<SearchHit>>;
    /// Adds or replaces documents with their vectors (one per space); durable when it returns.
    fn upsert(
        &self,
        documents: &[UpsertDocument],
        models: &BTreeMap<String, ModelIdentity>,
    ) -> Result<UpsertReport>;
    /// Deletes `id`; false when it was not live. Durable when it returns.
    fn delete(&self, id: &str) -> Result<bool>;
    /// Applies writes acknowledged through another generation of this collection (an older one
    /// a server was still writing to while this one was committed) that this one lacks. A write
    /// whose vectors came from another model than a space's is embedded with `embedder`;
    /// without one it waits for a call with one. Returns how many writes were applied. Whoever
    /// serves a newly opened generation calls it before the generation takes writes.
    fn catch_up(&self, embedder: Option<&mut dyn SpaceEmbedder>) -> Result<usize>;
    /// Figures of the collection.
    fn stats(&self) -> Result<CollectionStats>;
}

/// A collection's A/B event log (see the module docs).
pub trait AbEventLog: Send + Sync + std::fmt::Debug {
    /// The salt of the collection's A/B test: random, drawn when the log starts, kept while it
    /// lives (see [`EventLog::salt`]).
    fn salt(&self) -> Result<String>;
    /// Records a served request.
    fn record_served(&self, served: &ServedRequest) -> Result<()>;
    /// The served request `request_id`, if recorded.
    fn served(&self, request_id: &str) -> Result<Option<ServedRequest>>;
    /// Records feedback on a served request.
    /// Records feedback on a served request, once per (request, document, event): false when
    /// that event was recorded before (nothing is written). Durable when it returns.
    fn record_feedback(&self, feedback: &FeedbackRecord) -> Result<bool>;
    /// Every served request.
    fn all_served(&self) -> Result<Vec<ServedRequest>>;
    /// Every feedback record.
    fn all_feedback(&self) -> Result<Vec<FeedbackRecord>>;
    /// Makes everything recorded durable.
    fn flush(&self) -> Result<()>;
}

/// Checks a search's filter and `k` (at least 1). Every implementation checks searches of
/// every kind of space with it.
pub fn check_search(filter: &crate::filter::Filter, k: usize) -> Result<()> {
    filter.validate()?;
    if k == 0 {
        return Err(crate::IndexError::InvalidSetting(
            "k must be at least 1".into(),
        ));
    }
    Ok(())
}

/// `vector` normalised to unit length as a vector of a space bound to `identity`; a vector of
/// another dimension, or one that is zero or not finite, is refused naming `what` (e.g.
/// `vector of document "p7" in space "tuned"`). Every implementation checks vectors with it.
pub fn unit_vector(
    vector: &[f32],
    identity: &ModelIdentity,
    what: &dyn Fn() -> String,
) -> Result<Vec<f32>> {
    if vector.len() != identity.dim {
        return Err(crate::IndexError::DimensionMismatch {
            what: what(),
            expected: identity.dim,
            found: vector.len(),
        });
    }
    let mut unit = vector.to_vec();
    if !crate::distance::normalize(&mut unit) {
        return Err(crate::IndexError::InvalidVector { what: what() });
    }
    Ok(unit)
}

/// The unit vectors of `upsert`, one per space of `spaces` (name and model), in that order; a
/// document without an id or without a vector for some space is refused, and so is a vector
/// [`unit_vector`] refuses. Every implementation checks upserts with it before writing.
pub fn upsert_vectors<'a>(
    upsert: &UpsertDocument,
    spaces: impl IntoIterator<Item = (&'a String, &'a ModelIdentity)>,
) -> Result<Vec<(String, Vec<f32>)>> {
    let id = &upsert.document.id;
    if id.is_empty() {
        return Err(crate::IndexError::InvalidDocument {
            id: String::new(),
            message: "empty id".into(),
        });
    }
    spaces
        .into_iter()
        .map(|(space, identity)| {
            let vector =
                upsert
                    .vectors
                    .get(space)
                    .ok_or_else(|| crate::IndexError::InvalidDocument {
                        id: id.clone(),
                        message: format!("no vector for space {space:?}"),
                    })?;
            let what = || format!("vector of document {id:?} in space {space:?}");
            Ok((space.clone(), unit_vector(vector, identity, &what)?))
        })
        .collect()
}

impl VectorStore for Store {
    fn location(&self) -> String {
        self.root().display().to_string()
    }

    fn collection_names(&self) -> Result<Vec<String>> {
        Store::collection_names(self)
    }

    fn current_generation(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.manifest(name)?.current)
    }

    fn spaces(&self, name: &str) -> Result<BTreeMap<String, ModelIdentity>> {
        Ok(self.manifest(name)?.spaces)
    }

    fn open_collection(&self, name: &str) -> Result<Arc<dyn ServedCollection>> {
        Ok(Arc::new(Store::open_collection(self, name)?))
    }

    fn build(
        &self,
        name: &str,
        source: BuildSource<'_>,
        spaces: &mut [SpaceSpec<'_>],
        settings: &BuildSettings,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<BuildReport> {
        crate::build::build_collection(self, name, source, spaces, settings, progress)
    }

    fn drop_collection(&self, name: &str) -> Result<bool> {
        Store::drop_collection(self, name)
    }

    fn open_events(&self, name: &str) -> Result<Arc<dyn AbEventLog>> {
        Ok(Arc::new(Store::open_events(self, name)?))
    }

    fn publish_report(&self, name: &str, files: &[(&str, &[u8])]) -> Result<()> {
        Store::publish_report(self, name, files)
    }

    fn report_files(&self, name: &str) -> Result<Vec<String>> {
        Store::report_files(self, name)
    }

    fn report_file(&self, name: &str, file: &str) -> Result<Option<Vec<u8>>> {
        Store::report_file(self, name, file)
    }
}

impl ServedCollection for Collection {
    fn name(&self) -> &str {
        Collection::name(self)
    }
    fn generation(&self) -> u64 {
        Collection::generation(self)
    }
    fn spaces(&self) -> BTreeMap<String, ModelIdentity> {
        Collection::spaces(self)
    }
    fn len(&self) -> usize {
        Collection::len(self)
    }
    fn document(&self, id: &str) -> Result<Option<StoredDocument>> {
        Collection::document(self, id)
    }
    fn vector(&self, space: &str, id: &str) -> Result<Option<Vec<f32>>> {
        Collection::vector(self, space, id)
    }
    fn facets(&self, max_values: usize) -> Vec<Facet> {
        Collection::facets(self, max_values)
    }
    fn lexical(&self) -> Option<LexicalSettings> {
        Collection::lexical(self)
    }
    fn lexical_search(&self, request: &LexicalRequest<'_>) -> Result<Vec<SearchHit>> {
        Collection::lexical_search(self, request)
    }
    fn score_ids(&self, space: &str, query: &[f32], ids: &[&str]) -> Result<Vec<(String, f32)>> {
        Collection::score_ids(self, space, query, ids)
    }
    fn search_ids(&self, request: &SearchRequest<'_>) -> Result<Vec<(String, f32)>> {
        let nodes = Collection::search_nodes(self, request)?;
        Collection::ids_of(self, nodes)
    }
    fn lexical_search_ids(&self, request: &LexicalRequest<'_>) -> Result<Vec<(String, f32)>> {
        let nodes = Collection::lexical_search_nodes(self, request)?;
        Collection::ids_of(self, nodes)
    }
    fn search(&self, request: &SearchRequest<'_>) -> Result<Vec<SearchHit>> {
        Collection::search(self, request)
    }
    fn upsert(
        &self,
        documents: &[UpsertDocument],
        models: &BTreeMap<String, ModelIdentity>,
    ) -> Result<UpsertReport> {
        Collection::upsert(self, documents, models)
    }
    fn delete(&self, id: &str) -> Result<bool> {
        Collection::delete(self, id)
    }
    fn catch_up(&self, embedder: Option<&mut dyn SpaceEmbedder>) -> Result<usize> {
        Collection::catch_up(self, embedder)
    }
    fn stats(&self) -> Result<CollectionStats> {
        Collection::stats(self)
    }
}

impl AbEventLog for EventLog {
    fn salt(&self) -> Result<String> {
        EventLog::salt(self)
    }
    fn record_served(&self, served: &ServedRequest) -> Result<()> {
        EventLog::record_served(self, served)
    }
    fn served(&self, request_id: &str) -> Result<Option<ServedRequest>> {
        EventLog::served(self, request_id)
    }
    fn record_feedback(&self, feedback: &FeedbackRecord) -> Result<bool> {
        EventLog::record_feedback(self, feedback)
    }
    fn all_served(&self) -> Result<Vec<ServedRequest>> {
        EventLog::all_served(self)
    }
    fn all_feedback(&self) -> Result<Vec<FeedbackRecord>> {
        EventLog::all_feedback(self)
    }
    fn flush(&self) -> Result<()> {
        EventLog::flush(self)
    }
}
