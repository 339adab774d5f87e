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

/// Fsyncs a directory so that renames inside it survive a crash.
pub(crate) fn fsync_dir(dir: &std::path::Path) -> Result<()> {
    let handle = std::fs::File::open(dir).map_err(|e| IndexError::io(dir, e))?;
    handle.sync_all().map_err(|e| IndexError::io(dir, e))
}
