//! Fused CPU ops with a backward pass, for training.
//!
//! Written as compositions of candle ops, exact GELU, softmax and layer norm each take 5–10
//! element-wise passes forward and as many backward, every one allocating a tensor; the scalar
//! `erf` alone was a tenth of a training step. These ops do each in one parallel, vectorized
//! pass (and one for the gradient), with the same math as the compositions. They run on the
//! CPU; [`crate::layers`] uses the compositions on other devices. Checked against the
//! compositions, values and gradients, in the tests below.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::kernels::{
    contiguous, dispatch, erf_approx, exp_approx, fma, gelu_erf_in_place, map_interleaved,
    softmax_in_place, INTERLEAVE,
};
use crate::layers::DropoutMask;

/// Elements per parallel task of element-wise ops.
const CHUNK: usize = 1 << 14;

/// `(Φ(x), Φ(x) + x·φ(x))`: the standard normal CDF, which scales `x` to exact GELU
/// `x·Φ(x)`, and GELU's derivative. One `erf` and one `exp`.
#[inline(always)]
fn gelu_cdf_and_grad(x: f32) -> (f32, f32) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = fma(0.5, erf_approx(x * std::f32::consts::FRAC_1_SQRT_2), 0.5);
    (cdf, fma(x * INV_SQRT_2PI, exp_approx(-0.5 * x * x), cdf))
}

/// `x ← GELU'(x)` over `xs`.
#[inline(always)]
fn gelu_grad_generic(xs: &mut [f32]) {
    map_interleaved(xs, |x| gelu_cdf_and_grad(x).1);
}

dispatch!(
    /// `x ← GELU'(x)` for every element.
    fn gelu_grad_in_place(xs: &mut [f32]) => gelu_grad_generic
);

/// `(x, d) ← (GELU(x), d·GELU'(x))` element by element: the value and the derivative share one
/// `erf` (and `Φ(x)`), so a backward pass that needs both evaluates it once.
#[inline(always)]
fn gelu_and_gradient_generic(xs: &mut [f32], ds: &mut [f32]) {
    let both = |x: &mut f32, d: &mut f32| {
        let (cdf, grad) = gelu_cdf_and_grad(*x);
        *d *= grad;
        *x *= cdf;
    };
    let mut x_chunks = xs.chunks_exact_mut(INTERLEAVE);
    let mut d_chunks = ds.chunks_exact_mut(INTERLEAVE);
    for (x_chunk, d_chunk) in (&mut x_chunks).zip(&mut d_chunks) {
        for (x, d) in x_chunk.iter_mut().zip(d_chunk.iter_mut()) {
            both(x, d);
        }
    }
    let tails = x_chunks.into_remainder().iter_mut();
    for (x, d) in tails.zip(d_chunks.into_remainder()) {
        both(x, d);
    }
}

dispatch!(
    /// `(x, d) ← (GELU(x), d·GELU'(x))` for every element pair.
    fn gelu_and_gradient_in_place(xs: &mut [f32], ds: &mut [f32]) => gelu_and_gradient_generic
);

/// `(GELU(h), d·GELU'(h))` for `h` and `d` of one shape (f32, CPU), in one parallel pass.
fn gelu_and_gradient(h: &Tensor, d: &Tensor) -> Result<(Tensor, Tensor)> {
    let mut activation = h.flatten_all()?.to_vec1::<f32>()?;
    let mut gradient = d.flatten_all()?.to_vec1::<f32>()?;
    activation
        .par_chunks_mut(CHUNK)
        .zip(gradient.par_chunks_mut(CHUNK))
        .for_each(|(xs, ds)| gelu_and_gradient_in_place(xs, ds));
    Ok((
        Tensor::from_vec(activation, h.shape(), h.device())?,
        Tensor::from_vec(gradient, h.shape(), h.device())?,
    ))
}

fn output(data: Vec<f32>, layout: &Layout) -> (CpuStorage, Shape) {
    (CpuStorage::F32(data), layout.shape().clone())
}

/// Exact (erf) GELU.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "attune-train-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = contiguous(storage, layout, "gelu")?.to_vec();
        out.par_chunks_mut(CHUNK).for_each(gelu_erf_in_place);
        Ok(output(out, layout))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?,
        ))
    }
}

