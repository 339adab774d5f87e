//! Device selection: `auto`, `cpu`, `cuda` or `cuda:N`.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{ModelError, Result};

/// The device a user asked for. Parsed from `auto | cpu | cuda | cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The first CUDA GPU when this build has the `cuda` feature and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU (all cores, through rayon).
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let spec = s.trim().to_ascii_lowercase();
        match spec.as_str() {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda(0)),
            _ => match spec.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(DeviceRequest::Cuda)
                    .map_err(|_| ModelError::Device {
                        spec: s.to_string(),
                        problem: format!(
                            "`{n}` is not a GPU ordinal; expected cuda:0, cuda:1, ..."
                        ),
                    }),
                None => Err(ModelError::Device {
                    spec: s.to_string(),
                    problem: "expected one of auto, cpu, cuda, cuda:N".to_string(),
                }),
            },
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Auto => write!(f, "auto"),
            DeviceRequest::Cpu => write!(f, "cpu"),
            DeviceRequest::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

// Written and read as on the command line (`"auto"`, `"cpu"`, `"cuda:1"`).
attune_core::serde_via_str!(DeviceRequest);

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

impl DeviceRequest {
    /// Opens the device, or says why it cannot be opened.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceRequest::Cpu => Ok(Device::Cpu),
            DeviceRequest::Auto => {
                if CUDA_COMPILED && candle_core::utils::cuda_is_available() {
                    if let Ok(device) = Device::new_cuda(0) {
                        return Ok(device);
                    }
                }
                Ok(Device::Cpu)
            }
            DeviceRequest::Cuda(ordinal) => {
                if !CUDA_COMPILED {
                    return Err(ModelError::Device {
                        spec: self.to_string(),
                        problem: "this attune binary was built without the `cuda` feature; \
                                  build one with scripts/build-cuda.sh (or cargo build --release --features cuda)"
                            .to_string(),
                    });
                }
                Device::new_cuda(ordinal).map_err(|e| ModelError::Device {
                    spec: self.to_string(),
                    // candle appends a backtrace when RUST_BACKTRACE is set; the first line says it.
                    problem: format!(
                        "no usable CUDA GPU with ordinal {ordinal}: {}",
                        e.to_string()
                            .lines()
                            .next()
                            .unwrap_or("unknown driver error")
                    ),
                })
            }
        }
    }
}

/// The dtype the transformer's matrix products run in (mixed precision).
///
/// Only the products' inputs are narrowed: weights (the optimizer's master copy), layer norms,
/// softmax, activations between products, gradients and the loss stay f32, and each product's
/// result is widened back to f32. bf16 inputs take a GPU's half-width tensor-core path at a
/// rounding error of at most 2⁻⁸ ≈ 3.9e-3 per input; f16 keeps 3 more mantissa bits but
/// overflows above 65504.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// bf16 products on a CUDA GPU, f32 on the CPU (whose fused f32 kernels are faster there).
    #[default]
    Auto,
    /// Every product in f32.
    F32,
    /// Products in bfloat16.
    Bf16,
    /// Products in IEEE half precision.
    F16,
    /// Products of 8-bit integers, for inference on the CPU only: weights quantized once per
    /// output, activations per row at each call, exact i32 sums scaled to f32 (AVX-512 VNNI;
    /// emulated at f32 speed elsewhere). Everything outside the linear layers stays f32.
    Int8,
}

impl Precision {
    /// The products' dtype on `device`.
    pub fn matmul_dtype(self, device: &Device) -> DType {
        match self {
            Precision::Auto if device.is_cuda() => DType::BF16,
            Precision::Auto | Precision::F32 | Precision::Int8 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// The version of this precision's quantization recipe, for precisions that have one
    /// (int8: [`crate::int8::RECIPE_VERSION`]). A vector space's fingerprint records it, so a
    /// space built under an earlier recipe is not served with queries embedded under a later.
    pub fn recipe_version(self) -> Option<u32> {
        (self == Precision::Int8).then_some(crate::int8::RECIPE_VERSION)
    }

    /// The precision the products actually run in on `device` when it is narrower than f32
    /// (`Bf16`, `F16` or `Int8`), `None` for f32: what a vector space records in its identity.
    pub fn narrowed(self, device: &Device) -> Option<Precision> {
        if self == Precision::Int8 {
            return Some(Precision::Int8);
        }
        match self.matmul_dtype(device) {
            DType::BF16 => Some(Precision::Bf16),
            DType::F16 => Some(Precision::F16),
            _ => None,
        }
    }
}

impl FromStr for Precision {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" | "fp16" => Ok(Precision::F16),
            "int8" => Ok(Precision::Int8),
            _ => Err(ModelError::InvalidSetting {
                name: "precision",
                problem: format!("`{s}`: expected one of auto, f32, bf16, f16, int8"),
            }),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
        })
    }
}

