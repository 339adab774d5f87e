//! What learning from shoppers costs: the drift measurement every search pays (one pass over
//! the reference vectors, then the window's shares) and the export of a feedback log.
//!
//! `cargo bench --bench feedback`

use attune_api::drift::{DriftMonitor, DriftSettings};
use attune_app::feedback::{export, ExportSettings, FeedbackError};
use attune_index::{FeedbackRecord, ServedRequest};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 384;

fn unit(rng: &mut StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// One search's drift work at the default settings (observe, then the gauges): 2,000 reference
/// queries, a full window of 500; and the report `GET .../drift` writes, evidence included.
fn drift(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let settings = DriftSettings::default();
    let queries: Vec<String> = (0..settings.max_reference)
        .map(|i| format!("red leather boots {i}"))
        .collect();
    let monitor = DriftMonitor::new(settings.clone(), Some(&queries));
    monitor.set_reference_vectors((0..queries.len()).map(|_| unit(&mut rng)).collect());
    for i in 0..settings.window {
        monitor.observe(&format!("blue suede shoes {i}"), &unit(&mut rng), Some(0.5));
    }
    let query = unit(&mut rng);
    c.bench_function("drift/observe_2000_reference_384d", |b| {
        b.iter(|| {
            monitor.observe("wide fit trail runners", &query, Some(0.4));
            monitor.gauges()
        })
    });
    c.bench_function("drift/report_window_500", |b| {
        b.iter(|| monitor.report("tuned"))
    });
}

/// Exporting 100,000 logged searches (2,000 queries, 20,000 shoppers, 10% explored) with
/// 60,000 events.
fn export_log(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let mut served = Vec::new();
    let mut feedback = Vec::new();
    for i in 0..100_000 {
        let query = format!("query {}", rng.random_range(0..2_000));
        let user = format!("user {}", rng.random_range(0..20_000));
        let results: Vec<String> = (0..10)
            .map(|_| format!("p{}", rng.random_range(0..5_000)))
            .collect();
        let id = format!("r{i}");
        let mut request =
            ServedRequest::new(id.clone(), "base".into(), "s", &user, &query, results, 1);
        if rng.random_bool(0.1) {
            request.swapped = Some(rng.random_range(1..10));
        }
        if i % 5 < 3 {
            let rank = rng.random_range(1..=10usize);
            feedback.push(FeedbackRecord {
                request_id: id,
                doc_id: request.results[rank - 1].clone(),
                event: "click".into(),
                rank,
                unix_ms: 2,
            });
        }
        served.push(request);
    }
    let settings = ExportSettings::new("shop");
    let text = |id: &str| -> Result<Option<String>, FeedbackError> { Ok(Some(id.to_string())) };
    let mut group = c.benchmark_group("feedback");
    group.sample_size(10);
    group.bench_function("export_100k_searches_60k_events", |b| {
        b.iter(|| export(&settings, &served, &feedback, &text, 3).unwrap())
    });
    group.finish();
}

criterion_group!(benches, drift, export_log);
criterion_main!(benches);
