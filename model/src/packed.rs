//! Linear layers packed once for reduced-precision products on the CPU (opt-in per model and per
//! collection through [`crate::Precision::Bf16`] and [`crate::Precision::Int8`]).
//!
//! A [`PackedLinear`] holds a layer's weight narrowed once, when the model is set to a reduced
//! precision ([`Scheme`]); each call narrows the activations the same way and sums the products
//! in f32 (int8: exactly in i32, then scaled; see [`crate::int8`]).
//!
//! bf16 rounds both operands to nearest even. Two backends give the same values up to the order
//! of the f32 sums:
//! - [`Bf16Backend::Amx`]: the weight packed into AMX tiles and the products run on the tile
//!   unit (`TDPBF16PS`: 16×16 f32 sums of 32 bf16 pairs per instruction), on CPUs with AMX-BF16
//!   (Intel Sapphire Rapids and later) where the OS grants the tile state;
//! - [`Bf16Backend::Emulated`]: elsewhere, the rounded operands go through the f32 GEMM. The
//!   vectors are the bf16 path's, with no speed-up; a warning says so once per process.
//!
//! Sums are in f32 and the bias and GELU are applied in f32, so only the operands of the
//! products are narrowed. Attention products stay in f32.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::int8::{Int8Backend, Int8Options, Int8Weight};
use crate::kernels::{
    contiguous, gelu_erf_in_place, linear_rows, Epilogue, NormWeights, RowEpilogue,
};

/// How this process runs bf16 products on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Backend {
    /// On the AMX tile unit.
    Amx,
    /// bf16-rounded operands through the f32 GEMM: the same vectors, at f32 speed.
    Emulated,
}

impl Bf16Backend {
    /// The backend of this CPU and OS, detected once (and logged once).
    pub fn detect() -> Bf16Backend {
        static BACKEND: OnceLock<Bf16Backend> = OnceLock::new();
        *BACKEND.get_or_init(|| {
            if std::env::var_os("ATTUNE_BF16_EMULATED").is_some() {
                tracing::info!("bf16 products emulated through f32 (ATTUNE_BF16_EMULATED is set)");
                return Bf16Backend::Emulated;
            }
            match amx::enable() {
                Ok(()) => {
                    tracing::info!("bf16 products run on AMX tiles");
                    Bf16Backend::Amx
                }
                Err(why) => {
                    tracing::warn!(
                        "bf16 products are emulated through f32 and run no faster than f32: {why}"
                    );
                    Bf16Backend::Emulated
                }
            }
        })
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), as its 16 bits.
/// Branch-free, so loops over it vectorize.
#[inline(always)]
pub fn to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x40;
    let is_nan = bits & 0x7fff_ffff > 0x7f80_0000;
    (if is_nan { quiet_nan } else { rounded }) as u16
}

/// `x` rounded to the nearest bfloat16, widened back to f32.
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits((to_bf16_bits(x) as u32) << 16)
}

/// How a [`PackedLinear`] narrows its products' operands, and on which backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Scheme {
    /// Both operands rounded to bfloat16.
    Bf16(Bf16Backend),
    /// Weights quantized per output, activations per row, to 8 bits, finer where the options
    /// say ([`crate::int8`]).
    Int8(Int8Backend, Int8Options),
}

/// A linear layer `y = x·wᵀ + b` whose products run in reduced precision. The weight is
/// narrowed (and packed for the backend) once; the bias stays f32.
pub struct PackedLinear {
    /// Output features.
    n: usize,
    /// Input features.
    k: usize,
    bias: Vec<f32>,
    weight: PackedWeight,
}

enum PackedWeight {
    Tiles(amx::Tiles),
    Rounded(Vec<f32>),
    Int8(Int8Weight),
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.weight {
            PackedWeight::Tiles(_) => "bf16 amx",
            PackedWeight::Rounded(_) => "bf16 emulated",
            PackedWeight::Int8(_) => "int8",
        };
        f.debug_struct("PackedLinear")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("backend", &backend)
            .finish()
    }
}

