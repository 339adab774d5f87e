//! # attune-eval
//!
//! Retrieval evaluation for attune.
#![warn(missing_docs)]

pub mod data;
pub mod error;
pub mod metrics;

pub use data::{BeirDataset, DataReport, Document, Qrels, Query, Run, ScoredDoc};
pub use error::{EvalError, Result};
pub use metrics::{evaluate, Definitions, Evaluation, MetricKind, MetricName, MetricsSettings};
