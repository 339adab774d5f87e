//! int8 products for inference on the CPU (the reduced-precision path of
//! [`crate::Precision::Int8`], through [`crate::packed::PackedLinear`]).
//!
//! - A weight is quantized once, per output `j`: `w[j][i] ≈ scale[j]·q[j][i]`, `q ∈ [−127, 127]`.
//! - Each call quantizes the activations per row `r`, over the row's own range (zero included):
//!   `x[r][i] ≈ step[r]·(u[r][i] − zero[r])`, `u ∈ [0, 255]`.
//! - The products `Σᵢ u·q` are exact in i32 (at most 255·127·k < 2³¹ for k < 66,000); each
//!   output is `step[r]·scale[j]·(Σᵢ u·q − zero[r]·Σᵢ q[j][i])`, in f32, then the bias and the
//!   epilogue in f32.
//! - [`Int8Options`] refines a layer where its rounding reaches the embeddings: smoothing per
//!   input channel, second planes of the weight or the activations, one weight scale per group
//!   of inputs (each group summed on its own, then scaled), and input channels kept in f32.
//!
//! Two backends give the same values up to the order of the f32 sums:
//! - [`Int8Backend::Vnni`]: AVX-512 VNNI (`VPDPBUSD`: 16 sums of 4 u8·i8 products per
//!   instruction), the weight packed once in 64-output panels;
//! - [`Int8Backend::Emulated`]: elsewhere, the dequantized operands go through the f32 GEMM, at
//!   f32 speed; a warning says so once per process.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::kernels::{linear_rows, RowEpilogue};

/// How this process runs int8 products on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Backend {
    /// AVX-512 VNNI.
    Vnni,
    /// The dequantized operands through the f32 GEMM: the same vectors, at f32 speed.
    Emulated,
}

impl Int8Backend {
    /// The backend of this CPU, detected once (and logged once).
    pub fn detect() -> Int8Backend {
        static BACKEND: OnceLock<Int8Backend> = OnceLock::new();
        *BACKEND.get_or_init(|| {
            if std::env::var_os("ATTUNE_INT8_EMULATED").is_some() {
                tracing::info!("int8 products emulated through f32 (ATTUNE_INT8_EMULATED is set)");
                Int8Backend::Emulated
            } else if vnni::available() {
                tracing::info!("int8 products run on AVX-512 VNNI");
                Int8Backend::Vnni
            } else {
                tracing::warn!(
                    "int8 products are emulated through f32 and run no faster than f32: \
                     this CPU has no AVX-512 VNNI"
                );
                Int8Backend::Emulated
            }
        })
    }
}

/// The version of the int8 recipe: which layers take which [`Int8Options`] (the families'
/// choices: `bert.rs`'s `int8_scheme` and its constants) and how they are quantized. Bump it whenever a
/// change to the recipe moves int8 vectors: spaces record it ([`crate::Precision::recipe_version`]).
/// A change in the f32 work around the products moves int8 vectors too, as a redraw of their
/// rounding: the softmax's exponentials summed in another order (f32 vectors within 1.4e-7)
/// left every haystack_icecat document's int8 vector at cosine ≥ 0.99986 to before, inside
/// int8's own distance to f32 (median cosine 0.99966). That is not a new recipe.
/// 1: second planes for V's and the intermediate's activations and the down projection's
/// weights; 2: V's second plane, the intermediate's widest channels exact, the down
/// projection's weights in groups of 128 inputs.
pub const RECIPE_VERSION: u32 = 2;

/// Largest quantized weight magnitude.
const WEIGHT_LEVELS: f32 = 127.0;
/// Largest quantized activation (the smallest is 0).
const ACTIVATION_LEVELS: f32 = 255.0;
/// How much finer a second plane's step is than the first's: a residual within half a step
/// spans ±127 levels.
const FINE: f32 = 254.0;
/// The second activation plane's zero point (its residuals are signed).
const FINE_ZERO: i32 = 128;
/// Outputs per VNNI panel; [`Int8Options::fine_activations_from`] rounds down to a multiple.
const PANEL: usize = 64;

/// How finely a layer is quantized beyond plain 8 bits per operand. Each option trades speed
/// for accuracy where a layer's rounding error reaches the embeddings most.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Int8Options {
    /// Per input channel `c`: activations are divided by `smoothing[c]` before their row is
    /// quantized, and the weight's column `c` is multiplied by it (SmoothQuant), so that a few
    /// channels with large activations do not set every row's step. `None`: no smoothing.
    pub smoothing: Option<Vec<f32>>,
    /// A second weight plane: each weight's rounding residual quantized again at 1/254 of the
    /// step (about 15 bits in all). Doubles the layer's products.
    pub fine_weights: bool,
    /// Outputs from this one on (rounded down to a multiple of 64) also take a second plane of
    /// the activations, their rounding residual at 1/254 of the row's step. `None`: no output.
    pub fine_activations_from: Option<usize>,
    /// Input channels whose products stay f32 (LLM.int8()'s outlier decomposition): they are
    /// left out of the rows' ranges and the weight's rows, and added exactly, one f32 column
    /// each. Cheap while few: each adds one f32 multiply-add per output.
    pub exact_channels: Vec<usize>,
    /// Inputs per weight scale: each output's weights are quantized in groups of this many
    /// consecutive inputs (rounded up to a multiple of 4), each group with its own scale, so
    /// that one large weight coarsens only its group. Each group is its own pass whose scaled
    /// sums are added to the outputs in f32, so smaller groups cost more. `None`: one scale per
    /// output.
    pub weight_group: Option<usize>,
}

/// How far [`smoothing_after_norm`] moves a channel's range from the activations to the weights
/// (SmoothQuant's α; 0.5 would balance them).
const SMOOTHING_ALPHA: f32 = 0.45;