// Written and read as on the command line (`"auto"`, `"f32"`, `"bf16"`, `"f16"`, `"int8"`).
attune_core::serde_via_str!(Precision);

/// A short human-readable name of an opened device (`cpu`, `cuda:0`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Flushes subnormal floats to zero (MXCSR's FTZ and DAZ bits) on the calling thread, on every
/// thread of the current rayon pool (the matrix products') and on candle's element-wise worker
/// pool; a no-op off x86-64.
///
/// Subnormals (|x| < 1.18e-38) cost a microcode assist of about a hundred cycles per operation
/// in Intel's vector units. Training produces them (tiny attention probabilities and their
/// gradients), and on a Sapphire Rapids host they made the gemm kernels run 5× slower
/// (all-MiniLM-L6-v2, scifact recipe: 15 s → 3 s per step). Zeroing values below 1.2e-38 changes
/// no embedding or gradient measurably. The bits are per thread and stay set: encoders call this
/// when they load, inference threads when they start.
pub fn flush_denormals() {
    set_flush_denormals_on_this_thread();
    rayon::broadcast(|_| set_flush_denormals_on_this_thread());
    candle_core::utils::barrier_pool().execute(|_| set_flush_denormals_on_this_thread());
}

/// FTZ (bit 15) and DAZ (bit 6) of MXCSR on the calling thread.
pub fn set_flush_denormals_on_this_thread() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)] // _mm_getcsr/_mm_setcsr: std's only way to reach MXCSR
    // SAFETY: SSE is part of x86-64; setting FTZ/DAZ only changes how subnormals round.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        const FLUSH_TO_ZERO: u32 = 1 << 15;
        const DENORMALS_ARE_ZERO: u32 = 1 << 6;
        _mm_setcsr(_mm_getcsr() | FLUSH_TO_ZERO | DENORMALS_ARE_ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!(
            "auto".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Auto
        );
        assert_eq!("CPU".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Cuda(3)
        );
        let err = "cuda:x".parse::<DeviceRequest>().unwrap_err().to_string();
        assert!(err.contains("not a GPU ordinal"), "{err}");
        let err = "tpu".parse::<DeviceRequest>().unwrap_err().to_string();
        assert!(err.contains("auto, cpu, cuda, cuda:N"), "{err}");
    }

    #[test]
    fn cpu_and_auto_open_without_a_gpu() {
        assert!(DeviceRequest::Cpu.open().unwrap().is_cpu());
        // Auto falls back to the CPU when no GPU (or no cuda feature) is there.
        if !CUDA_COMPILED {
            assert!(DeviceRequest::Auto.open().unwrap().is_cpu());
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let err = DeviceRequest::Cuda(0).open().unwrap_err().to_string();
        assert!(err.contains("device `cuda:0`"), "{err}");
        assert!(err.contains("without the `cuda` feature"), "{err}");
        assert!(err.contains("build-cuda.sh"), "{err}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_with_a_missing_ordinal_is_named() {
        let err = DeviceRequest::Cuda(97).open().unwrap_err().to_string();
        assert!(err.contains("cuda:97"), "{err}");
    }

    #[test]
    fn precision_parses_and_auto_keeps_the_cpu_in_f32() {
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::F16);
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        assert_eq!("int8".parse::<Precision>().unwrap(), Precision::Int8);
        let err = "int4".parse::<Precision>().unwrap_err().to_string();
        assert!(
            err.contains("precision") && err.contains("auto, f32, bf16, f16, int8"),
            "{err}"
        );
        assert_eq!(Precision::Auto.matmul_dtype(&Device::Cpu), DType::F32);
        assert_eq!(Precision::Bf16.matmul_dtype(&Device::Cpu), DType::BF16);
        // int8 narrows only the packed linear layers; the rest runs in f32.
        assert_eq!(Precision::Int8.matmul_dtype(&Device::Cpu), DType::F32);
        assert_eq!(
            Precision::Int8.narrowed(&Device::Cpu),
            Some(Precision::Int8)
        );
        assert_eq!(Precision::Auto.narrowed(&Device::Cpu), None);
        for p in [
            Precision::Auto,
            Precision::F32,
            Precision::Bf16,
            Precision::F16,
            Precision::Int8,
        ] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn flushing_zeroes_subnormal_results_on_every_pool_thread() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        let before: Vec<f32> = pool.broadcast(|_| std::hint::black_box(tiny) * 0.25);
        assert!(
            before.iter().all(|&x| x > 0.0),
            "subnormals exist before: {before:?}"
        );
        pool.install(flush_denormals);
        let after: Vec<f32> = pool.broadcast(|_| std::hint::black_box(tiny) * 0.25);
        assert_eq!(after, vec![0.0; 2]);
        // The normal range is untouched.
        let normal: Vec<f32> = pool.broadcast(|_| std::hint::black_box(tiny) * 4.0);
        assert_eq!(normal, vec![f32::MIN_POSITIVE * 4.0; 2]);
    }
}