impl PackedLinear {
    /// Narrows and packs `weight` (`(n, k)`, f32 on the CPU) as `scheme` says; `bias`: `(n)`.
    pub fn new(weight: &Tensor, bias: &Tensor, scheme: &Scheme) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        let bias = bias.to_vec1::<f32>()?;
        if bias.len() != n {
            candle_core::bail!("bf16 linear: weight ({n}, {k}), bias {}", bias.len());
        }
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let weight = match scheme {
            Scheme::Bf16(Bf16Backend::Amx) => PackedWeight::Tiles(amx::Tiles::pack(&w, n, k)),
            Scheme::Bf16(Bf16Backend::Emulated) => {
                PackedWeight::Rounded(w.iter().map(|&x| round_to_bf16(x)).collect())
            }
            Scheme::Int8(backend, options) => {
                PackedWeight::Int8(Int8Weight::new(&w, n, k, *backend, options))
            }
        };
        Ok(PackedLinear { n, k, bias, weight })
    }

    /// The layer's `[bf16(w), bias]` concatenated along the outputs (the fused Q/K/V projection).
    pub fn concatenated(parts: &[(&Tensor, &Tensor)], scheme: &Scheme) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|(w, _)| *w).collect();
        let biases: Vec<&Tensor> = parts.iter().map(|(_, b)| *b).collect();
        Self::new(
            &Tensor::cat(&weights, 0)?,
            &Tensor::cat(&biases, 0)?,
            scheme,
        )
    }

    /// `dst ← epilogue(x̂·ŵᵀ + bias)` for row-major `x` (m×k) and `dst` (m×n), `x̂` and `ŵ` the
    /// narrowed operands.
    pub fn apply_rows(&self, x: &[f32], epilogue: Epilogue, dst: &mut [f32]) {
        // SAFETY: f32 and MaybeUninit<f32> have one layout, and every element written through
        // `init_rows` is an initialized f32.
        let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
        self.init_rows(x, epilogue, dst);
    }

    /// [`PackedLinear::apply_rows`] into an uninitialized `dst`; every element is written (the
    /// output buffer is not cleared first: a pass over memory the products overwrite anyway).
    pub fn init_rows(&self, x: &[f32], epilogue: Epilogue, dst: &mut [MaybeUninit<f32>]) {
        debug_assert_eq!(x.len() / self.k.max(1) * self.n, dst.len());
        match &self.weight {
            PackedWeight::Tiles(tiles) => tiles.linear(x, &self.bias, epilogue, dst),
            PackedWeight::Rounded(w) => {
                let rounded: Vec<f32> = x.par_iter().map(|&v| round_to_bf16(v)).collect();
                let epilogue = RowEpilogue::Bias {
                    bias: &self.bias,
                    activation: epilogue,
                };
                linear_rows(&rounded, self.k, w, &epilogue, dst);
            }
            PackedWeight::Int8(weight) => weight.linear(
                x,
                &RowEpilogue::Bias {
                    bias: &self.bias,
                    activation: epilogue,
                },
                dst,
            ),
        }
    }

    /// `dst ← layer_norm(x̂·ŵᵀ + bias + residual)` row by row (a post-norm sub-layer's end);
    /// `residual` is m×n like `dst`. int8 applies the norm while each row is in cache; bf16
    /// after its products.
    fn init_rows_add_norm(
        &self,
        x: &[f32],
        residual: &[f32],
        norm: &NormWeights,
        dst: &mut [MaybeUninit<f32>],
    ) {
        let epilogue = RowEpilogue::AddNorm {
            bias: &self.bias,
            residual,
            norm,
        };
        if let PackedWeight::Int8(weight) = &self.weight {
            return weight.linear(x, &epilogue, dst);
        }
        self.init_rows(x, Epilogue::None, dst);
        // SAFETY: `init_rows` wrote every element.
        let dst = unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) };
        let zeros = vec![0f32; self.n];
        let epilogue = RowEpilogue::AddNorm {
            bias: &zeros,
            residual,
            norm,
        };
        dst.par_chunks_mut(self.n.max(1))
            .enumerate()
            .for_each(|(i, row)| epilogue.apply(i, row));
    }

    /// `layer_norm(xs·ŵᵀ + bias + residual)` for `xs` (`(..., k)`) and `residual` (`(..., n)`),
    /// f32 on the CPU.
    pub fn forward_add_norm(
        self: &Arc<Self>,
        xs: &Tensor,
        residual: &Tensor,
        norm: &NormWeights,
    ) -> Result<Tensor> {
        xs.contiguous()?.apply_op2_no_bwd(
            &residual.contiguous()?,
            &AddNormOp {
                layer: self.clone(),
                norm: norm.clone(),
            },
        )
    }

    /// `epilogue(x̂·ŵᵀ + bias)` for row-major `x` (m×k), as a new m×n buffer.
    fn apply(&self, x: &[f32], epilogue: Epilogue) -> Vec<f32> {
        let len = x.len() / self.k.max(1) * self.n;
        let mut dst = Vec::with_capacity(len);
        self.init_rows(x, epilogue, &mut dst.spare_capacity_mut()[..len]);
        // SAFETY: `init_rows` wrote all `len` elements.
        unsafe { dst.set_len(len) };
        dst
    }

    /// The layer applied to `xs` (`(..., k)`, f32 on the CPU), then `epilogue`.
    pub fn forward(self: &Arc<Self>, xs: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        xs.contiguous()?.apply_op1_no_bwd(&LinearOp {
            layer: self.clone(),
            epilogue,
        })
    }
}

