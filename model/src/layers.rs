//! Building blocks shared by inference and training.
//!
//! candle-nn's fused layer norm has no backward pass and its `Dropout` cannot be seeded, so the
//! layers here choose per [`Mode`]: fused kernels for inference, differentiable compositions and
//! real, reproducible dropout for training.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// How a forward pass runs.
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    /// No gradients are needed: fused kernels, no dropout.
    Inference,
    /// Gradients flow through every op; dropout is drawn from the context's generator.
    Train(&'a TrainContext),
}

impl Mode<'_> {
    /// Whether this is a training pass.
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }
}

/// State a training forward pass needs: the dropout masks' seed (so a run and its resumption
/// draw the same masks) and a count of the masks drawn so far.
///
/// Mask `c` of a context keeps element `i` when `hash(seed, c, i)` (SplitMix64) is at least
/// `p`: a counter-based generator, so masks are built in parallel and do not depend on the
/// thread count. Passes draw masks in a fixed order, so a pass is deterministic in the seed.
pub struct TrainContext {
    seed: u64,
    masks: AtomicU64,
}

impl TrainContext {
    /// A context whose dropout masks are determined by `seed`.
    pub fn new(seed: u64) -> Self {
        TrainContext {
            seed,
            masks: AtomicU64::new(0),
        }
    }

    /// The key of the next dropout mask (each call gives a new one, in call order).
    pub(crate) fn next_mask(&self, p: f32) -> DropoutMask {
        let call = self.masks.fetch_add(1, Ordering::Relaxed);
        DropoutMask::new(splitmix64(self.seed ^ splitmix64(call)), p)
    }

    /// A keep-mask scaled by `1 / (1 - p)`, shaped like `like`: inverted dropout as PyTorch does it.
    fn dropout_mask(&self, like: &Tensor, p: f32) -> Result<Tensor> {
        let mask = self.next_mask(p);
        const CHUNK: usize = 1 << 14;
        let mut values = vec![1f32; like.elem_count()];
        values
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| mask.apply(c * CHUNK, chunk));
        Tensor::from_vec(values, like.shape(), like.device())?.to_dtype(like.dtype())
    }
}

/// SplitMix64's output function: a bijective mix of all 64 bits.
#[inline(always)]
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One dropout mask, as a function of the element index (so it can be recomputed in the
/// backward pass instead of stored).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropoutMask {
    key: u64,
    /// Drop when the 24-bit draw is below this (`ceil(p · 2²⁴)`).
    threshold: u64,
    keep_scale: f32,
}

impl DropoutMask {
    pub(crate) fn new(key: u64, p: f32) -> Self {
        DropoutMask {
            key,
            threshold: (f64::from(p) * f64::from(1u32 << 24)).ceil() as u64,
            keep_scale: 1.0 / (1.0 - p),
        }
    }

    /// `1/(1-p)` if element `i` is kept, else 0 (what [`Self::apply`] multiplies by).
    #[cfg(test)]
    pub(crate) fn factor(&self, i: usize) -> f32 {
        if splitmix64(self.key.wrapping_add(i as u64)) >> 40 >= self.threshold {
            self.keep_scale
        } else {
            0.0
        }
    }

    /// `xs[j] ← xs[j] · factor(start + j)`: the mask over a run of consecutive elements, in
    /// one vectorized loop (AVX-512's 64-bit multiplies where the CPU has them; AVX2 builds
    /// each from three 32-bit ones).
    pub(crate) fn apply(&self, start: usize, xs: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
            unsafe fn v4(mask: &DropoutMask, start: usize, xs: &mut [f32]) {
                mask.apply_generic(start, xs)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v3(mask: &DropoutMask, start: usize, xs: &mut [f32]) {
                mask.apply_generic(start, xs)
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the CPU has the features the function was compiled for.
                return unsafe { v4(self, start, xs) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                return unsafe { v3(self, start, xs) };
            }
        }
        self.apply_generic(start, xs)
    }

    #[inline(always)]
    fn apply_generic(&self, start: usize, xs: &mut [f32]) {
        let first = self.key.wrapping_add(start as u64);
        for (j, x) in xs.iter_mut().enumerate() {
            let draw = splitmix64(first.wrapping_add(j as u64)) >> 40;
            *x *= if draw >= self.threshold {
                self.keep_scale
            } else {
                0.0
            };
        }
    }
}

/// Dropout with probability `p` in training mode; the identity otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    p: f32,
}

