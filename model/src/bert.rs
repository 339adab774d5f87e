//! The BERT-shaped encoder shared by inference and training: BERT, RoBERTa, XLM-RoBERTa,
//! CamemBERT and MPNet ([`BertFlavor`] holds their differences).
//!
//! Tensor names follow Hugging Face's checkpoints (`embeddings.*`, `encoder.layer.N.*`), so
//! sentence-transformers directories load unchanged. Unlike
//! candle-transformers' `BertModel` (used in this crate's tests as the parity reference), the
//! layers here are reachable for LoRA, and each forward pass takes a [`Mode`] that selects fused
//! kernels (inference) or differentiable ones with dropout (training).

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::{BertConfig, BertFlavor, HiddenAct};
use crate::family::{InputConventions, InputEmbeddingHook, TransformerModel};
use crate::int8::{self, Int8Backend, Int8Options};
use crate::kernels::{self, Epilogue, NormWeights};
use crate::layers::{attention_probs, matmul_in, Dropout, Embedding, LayerNorm, Linear, Mode};
use crate::packed::{self, Bf16Backend, PackedLinear, Scheme};
use crate::train_attention;

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

    /// The checkpoint name of this layer inside `encoder.layer.N.` of a BERT checkpoint.
    pub fn checkpoint_name(self) -> &'static str {
        self.checkpoint_name_in(BertFlavor::Bert)
    }

    /// The checkpoint name of this layer inside `encoder.layer.N.` for `flavor`.
    pub fn checkpoint_name_in(self, flavor: BertFlavor) -> &'static str {
        if flavor == BertFlavor::Mpnet {
            return match self {
                LinearTarget::Query => "attention.attn.q",
                LinearTarget::Key => "attention.attn.k",
                LinearTarget::Value => "attention.attn.v",
                LinearTarget::AttentionOutput => "attention.attn.o",
                LinearTarget::Intermediate => "intermediate.dense",
                LinearTarget::Output => "output.dense",
            };
        }
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
    /// Absent in MPNet.
    token_type: Option<Embedding>,
    /// The position id of the first token.
    position_offset: usize,
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
            token_type: match cfg.flavor {
                BertFlavor::Mpnet => None,
                BertFlavor::Bert | BertFlavor::Roberta => Some(Embedding::load(
                    vb.pp("token_type_embeddings"),
                    cfg.type_vocab_size,
                    cfg.hidden_size,
                )?),
            },
            position_offset: cfg.position_offset(),
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
        // Texts are right-padded, so real tokens take positions offset, offset + 1, ... as in
        // Hugging Face; padding rows get positions too, but they are masked everywhere.
        let offset = self.position_offset as u32;
        let seq_len = input_ids.dim(1)? as u32;
        let positions = Tensor::arange(offset, offset + seq_len, input_ids.device())?;
        let mut words = self.word.forward(input_ids)?;
        if let Some(hook) = &self.hook {
            words = hook(&words)?;
        }
        if let Some(token_type) = &self.token_type {
            words = (words + token_type.forward(token_type_ids)?)?;
        }
        let xs = words.broadcast_add(&self.position.forward(&positions)?)?;
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
    /// The linear layers narrowed and packed for bf16 or int8 products on the CPU, when the
    /// products are reduced and the weights are fixed (see [`PackedLayer::pack`]).
    packed: Option<Arc<PackedLayer>>,
    /// The Q/K/V weights and biases concatenated for the fused f32 projection, built on first
    /// use (fixed weights only: training variables change every step).
    qkv_f32: OnceLock<(Tensor, Tensor)>,
}

/// A block's linear layers for reduced-precision products on the CPU ([`crate::packed`]),
/// packed once.
struct PackedLayer {
    qkv: Arc<PackedLinear>,
    attention_output: Arc<PackedLinear>,
    intermediate: Arc<PackedLinear>,
    output: Arc<PackedLinear>,
}

/// Which of a block's packed linear layers is being packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PackedRole {
    /// Q, K and V concatenated.
    Qkv,
    AttentionOutput,
    Intermediate,
    Output,
}

