//! The `gemm` crate's f32 products at the shapes of a BERT encoder's forward pass, beside its
//! square n = 1024 sgemm, at the current thread count (`RAYON_NUM_THREADS`). One JSON line per
//! shape: `{"tool": "gemm", "shape", "flops", "best_gflops", "median_gflops"}`, rates in
//! GFLOP/s over [`REPS`] timed passes after a warm-up. `benches/peer/torch_gemm_shapes.py` prints
//! the same lines for torch; `scripts/bench-gemm-shapes.sh` runs both and weighs the shapes by
//! the forward pass's FLOPs: the rate a forward pass would reach if it did nothing but its
//! products.
//!
//! The shapes are attune's own calls (see `kernels.rs`): the Q/K/V and output projections over
//! all `batch · seq` rows, the feed-forward products in blocks of 2,048 rows, and the attention
//! as one product pair per (text, head), one task each, spread over the threads.
//!
//!     cargo run --release -p attune-model --example gemm_shapes -- [HIDDEN FF HEADS SEQ BATCH]
//!
//! Defaults: all-MiniLM-L6-v2 (384, 1536, 12 heads) on 32 texts of 256 tokens.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

#[path = "common/timing.rs"]
mod timing;

/// Timed passes per shape.
const REPS: usize = 9;

/// Rows per feed-forward block, as in `kernels::feed_forward`.
const BLOCK_ROWS: usize = 2048;

/// A matrix operand: its first element and its (row, column) strides in elements.
#[derive(Clone, Copy)]
struct Operand(*const f32, isize, isize);

/// `dst (m×n, rows dst_row_stride apart) = a (m×k) · b (k×n)`.
///
/// # Safety
/// Every element the strides reach lies inside its allocation, and no other thread writes the
/// part of `dst` they reach.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, k, n): (usize, usize, usize),
    dst: *mut f32,
    dst_row_stride: usize,
    a: Operand,
    b: Operand,
    par: Parallelism,
) {
    // The gemm crate takes each operand's column stride first, then its row stride.
    gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_row_stride as isize,
        false,
        a.0,
        a.2,
        a.1,
        b.0,
        b.2,
        b.1,
        0.0,
        1.0,
        false,
        false,
        false,
        par,
    )
}

/// Deterministic values in [-0.5, 0.5).
fn values(len: usize, period: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (i % period) as f32 / period as f32 - 0.5)
        .collect()
}

/// Times `run` (`flops` per call) and prints its line.
fn report(shape: &str, flops: f64, run: impl FnMut()) {
    let (best, median) = timing::best_and_median_seconds(REPS, run);
    println!(
        "{{\"tool\": \"gemm\", \"shape\": \"{shape}\", \"flops\": {flops:.0}, \
         \"best_gflops\": {:.1}, \"median_gflops\": {:.1}}}",
        flops / best / 1e9,
        flops / median / 1e9
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("HIDDEN FF HEADS SEQ BATCH are whole numbers")
        })
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (h, ff, heads, seq, batch) = (
        arg(0, 384),
        arg(1, 1536),
        arg(2, 12),
        arg(3, 256),
        arg(4, 32),
    );
    let rows = batch * seq;
    let par = match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    };

    let n = 1024;
    let (a, b) = (values(n * n, 97), values(n * n, 89));
    let mut dst = vec![0f32; n * n];
    let (a_op, b_op) = (
        Operand(a.as_ptr(), n as isize, 1),
        Operand(b.as_ptr(), n as isize, 1),
    );
    // SAFETY: a, b and dst are n×n row-major.
    report("square_1024", 2.0 * (n * n * n) as f64, || unsafe {
        product((n, n, n), dst.as_mut_ptr(), n, a_op, b_op, par)
    });

    let x = values(rows * ff.max(3 * h), 97);
    let w = values(ff.max(3 * h) * h.max(ff), 89);
    let mut out = vec![0f32; rows * ff.max(3 * h)];
    // `xs · wᵀ` (w is n×k row-major, read as its transpose) in blocks of `block` rows.
    let linear = |k: usize, n: usize, block: usize, out: &mut [f32]| {
        for (xb, ob) in x[..rows * k]
            .chunks(block * k)
            .zip(out.chunks_mut(block * n))
        {
            let (xs, wt) = (
                Operand(xb.as_ptr(), k as isize, 1),
                Operand(w.as_ptr(), 1, k as isize),
            );
            // SAFETY: xb is m×k and ob m×n row-major; w holds at least n×k values.
            unsafe { product((xb.len() / k, k, n), ob.as_mut_ptr(), n, xs, wt, par) }
        }
    };
    let flops = |k: usize, n: usize| 2.0 * (rows * k * n) as f64;
    report("qkv", flops(h, 3 * h), || linear(h, 3 * h, rows, &mut out));
    report("output", flops(h, h), || linear(h, h, rows, &mut out));
    report("up", flops(h, ff), || linear(h, ff, BLOCK_ROWS, &mut out));
    report("down", flops(ff, h), || linear(ff, h, BLOCK_ROWS, &mut out));

    let d = h / heads;
    let qkv = values(rows * 3 * h, 83);
    let mut context = vec![0f32; rows * h];
    let context_ptr = context.as_mut_ptr() as usize;
    let attention_flops = 4.0 * (batch * heads * seq * seq * d) as f64;
    report("attention", attention_flops, || {
        (0..batch * heads).into_par_iter().for_each_init(
            || vec![0f32; seq * seq],
            |scores, task| {
                let (text, head) = (task / heads, task % heads);
                let base = text * seq * 3 * h + head * d;
                let row = (3 * h) as isize;
                let q = Operand(qkv[base..].as_ptr(), row, 1);
                let kt = Operand(qkv[base + h..].as_ptr(), 1, row);
                let v = Operand(qkv[base + 2 * h..].as_ptr(), row, 1);
                let probabilities = Operand(scores.as_ptr(), seq as isize, 1);
                let context = (context_ptr as *mut f32).wrapping_add(text * seq * h + head * d);
                // SAFETY: Q, K and V rows are 3h apart in this text's block; scores is seq×seq;
                // the context block (rows h apart, d wide at column head·d) is this task's alone.
                unsafe {
                    product(
                        (seq, d, seq),
                        scores.as_mut_ptr(),
                        seq,
                        q,
                        kt,
                        Parallelism::None,
                    );
                    product(
                        (seq, seq, d),
                        context,
                        h,
                        probabilities,
                        v,
                        Parallelism::None,
                    );
                }
            },
        )
    });
}