impl Dropout {
    /// Dropout that zeroes each element with probability `p` (in `[0, 1)`).
    pub fn new(p: f32) -> Self {
        Dropout { p }
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// The mask of this pass for a fused op to apply: `None` outside training or when `p` is 0.
    pub(crate) fn train_mask(&self, mode: Mode<'_>) -> Option<DropoutMask> {
        match mode {
            Mode::Train(ctx) if self.p > 0.0 => Some(ctx.next_mask(self.p)),
            _ => None,
        }
    }

    /// `dropout(xs) + residual` for this pass (one fused op when training on the CPU in f32).
    pub fn forward_add(&self, xs: &Tensor, residual: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        match mode {
            Mode::Train(ctx) if self.p > 0.0 && crate::train_kernels::applies(xs) => {
                crate::train_kernels::dropout_add(xs, residual, ctx.next_mask(self.p))
            }
            _ => self.forward(xs, mode)? + residual,
        }
    }

    /// Applies the dropout for this pass.
    pub fn forward(&self, xs: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        match mode {
            Mode::Train(ctx) if self.p > 0.0 => xs.mul(&ctx.dropout_mask(xs, self.p)?),
            _ => Ok(xs.clone()),
        }
    }
}

/// Layer normalization over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of width `size`.
    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    /// Loads `weight`, and `bias` when the checkpoint has one (a constant zero bias otherwise,
    /// as ModernBERT's bias-free norms).
    pub fn load_with_bias(vb: VarBuilder, size: usize, eps: f64, bias: bool) -> Result<Self> {
        let weight = vb.get(size, "weight")?;
        let bias = if bias {
            vb.get(size, "bias")?
        } else {
            weight.zeros_like()?.detach()
        };
        Ok(LayerNorm { weight, bias, eps })
    }

    /// The scale, shift and ε on the host, for the fused inference epilogues
    /// ([`crate::kernels::linear_add_norm`]).
    pub fn host_weights(&self) -> Result<crate::kernels::NormWeights> {
        Ok(crate::kernels::NormWeights {
            weight: self.weight.to_dtype(DType::F32)?.to_vec1()?,
            bias: self.bias.to_dtype(DType::F32)?.to_vec1()?,
            eps: self.eps as f32,
        })
    }

    /// The fused kernel for inference; a composition of differentiable ops for training.
    pub fn forward(&self, xs: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        if mode.is_train() {
            if crate::train_kernels::applies(xs) {
                crate::train_kernels::layer_norm(xs, &self.weight, &self.bias, self.eps as f32)
            } else {
                candle_nn::ops::layer_norm_slow(xs, &self.weight, &self.bias, self.eps as f32)
            }
        } else {
            candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps as f32)
        }
    }
}

/// `dropout(softmax(scores + mask_bias))`: attention probabilities. When training on the CPU,
/// one fused op whose backward recomputes the softmax and the dropout mask instead of keeping
/// them (two fewer `(batch, heads, seq, seq)` tensors per layer).
pub fn attention_probs(
    scores: &Tensor,
    mask_bias: &Tensor,
    dropout: Dropout,
    mode: Mode<'_>,
) -> Result<Tensor> {
    match mode {
        Mode::Train(ctx) if crate::train_kernels::applies(scores) => {
            let mask = (dropout.p > 0.0).then(|| ctx.next_mask(dropout.p));
            crate::train_kernels::attention_probs(scores, mask_bias, mask)
        }
        _ => dropout.forward(
            &softmax_last_dim(&scores.broadcast_add(mask_bias)?, mode)?,
            mode,
        ),
    }
}

