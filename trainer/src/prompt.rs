//! Prompt tuning (Lester et al., 2021): a soft prompt of `N` vectors placed after every text's
//! first token is trained while the transformer stays frozen. The tuned directory is the base
//! model with the prompt in its own file ([`attune_model::soft_prompt::FILE`]); attune's encoder
//! applies it, sentence-transformers does not read it (the card says so).

use std::sync::{Arc, Mutex};

use attune_model::{Encoder, InputEmbeddingHook, Mode, SoftPrompt, TextKind};
use candle_core::{Tensor, Var};
use serde::Serialize;

use crate::error::{Result, TrainError};

/// The name of the prompt among the trained variables (checkpoints, the written weights).
pub const VARIABLE: &str = "soft_prompt";

/// Prompt-tuning settings (`--prompt-tokens`, `--prompt-init`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptSettings {
    /// Vectors in the soft prompt (each costs one token of every forward pass).
    pub tokens: usize,
    /// The prompt starts as the token embeddings of this text's tokens (cycled or cut to
    /// `tokens`), so step 0 reads a sensible instruction rather than noise.
    pub init_text: String,
}

impl PromptSettings {
    /// The default initial text.
    pub const DEFAULT_INIT: &'static str = "Represent this text for retrieving relevant documents";

    /// Checks ranges; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        if self.tokens == 0 {
            return Err(TrainError::InvalidSetting {
                name: "prompt-tokens",
                problem: "must be at least 1".into(),
            });
        }
        if self.init_text.trim().is_empty() {
            return Err(TrainError::InvalidSetting {
                name: "prompt-init",
                problem: "must name at least one word".into(),
            });
        }
        Ok(())
    }
}

/// Applies a soft prompt to `encoder` (whose weights should be frozen) and returns it as the
/// run's only trainable variable. It starts from the model's own prompt when the model was
/// prompt-tuned before (of the same length), else from `settings.init_text`.
pub fn attach(encoder: &mut Encoder, settings: &PromptSettings) -> Result<Vec<(String, Var)>> {
    settings.validate()?;
    let init = match encoder.soft_prompt() {
        Some(own) if own.len() == settings.tokens => own.vectors().detach(),
        Some(own) => {
            return Err(TrainError::InvalidSetting {
                name: "prompt-tokens",
                problem: format!(
                    "the model already has a soft prompt of {} vectors; continue it with \
                     --prompt-tokens {}",
                    own.len(),
                    own.len()
                ),
            })
        }
        None => initial_vectors(encoder, settings)?,
    };
    let var = Var::from_tensor(&init)?;
    encoder.set_soft_prompt(Some(SoftPrompt::new(var.as_tensor().clone())?))?;
    Ok(vec![(VARIABLE.to_string(), var)])
}

/// The token embeddings of the init text's tokens (special tokens left out), cycled to
/// `settings.tokens` rows: read through the input-embedding hook, so every family works alike.
fn initial_vectors(encoder: &mut Encoder, settings: &PromptSettings) -> Result<Tensor> {
    let text = &encoder.tokenize(&[settings.init_text.as_str()], TextKind::Plain)?[0];
    let seen: Arc<Mutex<Option<Tensor>>> = Arc::default();
    let capture: InputEmbeddingHook = {
        let seen = seen.clone();
        Arc::new(move |words: &Tensor| {
            *seen.lock().expect("capture lock") = Some(words.clone());
            Ok(words.clone())
        })
    };
    encoder.model_mut().set_input_embedding_hook(Some(capture));
    let ran = encoder.forward_batch(&[text], Mode::Inference);
    encoder.model_mut().set_input_embedding_hook(None);
    ran?;
    let words = seen
        .lock()
        .expect("capture lock")
        .take()
        .expect("the hook saw the embeddings")
        .squeeze(0)?;
    // Drop the first and the last token ([CLS] … [SEP], <s> … </s>) when there is text between.
    let len = text.ids.len();
    let (first, count) = if len > 2 { (1, len - 2) } else { (0, len) };
    let rows: Vec<u32> = (0..settings.tokens)
        .map(|i| (first + i % count) as u32)
        .collect();
    let rows = Tensor::new(rows.as_slice(), words.device())?;
    Ok(words.index_select(&rows, 0)?.detach())
}

/// The soft prompt file for the written model directory, from the trained `weights`.
pub fn prompt_file(
    weights: &std::collections::HashMap<String, Tensor>,
) -> Result<(String, Vec<u8>)> {
    let vectors = weights
        .get(VARIABLE)
        .ok_or_else(|| TrainError::InvalidSetting {
            name: "prompt-tokens",
            problem: "the trained weights hold no soft prompt".into(),
        })?;
    let bytes = SoftPrompt::new(vectors.clone())?.to_bytes()?;
    Ok((attune_model::soft_prompt::FILE.to_string(), bytes))
}