impl PackedLayer {
    /// Packs `layer`'s weights, each with the scheme `scheme_for(role, weight)` gives, or `None`
    /// where the fused CPU path cannot run them: weights off the CPU, training variables (they
    /// change every step), adapters or missing biases.
    fn pack(
        layer: &BertLayer,
        scheme_for: &dyn Fn(PackedRole, &Tensor) -> Result<Scheme>,
    ) -> Result<Option<PackedLayer>> {
        let linears = [
            &layer.query,
            &layer.key,
            &layer.value,
            &layer.attention_output,
            &layer.intermediate,
            &layer.output,
        ];
        let packable = linears.iter().all(|l| {
            l.lora().is_none()
                && l.bias().is_some()
                && l.weight().device().is_cpu()
                && !l.weight().is_variable()
        });
        if !packable {
            return Ok(None);
        }
        let one = |w: &Tensor, b: &Tensor, role| -> Result<Arc<PackedLinear>> {
            Ok(Arc::new(PackedLinear::new(w, b, &scheme_for(role, w)?)?))
        };
        let linear = |l: &Linear, role| one(l.weight(), l.bias().expect("checked"), role);
        let (w_qkv, b_qkv) = layer.qkv_f32()?;
        Ok(Some(PackedLayer {
            qkv: one(&w_qkv, &b_qkv, PackedRole::Qkv)?,
            attention_output: linear(&layer.attention_output, PackedRole::AttentionOutput)?,
            intermediate: linear(&layer.intermediate, PackedRole::Intermediate)?,
            output: linear(&layer.output, PackedRole::Output)?,
        }))
    }
}

/// How many of the intermediate layer's input channels stay f32 under int8
/// ([`Int8Options::exact_channels`]).
pub const INT8_INTERMEDIATE_EXACT_CHANNELS: usize = 8;

/// Inputs per weight scale of the down projection under int8 ([`Int8Options::weight_group`]).
pub const INT8_OUTPUT_WEIGHT_GROUP: usize = 128;

/// How finely int8 quantizes each of a block's layers. Measured on the 49 reference texts, where
/// plain 8 bits everywhere left the worst text at cosine 0.996 to f32 (all-MiniLM-L6-v2), and
/// each choice below was needed to keep every text of both all-MiniLM-L6-v2 and
/// all-mpnet-base-v2 at 0.999 or more:
/// - inputs that come out of a layer norm (Q/K/V after the previous block's, the intermediate
///   after the attention's) are smoothed by the norm's reach ([`int8::smoothing_after_norm`]);
/// - V's activations take a second plane: V's output enters the residual stream directly, and
///   its rounding was the largest single error (Q and K pass through the softmax; keeping
///   Q/K/V's widest input channels exact instead left the worst text at 0.9989 in simulation);
/// - the intermediate's [`INT8_INTERMEDIATE_EXACT_CHANNELS`] widest input channels (the norm's
///   reach after smoothing) stay f32 (the next largest error, on short texts; in simulation as
///   accurate as a second activation plane, at 8 f32 multiply-adds per output instead of
///   doubling the layer's products);
/// - the down projection's weights take one scale per [`INT8_OUTPUT_WEIGHT_GROUP`] inputs: the
///   largest error among the weights (one scale per output left the worst text at 0.9927 on
///   all-mpnet-base-v2 in simulation; groups of 256 left all-MiniLM-L6-v2's at 0.999025).
///
/// In products: about 14 units of plain int8 against 12 (recipe 1's second planes took 21; its
/// feed-forward took 1.5 times this one's). Changing any choice here moves int8 vectors: bump
/// [`int8::RECIPE_VERSION`].
///
/// `input_norm` is the layer norm whose output feeds Q/K/V; `hidden` the model's width.
fn int8_scheme(
    role: PackedRole,
    weight: &Tensor,
    input_norm: &NormWeights,
    attention_norm: &NormWeights,
    hidden: usize,
) -> Result<Scheme> {
    let smoothing = |norm: &NormWeights| -> Result<Option<Vec<f32>>> {
        let (_, k) = weight.dims2()?;
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some(int8::smoothing_after_norm(
            &norm.weight,
            &norm.bias,
            &w,
            k,
        )))
    };
    let options = match role {
        PackedRole::Qkv => Int8Options {
            smoothing: smoothing(input_norm)?,
            fine_activations_from: Some(2 * hidden),
            ..Int8Options::default()
        },
        PackedRole::AttentionOutput => Int8Options::default(),
        PackedRole::Intermediate => {
            let smoothing = smoothing(attention_norm)?;
            let exact_channels = int8::outlier_channels_after_norm(
                &attention_norm.weight,
                &attention_norm.bias,
                smoothing.as_deref(),
                INT8_INTERMEDIATE_EXACT_CHANNELS,
            );
            Int8Options {
                smoothing,
                exact_channels,
                ..Int8Options::default()
            }
        }
        PackedRole::Output => Int8Options {
            weight_group: Some(INT8_OUTPUT_WEIGHT_GROUP),
            ..Int8Options::default()
        },
    };
    Ok(Scheme::Int8(Int8Backend::detect(), options))
}