/// SmoothQuant factors for a layer whose input is a layer norm's output `γ·x̂ + β` (weight `w`,
/// `(n, k)` row-major): per input channel `c`, `a_c^α / w_c^(1−α)` with `a_c = 2|γ_c| + |β_c|`,
/// the channel's reach at two standard deviations, `w_c` the largest |weight| on input `c` and
/// α = 0.45. They shift each channel's range between activations and weights with no
/// calibration data. (Chosen on the 49 reference texts over reach 1–8σ and α 0.4–0.6: the worst
/// text's cosine to f32 was highest here for both all-MiniLM-L6-v2 and all-mpnet-base-v2.)
pub fn smoothing_after_norm(gamma: &[f32], beta: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    let mut reach = vec![0f32; k];
    for row in w.chunks_exact(k) {
        for (r, v) in reach.iter_mut().zip(row) {
            *r = r.max(v.abs());
        }
    }
    gamma
        .iter()
        .zip(beta)
        .zip(&reach)
        .map(|((g, b), w)| {
            let reach = (2.0 * g.abs() + b.abs()).max(1e-5);
            reach.powf(SMOOTHING_ALPHA) / w.max(1e-5).powf(1.0 - SMOOTHING_ALPHA)
        })
        .collect()
}

/// The input channels of `norm`'s output with the largest reach `2|γ_c| + |β_c|` after
/// `smoothing` (divided by it), `count` of them, for [`Int8Options::exact_channels`]: the
/// channels that would otherwise set every row's step.
pub fn outlier_channels_after_norm(
    gamma: &[f32],
    beta: &[f32],
    smoothing: Option<&[f32]>,
    count: usize,
) -> Vec<usize> {
    let reach = |c: usize| {
        let r = 2.0 * gamma[c].abs() + beta[c].abs();
        smoothing.map_or(r, |s| r / s[c])
    };
    let mut channels: Vec<usize> = (0..gamma.len()).collect();
    channels.sort_by(|&a, &b| reach(b).total_cmp(&reach(a)));
    channels.truncate(count);
    channels.sort_unstable();
    channels
}

/// One plane of a quantized weight over a group of its inputs: for `i` in `inputs`,
/// `w[j][i] ≈ Σ_planes scale[j]·q[j][i]`.
struct WeightPlane {
    /// The inputs this plane covers (from a multiple of 4).
    inputs: Range<usize>,
    /// A second plane: the rounding residual of the group's first.
    fine: bool,
    /// `scale[j]`: the weight of one level of output `j`'s row.
    scales: Vec<f32>,
    /// `Σᵢ q[j][i]`: what the activations' zero point adds to output `j`'s sum.
    sums: Vec<i32>,
    /// The plane packed for VNNI; `None` under the emulated backend, whose weight is
    /// [`Int8Weight::emulated`].
    panels: Option<vnni::Panels>,
}

/// The emulated backend's weights, dequantized, `(n, k)` row-major.
struct Dequantized {
    /// Every plane summed: what the first activation plane meets.
    all: Vec<f32>,
    /// The first planes only, where the activations take a second plane (it meets only these).
    coarse: Option<Vec<f32>>,
}

/// A weight `(n, k)` quantized per output (or per output and input group; smoothed per input;
/// some input channels kept f32), packed for its backend.
pub(crate) struct Int8Weight {
    n: usize,
    k: usize,
    /// `1 / smoothing[c]`, applied to the activations before quantization.
    inv_smoothing: Option<Vec<f32>>,
    /// One plane, or two with [`Int8Options::fine_weights`].
    planes: Vec<WeightPlane>,
    /// The first output that also takes the activations' second plane (`n`: none).
    fine_from: usize,
    /// The emulated backend's dequantized weights.
    emulated: Option<Dequantized>,
    /// [`Int8Options::exact_channels`] and their weight columns in f32, `(channels, n)`.
    exact: Option<ExactChannels>,
}

/// Input channels computed in f32: `out[r][j] += Σ_o x[r][channels[o]]·columns[o][j]`.
struct ExactChannels {
    channels: Vec<usize>,
    /// `(channels.len(), n)` row-major: the weight's column of each channel.
    columns: Vec<f32>,
}

impl ExactChannels {
    /// Adds the exact channels' products of the rows `x` (m×k) to `dst` (m×n).
    fn add(&self, x: &[f32], k: usize, dst: &mut [f32]) {
        let factors: Vec<f32> = x
            .chunks_exact(k)
            .flat_map(|row| self.channels.iter().map(|&c| row[c]))
            .collect();
        add_columns(dst, &factors, &self.columns, self.channels.len());
    }
}

crate::kernels::dispatch!(
    /// `out[r] ← out[r] + Σ_o factors[r][o]·columns[o]` for each row `r` of `out` (m×n), with
    /// `factors` m×`channels` and `columns` `channels`×n (AVX-512 or AVX2 when the CPU has
    /// them).
    fn add_columns(
        out: &mut [f32],
        factors: &[f32],
        columns: &[f32],
        channels: usize
    ) => add_columns_generic
);

#[inline(always)]
fn add_columns_generic(out: &mut [f32], factors: &[f32], columns: &[f32], channels: usize) {
    // 64 outputs at a time: four independent 16-lane sums, so the additions overlap; every row
    // passes one block before the next, so the block's columns stay in the L1 cache.
    const BLOCK: usize = 64;
    let n = columns.len() / channels.max(1);
    if channels == 0 || n == 0 {
        return;
    }
    let whole = n / BLOCK * BLOCK;
    for start in (0..whole).step_by(BLOCK) {
        for (row, factors) in out.chunks_exact_mut(n).zip(factors.chunks_exact(channels)) {
            let out = &mut row[start..start + BLOCK];
            let mut acc: [f32; BLOCK] = (&*out).try_into().expect("64 outputs");
            for (o, &f) in factors.iter().enumerate() {
                let column = &columns[o * n + start..o * n + start + BLOCK];
                for (a, w) in acc.iter_mut().zip(column) {
                    *a += f * w;
                }
            }
            out.copy_from_slice(&acc);
        }
    }
    for (row, factors) in out.chunks_exact_mut(n).zip(factors.chunks_exact(channels)) {
        for (j, y) in row.iter_mut().enumerate().skip(whole) {
            for (o, &f) in factors.iter().enumerate() {
                *y += f * columns[o * n + j];
            }
        }
    }
}

/// `row` quantized per output: `(scale, q)` with `row ≈ scale·q`.
fn quantize_weight_row(row: &[f32]) -> (f32, Vec<i8>) {
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max / WEIGHT_LEVELS } else { 1.0 };
    (scale, quantize_at(row, scale))
}

