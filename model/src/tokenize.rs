//! Tokenization configured by the model directory, not by `tokenizer.json`'s own defaults.
//!
//! all-MiniLM-L6-v2's `tokenizer.json` pads and truncates to a fixed 128 tokens, while the model
//! is meant to read 256 (`sentence_bert_config.json`). Here padding is switched off (the encoder
//! pads each batch to its longest text) and truncation is set to the model's `max_seq_length`.

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{ModelError, Result};
use crate::model_dir::ModelDir;

/// One tokenized text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedText {
    /// Token ids, special tokens included, at most `max_seq_length` long.
    pub ids: Vec<u32>,
    /// Segment ids, as long as `ids`.
    pub type_ids: Vec<u32>,
    /// Whether the text was longer than `max_seq_length` and lost its tail.
    pub truncated: bool,
}

/// A tokenizer set up as sentence-transformers sets it up for a model directory.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_seq_length: usize,
    do_lower_case: bool,
}

impl TextTokenizer {
    /// Loads the directory's tokenizer; `max_seq_length` overrides the directory's limit and must
    /// not exceed the model's position embeddings.
    pub fn new(dir: &ModelDir, max_seq_length: Option<usize>) -> Result<Self> {
        let limit = dir.architecture.max_position_embeddings();
        let max_seq_length = max_seq_length.unwrap_or(dir.max_seq_length);
        if max_seq_length < 2 || max_seq_length > limit {
            return Err(ModelError::InvalidSetting {
                name: "max_seq_length",
                problem: format!(
                    "{max_seq_length} is outside 2..={limit} (the model's max_position_embeddings)"
                ),
            });
        }
        let mut inner = dir.load_tokenizer()?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| ModelError::InvalidTokenizer {
                path: dir.tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        Ok(TextTokenizer {
            inner,
            max_seq_length,
            do_lower_case: dir.do_lower_case,
        })
    }

    /// Longest output in tokens.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Tokenizes `texts` (in parallel), each as `prefix + text` with surrounding whitespace
    /// removed, lower-cased when the model asks for it (as sentence-transformers does).
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S], prefix: &str) -> Result<Vec<TokenizedText>> {
        let inputs: Vec<String> = texts
            .iter()
            .map(|t| {
                let joined = format!("{prefix}{}", t.as_ref());
                let trimmed = joined.trim();
                if self.do_lower_case {
                    trimmed.to_lowercase()
                } else {
                    trimmed.to_string()
                }
            })
            .collect();
        let borrowed: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let encodings = match self.inner.encode_batch(borrowed, true) {
            Ok(encodings) => encodings,
            // Find the offending text so the error can name it.
            Err(batch_err) => {
                let index = inputs
                    .iter()
                    .position(|t| self.inner.encode(t.as_str(), true).is_err())
                    .unwrap_or(0);
                return Err(ModelError::Tokenize {
                    index,
                    message: batch_err.to_string(),
                });
            }
        };
        Ok(encodings
            .into_iter()
            .map(|e| TokenizedText {
                truncated: !e.get_overflowing().is_empty(),
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }
}
