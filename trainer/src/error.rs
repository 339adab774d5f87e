//! Errors of the trainer crate: each names the file and line, the setting, or the model it is
//! about.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// What can go wrong while reading training data or training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file or directory training needs is absent or unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a pairs file is malformed. Nothing is trained or written.
    #[error("{path}:{line}: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        problem: String,
    },
    /// The data check found fatal problems (listed in the message); nothing is trained or
    /// written.
    #[error("{path}: training data refused:\n{problems}")]
    RefusedData {
        /// The training data.
        path: PathBuf,
        /// The fatal findings, one per line, with file:line samples.
        problems: String,
    },
    /// A setting is out of range or contradicts another.
    #[error("setting `{name}`: {problem}")]
    InvalidSetting {
        /// The setting (as the command line spells it).
        name: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A checkpoint cannot be used to resume (missing, corrupt, or from a different run).
    #[error("{path}: cannot resume: {problem}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A tensor computation failed (a bug or an exhausted device, not bad input).
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading a BEIR directory failed (the message names file and line). Boxed: it is large.
    #[error(transparent)]
    Eval(Box<attune_eval::EvalError>),
    /// Loading a model or tokenizing failed. Boxed: it is large.
    #[error(transparent)]
    Model(Box<attune_model::ModelError>),
}

impl From<attune_eval::EvalError> for TrainError {
    fn from(e: attune_eval::EvalError) -> Self {
        Self::Eval(Box::new(e))
    }
}

impl From<attune_model::ModelError> for TrainError {
    fn from(e: attune_model::ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

impl TrainError {
    /// A [`TrainError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`TrainError::Malformed`] for line `line` (1-based) of `path`.
    pub fn malformed(path: impl Into<PathBuf>, line: usize, problem: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            line,
            problem: problem.into(),
        }
    }
}
