//! BERT encoder shared by inference and training.
//!
//! Tensor names follow Hugging Face's `BertModel` checkpoints (`embeddings.*`,
//! `encoder.layer.N.*`), so sentence-transformers directories load unchanged. Unlike
//! candle-transformers' `BertModel` (used in this crate's tests as the parity reference), the
//! layers here are reachable for LoRA, and each forward pass takes a [`Mode`] that selects fused
//! kernels (inference) or differentiable ones with dropout (training).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::{BertConfig, HiddenAct};
use crate::family::{InputConventions, InputEmbeddingHook, TransformerModel};
use crate::kernels::{self, Epilogue};
use crate::layers::{attention_probs, matmul_in, Dropout, Embedding, LayerNorm, Linear, Mode};

/// Which linear layer of a transformer block (the LoRA targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearTarget {
    /// Attention query projection.
    Query,
    /// Attention key projection.
    Key,
    /// Attention value projection.
    Value,
    /// Attention output projection.
    AttentionOutput,
    /// Feed-forward up projection.
    Intermediate,
    /// Feed-forward down projection.
    Output,
}

impl LinearTarget {
    /// Every target, in checkpoint order.
    pub const ALL: [LinearTarget; 6] = [
        LinearTarget::Query,
        LinearTarget::Key,
        LinearTarget::Value,
        LinearTarget::AttentionOutput,
        LinearTarget::Intermediate,
        LinearTarget::Output,
    ];

    /// The checkpoint name of this layer inside `encoder.layer.N.`.
    pub fn checkpoint_name(self) -> &'static str {
        match self {
            LinearTarget::Query => "attention.self.query",
            LinearTarget::Key => "attention.self.key",
            LinearTarget::Value => "attention.self.value",
            LinearTarget::AttentionOutput => "attention.output.dense",
            LinearTarget::Intermediate => "intermediate.dense",
            LinearTarget::Output => "output.dense",
        }
    }
}

#[derive(Clone)]
struct BertEmbeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    layer_norm: LayerNorm,
    dropout: Dropout,
    hook: Option<InputEmbeddingHook>,
}

impl BertEmbeddings {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        Ok(BertEmbeddings {
            word: Embedding::load(vb.pp("word_embeddings"), cfg.vocab_size, cfg.hidden_size)?,
            position: Embedding::load(
                vb.pp("position_embeddings"),
                cfg.max_position_embeddings,
                cfg.hidden_size,
            )?,
            token_type: Embedding::load(
                vb.pp("token_type_embeddings"),
                cfg.type_vocab_size,
                cfg.hidden_size,
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            hook: None,
        })
    }

    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        let seq_len = input_ids.dim(1)?;
        let positions = Tensor::arange(0u32, seq_len as u32, input_ids.device())?;
        let mut words = self.word.forward(input_ids)?;
        if let Some(hook) = &self.hook {
            words = hook(&words)?;
        }
        let xs = (words + self.token_type.forward(token_type_ids)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let xs = self.layer_norm.forward(&xs, mode)?;
        self.dropout.forward(&xs, mode)
    }
}

#[derive(Clone)]
struct BertLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    activation: HiddenAct,
    attention_dropout: Dropout,
    hidden_dropout: Dropout,
    num_heads: usize,
    head_size: usize,
    /// The dtype of the attention products `Q·Kᵀ` and `P·V` (the linear layers keep their own).
    matmul_dtype: DType,
}