impl BertLayer {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let linear = |target: LinearTarget, i, o| {
            Linear::load(vb.pp(target.checkpoint_name_in(cfg.flavor)), i, o)
        };
        let attention_norm_name = match cfg.flavor {
            BertFlavor::Mpnet => "attention.LayerNorm",
            BertFlavor::Bert | BertFlavor::Roberta => "attention.output.LayerNorm",
        };
        Ok(BertLayer {
            query: linear(LinearTarget::Query, h, h)?,
            key: linear(LinearTarget::Key, h, h)?,
            value: linear(LinearTarget::Value, h, h)?,
            attention_output: linear(LinearTarget::AttentionOutput, h, h)?,
            attention_norm: LayerNorm::load(vb.pp(attention_norm_name), h, cfg.layer_norm_eps)?,
            intermediate: linear(LinearTarget::Intermediate, h, cfg.intermediate_size)?,
            output: linear(LinearTarget::Output, cfg.intermediate_size, h)?,
            output_norm: LayerNorm::load(vb.pp("output.LayerNorm"), h, cfg.layer_norm_eps)?,
            activation: cfg.hidden_act,
            attention_dropout: Dropout::new(cfg.attention_probs_dropout_prob),
            hidden_dropout: Dropout::new(cfg.hidden_dropout_prob),
            num_heads: cfg.num_attention_heads,
            head_size: cfg.head_size(),
            matmul_dtype: DType::F32,
            packed: None,
            qkv_f32: OnceLock::new(),
        })
    }

    /// A linear layer, to change: its packed copy is dropped (the layer runs through the
    /// composite path until the products are set again).
    fn linear_mut(&mut self, target: LinearTarget) -> &mut Linear {
        self.packed = None;
        self.qkv_f32 = OnceLock::new();
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

    /// Whether the fused CPU kernels can run this layer: weights with biases and no LoRA
    /// adapter, with f32 products or packed for reduced ones.
    fn fusable(&self) -> bool {
        if self.packed.is_some() {
            // Packed only by `set_matmul_dtype` or `quantize_int8`, dropped by any change.
            return true;
        }
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
    fn forward_fused(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        position_bias: Option<&kernels::PositionBias>,
    ) -> Result<Tensor> {
        let scale = 1.0 / (self.head_size as f32).sqrt();
        if let Some(packed) = &self.packed {
            let qkv = packed.qkv.forward(xs, Epilogue::None)?;
            let context = kernels::attention(&qkv, lengths, self.num_heads, scale, position_bias)?;
            let attention_norm = self.attention_norm.host_weights()?;
            let xs = packed
                .attention_output
                .forward_add_norm(&context, xs, &attention_norm)?;
            let output_norm = self.output_norm.host_weights()?;
            if self.activation == HiddenAct::Gelu {
                let (up, down) = (&packed.intermediate, &packed.output);
                return packed::feed_forward(&xs, up, down, Some(&output_norm));
            }
            let inner = packed.intermediate.forward(&xs, Epilogue::None)?;
            let inner = self.activation.apply(&inner)?;
            return packed.output.forward_add_norm(&inner, &xs, &output_norm);
        }
        let bias = |l: &Linear| l.bias().expect("fusable() checked the biases").clone();
        let (w_qkv, b_qkv) = self.qkv_f32()?;
        let qkv = kernels::linear(xs, &w_qkv, &b_qkv, Epilogue::None)?;
        let context = kernels::attention(&qkv, lengths, self.num_heads, scale, position_bias)?;
        let xs = kernels::linear_add_norm(
            &context,
            self.attention_output.weight(),
            &bias(&self.attention_output),
            xs,
            &self.attention_norm.host_weights()?,
        )?;
        let (w1, b1) = (self.intermediate.weight(), bias(&self.intermediate));
        let (w2, b2) = (self.output.weight(), bias(&self.output));
        let output_norm = self.output_norm.host_weights()?;
        if self.activation == HiddenAct::Gelu {
            return kernels::feed_forward(&xs, w1, &b1, w2, &b2, Some(&output_norm));
        }
        let inner = self
            .activation
            .apply(&kernels::linear(&xs, w1, &b1, Epilogue::None)?)?;
        kernels::linear_add_norm(&inner, w2, &b2, &xs, &output_norm)
    }

    /// The Q/K/V weights and biases concatenated: cached for fixed weights (a copy of three
    /// weights per forward pass cost a single query's embedding more than its products).
    fn qkv_f32(&self) -> Result<(Tensor, Tensor)> {
        if let Some(cached) = self.qkv_f32.get() {
            return Ok(cached.clone());
        }
        let bias = |l: &Linear| l.bias().expect("fusable() checked the biases").clone();
        let parts = [&self.query, &self.key, &self.value];
        let weights: Vec<&Tensor> = parts.iter().map(|l| l.weight()).collect();
        let biases: Vec<Tensor> = parts.iter().map(|l| bias(l)).collect();
        let concatenated = (Tensor::cat(&weights, 0)?, Tensor::cat(&biases, 0)?);
        if !parts.iter().any(|l| l.weight().is_variable()) {
            // A concurrent first use may have set it; both values are the same.
            let _ = self.qkv_f32.set(concatenated.clone());
        }
        Ok(concatenated)
    }

    /// The differentiable path over rows laid out as `rows` says. `position_bias`:
    /// `(1, heads, seq, seq)`, added to the scaled scores (MPNet).
    fn forward(
        &self,
        xs: &Tensor,
        rows: TrainRows<'_>,
        position_bias: Option<&Tensor>,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        let context = match rows {
            TrainRows::Padded {
                lengths: Some(lengths),
                ..
            } if self.matmul_dtype == DType::F32 => self.fused_train_attention(
                xs,
                position_bias,
                lengths,
                train_attention::Rows::Padded,
                mode,
            )?,
            TrainRows::Padded { mask_bias, .. } => {
                self.composite_attention(xs, mask_bias, position_bias, mode)?
            }
            TrainRows::Packed { lengths, seq } => self.fused_train_attention(
                xs,
                position_bias,
                lengths,
                train_attention::Rows::Packed { seq },
                mode,
            )?,
        };
        let attended = self.attention_output.forward(&context)?;
        let xs = self
            .attention_norm
            .forward(&self.hidden_dropout.forward_add(&attended, xs, mode)?, mode)?;

        let expanded = self.intermediate.forward(&xs)?;
        let fused = match self.activation {
            HiddenAct::Gelu if mode.is_train() => {
                self.output.forward_after_gelu_train(&expanded)?
            }
            _ => None,
        };
        let out = match fused {
            Some(out) => out,
            None => self.output.forward(&self.activation.apply(&expanded)?)?,
        };
        self.output_norm
            .forward(&self.hidden_dropout.forward_add(&out, &xs, mode)?, mode)
    }

    /// Attention composed of differentiable candle ops (any device, dtype and mask).
    fn composite_attention(
        &self,
        xs: &Tensor,
        mask_bias: &Tensor,
        position_bias: Option<&Tensor>,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        let (b, s, h) = xs.dims3()?;
        let scale = 1.0 / (self.head_size as f64).sqrt();
        let q = self.split_heads(&(self.query.forward(xs)? * scale)?)?;
        let k = self.split_heads(&self.key.forward(xs)?)?;
        let v = self.split_heads(&self.value.forward(xs)?)?;
        let mut scores = matmul_in(&q, &k.t()?, self.matmul_dtype)?;
        if let Some(bias) = position_bias {
            scores = scores.broadcast_add(bias)?;
        }
        let probs = attention_probs(&scores, mask_bias, self.attention_dropout, mode)?;
        matmul_in(&probs, &v, self.matmul_dtype)?
            .transpose(1, 2)?
            .reshape((b, s, h))
    }

    /// Training attention as one fused op over one projection `(…, 3·hidden)` (the three
    /// layers' weights concatenated, or their outputs when adapters are attached), rows laid
    /// out as `rows` says. `position_bias`: `(1, heads, seq, seq)`.
    fn fused_train_attention(
        &self,
        xs: &Tensor,
        position_bias: Option<&Tensor>,
        lengths: &[usize],
        rows: train_attention::Rows,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        let qkv = match Linear::concatenated(&[&self.query, &self.key, &self.value])? {
            Some(fused) => fused.forward(xs)?,
            None => Tensor::cat(
                &[
                    self.query.forward(xs)?,
                    self.key.forward(xs)?,
                    self.value.forward(xs)?,
                ],
                D::Minus1,
            )?,
        };
        let scale = 1.0 / (self.head_size as f32).sqrt();
        let bias = position_bias.map(|b| b.squeeze(0)).transpose()?;
        train_attention::attention(
            &qkv,
            bias.as_ref(),
            lengths,
            rows,
            self.num_heads,
            scale,
            self.attention_dropout,
            mode,
        )
    }
}

/// The BERT encoder: token ids in, one hidden state per token out. Cloning shares the weights
/// (training variables updated in place are seen by every clone).
#[derive(Clone)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    /// MPNet's relative-position bias table `(buckets, heads)`.
    relative_bias: Option<Embedding>,
    config: BertConfig,
}

