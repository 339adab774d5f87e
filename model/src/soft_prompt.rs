//! Prompt tuning's soft prompt: `N` learned input vectors placed after the first token of every
//! text (Lester et al., 2021), the transformer itself unchanged. The only module that reads or
//! writes [`FILE`].
//!
//! Layout of a text with a soft prompt of `N` vectors (right-padded as every batch is):
//! ```text
//! position  0      1 .. N          N+1 ..
//! token     [CLS]  N placeholders  the text's own tokens (truncated to max_seq_length) [SEP]
//! input     E[CLS] the prompt      E[token] ...
//! ```
//! The tokenizer inserts placeholder ids ([`TextTokenizer::with_prompt_slots`]); the model's
//! input-embedding hook ([`SoftPrompt::hook`]) replaces their embeddings with the prompt before
//! positions are added; pooling leaves the prompt's positions out (as sentence-transformers'
//! `include_prompt: false` does), so the pooled tokens are the text's.
//!
//! [`TextTokenizer::with_prompt_slots`]: crate::TextTokenizer::with_prompt_slots

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::family::InputEmbeddingHook;

/// The soft prompt's file in a model directory (safetensors, one f32 tensor [`TENSOR`] of shape
/// `(N, hidden)`).
pub const FILE: &str = "soft_prompt.safetensors";
/// The tensor's name inside [`FILE`].
pub const TENSOR: &str = "soft_prompt";
/// The position of the prompt's first vector (after the first token, `[CLS]` or `<s>`).
pub const FIRST_SLOT: usize = 1;

/// A soft prompt: `(N, hidden)` f32 vectors. Cloning shares the tensor, so a prompt built on a
/// training variable sees the optimizer's updates.
#[derive(Clone, Debug)]
pub struct SoftPrompt {
    vectors: Tensor,
}

impl SoftPrompt {
    /// Wraps `(N, hidden)` vectors (N ≥ 1).
    pub fn new(vectors: Tensor) -> Result<Self> {
        let (n, _) = vectors.dims2()?;
        if n == 0 {
            return Err(ModelError::InvalidSetting {
                name: "prompt-tokens",
                problem: "a soft prompt needs at least one vector".into(),
            });
        }
        Ok(SoftPrompt { vectors })
    }

    /// Reads [`FILE`] at `path` onto `device`; its width must be `hidden`.
    pub fn read(path: &Path, hidden: usize, device: &Device) -> Result<Self> {
        let invalid = |message: String| ModelError::InvalidWeights {
            path: path.to_path_buf(),
            source: candle_core::Error::Msg(message),
        };
        let mut tensors = candle_core::safetensors::load(path, device).map_err(|source| {
            ModelError::InvalidWeights {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let vectors = tensors
            .remove(TENSOR)
            .ok_or_else(|| invalid(format!("no tensor `{TENSOR}`")))?;
        match vectors.dims() {
            [n, h] if *n > 0 && *h == hidden => {}
            dims => {
                return Err(invalid(format!(
                    "`{TENSOR}` has shape {dims:?}; expected (N ≥ 1, {hidden})"
                )))
            }
        }
        Self::new(vectors.to_dtype(DType::F32)?)
    }

    /// The file's bytes (safetensors), for writing into a model directory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let tensors = HashMap::from([(
            TENSOR.to_string(),
            self.vectors.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
        )]);
        let bytes = safetensors::serialize(&tensors, None).map_err(|e| {
            ModelError::Candle(candle_core::Error::Msg(format!("soft prompt: {e}")))
        })?;
        Ok(bytes)
    }

    /// Vectors in the prompt (`N`).
    pub fn len(&self) -> usize {
        self.vectors.dim(0).expect("two dimensions")
    }

    /// Never true: a prompt has at least one vector.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `(N, hidden)` vectors.
    pub fn vectors(&self) -> &Tensor {
        &self.vectors
    }

    /// The input-embedding hook that puts the prompt at positions `FIRST_SLOT..FIRST_SLOT + N`
    /// of `(batch, seq, hidden)` token embeddings (differentiable in the prompt).
    pub fn hook(&self) -> InputEmbeddingHook {
        let vectors = self.vectors.clone();
        std::sync::Arc::new(move |words: &Tensor| place_prompt(words, &vectors))
    }
}

/// `words` with rows `FIRST_SLOT..FIRST_SLOT + N` of every text replaced by `vectors`.
fn place_prompt(words: &Tensor, vectors: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, seq, hidden) = words.dims3()?;
    let n = vectors.dim(0)?;
    if seq < FIRST_SLOT + n {
        candle_core::bail!(
            "a text of {seq} tokens has no room for a soft prompt of {n} vectors \
             (the tokenizer inserts its slots)"
        );
    }
    let prompt = vectors
        .to_dtype(words.dtype())?
        .unsqueeze(0)?
        .broadcast_as((batch, n, hidden))?;
    let mut parts = vec![words.narrow(1, 0, FIRST_SLOT)?, prompt];
    let rest = seq - FIRST_SLOT - n;
    if rest > 0 {
        parts.push(words.narrow(1, FIRST_SLOT + n, rest)?);
    }
    Tensor::cat(&parts, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_replaces_its_slots_and_nothing_else() {
        let device = Device::Cpu;
        let words = Tensor::arange(0f32, 2.0 * 5.0 * 3.0, &device)
            .unwrap()
            .reshape((2, 5, 3))
            .unwrap();
        let prompt = SoftPrompt::new(Tensor::full(-1f32, (2, 3), &device).unwrap()).unwrap();
        let out = prompt.hook()(&words).unwrap().to_vec3::<f32>().unwrap();
        let words = words.to_vec3::<f32>().unwrap();
        for b in 0..2 {
            assert_eq!(out[b][0], words[b][0]);
            assert_eq!(out[b][1], vec![-1.0; 3]);
            assert_eq!(out[b][2], vec![-1.0; 3]);
            assert_eq!(out[b][3..], words[b][3..]);
        }
        let short = Tensor::zeros((1, 2, 3), DType::F32, &device).unwrap();
        assert!(prompt.hook()(&short).is_err());
    }

    #[test]
    fn a_written_prompt_reads_back_and_a_wrong_width_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let vectors = Tensor::randn(0f32, 1.0, (4, 8), &Device::Cpu).unwrap();
        let prompt = SoftPrompt::new(vectors.clone()).unwrap();
        std::fs::write(&path, prompt.to_bytes().unwrap()).unwrap();
        let back = SoftPrompt::read(&path, 8, &Device::Cpu).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(
            back.vectors().to_vec2::<f32>().unwrap(),
            vectors.to_vec2::<f32>().unwrap()
        );
        let err = SoftPrompt::read(&path, 16, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("(N ≥ 1, 16)"), "{err}");
    }
}