impl BertLayer {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let linear =
            |target: LinearTarget, i, o| Linear::load(vb.pp(target.checkpoint_name()), i, o);
        Ok(BertLayer {
            query: linear(LinearTarget::Query, h, h)?,
            key: linear(LinearTarget::Key, h, h)?,
            value: linear(LinearTarget::Value, h, h)?,
            attention_output: linear(LinearTarget::AttentionOutput, h, h)?,
            attention_norm: LayerNorm::load(
                vb.pp("attention.output.LayerNorm"),
                h,
                cfg.layer_norm_eps,
            )?,
            intermediate: linear(LinearTarget::Intermediate, h, cfg.intermediate_size)?,
            output: linear(LinearTarget::Output, cfg.intermediate_size, h)?,
            output_norm: LayerNorm::load(vb.pp("output.LayerNorm"), h, cfg.layer_norm_eps)?,
            activation: cfg.hidden_act,
            attention_dropout: Dropout::new(cfg.attention_probs_dropout_prob),
            hidden_dropout: Dropout::new(cfg.hidden_dropout_prob),
            num_heads: cfg.num_attention_heads,
            head_size: cfg.head_size(),
            matmul_dtype: DType::F32,
        })
    }

    fn linear_mut(&mut self, target: LinearTarget) -> &mut Linear {
        match target {
            LinearTarget::Query => &mut self.query,
            LinearTarget::Key => &mut self.key,
            LinearTarget::Value => &mut self.value,
            LinearTarget::AttentionOutput => &mut self.attention_output,
            LinearTarget::Intermediate => &mut self.intermediate,
            LinearTarget::Output => &mut self.output,
        }
    }

    /// `(batch, seq, hidden)` → `(batch, heads, seq, head_size)`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, s, _) = xs.dims3()?;
        xs.reshape((b, s, self.num_heads, self.head_size))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// The feed-forward activation (differentiable candle ops).
    fn activate(&self, xs: &Tensor) -> Result<Tensor> {
        match self.activation {
            HiddenAct::Gelu if crate::train_kernels::applies(xs) => {
                crate::train_kernels::gelu_erf(xs)
            }
            HiddenAct::Gelu => xs.gelu_erf(),
            HiddenAct::GeluNew => xs.gelu(),
            HiddenAct::Relu => xs.relu(),
        }
    }

    fn linears_mut(&mut self) -> [&mut Linear; 6] {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attention_output,
            &mut self.intermediate,
            &mut self.output,
        ]
    }

    /// Whether the fused CPU kernels can run this layer: plain f32 weights (no LoRA adapter, no
    /// narrowed products) with biases.
    fn fusable(&self) -> bool {
        self.matmul_dtype == DType::F32
            && [
                &self.query,
                &self.key,
                &self.value,
                &self.attention_output,
                &self.intermediate,
                &self.output,
            ]
            .iter()
            .all(|l| l.lora().is_none() && l.bias().is_some() && l.matmul_dtype() == DType::F32)
    }

    /// Inference on CPU with the fused kernels; `lengths[i]` real tokens start text `i`.
    fn forward_fused(&self, xs: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let bias = |l: &Linear| l.bias().expect("fusable() checked the biases").clone();
        let w_qkv = Tensor::cat(
            &[self.query.weight(), self.key.weight(), self.value.weight()],
            0,
        )?;
        let b_qkv = Tensor::cat(&[bias(&self.query), bias(&self.key), bias(&self.value)], 0)?;
        let qkv = kernels::linear(xs, &w_qkv, &b_qkv, Epilogue::None)?;
        let scale = 1.0 / (self.head_size as f32).sqrt();
        let context = kernels::attention(&qkv, lengths, self.num_heads, scale)?;
        let attended = kernels::linear(
            &context,
            self.attention_output.weight(),
            &bias(&self.attention_output),
            Epilogue::None,
        )?;
        let xs = self
            .attention_norm
            .forward(&(attended + xs)?, Mode::Inference)?;
        let (w1, b1) = (self.intermediate.weight(), bias(&self.intermediate));
        let (w2, b2) = (self.output.weight(), bias(&self.output));
        let out = if self.activation == HiddenAct::Gelu {
            kernels::feed_forward(&xs, w1, &b1, w2, &b2)?
        } else {
            let inner = self.activate(&kernels::linear(&xs, w1, &b1, Epilogue::None)?)?;
            kernels::linear(&inner, w2, &b2, Epilogue::None)?
        };
        self.output_norm.forward(&(out + xs)?, Mode::Inference)
    }

    fn forward(&self, xs: &Tensor, mask_bias: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        let (b, s, h) = xs.dims3()?;
        let scale = 1.0 / (self.head_size as f64).sqrt();
        let q = self.split_heads(&(self.query.forward(xs)? * scale)?)?;
        let k = self.split_heads(&self.key.forward(xs)?)?;
        let v = self.split_heads(&self.value.forward(xs)?)?;
        let scores = matmul_in(&q, &k.t()?, self.matmul_dtype)?;
        let probs = attention_probs(&scores, mask_bias, self.attention_dropout, mode)?;
        let context = matmul_in(&probs, &v, self.matmul_dtype)?
            .transpose(1, 2)?
            .reshape((b, s, h))?;
        let attended = self
            .hidden_dropout
            .forward(&self.attention_output.forward(&context)?, mode)?;
        let xs = self.attention_norm.forward(&(attended + xs)?, mode)?;

        let inner = self.activate(&self.intermediate.forward(&xs)?)?;
        let out = self
            .hidden_dropout
            .forward(&self.output.forward(&inner)?, mode)?;
        self.output_norm.forward(&(out + xs)?, mode)
    }
}

/// The BERT encoder: token ids in, one hidden state per token out. Cloning shares the weights
/// (training variables updated in place are seen by every clone).
#[derive(Clone)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    config: BertConfig,
}

