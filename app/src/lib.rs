//! attune's application layer: the one place where the engines (`attune-model`,
//! `attune-trainer`, `attune-eval`, `attune-index`) are composed into what a user asks for. It
//! knows nothing of the command line or HTTP: `attune` (the binary) and `attune-api` (the server)
//! only translate their input into the types here and print or serialize what comes back.
//!
//! What it owns today:
//! - [`embedder`]: a model loaded for a vector space, with the [`ModelIdentity`] the space binds
//!   to; every loader (index build, CLI search, the server) rebuilds the same encoder from the
//!   identity recorded in the store.
//! - [`index_job`]: the re-index job, with [`IndexSettings`] (what a user tunes) kept apart from
//!   [`IndexInputs`] (what the job is wired with).
//!
//! With the `cli` feature (the binary turns it on), settings structs also derive `clap::Args`,
//! so a command-line flag and a `pipeline.toml` key are one declaration; the library itself
//! neither parses arguments nor prints.
//!
//! See `docs/architecture.md` for the layers and the owner of each on-disk format.
//!
//! [`ModelIdentity`]: attune_index::ModelIdentity

#![warn(missing_docs)]

pub mod embedder;
pub mod index_job;

pub use embedder::{model_identity, EmbedderError, ModelEmbedder};
pub use index_job::{IndexInputs, IndexJob, IndexJobError, IndexSettings, SpaceModel};