/// `(x, g) → g·GELU'(x)`.
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "attune-train-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let mut out = contiguous(x, x_layout, "gelu backward")?.to_vec();
        let g = contiguous(g, g_layout, "gelu backward gradient")?;
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(d, g)| {
                gelu_grad_in_place(d);
                for (d, g) in d.iter_mut().zip(g) {
                    *d *= g;
                }
            });
        Ok(output(out, x_layout))
    }
}

/// Attention probabilities: `dropout(softmax(scores + mask))` over the last dimension of
/// `(batch, heads, queries, keys)` scores, with a per-text additive mask over the keys (not
/// differentiated). The backward pass recomputes the softmax from the scores and the dropout
/// mask from its key, so neither is stored.
#[derive(Clone)]
struct AttentionProbs {
    /// `(batch, keys)` additive mask.
    mask: std::sync::Arc<Vec<f32>>,
    /// Score rows per text: heads × queries.
    rows_per_text: usize,
    dropout: Option<DropoutMask>,
}

impl AttentionProbs {
    /// `softmax(row + mask)` of score row `r`, in place.
    #[inline]
    fn softmax_row(&self, r: usize, row: &mut [f32]) {
        let width = row.len();
        let text = r / self.rows_per_text.max(1);
        for (x, m) in row
            .iter_mut()
            .zip(&self.mask[text * width..(text + 1) * width])
        {
            *x += m;
        }
        softmax_in_place(row);
    }
}

impl CustomOp1 for AttentionProbs {
    fn name(&self) -> &'static str {
        "attune-train-attention-probs"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = (*layout.shape().dims().last().unwrap_or(&1)).max(1);
        let mut out = contiguous(storage, layout, "attention probabilities")?.to_vec();
        out.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
            self.softmax_row(r, row);
            if let Some(mask) = &self.dropout {
                mask.apply(r * width, row);
            }
        });
        Ok(output(out, layout))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &AttentionProbsBackward(self.clone()),
        )?))
    }
}

/// `(scores, g) → d scores` of [`AttentionProbs`]: with `y = softmax(scores + mask)` and
/// `g' = g·dropout`, `y·(g' − Σ g'·y)` per row.
struct AttentionProbsBackward(AttentionProbs);

impl CustomOp2 for AttentionProbsBackward {
    fn name(&self) -> &'static str {
        "attune-train-attention-probs-backward"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        s_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let width = (*s_layout.shape().dims().last().unwrap_or(&1)).max(1);
        let mut out = contiguous(s, s_layout, "attention backward")?.to_vec();
        let g = contiguous(g, g_layout, "attention backward gradient")?;
        out.par_chunks_mut(width)
            .zip(g.par_chunks(width))
            .enumerate()
            .for_each_init(Vec::new, |factors, (r, (y, g))| {
                self.0.softmax_row(r, y);
                factors.clear();
                factors.resize(width, 1f32);
                if let Some(mask) = &self.0.dropout {
                    mask.apply(r * width, factors);
                }
                let dot: f32 = y
                    .iter()
                    .zip(g)
                    .zip(factors.iter())
                    .map(|((y, g), f)| y * g * f)
                    .sum();
                for ((y, g), f) in y.iter_mut().zip(g).zip(factors.iter()) {
                    *y *= g * f - dot;
                }
            });
        Ok(output(out, s_layout))
    }
}

/// `Σ_rows a[r]·b[r]` (or `Σ_rows a[r]` without `b`) of row-major `(rows, width)` data: per-thread
/// partial sums over blocks of rows, added in block order (deterministic for a thread count).
fn column_sums(a: &[f32], b: Option<&[f32]>, width: usize) -> Vec<f32> {
    const ROWS_PER_BLOCK: usize = 256;
    let block = ROWS_PER_BLOCK * width;
    let partials: Vec<Vec<f32>> = a
        .par_chunks(block)
        .enumerate()
        .map(|(i, a)| {
            let mut sums = vec![0f32; width];
            for (r, row) in a.chunks_exact(width).enumerate() {
                match b {
                    Some(b) => {
                        let start = i * block + r * width;
                        let other = &b[start..start + width];
                        for ((s, x), y) in sums.iter_mut().zip(row).zip(other) {
                            *s += x * y;
                        }
                    }
                    None => {
                        for (s, x) in sums.iter_mut().zip(row) {
                            *s += x;
                        }
                    }
                }
            }
            sums
        })
        .collect();
    let mut total = vec![0f32; width];
    for partial in partials {
        for (t, p) in total.iter_mut().zip(partial) {
            *t += p;
        }
    }
    total
}