impl BertModel {
    /// Loads the weights under `vb` (names as in Hugging Face checkpoints, without a `bert.` prefix).
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let embeddings = BertEmbeddings::load(vb.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::load(vb.pp(format!("encoder.layer.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(BertModel {
            embeddings,
            layers,
            config: cfg.clone(),
        })
    }

    /// The hyper-parameters the model was loaded with.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Runs every matrix product of the transformer blocks in `dtype` (mixed precision, see
    /// [`crate::Precision`]); everything else stays f32. `DType::F32` restores exact products.
    pub fn set_matmul_dtype(&mut self, dtype: DType) {
        for layer in &mut self.layers {
            layer.matmul_dtype = dtype;
            for linear in layer.linears_mut() {
                linear.set_matmul_dtype(dtype);
            }
        }
    }

    /// The linear layer `target` of transformer block `layer` (to attach a LoRA adapter).
    pub fn linear_mut(&mut self, layer: usize, target: LinearTarget) -> Option<&mut Linear> {
        self.layers.get_mut(layer).map(|l| l.linear_mut(target))
    }

    /// Runs the encoder. `input_ids`, `token_type_ids`: `(batch, seq)` u32; `attention_mask`:
    /// `(batch, seq)` with 1 for real tokens and 0 for padding (any numeric dtype). Returns the
    /// last hidden states, `(batch, seq, hidden)` f32.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        let mask = attention_mask.to_dtype(DType::F32)?;
        let mut xs = self.embeddings.forward(input_ids, token_type_ids, mode)?;
        let lengths = fused_lengths(&mask, &xs, mode)?;
        // Built on first use: only layers that cannot take the fused kernels need it.
        let mut mask_bias: Option<Tensor> = None;
        for layer in &self.layers {
            xs = match &lengths {
                Some(lengths) if layer.fusable() => layer.forward_fused(&xs, lengths)?,
                _ => {
                    if mask_bias.is_none() {
                        mask_bias = Some(composite_mask_bias(&mask, b, s)?);
                    }
                    let bias = mask_bias.as_ref().expect("just built");
                    layer.forward(&xs, bias, mode)?
                }
            };
        }
        Ok(xs)
    }
}

impl TransformerModel for BertModel {
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        BertModel::forward(self, input_ids, token_type_ids, attention_mask, mode)
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn pad_token_id(&self) -> u32 {
        self.config.pad_token_id
    }

    fn conventions(&self) -> InputConventions {
        InputConventions {
            token_type_ids: true,
            position_offset: 0,
        }
    }

    fn set_matmul_dtype(&mut self, dtype: DType) {
        BertModel::set_matmul_dtype(self, dtype)
    }

    fn linear_mut(&mut self, layer: usize, target: LinearTarget) -> Option<&mut Linear> {
        BertModel::linear_mut(self, layer, target)
    }

    fn linear_name(&self, layer: usize, target: LinearTarget) -> Option<String> {
        (layer < self.layers.len())
            .then(|| format!("encoder.layer.{layer}.{}", target.checkpoint_name()))
    }

    /// Per layer: the Q/K/V/output projections (`8·h²` per token), the feed-forward block
    /// (`4·h·ff` per token) and attention scores and mixing (`4·seq·h` per token).
    fn forward_flops(&self, batch: usize, seq: usize) -> f64 {
        let cfg = &self.config;
        let (h, ff, layers) = (
            cfg.hidden_size as f64,
            cfg.intermediate_size as f64,
            cfg.num_hidden_layers as f64,
        );
        let tokens = (batch * seq) as f64;
        layers * tokens * (8.0 * h * h + 4.0 * h * ff + 4.0 * seq as f64 * h)
    }

    fn set_input_embedding_hook(&mut self, hook: Option<InputEmbeddingHook>) {
        self.embeddings.hook = hook;
    }

    fn clone_model(&self) -> Box<dyn TransformerModel> {
        Box::new(self.clone())
    }
}

/// Additive mask for the composite path: 0 where attended, the most negative float where
/// padded (as transformers does), shaped `(batch, 1, 1, seq)`.
fn composite_mask_bias(mask: &Tensor, b: usize, s: usize) -> Result<Tensor> {
    ((mask.ones_like()? - mask)? * f32::MIN as f64)?.reshape((b, 1, 1, s))
}

/// The real-token count of each text when the fused CPU kernels apply: an inference pass on
/// the CPU in f32 over right-padded texts (each mask row is ones then zeros).
fn fused_lengths(mask: &Tensor, xs: &Tensor, mode: Mode<'_>) -> Result<Option<Vec<usize>>> {
    if mode.is_train() || !xs.device().is_cpu() || xs.dtype() != DType::F32 {
        return Ok(None);
    }
    let rows = mask.to_vec2::<f32>()?;
    let mut lengths = Vec::with_capacity(rows.len());
    for row in rows {
        let len = row.iter().take_while(|m| **m != 0.0).count();
        if row[len..].iter().any(|m| *m != 0.0) {
            return Ok(None); // not right-padded: the composite path handles any mask
        }
        lengths.push(len);
    }
    Ok(Some(lengths))
}
