//! # attune-index
//!
//! The vector store behind search: collections of documents with named vector spaces (`base`,
//! `tuned`, ...), each bound to a model identity, persisted in sled, searched through HNSW
//! graphs built with hnsw_rs, and replaced in whole generations by re-index jobs.
//!
//! It does not depend on candle or on `attune-model`: vectors arrive already embedded, and
//! re-index jobs call an [`Embedder`] the caller implements.
//!
//! - [`store`]: the store directory, collections, generations, documents and vectors; with
//!   [`events`] (a collection's A/B event log) the only code that touches sled (names in
//!   [`keys`]).
//! - [`graph`]: HNSW graphs (hnsw_rs builds, a frozen copy searches and persists).
//! - [`build`]: resumable, incremental re-index jobs that switch generations atomically.
//! - [`lexical`]: a collection's lexical (BM25, tantivy) space; [`retrieval`]: spaces as
//!   requests name them (dense, `lexical`, `hybrid:<dense>`) and their fusion.
//! - [`corpus`], [`filter`]: input documents and metadata filters.
//! - [`vector_store`]: the seam, [`VectorStore`] / [`ServedCollection`] / [`AbEventLog`],
//!   implemented by [`Store`] and by [`ExactStore`] ([`exact`]: exact search in memory, the
//!   reference the API and pipeline tests also run against).
//!
//! ```
//! use std::collections::BTreeMap;
//! use attune_index::{build_collection, BuildMode, BuildSettings, BuildSource, Corpus, Embedder,
//!     Filter, ModelIdentity, SearchRequest, SpaceSpec, Store};
//!
//! /// A toy model: letter counts.
//! struct Letters(ModelIdentity);
//! impl Embedder for Letters {
//!     fn identity(&self) -> &ModelIdentity { &self.0 }
//!     fn embed_documents(&mut self, texts: &[&str])
//!         -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
//!         Ok(texts.iter().map(|t| letters(t)).collect())
//!     }
//! }
//! fn letters(text: &str) -> Vec<f32> {
//!     let mut v = vec![0.01f32; 26];
//!     for b in text.bytes().filter(u8::is_ascii_lowercase) { v[(b - b'a') as usize] += 1.0; }
//!     v
//! }
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("corpus.jsonl"), concat!(
//!     r#"{"_id": "1", "title": "red shoes", "text": "running", "metadata": {"category": "shoes"}}"#, "\n",
//!     r#"{"_id": "2", "title": "blue hat", "text": "wool", "metadata": {"category": "hats"}}"#, "\n"))?;
//! let corpus = Corpus::read(&dir.path().join("corpus.jsonl"))?;
//! let store = Store::open_or_create(&dir.path().join("store"))?;
//! let model = ModelIdentity { fingerprint: "letters-v1".into(), dim: 26, source: String::new(), encoding: None };
//! let mut embedder = Letters(model.clone());
//! let mut spaces = [SpaceSpec { name: "base".into(), embedder: &mut embedder }];
//! let source = BuildSource::Corpus { corpus: &corpus, mode: BuildMode::Merge };
//! let report = build_collection(&store, "products", source, &mut spaces,
//!     &BuildSettings::default(), &mut |_| {})?;
//! assert_eq!(report.added, 2);
//!
//! let products = store.open_collection("products")?;
//! let filter = Filter::parse_clauses(&["category=hats"])?;
//! let hits = products.search(&SearchRequest {
//!     space: "base", vector: &letters("wool hat"), model: &model, k: 5, ef: None,
//!     filter: &filter,
//! })?;
//! assert_eq!(hits[0].id, "2");
//! assert_eq!(hits.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backend;
pub mod build;
pub mod corpus;
pub mod distance;
pub mod error;
pub mod events;
pub mod exact;
pub mod filter;
pub mod fixtures;
pub mod graph;
pub mod identity;
pub mod journal;
pub mod keys;
pub mod lexical;
pub mod qdrant;
mod reports;
pub mod retrieval;
pub mod store;
pub mod vector_store;

pub use backend::{StoreBackend, StoreSettings};
pub use build::{
    build_collection, BuildEvent, BuildMode, BuildReport, BuildSettings, BuildSource, Embedder,
    SpaceSpec,
};
pub use corpus::{Corpus, Document};
pub use error::{IndexError, Result};
pub use events::{EventLog, FeedbackRecord, ServedRequest};
pub use exact::{ExactCollection, ExactStore};
pub use filter::{Filter, FilterClause};
pub use graph::{exact_top_k, Graph, GraphPoint, HnswParams, SlotHit};
pub use identity::{Encoding, ModelIdentity};
pub use journal::SpaceEmbedder;
pub use lexical::{LexicalIndex, LexicalSettings, LEXICAL_SPACE};
pub use qdrant::{QdrantCollection, QdrantSettings, QdrantStore};
pub use retrieval::{
    fuse, retrieve, DenseQuery, Fusion, FusionMethod, LexicalRequest, Retrieval, RetrievalRequest,
    FUSION_DEPTH, HYBRID_PREFIX,
};
pub use store::{
    content_hash, Collection, CollectionManifest, CollectionStats, CompactionPolicy, Facet,
    FacetValue, SearchHit, SearchRequest, SpaceStats, Store, StoredDocument, UpsertDocument,
    UpsertReport, EXACT_FILTER_LIMIT,
};
pub use vector_store::{AbEventLog, ServedCollection, VectorStore};

/// How long [`open_sled`] waits for a database lock held by this process's own handles.
///
/// sled releases its file lock only when the last of its background writes, still running
/// on sled's thread pool after the handles drop, lets go of the file: usually within
/// milliseconds, longer on a loaded machine. A lock still held after this is another
/// process's ([`IndexError::InUse`]).
pub const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens (creating) the sled database at `path` with a cache of `cache_bytes`, waiting up to
/// [`SLED_LOCK_WAIT`] for a lock that a dropped handle still holds.
pub(crate) fn open_sled(path: &std::path::Path, cache_bytes: u64) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| IndexError::storage(path, e));
        match opened {
            Err(IndexError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// Fsyncs a directory so that renames inside it survive a crash.
pub(crate) fn fsync_dir(dir: &std::path::Path) -> Result<()> {
    let handle = std::fs::File::open(dir).map_err(|e| IndexError::io(dir, e))?;
    handle.sync_all().map_err(|e| IndexError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_lock_released_soon_is_waited_for_and_one_kept_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let held = open_sled(&path, 1 << 20).unwrap();
        held.insert(b"k", b"v").unwrap();
        // The holder lets go a moment later: the second open waits for it.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        let reopened = open_sled(&path, 1 << 20).unwrap();
        releaser.join().unwrap();
        assert_eq!(reopened.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        // A lock kept past the wait is reported as in use, after the wait and not long after.
        let started = Instant::now();
        let err = open_sled(&path, 1 << 20).unwrap_err();
        assert!(matches!(err, IndexError::InUse { .. }), "{err}");
        assert!(
            started.elapsed() >= SLED_LOCK_WAIT,
            "{:?}",
            started.elapsed()
        );
        drop(reopened);
    }
}