/// `(a, b?) → Σ_rows a·b` over all but the last dimension.
struct ColumnSum {
    weighted: bool,
}

impl ColumnSum {
    fn run(&self, a: &[f32], b: Option<&[f32]>, layout: &Layout) -> (CpuStorage, Shape) {
        let width = (*layout.shape().dims().last().unwrap_or(&1)).max(1);
        (
            CpuStorage::F32(column_sums(a, b, width)),
            Shape::from_dims(&[width]),
        )
    }
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "attune-train-column-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok(self.run(contiguous(storage, layout, "column sum")?, None, layout))
    }
}

impl CustomOp2 for ColumnSum {
    fn name(&self) -> &'static str {
        "attune-train-column-dot"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        debug_assert!(self.weighted);
        let a = contiguous(a, a_layout, "column dot")?;
        let b = contiguous(b, b_layout, "column dot")?;
        Ok(self.run(a, Some(b), a_layout))
    }
}

/// `x + b` with `b` over the last dimension; the bias gradient is a parallel column sum.
struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "attune-train-bias-add"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = contiguous(b, b_layout, "bias")?;
        let mut out = contiguous(x, x_layout, "bias add")?.to_vec();
        let rows_per_task = (CHUNK / b.len().max(1)).max(1);
        out.par_chunks_mut(rows_per_task * b.len())
            .for_each(|rows| {
                for row in rows.chunks_exact_mut(b.len()) {
                    for (x, b) in row.iter_mut().zip(b) {
                        *x += b;
                    }
                }
            });
        Ok(output(out, x_layout))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad
            .contiguous()?
            .apply_op1_no_bwd(&ColumnSum { weighted: false })?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// Mean and `1/σ` of one row.
#[inline]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Layer normalization over the last dimension: `(x − μ)/σ · w + b`.
struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "attune-train-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = contiguous(w, w_layout, "layer norm weight")?;
        let b = contiguous(b, b_layout, "layer norm bias")?;
        let mut out = contiguous(x, x_layout, "layer norm")?.to_vec();
        out.par_chunks_mut(w.len()).for_each(|row| {
            let (mean, rstd) = row_stats(row, self.eps);
            for ((x, w), b) in row.iter_mut().zip(w).zip(b) {
                *x = (*x - mean) * rstd * w + b;
            }
        });
        Ok(output(out, x_layout))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &grad, &LayerNormBackward { eps: self.eps })?;
        let normalized = x.apply_op1_no_bwd(&Normalize { eps: self.eps })?;
        let dw = grad.apply_op2_no_bwd(&normalized, &ColumnSum { weighted: true })?;
        let db = grad.apply_op1_no_bwd(&ColumnSum { weighted: false })?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `(x − μ)/σ` per row.
struct Normalize {
    eps: f32,
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "attune-train-normalize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = (*layout.shape().dims().last().unwrap_or(&1)).max(1);
        let mut out = contiguous(storage, layout, "normalize")?.to_vec();
        out.par_chunks_mut(width).for_each(|row| {
            let (mean, rstd) = row_stats(row, self.eps);
            for x in row.iter_mut() {
                *x = (*x - mean) * rstd;
            }
        });
        Ok(output(out, layout))
    }
}

/// `(x, w, g) → dx` of layer norm: `rstd·(w·g − mean(w·g) − x̂·mean(w·g·x̂))` per row.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "attune-train-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = contiguous(w, w_layout, "layer norm backward weight")?;
        let g = contiguous(g, g_layout, "layer norm backward gradient")?;
        let width = w.len();
        let n = width as f32;
        let mut out = contiguous(x, x_layout, "layer norm backward")?.to_vec();
        out.par_chunks_mut(width)
            .zip(g.par_chunks(width))
            .for_each(|(row, g)| {
                let (mean, rstd) = row_stats(row, self.eps);
                let mut sum_wg = 0.0f32;
                let mut sum_wg_xhat = 0.0f32;
                for ((x, w), g) in row.iter_mut().zip(w).zip(g) {
                    *x = (*x - mean) * rstd; // x̂
                    sum_wg += w * g;
                    sum_wg_xhat += w * g * *x;
                }
                let (mean_wg, mean_wg_xhat) = (sum_wg / n, sum_wg_xhat / n);
                for ((x, w), g) in row.iter_mut().zip(w).zip(g) {
                    *x = rstd * (w * g - mean_wg - *x * mean_wg_xhat);
                }
            });
        Ok(output(out, x_layout))
    }
}

