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
    contiguous, dispatch, erf_approx, exp_approx, gelu_erf_in_place, softmax_in_place,
};

/// Elements per parallel task of element-wise ops.
const CHUNK: usize = 1 << 14;

/// `x ← Φ(x) + x·φ(x)`, the derivative of exact GELU `x·Φ(x)`.
#[inline(always)]
fn gelu_grad_generic(xs: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for x in xs.iter_mut() {
        let v = *x;
        let cdf = 0.5 * (1.0 + erf_approx(v * std::f32::consts::FRAC_1_SQRT_2));
        *x = cdf + v * INV_SQRT_2PI * exp_approx(-0.5 * v * v);
    }
}

dispatch!(
    /// `x ← GELU'(x)` for every element.
    fn gelu_grad_in_place(xs: &mut [f32]) => gelu_grad_generic
);

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

/// Softmax over the last dimension.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "attune-train-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = *layout.shape().dims().last().unwrap_or(&1);
        let mut out = contiguous(storage, layout, "softmax")?.to_vec();
        out.par_chunks_mut(width.max(1)).for_each(softmax_in_place);
        Ok(output(out, layout))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?,
        ))
    }
}

/// Softmax over the last dimension of attention scores `(batch, heads, queries, keys)` after
/// adding a per-text additive mask over the keys (not differentiated).
struct MaskedSoftmax {
    /// `(batch, keys)` additive mask.
    mask: Vec<f32>,
    /// Score rows per text: heads × queries.
    rows_per_text: usize,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "attune-train-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = (*layout.shape().dims().last().unwrap_or(&1)).max(1);
        let mut out = contiguous(storage, layout, "masked softmax")?.to_vec();
        out.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
            let text = r / self.rows_per_text.max(1);
            let mask = &self.mask[text * width..(text + 1) * width];
            for (x, m) in row.iter_mut().zip(mask) {
                *x += m;
            }
            softmax_in_place(row);
        });
        Ok(output(out, layout))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?,
        ))
    }
}

/// `(y, g) → y·(g − Σ g·y)` per row.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "attune-train-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        y_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let width = (*y_layout.shape().dims().last().unwrap_or(&1)).max(1);
        let mut out = contiguous(y, y_layout, "softmax backward")?.to_vec();
        let g = contiguous(g, g_layout, "softmax backward gradient")?;
        out.par_chunks_mut(width)
            .zip(g.par_chunks(width))
            .for_each(|(y, g)| {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                for (y, g) in y.iter_mut().zip(g) {
                    *y *= g - dot;
                }
            });
        Ok(output(out, y_layout))
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
        let width = w.elem_count();
        let rows = grad.elem_count() / width.max(1);
        let flat = |t: &Tensor| t.reshape((rows, width));
        let dw = (flat(&grad)? * flat(&normalized)?)?.sum(0)?;
        let db = flat(&grad)?.sum(0)?;
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

/// Softmax over the last dimension with a fused backward (f32, CPU).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Softmax)
}

/// `softmax(scores + mask_bias)` over the last dimension with a fused backward (f32, CPU):
/// `scores` is `(batch, heads, queries, keys)`, `mask_bias` `(batch, 1, 1, keys)` and constant.
pub fn masked_softmax(scores: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
    let (b, h, q, k) = scores.dims4()?;
    if mask_bias.dims() != [b, 1, 1, k] {
        candle_core::bail!(
            "masked softmax: scores {:?}, mask {:?}",
            scores.dims(),
            mask_bias.dims()
        );
    }
    let mask = mask_bias.flatten_all()?.to_vec1::<f32>()?;
    scores.contiguous()?.apply_op1(MaskedSoftmax {
        mask,
        rows_per_text: h * q,
    })
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
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
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
            max_diff(&a, &b) <= tolerance,
            "values differ by {}",
            max_diff(&a, &b)
        );
        let ga = objective(a).backward().unwrap();
        let gb = objective(b).backward().unwrap();
        let (ga, gb) = (
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
        );
        assert!(
            max_diff(ga, gb) <= tolerance,
            "gradients differ by {}",
            max_diff(ga, gb)
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
    fn softmax_matches_candle() {
        check(
            &[3, 5, 17],
            |x| softmax_last_dim(x).unwrap(),
            |x| candle_nn::ops::softmax(x, D::Minus1).unwrap(),
            1e-6,
        );
    }

    #[test]
    fn masked_softmax_matches_candle() {
        let mask = Tensor::new(
            &[0f32, 0.0, f32::MIN, 0.0, f32::MIN, f32::MIN],
            &Device::Cpu,
        )
        .unwrap()
        .reshape((2, 1, 1, 3))
        .unwrap();
        check(
            &[2, 4, 5, 3],
            |x| masked_softmax(x, &mask).unwrap(),
            |x| candle_nn::ops::softmax(&x.broadcast_add(&mask).unwrap(), D::Minus1).unwrap(),
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
            let d = max_diff(
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            assert!(d <= 1e-4, "parameter gradient differs by {d}");
        }
    }
}
