//! Errors of the evaluation crate: each names the file and line, the setting, or the model it is
//! about.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// What can go wrong while reading evaluation data, retrieving, or writing a report.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file or directory the evaluation needs is absent.
    #[error("{path}: missing ({what})")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What the file is for.
        what: &'static str,
    },
    /// A file exists but could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a data file (corpus, queries, qrels, run) is malformed. Nothing is evaluated.
    #[error("{path}:{line}: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        problem: String,
    },
    /// A setting has a value that cannot be used (e.g. a cutoff of 0).
    #[error("invalid setting `{name}`: {problem}")]
    InvalidSetting {
        /// The setting's name, as the command line spells it.
        name: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Nothing can be evaluated: no query has both a judgment and a ranking.
    #[error("nothing to evaluate: {0}")]
    Empty(String),
    /// Loading a model or embedding text failed.
    #[error(transparent)]
    Model(#[from] attune_model::ModelError),
    /// A tensor operation failed during exact retrieval.
    #[error("exact retrieval: {0}")]
    Candle(#[from] candle_core::Error),
    /// A plot could not be drawn.
    #[error("plot `{plot}`: {problem}")]
    Plot {
        /// Which plot.
        plot: &'static str,
        /// The drawing backend's message.
        problem: String,
    },
}

impl EvalError {
    /// An [`EvalError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`EvalError::Malformed`] for line `line` (1-based) of `path`.
    pub fn malformed(path: impl Into<PathBuf>, line: usize, problem: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            line,
            problem: problem.into(),
        }
    }
}