/// Whether the fused training ops apply: f32 on the CPU.
pub fn applies(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32
}

/// Exact GELU with a fused backward (f32, CPU).
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Gelu)
}

/// `dropout(softmax(scores + mask_bias))` over the last dimension with a fused backward (f32,
/// CPU): `scores` is `(batch, heads, queries, keys)`, `mask_bias` `(batch, 1, 1, keys)` and
/// constant; `dropout` is the mask to apply, if any.
pub(crate) fn attention_probs(
    scores: &Tensor,
    mask_bias: &Tensor,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    let (b, h, q, k) = scores.dims4()?;
    if mask_bias.dims() != [b, 1, 1, k] {
        candle_core::bail!(
            "attention probabilities: scores {:?}, mask {:?}",
            scores.dims(),
            mask_bias.dims()
        );
    }
    let mask = mask_bias.flatten_all()?.to_vec1::<f32>()?;
    scores.contiguous()?.apply_op1(AttentionProbs {
        mask: std::sync::Arc::new(mask),
        rows_per_text: h * q,
        dropout,
    })
}

/// `(y, r) → dropout(y) + r`: the residual connection after a sublayer, in one pass and without
/// a mask tensor (the backward pass recomputes the mask from its key).
struct DropoutAdd(DropoutMask);

impl CustomOp2 for DropoutAdd {
    fn name(&self) -> &'static str {
        "attune-train-dropout-add"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        y_layout: &Layout,
        r: &CpuStorage,
        r_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let r = contiguous(r, r_layout, "residual")?;
        let mut out = contiguous(y, y_layout, "dropout input")?.to_vec();
        if out.len() != r.len() {
            candle_core::bail!(
                "dropout add: {:?} and {:?}",
                y_layout.shape(),
                r_layout.shape()
            );
        }
        out.par_chunks_mut(CHUNK)
            .zip(r.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (y, r))| {
                self.0.apply(c * CHUNK, y);
                for (y, r) in y.iter_mut().zip(r) {
                    *y += r;
                }
            });
        Ok(output(out, y_layout))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = grad.contiguous()?.apply_op1_no_bwd(&MaskApply(self.0))?;
        Ok((Some(dy), Some(grad.clone())))
    }
}

/// `g → g · mask`.
struct MaskApply(DropoutMask);

impl CustomOp1 for MaskApply {
    fn name(&self) -> &'static str {
        "attune-train-mask-apply"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = contiguous(storage, layout, "dropout gradient")?.to_vec();
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, g)| self.0.apply(c * CHUNK, g));
        Ok(output(out, layout))
    }
}

/// `dropout(ys) + residual` with `mask` (f32, CPU; same shapes), with a fused backward.
pub(crate) fn dropout_add(ys: &Tensor, residual: &Tensor, mask: DropoutMask) -> Result<Tensor> {
    ys.contiguous()?
        .apply_op2(&residual.contiguous()?, DropoutAdd(mask))
}

/// `(x, w, b) → x·wᵀ + b` over the last dimension of `x`, with a fused backward: one graph node
/// where a transpose, a product and a bias add were three (each with its own gradient pass), the
/// forward in the inference kernel's row blocks, and no weight or bias gradient computed for
/// frozen tensors (LoRA).
struct TrainLinear;