struct LinearOp {
    layer: Arc<PackedLinear>,
    epilogue: Epilogue,
}

impl CustomOp1 for LinearOp {
    fn name(&self) -> &'static str {
        "attune-packed-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(xs, layout, "packed linear input")?;
        let (n, k) = (self.layer.n, self.layer.k);
        let dims = layout.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("packed linear: input {dims:?}, weight ({n}, {k})");
        }
        let dst = self.layer.apply(x, self.epilogue);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = n;
        Ok((CpuStorage::F32(dst), Shape::from_dims(&out_dims)))
    }
}

struct AddNormOp {
    layer: Arc<PackedLinear>,
    norm: NormWeights,
}

impl CustomOp2 for AddNormOp {
    fn name(&self) -> &'static str {
        "attune-packed-linear-add-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(xs, layout, "packed linear input")?;
        let residual = contiguous(residual, residual_layout, "packed linear residual")?;
        let (n, k) = (self.layer.n, self.layer.k);
        let dims = layout.shape().dims();
        if dims.last() != Some(&k) || residual.len() != x.len() / k * n {
            candle_core::bail!(
                "packed linear with norm: input {dims:?}, weight ({n}, {k}), residual {:?}",
                residual_layout.shape()
            );
        }
        let mut dst = Vec::with_capacity(residual.len());
        let out = &mut dst.spare_capacity_mut()[..residual.len()];
        self.layer.init_rows_add_norm(x, residual, &self.norm, out);
        // SAFETY: `init_rows_add_norm` wrote every element.
        unsafe { dst.set_len(residual.len()) };
        Ok((CpuStorage::F32(dst), residual_layout.shape().clone()))
    }
}

/// Rows per feed-forward block: the `rows × ff` intermediate stays within the caches.
const FEED_FORWARD_ROWS: usize = 512;

struct FeedForwardOp {
    up: Arc<PackedLinear>,
    down: Arc<PackedLinear>,
    /// The sub-layer's norm, applied with the input as the residual; `None`: no residual.
    norm: Option<NormWeights>,
}

