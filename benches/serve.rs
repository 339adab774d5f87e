//! In-process cost of one search request's work, without HTTP: embed one query with the
//! space's model, then search the collection. The reference point for the HTTP figures of
//! `scripts/bench-serve.sh`.
//!
//! `serve --store DIR --collection NAME --space NAME --queries FILE [--repeat N] [--out FILE]`
//! where FILE has one JSON object with a `query` (or `text`) field per line.

use std::path::PathBuf;
use std::time::Instant;

use attune_app::ModelEmbedder;
use attune_index::{Filter, SearchRequest, Store};
use attune_model::Device;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(store), Some(collection), Some(space), Some(queries)) = (
        arg(&args, "--store"),
        arg(&args, "--collection"),
        arg(&args, "--space"),
        arg(&args, "--queries"),
    ) else {
        // `cargo bench` runs every bench without arguments: nothing to measure then.
        eprintln!("usage: serve --store DIR --collection NAME --space NAME --queries FILE");
        return;
    };
    let repeat: usize = arg(&args, "--repeat").map_or(3, |r| r.parse().unwrap());
    let store = Store::open(&PathBuf::from(store)).unwrap();
    let collection = store.open_collection(&collection).unwrap();
    let identity = collection.spaces()[&space].clone();
    let embedder = ModelEmbedder::load(
        PathBuf::from(&identity.source).as_path(),
        &Device::Cpu,
        None,
    )
    .unwrap();
    let texts: Vec<String> = std::fs::read_to_string(&queries)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("query")
                .or_else(|| v.get("text"))
                .and_then(|t| t.as_str())
                .unwrap()
                .to_string()
        })
        .collect();
    let filter = Filter::default();
    let (mut embed_ms, mut search_ms, mut total_ms) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=repeat {
        for text in &texts {
            let start = Instant::now();
            let vector = embedder.embed_query(text).unwrap();
            let embedded = Instant::now();
            let hits = collection
                .search(&SearchRequest {
                    space: &space,
                    vector: &vector,
                    model: embedder.identity(),
                    k: 10,
                    ef: None,
                    filter: &filter,
                })
                .unwrap();
            assert!(!hits.is_empty());
            if round > 0 {
                // Round 0 warms caches.
                embed_ms.push((embedded - start).as_secs_f64() * 1e3);
                search_ms.push(embedded.elapsed().as_secs_f64() * 1e3);
                total_ms.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for v in [&mut embed_ms, &mut search_ms, &mut total_ms] {
        v.sort_by(f64::total_cmp);
    }
    let report = serde_json::json!({
        "queries": texts.len(),
        "repeat": repeat,
        "embed_p50_ms": percentile(&embed_ms, 50.0),
        "search_p50_ms": percentile(&search_ms, 50.0),
        "total_p50_ms": percentile(&total_ms, 50.0),
        "total_p99_ms": percentile(&total_ms, 99.0),
        "sequential_qps": 1e3 * total_ms.len() as f64 / total_ms.iter().sum::<f64>(),
    });
    println!("{report}");
    if let Some(out) = arg(&args, "--out") {
        std::fs::write(out, report.to_string()).unwrap();
    }
}