/// `row / scale` rounded to the nearest level in `[−127, 127]`.
fn quantize_at(row: &[f32], scale: f32) -> Vec<i8> {
    let inv = 1.0 / scale;
    row.iter()
        .map(|v| {
            (v * inv)
                .round_ties_even()
                .clamp(-WEIGHT_LEVELS, WEIGHT_LEVELS) as i8
        })
        .collect()
}

/// One plane of a weight group: its inputs, whether it is a second plane, and `(scale, q)` per
/// output.
struct QuantizedPlane {
    inputs: Range<usize>,
    fine: bool,
    rows: Vec<(f32, Vec<i8>)>,
}

/// The planes of `w` (smoothed): per group of `group` inputs (the whole row if `None`), the
/// first plane and, if `fine`, the second.
fn quantize_weight(
    w: &[f32],
    k: usize,
    smoothing: Option<&[f32]>,
    fine: bool,
    group: Option<usize>,
) -> Vec<QuantizedPlane> {
    let rows: Vec<Vec<f32>> = w
        .chunks(k.max(1))
        .map(|row| match smoothing {
            Some(s) => row.iter().zip(s).map(|(v, s)| v * s).collect(),
            None => row.to_vec(),
        })
        .collect();
    let group = group.map_or(k, |g| g.div_ceil(4).max(1) * 4).max(1);
    let mut planes = Vec::new();
    for start in (0..k.max(1)).step_by(group) {
        let inputs = start..(start + group).min(k);
        let coarse: Vec<(f32, Vec<i8>)> = rows
            .par_iter()
            .map(|r| quantize_weight_row(&r[inputs.clone()]))
            .collect();
        let residual = fine.then(|| {
            rows.par_iter()
                .zip(&coarse)
                .map(|(row, (scale, q))| {
                    let fine_scale = scale / FINE;
                    let rest: Vec<f32> = row[inputs.clone()]
                        .iter()
                        .zip(q)
                        .map(|(v, &q)| v - scale * q as f32)
                        .collect();
                    (fine_scale, quantize_at(&rest, fine_scale))
                })
                .collect()
        });
        planes.push(QuantizedPlane {
            inputs: inputs.clone(),
            fine: false,
            rows: coarse,
        });
        if let Some(rows) = residual {
            planes.push(QuantizedPlane {
                inputs,
                fine: true,
                rows,
            });
        }
    }
    planes
}

/// `planes` (those `keep` selects) dequantized and summed into one `(n, k)` weight.
fn dequantize(
    planes: &[QuantizedPlane],
    n: usize,
    k: usize,
    keep: impl Fn(&QuantizedPlane) -> bool,
) -> Vec<f32> {
    let mut w = vec![0f32; n * k];
    for plane in planes.iter().filter(|p| keep(p)) {
        for (row, (scale, q)) in w.chunks_exact_mut(k).zip(&plane.rows) {
            for (v, &q) in row[plane.inputs.clone()].iter_mut().zip(q) {
                *v += scale * q as f32;
            }
        }
    }
    w
}

impl Int8Weight {
    /// Quantizes `w` (`(n, k)` row-major) as `options` say and packs it for `backend`.
    pub(crate) fn new(
        w: &[f32],
        n: usize,
        k: usize,
        backend: Int8Backend,
        options: &Int8Options,
    ) -> Int8Weight {
        let exact = (!options.exact_channels.is_empty()).then(|| ExactChannels {
            channels: options.exact_channels.clone(),
            columns: options
                .exact_channels
                .iter()
                .flat_map(|&c| w.chunks_exact(k).map(move |row| row[c]))
                .collect(),
        });
        // The exact channels' columns leave the weight, and their activations the rows: a
        // smoothing of zero at each.
        let smoothing: Option<Vec<f32>> = match &exact {
            None => options.smoothing.clone(),
            Some(exact) => {
                let mut s = options.smoothing.clone().unwrap_or_else(|| vec![1.0; k]);
                for &c in &exact.channels {
                    s[c] = 0.0;
                }
                Some(s)
            }
        };
        let smoothing = smoothing.as_deref();
        let quantized =
            quantize_weight(w, k, smoothing, options.fine_weights, options.weight_group);
        let fine_from = options
            .fine_activations_from
            .map_or(n, |from| (from / PANEL * PANEL).min(n));
        let emulated = (backend == Int8Backend::Emulated).then(|| Dequantized {
            all: dequantize(&quantized, n, k, |_| true),
            coarse: (fine_from < n && options.fine_weights)
                .then(|| dequantize(&quantized, n, k, |p| !p.fine)),
        });
        let planes = quantized
            .into_iter()
            .map(|plane| WeightPlane {
                scales: plane.rows.iter().map(|(s, _)| *s).collect(),
                sums: plane
                    .rows
                    .iter()
                    .map(|(_, q)| q.iter().map(|&v| v as i32).sum())
                    .collect(),
                panels: (backend == Int8Backend::Vnni)
                    .then(|| vnni::Panels::pack(&plane.rows, n, plane.inputs.len())),
                inputs: plane.inputs,
                fine: plane.fine,
            })
            .collect();
        Int8Weight {
            n,
            k,
            inv_smoothing: smoothing.map(|s| {
                s.iter()
                    .map(|&v| if v == 0.0 { 0.0 } else { 1.0 / v })
                    .collect()
            }),
            planes,
            fine_from,
            emulated,
            exact,
        }
    }

    /// Whether any output takes the activations' second plane.
    fn fine_activations(&self) -> bool {
        self.fine_from < self.n
    }

