//! Criterion benchmarks of the encoder's hot paths.
//!
//! `cargo bench --bench encode` runs: sgemm through the `gemm` crate (the machine's achievable
//! matrix-product rate for attune), the fused CPU kernels at all-MiniLM-L6-v2's shapes
//! (batch 32 × 256 tokens), and whole-encoder throughput on a tiny random model and, when
//! `models/all-MiniLM-L6-v2` is present, on the real one. Peer comparisons (vs
//! sentence-transformers) are made by `scripts/bench-encode.sh`; see `benches/README.md`.

use std::path::PathBuf;

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use std::sync::Arc;

use attune_model::bert::{INT8_INTERMEDIATE_EXACT_CHANNELS, INT8_OUTPUT_WEIGHT_GROUP};
use attune_model::int8::{Int8Backend, Int8Options};
use attune_model::kernels::{
    attention, feed_forward, gelu_erf_in_place, linear, linear_add_norm, softmax_in_place,
    Epilogue, NormWeights,
};
use attune_model::packed::{self, Bf16Backend, PackedLinear, Scheme};
use attune_model::{Encoder, EncoderSettings, ModelDir, Precision, TextKind};
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn sgemm(c: &mut Criterion) {
    let n = 1024;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut dst = vec![0f32; n * n];
    let mut group = c.benchmark_group("sgemm");
    group.throughput(Throughput::Elements((2 * n * n * n) as u64)); // FLOPs: read elem/s as FLOP/s
    group.bench_function("gemm_crate_1024", |bench| {
        bench.iter(|| unsafe {
            gemm::gemm(
                n,
                n,
                n,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            )
        })
    });
    // The same product with bf16 operands and f32 sums (AMX tiles where the CPU has them).
    let weight = Tensor::from_vec(b.clone(), (n, n), &Device::Cpu).unwrap();
    let bias = Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    let scheme = Scheme::Bf16(Bf16Backend::detect());
    let layer = PackedLinear::new(&weight, &bias, &scheme).unwrap();
    group.bench_function(format!("bf16_{:?}_1024", Bf16Backend::detect()), |bench| {
        bench.iter(|| layer.apply_rows(&a, Epilogue::None, &mut dst))
    });
    // int8 operands (activations quantized per call) and exact i32 sums (AVX-512 VNNI).
    let scheme = Scheme::Int8(Int8Backend::detect(), Int8Options::default());
    let layer = PackedLinear::new(&weight, &bias, &scheme).unwrap();
    group.bench_function(format!("int8_{:?}_1024", Int8Backend::detect()), |bench| {
        bench.iter(|| layer.apply_rows(&a, Epilogue::None, &mut dst))
    });
    group.finish();
}

fn kernels(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (b, s, h, ff, heads) = (32usize, 256usize, 384usize, 1536usize, 12usize);
    let tokens = (b * s) as u64;
    let x = Tensor::randn(0f32, 1.0, (b, s, h), &dev).unwrap();
    let w_qkv = Tensor::randn(0f32, 0.05, (3 * h, h), &dev).unwrap();
    let b_qkv = Tensor::randn(0f32, 0.05, 3 * h, &dev).unwrap();
    let up = Tensor::randn(0f32, 0.05, (ff, h), &dev).unwrap();
    let up_b = Tensor::randn(0f32, 0.05, ff, &dev).unwrap();
    let down = Tensor::randn(0f32, 0.05, (h, ff), &dev).unwrap();
    let down_b = Tensor::randn(0f32, 0.05, h, &dev).unwrap();
    let qkv = linear(&x, &w_qkv, &b_qkv, Epilogue::None).unwrap();
    let lengths = vec![s; b];
    let mut group = c.benchmark_group("kernels_32x256_minilm");
    group.sample_size(10);
    group.throughput(Throughput::Elements(tokens));
    group.bench_function("qkv_projection", |bench| {
        bench.iter(|| linear(&x, &w_qkv, &b_qkv, Epilogue::None).unwrap())
    });
    group.bench_function("attention", |bench| {
        bench.iter(|| attention(&qkv, &lengths, heads, 0.176, None).unwrap())
    });
    group.bench_function("feed_forward", |bench| {
        bench.iter(|| feed_forward(&x, &up, &up_b, &down, &down_b, None).unwrap())
    });
    // The attention sub-layer's end: output projection, residual add and layer norm, fused
    // into the projection's row epilogue against the same as three ops.
    let w_out = Tensor::randn(0f32, 0.05, (h, h), &dev).unwrap();
    let norm_w = Tensor::ones(h, candle_core::DType::F32, &dev).unwrap();
    let norm_b = Tensor::zeros(h, candle_core::DType::F32, &dev).unwrap();
    let norm = NormWeights {
        weight: vec![1.0; h],
        bias: vec![0.0; h],
        eps: 1e-12,
    };
    group.bench_function("output_add_norm_fused", |bench| {
        bench.iter(|| linear_add_norm(&x, &w_out, &down_b, &x, &norm).unwrap())
    });
    group.bench_function("output_add_norm_three_ops", |bench| {
        bench.iter(|| {
            let out = linear(&x, &w_out, &down_b, Epilogue::None).unwrap();
            candle_nn::ops::layer_norm(&(out + &x).unwrap(), &norm_w, &norm_b, 1e-12).unwrap()
        })
    });
    let bf16 = Scheme::Bf16(Bf16Backend::detect());
    // int8 as all-MiniLM-L6-v2 packs it (model/src/bert.rs, `int8_scheme`): V's activations
    // take a second plane, the intermediate keeps its widest input channels in f32, the down
    // projection's weights take one scale per group of inputs. (The smoothing costs nothing
    // measurable and needs the model's norms, so it is left out here; the exact channels are
    // spread evenly instead of chosen by the norm.) The earlier mix, second planes for the
    // intermediate's activations and the down projection's weights, is measured beside it.
    let int8 = Int8Backend::detect();
    let qkv_int8 = Scheme::Int8(
        int8,
        Int8Options {
            fine_activations_from: Some(2 * 384),
            ..Int8Options::default()
        },
    );
    let up_int8 = Scheme::Int8(
        int8,
        Int8Options {
            exact_channels: (0..INT8_INTERMEDIATE_EXACT_CHANNELS)
                .map(|c| c * 384 / INT8_INTERMEDIATE_EXACT_CHANNELS)
                .collect(),
            ..Int8Options::default()
        },
    );
    let down_int8 = Scheme::Int8(
        int8,
        Int8Options {
            weight_group: Some(INT8_OUTPUT_WEIGHT_GROUP),
            ..Int8Options::default()
        },
    );
    let up_two_planes = Scheme::Int8(
        int8,
        Int8Options {
            fine_activations_from: Some(0),
            ..Int8Options::default()
        },
    );
    let down_two_planes = Scheme::Int8(
        int8,
        Int8Options {
            fine_weights: true,
            ..Int8Options::default()
        },
    );
    for (name, qkv_scheme, up_scheme, down_scheme) in [
        (
            format!("bf16_{:?}", Bf16Backend::detect()),
            &bf16,
            &bf16,
            &bf16,
        ),
        (format!("int8_{int8:?}"), &qkv_int8, &up_int8, &down_int8),
        (
            format!("int8_two_planes_{int8:?}"),
            &qkv_int8,
            &up_two_planes,
            &down_two_planes,
        ),
    ] {
        let qkv = Arc::new(PackedLinear::new(&w_qkv, &b_qkv, qkv_scheme).unwrap());
        let up = Arc::new(PackedLinear::new(&up, &up_b, up_scheme).unwrap());
        let down = Arc::new(PackedLinear::new(&down, &down_b, down_scheme).unwrap());
        group.bench_function(format!("qkv_projection_{name}"), |bench| {
            bench.iter(|| qkv.forward(&x, Epilogue::None).unwrap())
        });
        group.bench_function(format!("feed_forward_{name}"), |bench| {
            bench.iter(|| packed::feed_forward(&x, &up, &down, None).unwrap())
        });
    }
    group.finish();
}

