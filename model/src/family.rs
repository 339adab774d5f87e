//! The model-architecture seam: what the encoder and the trainer need from a transformer, so
//! that a model family is one implementation of [`TransformerModel`] plus a [`ModelFamily`]
//! that recognises its `config.json` and loads its weights, in the spirit of
//! text-embeddings-inference's backend `Model` trait (which serves inference only; this one
//! also trains: [`Mode::Train`], LoRA slots on named linear layers, mixed precision).
//!
//! BERT is built in ([`crate::BertModel`]). Other families are found by `config.json`'s
//! `model_type` in a registry: [`register_family`] adds one (the tests register a tiny family,
//! [`crate::fixtures::tiny_mixer`], to run the encoder, trainer, server and pipeline against a
//! second implementation).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::bert::LinearTarget;
use crate::error::Result;
use crate::layers::{Linear, Mode};

/// How a family expects its inputs (informative for tokenization and for families added later:
/// RoBERTa offsets positions past the padding index and has one token type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputConventions {
    /// Whether token type ids (segment ids) carry information.
    pub token_type_ids: bool,
    /// The position id of the first token (0 for BERT; `padding_idx + 1` for RoBERTa).
    pub position_offset: usize,
}

/// A function applied to the token embeddings `(batch, seq, hidden)` before positions are
/// added; it must keep the shape (learned prompts replace the embeddings of placeholder
/// tokens this way).
pub type InputEmbeddingHook = Arc<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync>;

/// A transformer encoder: token ids in, one hidden state per token out.
pub trait TransformerModel: Send + Sync {
    /// Runs the encoder. `input_ids`, `token_type_ids`: `(batch, seq)` u32; `attention_mask`:
    /// `(batch, seq)`, 1 for real tokens and 0 for padding. Returns `(batch, seq, hidden)` f32.
    /// [`Mode::Train`] is differentiable with dropout; [`Mode::Inference`] may take fused
    /// kernels.
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode<'_>,
    ) -> candle_core::Result<Tensor>;
    /// Width of the hidden states.
    fn hidden_size(&self) -> usize;
    /// Transformer blocks.
    fn num_layers(&self) -> usize;
    /// The padding token's id.
    fn pad_token_id(&self) -> u32;
    /// How inputs are laid out.
    fn conventions(&self) -> InputConventions;
    /// Runs the blocks' matrix products in `dtype` (mixed precision); `F32` restores exact ones.
    fn set_matmul_dtype(&mut self, dtype: DType);
    /// Quantizes the blocks' linear layers for int8 products on the CPU (inference only; see
    /// [`crate::Precision::Int8`]); the error says why it cannot, and nothing changes then.
    fn quantize_int8(&mut self) -> std::result::Result<(), String> {
        Err("this model family has no int8 path (BERT, MPNet and XLM-RoBERTa have one)".into())
    }
    /// The linear layer `target` of block `layer`, when the family has it (LoRA attaches here).
    fn linear_mut(&mut self, layer: usize, target: LinearTarget) -> Option<&mut Linear>;
    /// The checkpoint name of that linear layer (without `.weight`), when the family has it.
    fn linear_name(&self, layer: usize, target: LinearTarget) -> Option<String>;
    /// Multiply-add work (2 FLOPs each) of one forward pass over `batch` texts of `seq` tokens,
    /// matrix products only.
    fn forward_flops(&self, batch: usize, seq: usize) -> f64;
    /// Sets (or clears) the hook on the input embeddings.
    fn set_input_embedding_hook(&mut self, hook: Option<InputEmbeddingHook>);
    /// The same model sharing its weights (training updates are seen by both).
    fn clone_model(&self) -> Box<dyn TransformerModel>;
}

/// What a family reads from `config.json` before loading weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyConfig {
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Most positions the model has embeddings for.
    pub max_position_embeddings: usize,
}

/// A model family: recognises its `config.json` and loads its weights.
pub trait ModelFamily: Send + Sync + std::fmt::Debug {
    /// `config.json`'s `model_type` for this family.
    fn model_type(&self) -> &str;
    /// Checks `config` (the parsed `config.json` at `path`) and reads its shape.
    fn read_config(&self, path: &Path, config: &serde_json::Value) -> Result<FamilyConfig>;
    /// Loads the weights under `vb` (as training variables when `vb` is backed by a VarMap).
    fn load(
        &self,
        vb: VarBuilder,
        config: &serde_json::Value,
    ) -> candle_core::Result<Box<dyn TransformerModel>>;
}

fn registry() -> &'static RwLock<BTreeMap<String, Arc<dyn ModelFamily>>> {
    static FAMILIES: std::sync::OnceLock<RwLock<BTreeMap<String, Arc<dyn ModelFamily>>>> =
        std::sync::OnceLock::new();
    FAMILIES.get_or_init(Default::default)
}

/// Makes `family` loadable by its `model_type` (replacing a family registered under it).
pub fn register_family(family: Arc<dyn ModelFamily>) {
    registry()
        .write()
        .expect("family registry")
        .insert(family.model_type().to_string(), family);
}

/// The registered family for `model_type`, if any.
pub fn registered_family(model_type: &str) -> Option<Arc<dyn ModelFamily>> {
    registry()
        .read()
        .expect("family registry")
        .get(model_type)
        .cloned()
}

/// The `model_type`s of the registered families.
pub fn registered_model_types() -> Vec<String> {
    registry()
        .read()
        .expect("family registry")
        .keys()
        .cloned()
        .collect()
}
