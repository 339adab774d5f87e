//! Tokenization configured by the model directory, not by `tokenizer.json`'s own defaults.
//!
//! all-MiniLM-L6-v2's `tokenizer.json` pads and truncates to a fixed 128 tokens, while the model
//! is meant to read 256 (`sentence_bert_config.json`). Here padding is switched off (the encoder
//! pads each batch to its longest text) and truncation is set to the model's `max_seq_length`.

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{ModelError, Result};
use crate::model_dir::ModelDir;

/// Bytes of text tokenized per token of the model's limit (see
/// [`TextTokenizer::max_text_bytes`]). English averages about 4–5 bytes per WordPiece token and
/// CJK about 3; 64 leaves room for long words, markup and whitespace runs.
pub const BYTES_PER_TOKEN: usize = 64;

/// The longest prefix of `text` of at most `max_bytes` bytes that ends at a character boundary.
pub fn cut_at_char_boundary(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

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

    /// The most bytes of a text that are tokenized: [`BYTES_PER_TOKEN`] per token of
    /// `max_seq_length`. Text beyond it is cut first (at a character boundary), so a 7 MB text
    /// costs what a long one does; real text needs far fewer bytes per token, so the tokens
    /// kept, and the embedding, are those of the whole text.
    pub fn max_text_bytes(&self) -> usize {
        self.max_seq_length * BYTES_PER_TOKEN
    }

    /// Tokenizes `texts` (in parallel), each as `prefix + text`, lower-cased when the model asks
    /// for it, as sentence-transformers 6.x does: surrounding whitespace is kept (5.x stripped
    /// it; WordPiece tokenizers ignore it either way, byte-level BPE and SentencePiece ones do
    /// not). Texts longer than [`TextTokenizer::max_text_bytes`] are cut to it first.
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S], prefix: &str) -> Result<Vec<TokenizedText>> {
        let limit = self.max_text_bytes();
        let mut cut_texts = vec![false; texts.len()];
        let inputs: Vec<String> = texts
            .iter()
            .zip(cut_texts.iter_mut())
            .map(|(t, cut)| {
                let text = t.as_ref();
                let kept = cut_at_char_boundary(text, limit);
                *cut = kept.len() < text.len();
                let joined = format!("{prefix}{kept}");
                if self.do_lower_case {
                    joined.to_lowercase()
                } else {
                    joined
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
            .zip(cut_texts)
            .map(|(e, cut)| TokenizedText {
                truncated: cut || !e.get_overflowing().is_empty(),
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{write_random_bert, RandomBertSpec};

    fn tokenizer(max_seq_length: usize) -> TextTokenizer {
        let dir = tempfile::tempdir().unwrap();
        write_random_bert(dir.path(), &RandomBertSpec::default()).unwrap();
        let model = ModelDir::open(dir.path()).unwrap();
        TextTokenizer::new(&model, Some(max_seq_length)).unwrap()
    }

    #[test]
    fn a_huge_text_is_cut_before_tokenizing_and_keeps_the_tokens_of_the_whole() {
        let tokenizer = tokenizer(16);
        let sentence = "the red shoe fits well ";
        let huge = sentence.repeat(300_000); // 6.9 MB
        let just_over = sentence.repeat(5);
        let out = tokenizer
            .tokenize(&[huge.as_str(), just_over.as_str()], "")
            .unwrap();
        // Cut to 16 × 64 bytes first, the huge text gives the tokens of its start.
        assert_eq!(out[0].ids, out[1].ids);
        assert_eq!(out[0].ids.len(), 16);
        assert!(out[0].truncated && out[1].truncated);
        let whole = tokenizer.inner.encode(just_over.as_str(), true).unwrap();
        assert_eq!(out[1].ids, whole.get_ids());
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(cut_at_char_boundary("héllo", 2), "h");
        assert_eq!(cut_at_char_boundary("héllo", 3), "hé");
        assert_eq!(cut_at_char_boundary("abc", 10), "abc");
    }
}
