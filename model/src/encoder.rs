//! The sentence encoder: texts in, embeddings out, in the order given.
//!
//! Texts are tokenized in parallel, sorted by token length (longest first) and cut into batches
//! bounded by a text count and a padded-token budget, so padding stays small and memory bounded.
//! The same [`Encoder::forward_batch`] serves inference and, with [`Mode::Train`], training.

use candle_core::{DType, Device, Tensor};

use crate::config::PoolingMode;
use crate::device::Precision;
use crate::error::{ModelError, Result};
use crate::family::TransformerModel;
use crate::layers::Mode;
use crate::model_dir::ModelDir;
use crate::pooling::{l2_normalize, pool};
use crate::side_by_side::{run_side_by_side, BatchThreads};
use crate::soft_prompt::SoftPrompt;
use crate::tokenize::{TextTokenizer, TokenizedText};

/// Encoder settings. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderSettings {
    /// Most texts in one forward pass (default 32).
    pub batch_size: usize,
    /// Most padded tokens (texts × longest text) in one forward pass; bounds memory
    /// (default 8192, i.e. 32 texts of 256 tokens).
    pub max_tokens_per_batch: usize,
    /// Overrides the model's `max_seq_length` (tokens, special tokens included); `None` keeps it.
    pub max_seq_length: Option<usize>,
    /// Prepended to every [`TextKind::Query`] text; `None` uses the model's `query` prompt, if any.
    pub query_prefix: Option<String>,
    /// Prepended to every [`TextKind::Document`] text; `None` uses the model's `document` (or
    /// `passage`) prompt, if any.
    pub document_prefix: Option<String>,
    /// The dtype of the transformer's matrix products (default [`Precision::Auto`]: bf16 on a
    /// CUDA GPU, f32 on the CPU).
    pub precision: Precision,
    /// Matryoshka: keep only the first this many dimensions of each embedding, re-normalised
    /// to unit length (default `None`: the model's whole vector). At most the model's dimension.
    pub truncate_dim: Option<usize>,
    /// Batches in flight at once on the CPU, each computed by one thread (default `None`: one
    /// per thread of the calling rayon pool). Whole batches side by side keep every core busy
    /// through the attention, the element-wise passes and the ends of the products, where one
    /// batch split across the cores leaves some waiting; `Some(1)` computes one batch at a time
    /// over all threads, the quicker way to a single batch. The embeddings are the same either
    /// way; peak activation memory grows with the batches in flight. A GPU runs one at a time.
    pub concurrent_batches: Option<usize>,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        EncoderSettings {
            batch_size: 32,
            max_tokens_per_batch: 8192,
            max_seq_length: None,
            query_prefix: None,
            document_prefix: None,
            precision: Precision::Auto,
            truncate_dim: None,
            concurrent_batches: None,
        }
    }
}

/// What the texts are, which decides the prefix they get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextKind {
    /// No prefix: exactly what sentence-transformers' `encode(texts)` does.
    #[default]
    Plain,
    /// Search queries (e5/bge style models want e.g. `"query: "`).
    Query,
    /// Documents / passages.
    Document,
}

/// Embeddings of a list of texts, with what happened on the way.
#[derive(Debug, Clone, Default)]
pub struct EmbedOutput {
    /// One vector per input text, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// How many texts were longer than the maximum sequence length and were truncated.
    pub truncated: usize,
    /// Real (non-padding) tokens processed, special tokens included.
    pub tokens: usize,
    /// Padded tokens processed (what the model actually computed on).
    pub padded_tokens: usize,
    /// Floating-point operations of the transformer's matrix products for these batches (see
    /// [`Encoder::forward_flops`]).
    pub flops: f64,
}

/// A sentence encoder: a [`TransformerModel`] of any registered family with its tokenizer,
/// pooling and normalization.
pub struct Encoder {
    model: Box<dyn TransformerModel>,
    tokenizer: TextTokenizer,
    pooling_modes: Vec<PoolingMode>,
    /// Dense projections after pooling (frozen).
    dense: Vec<crate::dense::DenseLayer>,
    normalize: bool,
    dimension: usize,
    pad_id: u32,
    query_prefix: String,
    document_prefix: String,
    settings: EncoderSettings,
    device: Device,
    /// The soft prompt in force (see [`crate::soft_prompt`]), if any.
    soft_prompt: Option<SoftPrompt>,
    /// The threads of batches computed side by side (see [`crate::side_by_side`]).
    batch_threads: BatchThreads,
}

impl Encoder {
    /// Loads the model directory's weights onto `device` (f32).
    pub fn load(dir: &ModelDir, device: &Device, settings: EncoderSettings) -> Result<Self> {
        let vb = dir.var_builder(DType::F32, device)?;
        let model = dir
            .architecture
            .load(vb)
            .map_err(|source| ModelError::InvalidWeights {
                path: dir.weights.path().to_path_buf(),
                source,
            })?;
        Self::from_model(model, dir, device, settings)
    }

