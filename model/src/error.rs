//! Errors of the model crate: every variant names the file, field or input it is about.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// What can go wrong while loading a model directory or embedding text.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file the model directory needs is absent.
    #[error("{path}: missing ({what})")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What the file is for.
        what: String,
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
    /// A JSON file is malformed, or well-formed with a missing or mistyped field; the message
    /// carries the line and column.
    #[error("{path}: {}: {source}", json_problem(source))]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A configuration field has a value attune cannot use.
    #[error("{path}: field `{field}`: {problem}")]
    InvalidField {
        /// The file holding the field.
        path: PathBuf,
        /// The field's name.
        field: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// `config.json` names a model family attune does not implement.
    #[error("{path}: unsupported architecture `{found}`; supported: {supported}")]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// The `model_type` / `architectures` found.
        found: String,
        /// The families attune implements.
        supported: String,
    },
    /// `modules.json` lists a sentence-transformers module attune does not implement.
    #[error("{path}: unsupported module `{module}`; supported: {supported}")]
    UnsupportedModule {
        /// The modules file.
        path: PathBuf,
        /// The module type found.
        module: String,
        /// The module types attune implements.
        supported: String,
    },
    /// The weights file cannot be read, or a tensor is missing or has the wrong shape.
    #[error("{path}: invalid weights: {source}")]
    InvalidWeights {
        /// The weights file.
        path: PathBuf,
        /// candle's error, naming the tensor where it can.
        #[source]
        source: candle_core::Error,
    },
    /// `tokenizer.json` cannot be parsed or configured.
    #[error("{path}: invalid tokenizer: {message}")]
    InvalidTokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizer library's message.
        message: String,
    },
    /// Tokenizing one input text failed.
    #[error("input text {index}: tokenization failed: {message}")]
    Tokenize {
        /// Position of the text in the input.
        index: usize,
        /// The tokenizer library's message.
        message: String,
    },
    /// The requested device cannot be used.
    #[error("device `{spec}`: {problem}")]
    Device {
        /// The device as requested (`cpu`, `cuda:1`, ...).
        spec: String,
        /// Why it cannot be used.
        problem: String,
    },
    /// A setting passed by the caller is out of range.
    #[error("setting `{name}`: {problem}")]
    InvalidSetting {
        /// The setting's name.
        name: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Base↔tuned interpolation of a prompt-tuned model: its transformer weights are the base's,
    /// and a soft prompt has no counterpart in the base to interpolate with.
    #[error(
        "{path}: a prompt-tuned model cannot be interpolated with its base: its transformer \
         weights are the base's and its soft prompt has no counterpart there (use the tuned \
         model as it is, or tune with LoRA or full fine-tuning to merge)"
    )]
    PromptNotInterpolable {
        /// The tuned model directory.
        path: PathBuf,
    },
    /// A tensor computation failed (a bug or an exhausted device, not bad input).
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Data => "invalid content",
        _ => "invalid JSON",
    }
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
