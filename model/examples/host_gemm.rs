//! The host's matrix-product rates at the current thread count (`RAYON_NUM_THREADS`), printed
//! as one JSON line for the benchmark scripts: f32 sgemm through the `gemm` crate (what
//! attune's f32 kernels call), attune's bf16 products ([`attune_model::packed`]: AMX tiles, or
//! emulated through f32) and its int8 products ([`attune_model::int8`]: AVX-512 VNNI, or
//! emulated), square n = 1024, after a warm-up, in GFLOP/s (int8: 10⁹ multiply-adds × 2 per
//! second, quantizing the activations included). Each rate is the best of [`REPS`] products; the
//! sgemm's median over them is printed too (`sgemm_median_gflops`), the rate to set beside a
//! tool's sustained throughput on a host whose speed moves from one moment to the next.
//!
//!     cargo run --release -p attune-model --example host_gemm

use attune_model::int8::Int8Backend;
use attune_model::kernels::Epilogue;
use attune_model::packed::{Bf16Backend, PackedLinear, Scheme};
use candle_core::{DType, Device, Tensor};

#[path = "common/timing.rs"]
mod timing;

const N: usize = 1024;

/// Products timed per rate.
const REPS: usize = 15;

/// The rates of `run` (one n×n×n product per call) over [`REPS`] calls, in GFLOP/s: the best
/// and the median.
fn gflops(run: impl FnMut()) -> (f64, f64) {
    let (best, median) = timing::best_and_median_seconds(REPS, run);
    let rate = |s: f64| 2.0 * (N * N * N) as f64 / s / 1e9;
    (rate(best), rate(median))
}

fn main() -> candle_core::Result<()> {
    let threads = rayon::current_num_threads();
    let a: Vec<f32> = (0..N * N)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let b: Vec<f32> = (0..N * N)
        .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
        .collect();
    let mut dst = vec![0f32; N * N];
    let parallelism = match threads {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    };
    let (sgemm, sgemm_median) = gflops(|| {
        // SAFETY: a, b and dst are N×N row-major; the strides say so.
        unsafe {
            gemm::gemm(
                N,
                N,
                N,
                dst.as_mut_ptr(),
                1,
                N as isize,
                false,
                a.as_ptr(),
                1,
                N as isize,
                b.as_ptr(),
                1,
                N as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    });
    let weight = Tensor::from_vec(b.clone(), (N, N), &Device::Cpu)?;
    let bias = Tensor::zeros(N, DType::F32, &Device::Cpu)?;
    let backend = Bf16Backend::detect();
    let layer = PackedLinear::new(&weight, &bias, &Scheme::Bf16(backend))?;
    let (bf16, _) = gflops(|| layer.apply_rows(&a, Epilogue::None, &mut dst));
    let int8_backend = Int8Backend::detect();
    let layer = PackedLinear::new(
        &weight,
        &bias,
        &Scheme::Int8(int8_backend, Default::default()),
    )?;
    let (int8, _) = gflops(|| layer.apply_rows(&a, Epilogue::None, &mut dst));
    println!(
        "{{\"threads\": {threads}, \"sgemm_gflops\": {sgemm:.1}, \
         \"sgemm_median_gflops\": {sgemm_median:.1}, \"bf16_gflops\": {bf16:.1}, \
         \"bf16_backend\": \"{backend:?}\", \"int8_gops\": {int8:.1}, \
         \"int8_backend\": \"{int8_backend:?}\"}}"
    );
    Ok(())
}
