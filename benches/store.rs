//! The store at scale: a 100k-document collection built through `build_collection` (vectors
//! precomputed, so no model time), then: build and graph seconds, bytes on disk per document,
//! time to open, identical results after reopening, and single-thread search through the
//! collection (filter-free and filtered, document records included) with recall against exact.
//!
//! ```text
//! cargo bench --bench store -- [--n 100000] [--dim 384] [--opens 5] [--out result.json]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use attune_index::fixtures::{clustered_unit_vectors, ClusterSpec};
use attune_index::{
    build_collection, exact_top_k, BuildSettings, Corpus, Embedder, Filter, ModelIdentity,
    SearchRequest, SpaceSpec, Store,
};

/// The allocator `attune` itself runs on.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands out precomputed vectors: document `d{i}`'s text starts with `i`.
struct Precomputed {
    identity: ModelIdentity,
    data: Vec<f32>,
}

impl Embedder for Precomputed {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }
    fn embed_documents(
        &mut self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        let dim = self.identity.dim;
        Ok(texts
            .iter()
            .map(|t| {
                let i: usize = t.split_whitespace().next().unwrap().parse().unwrap();
                self.data[i * dim..(i + 1) * dim].to_vec()
            })
            .collect())
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let raw: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        raw.iter()
            .position(|a| a == name)
            .and_then(|i| raw.get(i + 1).cloned())
    };
    // `cargo test --all-targets` runs this without `--bench`: a quick smoke run then.
    let smoke = !raw.iter().any(|a| a == "--bench") && flag("--n").is_none();
    let n: usize = flag("--n").map_or(if smoke { 3_000 } else { 100_000 }, |v| v.parse().unwrap());
    let dim: usize = flag("--dim").map_or(384, |v| v.parse().unwrap());
    let opens: usize = flag("--opens").map_or(5, |v| v.parse().unwrap());
    let out: Option<PathBuf> = flag("--out").map(PathBuf::from);

    let spec = ClusterSpec {
        n,
        dim,
        ..ClusterSpec::default()
    };
    let data = clustered_unit_vectors(&spec);
    let queries = clustered_unit_vectors(&ClusterSpec {
        n: 1_000,
        member_seed: 2,
        ..spec
    });
    let tmp = tempfile::tempdir().unwrap();
    let corpus_path = tmp.path().join("corpus.jsonl");
    let categories = [
        "shoes", "boots", "sandals", "jackets", "shirts", "hats", "bags", "socks",
    ];
    let mut body = String::with_capacity(n * 160);
    for i in 0..n {
        body.push_str(
            &serde_json::json!({
                "_id": format!("d{i}"),
                "title": format!("{i} product title"),
                "text": format!("description of product number {i}, a {} in size {}", categories[i % 8], 36 + i % 12),
                "metadata": {"category": categories[i % 8], "size": 36 + i % 12},
            })
            .to_string(),
        );
        body.push('\n');
    }
    std::fs::write(&corpus_path, body).unwrap();
    let corpus = Corpus::read(&corpus_path).unwrap();
    let identity = ModelIdentity {
        fingerprint: "precomputed".into(),
        dim,
        source: String::new(),
        encoding: None,
    };
    let mut embedder = Precomputed {
        identity: identity.clone(),
        data: data.clone(),
    };
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    // One build of the corpus into space "base": (report, seconds).
    let mut build = || {
        let started = Instant::now();
        let report = build_collection(
            &store,
            "bench",
            attune_index::BuildSource::Corpus {
                corpus: &corpus,
                mode: attune_index::BuildMode::Merge,
            },
            &mut [SpaceSpec {
                name: "base".into(),
                embedder: &mut embedder,
            }],
            &BuildSettings::default(),
            &mut |_| {},
        )
        .unwrap();
        (report, started.elapsed().as_secs_f64())
    };
    let (report, build_seconds) = build();
    eprintln!(
        "[store] built {n} documents in {build_seconds:.1}s (writes {:.1}s, graph {:.1}s)",
        report.embed_seconds, report.graph_seconds
    );

    // The same corpus again: nothing to embed, and the graph is carried over.
    let (again, rebuild_seconds) = build();
    assert_eq!(again.embedded["base"], 0);
    eprintln!(
        "[store] unchanged rebuild: {rebuild_seconds:.1}s (graph {:.2}s), 0 embedded",
        again.graph_seconds
    );

    let mut open_times = Vec::new();
    for _ in 0..opens {
        let t = Instant::now();
        let collection = store.open_collection("bench").unwrap();
        open_times.push(t.elapsed().as_secs_f64());
        drop(collection);
    }
    let mut collection = store.open_collection("bench").unwrap();
    let stats = collection.stats().unwrap();
    eprintln!(
        "[store] open median {:.3}s; {:.0} bytes/document on disk (sled {:.0})",
        median(open_times.clone()),
        stats.disk_bytes as f64 / n as f64,
        stats.database_bytes as f64 / n as f64
    );

    // Top 10 of space "base" at the default ef.
    let request = |vector, filter| SearchRequest {
        space: "base",
        vector,
        model: &identity,
        k: 10,
        ef: None,
        filter,
    };
    let none = Filter::default();
    let shoes = Filter::parse_clauses(&["category=shoes"]).unwrap();
    let mut rows = Vec::new();
    for (label, filter) in [("no filter", &none), ("category=shoes (1/8)", &shoes)] {
        let eligible = |slot: u32| filter.is_empty() || slot % 8 == 0;
        let mut found = 0;
        let mut first = Vec::new();
        for q in queries.chunks(dim) {
            let truth: Vec<String> = exact_top_k(q, &data, dim, 10, Some(&eligible))
                .iter()
                .map(|h| format!("d{}", h.slot))
                .collect();
            let hits = collection.search(&request(q, filter)).unwrap();
            found += hits.iter().filter(|h| truth.contains(&h.id)).count();
            first.push(hits);
        }
        let recall = found as f64 / (10 * queries.len() / dim) as f64;
        let times: Vec<f64> = (0..3)
            .map(|_| {
                let t = Instant::now();
                for q in queries.chunks(dim) {
                    std::hint::black_box(collection.search(&request(q, filter)).unwrap());
                }
                t.elapsed().as_secs_f64()
            })
            .collect();
        let qps = (queries.len() / dim) as f64 / median(times);
        eprintln!("[store] search {label}: recall@10 {recall:.4}, {qps:.0} queries/s (1 thread)");
        rows.push(
            serde_json::json!({"filter": label, "recall@10": recall, "qps_1thread_median": qps}),
        );
        if filter.is_empty() {
            // Close and reopen: identical results.
            drop(collection);
            collection = store.open_collection("bench").unwrap();
            let reopened = &collection;
            for (q, hits) in queries.chunks(dim).zip(&first).take(200) {
                let again = reopened.search(&request(q, filter)).unwrap();
                assert_eq!(&again, hits, "results differ after reopening");
            }
        }
    }
    let result = serde_json::json!({
        "bench": "store", "n": n, "dim": dim,
        "build_seconds": build_seconds, "write_seconds": report.embed_seconds,
        "graph_seconds": report.graph_seconds, "build_threads": rayon::current_num_threads(),
        "unchanged_rebuild_seconds": rebuild_seconds, "unchanged_rebuild_graph_seconds": again.graph_seconds,
        "open_seconds": open_times, "open_seconds_median": median(open_times.clone()),
        "disk_bytes": stats.disk_bytes, "database_bytes": stats.database_bytes,
        "disk_bytes_per_document": stats.disk_bytes as f64 / n as f64,
        "database_bytes_per_document": stats.database_bytes as f64 / n as f64,
        "search": rows,
    });
    if let Some(out) = out {
        std::fs::write(out, format!("{result}\n")).unwrap();
    }
    println!("{result}");
}