/// Softmax over the last dimension: fused for inference, differentiable for training (on the
/// CPU, training goes through [`attention_probs`]' fused op instead).
pub fn softmax_last_dim(xs: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
    if mode.is_train() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

/// `a · b` with both inputs narrowed to `dtype` and the product widened back to `a`'s dtype:
/// a mixed-precision product (see [`crate::Precision`]). Gradients flow through the casts, so
/// they reach f32 weights as f32. With `dtype` equal to `a`'s, a plain product.
pub fn matmul_in(a: &Tensor, b: &Tensor, dtype: DType) -> Result<Tensor> {
    if a.dtype() == dtype && b.dtype() == dtype {
        return a.matmul(b);
    }
    a.to_dtype(dtype)?
        .matmul(&b.to_dtype(dtype)?)?
        .to_dtype(a.dtype())
}

/// A low-rank adapter `x · Aᵀ · Bᵀ · (alpha / rank)` added to a frozen linear layer (LoRA).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// Down projection, shape `(rank, in)`.
    pub a: Tensor,
    /// Up projection, shape `(out, rank)`; zero at initialisation so the adapter starts as a no-op.
    pub b: Tensor,
    /// `alpha / rank`.
    pub scale: f64,
}

impl LoraAdapter {
    fn delta(&self, xs2d: &Tensor, dtype: DType) -> Result<Tensor> {
        matmul_in(&matmul_in(xs2d, &self.a.t()?, dtype)?, &self.b.t()?, dtype)? * self.scale
    }

    /// The dense weight update `B · A · scale`, shape `(out, in)`, for merging into the base weight.
    pub fn merged_delta(&self) -> Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

/// A linear layer `y = x · Wᵀ + b`, with an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraAdapter>,
    /// The dtype of the products `x · Wᵀ` (and the adapter's); f32 unless set otherwise.
    matmul_dtype: DType,
}

impl Linear {
    /// Loads `weight` `(out, in)` and `bias` `(out)`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::load_with_bias(vb, in_dim, out_dim, true)
    }

    /// Loads `weight` `(out, in)`, and `bias` `(out)` when `bias` is set.
    pub fn load_with_bias(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Linear {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: bias.then(|| vb.get(out_dim, "bias")).transpose()?,
            lora: None,
            matmul_dtype: DType::F32,
        })
    }

    /// The layers as one whose output is theirs side by side (weights and biases concatenated,
    /// differentiably): one product, and one input gradient, instead of one per layer. `None`
    /// when any has an adapter, the biases are not all present, or the product dtypes differ.
    pub fn concatenated(parts: &[&Linear]) -> Result<Option<Linear>> {
        let first = match parts.first() {
            Some(first) => first,
            None => return Ok(None),
        };
        let plain = parts
            .iter()
            .all(|l| l.lora.is_none() && l.bias.is_some() && l.matmul_dtype == first.matmul_dtype);
        if !plain {
            return Ok(None);
        }
        let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
        let biases: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias.as_ref()).collect();
        Ok(Some(Linear {
            weight: Tensor::cat(&weights, 0)?,
            bias: Some(Tensor::cat(&biases, 0)?),
            lora: None,
            matmul_dtype: first.matmul_dtype,
        }))
    }

    /// The weight, `(out, in)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `(out)`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Attaches (or replaces) a LoRA adapter.
    pub fn set_lora(&mut self, adapter: Option<LoraAdapter>) {
        self.lora = adapter;
    }

    /// The attached adapter, if any.
    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// Runs the products in `dtype` (mixed precision); the output stays in the input's dtype.
    pub fn set_matmul_dtype(&mut self, dtype: DType) {
        self.matmul_dtype = dtype;
    }

    /// The dtype the products run in.
    pub fn matmul_dtype(&self) -> DType {
        self.matmul_dtype
    }
}