/// The element-wise kernels on one thread: exact GELU over one text's feed-forward activation
/// (256 tokens × 1,536, all-MiniLM-L6-v2) and the softmax of one head's scores (256 rows of 256).
/// Throughput in elements.
fn elementwise(c: &mut Criterion) {
    let dev = Device::Cpu;
    let activation = Tensor::randn(0f32, 2.0, 256 * 1536, &dev)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let scores = Tensor::randn(0f32, 3.0, 256 * 256, &dev)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut group = c.benchmark_group("kernels_elementwise");
    group.throughput(Throughput::Elements(activation.len() as u64));
    group.bench_function("gelu_erf_256x1536", |bench| {
        let mut xs = activation.clone();
        bench.iter(|| {
            xs.copy_from_slice(&activation);
            gelu_erf_in_place(&mut xs);
        })
    });
    group.throughput(Throughput::Elements(scores.len() as u64));
    group.bench_function("softmax_256x256", |bench| {
        let mut xs = scores.clone();
        bench.iter(|| {
            xs.copy_from_slice(&scores);
            xs.chunks_exact_mut(256).for_each(softmax_in_place);
        })
    });
    // Rows of a text's length: rarely a multiple of the vector width.
    let odd = &scores[..237 * 237];
    group.throughput(Throughput::Elements(odd.len() as u64));
    group.bench_function("softmax_237x237", |bench| {
        let mut xs = odd.to_vec();
        bench.iter(|| {
            xs.copy_from_slice(odd);
            xs.chunks_exact_mut(237).for_each(softmax_in_place);
        })
    });
    group.finish();
}

fn sample_texts(n: usize) -> Vec<String> {
    let words = [
        "shoe", "running", "size", "return", "policy", "leather", "study", "cell", "protein",
    ];
    (0..n)
        .map(|i| {
            (0..(8 + (i * 37) % 120))
                .map(|j| words[(i + j) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn encoder(c: &mut Criterion) {
    let texts = sample_texts(256);
    let mut group = c.benchmark_group("encoder");
    group.sample_size(10);
    group.throughput(Throughput::Elements(texts.len() as u64));
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tmp.path().join("tiny");
    write_random_bert(
        &tiny,
        &RandomBertSpec {
            max_position_embeddings: 256,
            max_seq_length: 256,
            ..Default::default()
        },
    )
    .unwrap();
    let real = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    for (name, dir) in [("tiny_random", tiny), ("all-MiniLM-L6-v2", real)] {
        let Ok(model) = ModelDir::open(&dir) else {
            eprintln!(
                "skipping {name}: {} not present (scripts/fetch-model.sh)",
                dir.display()
            );
            continue;
        };
        for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
            let settings = EncoderSettings {
                precision,
                ..EncoderSettings::default()
            };
            let enc = Encoder::load(&model, &Device::Cpu, settings).unwrap();
            group.bench_function(format!("{name}_{precision}_256_texts"), |bench| {
                bench.iter(|| enc.embed(&texts, TextKind::Plain).unwrap())
            });
            // A search's query: one short text (latency, not throughput).
            group.bench_function(format!("{name}_{precision}_one_query"), |bench| {
                bench.iter(|| {
                    enc.embed(&["red leather running shoes"], TextKind::Query)
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, sgemm, kernels, elementwise, encoder);
criterion_main!(benches);
