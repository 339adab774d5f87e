//! ModernBERT: pre-norm blocks with rotary position embeddings (a global and a local theta),
//! a gated GELU feed-forward block (GeGLU), no biases by default, and global attention every
//! few layers with sliding-window attention between them.
//!
//! Tensor names follow Hugging Face's `ModernBertModel` (`embeddings.tok_embeddings`,
//! `layers.N.attn.Wqkv`, `layers.N.mlp.Wi`, `final_norm`); a `ModernBertForMaskedLM`
//! checkpoint nests them under `model.`. Both `config.json` spellings are read: the released
//! checkpoints' (`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`) and that
//! of transformers 5.x (`layer_types`, `rope_parameters`).

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use serde::Deserialize;

use crate::bert::LinearTarget;
use crate::config::HiddenAct;
use crate::error::ModelError;
use crate::family::{InputConventions, InputEmbeddingHook, TransformerModel};
use crate::kernels::{self, Epilogue, PositionBias};
use crate::layers::{attention_probs, matmul_in, Dropout, Embedding, LayerNorm, Linear, Mode};

/// What a sliding-window layer adds to the scores of keys outside its window: far below any
/// score, yet finite, so that adding the padding mask cannot overflow.
const OUTSIDE_WINDOW: f32 = -1e30;

/// One layer type's rotary settings (`rope_parameters` of transformers 5.x).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeParameters {
    /// Only `default` (plain RoPE) is implemented.
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
    /// The base of the rotary frequencies.
    pub rope_theta: Option<f64>,
}

fn default_rope_type() -> String {
    "default".to_string()
}

/// `rope_parameters`: one entry per layer type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeByLayerType {
    /// Global layers' settings.
    pub full_attention: Option<RopeParameters>,
    /// Sliding-window layers' settings.
    pub sliding_attention: Option<RopeParameters>,
}

/// ModernBERT hyper-parameters, as in Hugging Face's `config.json`; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModernBertConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Width of the gated feed-forward block (its up projection is twice as wide).
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads; divides `hidden_size` into heads of an even width.
    pub num_attention_heads: usize,
    /// The gate's activation (default `gelu`, exact).
    #[serde(default = "default_activation")]
    pub hidden_activation: HiddenAct,
    /// Most positions (default 8192).
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Epsilon of every layer norm (default 1e-5).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Whether the layer norms have biases (default false).
    #[serde(default)]
    pub norm_bias: bool,
    /// Whether the attention projections have biases (default false).
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether the feed-forward projections have biases (default false).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Dropout on attention probabilities and the attention output while training (default 0).
    #[serde(default)]
    pub attention_dropout: f32,
    /// Dropout on the embeddings while training (default 0).
    #[serde(default)]
    pub embedding_dropout: f32,
    /// Dropout inside the feed-forward block while training (default 0).
    #[serde(default)]
    pub mlp_dropout: f32,
    /// Id of the padding token (default 50283).
    #[serde(default = "default_pad")]
    pub pad_token_id: u32,
    /// Total width of a sliding window in tokens (default 128): a token attends to those at
    /// most `local_attention / 2` positions away.
    #[serde(default = "default_local_attention")]
    pub local_attention: usize,
    /// Released checkpoints: every n-th layer (from the first) is global (default 3).
    pub global_attn_every_n_layers: Option<usize>,
    /// Released checkpoints: the global layers' rotary base (default 160000).
    pub global_rope_theta: Option<f64>,
    /// Released checkpoints: the sliding-window layers' rotary base (default 10000).
    pub local_rope_theta: Option<f64>,
    /// transformers 5.x: `full_attention` or `sliding_attention` per layer.
    pub layer_types: Option<Vec<String>>,
    /// transformers 5.x: rotary settings per layer type.
    pub rope_parameters: Option<RopeByLayerType>,
}

