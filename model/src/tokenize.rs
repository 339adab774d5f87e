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
    /// Longest text in tokens, special tokens included, prompt slots not.
    max_seq_length: usize,
    /// The longest text asked for (`max_seq_length` before prompt slots cut it).
    requested_length: usize,
    do_lower_case: bool,
    /// The model's position embeddings (text and prompt slots share them).
    max_positions: usize,
    /// Placeholder tokens inserted after the first token for a soft prompt (0: none).
    prompt_slots: usize,
    /// The id the placeholders carry (their embeddings are replaced).
    placeholder_id: u32,
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
        truncate_at(&mut inner, max_seq_length).map_err(|message| {
            ModelError::InvalidTokenizer {
                path: dir.tokenizer_path.clone(),
                message,
            }
        })?;
        Ok(TextTokenizer {
            inner,
            max_seq_length,
            requested_length: max_seq_length,
            do_lower_case: dir.do_lower_case,
            max_positions: limit,
            prompt_slots: 0,
            placeholder_id: 0,
        })
    }

    /// This tokenizer with `slots` placeholder tokens (id `placeholder_id`) inserted after every
    /// text's first token, for a soft prompt of that many vectors (see [`crate::soft_prompt`]);
    /// 0 removes them. Texts keep `max_seq_length` tokens of their own where the model's
    /// positions allow it, and are cut to make room for the slots where they do not.
    pub fn with_prompt_slots(mut self, slots: usize, placeholder_id: u32) -> Result<Self> {
        let text_length = self
            .requested_length
            .min(self.max_positions.saturating_sub(slots));
        if text_length < 2 {
            return Err(ModelError::InvalidSetting {
                name: "prompt-tokens",
                problem: format!(
                    "{slots} prompt vectors leave no room for text in the model's {} positions",
                    self.max_positions
                ),
            });
        }
        truncate_at(&mut self.inner, text_length).map_err(|message| {
            ModelError::InvalidSetting {
                name: "prompt-tokens",
                problem: message,
            }
        })?;
        self.max_seq_length = text_length;
        self.prompt_slots = slots;
        self.placeholder_id = placeholder_id;
        Ok(self)
    }

    /// Longest text in tokens, special tokens included (a soft prompt's slots not: see
    /// [`TextTokenizer::max_input_tokens`]).
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Longest output in tokens: the text and a soft prompt's slots.
    pub fn max_input_tokens(&self) -> usize {
        self.max_seq_length + self.prompt_slots
    }

    /// Placeholder tokens for a soft prompt after each text's first token (0: none).
    pub fn prompt_slots(&self) -> usize {
        self.prompt_slots
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
            .map(|(e, cut)| {
                let mut text = TokenizedText {
                    truncated: cut || !e.get_overflowing().is_empty(),
                    ids: e.get_ids().to_vec(),
                    type_ids: e.get_type_ids().to_vec(),
                };
                self.insert_prompt_slots(&mut text);
                text
            })
            .collect())
    }

    /// Inserts the soft prompt's placeholders at [`crate::soft_prompt::FIRST_SLOT`].
    fn insert_prompt_slots(&self, text: &mut TokenizedText) {
        if self.prompt_slots == 0 {
            return;
        }
        let at = crate::soft_prompt::FIRST_SLOT.min(text.ids.len());
        let slots = vec![self.placeholder_id; self.prompt_slots];
        text.ids.splice(at..at, slots);
        let type_id = text.type_ids.first().copied().unwrap_or(0);
        let types = vec![type_id; self.prompt_slots];
        text.type_ids.splice(at..at, types);
    }
}

/// Sets `tokenizer` to cut texts (right side) to `max_length` tokens, special tokens included.
fn truncate_at(tokenizer: &mut Tokenizer, max_length: usize) -> std::result::Result<(), String> {
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map(|_| ())
        .map_err(|e| e.to_string())
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
    fn prompt_slots_follow_the_first_token_and_share_the_positions() {
        let plain = tokenizer(16);
        let text = "the red shoe fits well ".repeat(5);
        let without = plain.tokenize(&[text.as_str(), "red"], "").unwrap();
        let with = plain.clone().with_prompt_slots(3, 0).unwrap();
        assert_eq!((with.max_seq_length(), with.max_input_tokens()), (16, 19));
        let out = with.tokenize(&[text.as_str(), "red"], "").unwrap();
        for (w, o) in without.iter().zip(&out) {
            assert_eq!(o.ids[0], w.ids[0]);
            assert_eq!(o.ids[1..4], [0, 0, 0]);
            assert_eq!(o.ids[4..], w.ids[1..]);
            assert_eq!(o.type_ids.len(), o.ids.len());
        }
        // RandomBertSpec has 64 positions: 60 slots leave a 4-token text, 63 leave too little.
        let tight = plain.clone().with_prompt_slots(60, 0).unwrap();
        assert_eq!(
            tight.tokenize(&[text.as_str()], "").unwrap()[0].ids.len(),
            64
        );
        let back = tight.with_prompt_slots(0, 0).unwrap();
        assert_eq!(back.tokenize(&[text.as_str()], "").unwrap(), without[..1]);
        let err = plain.with_prompt_slots(63, 0).err().unwrap();
        assert!(err.to_string().contains("no room for text"), "{err}");
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(cut_at_char_boundary("héllo", 2), "h");
        assert_eq!(cut_at_char_boundary("héllo", 3), "hé");
        assert_eq!(cut_at_char_boundary("abc", 10), "abc");
    }
}
