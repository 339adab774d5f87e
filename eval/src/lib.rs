//! # attune-eval
//!
//! Retrieval evaluation for attune.
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
