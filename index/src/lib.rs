//! # attune-index
//!
//! The vector store behind search: collections of documents with named vector spaces (`base`,
//! `tuned`, ...), each bound to a model fingerprint, persisted in sled (the only crate that
//! touches sled), searched through HNSW graphs built with hnsw_rs, and swapped in whole
//! generations by re-index jobs.
//!
//! It deliberately does not depend on candle or on `attune-model`: vectors arrive already
//! embedded. The store, the HNSW spaces and the generation switch are tracked by the index
//! issue; this crate holds the place and the dependency edges in the workspace until then.
