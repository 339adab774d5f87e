//! Search latency per kind of space on one built collection, in one run: a vector space (HNSW),
//! `lexical` (tantivy BM25) and `hybrid:<space>` (both parts at depth 100, the lexical
//! candidates scored in the vector space, fused by RRF), at k = 10, single thread; and the two
//! parts alone at depth 100 (`dense@100`, `lexical@100`, documents read). Queries are embedded before timing:
//! the figures are the collection's search (and fusion) only. Each round times every query in
//! each mode; the output gives p50 and p99 per mode for each round and their medians.
//!
//! ```text
//! scripts/quality-hybrid.sh scifact        # builds out/hybrid/store (base, tuned, lexical)
//! cargo bench --bench hybrid -- --store out/hybrid/store --collection scifact \
//!     --queries ../shared/data/scifact/queries.jsonl --space tuned --rounds 5
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it builds a small collection with
//! a toy model in a temporary directory and times that: a smoke run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use attune_app::ModelEmbedder;
use attune_index::{
    build_collection, retrieve, BuildMode, BuildSettings, BuildSource, Corpus, DenseQuery,
    Embedder, Filter, Fusion, LexicalRequest, ModelIdentity, Retrieval, RetrievalRequest,
    SearchRequest, SpaceSpec, Store,
};
use attune_model::Device;

/// The allocator `attune` itself runs on.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A toy model for the smoke run: letter counts.
struct Letters(ModelIdentity);

impl Embedder for Letters {
    fn identity(&self) -> &ModelIdentity {
        &self.0
    }
    fn embed_documents(
        &mut self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(texts.iter().map(|t| letters(t)).collect())
    }
}

fn letters(text: &str) -> Vec<f32> {
    let mut v = vec![0.01f32; 26];
    for b in text.bytes().filter(u8::is_ascii_lowercase) {
        v[(b - b'a') as usize] += 1.0;
    }
    v
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// A collection, its query texts and their vectors in `space`.
struct Workload {
    store: Store,
    collection: String,
    space: String,
    identity: ModelIdentity,
    texts: Vec<String>,
    vectors: Vec<Vec<f32>>,
    _tmp: Option<tempfile::TempDir>,
}

fn smoke_workload() -> Workload {
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..500)
        .map(|i| {
            serde_json::json!({"_id": format!("d{i}"), "title": format!("item{i} shoe"),
                "text": format!("a {} shoe in size {}", ["red", "blue", "green"][i % 3], i % 13)})
            .to_string()
        })
        .collect();
    std::fs::write(tmp.path().join("corpus.jsonl"), lines.join("\n")).unwrap();
    let corpus = Corpus::read(&tmp.path().join("corpus.jsonl")).unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let identity = ModelIdentity {
        fingerprint: "letters".into(),
        dim: 26,
        source: String::new(),
        encoding: None,
    };
    let mut model = Letters(identity.clone());
    let mut spaces = [SpaceSpec {
        name: "tuned".into(),
        embedder: &mut model,
    }];
    let source = BuildSource::Corpus {
        corpus: &corpus,
        mode: BuildMode::Merge,
    };
    build_collection(
        &store,
        "smoke",
        source,
        &mut spaces,
        &BuildSettings::default(),
        &mut |_| {},
    )
    .unwrap();
    let texts: Vec<String> = (0..50).map(|i| format!("red shoe item{i}")).collect();
    let vectors = texts.iter().map(|t| letters(t)).collect();
    Workload {
        store,
        collection: "smoke".into(),
        space: "tuned".into(),
        identity,
        texts,
        vectors,
        _tmp: Some(tmp),
    }
}

fn real_workload(store: &Path, collection: &str, queries: &Path, space: &str) -> Workload {
    let store = Store::open(store).unwrap();
    let identity = store.manifest(collection).unwrap().spaces[space].clone();
    let embedder =
        ModelEmbedder::for_identity(Path::new(&identity.source), &Device::Cpu, &identity).unwrap();
    let texts: Vec<String> = std::fs::read_to_string(queries)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    let vectors = texts
        .iter()
        .map(|t| embedder.embed_query(t).unwrap())
        .collect();
    Workload {
        store,
        collection: collection.into(),
        space: space.into(),
        identity: embedder.identity().clone(),
        texts,
        vectors,
        _tmp: None,
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        raw.iter()
            .position(|a| a == name)
            .and_then(|i| raw.get(i + 1).cloned())
    };
    let bench = raw.iter().any(|a| a == "--bench");
    let workload = match flag("--store") {
        Some(store) if bench => real_workload(
            &PathBuf::from(store),
            &flag("--collection").unwrap_or_else(|| "scifact".into()),
            &PathBuf::from(
                flag("--queries").unwrap_or_else(|| "../shared/data/scifact/queries.jsonl".into()),
            ),
            &flag("--space").unwrap_or_else(|| "tuned".into()),
        ),
        _ => smoke_workload(),
    };
    let rounds: usize = flag("--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if bench { 5 } else { 1 });
    let collection = workload
        .store
        .open_collection(&workload.collection)
        .unwrap();
    let filter = Filter::default();
    let fusion = Fusion::default();
    let hybrid = Retrieval::Hybrid(workload.space.clone());
    // dense@100 and lexical@100: the two parts at the depth a hybrid search asks of them.
    let modes = ["dense", "lexical", "hybrid", "dense@100", "lexical@100"];
    let mut per_mode: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); modes.len()];
    for round in 0..rounds {
        for (m, mode) in modes.iter().enumerate() {
            let mut millis = Vec::with_capacity(workload.texts.len());
            for (text, vector) in workload.texts.iter().zip(&workload.vectors) {
                let started = Instant::now();
                let k = if mode.ends_with("@100") { 100 } else { 10 };
                let hits = match *mode {
                    "dense" | "dense@100" => collection.search(&SearchRequest {
                        space: &workload.space,
                        vector,
                        model: &workload.identity,
                        k,
                        ef: None,
                        filter: &filter,
                    }),
                    "lexical" | "lexical@100" => collection.lexical_search(&LexicalRequest {
                        text,
                        k,
                        filter: &filter,
                    }),
                    _ => retrieve(
                        &collection,
                        &RetrievalRequest {
                            retrieval: &hybrid,
                            text,
                            dense: Some(DenseQuery {
                                vector,
                                model: &workload.identity,
                            }),
                            k: 10,
                            ef: None,
                            filter: &filter,
                            fusion: &fusion,
                        },
                    ),
                }
                .unwrap();
                millis.push(started.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(hits);
            }
            millis.sort_by(|a, b| a.total_cmp(b));
            let (p50, p99) = (percentile(&millis, 0.5), percentile(&millis, 0.99));
            println!(
                "round {} {mode:>11}: p50 {p50:.3} ms, p99 {p99:.3} ms ({} queries)",
                round + 1,
                millis.len()
            );
            per_mode[m].0.push(p50);
            per_mode[m].1.push(p99);
        }
    }
    println!(
        "collection {:?} ({} documents), space {:?}, k = 10, {} rounds:",
        workload.collection,
        collection.len(),
        workload.space,
        rounds
    );
    for (mode, (p50s, p99s)) in modes.iter().zip(per_mode) {
        println!(
            "{mode:>11}: median p50 {:.3} ms, median p99 {:.3} ms",
            median(p50s),
            median(p99s)
        );
    }
}