    /// Loads the model directory's weights as training variables (f32) and returns the encoder
    /// with the [`candle_nn::VarMap`] holding them; every variable is used by the forward pass.
    pub fn load_trainable(
        dir: &ModelDir,
        device: &Device,
        settings: EncoderSettings,
    ) -> Result<(Self, candle_nn::VarMap)> {
        let (varmap, vb) = dir.trainable_var_builder(device)?;
        let model = dir
            .architecture
            .load(vb)
            .map_err(|source| ModelError::InvalidWeights {
                path: dir.weights.path().to_path_buf(),
                source,
            })?;
        Ok((Self::from_model(model, dir, device, settings)?, varmap))
    }

    /// Wraps an already built model (e.g. one whose weights are training variables); the
    /// directory's soft prompt, if it has one, is applied.
    pub fn from_model(
        mut model: Box<dyn TransformerModel>,
        dir: &ModelDir,
        device: &Device,
        settings: EncoderSettings,
    ) -> Result<Self> {
        for (name, value) in [
            ("batch_size", Some(settings.batch_size)),
            ("concurrent_batches", settings.concurrent_batches),
        ] {
            if value == Some(0) {
                return Err(ModelError::InvalidSetting {
                    name,
                    problem: "must be at least 1".to_string(),
                });
            }
        }
        if device.is_cpu() {
            // Subnormals stall the CPU's vector units; see `flush_denormals`.
            crate::device::flush_denormals();
        }
        model.set_matmul_dtype(settings.precision.matmul_dtype(device));
        if settings.precision == Precision::Int8 {
            let problem = if device.is_cpu() {
                model.quantize_int8().err()
            } else {
                Some("int8 products run on the CPU only (bf16 is the GPU's)".to_string())
            };
            if let Some(problem) = problem {
                return Err(ModelError::InvalidSetting {
                    name: "precision",
                    problem,
                });
            }
        }
        // A soft prompt is the encoder's to install (with its tokenizer slots), not the model's.
        model.set_input_embedding_hook(None);
        let tokenizer = TextTokenizer::new(dir, settings.max_seq_length)?;
        if settings.max_tokens_per_batch < tokenizer.max_seq_length() {
            return Err(ModelError::InvalidSetting {
                name: "max_tokens_per_batch",
                problem: format!(
                    "{} is below max_seq_length {}: the longest text would not fit",
                    settings.max_tokens_per_batch,
                    tokenizer.max_seq_length()
                ),
            });
        }
        let prompt = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| dir.prompts.get(*n).cloned())
                .unwrap_or_default()
        };
        let query_prefix = settings
            .query_prefix
            .clone()
            .unwrap_or_else(|| prompt(&["query"]));
        let document_prefix = settings
            .document_prefix
            .clone()
            .unwrap_or_else(|| prompt(&["document", "passage", "corpus"]));
        let full = dir.embedding_dimension();
        let dimension = match settings.truncate_dim {
            None => full,
            Some(d) if (1..=full).contains(&d) => d,
            Some(d) => {
                return Err(ModelError::InvalidSetting {
                    name: "truncate_dim",
                    problem: format!("{d} is outside 1..={full}, the model's dimensions"),
                })
            }
        };
        let mut encoder = Encoder {
            pad_id: model.pad_token_id(),
            dimension,
            dense: dir.load_dense(device)?,
            model,
            tokenizer,
            pooling_modes: dir.pooling_modes.clone(),
            normalize: dir.normalize,
            query_prefix,
            document_prefix,
            settings,
            device: device.clone(),
            soft_prompt: None,
            batch_threads: BatchThreads::default(),
        };
        encoder.set_soft_prompt(dir.load_soft_prompt(device)?)?;
        Ok(encoder)
    }

    /// The same model (sharing its weights and soft prompt, so training updates are seen) with
    /// other settings, e.g. a shorter maximum sequence length for training than for validation.
    pub fn with_settings(&self, dir: &ModelDir, settings: EncoderSettings) -> Result<Self> {
        let mut encoder = Self::from_model(self.model.clone_model(), dir, &self.device, settings)?;
        encoder.set_soft_prompt(self.soft_prompt.clone())?;
        Ok(encoder)
    }

    /// Applies `prompt` (or removes the soft prompt): its vectors go after every text's first
    /// token, through the model's input-embedding hook, and stay out of pooling.
    pub fn set_soft_prompt(&mut self, prompt: Option<SoftPrompt>) -> Result<()> {
        if prompt.is_none() && self.soft_prompt.is_none() {
            return Ok(());
        }
        let slots = prompt.as_ref().map_or(0, SoftPrompt::len);
        let tokenizer = self
            .tokenizer
            .clone()
            .with_prompt_slots(slots, self.pad_id)?;
        if self.settings.max_tokens_per_batch < tokenizer.max_input_tokens() {
            return Err(ModelError::InvalidSetting {
                name: "max_tokens_per_batch",
                problem: format!(
                    "{} is below the longest input, {} tokens with the soft prompt",
                    self.settings.max_tokens_per_batch,
                    tokenizer.max_input_tokens()
                ),
            });
        }
        self.tokenizer = tokenizer;
        self.model
            .set_input_embedding_hook(prompt.as_ref().map(SoftPrompt::hook));
        self.soft_prompt = prompt;
        Ok(())
    }

    /// The soft prompt in force, if any.
    pub fn soft_prompt(&self) -> Option<&SoftPrompt> {
        self.soft_prompt.as_ref()
    }

    /// Length of every embedding.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Whether embeddings are unit length.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Longest text in tokens, special tokens included (a soft prompt's vectors come on top).
    pub fn max_seq_length(&self) -> usize {
        self.tokenizer.max_seq_length()
    }

    /// The settings in force.
    pub fn settings(&self) -> &EncoderSettings {
        &self.settings
    }

    /// The precision of the transformer's products when narrower than f32 on this device
    /// (see [`Precision::narrowed`]); `None` for f32 products.
    pub fn narrowed_precision(&self) -> Option<Precision> {
        self.settings.precision.narrowed(&self.device)
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The underlying transformer (for training and LoRA).
    pub fn model_mut(&mut self) -> &mut dyn TransformerModel {
        self.model.as_mut()
    }

    /// The underlying transformer.
    pub fn model(&self) -> &dyn TransformerModel {
        self.model.as_ref()
    }

    /// The prefix texts of `kind` get.
    pub fn prefix(&self, kind: TextKind) -> &str {
        match kind {
            TextKind::Plain => "",
            TextKind::Query => &self.query_prefix,
            TextKind::Document => &self.document_prefix,
        }
    }

    /// Tokenizes `texts` with the prefix for `kind`.
    pub fn tokenize<S: AsRef<str>>(
        &self,
        texts: &[S],
        kind: TextKind,
    ) -> Result<Vec<TokenizedText>> {
        self.tokenizer.tokenize(texts, self.prefix(kind))
    }

    /// Embeds `texts`; see [`Encoder::embed_with_progress`].
    pub fn embed<S: AsRef<str>>(&self, texts: &[S], kind: TextKind) -> Result<EmbedOutput> {
        self.embed_with_progress(texts, kind, &mut |_| {})
    }

    /// Embeds `texts` in length-sorted batches; `on_batch` is called with the number of texts
    /// each finished batch held. Empty texts are embedded (as `[CLS] [SEP]`), never dropped.
    pub fn embed_with_progress<S: AsRef<str>>(
        &self,
        texts: &[S],
        kind: TextKind,
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<EmbedOutput> {
        let tokenized = self.tokenize(texts, kind)?;
        let mut out = EmbedOutput {
            embeddings: vec![Vec::new(); texts.len()],
            truncated: tokenized.iter().filter(|t| t.truncated).count(),
            tokens: tokenized.iter().map(|t| t.ids.len()).sum(),
            padded_tokens: 0,
            flops: 0.0,
        };
        let lengths: Vec<usize> = tokenized.iter().map(|t| t.ids.len()).collect();
        let batches = plan_batches(&lengths, &self.settings);
        for batch in &batches {
            let seq = lengths[batch[0]];
            out.padded_tokens += batch.len() * seq;
            out.flops += self.forward_flops(batch.len(), seq);
        }
        let embed = |batch: &[usize]| -> Result<Vec<Vec<f32>>> {
            let items: Vec<&TokenizedText> = batch.iter().map(|&i| &tokenized[i]).collect();
            Ok(self
                .forward_batch(&items, Mode::Inference)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?)
        };
        let embeddings = &mut out.embeddings;
        let mut finished = |batch: &[usize], rows: Vec<Vec<f32>>| {
            for (&i, row) in batch.iter().zip(rows) {
                embeddings[i] = row;
            }
            on_batch(batch.len());
        };
        match self.side_by_side(batches.len()) {
            0 | 1 => {
                for batch in &batches {
                    finished(batch, embed(batch)?);
                }
            }
            n => run_side_by_side(&self.batch_threads.get(n), &batches, &embed, &mut finished)?,
        }
        Ok(out)
    }

    /// How many of `batches` to compute at once (see [`EncoderSettings::concurrent_batches`]).
    fn side_by_side(&self, batches: usize) -> usize {
        if !self.device.is_cpu() {
            return 1;
        }
        let wanted = self
            .settings
            .concurrent_batches
            .unwrap_or_else(rayon::current_num_threads);
        wanted.min(batches)
    }

    /// Multiply-add work (2 FLOPs each) of one forward pass over `batch` texts padded to `seq`
    /// tokens, matrix products only (see [`TransformerModel::forward_flops`]).
    pub fn forward_flops(&self, batch: usize, seq: usize) -> f64 {
        self.model.forward_flops(batch, seq)
    }

    /// Runs one batch through the model, pooling, the Dense modules, truncation to
    /// [`EncoderSettings::truncate_dim`] and (if configured, and always after truncation)
    /// normalization, giving `(batch, dimension)`. Texts are padded to the longest in the batch.
    /// In [`Mode::Train`] the result carries gradients.
    pub fn forward_batch(&self, items: &[&TokenizedText], mode: Mode<'_>) -> Result<Tensor> {
        let (ids, type_ids, mask) = self.batch_tensors(items)?;
        let hidden = self.model.forward(&ids, &type_ids, &mask, mode)?;
        let mut pooled = pool(&hidden, &self.pooling_mask(&mask)?, &self.pooling_modes)?;
        for dense in &self.dense {
            pooled = dense.forward(&pooled)?;
        }
        if let Some(dim) = self.settings.truncate_dim {
            return Ok(l2_normalize(&pooled.narrow(1, 0, dim)?)?);
        }
        Ok(if self.normalize {
            l2_normalize(&pooled)?
        } else {
            pooled
        })
    }

    /// The attention mask without the soft prompt's positions (the pooled tokens are the text's).
    fn pooling_mask(&self, mask: &Tensor) -> Result<Tensor> {
        let Some(prompt) = &self.soft_prompt else {
            return Ok(mask.clone());
        };
        let (rows, seq) = mask.dims2()?;
        let first = crate::soft_prompt::FIRST_SLOT;
        let mut keep = vec![1f32; seq];
        keep[first..first + prompt.len()].fill(0.0);
        let keep = Tensor::from_vec(keep, (1, seq), mask.device())?.broadcast_as((rows, seq))?;
        Ok(mask.mul(&keep)?)
    }

    /// Padded `(input_ids, token_type_ids, attention_mask)` tensors for a batch.
    fn batch_tensors(&self, items: &[&TokenizedText]) -> Result<(Tensor, Tensor, Tensor)> {
        let seq = items.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        let n = items.len();
        let mut ids = vec![self.pad_id; n * seq];
        let mut type_ids = vec![0u32; n * seq];
        let mut mask = vec![0f32; n * seq];
        for (row, item) in items.iter().enumerate() {
            let start = row * seq;
            let len = item.ids.len();
            ids[start..start + len].copy_from_slice(&item.ids);
            type_ids[start..start + len].copy_from_slice(&item.type_ids);
            mask[start..start + len].fill(1.0);
        }
        Ok((
            Tensor::from_vec(ids, (n, seq), &self.device)?,
            Tensor::from_vec(type_ids, (n, seq), &self.device)?,
            Tensor::from_vec(mask, (n, seq), &self.device)?,
        ))
    }
}

/// Groups text indices into batches: longest texts first, each batch at most `batch_size`
/// texts and at most `max_tokens_per_batch` padded tokens. Every index appears exactly once.
pub fn plan_batches(lengths: &[usize], settings: &EncoderSettings) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable sort: equal lengths keep input order, so batching is deterministic.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted descending: the batch's first text is its longest.
        let longest = current.first().map_or(lengths[i], |&f| lengths[f]).max(1);
        let fits = current.len() < settings.batch_size
            && (current.len() + 1) * longest <= settings.max_tokens_per_batch.max(longest);
        if !fits {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_text_once_within_both_limits() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 61 + 2).collect();
        let settings = EncoderSettings {
            batch_size: 8,
            max_tokens_per_batch: 200,
            ..EncoderSettings::default()
        };
        let batches = plan_batches(&lengths, &settings);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..103).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(b.len() <= 8);
            assert!(b.len() * longest <= 200, "{b:?}");
            assert_eq!(lengths[b[0]], longest, "first text is the longest");
        }
    }

    #[test]
    fn a_text_longer_than_the_budget_still_gets_a_batch() {
        let settings = EncoderSettings {
            batch_size: 4,
            max_tokens_per_batch: 10,
            ..EncoderSettings::default()
        };
        assert_eq!(plan_batches(&[50, 3], &settings), vec![vec![0], vec![1]]);
        assert!(plan_batches(&[], &settings).is_empty());
    }
}