impl Linear {
    /// The layer applied to `GELU(xs)` (exact GELU) as one training op, where it applies: a
    /// layer with a bias and no adapter, products in f32, on the CPU. `None` elsewhere (apply
    /// the activation, then the layer).
    pub(crate) fn forward_after_gelu_train(&self, xs: &Tensor) -> Result<Option<Tensor>> {
        match &self.bias {
            Some(bias)
                if self.lora.is_none()
                    && self.matmul_dtype == DType::F32
                    && crate::train_kernels::applies(xs) =>
            {
                Ok(Some(crate::train_kernels::gelu_linear(
                    xs,
                    &self.weight,
                    bias,
                )?))
            }
            _ => Ok(None),
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let in_dim = *dims
            .last()
            .expect("linear input has at least one dimension");
        let rows = xs.elem_count() / in_dim.max(1);
        let xs2d = xs.reshape((rows, in_dim))?;
        let mut ys = match &self.bias {
            Some(bias)
                if crate::train_kernels::applies(&xs2d) && self.matmul_dtype == DType::F32 =>
            {
                crate::train_kernels::linear(&xs2d, &self.weight, bias)?
            }
            _ => {
                let ys = matmul_in(&xs2d, &self.weight.t()?, self.matmul_dtype)?;
                match &self.bias {
                    Some(bias) if crate::train_kernels::applies(&ys) && bias.track_op() => {
                        crate::train_kernels::bias_add(&ys, bias)?
                    }
                    Some(bias) => ys.broadcast_add(bias)?,
                    None => ys,
                }
            }
        };
        if let Some(lora) = &self.lora {
            ys = (ys + lora.delta(&xs2d, self.matmul_dtype)?)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
        ys.reshape(out_dims)
    }
}

/// Token (or position, or segment) embedding table.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
}

impl Embedding {
    /// Loads a `(count, dim)` table named `weight`.
    pub fn load(vb: VarBuilder, count: usize, dim: usize) -> Result<Self> {
        Ok(Embedding {
            table: vb.get((count, dim), "weight")?,
        })
    }