    /// `dst ← epilogue(x̂·ŵᵀ)` for row-major `x` (m×k) quantized per row and `dst` (m×n); every
    /// element is written.
    pub(crate) fn linear(
        &self,
        x: &[f32],
        epilogue: &RowEpilogue<'_>,
        dst: &mut [MaybeUninit<f32>],
    ) {
        let (n, k) = (self.n, self.k);
        let m = x.len() / k.max(1);
        let threads = rayon::current_num_threads().max(1);
        let per_task = m.div_ceil(threads).clamp(1, TASK_ROWS);
        x.par_chunks(per_task * k)
            .zip(dst.par_chunks_mut(per_task * n))
            .enumerate()
            .for_each(|(task, (x, dst))| {
                QUANTIZED_ROWS.with(|rows| {
                    let rows = &mut rows.borrow_mut();
                    self.quantize_rows(x, rows);
                    match &self.emulated {
                        Some(weights) => self.emulated_rows(weights, rows, dst),
                        // SAFETY: without `emulated`, every plane has `panels`, packed only
                        // where `vnni::available()` held.
                        None => unsafe { vnni::rows(self, rows, dst) },
                    }
                });
                // SAFETY: the products wrote every element of this task's `dst`.
                let dst = unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) };
                if let Some(exact) = &self.exact {
                    exact.add(x, k, dst);
                }
                for (i, row) in dst.chunks_exact_mut(n).enumerate() {
                    epilogue.apply(task * per_task + i, row);
                }
            });
    }

    /// `x`'s rows quantized into `rows` (both planes where some output takes the second).
    fn quantize_rows(&self, x: &[f32], rows: &mut QuantizedRows) {
        let (k, stride) = (self.k, self.k.div_ceil(4) * 4);
        let m = x.len() / k;
        let fine = self.fine_activations();
        rows.values.resize(m * stride, 0);
        rows.fine.resize(if fine { m * stride } else { 0 }, 0);
        rows.steps.clear();
        rows.zeros.clear();
        for (r, row) in x.chunks_exact(k).enumerate() {
            let values = &mut rows.values[r * stride..(r + 1) * stride];
            let fine_values = fine.then(|| &mut rows.fine[r * stride..(r + 1) * stride]);
            let (step, zero) =
                quantize_row(row, self.inv_smoothing.as_deref(), values, fine_values);
            rows.steps.push(step);
            rows.zeros.push(zero);
        }
    }

    /// The emulated products of one task: the dequantized operands through the f32 GEMM.
    fn emulated_rows(
        &self,
        weights: &Dequantized,
        rows: &QuantizedRows,
        dst: &mut [MaybeUninit<f32>],
    ) {
        let (n, k, stride) = (self.n, self.k, self.k.div_ceil(4) * 4);
        let full = weights.all.as_slice();
        let coarse_weight = weights.coarse.as_deref().unwrap_or(full);
        let dequantize = |values: &[u8], step: f32, zero: i32| -> Vec<f32> {
            values[..k]
                .iter()
                .map(|&u| step * (u as i32 - zero) as f32)
                .collect()
        };
        let mut coarse = Vec::with_capacity(rows.steps.len() * k);
        let mut residual = Vec::new();
        for (r, (&step, &zero)) in rows.steps.iter().zip(&rows.zeros).enumerate() {
            coarse.extend(dequantize(&rows.values[r * stride..], step, zero));
            if self.fine_activations() {
                let fine = &rows.fine[r * stride..];
                residual.extend(dequantize(fine, step / FINE, FINE_ZERO));
            }
        }
        let zeros = vec![0f32; n];
        let plain = RowEpilogue::Bias {
            bias: &zeros,
            activation: crate::kernels::Epilogue::None,
        };
        linear_rows(&coarse, k, full, &plain, dst);
        if self.fine_activations() {
            let cols = n - self.fine_from;
            let w = &coarse_weight[self.fine_from * k..];
            let mut extra = vec![MaybeUninit::uninit(); rows.steps.len() * cols];
            let plain = RowEpilogue::Bias {
                bias: &zeros[..cols],
                activation: crate::kernels::Epilogue::None,
            };
            linear_rows(&residual, k, w, &plain, &mut extra);
            for (out, add) in dst.chunks_exact_mut(n).zip(extra.chunks_exact(cols)) {
                for (o, a) in out[self.fine_from..].iter_mut().zip(add) {
                    // SAFETY: `linear_rows` wrote both.
                    unsafe { o.write(o.assume_init() + a.assume_init()) };
                }
            }
        }
    }
}

/// Most rows per task: their quantized bytes stay in the L2 cache while the panels pass.
const TASK_ROWS: usize = 192;

/// Each thread's quantized rows, reused from call to call (fresh buffers per call cost page
/// clearing).
struct QuantizedRows {
    /// Rows of `k` rounded up to whole quads, in bytes, zero beyond `k`.
    values: Vec<u8>,
    /// The second plane, where the weight takes one (same layout), else empty.
    fine: Vec<u8>,
    steps: Vec<f32>,
    zeros: Vec<i32>,
}

thread_local! {
    static QUANTIZED_ROWS: RefCell<QuantizedRows> = const {
        RefCell::new(QuantizedRows {
            values: Vec::new(),
            fine: Vec::new(),
            steps: Vec::new(),
            zeros: Vec::new(),
        })
    };
}

/// The step, zero point and inverse step of the range `[lo, hi]` (zero included, so zero is
/// exact).
fn range_of(lo: f32, hi: f32) -> (f32, i32, f32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let step = if hi > lo {
        (hi - lo) / ACTIVATION_LEVELS
    } else {
        1.0
    };
    let inv = 1.0 / step;
    let zero = (-lo * inv).round_ties_even().clamp(0.0, ACTIVATION_LEVELS) as i32;
    (step, zero, inv)
}

/// `row` (times `inv_smoothing`, if any) quantized into `values` and, if given, its rounding
/// residual into `fine` at 1/254 of the step around [`FINE_ZERO`]; bytes past `row.len()`
/// become zero. Returns `(step, zero)`. The vector code gives the same bytes.
fn quantize_row(
    row: &[f32],
    inv_smoothing: Option<&[f32]>,
    values: &mut [u8],
    fine: Option<&mut [u8]>,
) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if vnni::available() {
        // SAFETY: the CPU has AVX-512 F and BW (checked just above, cached by std).
        return unsafe { vnni::quantize_row(row, inv_smoothing, values, fine) };
    }
    quantize_row_scalar(row, inv_smoothing, values, fine)
}