impl CustomOp1 for FeedForwardOp {
    fn name(&self) -> &'static str {
        "attune-packed-feed-forward"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(xs, layout, "packed feed-forward input")?;
        let (h, ff) = (self.up.k, self.up.n);
        if layout.shape().dims().last() != Some(&h) || (self.down.n, self.down.k) != (h, ff) {
            candle_core::bail!(
                "packed feed-forward: input {:?}, up ({ff}, {h}), down ({}, {})",
                layout.shape(),
                self.down.n,
                self.down.k
            );
        }
        let mut dst = Vec::with_capacity(x.len());
        let mut inner = vec![0f32; FEED_FORWARD_ROWS * ff];
        let blocks = x.chunks(FEED_FORWARD_ROWS * h);
        let out = &mut dst.spare_capacity_mut()[..x.len()];
        for (xb, db) in blocks.zip(out.chunks_mut(FEED_FORWARD_ROWS * h)) {
            let inner = &mut inner[..xb.len() / h * ff];
            self.up.apply_rows(xb, Epilogue::GeluErf, inner);
            match &self.norm {
                Some(norm) => self.down.init_rows_add_norm(inner, xb, norm, db),
                None => self.down.init_rows(inner, Epilogue::None, db),
            }
        }
        // SAFETY: the blocks cover all of `x.len()` outputs, and `init_rows` wrote each.
        unsafe { dst.set_len(x.len()) };
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// BERT's feed-forward block `gelu(xs·upᵀ + b_up)·downᵀ + b_down` in packed products, row block
/// by row block, then with `norm` the sub-layer's end `layer_norm(… + xs)`. `xs`: `(..., h)`;
/// `up`: h → ff; `down`: ff → h.
pub fn feed_forward(
    xs: &Tensor,
    up: &Arc<PackedLinear>,
    down: &Arc<PackedLinear>,
    norm: Option<&NormWeights>,
) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&FeedForwardOp {
        up: up.clone(),
        down: down.clone(),
        norm: norm.cloned(),
    })
}

/// The AMX tile kernels. Everything that touches the tile registers is here.
mod amx {
    use super::{gelu_erf_in_place, to_bf16_bits, Epilogue, MaybeUninit, RefCell};
    use rayon::prelude::*;

    /// One 64-byte row of a tile: 32 bf16 values.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    pub(super) struct Line([u16; 32]);

    const ZERO_LINE: Line = Line([0; 32]);

    /// Rows (and bf16 pairs) of a tile.
    const TILE_ROWS: usize = 16;
    /// bf16 values along k in one tile.
    const TILE_K: usize = 32;
    /// Rows and columns of the 2×2-tile block each kernel call computes.
    const BLOCK: usize = 32;
    /// Weight bytes of the column panel one pass streams over (kept in the L2 cache).
    const PANEL_BYTES: usize = 256 * 1024;
    /// Outputs per pass for 768 inputs (tests cover several passes).
    #[cfg(test)]
    pub(super) const PANEL_COLUMNS_768: usize = PANEL_BYTES / (768 * 2);

