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

use std::time::Instant;

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Timed passes per shape.
const REPS: usize = 9;

/// Rows per feed-forward block, as in `kernels::feed_forward`.
const BLOCK_ROWS: usize = 2048;

/// `dst (m×n) = a (m×k) · bᵀ (b is n×k)`, all row-major, as attune's linear layers call it.
fn linear(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], dst: &mut [f32], par: Parallelism) {
    // SAFETY: a is m×k, b is n×k and dst m×n, row-major; the strides say so.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `dst (m×n) = a (m×k) · b (k×n)`, all row-major.
fn product(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], dst: &mut [f32], par: Parallelism) {
    // SAFETY: a is m×k, b is k×n and dst m×n, row-major; the strides say so.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Deterministic values in [-0.5, 0.5).
fn values(len: usize, period: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (i % period) as f32 / period as f32 - 0.5)
        .collect()
}

/// Times `run` (`flops` per call) and prints its line.
fn report(shape: &str, flops: f64, mut run: impl FnMut()) {
    run();
    let mut seconds: Vec<f64> = (0..REPS)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    let rate = |s: f64| flops / s / 1e9;
    println!(
        "{{\"tool\": \"gemm\", \"shape\": \"{shape}\", \"flops\": {flops:.0}, \
         \"best_gflops\": {:.1}, \"median_gflops\": {:.1}}}",
        rate(seconds[0]),
        rate(seconds[REPS / 2])
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
    report("square_1024", 2.0 * (n * n * n) as f64, || {
        product(n, n, n, &a, &b, &mut dst, par)
    });

    let x = values(rows * ff.max(3 * h), 97);
    let w = values(ff.max(3 * h) * h.max(ff), 89);
    let mut out = vec![0f32; rows * ff.max(3 * h)];
    let linear_rows = |k: usize, n: usize, block: usize, out: &mut [f32]| {
        for (xb, ob) in x[..rows * k]
            .chunks(block * k)
            .zip(out.chunks_mut(block * n))
        {
            linear(xb.len() / k, k, n, xb, &w[..n * k], ob, par);
        }
    };
    let flops = |k: usize, n: usize| 2.0 * (rows * k * n) as f64;
    report("qkv", flops(h, 3 * h), || {
        linear_rows(h, 3 * h, rows, &mut out)
    });
    report("output", flops(h, h), || linear_rows(h, h, rows, &mut out));
    report("up", flops(h, ff), || {
        linear_rows(h, ff, BLOCK_ROWS, &mut out)
    });
    report("down", flops(ff, h), || {
        linear_rows(ff, h, BLOCK_ROWS, &mut out)
    });

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
                let (q, k, v) = (&qkv[base..], &qkv[base + h..], &qkv[base + 2 * h..]);
                // SAFETY: Q, K and V rows are 3h apart in this text's block; the context block
                // (rows h apart, d wide at column head·d) belongs to this task alone.
                unsafe {
                    gemm(
                        seq,
                        seq,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        seq as isize,
                        false,
                        q.as_ptr(),
                        1,
                        (3 * h) as isize,
                        k.as_ptr(),
                        (3 * h) as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    gemm(
                        seq,
                        d,
                        seq,
                        (context_ptr as *mut f32).add(text * seq * h + head * d),
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        seq as isize,
                        v.as_ptr(),
                        1,
                        (3 * h) as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            },
        )
    });
}
