//! Fused CPU kernels for inference.
//!
//! candle's element-wise CPU ops run on one thread, and its batched matmul loops over
//! `batch × heads` small products. For inference on CPU the BERT layers use instead:
//! - [`linear`]: one GEMM (the `gemm` crate, AVX-512 where present) into an output pre-filled
//!   with the bias, then the activation applied in parallel, vectorized;
//! - [`attention`]: per (text, head) in parallel, `softmax(q·kᵀ·scale)·v` over the text's real
//!   tokens only (no mask, no padded keys, no transposes: Q, K and V are read in place from the
//!   fused QKV projection with strided GEMMs).
//!
//! Neither has a backward pass: training uses the differentiable composite ops (see
//! [`crate::layers::Mode`]). Both are checked against the composite path in tests.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Activation fused into [`linear`]'s epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// Bias only.
    None,
    /// Bias, then exact (erf) GELU.
    GeluErf,
}

// ---------------------------------------------------------------------------------------------
// Vector math: branch-free, so LLVM vectorizes the loops under AVX2/AVX-512 target features.

/// `a·b + c`, rounded once. Inside the AVX2/AVX-512 kernels below (compiled with `fma`) this is
/// one `vfmadd` per vector; the polynomials here are chains of it. Without the instruction
/// (x86-64 CPUs older than AVX2, which take the generic kernels) it is the C library's `fmaf`:
/// slower, same result.
#[inline(always)]
pub(crate) fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// [`exp_approx`]'s input range: it keeps `n` in [-126, 127], so `2^n` is a normal float.
const EXP_INPUT: (f32, f32) = (-87.336_55, 88.0);
/// ln 2 in two parts, `HIGH − LOW`: the second corrects the first's rounding.
const LN2_HIGH: f32 = 0.693_359_4;
const LN2_LOW: f32 = 2.121_944_4e-4;
/// Cephes' polynomial for `(e^r − 1 − r)/r²`, highest degree first.
const EXP_POLYNOMIAL: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` with a relative error below 2e-7 (Cephes' single-precision polynomial).
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(EXP_INPUT.0, EXP_INPUT.1);
    let n = fma(x, std::f32::consts::LOG2_E, 0.5).floor();
    // x − n·ln 2.
    let r = fma(n, -LN2_HIGH, x);
    let r = fma(n, LN2_LOW, r);
    let c = EXP_POLYNOMIAL;
    let p = fma(c[0], r, c[1]);
    let p = fma(p, r, c[2]);
    let p = fma(p, r, c[3]);
    let p = fma(p, r, c[4]);
    let p = fma(p, r, c[5]);
    let y = fma(p, r * r, r) + 1.0;
    // 2^n through the exponent bits, without a float→int conversion (which does not vectorize):
    // n + 127 is an integer in [1, 254]; adding 2^23 puts it in the low mantissa bits, and the
    // shift moves those bits into the exponent field (the 2^23 marker bits shift out).
    let scale = f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
    y * scale
}

/// `erf(x)` with an absolute error below 5e-7 in f32 (Abramowitz & Stegun 7.1.26; 1.5e-7 in
/// exact arithmetic).
#[inline(always)]
pub(crate) fn erf_approx(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / fma(0.327_591_1, a, 1.0);
    let poly = fma(1.061_405_4, t, -1.453_152);
    let poly = fma(poly, t, 1.421_413_8);
    let poly = fma(poly, t, -0.284_496_72);
    let poly = fma(poly, t, 0.254_829_6);
    let magnitude = fma(-poly * t, exp_approx(-a * a), 1.0);
    magnitude.copysign(x)
}

/// Exact (erf) GELU of one value: `x·Φ(x) = h + h·erf(x/√2)` with `h = x/2`.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    let half = 0.5 * x;
    fma(half, erf_approx(x * std::f32::consts::FRAC_1_SQRT_2), half)
}

/// Elements per step of the GELU loops: four AVX2 vectors (two AVX-512) whose long dependency
/// chains (erf's division, exp, the polynomials) interleave. With one vector per step the core
/// waits on each chain: on an AVX2 host GELU ran 1.16× faster at 32 than at 8 and 1.07× faster
/// than at 16; at 64 it ran 1.16× slower (AVX2 has 16 vector registers). The softmax's `exp`,
/// without a division, is fastest at 16.
pub(crate) const INTERLEAVE: usize = 32;

/// `x ← f(x)` for every element, [`INTERLEAVE`] elements per step.
#[inline(always)]
pub(crate) fn map_interleaved(xs: &mut [f32], f: impl Fn(f32) -> f32) {
    let mut chunks = xs.chunks_exact_mut(INTERLEAVE);
    for chunk in &mut chunks {
        for x in chunk.iter_mut() {
            *x = f(*x);
        }
    }
    for x in chunks.into_remainder() {
        *x = f(*x);
    }
}

#[inline(always)]
fn gelu_generic(xs: &mut [f32]) {
    map_interleaved(xs, gelu_erf);
}

/// `row ← row + bias`.
#[inline(always)]
fn add_bias_generic(row: &mut [f32], bias: &[f32]) {
    for (x, b) in row.iter_mut().zip(bias) {
        *x += b;
    }
}

/// `row ← gelu(row + bias)`, exact (erf) GELU.
#[inline(always)]
fn bias_gelu_generic(row: &mut [f32], bias: &[f32]) {
    let mut rows = row.chunks_exact_mut(INTERLEAVE);
    let mut biases = bias.chunks_exact(INTERLEAVE);
    for (chunk, b) in (&mut rows).zip(&mut biases) {
        for (x, b) in chunk.iter_mut().zip(b) {
            *x = gelu_erf(*x + b);
        }
    }
    for (x, b) in rows.into_remainder().iter_mut().zip(biases.remainder()) {
        *x = gelu_erf(*x + b);
    }
}

/// `row ← layer_norm(row + bias + residual)` with the norm's `weight`, `shift` and `eps`; the
/// mean and variance in two passes over the row (it is in cache).
#[inline(always)]
fn add_norm_generic(
    row: &mut [f32],
    bias: &[f32],
    residual: &[f32],
    weight: &[f32],
    shift: &[f32],
    eps: f32,
) {
    // Sixteen independent lanes, so the sums vectorize (see `exp_shifted_generic`).
    let n = row.len();
    let split = n - n % 16;
    let (head, tail) = row.split_at_mut(split);
    let mut lanes = [0f32; 16];
    let inputs = bias.chunks_exact(16).zip(residual.chunks_exact(16));
    for (chunk, (b, r)) in head.chunks_exact_mut(16).zip(inputs) {
        for j in 0..16 {
            chunk[j] += b[j] + r[j];
            lanes[j] += chunk[j];
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for (j, x) in tail.iter_mut().enumerate() {
        *x += bias[split + j] + residual[split + j];
        sum += *x;
    }
    let mean = sum / n as f32;
    let mut lanes = [0f32; 16];
    for chunk in head.chunks_exact(16) {
        for j in 0..16 {
            let d = chunk[j] - mean;
            lanes[j] += d * d;
        }
    }
    let squares =
        lanes.iter().sum::<f32>() + tail.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>();
    let inverse_std = 1.0 / (squares / n as f32 + eps).sqrt();
    for ((x, w), s) in row.iter_mut().zip(weight).zip(shift) {
        *x = (*x - mean) * inverse_std * w + s;
    }
}

/// `row ← factor·row`.
#[inline(always)]
fn scale_generic(row: &mut [f32], factor: f32) {
    for x in row.iter_mut() {
        *x *= factor;
    }
}

/// `row ← e^(row − max(row))`; returns `1 / Σ row` (what scales it to a softmax).
#[inline(always)]
fn exp_shifted_generic(row: &mut [f32]) -> f32 {
    // Sixteen independent lanes let the max and sum reductions vectorize (a single running
    // max or sum is a strict-order chain that cannot).
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (m, x) in lanes.iter_mut().zip(chunk) {
            // A plain comparison is one `vmaxps`; `f32::max` adds NaN handling (two more
            // instructions) that scores do not need.
            *m = if *x > *m { *x } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(chunks.remainder())
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut partial = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (p, x) in partial.iter_mut().zip(chunk.iter_mut()) {
            *x = exp_approx(*x - max);
            *p += *x;
        }
    }
    let mut sum: f32 = 0.0;
    for x in chunks.into_remainder() {
        *x = exp_approx(*x - max);
        sum += *x;
    }
    sum += partial.iter().sum::<f32>();
    1.0 / sum
}

macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),+) => $generic:ident) => {
        $crate::kernels::dispatch!($(#[$doc])* $vis fn $name($($arg: $ty),+) -> () => $generic);
    };
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),+) -> $ret:ty => $generic:ident) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),+) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn v4($($arg: $ty),+) -> $ret {
                    $generic($($arg),+)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),+) -> $ret {
                    $generic($($arg),+)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { v4($($arg),+) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),+) };
                }
            }
            $generic($($arg),+)
        }
    };
}

pub(crate) use dispatch;

dispatch!(
    /// `x ← 0.5·x·(1 + erf(x/√2))` for every element (AVX-512 or AVX2 when the CPU has them).
    pub fn gelu_erf_in_place(xs: &mut [f32]) => gelu_generic
);
dispatch!(
    /// `row ← row + bias` (AVX-512 or AVX2 when the CPU has them).
    fn add_bias(row: &mut [f32], bias: &[f32]) => add_bias_generic
);
dispatch!(
    /// `row ← gelu(row + bias)` (AVX-512 or AVX2 when the CPU has them).
    fn bias_gelu(row: &mut [f32], bias: &[f32]) => bias_gelu_generic
);
dispatch!(
    /// `row ← layer_norm(row + bias + residual)` (AVX-512 or AVX2 when the CPU has them).
    fn add_norm(
        row: &mut [f32],
        bias: &[f32],
        residual: &[f32],
        weight: &[f32],
        shift: &[f32],
        eps: f32
    ) => add_norm_generic
);
dispatch!(
    /// `row ← factor·row` (AVX-512 or AVX2 when the CPU has them).
    fn scale_in_place(row: &mut [f32], factor: f32) => scale_generic
);
dispatch!(
    /// [`exp_shifted_in_place`] where the CPU lacks AVX-512 (AVX2 when it has it).
    fn exp_shifted_vectorized(row: &mut [f32]) -> f32 => exp_shifted_generic
);

/// `row ← softmax(row)`.
pub fn softmax_in_place(row: &mut [f32]) {
    let inverse_sum = exp_shifted_in_place(row);
    scale_in_place(row, inverse_sum);
}

/// `row ← e^(row − max(row))`, returning `1 / Σ row`: a softmax whose last pass (the division)
/// is left to the caller. AVX-512 ([`avx512::exp_shifted`]) or AVX2 when the CPU has them.
#[inline]
fn exp_shifted_in_place(row: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { avx512::exp_shifted(row) };
    }
    exp_shifted_vectorized(row)
}

/// The softmax's exponentials in AVX-512 intrinsics: what the generic code cannot say.
/// - A row's last `len % 16` values take one masked vector, not the scalar loop that LLVM
///   emits for the remainder (attention rows are a text's length, rarely a multiple of 16).
/// - `2^n` is one `vscalefps` instead of building the exponent bits (an add, a shift and a
///   multiply).
///
/// The values are [`exp_approx`]'s (the same clamp, reduction and polynomial).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{EXP_INPUT, EXP_POLYNOMIAL, LN2_HIGH, LN2_LOW};
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// [`super::exp_approx`] on 16 lanes, with its constants.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp16(x: __m512) -> __m512 {
        let v = |value: f32| _mm512_set1_ps(value);
        let x = _mm512_min_ps(_mm512_max_ps(x, v(EXP_INPUT.0)), v(EXP_INPUT.1));
        let t = _mm512_fmadd_ps(x, v(std::f32::consts::LOG2_E), v(0.5));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
        let r = _mm512_fmadd_ps(n, v(-LN2_HIGH), x);
        let r = _mm512_fmadd_ps(n, v(LN2_LOW), r);
        let c = EXP_POLYNOMIAL;
        let p = _mm512_fmadd_ps(v(c[0]), r, v(c[1]));
        let p = _mm512_fmadd_ps(p, r, v(c[2]));
        let p = _mm512_fmadd_ps(p, r, v(c[3]));
        let p = _mm512_fmadd_ps(p, r, v(c[4]));
        let p = _mm512_fmadd_ps(p, r, v(c[5]));
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), v(1.0));
        _mm512_scalef_ps(y, n)
    }

    /// `row ← e^(row − max(row))`, returning `1 / Σ row`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted(row: &mut [f32]) -> f32 {
        let len = row.len();
        let whole = len / 16 * 16;
        let tail = ((1u32 << (len - whole)) - 1) as __mmask16;
        let p = row.as_mut_ptr();
        let mut hi = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..whole).step_by(16) {
            hi = _mm512_max_ps(hi, _mm512_loadu_ps(p.add(i)));
        }
        hi = _mm512_max_ps(hi, _mm512_mask_loadu_ps(hi, tail, p.add(whole)));
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(hi));
        let mut sum = _mm512_setzero_ps();
        for i in (0..whole).step_by(16) {
            let y = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), max));
            _mm512_storeu_ps(p.add(i), y);
            sum = _mm512_add_ps(sum, y);
        }
        if tail != 0 {
            let y = exp16(_mm512_sub_ps(
                _mm512_maskz_loadu_ps(tail, p.add(whole)),
                max,
            ));
            _mm512_mask_storeu_ps(p.add(whole), tail, y);
            sum = _mm512_mask_add_ps(sum, tail, sum, y);
        }
        1.0 / _mm512_reduce_add_ps(sum)
    }
}

// ---------------------------------------------------------------------------------------------

pub(crate) fn contiguous<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(d) => d.as_slice(),
        _ => candle_core::bail!("{what}: fused kernels take f32"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: fused kernels take contiguous tensors"),
    }
}

fn gemm_threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// Rows per GEMM block. Blocks bound the intermediate of [`feed_forward`] (2048 × 3072 f32 =
/// 24 MiB for base-sized models), but smaller ones cost more than their cache locality saves:
/// the `gemm` crate re-packs the weight for every call, and a 512-row block of the down
/// projection (768 × 3072) ran at 235 GFLOP/s against 394 for 4096 rows on a Sapphire Rapids
/// host. 2048 rows made all-mpnet-base-v2 encode 27% faster there, all-MiniLM-L6-v2 no slower.
const BLOCK_ROWS: usize = 2048;

/// Inputs of at most this many rows take [`few_rows`] (a search's query, a short batch).
const FEW_ROWS: usize = 16;

/// A layer norm's parameters on the host, for the fused epilogues.
#[derive(Debug, Clone)]
pub struct NormWeights {
    /// Scale, one per column.
    pub weight: Vec<f32>,
    /// Shift, one per column.
    pub bias: Vec<f32>,
    /// Added to the variance before its square root.
    pub eps: f32,
}

/// What [`linear_rows`] does to each output row after the product, while the row is in cache.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowEpilogue<'a> {
    /// `row + bias`, then the activation.
    Bias {
        bias: &'a [f32],
        activation: Epilogue,
    },
    /// `layer_norm(row + bias + residual_i)` for output row `i`: the end of a post-norm
    /// sub-layer. `residual` is `m × n` row-major, the shape of the output.
    AddNorm {
        bias: &'a [f32],
        residual: &'a [f32],
        norm: &'a NormWeights,
    },
}

impl RowEpilogue<'_> {
    /// The output width `n`.
    fn width(&self) -> usize {
        match self {
            RowEpilogue::Bias { bias, .. } | RowEpilogue::AddNorm { bias, .. } => bias.len(),
        }
    }

    /// Applies the epilogue to output row `index` (`row.len()` is the width).
    pub(crate) fn apply(&self, index: usize, row: &mut [f32]) {
        match *self {
            RowEpilogue::Bias {
                bias,
                activation: Epilogue::None,
            } => add_bias(row, bias),
            RowEpilogue::Bias {
                bias,
                activation: Epilogue::GeluErf,
            } => bias_gelu(row, bias),
            RowEpilogue::AddNorm {
                bias,
                residual,
                norm,
            } => {
                let n = row.len();
                let residual = &residual[index * n..(index + 1) * n];
                add_norm(row, bias, residual, &norm.weight, &norm.bias, norm.eps);
            }
        }
    }
}

/// Output rows per task of [`linear_rows`]' epilogue: enough to amortize a task, few enough
/// that both cores finish together.
const EPILOGUE_ROWS: usize = 32;

/// `dst ← epilogue(x · wᵀ)` for row-major `x` (m×k), `w` (n×k) and `dst` (m×n), block by
/// block; every element of `dst` is written (it need not be initialized).
pub(crate) fn linear_rows(
    x: &[f32],
    k: usize,
    w: &[f32],
    epilogue: &RowEpilogue<'_>,
    dst: &mut [MaybeUninit<f32>],
) {
    let n = epilogue.width();
    if x.len() <= FEW_ROWS * k {
        let dst = few_rows(x, k, w, n, dst);
        for (i, row) in dst.chunks_exact_mut(n.max(1)).enumerate() {
            epilogue.apply(i, row);
        }
        return;
    }
    let blocks = x.chunks(BLOCK_ROWS * k).zip(dst.chunks_mut(BLOCK_ROWS * n));
    for (block, (xb, db)) in blocks.enumerate() {
        let m = xb.len() / k;
        // SAFETY: db is m×n row-major; xb is m×k row-major; w is n×k row-major, read as its
        // transpose k×n (row stride 1, column stride k). The slices have exactly those lengths.
        // The product does not read dst (read_dst is false) and writes all of it.
        unsafe {
            gemm(
                m,
                n,
                k,
                db.as_mut_ptr().cast::<f32>(),
                1,
                n as isize,
                false,
                xb.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm_threads(),
            );
        }
        // SAFETY: the product above wrote every element of the block.
        let db = unsafe { assume_init_mut(db) };
        let first = block * BLOCK_ROWS;
        db.par_chunks_mut(EPILOGUE_ROWS * n)
            .enumerate()
            .for_each(|(task, rows)| {
                for (i, row) in rows.chunks_exact_mut(n).enumerate() {
                    epilogue.apply(first + task * EPILOGUE_ROWS + i, row);
                }
            });
    }
}

/// `xs` read as initialized.
///
/// # Safety
/// Every element of `xs` has been written.
pub(crate) unsafe fn assume_init_mut(xs: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> and f32 have one layout; the caller vouches for the values.
    unsafe { &mut *(xs as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A vector of `len` floats that `fill` writes in full, without clearing it first (a pass
/// over memory the products overwrite anyway).
///
/// # Safety
/// `fill` writes every element of the slice it is given.
pub(crate) unsafe fn filled_vec(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller vouches that `fill` wrote all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// `x · wᵀ` for a few rows: dot products over the weight's rows as stored. The GEMM re-packs
/// the whole weight on every call, which cost a one-query embedding 4× its products.
fn few_rows<'d>(
    x: &[f32],
    k: usize,
    w: &[f32],
    n: usize,
    dst: &'d mut [MaybeUninit<f32>],
) -> &'d mut [f32] {
    let m = x.len() / k.max(1);
    if m > 0 && n > 0 {
        // Outputs by weight row (n×m), so each task owns a contiguous part.
        let mut by_output = vec![0f32; n * m];
        let per_task = n.div_ceil(4 * rayon::current_num_threads().max(1)).max(16);
        by_output
            .par_chunks_mut(per_task * m)
            .enumerate()
            .for_each(|(task, out)| dot_rows(x, k, &w[task * per_task * k..], out));
        for (i, row) in dst.chunks_exact_mut(n).enumerate() {
            for (y, j) in row.iter_mut().zip(0..) {
                y.write(by_output[j * m + i]);
            }
        }
    }
    // SAFETY: every one of the m×n elements was written above (none when m or n is zero).
    unsafe { assume_init_mut(dst) }
}

/// `out[j·m + i] ← x_i · w_j` for the `out.len() / m` weight rows of `w` and every row of `x`.
fn dot_rows(x: &[f32], k: usize, w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn v4(x: &[f32], k: usize, w: &[f32], out: &mut [f32]) {
            dot_rows_generic(x, k, w, out)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn v3(x: &[f32], k: usize, w: &[f32], out: &mut [f32]) {
            dot_rows_generic(x, k, w, out)
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { v4(x, k, w, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { v3(x, k, w, out) };
        }
    }
    dot_rows_generic(x, k, w, out)
}

#[inline(always)]
fn dot_rows_generic(x: &[f32], k: usize, w: &[f32], out: &mut [f32]) {
    let m = x.len() / k;
    for (w_row, out) in w.chunks_exact(k).zip(out.chunks_exact_mut(m)) {
        for (x_row, o) in x.chunks_exact(k).zip(out.iter_mut()) {
            // 64 lanes: four independent vector sums, so the adds do not wait on each other.
            let mut lanes = [0f32; 64];
            let (mut xs, mut ws) = (x_row.chunks_exact(64), w_row.chunks_exact(64));
            for (a, b) in (&mut xs).zip(&mut ws) {
                for ((l, a), b) in lanes.iter_mut().zip(a).zip(b) {
                    *l += a * b;
                }
            }
            let tail: f32 = xs
                .remainder()
                .iter()
                .zip(ws.remainder())
                .map(|(a, b)| a * b)
                .sum();
            *o = lanes.iter().sum::<f32>() + tail;
        }
    }
}

struct LinearOp {
    bias: Vec<f32>,
    epilogue: Epilogue,
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "attune-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let epilogue = RowEpilogue::Bias {
            bias: &self.bias,
            activation: self.epilogue,
        };
        linear_op_fwd(xs, xs_layout, w, w_layout, &epilogue)
    }
}

/// The forward pass of [`LinearOp`] and [`LinearAddNormOp`]: checks the shapes, then
/// [`linear_rows`] into a new buffer.
fn linear_op_fwd(
    xs: &CpuStorage,
    xs_layout: &Layout,
    w: &CpuStorage,
    w_layout: &Layout,
    epilogue: &RowEpilogue<'_>,
) -> Result<(CpuStorage, Shape)> {
    let x = contiguous(xs, xs_layout, "linear input")?;
    let w = contiguous(w, w_layout, "linear weight")?;
    let (n, k) = w_layout.shape().dims2()?;
    let dims = xs_layout.shape().dims();
    let m = x.len() / k.max(1);
    if dims.last() != Some(&k) || epilogue.width() != n {
        candle_core::bail!(
            "linear: input {dims:?}, weight ({n}, {k}), bias {}",
            epilogue.width()
        );
    }
    if let RowEpilogue::AddNorm { residual, norm, .. } = epilogue {
        if residual.len() != m * n || norm.weight.len() != n || norm.bias.len() != n {
            candle_core::bail!(
                "linear: output ({m}, {n}), residual of {} values, norm widths {} and {}",
                residual.len(),
                norm.weight.len(),
                norm.bias.len()
            );
        }
    }
    // SAFETY: linear_rows writes every element of its output.
    let dst = unsafe { filled_vec(m * n, |dst| linear_rows(x, k, w, epilogue, dst)) };
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("checked above") = n;
    Ok((CpuStorage::F32(dst), Shape::from_dims(&out_dims)))
}

/// `xs · wᵀ + bias`, then the epilogue. `xs`: `(..., k)`; `w`: `(n, k)`; `bias`: `(n)`; f32 on CPU.
pub fn linear(xs: &Tensor, w: &Tensor, bias: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    let bias = bias.to_vec1::<f32>()?;
    xs.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &LinearOp { bias, epilogue })
}

struct LinearAddNormOp {
    bias: Vec<f32>,
    norm: NormWeights,
}

impl CustomOp3 for LinearAddNormOp {
    fn name(&self) -> &'static str {
        "attune-linear-add-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let epilogue = RowEpilogue::AddNorm {
            bias: &self.bias,
            residual: contiguous(residual, residual_layout, "linear residual")?,
            norm: &self.norm,
        };
        linear_op_fwd(xs, xs_layout, w, w_layout, &epilogue)
    }
}

/// `layer_norm(xs · wᵀ + bias + residual)`: a post-norm sub-layer's output projection,
/// residual add and norm in one pass over each output row while it is in cache. `xs`:
/// `(..., k)`; `w`: `(n, k)`; `bias`: `(n)`; `residual`: the output's shape `(..., n)`; f32 on
/// CPU.
pub fn linear_add_norm(
    xs: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    residual: &Tensor,
    norm: &NormWeights,
) -> Result<Tensor> {
    let op = LinearAddNormOp {
        bias: bias.to_vec1::<f32>()?,
        norm: norm.clone(),
    };
    xs.contiguous()?
        .apply_op3_no_bwd(&w.contiguous()?, &residual.contiguous()?, &op)
}

struct FeedForwardOp {
    up_bias: Vec<f32>,
    down_bias: Vec<f32>,
    norm: Option<NormWeights>,
}

impl CustomOp3 for FeedForwardOp {
    fn name(&self) -> &'static str {
        "attune-feed-forward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
        down: &CpuStorage,
        down_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(xs, xs_layout, "feed-forward input")?;
        let up = contiguous(up, up_layout, "feed-forward up weight")?;
        let down = contiguous(down, down_layout, "feed-forward down weight")?;
        let (ff, h) = up_layout.shape().dims2()?;
        let dims = xs_layout.shape().dims();
        let norm_fits = self
            .norm
            .as_ref()
            .is_none_or(|n| n.weight.len() == h && n.bias.len() == h);
        if dims.last() != Some(&h)
            || down_layout.shape().dims2()? != (h, ff)
            || self.up_bias.len() != ff
            || self.down_bias.len() != h
            || !norm_fits
        {
            candle_core::bail!(
                "feed-forward: input {dims:?}, up ({ff}, {h}), down {:?}",
                down_layout.shape()
            );
        }
        let up_epilogue = RowEpilogue::Bias {
            bias: &self.up_bias,
            activation: Epilogue::GeluErf,
        };
        let mut inner = Vec::with_capacity(BLOCK_ROWS * ff);
        let inner = inner.spare_capacity_mut();
        let fill = |dst: &mut [MaybeUninit<f32>]| {
            for (xb, db) in x.chunks(BLOCK_ROWS * h).zip(dst.chunks_mut(BLOCK_ROWS * h)) {
                let inner = &mut inner[..xb.len() / h * ff];
                linear_rows(xb, h, up, &up_epilogue, inner);
                // SAFETY: linear_rows wrote every element of `inner`.
                let inner = unsafe { assume_init_mut(inner) };
                let down_epilogue = match &self.norm {
                    // The block's residual is its own input.
                    Some(norm) => RowEpilogue::AddNorm {
                        bias: &self.down_bias,
                        residual: xb,
                        norm,
                    },
                    None => RowEpilogue::Bias {
                        bias: &self.down_bias,
                        activation: Epilogue::None,
                    },
                };
                linear_rows(inner, ff, down, &down_epilogue, db);
            }
        };
        // SAFETY: the blocks cover the output, and linear_rows writes every element of each.
        let dst = unsafe { filled_vec(x.len(), fill) };
        Ok((CpuStorage::F32(dst), xs_layout.shape().clone()))
    }
}

/// BERT's feed-forward block `gelu(xs · upᵀ + up_bias) · downᵀ + down_bias`, row block by row
/// block so the wide intermediate never leaves the cache; with `norm`, the sub-layer's end too:
/// `layer_norm(block(xs) + xs)`, applied to each output row while it is in cache. `xs`:
/// `(..., h)`; `up`: `(ff, h)`; `down`: `(h, ff)`; f32 on CPU.
pub fn feed_forward(
    xs: &Tensor,
    up: &Tensor,
    up_bias: &Tensor,
    down: &Tensor,
    down_bias: &Tensor,
    norm: Option<&NormWeights>,
) -> Result<Tensor> {
    let op = FeedForwardOp {
        up_bias: up_bias.to_vec1::<f32>()?,
        down_bias: down_bias.to_vec1::<f32>()?,
        norm: norm.cloned(),
    };
    xs.contiguous()?
        .apply_op3_no_bwd(&up.contiguous()?, &down.contiguous()?, &op)
}

/// An additive bias on the attention scores by (head, query, key), the same for every text of
/// a batch (MPNet's relative positions): `(heads, seq, seq)` row-major, for texts of at most
/// `seq` tokens.
#[derive(Debug, Clone)]
pub struct PositionBias {
    values: std::sync::Arc<Vec<f32>>,
    heads: usize,
    seq: usize,
}

impl PositionBias {
    /// Wraps `values`, `(heads, seq, seq)` row-major.
    ///
    /// # Panics
    /// When `values` is not `heads · seq · seq` long.
    pub fn new(values: Vec<f32>, heads: usize, seq: usize) -> Self {
        assert_eq!(values.len(), heads * seq * seq, "position bias shape");
        PositionBias {
            values: std::sync::Arc::new(values),
            heads,
            seq,
        }
    }

    /// Fills `scores` (`len × len`) with the bias of `head` for a text of `len` tokens.
    fn fill(&self, head: usize, len: usize, scores: &mut [f32]) {
        let block = &self.values[head * self.seq * self.seq..];
        for (query, row) in scores.chunks_exact_mut(len).enumerate() {
            row.copy_from_slice(&block[query * self.seq..query * self.seq + len]);
        }
    }
}

struct AttentionOp {
    lengths: Vec<usize>,
    heads: usize,
    head_size: usize,
    scale: f32,
    position_bias: Option<PositionBias>,
}

struct SendPtr(*mut f32);
// SAFETY: each parallel task writes a disjoint (text, head) block of the output.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "attune-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(storage, layout, "attention input")?;
        let (b, s, three_h) = layout.shape().dims3()?;
        let h = self.heads * self.head_size;
        let bias_fits = self
            .position_bias
            .as_ref()
            .is_none_or(|p| p.heads == self.heads && p.seq >= s);
        if three_h != 3 * h
            || self.lengths.len() != b
            || self.lengths.iter().any(|&l| l > s)
            || !bias_fits
        {
            candle_core::bail!(
                "attention: qkv {:?} with {} lengths",
                layout.shape(),
                self.lengths.len()
            );
        }
        let d = self.head_size;
        // Rows of padding positions are zero; the tasks below write every other element.
        let mut out: Vec<f32> = Vec::with_capacity(b * s * h);
        let rows = out.spare_capacity_mut();
        for (text, &l) in self.lengths.iter().enumerate() {
            rows[(text * s + l) * h..(text + 1) * s * h].fill(MaybeUninit::new(0.0));
        }
        let out_ptr = SendPtr(out.as_mut_ptr());
        let out_ptr = &out_ptr;
        (0..b * self.heads).into_par_iter().for_each_init(
            Default::default,
            |(scores, inverse_sums): &mut (Vec<f32>, Vec<f32>), task| {
                let (text, head) = (task / self.heads, task % self.heads);
                let l = self.lengths[text];
                if l == 0 {
                    return;
                }
                scores.resize(l * l, 0.0);
                let bias = self.position_bias.as_ref();
                if let Some(bias) = bias {
                    bias.fill(head, l, scores);
                }
                let base = text * s * three_h + head * d;
                let (q, k, v) = (&qkv[base..], &qkv[base + h..], &qkv[base + 2 * h..]);
                // SAFETY: rows of Q, K, V are 3h apart inside this text's block; scores is l×l;
                // the output block (rows h apart, d wide at column head·d) belongs to this task.
                unsafe {
                    gemm(
                        l,
                        l,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        l as isize,
                        bias.is_some(),
                        q.as_ptr(),
                        1,
                        three_h as isize,
                        k.as_ptr(),
                        three_h as isize,
                        1,
                        1.0, // scores = bias + scale · q·kᵀ (the bias is read only when present)
                        self.scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                // The softmax's division is applied to the d-wide output rows instead of the
                // l-wide probability rows.
                inverse_sums.clear();
                inverse_sums.extend(scores.chunks_exact_mut(l).map(exp_shifted_in_place));
                unsafe {
                    gemm(
                        l,
                        d,
                        l,
                        out_ptr.0.add(text * s * h + head * d),
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        l as isize,
                        v.as_ptr(),
                        1,
                        three_h as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    for (i, inverse_sum) in inverse_sums.iter().enumerate() {
                        // SAFETY: row i of this task's output block: d values at column head·d.
                        let row = std::slice::from_raw_parts_mut(
                            out_ptr.0.add((text * s + i) * h + head * d),
                            d,
                        );
                        for y in row {
                            *y *= inverse_sum;
                        }
                    }
                }
            },
        );
        // SAFETY: padding rows were zeroed above; each (text, head) task wrote its real rows'
        // d columns (the product does not read its destination), and the heads cover h.
        unsafe { out.set_len(b * s * h) };
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, s, h])))
    }
}

/// Multi-head self-attention over a fused projection `qkv` `(batch, seq, 3·hidden)` (Q, K, V
/// side by side), where text `i` has `lengths[i]` real tokens followed by padding. Returns the
/// context `(batch, seq, hidden)`; rows of padding positions are zero. `position_bias`, when
/// given, is added to the scaled scores before the softmax.
pub fn attention(
    qkv: &Tensor,
    lengths: &[usize],
    heads: usize,
    scale: f32,
    position_bias: Option<&PositionBias>,
) -> Result<Tensor> {
    let three_h = qkv.dim(2)?;
    qkv.contiguous()?.apply_op1_no_bwd(&AttentionOp {
        lengths: lengths.to_vec(),
        heads,
        head_size: three_h / 3 / heads,
        scale,
        position_bias: position_bias.cloned(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// Largest absolute element-wise difference of two same-shaped tensors (the model crate's
    /// tests share it).
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }

    /// The largest magnitude in `t`.
    pub(crate) fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn exp_and_erf_match_the_reference_functions() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -8000..=8000 {
            let x = i as f32 / 100.0; // [-80, 80]
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((exp_approx(x) as f64 - want) / want).abs());
            let x = i as f32 / 1000.0; // [-8, 8]
            let want = candle_core::cpu::erf::erf_f64(x as f64);
            worst_erf = worst_erf.max((erf_approx(x) as f64 - want).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 5e-7, "erf absolute error {worst_erf}");
    }

    #[test]
    fn vector_exponentials_match_the_generic_ones_at_every_tail_length() {
        #[cfg(target_arch = "x86_64")]
        if crate::fixtures::cpu_feature_test_runs(
            "kernels::tests::vector_exponentials_match_the_generic_ones_at_every_tail_length",
            avx512::available(),
            "ATTUNE_REQUIRE_AVX512",
            "this CPU has no AVX-512 (the AVX2 and generic exponentials are tested)",
        ) {
            for len in 0..=70usize {
                // Spread over [-100, 20): some lanes below the clamp, all shifted by the max.
                let row: Vec<f32> = (0..len)
                    .map(|i| ((i * 7919) % 1200) as f32 / 10.0 - 100.0)
                    .collect();
                let (mut got, mut want) = (row.clone(), row);
                let got_inverse = unsafe { avx512::exp_shifted(&mut got) };
                let want_inverse = exp_shifted_generic(&mut want);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-6 * w.abs(),
                        "len {len}, [{i}]: {g} vs {w}"
                    );
                }
                let gap = (got_inverse - want_inverse).abs();
                assert!(
                    len == 0 || gap <= 1e-6 * want_inverse,
                    "len {len}: 1/Σ {gap}"
                );
            }
        }
    }

    #[test]
    fn fused_gelu_and_softmax_match_candle() {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 3.0, (7, 333), &dev).unwrap();
        let mut fused = xs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        gelu_erf_in_place(&mut fused);
        let want = xs
            .gelu_erf()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = fused
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-6, "gelu max diff {d}");

        let mut rows = xs.to_vec2::<f32>().unwrap();
        let want = candle_nn::ops::softmax(&xs, D::Minus1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row, want) in rows.iter_mut().zip(&want) {
            softmax_in_place(row);
            let d = row
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-6, "softmax max diff {d}");
        }
    }

    #[test]
    fn fused_linear_matches_matmul_plus_bias() {
        let dev = Device::Cpu;
        // Few rows (dot products over the weight rows, inputs under and over 64 wide) and
        // enough rows for the GEMM.
        for (texts, tokens, k, n) in [(2, 5, 24, 40), (1, FEW_ROWS, 150, 70), (3, 20, 150, 70)] {
            let xs = Tensor::randn(0f32, 1.0, (texts, tokens, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let want = xs
                .broadcast_matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let got = linear(&xs, &w, &b, Epilogue::None).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-3, "{texts}×{tokens}×{k}→{n}: {d}");
            let got = linear(&xs, &w, &b, Epilogue::GeluErf).unwrap();
            assert!(max_abs_diff(&got, &want.gelu_erf().unwrap()) < 1e-3);
        }
    }

    /// A layer norm with random scale and shift, width `n`.
    fn test_norm(n: usize) -> NormWeights {
        let dev = Device::Cpu;
        let vec = |std| {
            Tensor::randn(0f32, std, n, &dev)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let weight: Vec<f32> = vec(0.3).iter().map(|w: &f32| 1.0 + w).collect();
        NormWeights {
            weight,
            bias: vec(0.3),
            eps: 1e-12,
        }
    }

    /// candle-nn's layer norm of `out + residual`.
    fn composite_add_norm(out: &Tensor, residual: &Tensor, norm: &NormWeights) -> Tensor {
        let dev = Device::Cpu;
        let weight = Tensor::new(norm.weight.as_slice(), &dev).unwrap();
        let bias = Tensor::new(norm.bias.as_slice(), &dev).unwrap();
        candle_nn::ops::layer_norm(&(out + residual).unwrap(), &weight, &bias, norm.eps).unwrap()
    }

    #[test]
    fn fused_linear_add_norm_matches_the_composite_sub_layer_end() {
        let dev = Device::Cpu;
        // Few rows, GEMM rows over more than one block, and widths with and without a tail
        // after the 16-lane sums.
        for (texts, tokens, k, n) in [(2, 5, 24, 40), (3, 20, 150, 70), (2, 1100, 8, 32)] {
            let xs = Tensor::randn(0f32, 1.0, (texts, tokens, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.3, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.3, n, &dev).unwrap();
            let residual = Tensor::randn(0f32, 1.0, (texts, tokens, n), &dev).unwrap();
            let norm = test_norm(n);
            let out = xs
                .broadcast_matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let want = composite_add_norm(&out, &residual, &norm);
            let got = linear_add_norm(&xs, &w, &b, &residual, &norm).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-4, "{texts}×{tokens}×{k}→{n}: {d}");
        }
    }

    #[test]
    fn fused_feed_forward_matches_the_composite_block_across_row_blocks() {
        let dev = Device::Cpu;
        // 2 × 1100 rows: more than one BLOCK_ROWS block, the last one partial.
        const { assert!(2 * 1100 > BLOCK_ROWS && 2 * 1100 < 2 * BLOCK_ROWS) };
        let xs = Tensor::randn(0f32, 1.0, (2, 1100, 16), &dev).unwrap();
        let up = Tensor::randn(0f32, 0.3, (48, 16), &dev).unwrap();
        let up_b = Tensor::randn(0f32, 0.3, 48, &dev).unwrap();
        let down = Tensor::randn(0f32, 0.3, (16, 48), &dev).unwrap();
        let down_b = Tensor::randn(0f32, 0.3, 16, &dev).unwrap();
        let inner = xs
            .broadcast_matmul(&up.t().unwrap())
            .unwrap()
            .broadcast_add(&up_b)
            .unwrap();
        let want = inner
            .gelu_erf()
            .unwrap()
            .broadcast_matmul(&down.t().unwrap())
            .unwrap()
            .broadcast_add(&down_b)
            .unwrap();
        let got = feed_forward(&xs, &up, &up_b, &down, &down_b, None).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{d}");
        // With the sub-layer's end: layer_norm(block(xs) + xs).
        let norm = test_norm(16);
        let got = feed_forward(&xs, &up, &up_b, &down, &down_b, Some(&norm)).unwrap();
        let want = composite_add_norm(&want, &xs, &norm);
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{d}");
    }

    #[test]
    fn fused_attention_matches_masked_composite_attention_on_real_tokens() {
        fused_attention_matches_composite(false);
    }

    #[test]
    fn fused_attention_adds_the_position_bias_like_the_composite_path() {
        fused_attention_matches_composite(true);
    }

    fn fused_attention_matches_composite(with_bias: bool) {
        let dev = Device::Cpu;
        let (b, s, heads, d) = (3, 9, 2, 4);
        let h = heads * d;
        let lengths = [9usize, 4, 1];
        let qkv = Tensor::randn(0f32, 1.0, (b, s, 3 * h), &dev).unwrap();
        // A bias table for longer texts than this batch's (the kernel reads its top-left part).
        let bias_seq = s + 3;
        let bias_values = Tensor::randn(0f32, 2.0, (heads, bias_seq, bias_seq), &dev).unwrap();
        let bias = with_bias.then(|| {
            let values = bias_values.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            PositionBias::new(values, heads, bias_seq)
        });
        let got = attention(&qkv, &lengths, heads, 0.5, bias.as_ref())
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let split = |i: usize| {
            qkv.narrow(2, i * h, h)
                .unwrap()
                .reshape((b, s, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let mask: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..s).map(move |j| if j < l { 0.0 } else { f32::MIN }))
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, 1, s), &dev).unwrap();
        let mut scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.5)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        if with_bias {
            let top_left = bias_values
                .narrow(1, 0, s)
                .unwrap()
                .narrow(2, 0, s)
                .unwrap();
            scores = scores
                .broadcast_add(&top_left.unsqueeze(0).unwrap())
                .unwrap();
        }
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let want = probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, s, h))
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        for text in 0..b {
            for pos in 0..s {
                for j in 0..h {
                    if pos < lengths[text] {
                        assert!((got[text][pos][j] - want[text][pos][j]).abs() < 1e-5);
                    } else {
                        assert_eq!(got[text][pos][j], 0.0, "padding rows are zero");
                    }
                }
            }
        }
    }
}