impl CustomOp3 for TrainLinear {
    fn name(&self) -> &'static str {
        "attune-train-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(x, x_layout, "linear input")?;
        let w = contiguous(w, w_layout, "linear weight")?;
        let b = contiguous(b, b_layout, "linear bias")?;
        let (n, k) = w_layout.shape().dims2()?;
        let dims = x_layout.shape().dims();
        if dims.last() != Some(&k) || b.len() != n {
            candle_core::bail!(
                "linear: input {dims:?}, weight ({n}, {k}), bias {}",
                b.len()
            );
        }
        let epilogue = crate::kernels::RowEpilogue::Bias {
            bias: b,
            activation: crate::kernels::Epilogue::None,
        };
        let len = x.len() / k.max(1) * n;
        // SAFETY: linear_rows writes every element of its output.
        let out = unsafe {
            crate::kernels::filled_vec(len, |dst| {
                crate::kernels::linear_rows(x, k, w, &epilogue, dst)
            })
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = n;
        Ok((CpuStorage::F32(out), Shape::from_dims(&out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g, rows, db) = output_gradient(grad, w, b, x.elem_count())?;
        let dx = x
            .track_op()
            .then(|| g.matmul(w)?.reshape(x.shape()))
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| g.t()?.matmul(&x.reshape((rows, w.dim(1)?))?))
            .transpose()?;
        Ok((dx, dw, db))
    }
}

/// For a linear layer with weight `w` `(n, k)` applied to an input of `input_len` values: the
/// output gradient as `(rows, n)`, the number of rows, and the bias gradient when `b` tracks
/// one.
fn output_gradient(
    grad: &Tensor,
    w: &Tensor,
    b: &Tensor,
    input_len: usize,
) -> Result<(Tensor, usize, Option<Tensor>)> {
    let (n, k) = w.dims2()?;
    let rows = input_len / k.max(1);
    let g = grad.contiguous()?.reshape((rows, n))?;
    let db = b
        .track_op()
        .then(|| g.apply_op1_no_bwd(&ColumnSum { weighted: false }))
        .transpose()?;
    Ok((g, rows, db))
}

/// `(h, w, b) → GELU(h)·wᵀ + b` (exact GELU) as one graph node: the feed-forward contraction
/// of a transformer layer, applied to the expansion's output `h`. Only `h` is kept for the
/// backward pass: the activation `GELU(h)`, as wide as `h`, exists during this op's forward
/// pass alone and is recomputed for the weight gradient. A separate GELU node kept both, and
/// cost a gradient sum (a zeroed tensor and an add) of that width and a pass of its own.
struct TrainGeluLinear;

impl CustomOp3 for TrainGeluLinear {
    fn name(&self) -> &'static str {
        "attune-train-gelu-linear"
    }

    fn cpu_fwd(
        &self,
        h: &CpuStorage,
        h_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (activation, layout) = Gelu.cpu_fwd(h, h_layout)?;
        let layout = Layout::contiguous(layout);
        TrainLinear.cpu_fwd(&activation, &layout, w, w_layout, b, b_layout)
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g, rows, db) = output_gradient(grad, w, b, h.elem_count())?;
        let weight_gradient =
            |activation: &Tensor| g.t()?.matmul(&activation.reshape((rows, w.dim(1)?))?);
        let (dh, dw) = match (h.track_op(), w.track_op()) {
            (true, true) => {
                let d_activation = g.matmul(w)?.reshape(h.shape())?;
                let (activation, dh) = gelu_and_gradient(h, &d_activation)?;
                (Some(dh), Some(weight_gradient(&activation)?))
            }
            (true, false) => {
                let d_activation = g.matmul(w)?.reshape(h.shape())?;
                (
                    Some(h.apply_op2_no_bwd(&d_activation, &GeluBackward)?),
                    None,
                )
            }
            (false, true) => (None, Some(weight_gradient(&h.apply_op1_no_bwd(&Gelu)?)?)),
            (false, false) => (None, None),
        };
        Ok((dh, dw, db))
    }
}

/// `xs · wᵀ + b` over the last dimension (f32, CPU) with a fused backward; `w`: `(n, k)`,
/// `b`: `(n)`.
pub fn linear(xs: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, TrainLinear)
}

/// `GELU(hs) · wᵀ + b` (exact GELU) over the last dimension (f32, CPU) as one op with a fused
/// backward that keeps only `hs`; `w`: `(n, k)`, `b`: `(n)`.
pub fn gelu_linear(hs: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    hs.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, TrainGeluLinear)
}

/// `x + bias` over the last dimension with a parallel bias gradient (f32, CPU).
pub fn bias_add(xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if bias.dims() != [xs.dim(D::Minus1)?] {
        candle_core::bail!("bias add: input {:?}, bias {:?}", xs.dims(), bias.dims());
    }
    xs.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd)
}