    /// The `(count, dim)` table.
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// Looks up `ids` (any shape, integer dtype); the output adds a trailing `dim` axis.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.table.dim(1)?);
        let ids = if ids.dtype() == DType::U32 || ids.dtype() == DType::I64 {
            ids.clone()
        } else {
            ids.to_dtype(DType::U32)?
        };
        self.table
            .index_select(&ids.flatten_all()?, 0)?
            .reshape(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn a_mask_applied_to_a_run_is_its_per_element_factors() {
        let mask = DropoutMask::new(0xdead_beef, 0.3);
        for (start, len) in [
            (0, 1),
            (5, 37),
            (1 << 20, 1000),
            (usize::MAX - 40, 17),
            (0, 1 << 14),
            (3 << 14, 1 << 14),
        ] {
            let mut run = vec![2f32; len];
            mask.apply(start, &mut run);
            let want: Vec<f32> = (0..len)
                .map(|j| 2.0 * mask.factor(start.wrapping_add(j)))
                .collect();
            assert_eq!(run, want, "run at {start}");
        }
        let mut many = vec![1f32; 100_000];
        mask.apply(0, &mut many);
        let dropped = many.iter().filter(|x| **x == 0.0).count() as f64 / many.len() as f64;
        assert!((dropped - 0.3).abs() < 0.01, "dropped share {dropped}");
    }

    #[test]
    fn training_layer_norm_matches_fused_and_has_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 16), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.1, 16, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.1, 16, &dev).unwrap()).unwrap();
        let ln = LayerNorm {
            weight: w.as_tensor().clone(),
            bias: b.as_tensor().clone(),
            eps: 1e-12,
        };
        let ctx = TrainContext::new(1);
        let fused = ln.forward(x.as_tensor(), Mode::Inference).unwrap();
        let slow = ln.forward(x.as_tensor(), Mode::Train(&ctx)).unwrap();
        let diff = (fused - &slow).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        // A loss that depends on the affine weight must give it a non-zero gradient.
        let loss = (slow * Tensor::randn(0f32, 1.0, (3, 5, 16), &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for v in [&x, &w, &b] {
            let g = grads.get(v.as_tensor()).expect("gradient exists");
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "zero gradient");
        }
    }

    #[test]
    fn dropout_is_identity_at_inference_and_seeded_in_training() {
        let xs = Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(0.25);
        let same = d.forward(&xs, Mode::Inference).unwrap();
        assert_eq!(same.sum_all().unwrap().to_scalar::<f32>().unwrap(), 4096.0);
        let draw = |seed| {
            let ctx = TrainContext::new(seed);
            d.forward(&xs, Mode::Train(&ctx))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let a = draw(7);
        assert_eq!(a, draw(7), "same seed, same mask");
        assert_ne!(a, draw(8));
        let dropped = a.iter().filter(|v| **v == 0.0).count() as f32 / a.len() as f32;
        assert!((dropped - 0.25).abs() < 0.03, "dropped share {dropped}");
        assert!(a
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
    }

    #[test]
    fn lora_with_zero_up_projection_is_a_no_op_and_merges_exactly() {
        let dev = Device::Cpu;
        let mut lin = Linear {
            weight: Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap(),
            bias: Some(Tensor::randn(0f32, 1.0, 6, &dev).unwrap()),
            lora: None,
            matmul_dtype: DType::F32,
        };
        let xs = Tensor::randn(0f32, 1.0, (2, 3, 4), &dev).unwrap();
        let base = lin.forward(&xs).unwrap();
        lin.set_lora(Some(LoraAdapter {
            a: Tensor::randn(0f32, 1.0, (2, 4), &dev).unwrap(),
            b: Tensor::zeros((6, 2), DType::F32, &dev).unwrap(),
            scale: 8.0,
        }));
        let with_zero = lin.forward(&xs).unwrap();
        let d = (&base - &with_zero)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        // A trained adapter equals the merged weight.
        lin.set_lora(Some(LoraAdapter {
            a: Tensor::randn(0f32, 1.0, (2, 4), &dev).unwrap(),
            b: Tensor::randn(0f32, 1.0, (6, 2), &dev).unwrap(),
            scale: 0.5,
        }));
        let adapted = lin.forward(&xs).unwrap();
        let merged = Linear {
            weight: (lin.weight() + lin.lora().unwrap().merged_delta().unwrap()).unwrap(),
            bias: lin.bias.clone(),
            lora: None,
            matmul_dtype: DType::F32,
        };
        let d = (adapted - merged.forward(&xs).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
    }

    #[test]
    fn mixed_precision_products_stay_close_and_give_f32_gradients() {
        let dev = Device::Cpu;
        let weight = candle_core::Var::randn(0f32, 0.2, (6, 16), &dev).unwrap();
        let mut lin = Linear {
            weight: weight.as_tensor().clone(),
            bias: Some(Tensor::randn(0f32, 1.0, 6, &dev).unwrap()),
            lora: None,
            matmul_dtype: DType::F32,
        };
        let xs = Tensor::randn(0f32, 1.0, (3, 5, 16), &dev).unwrap();
        let exact = lin.forward(&xs).unwrap();
        let exact_grad = exact.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let exact_grad = exact_grad.get(weight.as_tensor()).unwrap().clone();
        for dtype in [DType::BF16, DType::F16] {
            lin.set_matmul_dtype(dtype);
            let ys = lin.forward(&xs).unwrap();
            assert_eq!(ys.dtype(), DType::F32, "the output is widened back");
            let err = (&ys - &exact).unwrap().abs().unwrap().max_all().unwrap();
            let err = err.to_scalar::<f32>().unwrap();
            // bf16 keeps 8 mantissa bits: |x·w| over 16 terms of size ~0.2 errs by ~1e-2 at most.
            assert!(err > 0.0 && err < 3e-2, "{dtype:?}: max error {err}");
            let grads = ys.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let grad = grads.get(weight.as_tensor()).unwrap();
            assert_eq!(
                grad.dtype(),
                DType::F32,
                "the master weight's gradient is f32"
            );
            let rel = ((grad - &exact_grad)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap())
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
                / exact_grad
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .sqrt()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
            assert!(rel < 2e-2, "{dtype:?}: gradient relative error {rel}");
        }
    }
}
