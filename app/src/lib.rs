//! attune's application layer: the one place where the engines (`attune-model`,
//! `attune-trainer`, `attune-eval`, `attune-index`) are composed into what a user asks for. It
//! knows nothing of the command line or HTTP: `attune` (the binary) and `attune-api` (the server)
//! only translate their input into the types here and print or serialize what comes back.
//!
//! What it owns today:
//! - [`embedder`]: a model loaded for a vector space, with the [`ModelIdentity`] the space binds
//!   to; every loader (index build, CLI search, the server) rebuilds the same encoder from the
//!   identity recorded in the store.
//! - [`index_job`], [`train_job`], [`mine_job`]: the re-index, training and mining jobs, each
//!   with its settings (what a user tunes: [`IndexSettings`], [`TrainSettings`],
//!   [`MineSettings`]) kept apart from its inputs (what the job is wired with: data, model and
//!   output paths);
//! - [`eval_job`]: evaluation of a candidate against a baseline on a domain and a general set,
//!   with the gate, returning the typed report; the alpha sweep;
//! - [`pipeline`]: the stages from data to a promoted model, their resumable markers and the
//!   typed report (`pipeline.json`) that the server serves and the page reads;
//! - [`collection_eval`]: judged queries evaluated by searching a built collection, in its
//!   vector, lexical and hybrid spaces (`attune eval --collection`, the pipeline report);
//! - [`feedback`]: training pairs from shoppers' clicks, add-to-carts and purchases, with
//!   position-bias correction (`attune feedback export`, the pipeline's `[data] feedback`);
//! - [`relevance`]: rank moves between spaces, a document's visibility across queries, judged
//!   queries evaluated over a served collection (the server's compare, visibility and evaluate).
//!
//! With the `cli` feature (the binary turns it on), settings structs also derive `clap::Args`,
//! so a command-line flag and a `pipeline.toml` key are one declaration; the library itself
//! neither parses arguments nor prints.
//!
//! See `docs/architecture.md` for the layers and the owner of each on-disk format.
//!
//! [`ModelIdentity`]: attune_index::ModelIdentity

#![warn(missing_docs)]

pub mod check_job;
pub mod collection_eval;
pub mod embedder;
pub mod eval_job;
pub mod feedback;
pub mod index_job;
pub mod mine_job;
pub mod pipeline;
pub mod relevance;
pub mod train_job;

pub use check_job::{run_check, CheckInputs, CheckOutcome};
pub use collection_eval::{evaluate_collection, CollectionEvalError, CollectionEvalInputs};
pub use embedder::{model_identity, EmbedderError, EncodingChoice, ModelEmbedder};
pub use eval_job::{
    evaluate_models, sweep_alphas, DataInput, EvalEvent, EvalJobError, EvaluationInputs,
    EvaluationSettings, ModelInput, Sweep, SweepPoint,
};
pub use index_job::{IndexInputs, IndexJob, IndexJobError, IndexSettings, SpaceModel};
pub use mine_job::{MineJob, MineJobInputs, MineOutcome, MineSettings, RankWindow};
pub use pipeline::{
    run_pipeline, PipelineConfig, PipelineError, PipelineObserver, PipelineOutcome, PipelineReport,
    Stage,
};
pub use train_job::{TrainJob, TrainJobInputs, TrainSettings};
