//! # attune-eval
//!
//! Retrieval evaluation for attune, reused by `attune eval`, training validation, the HTTP API
//! and the pipeline's promotion gate.
//!
//! Modules by lifecycle:
//! - [`data`] reads BEIR directories, qrels and run files (errors name file and line; data
//!   inconsistencies are counted, never silent);
//! - [`evaluator`] embeds (corpus from the [`cache`] when possible), retrieves exactly
//!   ([`retrieval`]: blocked matrix products and top-k selection) and scores;
//! - [`metrics`] computes nDCG, MAP, recall, precision, MRR and hit rate at cutoffs, under
//!   trec_eval's or sentence-transformers' definitions ([`Definitions`]);
//! - [`compare`] pairs two models' per-query values (wins/ties/losses, bootstrap interval,
//!   randomization test); [`gate`] decides promotion; [`report`] and [`plots`] write the files.
//!
//! ```
//! use attune_eval::{evaluate, MetricName, MetricsSettings, Qrels, Run, ScoredDoc};
//!
//! # fn main() -> Result<(), attune_eval::EvalError> {
//! let mut qrels = Qrels::default();
//! qrels.insert("q1", "doc-a", 2); // highly relevant
//! qrels.insert("q1", "doc-c", 1); // relevant
//!
//! let mut run = Run::new();
//! run.insert(
//!     "q1".to_string(),
//!     vec![
//!         ScoredDoc { doc_id: "doc-a".into(), score: 0.9 },
//!         ScoredDoc { doc_id: "doc-b".into(), score: 0.8 },
//!         ScoredDoc { doc_id: "doc-c".into(), score: 0.7 },
//!     ],
//! );
//!
//! let evaluation = evaluate(&run, &qrels, &MetricsSettings::default())?;
//! let ndcg = evaluation.mean_of(MetricName::NDCG_10).unwrap();
//! // DCG = 2/log2(2) + 1/log2(4) = 2.5; ideal = 2 + 1/log2(3).
//! assert!((ndcg - 2.5 / (2.0 + 1.0 / 3f64.log2())).abs() < 1e-12);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod cache;
pub mod compare;
pub mod data;
pub mod error;
pub mod evaluator;
pub mod gate;
pub mod metrics;
pub mod plots;
pub mod report;
pub mod retrieval;

pub use data::{BeirDataset, DataReport, Document, Qrels, Query, Run, ScoredDoc};
pub use error::{EvalError, Result};
pub use metrics::{evaluate, Definitions, Evaluation, MetricKind, MetricName, MetricsSettings};
