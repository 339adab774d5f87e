//! Criterion benchmarks of evaluation's scoring path: everything after the embeddings exist.
//!
//! `cargo bench --bench eval` runs exact top-100 retrieval (blocked candle matrix products plus
//! per-query selection) and the metrics, at scifact's shape (300 queries × 5,183 documents ×
//! 384 dimensions) and at a larger one (1,000 × 100,000). `scripts/bench-eval.sh` puts these
//! next to sentence-transformers' scoring of the same shapes; figures in `benches/README.md`.

use attune_eval::data::{Qrels, Run, ScoredDoc};
use attune_eval::evaluate;
use attune_eval::retrieval::{exact_top_k, EmbeddingMatrix, ExactSearchSettings};
use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn unit_vectors(rows: usize, dim: usize, seed: u64) -> EmbeddingMatrix {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data: Vec<f32> = (0..rows * dim)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    for row in data.chunks_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    EmbeddingMatrix { rows, dim, data }
}

fn retrieval(c: &mut Criterion) {
    let mut group = c.benchmark_group("exact_top_k");
    group.sample_size(10);
    for (name, queries, docs) in [
        ("scifact_300x5183", 300, 5183),
        ("1000x100000", 1000, 100_000),
    ] {
        let q = unit_vectors(queries, 384, 1);
        let d = unit_vectors(docs, 384, 2);
        let ranks: Vec<u32> = (0..docs as u32).collect();
        group.bench_function(name, |b| {
            b.iter(|| {
                exact_top_k(
                    &q,
                    &d,
                    100,
                    &ranks,
                    &Device::Cpu,
                    &ExactSearchSettings::default(),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn metrics(c: &mut Criterion) {
    // scifact's shape: 300 queries, 100 ranked documents each, ~1.1 relevant per query.
    let mut rng = StdRng::seed_from_u64(3);
    let mut run = Run::new();
    let mut qrels = Qrels::default();
    for q in 0..300 {
        let qid = format!("q{q}");
        let ranked: Vec<ScoredDoc> = (0..100)
            .map(|r| ScoredDoc {
                doc_id: format!("d{}", rng.random_range(0..5183)),
                score: 1.0 - r as f64 / 100.0,
            })
            .collect();
        qrels.insert(&qid, &ranked[rng.random_range(0..100)].doc_id.clone(), 1);
        if q % 9 == 0 {
            qrels.insert(&qid, &format!("d{}", rng.random_range(0..5183)), 1);
        }
        run.insert(qid, ranked);
    }
    c.bench_function("metrics/scifact_300x100", |b| {
        b.iter(|| evaluate(&run, &qrels, &Default::default()).unwrap())
    });
}

criterion_group!(benches, retrieval, metrics);
criterion_main!(benches);