fn default_activation() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_positions() -> usize {
    8192
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_pad() -> u32 {
    50283
}
fn default_local_attention() -> usize {
    128
}

impl ModernBertConfig {
    /// Parses `config.json` text; `path` names the file in errors.
    pub fn from_json(path: &Path, text: &str) -> crate::Result<Self> {
        let config: ModernBertConfig =
            serde_json::from_str(text).map_err(|source| ModelError::InvalidJson {
                path: path.to_path_buf(),
                source,
            })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> crate::Result<()> {
        let field_err = |field: &str, problem: String| ModelError::InvalidField {
            path: path.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        let heads = self.num_attention_heads;
        if heads == 0
            || !self.hidden_size.is_multiple_of(heads)
            || !(self.hidden_size / heads).is_multiple_of(2)
        {
            return Err(field_err(
                "num_attention_heads",
                format!(
                    "{heads} heads do not split hidden_size {} into heads of an even width",
                    self.hidden_size
                ),
            ));
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(field_err(
                    "layer_types",
                    format!(
                        "{} entries for {} layers",
                        types.len(),
                        self.num_hidden_layers
                    ),
                ));
            }
            if let Some(bad) = types
                .iter()
                .find(|t| *t != "full_attention" && *t != "sliding_attention")
            {
                return Err(field_err(
                    "layer_types",
                    format!("`{bad}`; expected full_attention or sliding_attention"),
                ));
            }
        }
        if self.global_attn_every_n_layers == Some(0) {
            return Err(field_err("global_attn_every_n_layers", "0".to_string()));
        }
        let rope = self.rope_parameters.as_ref();
        for params in rope
            .iter()
            .flat_map(|r| [&r.full_attention, &r.sliding_attention])
            .flatten()
        {
            if params.rope_type != "default" {
                return Err(field_err(
                    "rope_parameters",
                    format!(
                        "rope_type `{}` is not supported; only `default` is",
                        params.rope_type
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether layer `layer` attends globally (else within its sliding window).
    pub fn is_global(&self, layer: usize) -> bool {
        match &self.layer_types {
            Some(types) => types[layer] == "full_attention",
            None => layer.is_multiple_of(self.global_attn_every_n_layers.unwrap_or(3)),
        }
    }

    /// The rotary base of global (`true`) or sliding-window layers.
    pub fn rope_theta(&self, global: bool) -> f64 {
        let from_parameters = self.rope_parameters.as_ref().and_then(|r| {
            let params = if global {
                &r.full_attention
            } else {
                &r.sliding_attention
            };
            params.as_ref().and_then(|p| p.rope_theta)
        });
        let legacy = if global {
            self.global_rope_theta
        } else {
            self.local_rope_theta
        };
        from_parameters
            .or(legacy)
            .unwrap_or(if global { 160_000.0 } else { 10_000.0 })
    }

    /// Width of one head.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// How far a sliding-window layer looks to each side.
    pub fn half_window(&self) -> usize {
        self.local_attention / 2
    }
}

/// Rotary tables for one base: `cos` and `sin` of `position · inverse frequency`, `(seq, half)`
/// row-major, in f32 as transformers computes them.
#[derive(Debug, Clone)]
struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rotary {
    fn new(theta: f64, head_size: usize, seq: usize) -> Self {
        let half = head_size / 2;
        let inverse: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_size as f32))
            .collect();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for position in 0..seq {
            for f in &inverse {
                let angle = position as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Rotary { cos, sin, half }
    }

    /// Rotates Q and K of a fused projection `(batch, seq, 3·hidden)` in place.
    fn apply_in_place(&self, qkv: &mut [f32], seq: usize, hidden: usize, head_size: usize) {
        let half = self.half;
        qkv.par_chunks_mut(3 * hidden)
            .enumerate()
            .for_each(|(row, values)| {
                let position = row % seq;
                let cos = &self.cos[position * half..(position + 1) * half];
                let sin = &self.sin[position * half..(position + 1) * half];
                // Q and K: the first two thirds of the row, head by head.
                for head in values[..2 * hidden].chunks_exact_mut(head_size) {
                    let (x1, x2) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (x1[i], x2[i]);
                        x1[i] = a * cos[i] - b * sin[i];
                        x2[i] = b * cos[i] + a * sin[i];
                    }
                }
            });
    }

    /// Rotates `xs` `(batch, heads, seq, head_size)` (differentiable).
    fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        let seq = xs.dim(2)?;
        let half = self.half;
        let table = |values: &[f32]| {
            Tensor::from_slice(&values[..seq * half], (seq, half), xs.device())?
                .to_dtype(xs.dtype())
        };
        let (cos, sin) = (table(&self.cos)?, table(&self.sin)?);
        let x1 = xs.narrow(D::Minus1, 0, half)?;
        let x2 = xs.narrow(D::Minus1, half, half)?;
        let first = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let second = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[first, second], D::Minus1)
    }
}

#[derive(Clone)]
struct ModernBertLayer {
    /// Absent in the first layer (its input is the normalized embedding).
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    mlp_wo: Linear,
    global: bool,
    attention_dropout: Dropout,
    mlp_dropout: Dropout,
    activation: HiddenAct,
    num_heads: usize,
    head_size: usize,
    matmul_dtype: DType,
}

impl ModernBertLayer {
    fn load(vb: VarBuilder, cfg: &ModernBertConfig, index: usize) -> Result<Self> {
        let (h, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let norm =
            |name: &str| LayerNorm::load_with_bias(vb.pp(name), h, cfg.norm_eps, cfg.norm_bias);
        Ok(ModernBertLayer {
            attn_norm: (index > 0).then(|| norm("attn_norm")).transpose()?,
            wqkv: Linear::load_with_bias(vb.pp("attn.Wqkv"), h, 3 * h, cfg.attention_bias)?,
            wo: Linear::load_with_bias(vb.pp("attn.Wo"), h, h, cfg.attention_bias)?,
            mlp_norm: norm("mlp_norm")?,
            wi: Linear::load_with_bias(vb.pp("mlp.Wi"), h, 2 * ff, cfg.mlp_bias)?,
            mlp_wo: Linear::load_with_bias(vb.pp("mlp.Wo"), ff, h, cfg.mlp_bias)?,
            global: cfg.is_global(index),
            attention_dropout: Dropout::new(cfg.attention_dropout),
            mlp_dropout: Dropout::new(cfg.mlp_dropout),
            activation: cfg.hidden_activation,
            num_heads: cfg.num_attention_heads,
            head_size: cfg.head_size(),
            matmul_dtype: DType::F32,
        })
    }

    fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [&mut self.wqkv, &mut self.wo, &mut self.wi, &mut self.mlp_wo]
    }

    /// The fused CPU kernels apply: f32 products, no LoRA adapter.
    fn fusable(&self) -> bool {
        self.matmul_dtype == DType::F32
            && [&self.wqkv, &self.wo, &self.wi, &self.mlp_wo]
                .iter()
                .all(|l| l.lora().is_none() && l.matmul_dtype() == DType::F32)
    }

    /// `Wo(act(input) · gate)` where `Wi(xs)` = `[input, gate]`.
    fn feed_forward(&self, xs: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        let up = self.wi.forward(xs)?;
        let ff = up.dim(D::Minus1)? / 2;
        let gated = (self.activation.apply(&up.narrow(D::Minus1, 0, ff)?)?
            * up.narrow(D::Minus1, ff, ff)?)?;
        self.mlp_wo
            .forward(&self.mlp_dropout.forward(&gated, mode)?)
    }

    /// The differentiable path.
    fn forward(&self, xs: &Tensor, ctx: &ForwardContext, mode: Mode<'_>) -> Result<Tensor> {
        let (b, s, h) = xs.dims3()?;
        let normed = match &self.attn_norm {
            Some(norm) => norm.forward(xs, mode)?,
            None => xs.clone(),
        };
        let qkv = self.wqkv.forward(&normed)?;
        let heads = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * h, h)?
                .reshape((b, s, self.num_heads, self.head_size))?
                .transpose(1, 2)?
                .contiguous()
        };
        let rotary = ctx.rotary(self.global);
        let scale = 1.0 / (self.head_size as f64).sqrt();
        let q = (rotary.apply(&heads(0)?)? * scale)?;
        let k = rotary.apply(&heads(1)?)?;
        let v = heads(2)?;
        let mut scores = matmul_in(&q, &k.t()?, self.matmul_dtype)?;
        if !self.global {
            scores = scores.broadcast_add(&ctx.window_bias(s, xs.device())?)?;
        }
        let probs = attention_probs(&scores, &ctx.mask_bias, self.attention_dropout, mode)?;
        let context = matmul_in(&probs, &v, self.matmul_dtype)?
            .transpose(1, 2)?
            .reshape((b, s, h))?;
        let attended = self
            .attention_dropout
            .forward(&self.wo.forward(&context)?, mode)?;
        let xs = (xs + attended)?;
        let out = self.feed_forward(&self.mlp_norm.forward(&xs, mode)?, mode)?;
        xs + out
    }

    /// Inference on the CPU with the fused kernels.
    fn forward_fused(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        ctx: &ForwardContext,
    ) -> Result<Tensor> {
        let (b, s, h) = xs.dims3()?;
        let normed = match &self.attn_norm {
            Some(norm) => norm.forward(xs, Mode::Inference)?,
            None => xs.clone(),
        };
        let linear = |l: &Linear, xs: &Tensor| -> Result<Tensor> {
            let bias = match l.bias() {
                Some(bias) => bias.clone(),
                None => Tensor::zeros(l.weight().dim(0)?, DType::F32, xs.device())?,
            };
            kernels::linear(xs, l.weight(), &bias, Epilogue::None)
        };
        let qkv = linear(&self.wqkv, &normed)?;
        let mut values = qkv.flatten_all()?.to_vec1::<f32>()?;
        ctx.rotary(self.global)
            .apply_in_place(&mut values, s, h, self.head_size);
        let qkv = Tensor::from_vec(values, (b, s, 3 * h), xs.device())?;
        let scale = 1.0 / (self.head_size as f32).sqrt();
        let window = (!self.global).then(|| ctx.fused_window_bias(s, self.num_heads));
        let context = kernels::attention(&qkv, lengths, self.num_heads, scale, window.as_ref())?;
        let xs = (xs + linear(&self.wo, &context)?)?;
        let up = linear(&self.wi, &self.mlp_norm.forward(&xs, Mode::Inference)?)?;
        let ff = up.dim(D::Minus1)? / 2;
        let gated = (self.activation.apply(&up.narrow(D::Minus1, 0, ff)?)?
            * up.narrow(D::Minus1, ff, ff)?)?;
        xs + linear(&self.mlp_wo, &gated)?
    }
}

/// What every layer of one forward pass shares: rotary tables, masks.
struct ForwardContext {
    global: Rotary,
    local: Rotary,
    half_window: usize,
    /// `(batch, 1, 1, seq)`: 0 where attended, very negative where padded.
    mask_bias: Tensor,
}

impl ForwardContext {
    fn rotary(&self, global: bool) -> &Rotary {
        if global {
            &self.global
        } else {
            &self.local
        }
    }

    fn window_values(&self, seq: usize) -> Vec<f32> {
        (0..seq)
            .flat_map(|q| {
                (0..seq).map(move |k| {
                    if q.abs_diff(k) <= self.half_window {
                        0.0
                    } else {
                        OUTSIDE_WINDOW
                    }
                })
            })
            .collect()
    }

    /// The sliding window as an additive bias `(1, 1, seq, seq)`.
    fn window_bias(&self, seq: usize, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.window_values(seq), (1, 1, seq, seq), device)
    }

    /// The sliding window for the fused attention kernel.
    fn fused_window_bias(&self, seq: usize, heads: usize) -> PositionBias {
        PositionBias::new(self.window_values(seq).repeat(heads), heads, seq)
    }
}

/// The ModernBERT encoder. Cloning shares the weights.
#[derive(Clone)]
pub struct ModernBertModel {
    embeddings: Embedding,
    embedding_norm: LayerNorm,
    embedding_dropout: Dropout,
    hook: Option<InputEmbeddingHook>,
    layers: Vec<ModernBertLayer>,
    final_norm: LayerNorm,
    config: ModernBertConfig,
}

impl ModernBertModel {
    /// Loads the weights under `vb` (names as in `ModernBertModel`, without a `model.` prefix).
    pub fn load(vb: VarBuilder, cfg: &ModernBertConfig) -> Result<Self> {
        let (h, eps, bias) = (cfg.hidden_size, cfg.norm_eps, cfg.norm_bias);
        Ok(ModernBertModel {
            embeddings: Embedding::load(vb.pp("embeddings.tok_embeddings"), cfg.vocab_size, h)?,
            embedding_norm: LayerNorm::load_with_bias(vb.pp("embeddings.norm"), h, eps, bias)?,
            embedding_dropout: Dropout::new(cfg.embedding_dropout),
            hook: None,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| ModernBertLayer::load(vb.pp(format!("layers.{i}")), cfg, i))
                .collect::<Result<Vec<_>>>()?,
            final_norm: LayerNorm::load_with_bias(vb.pp("final_norm"), h, eps, bias)?,
            config: cfg.clone(),
        })
    }
}

impl TransformerModel for ModernBertModel {
    fn forward(
        &self,
        input_ids: &Tensor,
        _token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        let mask = attention_mask.to_dtype(DType::F32)?;
        let mut words = self.embeddings.forward(input_ids)?;
        if let Some(hook) = &self.hook {
            words = hook(&words)?;
        }
        let normed = self.embedding_norm.forward(&words, mode)?;
        let mut xs = self.embedding_dropout.forward(&normed, mode)?;
        let head_size = self.config.head_size();
        let ctx = ForwardContext {
            global: Rotary::new(self.config.rope_theta(true), head_size, s),
            local: Rotary::new(self.config.rope_theta(false), head_size, s),
            half_window: self.config.half_window(),
            mask_bias: ((mask.ones_like()? - &mask)? * f32::MIN as f64)?.reshape((b, 1, 1, s))?,
        };
        let lengths = crate::bert::fused_lengths(&mask, &xs, mode)?;
        for layer in &self.layers {
            xs = match &lengths {
                Some(lengths) if layer.fusable() => layer.forward_fused(&xs, lengths, &ctx)?,
                _ => layer.forward(&xs, &ctx, mode)?,
            };
        }
        self.final_norm.forward(&xs, mode)
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
            token_type_ids: false,
            position_offset: 0,
        }
    }

    fn set_matmul_dtype(&mut self, dtype: DType) {
        for layer in &mut self.layers {
            layer.matmul_dtype = dtype;
            for linear in layer.linears_mut() {
                linear.set_matmul_dtype(dtype);
            }
        }
    }

    /// `q` targets the fused `Wqkv` projection; ModernBERT has no separate key or value one.
    fn linear_mut(&mut self, layer: usize, target: LinearTarget) -> Option<&mut Linear> {
        let layer = self.layers.get_mut(layer)?;
        match target {
            LinearTarget::Query => Some(&mut layer.wqkv),
            LinearTarget::AttentionOutput => Some(&mut layer.wo),
            LinearTarget::Intermediate => Some(&mut layer.wi),
            LinearTarget::Output => Some(&mut layer.mlp_wo),
            LinearTarget::Key | LinearTarget::Value => None,
        }
    }

    fn linear_name(&self, layer: usize, target: LinearTarget) -> Option<String> {
        let name = match target {
            LinearTarget::Query => "attn.Wqkv",
            LinearTarget::AttentionOutput => "attn.Wo",
            LinearTarget::Intermediate => "mlp.Wi",
            LinearTarget::Output => "mlp.Wo",
            LinearTarget::Key | LinearTarget::Value => return None,
        };
        (layer < self.layers.len()).then(|| format!("layers.{layer}.{name}"))
    }

    /// Per layer: QKV and output projections (`8·h²` per token), the gated block (`6·h·ff`)
    /// and attention (`4·seq·h`, as if every layer were global).
    fn forward_flops(&self, batch: usize, seq: usize) -> f64 {
        let cfg = &self.config;
        let (h, ff) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
        let tokens = (batch * seq) as f64;
        cfg.num_hidden_layers as f64 * tokens * (8.0 * h * h + 6.0 * h * ff + 4.0 * seq as f64 * h)
    }

    fn set_input_embedding_hook(&mut self, hook: Option<InputEmbeddingHook>) {
        self.hook = hook;
    }

    fn clone_model(&self) -> Box<dyn TransformerModel> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASED: &str = r#"{"model_type":"modernbert","vocab_size":100,"hidden_size":32,
        "intermediate_size":48,"num_hidden_layers":4,"num_attention_heads":4,
        "global_attn_every_n_layers":2,"global_rope_theta":160000.0,"local_rope_theta":10000.0,
        "local_attention":8}"#;

    const TRANSFORMERS_5: &str = r#"{"model_type":"modernbert","vocab_size":100,"hidden_size":32,
        "intermediate_size":48,"num_hidden_layers":4,"num_attention_heads":4,
        "layer_types":["full_attention","sliding_attention","full_attention","sliding_attention"],
        "rope_parameters":{"full_attention":{"rope_type":"default","rope_theta":160000.0},
                           "sliding_attention":{"rope_type":"default","rope_theta":10000.0}},
        "local_attention":8}"#;

    #[test]
    fn both_config_spellings_give_the_same_layers_and_thetas() {
        let a = ModernBertConfig::from_json(Path::new("a"), RELEASED).unwrap();
        let b = ModernBertConfig::from_json(Path::new("b"), TRANSFORMERS_5).unwrap();
        for layer in 0..4 {
            assert_eq!(a.is_global(layer), b.is_global(layer), "layer {layer}");
        }
        assert_eq!((a.is_global(0), a.is_global(1)), (true, false));
        for global in [true, false] {
            assert_eq!(a.rope_theta(global), b.rope_theta(global));
        }
        assert_eq!(a.rope_theta(true), 160_000.0);
        assert_eq!(a.half_window(), 4);
    }

    #[test]
    fn unsupported_rope_types_and_odd_heads_are_named() {
        let text = TRANSFORMERS_5.replace(
            r#""rope_type":"default","rope_theta":10000.0"#,
            r#""rope_type":"yarn""#,
        );
        let err = ModernBertConfig::from_json(Path::new("c.json"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rope_parameters") && err.contains("yarn"),
            "{err}"
        );
        let text = RELEASED.replace(r#""num_attention_heads":4"#, r#""num_attention_heads":32"#);
        let err = ModernBertConfig::from_json(Path::new("c.json"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_attention_heads"), "{err}");
    }

    #[test]
    fn rotating_in_place_matches_the_tensor_path() {
        let (b, s, heads, d) = (2, 5, 2, 4);
        let h = heads * d;
        let rotary = Rotary::new(10_000.0, d, s);
        let qkv = Tensor::randn(0f32, 1.0, (b, s, 3 * h), &Device::Cpu).unwrap();
        let mut values = qkv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        rotary.apply_in_place(&mut values, s, h, d);
        let fused = Tensor::from_vec(values, (b, s, 3 * h), &Device::Cpu).unwrap();
        for part in 0..3 {
            let split = |t: &Tensor| {
                t.narrow(2, part * h, h)
                    .unwrap()
                    .reshape((b, s, heads, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
            };
            let want = if part < 2 {
                rotary.apply(&split(&qkv)).unwrap()
            } else {
                split(&qkv)
            };
            let diff = crate::kernels::tests::max_abs_diff(&split(&fused), &want);
            assert!(diff < 1e-6, "part {part}: {diff}");
        }
    }
}