/// [`quantize_row`] one value at a time: the reference.
fn quantize_row_scalar(
    row: &[f32],
    inv_smoothing: Option<&[f32]>,
    values: &mut [u8],
    fine: Option<&mut [u8]>,
) -> (f32, i32) {
    let smoothed: Vec<f32> = match inv_smoothing {
        Some(inv) => row.iter().zip(inv).map(|(v, s)| v * s).collect(),
        None => row.to_vec(),
    };
    let lo = smoothed.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let hi = smoothed.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let (step, zero, inv) = range_of(lo, hi);
    values.fill(0);
    for (o, &v) in values.iter_mut().zip(&smoothed) {
        *o = ((v * inv).round_ties_even() as i32 + zero).clamp(0, 255) as u8;
    }
    if let Some(fine) = fine {
        let (_, fine_inv) = fine_step(step);
        fine.fill(0);
        for ((o, &v), &u) in fine.iter_mut().zip(&smoothed).zip(values.iter()) {
            let rest = v - step * (u as i32 - zero) as f32;
            *o = ((rest * fine_inv).round_ties_even() as i32 + FINE_ZERO).clamp(0, 255) as u8;
        }
    }
    (step, zero)
}

/// The second plane's step and its inverse, for a first-plane `step`.
fn fine_step(step: f32) -> (f32, f32) {
    let fine = step / FINE;
    (fine, 1.0 / fine)
}

/// The AVX-512 VNNI kernels. Everything that needs the instructions is here.
mod vnni {
    use super::{fine_step, range_of, Int8Weight, MaybeUninit, QuantizedRows, WeightPlane};
    use super::{FINE_ZERO, PANEL};

    /// Rows per kernel call (6 × 4 accumulators, 4 weight vectors, 1 broadcast: 29 registers).
    const MR: usize = 6;

    /// One 64-byte vector of a panel: 16 outputs × 4 consecutive inputs.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    pub(super) struct Line([i8; 64]);

    /// Whether the CPU has AVX-512 F, BW and VNNI.
    pub(super) fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// A weight plane in `VPDPBUSD`'s layout: panel `p`, input quad `t`, vector `v` holds, for
    /// each lane `c`, inputs `4t..4t+4` of output `64p + 16v + c`. Zero beyond `n` and `k`.
    pub(super) struct Panels {
        lines: Vec<Line>,
        /// `k` rounded up to whole quads, in quads.
        quads: usize,
    }

    impl Panels {
        pub(super) fn pack(rows: &[(f32, Vec<i8>)], n: usize, k: usize) -> Panels {
            let quads = k.div_ceil(4);
            let mut lines = vec![Line([0; 64]); n.div_ceil(PANEL) * quads * 4];
            for (j, (_, q)) in rows.iter().enumerate() {
                let (p, v, c) = (j / PANEL, j % PANEL / 16, j % 16);
                for (i, &value) in q.iter().enumerate() {
                    lines[(p * quads + i / 4) * 4 + v].0[c * 4 + i % 4] = value;
                }
            }
            Panels { lines, quads }
        }

        fn panel(&self, p: usize) -> &[Line] {
            &self.lines[p * self.quads * 4..][..self.quads * 4]
        }
    }