    /// Whether the CPU has AMX-BF16 and the OS grants this process the tile state.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    pub(super) fn enable() -> Result<(), String> {
        // CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
        // SAFETY: CPUID is available on every x86_64 CPU (the call is safe from Rust 1.94).
        #[allow(unused_unsafe)]
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
            return Err("this CPU has no AMX-BF16 (needs Intel Sapphire Rapids or later)".into());
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: asks the kernel for permission to use the tile data state; no memory is passed.
        let granted = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if granted != 0 {
            return Err(format!(
                "the kernel refused the AMX tile state ({})",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    pub(super) fn enable() -> Result<(), String> {
        Err("AMX tiles are used on x86_64 Linux only".into())
    }

    /// A weight `(n, k)` rounded to bf16 in the tile layout of `TDPBF16PS`'s second operand:
    /// tile `(t, b)` holds outputs `16t..16t+16` and inputs `32b..32b+32`; its line `r` holds,
    /// for each output `c`, the input pair `(32b + 2r, 32b + 2r + 1)` at `2c, 2c + 1`. Tiles of
    /// one output group are consecutive along k. Zero beyond `n` and `k`; an even count of groups.
    pub(super) struct Tiles {
        lines: Vec<Line>,
        k_blocks: usize,
        groups: usize,
    }

    impl Tiles {
        pub(super) fn pack(w: &[f32], n: usize, k: usize) -> Tiles {
            let k_blocks = k.div_ceil(TILE_K);
            let groups = n.div_ceil(BLOCK) * 2;
            let mut lines = vec![ZERO_LINE; groups * k_blocks * TILE_ROWS];
            lines
                .par_chunks_mut(k_blocks * TILE_ROWS)
                .enumerate()
                .for_each(|(group, tiles)| {
                    for (c, out) in (group * TILE_ROWS..n.min((group + 1) * TILE_ROWS)).enumerate()
                    {
                        let row = &w[out * k..(out + 1) * k];
                        for (i, &v) in row.iter().enumerate() {
                            let (block, within) = (i / TILE_K, i % TILE_K);
                            let line = &mut tiles[block * TILE_ROWS + within / 2];
                            line.0[2 * c + within % 2] = to_bf16_bits(v);
                        }
                    }
                });
            Tiles {
                lines,
                k_blocks,
                groups,
            }
        }

        /// `dst ← epilogue(bf16(x)·wᵀ + bias)`; `x`: m×k, `dst`: m×n, row-major.
        pub(super) fn linear(
            &self,
            x: &[f32],
            bias: &[f32],
            epilogue: Epilogue,
            dst: &mut [MaybeUninit<f32>],
        ) {
            let n = bias.len();
            if dst.is_empty() {
                return;
            }
            let (m, k) = (dst.len() / n, x.len() / (dst.len() / n));
            let threads = rayon::current_num_threads().max(1);
            let panels_per_task = m.div_ceil(BLOCK).div_ceil(threads).clamp(1, 16);
            let rows_per_task = panels_per_task * BLOCK;
            x.par_chunks(rows_per_task * k)
                .zip(dst.par_chunks_mut(rows_per_task * n))
                .for_each(|(x, dst)| {
                    ROUNDED_ROWS.with(|a| {
                        let mut a = a.borrow_mut();
                        round_rows(x, k, self.k_blocks, &mut a);
                        // SAFETY: `enable` succeeded (a `Tiles` exists only for the AMX
                        // backend); `a` holds whole 32-row panels of `k_blocks` lines each.
                        unsafe { self.rows(&a, bias, epilogue, dst) };
                    })
                });
        }

        /// One task: the rows of `dst` from their rounded inputs `a` (32-row panels).
        unsafe fn rows(
            &self,
            a: &[Line],
            bias: &[f32],
            epilogue: Epilogue,
            dst: &mut [MaybeUninit<f32>],
        ) {
            let n = bias.len();
            let m = dst.len() / n;
            let pairs = self.groups / 2;
            let pairs_per_panel = (PANEL_BYTES / (self.k_blocks * 2 * 1024)).clamp(1, pairs);
            let mut block = [0f32; BLOCK * BLOCK];
            configure();
            for first_pair in (0..pairs).step_by(pairs_per_panel) {
                let last_pair = (first_pair + pairs_per_panel).min(pairs);
                for panel in 0..m.div_ceil(BLOCK) {
                    let a = &a[panel * BLOCK * self.k_blocks..][..BLOCK * self.k_blocks];
                    for pair in first_pair..last_pair {
                        let b0 = &self.lines[2 * pair * self.k_blocks * TILE_ROWS..];
                        let b1 = &self.lines[(2 * pair + 1) * self.k_blocks * TILE_ROWS..];
                        kernel(a, b0, b1, self.k_blocks, &mut block);
                        let rows = (m - panel * BLOCK).min(BLOCK);
                        let col = pair * BLOCK;
                        let cols = (n - col).min(BLOCK);
                        for (i, sums) in block.chunks_exact(BLOCK).take(rows).enumerate() {
                            let out = &mut dst[(panel * BLOCK + i) * n + col..][..cols];
                            for ((y, s), b) in out.iter_mut().zip(sums).zip(&bias[col..]) {
                                y.write(s + b);
                            }
                        }
                    }
                }
            }
            release();
            // Once over the task's rows: per 32-column block, the call overhead dominated.
            // SAFETY: the passes wrote every (row, output) of `dst`.
            let dst = &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]);
            if epilogue == Epilogue::GeluErf {
                gelu_erf_in_place(dst);
            }
        }
    }

    thread_local! {
        /// Each thread's rounded rows, reused from call to call (a fresh buffer per call spent
        /// a tenth of the encoding time clearing pages).
        static ROUNDED_ROWS: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    }

    /// `x` (rows × k) rounded to bf16 into `lines` as whole 32-row panels of `k_blocks` lines
    /// per row, zero beyond `k`. Rows past the last one keep whatever they held: they only
    /// reach output rows that are never written out.
    fn round_rows(x: &[f32], k: usize, k_blocks: usize, lines: &mut Vec<Line>) {
        let rows = x.len() / k;
        let len = rows.div_ceil(BLOCK) * BLOCK * k_blocks;
        if lines.len() < len {
            lines.resize(len, ZERO_LINE);
        }
        // SAFETY: a `Tiles` exists only on an AMX CPU, which has AVX-512 (F, BW, VL).
        unsafe { round_rows_avx512(x, k, k_blocks, &mut lines[..len]) };
    }

    #[cfg_attr(
        target_arch = "x86_64",
        target_feature(enable = "avx512f,avx512bw,avx512vl")
    )]
    unsafe fn round_rows_avx512(x: &[f32], k: usize, k_blocks: usize, lines: &mut [Line]) {
        for (row, out) in x.chunks_exact(k).zip(lines.chunks_exact_mut(k_blocks)) {
            let (whole, rest) = row.split_at(k / TILE_K * TILE_K);
            for (chunk, line) in whole.chunks_exact(TILE_K).zip(out.iter_mut()) {
                for (v, slot) in chunk.iter().zip(line.0.iter_mut()) {
                    *slot = to_bf16_bits(*v);
                }
            }
            if let Some(line) = out.get_mut(k / TILE_K) {
                *line = ZERO_LINE;
                for (v, slot) in rest.iter().zip(line.0.iter_mut()) {
                    *slot = to_bf16_bits(*v);
                }
            }
        }
    }

    /// The tile configuration: palette 1, tiles 0–7 of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    /// Loads the tile configuration on this thread.
    unsafe fn configure() {
        let mut config = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for tile in 0..8 {
            config.bytes_per_row[tile] = 64;
            config.rows[tile] = TILE_ROWS as u8;
        }
        std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
    }

    /// Releases this thread's tile state (so context switches no longer save it).
    unsafe fn release() {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }

    /// `block ← a·bᵀ` for a 32-row panel `a` (row stride `k_blocks` lines) and the two
    /// 16-output weight groups starting at `b0` and `b1`: tiles 0–3 accumulate the 2×2 blocks,
    /// 4–5 hold the rows, 6–7 the weights.
    #[inline(always)]
    unsafe fn kernel(
        a: &[Line],
        b0: &[Line],
        b1: &[Line],
        k_blocks: usize,
        block: &mut [f32; BLOCK * BLOCK],
    ) {
        use std::arch::asm;
        let a_stride = k_blocks * 64;
        let (a, b0, b1) = (a.as_ptr(), b0.as_ptr(), b1.as_ptr());
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for kb in 0..k_blocks {
            asm!(
                "tileloadd tmm4, [{a0} + {stride}*1]",
                "tileloadd tmm5, [{a1} + {stride}*1]",
                "tileloadd tmm6, [{b0} + {line}*1]",
                "tileloadd tmm7, [{b1} + {line}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a.add(kb),
                a1 = in(reg) a.add(TILE_ROWS * k_blocks + kb),
                b0 = in(reg) b0.add(kb * TILE_ROWS),
                b1 = in(reg) b1.add(kb * TILE_ROWS),
                stride = in(reg) a_stride,
                line = in(reg) 64usize,
                options(nostack, readonly)
            );
        }
        let c = block.as_mut_ptr();
        asm!(
            "tilestored [{c0} + {stride}*1], tmm0",
            "tilestored [{c1} + {stride}*1], tmm1",
            "tilestored [{c2} + {stride}*1], tmm2",
            "tilestored [{c3} + {stride}*1], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(TILE_ROWS),
            c2 = in(reg) c.add(TILE_ROWS * BLOCK),
            c3 = in(reg) c.add(TILE_ROWS * BLOCK + TILE_ROWS),
            stride = in(reg) BLOCK * 4,
            options(nostack)
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{DType, Device};

    pub(crate) fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16_bits(1.0), 0x3f80);
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties go to the even mantissa (1.0).
        assert_eq!(round_to_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_to_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round_to_bf16(-2.5), -2.5);
        assert!(round_to_bf16(f32::NAN).is_nan());
        assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
    }

    /// The reference: f32 sums of the bf16-rounded operands, in f64.
    fn reference(x: &[f32], w: &[f32], bias: &[f32], k: usize, gelu: bool) -> Vec<f32> {
        let n = bias.len();
        let mut out = Vec::with_capacity(x.len() / k * n);
        for row in x.chunks_exact(k) {
            for (j, wrow) in w.chunks_exact(k).enumerate() {
                let dot: f64 = row
                    .iter()
                    .zip(wrow)
                    .map(|(a, b)| round_to_bf16(*a) as f64 * round_to_bf16(*b) as f64)
                    .sum();
                out.push(dot as f32 + bias[j]);
            }
        }
        if gelu {
            gelu_erf_in_place(&mut out);
        }
        out
    }

    fn check(backend: Bf16Backend, m: usize, n: usize, k: usize, epilogue: Epilogue) {
        let (x, w, bias) = (random(m * k, 1), random(n * k, 2), random(n, 3));
        let weight = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(bias.clone(), n, &Device::Cpu).unwrap();
        let layer = Arc::new(PackedLinear::new(&weight, &b, &Scheme::Bf16(backend)).unwrap());
        let xs = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
        let got = layer.forward(&xs, epilogue).unwrap();
        assert_eq!(got.dims(), &[m, n]);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = reference(&x, &w, &bias, k, epilogue == Epilogue::GeluErf);
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - r).abs() <= 1e-4 * (1.0 + r.abs()) * (k as f32).sqrt(),
                "{backend:?} {m}×{n}×{k} at {i}: {g} vs {r}"
            );
        }
    }

    #[test]
    fn emulated_products_are_the_rounded_operands_summed_in_f32() {
        for (m, n, k) in [(1, 8, 16), (37, 50, 70), (70, 96, 128)] {
            check(Bf16Backend::Emulated, m, n, k, Epilogue::None);
        }
        check(Bf16Backend::Emulated, 33, 40, 64, Epilogue::GeluErf);
    }

    #[test]
    fn amx_tiles_give_the_emulated_values_for_any_shape() {
        if !crate::fixtures::cpu_feature_test_runs(
            "packed::tests::amx_tiles_give_the_emulated_values_for_any_shape",
            Bf16Backend::detect() == Bf16Backend::Amx,
            "ATTUNE_REQUIRE_AMX",
            "this CPU or OS offers no AMX-BF16 (the emulated path is tested)",
        ) {
            return;
        }
        // Shapes off every tile edge: rows, outputs and inputs not multiples of 16 or 32, a
        // panel wider than one pass (so several passes over the columns), and one row.
        for (m, n, k) in [(1, 8, 16), (37, 50, 70), (70, 96, 128), (129, 1100, 384)] {
            check(Bf16Backend::Amx, m, n, k, Epilogue::None);
        }
        check(Bf16Backend::Amx, 33, 40, 64, Epilogue::GeluErf);
        let wide = 3 * amx::PANEL_COLUMNS_768 + 7;
        check(Bf16Backend::Amx, 64, wide, 768, Epilogue::None);
    }

    #[test]
    fn feed_forward_applies_up_gelu_then_down() {
        let (h, ff, m) = (48, 96, FEED_FORWARD_ROWS + 5);
        let up_w = Tensor::from_vec(random(ff * h, 4), (ff, h), &Device::Cpu).unwrap();
        let up_b = Tensor::from_vec(random(ff, 5), ff, &Device::Cpu).unwrap();
        let down_w = Tensor::from_vec(random(h * ff, 6), (h, ff), &Device::Cpu).unwrap();
        let down_b = Tensor::from_vec(random(h, 7), h, &Device::Cpu).unwrap();
        let xs = Tensor::from_vec(random(m * h, 8), (m, h), &Device::Cpu).unwrap();
        for scheme in [
            Scheme::Bf16(Bf16Backend::detect()),
            Scheme::Int8(Int8Backend::detect(), Int8Options::default()),
        ] {
            let up = Arc::new(PackedLinear::new(&up_w, &up_b, &scheme).unwrap());
            let down = Arc::new(PackedLinear::new(&down_w, &down_b, &scheme).unwrap());
            let fused = feed_forward(&xs, &up, &down, None).unwrap();
            let inner = up.forward(&xs, Epilogue::GeluErf).unwrap();
            let two_steps = down.forward(&inner, Epilogue::None).unwrap();
            let diff = crate::kernels::tests::max_abs_diff(&fused, &two_steps);
            assert!(diff < 1e-5, "{scheme:?}: {diff}");
        }
    }

    /// The fused sub-layer end gives `layer_norm(linear(x) + residual)` for both schemes.
    #[test]
    fn add_norm_is_the_linear_then_the_residual_and_norm() {
        let (m, n, k) = (13, 48, 64);
        let w = Tensor::from_vec(random(n * k, 12), (n, k), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(random(n, 13), n, &Device::Cpu).unwrap();
        let xs = Tensor::from_vec(random(m * k, 14), (m, k), &Device::Cpu).unwrap();
        let residual = Tensor::from_vec(random(m * n, 15), (m, n), &Device::Cpu).unwrap();
        let norm = NormWeights {
            weight: random(n, 16).iter().map(|v| 1.0 + v / 2.0).collect(),
            bias: random(n, 17),
            eps: 1e-12,
        };
        let gamma = Tensor::from_vec(norm.weight.clone(), n, &Device::Cpu).unwrap();
        let beta = Tensor::from_vec(norm.bias.clone(), n, &Device::Cpu).unwrap();
        for scheme in [
            Scheme::Bf16(Bf16Backend::detect()),
            Scheme::Int8(Int8Backend::detect(), Int8Options::default()),
        ] {
            let layer = Arc::new(PackedLinear::new(&w, &b, &scheme).unwrap());
            let fused = layer.forward_add_norm(&xs, &residual, &norm).unwrap();
            let sum = (layer.forward(&xs, Epilogue::None).unwrap() + &residual).unwrap();
            let want = candle_nn::ops::layer_norm(&sum, &gamma, &beta, 1e-12).unwrap();
            let diff = crate::kernels::tests::max_abs_diff(&fused, &want);
            assert!(diff < 1e-4, "{scheme:?}: {diff}");
        }
    }

    #[test]
    fn int8_layers_add_the_bias_and_gelu_in_f32() {
        let (m, n, k) = (9, 70, 64);
        let w = Tensor::from_vec(random(n * k, 9), (n, k), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(random(n, 10), n, &Device::Cpu).unwrap();
        let zero = Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        let xs = Tensor::from_vec(random(m * k, 11), (m, k), &Device::Cpu).unwrap();
        let scheme = Scheme::Int8(Int8Backend::detect(), Int8Options::default());
        let with_bias = Arc::new(PackedLinear::new(&w, &b, &scheme).unwrap());
        let without = Arc::new(PackedLinear::new(&w, &zero, &scheme).unwrap());
        let plain = without.forward(&xs, Epilogue::None).unwrap();
        let biased = plain.broadcast_add(&b).unwrap();
        let got = with_bias.forward(&xs, Epilogue::None).unwrap();
        assert!(crate::kernels::tests::max_abs_diff(&got, &biased) < 1e-6);
        let mut want = biased.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        gelu_erf_in_place(&mut want);
        let got = with_bias.forward(&xs, Epilogue::GeluErf).unwrap();
        let want = Tensor::from_vec(want, (m, n), &Device::Cpu).unwrap();
        assert!(crate::kernels::tests::max_abs_diff(&got, &want) < 1e-6);
    }
}