/// Layer norm over the last dimension with a fused backward (f32, CPU); `w` and `b` are
/// `[last dim]`.
pub fn layer_norm(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let width = xs.dim(D::Minus1)?;
    if w.dims() != [width] || b.dims() != [width] {
        candle_core::bail!(
            "layer norm: input {:?}, weight {:?}, bias {:?}",
            xs.dims(),
            w.dims(),
            b.dims()
        );
    }
    xs.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::max_abs_diff;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Values and the gradients of `Σ f(x)·c` (a fixed random `c`) agree with the composition.
    fn check(
        shape: &[usize],
        fused: impl Fn(&Tensor) -> Tensor,
        composite: impl Fn(&Tensor) -> Tensor,
        tolerance: f32,
    ) {
        let x = Var::from_tensor(&random(shape, 1)).unwrap();
        let c = random(shape, 2);
        let objective = |y: Tensor| (y * &c).unwrap().sum_all().unwrap();
        let (a, b) = (fused(x.as_tensor()), composite(x.as_tensor()));
        assert!(
            max_abs_diff(&a, &b) <= tolerance,
            "values differ by {}",
            max_abs_diff(&a, &b)
        );
        let ga = objective(a).backward().unwrap();
        let gb = objective(b).backward().unwrap();
        let (ga, gb) = (
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
        );
        assert!(
            max_abs_diff(ga, gb) <= tolerance,
            "gradients differ by {}",
            max_abs_diff(ga, gb)
        );
    }

    #[test]
    fn gelu_matches_candle() {
        check(
            &[4, 7, 33],
            |x| gelu_erf(x).unwrap(),
            |x| x.gelu_erf().unwrap(),
            2e-6,
        );
    }

    #[test]
    fn bias_add_matches_candle_with_the_bias_gradient() {
        let bias = Var::from_tensor(&random(&[19], 7)).unwrap();
        // 700 rows: several row blocks of the parallel column sum.
        check(
            &[2, 350, 19],
            |x| bias_add(x, &bias).unwrap(),
            |x| x.broadcast_add(&bias).unwrap(),
            1e-6,
        );
        let x = random(&[2, 350, 19], 8);
        let c = random(&[2, 350, 19], 9);
        let grad = |y: Tensor| (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let ga = grad(bias_add(&x, &bias).unwrap());
        let gb = grad(x.broadcast_add(&bias).unwrap());
        let d = max_abs_diff(
            ga.get(bias.as_tensor()).unwrap(),
            gb.get(bias.as_tensor()).unwrap(),
        );
        assert!(d <= 1e-3, "bias gradient differs by {d}");
    }

    #[test]
    fn linear_matches_candle_with_weight_and_bias_gradients_and_skips_frozen_ones() {
        let w = Var::from_tensor(&random(&[23, 19], 10)).unwrap();
        let b = Var::from_tensor(&random(&[23], 11)).unwrap();
        let composite = |x: &Tensor, w: &Tensor, b: &Tensor| {
            let rows = x.elem_count() / 19;
            x.reshape((rows, 19))
                .unwrap()
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(b)
                .unwrap()
                .reshape((2, rows / 2, 23))
                .unwrap()
        };
        // 700 rows: several row blocks of the parallel column sum.
        let x = Var::from_tensor(&random(&[2, 350, 19], 12)).unwrap();
        let c = random(&[2, 350, 23], 13);
        let (fused, plain) = (linear(&x, &w, &b).unwrap(), composite(&x, &w, &b));
        assert!(max_abs_diff(&fused, &plain) <= 1e-4, "values differ");
        let grads = |y: Tensor| (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let (got, want) = (grads(fused), grads(plain));
        for var in [&x, &w, &b] {
            let d = max_abs_diff(got.get(var).unwrap(), want.get(var).unwrap());
            assert!(d <= 1e-3, "gradient differs by {d}");
        }
        // Frozen weight and bias (LoRA): only the input gets a gradient.
        let (w, b) = (w.as_tensor().detach(), b.as_tensor().detach());
        let got = grads(linear(x.as_tensor(), &w, &b).unwrap());
        assert!(got.get(x.as_tensor()).is_some());
        assert!(got.get(&w).is_none() && got.get(&b).is_none());
    }

    #[test]
    fn gelu_linear_matches_gelu_then_linear_in_values_and_gradients() {
        let w = Var::from_tensor(&random(&[17, 31], 20)).unwrap();
        let b = Var::from_tensor(&random(&[17], 21)).unwrap();
        let x = Var::from_tensor(&random(&[3, 90, 31], 22)).unwrap();
        let c = random(&[3, 90, 17], 23);
        let fused = gelu_linear(&x, &w, &b).unwrap();
        let plain = x
            .gelu_erf()
            .unwrap()
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_abs_diff(&fused, &plain) <= 1e-4, "values differ");
        let grads = |y: Tensor| (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let (got, want) = (grads(fused), grads(plain));
        for var in [&x, &w, &b] {
            let want = want.get(var).unwrap();
            let size = crate::kernels::tests::max_abs(want);
            assert!(size > 0.1, "the test exercises real gradients");
            let d = max_abs_diff(got.get(var).unwrap(), want);
            assert!(d <= 1e-4 * size.max(1.0), "gradient differs by {d}");
        }
        // A frozen weight (LoRA trains beside it): the input's gradient alone, the same.
        let frozen = w.as_tensor().detach();
        let fused = gelu_linear(&x, &frozen, b.as_tensor()).unwrap();
        let plain = x
            .gelu_erf()
            .unwrap()
            .broadcast_matmul(&frozen.t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let (got, want) = (grads(fused), grads(plain));
        assert!(got.get(&frozen).is_none());
        let want = want.get(&x).unwrap();
        let d = max_abs_diff(got.get(&x).unwrap(), want);
        assert!(
            d <= 1e-4 * crate::kernels::tests::max_abs(want).max(1.0),
            "input gradient differs by {d}"
        );
    }

    #[test]
    fn dropout_add_matches_mask_times_input_plus_residual() {
        let ctx = crate::layers::TrainContext::new(3);
        let mask = ctx.next_mask(0.25);
        let residual = Var::from_tensor(&random(&[3, 70, 300], 14)).unwrap();
        // The mask as a tensor: 63,000 elements, several parallel chunks.
        let mut factors = vec![1f32; 3 * 70 * 300];
        mask.apply(0, &mut factors);
        let factors = Tensor::from_vec(factors, (3, 70, 300), &candle_core::Device::Cpu).unwrap();
        check(
            &[3, 70, 300],
            |y| dropout_add(y, &residual, mask).unwrap(),
            |y| ((y * &factors).unwrap() + residual.as_tensor()).unwrap(),
            1e-6,
        );
        let y = random(&[3, 70, 300], 15);
        let c = random(&[3, 70, 300], 16);
        let grads = dropout_add(&y, &residual, mask).unwrap();
        let grads = (grads * &c).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(grads.get(&residual).unwrap(), &c) == 0.0);
    }

    #[test]
    fn attention_probabilities_match_candle_with_and_without_dropout() {
        let mask = Tensor::new(
            &[0f32, 0.0, f32::MIN, 0.0, f32::MIN, f32::MIN],
            &Device::Cpu,
        )
        .unwrap()
        .reshape((2, 1, 1, 3))
        .unwrap();
        let softmax = |x: &Tensor| {
            candle_nn::ops::softmax(&x.broadcast_add(&mask).unwrap(), D::Minus1).unwrap()
        };
        check(
            &[2, 4, 5, 3],
            |x| attention_probs(x, &mask, None).unwrap(),
            softmax,
            1e-6,
        );
        // With dropout: the same as multiplying the composite by the mask's factors.
        let dropout = DropoutMask::new(99, 0.3);
        let factors: Vec<f32> = (0..2 * 4 * 5 * 3).map(|i| dropout.factor(i)).collect();
        assert!(factors.contains(&0.0) && factors.iter().any(|f| *f > 1.0));
        let factors = Tensor::from_vec(factors, (2, 4, 5, 3), &Device::Cpu).unwrap();
        check(
            &[2, 4, 5, 3],
            |x| attention_probs(x, &mask, Some(dropout)).unwrap(),
            |x| (softmax(x) * &factors).unwrap(),
            1e-6,
        );
    }

    #[test]
    fn layer_norm_matches_candle_with_weight_and_bias_gradients() {
        let w = Var::from_tensor(&random(&[24], 3)).unwrap();
        let b = Var::from_tensor(&random(&[24], 4)).unwrap();
        check(
            &[2, 9, 24],
            |x| layer_norm(x, &w, &b, 1e-12).unwrap(),
            |x| candle_nn::ops::layer_norm_slow(x, &w, &b, 1e-12).unwrap(),
            2e-5,
        );
        // Weight and bias gradients.
        let x = random(&[2, 9, 24], 5);
        let c = random(&[2, 9, 24], 6);
        let grads = |y: Tensor| (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let ga = grads(layer_norm(&x, &w, &b, 1e-12).unwrap());
        let gb = grads(candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-12).unwrap());
        for v in [&w, &b] {
            let d = max_abs_diff(
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            assert!(d <= 1e-4, "parameter gradient differs by {d}");
        }
    }
}