    /// What one pass adds: which activation plane meets which weight plane.
    struct Pass<'a> {
        values: &'a [u8],
        /// The plane's first input: its offset in each row of `values`.
        offset: usize,
        panels: &'a Panels,
        scales: &'a [f32],
        sums: &'a [i32],
        /// Whether the activations are the second plane (step/254, zero 128).
        fine: bool,
    }

    fn pass<'a>(plane: &'a WeightPlane, values: &'a [u8], fine: bool) -> Pass<'a> {
        Pass {
            values,
            offset: plane.inputs.start,
            panels: plane.panels.as_ref().expect("one backend per weight"),
            scales: &plane.scales,
            sums: &plane.sums,
            fine,
        }
    }

    /// One task: `dst` (rows × n) without the epilogue, from its quantized rows.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI.
    pub(super) unsafe fn rows(
        weight: &Int8Weight,
        rows: &QuantizedRows,
        dst: &mut [MaybeUninit<f32>],
    ) {
        let n = weight.n;
        let stride = weight.k.div_ceil(4) * 4;
        let m = rows.steps.len();
        let mut passes: Vec<Pass> = weight
            .planes
            .iter()
            .map(|plane| pass(plane, rows.values.as_slice(), false))
            .collect();
        let coarse_passes = passes.len();
        if weight.fine_activations() {
            for plane in weight.planes.iter().filter(|plane| !plane.fine) {
                passes.push(pass(plane, rows.fine.as_slice(), true));
            }
        }
        for p in 0..n.div_ceil(PANEL) {
            let col = p * PANEL;
            let cols = (n - col).min(PANEL);
            let count = if col >= weight.fine_from {
                passes.len()
            } else {
                coarse_passes
            };
            for first in (0..m).step_by(MR) {
                let block = (m - first).min(MR);
                let rows_steps = &rows.steps[first..first + block];
                let mut fine_steps = [0f32; MR];
                for (f, &s) in fine_steps.iter_mut().zip(rows_steps) {
                    *f = fine_step(s).0;
                }
                let fine_zeros = [FINE_ZERO; MR];
                for (index, pass) in passes[..count].iter().enumerate() {
                    let (steps, zeros) = if pass.fine {
                        (&fine_steps[..block], &fine_zeros[..block])
                    } else {
                        (rows_steps, &rows.zeros[first..first + block])
                    };
                    let tile = Tile {
                        a: pass.values[first * stride + pass.offset..].as_ptr(),
                        stride,
                        panel: pass.panels.panel(p),
                        steps,
                        zeros,
                        scales: &pass.scales[col..col + cols],
                        weight_sums: &pass.sums[col..col + cols],
                        out: dst[first * n + col..].as_mut_ptr().cast(),
                        out_stride: n,
                        add: index > 0,
                    };
                    match block {
                        6 => kernel::<6>(&tile),
                        5 => kernel::<5>(&tile),
                        4 => kernel::<4>(&tile),
                        3 => kernel::<3>(&tile),
                        2 => kernel::<2>(&tile),
                        _ => kernel::<1>(&tile),
                    }
                }
            }
        }
    }

    /// One kernel call: up to [`MR`] rows of quantized activations against one 64-output
    /// panel, and where its scaled sums go.
    struct Tile<'a> {
        /// The first row's bytes; rows are `stride` bytes apart.
        a: *const u8,
        stride: usize,
        panel: &'a [Line],
        /// Per row: the activations' step and zero point.
        steps: &'a [f32],
        zeros: &'a [i32],
        /// Per output of the panel (at most 64): the weight's scale and sum.
        scales: &'a [f32],
        weight_sums: &'a [i32],
        /// The first row's first output; rows are `out_stride` floats apart.
        out: *mut f32,
        out_stride: usize,
        /// Add to the outputs (a later pass) instead of writing them.
        add: bool,
    }

    /// [`super::quantize_row`] 16 values at a time; the same bytes as the scalar reference.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row(
        row: &[f32],
        inv_smoothing: Option<&[f32]>,
        values: &mut [u8],
        mut fine: Option<&mut [u8]>,
    ) -> (f32, i32) {
        use std::arch::x86_64::*;
        let k = row.len();
        let whole = k / 16 * 16;
        let load = |i: usize| {
            let v = _mm512_loadu_ps(row.as_ptr().add(i));
            match inv_smoothing {
                Some(s) => _mm512_mul_ps(v, _mm512_loadu_ps(s.as_ptr().add(i))),
                None => v,
            }
        };
        let at = |i: usize| match inv_smoothing {
            Some(s) => row[i] * s[i],
            None => row[i],
        };
        let (mut lo, mut hi) = (
            _mm512_set1_ps(f32::INFINITY),
            _mm512_set1_ps(f32::NEG_INFINITY),
        );
        for i in (0..whole).step_by(16) {
            let v = load(i);
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        let (mut lo, mut hi) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        for i in whole..k {
            (lo, hi) = (lo.min(at(i)), hi.max(at(i)));
        }
        let (step, zero, inv) = range_of(lo, hi);
        let (_, fine_inv) = fine_step(step);
        let (inv_v, zero_v, step_v) = (
            _mm512_set1_ps(inv),
            _mm512_set1_epi32(zero),
            _mm512_set1_ps(step),
        );
        let (fine_inv_v, fine_zero_v) = (_mm512_set1_ps(fine_inv), _mm512_set1_epi32(FINE_ZERO));
        let (floor, ceiling) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
        let clamp = |q| _mm512_min_epi32(_mm512_max_epi32(q, floor), ceiling);
        for i in (0..whole).step_by(16) {
            let v = load(i);
            // Rounds to nearest even (the default MXCSR mode), as `round_ties_even`.
            let u = clamp(_mm512_add_epi32(
                _mm512_cvtps_epi32(_mm512_mul_ps(v, inv_v)),
                zero_v,
            ));
            _mm_storeu_si128(values.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(u));
            if let Some(fine) = fine.as_deref_mut() {
                let level = _mm512_cvtepi32_ps(_mm512_sub_epi32(u, zero_v));
                let rest = _mm512_sub_ps(v, _mm512_mul_ps(step_v, level));
                let q = _mm512_cvtps_epi32(_mm512_mul_ps(rest, fine_inv_v));
                let q = clamp(_mm512_add_epi32(q, fine_zero_v));
                _mm_storeu_si128(fine.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(q));
            }
        }
        for i in whole..values.len() {
            let (u, q) = if i < k {
                let v = at(i);
                let u = ((v * inv).round_ties_even() as i32 + zero).clamp(0, 255);
                let rest = v - step * (u - zero) as f32;
                let q = ((rest * fine_inv).round_ties_even() as i32 + FINE_ZERO).clamp(0, 255);
                (u as u8, q as u8)
            } else {
                (0, 0)
            };
            values[i] = u;
            if let Some(fine) = fine.as_deref_mut() {
                fine[i] = q;
            }
        }
        (step, zero)
    }

    /// For the `R` rows and the panel of `tile`: the sums `Σ_t Σ_b a[i][4t + b]·panel[t][c][b]`
    /// in i32, then `out[i][c] (+)= step[i]·scale[c]·(sum − zero[i]·weight_sum[c])` in f32.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `tile.a` holds `R` rows of `4·panel quads` bytes and
    /// `tile.out` `R` rows of `tile.scales.len()` floats.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel<const R: usize>(tile: &Tile) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        for (t, quad) in tile.panel.chunks_exact(4).enumerate() {
            let b = [0, 1, 2, 3].map(|v| _mm512_load_si512(quad[v].0.as_ptr().cast()));
            for (i, acc) in acc.iter_mut().enumerate() {
                let bytes = tile
                    .a
                    .add(i * tile.stride + 4 * t)
                    .cast::<i32>()
                    .read_unaligned();
                let a = _mm512_set1_epi32(bytes);
                for (acc, b) in acc.iter_mut().zip(&b) {
                    *acc = _mm512_dpbusd_epi32(*acc, a, *b);
                }
            }
        }
        // Masks of the outputs present (the last panel may be partial; a zero mask neither
        // loads nor stores). Loops of constant length only, so `acc` stays in registers.
        let cols = tile.scales.len();
        let masks = [0, 1, 2, 3].map(|v| {
            let lanes = cols.saturating_sub(16 * v).min(16);
            ((1u32 << lanes) - 1) as __mmask16
        });
        let scales =
            [0, 1, 2, 3].map(|v| _mm512_maskz_loadu_ps(masks[v], tile.scales.as_ptr().add(16 * v)));
        let weight_sums = [0, 1, 2, 3]
            .map(|v| _mm512_maskz_loadu_epi32(masks[v], tile.weight_sums.as_ptr().add(16 * v)));
        for (i, acc) in acc.iter().enumerate() {
            let zero = _mm512_set1_epi32(tile.zeros[i]);
            let step = _mm512_set1_ps(tile.steps[i]);
            for v in 0..4 {
                let sum = _mm512_sub_epi32(acc[v], _mm512_mullo_epi32(zero, weight_sums[v]));
                let factor = _mm512_mul_ps(step, scales[v]);
                let mut y = _mm512_mul_ps(factor, _mm512_cvtepi32_ps(sum));
                let out = tile.out.add(i * tile.out_stride + 16 * v);
                if tile.add {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(masks[v], out));
                }
                _mm512_mask_storeu_ps(out, masks[v], y);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn kernel<const R: usize>(_tile: &Tile) {
        unreachable!("`Panels` exist only on x86_64 CPUs with AVX-512 VNNI")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Epilogue;
    use crate::packed::tests::random;

    /// The exact outputs of the quantized operands: i64 sums of the integers, then scaled.
    fn reference(x: &[f32], w: &[f32], n: usize, k: usize, options: &Int8Options) -> Vec<f32> {
        let exact = &options.exact_channels;
        let mut smoothing = options.smoothing.clone();
        if !exact.is_empty() {
            let s = smoothing.get_or_insert_with(|| vec![1.0; k]);
            for &c in exact {
                s[c] = 0.0;
            }
        }
        let planes = quantize_weight(
            w,
            k,
            smoothing.as_deref(),
            options.fine_weights,
            options.weight_group,
        );
        let inv: Option<Vec<f32>> = smoothing.as_ref().map(|s| {
            s.iter()
                .map(|&v| if v == 0.0 { 0.0 } else { 1.0 / v })
                .collect()
        });
        let fine_from = options
            .fine_activations_from
            .map_or(n, |f| (f / PANEL * PANEL).min(n));
        let dot = |a: &[u8], zero: i32, q: &[i8]| -> f64 {
            let sum: i64 = a
                .iter()
                .zip(q)
                .map(|(&a, &b)| (a as i64 - zero as i64) * b as i64)
                .sum();
            sum as f64
        };
        let mut out = Vec::new();
        for row in x.chunks_exact(k) {
            let (mut u, mut f) = (vec![0u8; k], vec![0u8; k]);
            let (step, zero) = quantize_row_scalar(row, inv.as_deref(), &mut u, Some(&mut f));
            for j in 0..n {
                let mut y = 0f64;
                for plane in &planes {
                    let (scale, q) = &plane.rows[j];
                    let inputs = plane.inputs.clone();
                    y += (step * scale) as f64 * dot(&u[inputs.clone()], zero, q);
                    if j >= fine_from && !plane.fine {
                        let fine = fine_step(step).0 * scale;
                        y += fine as f64 * dot(&f[inputs], FINE_ZERO, q);
                    }
                }
                for &c in exact {
                    y += row[c] as f64 * w[j * k + c] as f64;
                }
                out.push(y as f32);
            }
        }
        out
    }

    fn run(
        backend: Int8Backend,
        x: &[f32],
        w: &[f32],
        n: usize,
        options: &Int8Options,
    ) -> Vec<f32> {
        let k = w.len() / n;
        let weight = Int8Weight::new(w, n, k, backend, options);
        let bias = vec![0f32; n];
        let epilogue = RowEpilogue::Bias {
            bias: &bias,
            activation: Epilogue::None,
        };
        let mut dst = vec![f32::NAN; x.len() / k * n];
        // SAFETY: f32 and MaybeUninit<f32> share a layout.
        let out = unsafe { &mut *(dst.as_mut_slice() as *mut [f32] as *mut [MaybeUninit<f32>]) };
        weight.linear(x, &epilogue, out);
        dst
    }

    /// Plain; smoothed with both second planes (activations from output 64) and exact channels
    /// at both edges and weight groups of 32 inputs (30, rounded up); two weight planes; exact
    /// channels with groups of 64.
    fn option_sets(k: usize) -> Vec<Int8Options> {
        let smoothing = random(k, 5).iter().map(|v| 0.5 + v.abs()).collect();
        vec![
            Int8Options::default(),
            Int8Options {
                smoothing: Some(smoothing),
                fine_weights: true,
                fine_activations_from: Some(64),
                exact_channels: vec![0, 3, k - 1],
                weight_group: Some(30),
            },
            Int8Options {
                exact_channels: vec![1, k / 2],
                weight_group: Some(64),
                ..Int8Options::default()
            },
            Int8Options {
                fine_weights: true,
                ..Int8Options::default()
            },
        ]
    }

    fn check(backend: Int8Backend, m: usize, n: usize, k: usize) {
        let (x, w) = (random(m * k, 11), random(n * k, 12));
        for options in option_sets(k) {
            let got = run(backend, &x, &w, n, &options);
            let want = reference(&x, &w, n, k, &options);
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                // Only the f32 sums' order differs (none for VNNI, whose i32 sums are exact).
                assert!(
                    (g - r).abs() <= 1e-5 * (1.0 + r.abs()) * (k as f32).sqrt(),
                    "{backend:?} {m}×{n}×{k} {options:?} at {i}: {g} vs {r}"
                );
            }
        }
    }

    #[test]
    fn quantized_rows_round_trip_within_half_a_step() {
        let row: Vec<f32> = random(100, 3).iter().map(|v| v * 4.0 + 1.0).collect();
        let (mut u, mut f) = (vec![0u8; 104], vec![0u8; 104]);
        let (step, zero) = quantize_row_scalar(&row, None, &mut u, Some(&mut f));
        for ((&v, &q), &r) in row.iter().zip(&u).zip(&f) {
            let coarse = step * (q as i32 - zero) as f32;
            assert!((coarse - v).abs() <= step * 0.5001, "{v}");
            let fine = coarse + fine_step(step).0 * (r as i32 - FINE_ZERO) as f32;
            assert!((fine - v).abs() <= step / FINE * 0.5001, "{v}");
        }
        assert!(u[100..].iter().chain(&f[100..]).all(|&b| b == 0), "padding");
        // A row of zeros stays zeros, and zero is exact in any row.
        let (step, zero) = quantize_row_scalar(&[0.0; 8], None, &mut u[..8], None);
        assert!(u[..8].iter().all(|&q| q as i32 == zero) && step > 0.0);
        let (weight_scale, q) = quantize_weight_row(&[0.5, -1.0, 0.25]);
        assert_eq!((weight_scale, q), (1.0 / 127.0, vec![64, -127, 32]));
    }

    #[test]
    fn outlier_channels_are_the_widest_after_smoothing() {
        let gamma = [1.0, -9.0, 0.5, 4.0, 1.0];
        let beta = [0.0, 0.0, 6.0, 0.0, -0.5];
        // Reach 2|γ| + |β|: 2, 18, 7, 8, 2.5.
        assert_eq!(outlier_channels_after_norm(&gamma, &beta, None, 2), [1, 3]);
        // Smoothing divides it: 2, 2, 7, 8, 2.5.
        let smoothing = [1.0, 9.0, 1.0, 1.0, 1.0];
        let channels = outlier_channels_after_norm(&gamma, &beta, Some(&smoothing), 3);
        assert_eq!(channels, [2, 3, 4]);
    }

    #[test]
    fn weight_groups_round_trip_within_half_their_step() {
        let (n, k) = (3, 70);
        let w: Vec<f32> = random(n * k, 8).iter().map(|v| v * 2.0).collect();
        for fine in [false, true] {
            let planes = quantize_weight(&w, k, None, fine, Some(30));
            // Groups of 32 inputs (30 rounded up to whole quads): 0..32, 32..64, 64..70.
            let groups: Vec<_> = planes
                .iter()
                .filter(|p| !p.fine)
                .map(|p| &p.inputs)
                .collect();
            assert_eq!(groups, [&(0..32), &(32..64), &(64..70)]);
            let got = dequantize(&planes, n, k, |_| true);
            for (j, (row, want)) in got.chunks_exact(k).zip(w.chunks_exact(k)).enumerate() {
                for inputs in &groups {
                    let max = want[(*inputs).clone()]
                        .iter()
                        .fold(0f32, |m, v| m.max(v.abs()));
                    let step = max / WEIGHT_LEVELS / if fine { FINE } else { 1.0 };
                    for i in (*inputs).clone() {
                        let d = (row[i] - want[i]).abs();
                        assert!(
                            d <= step * 0.5001,
                            "fine {fine}, output {j}, input {i}: {d}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn vector_quantization_gives_the_scalar_bytes() {
        if !vnni::available() {
            return; // the scalar code is the only code on this CPU
        }
        let row: Vec<f32> = random(389, 4).iter().map(|v| v * 3.0 - 0.5).collect();
        let inv: Vec<f32> = random(389, 6).iter().map(|v| 0.2 + v.abs()).collect();
        for smoothing in [None, Some(inv.as_slice())] {
            let (mut a, mut fa) = (vec![7u8; 392], vec![7u8; 392]);
            let (mut b, mut fb) = (vec![9u8; 392], vec![9u8; 392]);
            let scalar = quantize_row_scalar(&row, smoothing, &mut a, Some(&mut fa));
            // SAFETY: `available` checked the instructions.
            let vector = unsafe { vnni::quantize_row(&row, smoothing, &mut b, Some(&mut fb)) };
            assert_eq!(scalar, vector);
            assert_eq!(a, b);
            assert_eq!(fa, fb);
        }
    }

    #[test]
    fn emulated_products_are_the_quantized_operands_summed() {
        for (m, n, k) in [(1, 8, 16), (37, 70, 70), (70, 130, 128)] {
            check(Int8Backend::Emulated, m, n, k);
        }
    }

    #[test]
    fn vnni_gives_the_exact_sums_for_any_shape() {
        if !crate::fixtures::cpu_feature_test_runs(
            "int8::tests::vnni_gives_the_exact_sums_for_any_shape",
            Int8Backend::detect() == Int8Backend::Vnni,
            "ATTUNE_REQUIRE_VNNI",
            "this CPU has no AVX-512 VNNI (the emulated path is tested)",
        ) {
            return;
        }
        // Rows, outputs and inputs off every edge (6-row kernels, 64-output panels, 4-input
        // quads, 16-lane quantization), one row, and more rows than one task.
        for (m, n, k) in [(1, 8, 16), (37, 70, 70), (70, 130, 128), (401, 130, 387)] {
            check(Int8Backend::Vnni, m, n, k);
        }
    }

    /// Relative error of the int8 product against f32 (root of summed squares).
    fn relative_error(x: &[f32], w: &[f32], n: usize, options: &Int8Options) -> f64 {
        let k = w.len() / n;
        let got = run(Int8Backend::detect(), x, w, n, options);
        let (mut err, mut norm) = (0f64, 0f64);
        for (r, row) in x.chunks_exact(k).enumerate() {
            for (j, wrow) in w.chunks_exact(k).enumerate() {
                let exact: f32 = row.iter().zip(wrow).map(|(a, b)| a * b).sum();
                err += ((got[r * n + j] - exact) as f64).powi(2);
                norm += (exact as f64).powi(2);
            }
        }
        (err / norm).sqrt()
    }

    #[test]
    fn finer_options_bring_the_products_closer_to_f32() {
        let (m, n, k) = (20, 128, 384);
        // Activations with one outlier channel, as after BERT's layer norms.
        let mut x = random(m * k, 21);
        for row in x.chunks_exact_mut(k) {
            row[7] *= 40.0;
        }
        let w = random(n * k, 22);
        let plain = relative_error(&x, &w, n, &Int8Options::default());
        // Balanced as `smoothing_after_norm` balances: the square root of the channel's excess.
        let mut smoothing = vec![1f32; k];
        smoothing[7] = 40f32.sqrt();
        let smoothed = Int8Options {
            smoothing: Some(smoothing),
            ..Int8Options::default()
        };
        let smooth = relative_error(&x, &w, n, &smoothed);
        let fine = Int8Options {
            fine_weights: true,
            fine_activations_from: Some(0),
            ..smoothed
        };
        let finest = relative_error(&x, &w, n, &fine);
        let outlier_exact = Int8Options {
            exact_channels: vec![7],
            ..Int8Options::default()
        };
        let exact = relative_error(&x, &w, n, &outlier_exact);
        assert!(plain < 0.05, "plain {plain}");
        assert!(smooth < plain / 1.5, "smoothed {smooth} vs plain {plain}");
        assert!(exact < smooth, "exact outlier {exact} vs smoothed {smooth}");
        assert!(
            finest < smooth / 20.0,
            "both planes {finest} vs smoothed {smooth}"
        );
        // Weights with one large input column: groups confine its coarse scale to its group.
        let mut w = random(n * k, 23);
        for row in w.chunks_exact_mut(k) {
            row[300] *= 30.0;
        }
        let x = random(m * k, 24);
        let plain = relative_error(&x, &w, n, &Int8Options::default());
        let grouped = Int8Options {
            weight_group: Some(128),
            ..Int8Options::default()
        };
        let grouped = relative_error(&x, &w, n, &grouped);
        assert!(grouped < plain / 1.5, "groups {grouped} vs plain {plain}");
    }
}