/// MPNet's longest distance with its own bucket range (Hugging Face's `max_distance`).
const RELATIVE_MAX_DISTANCE: i64 = 128;

/// MPNet's bucket of the relative position `key − query` (Hugging Face's
/// `relative_position_bucket`, with its float32 logarithm so boundaries fall alike): exact
/// buckets for distances below `buckets / 4`, logarithmic ones up to 128, each sign in its half.
pub fn relative_position_bucket(relative: i64, buckets: usize) -> usize {
    let half = (buckets / 2) as i64;
    let n = -relative;
    let sign = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    let bucket = if n < max_exact {
        n
    } else {
        let ratio = (n as f32 / max_exact as f32).ln()
            / ((RELATIVE_MAX_DISTANCE as f64 / max_exact as f64).ln() as f32);
        (max_exact + (ratio * (half - max_exact) as f32) as i64).min(half - 1)
    };
    (sign + bucket) as usize
}

impl BertModel {
    /// Loads the weights under `vb` (names as in Hugging Face checkpoints, without a `bert.` prefix).
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let embeddings = BertEmbeddings::load(vb.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::load(vb.pp(format!("encoder.layer.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let relative_bias = match cfg.flavor {
            BertFlavor::Mpnet => Some(Embedding::load(
                vb.pp("encoder.relative_attention_bias"),
                cfg.relative_attention_num_buckets,
                cfg.num_attention_heads,
            )?),
            BertFlavor::Bert | BertFlavor::Roberta => None,
        };
        Ok(BertModel {
            embeddings,
            layers,
            relative_bias,
            config: cfg.clone(),
        })
    }

    /// The hyper-parameters the model was loaded with.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Runs every matrix product of the transformer blocks in `dtype` (mixed precision, see
    /// [`crate::Precision`]); everything else stays f32. `DType::F32` restores exact products.
    /// bf16 on the CPU with fixed weights packs the linear layers once for [`crate::packed`]'s
    /// kernels; training variables keep candle's bf16 products.
    pub fn set_matmul_dtype(&mut self, dtype: DType) {
        for layer in &mut self.layers {
            layer.matmul_dtype = dtype;
            for linear in layer.linears_mut() {
                linear.set_matmul_dtype(dtype);
            }
            layer.packed = match dtype {
                DType::BF16 => {
                    match PackedLayer::pack(layer, &|_, _| Ok(Scheme::Bf16(Bf16Backend::detect())))
                    {
                        Ok(packed) => packed.map(Arc::new),
                        Err(e) => {
                            tracing::warn!(
                                "bf16 products fall back to candle's: packing failed: {e}"
                            );
                            None
                        }
                    }
                }
                _ => None,
            };
        }
    }

    /// Quantizes every block's linear layers once for int8 products on the CPU ([`crate::int8`];
    /// attention, norms and activations stay f32). Needs fixed f32 weights on the CPU, with
    /// biases and no adapter; otherwise nothing changes and the error says why.
    pub fn quantize_int8(&mut self) -> std::result::Result<(), String> {
        self.set_matmul_dtype(DType::F32);
        let hidden = self.config.hidden_size;
        let mut packed = Vec::with_capacity(self.layers.len());
        let mut input_norm = self.embeddings.layer_norm.host_weights();
        for layer in &self.layers {
            let norms =
                input_norm.and_then(|input| Ok((input, layer.attention_norm.host_weights()?)));
            let (input, attention) = match norms {
                Ok(norms) => norms,
                Err(e) => return Err(format!("reading the layer norms failed: {e}")),
            };
            let scheme_for = |role, w: &Tensor| int8_scheme(role, w, &input, &attention, hidden);
            input_norm = layer.output_norm.host_weights();
            match PackedLayer::pack(layer, &scheme_for) {
                Ok(Some(p)) => packed.push(Arc::new(p)),
                Ok(None) => {
                    return Err(
                        "int8 products need fixed weights on the CPU, with biases and \
                                no LoRA adapter (inference only)"
                            .to_string(),
                    )
                }
                Err(e) => return Err(format!("quantizing the weights failed: {e}")),
            }
        }
        for (layer, p) in self.layers.iter_mut().zip(packed) {
            layer.packed = Some(p);
        }
        Ok(())
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
        let train_lengths = fused_train_lengths(&mask, &xs, mode)?;
        if let Some(lengths) = &train_lengths {
            if self.layers.iter().all(|l| l.matmul_dtype == DType::F32) {
                return self.forward_packed(&xs, lengths, mode);
            }
        }
        // Built on first use: only layers that cannot take the fused kernels need them.
        let mut mask_bias: Option<Tensor> = None;
        let mut position_bias: Option<Option<Tensor>> = None;
        let mut fused_position_bias: Option<Option<kernels::PositionBias>> = None;
        for layer in &self.layers {
            xs = match &lengths {
                Some(lengths) if layer.fusable() => {
                    if fused_position_bias.is_none() {
                        fused_position_bias = Some(self.fused_position_bias(s)?);
                    }
                    let bias = fused_position_bias.as_ref().expect("just built").as_ref();
                    layer.forward_fused(&xs, lengths, bias)?
                }
                _ => {
                    if mask_bias.is_none() {
                        mask_bias = Some(composite_mask_bias(&mask, b, s)?);
                        position_bias = Some(self.position_bias(s, input_ids.device())?);
                    }
                    let mask_bias = mask_bias.as_ref().expect("just built");
                    let position_bias = position_bias.as_ref().expect("just built").as_ref();
                    let rows = TrainRows::Padded {
                        mask_bias,
                        lengths: train_lengths.as_deref(),
                    };
                    layer.forward(&xs, rows, position_bias, mode)?
                }
            };
        }
        Ok(xs)
    }

    /// The training pass over packed rows: the embeddings `(batch, seq, hidden)` of right-padded
    /// texts with `lengths` real tokens go through the layers as `(Σ lengths, hidden)` — the
    /// padding costs no products, no element-wise passes and no memory — and come back
    /// right-padded, zero at padding rows.
    fn forward_packed(&self, xs: &Tensor, lengths: &[usize], mode: Mode<'_>) -> Result<Tensor> {
        let (b, s, h) = xs.dims3()?;
        let packing = Packing::new(lengths, s, xs.device())?;
        let position_bias = self.position_bias(s, xs.device())?;
        let mut rows = packing.pack(xs)?;
        for layer in &self.layers {
            let layout = TrainRows::Packed { lengths, seq: s };
            rows = layer.forward(&rows, layout, position_bias.as_ref(), mode)?;
        }
        packing.unpack(&rows, (b, s, h))
    }

    /// The bucket of every (query, key) pair of a `seq`-token text, row-major.
    fn bucket_ids(&self, seq: usize) -> Vec<u32> {
        let buckets = self.config.relative_attention_num_buckets;
        (0..seq as i64)
            .flat_map(|q| (0..seq as i64).map(move |k| (q, k)))
            .map(|(q, k)| relative_position_bucket(k - q, buckets) as u32)
            .collect()
    }

    /// MPNet's position bias `(1, heads, seq, seq)` (differentiable in its table); `None` for
    /// the other flavors.
    fn position_bias(&self, seq: usize, device: &candle_core::Device) -> Result<Option<Tensor>> {
        let Some(table) = &self.relative_bias else {
            return Ok(None);
        };
        let ids = Tensor::from_vec(self.bucket_ids(seq), (seq, seq), device)?;
        Ok(Some(table.forward(&ids)?.permute((2, 0, 1))?.unsqueeze(0)?))
    }

    /// MPNet's position bias laid out for the fused attention kernel.
    fn fused_position_bias(&self, seq: usize) -> Result<Option<kernels::PositionBias>> {
        let Some(table) = &self.relative_bias else {
            return Ok(None);
        };
        let table = table.table().to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let heads = self.config.num_attention_heads;
        let ids = self.bucket_ids(seq);
        let mut values = vec![0f32; heads * seq * seq];
        for (head, block) in values.chunks_exact_mut(seq * seq).enumerate() {
            for (value, bucket) in block.iter_mut().zip(&ids) {
                *value = table[*bucket as usize][head];
            }
        }
        Ok(Some(kernels::PositionBias::new(values, heads, seq)))
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
            token_type_ids: self.embeddings.token_type.is_some(),
            position_offset: self.config.position_offset(),
        }
    }

    fn set_matmul_dtype(&mut self, dtype: DType) {
        BertModel::set_matmul_dtype(self, dtype)
    }

    fn quantize_int8(&mut self) -> std::result::Result<(), String> {
        BertModel::quantize_int8(self)
    }

    fn linear_mut(&mut self, layer: usize, target: LinearTarget) -> Option<&mut Linear> {
        BertModel::linear_mut(self, layer, target)
    }

    fn linear_name(&self, layer: usize, target: LinearTarget) -> Option<String> {
        (layer < self.layers.len()).then(|| {
            let name = target.checkpoint_name_in(self.config.flavor);
            format!("encoder.layer.{layer}.{name}")
        })
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

/// How a training layer's rows are laid out.
#[derive(Clone, Copy)]
enum TrainRows<'a> {
    /// `(batch, seq, hidden)`, right-padded: the composite attention masks with `mask_bias`
    /// `(batch, 1, 1, seq)`; the fused one takes `lengths` when it applies.
    Padded {
        mask_bias: &'a Tensor,
        lengths: Option<&'a [usize]>,
    },
    /// `(Σ lengths, hidden)`: the real tokens of each text, one text after another (fused
    /// attention only); `seq` is the padded length.
    Packed { lengths: &'a [usize], seq: usize },
}

/// Moves rows between the right-padded `(batch, seq, ·)` layout and the packed one (see
/// [`TrainRows::Packed`]), differentiably.
struct Packing {
    /// Padded row (`text · seq + position`) of each packed row.
    real_rows: Tensor,
    /// Packed row of each padded row; padding rows point one past the last (a zero row).
    padded_rows: Tensor,
    real: usize,
}

impl Packing {
    fn new(lengths: &[usize], seq: usize, device: &candle_core::Device) -> Result<Self> {
        let mut real_rows = Vec::with_capacity(lengths.iter().sum());
        let mut padded_rows = Vec::with_capacity(lengths.len() * seq);
        for (text, &len) in lengths.iter().enumerate() {
            for position in 0..seq {
                if position < len {
                    padded_rows.push(real_rows.len() as u32);
                    real_rows.push((text * seq + position) as u32);
                } else {
                    padded_rows.push(u32::MAX);
                }
            }
        }
        let real = real_rows.len();
        for row in padded_rows.iter_mut().filter(|r| **r == u32::MAX) {
            *row = real as u32;
        }
        Ok(Packing {
            real_rows: Tensor::new(real_rows, device)?,
            padded_rows: Tensor::new(padded_rows, device)?,
            real,
        })
    }

    /// `(batch, seq, width)` → `(Σ lengths, width)`.
    fn pack(&self, xs: &Tensor) -> Result<Tensor> {
        let width = xs.dim(D::Minus1)?;
        xs.reshape(((), width))?.index_select(&self.real_rows, 0)
    }

    /// `(Σ lengths, width)` → `shape` `(batch, seq, width)`, zero at padding rows.
    fn unpack(&self, rows: &Tensor, shape: (usize, usize, usize)) -> Result<Tensor> {
        let zero = Tensor::zeros((1, shape.2), rows.dtype(), rows.device())?;
        debug_assert_eq!(rows.dim(0)?, self.real);
        Tensor::cat(&[rows, &zero], 0)?
            .index_select(&self.padded_rows, 0)?
            .reshape(shape)
    }
}

/// Additive mask for the composite path: 0 where attended, the most negative float where
/// padded (as transformers does), shaped `(batch, 1, 1, seq)`.
fn composite_mask_bias(mask: &Tensor, b: usize, s: usize) -> Result<Tensor> {
    ((mask.ones_like()? - mask)? * f32::MIN as f64)?.reshape((b, 1, 1, s))
}

/// The real-token count of each text when the fused CPU kernels apply: an inference pass on
/// the CPU in f32 over right-padded texts (each mask row is ones then zeros).
pub(crate) fn fused_lengths(
    mask: &Tensor,
    xs: &Tensor,
    mode: Mode<'_>,
) -> Result<Option<Vec<usize>>> {
    if mode.is_train() {
        return Ok(None);
    }
    cpu_f32_lengths(mask, xs)
}

/// The real-token count of each text for the fused training attention: a training pass on the
/// CPU in f32 over right-padded texts.
pub(crate) fn fused_train_lengths(
    mask: &Tensor,
    xs: &Tensor,
    mode: Mode<'_>,
) -> Result<Option<Vec<usize>>> {
    if !mode.is_train() || !crate::train_kernels::applies(xs) {
        return Ok(None);
    }
    cpu_f32_lengths(mask, xs)
}

/// Real tokens per text on the CPU in f32 when every mask row is ones then zeros; `None`
/// otherwise (the composite path handles any mask).
fn cpu_f32_lengths(mask: &Tensor, xs: &Tensor) -> Result<Option<Vec<usize>>> {
    if !xs.device().is_cpu() || xs.dtype() != DType::F32 {
        return Ok(None);
    }
    let rows = mask.to_vec2::<f32>()?;
    let mut lengths = Vec::with_capacity(rows.len());
    for row in rows {
        let len = row.iter().take_while(|m| **m != 0.0).count();
        if row[len..].iter().any(|m| *m != 0.0) {
            return Ok(None);
        }
        lengths.push(len);
    }
    Ok(Some(lengths))
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket;

    /// Where Hugging Face's `MPNetEncoder.relative_position_bucket` (transformers 5.23, torch
    /// 2.15) changes bucket over relative positions -600..=600, and the bucket from there on.
    const TRANSFORMERS_BUCKET_STARTS: [(i64, usize); 31] = [
        (-600, 15),
        (-90, 14),
        (-63, 13),
        (-45, 12),
        (-31, 11),
        (-22, 10),
        (-15, 9),
        (-11, 8),
        (-7, 7),
        (-6, 6),
        (-5, 5),
        (-4, 4),
        (-3, 3),
        (-2, 2),
        (-1, 1),
        (0, 0),
        (1, 17),
        (2, 18),
        (3, 19),
        (4, 20),
        (5, 21),
        (6, 22),
        (7, 23),
        (8, 24),
        (12, 25),
        (16, 26),
        (23, 27),
        (32, 28),
        (46, 29),
        (64, 30),
        (91, 31),
    ];

    #[test]
    fn mpnet_buckets_match_transformers_at_every_boundary() {
        for relative in -600i64..=600 {
            let want = TRANSFORMERS_BUCKET_STARTS
                .iter()
                .rev()
                .find(|(start, _)| *start <= relative)
                .map(|(_, bucket)| *bucket)
                .unwrap();
            assert_eq!(
                relative_position_bucket(relative, 32),
                want,
                "relative position {relative}"
            );
        }
    }
}
