//! Criterion benchmarks of the training step's parts on an all-MiniLM-L6-v2-shaped random model
//! (6 layers, 384 wide, 12 heads, feed-forward 1536): the forward passes and loss of a batch, the
//! backward pass, and the AdamW update of all 22.6 million weights; and the fused training kernels
//! against candle's compositions of the same math at that shape, and the hidden dropout with its
//! residual add (`train_kernels` group).
//!
//! `cargo bench --bench train`. The end-to-end comparison with sentence-transformers (examples/s
//! with the scifact recipe) is `scripts/bench-train.sh`; see `benches/README.md`.

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_model::layers::Dropout;
use attune_model::{Encoder, EncoderSettings, Mode, ModelDir, TextKind, TrainContext};
use attune_trainer::loss::{info_nce, BatchTargets, LossSettings};
use attune_trainer::optim::{AdamW, AdamWSettings};
use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Batch shape of the benchmark: 32 pairs, queries of ~16 tokens, documents of ~128.
const PAIRS: usize = 32;

fn texts(words: usize, salt: usize) -> Vec<String> {
    const WORDS: [&str; 8] = [
        "red", "shoe", "leather", "study", "protein", "cell", "battery", "laptop",
    ];
    (0..PAIRS)
        .map(|i| {
            (0..words)
                .map(|w| WORDS[(i * 7 + w * 3 + salt) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn train_step(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let spec = RandomBertSpec {
        hidden_size: 384,
        num_layers: 6,
        num_heads: 12,
        intermediate_size: 1536,
        max_position_embeddings: 512,
        max_seq_length: 128,
        ..Default::default()
    };
    write_random_bert(tmp.path(), &spec).unwrap();
    let dir = ModelDir::open(tmp.path()).unwrap();
    let (encoder, varmap) =
        Encoder::load_trainable(&dir, &Device::Cpu, EncoderSettings::default()).unwrap();
    let queries = encoder.tokenize(&texts(14, 0), TextKind::Query).unwrap();
    let docs = encoder
        .tokenize(&texts(126, 1), TextKind::Document)
        .unwrap();
    let tokens: usize = queries.iter().chain(&docs).map(|t| t.ids.len()).sum();
    let loss = |seed: u64| -> Tensor {
        let ctx = TrainContext::new(seed);
        let q = encoder
            .forward_batch(&queries.iter().collect::<Vec<_>>(), Mode::Train(&ctx))
            .unwrap();
        let d = encoder
            .forward_batch(&docs.iter().collect::<Vec<_>>(), Mode::Train(&ctx))
            .unwrap();
        info_nce(&q, &d, &BatchTargets::default(), &LossSettings::default()).unwrap()
    };

    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    group.throughput(Throughput::Elements(tokens as u64));
    group.bench_function("forward_and_loss_32_pairs", |b| b.iter(|| loss(1)));
    group.bench_function("forward_backward_32_pairs", |b| {
        b.iter(|| loss(1).backward().unwrap())
    });
    let vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let parameters: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let grads = loss(1).backward().unwrap();
    let mut optimizer = AdamW::new(vars, AdamWSettings::default()).unwrap();
    group.throughput(Throughput::Elements(parameters as u64));
    group.bench_function("adamw_update_all_weights", |b| {
        b.iter(|| optimizer.step(&grads, 2e-5, Some(1.0)).unwrap())
    });
    group.finish();
}

/// Forward + backward of one layer's attention and of its up projection, 32 texts of 128 tokens
/// (MiniLM's shape, dropout 0.1): the fused ops against candle's compositions.
fn train_kernels(c: &mut Criterion) {
    let (b, s, h, heads) = (32, 128, 384, 12);
    let dev = Device::Cpu;
    let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, s, 3 * h), &dev).unwrap()).unwrap();
    let lengths = vec![s; b];
    let scale = 1.0 / ((h / heads) as f32).sqrt();
    let dropout = Dropout::new(0.1);
    let mut group = c.benchmark_group("train_kernels");
    group.sample_size(10);
    group.throughput(Throughput::Elements((b * s) as u64));
    group.bench_function("attention_fused_forward_backward", |bench| {
        bench.iter(|| {
            let ctx = TrainContext::new(1);
            let out = attune_model::train_attention::attention(
                &qkv,
                None,
                &lengths,
                attune_model::train_attention::Rows::Padded,
                heads,
                scale,
                dropout,
                Mode::Train(&ctx),
            )
            .unwrap();
            out.sum_all().unwrap().backward().unwrap()
        })
    });
    group.bench_function("attention_candle_forward_backward", |bench| {
        let split = |t: Tensor| {
            t.reshape((b, s, heads, h / heads))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        bench.iter(|| {
            let ctx = TrainContext::new(1);
            let q = split((qkv.narrow(2, 0, h).unwrap() * scale as f64).unwrap());
            let k = split(qkv.narrow(2, h, h).unwrap());
            let v = split(qkv.narrow(2, 2 * h, h).unwrap());
            let scores = q.matmul(&k.t().unwrap()).unwrap();
            let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let probs = dropout.forward(&probs, Mode::Train(&ctx)).unwrap();
            let out = probs.matmul(&v).unwrap().transpose(1, 2).unwrap();
            out.sum_all().unwrap().backward().unwrap()
        })
    });
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b * s, h), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, (4 * h, h), &dev).unwrap()).unwrap();
    let bias =
        Var::from_tensor(&Tensor::zeros(4 * h, candle_core::DType::F32, &dev).unwrap()).unwrap();
    group.bench_function("linear_fused_forward_backward", |bench| {
        bench.iter(|| {
            let y = attune_model::train_kernels::linear(&x, &w, &bias).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    group.bench_function("linear_candle_forward_backward", |bench| {
        bench.iter(|| {
            let y = x.matmul(&w.t().unwrap()).unwrap();
            let y = y.broadcast_add(&bias).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    // The feed-forward contraction (1,536 → 384) after GELU: one op keeping only its input,
    // against GELU and the linear op as two nodes.
    let expanded =
        Var::from_tensor(&Tensor::randn(0f32, 1.0, (b * s, 4 * h), &dev).unwrap()).unwrap();
    let w_down = Var::from_tensor(&Tensor::randn(0f32, 0.05, (h, 4 * h), &dev).unwrap()).unwrap();
    let b_down =
        Var::from_tensor(&Tensor::zeros(h, candle_core::DType::F32, &dev).unwrap()).unwrap();
    group.bench_function("gelu_linear_fused_forward_backward", |bench| {
        bench.iter(|| {
            let y = attune_model::train_kernels::gelu_linear(&expanded, &w_down, &b_down).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    group.bench_function("gelu_then_linear_forward_backward", |bench| {
        bench.iter(|| {
            let active = attune_model::train_kernels::gelu_erf(&expanded).unwrap();
            let y = attune_model::train_kernels::linear(&active, &w_down, &b_down).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    // Hidden dropout and the residual add of every sub-layer: the mask drawn from its hash per
    // element (forward) and again for the gradient (backward).
    let hidden = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b * s, h), &dev).unwrap()).unwrap();
    let residual = Tensor::randn(0f32, 1.0, (b * s, h), &dev).unwrap();
    group.bench_function("dropout_add_forward_backward", |bench| {
        bench.iter(|| {
            let ctx = TrainContext::new(1);
            let y = dropout
                .forward_add(&hidden, &residual, Mode::Train(&ctx))
                .unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, train_step, train_kernels);
criterion_main!(benches);
