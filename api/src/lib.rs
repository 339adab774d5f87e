//! # attune-api
//!
//! The HTTP layer: actix-web handlers, one module per resource, over an
//! [`attune_model::Encoder`] (queries are embedded on a dedicated inference thread, never on
//! actix's workers) and an `attune-index` store. It owns no model code and no storage format.
//!
//! The endpoints (search, compare, evaluate, visibility, documents, OpenAI-compatible
//! embeddings, health and metrics) are tracked by the API issue; this crate holds the place and
//! the dependency edges in the workspace until then.
