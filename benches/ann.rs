//! HNSW search and build: attune's graph (built by hnsw_rs, searched by attune's frozen copy)
//! on the vectors `scripts/bench-ann.sh` also hands to hnswlib, so the two are measured on the
//! same data in the same run.
//!
//! ```text
//! cargo bench --bench ann -- --data D.npy --queries Q.npy --out result.json
//!     [--m 16] [--ef-construction 200] [--efs 16,32,64,128,256] [--k 10] [--repeats 3]
//!     [--also-hnsw-rs-search]
//! ```
//! Recall@k is against exact search (ties by lower index), QPS is single-threaded (one query
//! at a time, median of `--repeats` passes). Build threads follow RAYON_NUM_THREADS.

use std::path::PathBuf;

/// The allocator `attune` itself runs on (src/main.rs); hnsw_rs allocates per visited point.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Instant;

use attune_index::fixtures::{clustered_unit_vectors, read_npy, write_npy, ClusterSpec};
use attune_index::{exact_top_k, Graph, GraphPoint, HnswParams};

struct Args {
    data: PathBuf,
    queries: PathBuf,
    out: Option<PathBuf>,
    graph_cache: Option<PathBuf>,
    m: usize,
    ef_construction: usize,
    efs: Vec<usize>,
    k: usize,
    repeats: usize,
}

fn parse() -> Args {
    let mut args = Args {
        data: PathBuf::new(),
        queries: PathBuf::new(),
        out: None,
        graph_cache: None,
        m: 16,
        ef_construction: 200,
        efs: vec![16, 32, 64, 128, 256],
        k: 10,
        repeats: 3,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < raw.len() {
        let value = || raw.get(i + 1).cloned().expect("flag value");
        match raw[i].as_str() {
            "--data" => args.data = value().into(),
            "--generate-clustered" => {
                // --generate-clustered DIR: writes DIR/data.npy (100k) and DIR/queries.npy (1k)
                // from the same 1,000 clusters, then exits.
                let dir = PathBuf::from(value());
                std::fs::create_dir_all(&dir).expect("dir");
                let spec = ClusterSpec::default();
                let data = clustered_unit_vectors(&spec);
                write_npy(&dir.join("data.npy"), &data, spec.dim).expect("data.npy");
                let queries = clustered_unit_vectors(&ClusterSpec {
                    n: 1_000,
                    member_seed: 2,
                    ..spec
                });
                write_npy(&dir.join("queries.npy"), &queries, spec.dim).expect("queries.npy");
                std::process::exit(0);
            }
            "--queries" => args.queries = value().into(),
            "--out" => args.out = Some(value().into()),
            // Reuse a graph written by an earlier run (search tuning only; no build time).
            "--graph-cache" => args.graph_cache = Some(value().into()),
            "--m" => args.m = value().parse().expect("--m"),
            "--ef-construction" => {
                args.ef_construction = value().parse().expect("--ef-construction")
            }
            "--efs" => {
                args.efs = value()
                    .split(',')
                    .map(|s| s.parse().expect("--efs"))
                    .collect()
            }
            "--k" => args.k = value().parse().expect("--k"),
            "--repeats" => args.repeats = value().parse().expect("--repeats"),
            // cargo bench passes --bench; ignore anything else.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    args
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let mut args = parse();
    let smoke_dir = tempfile::tempdir().expect("tempdir");
    if args.data.as_os_str().is_empty() {
        // `cargo test --all-targets` (or `cargo bench` without --data): a quick smoke run on
        // 3,000 clustered vectors.
        let spec = ClusterSpec {
            n: 3_000,
            dim: 64,
            clusters: 30,
            ..ClusterSpec::default()
        };
        args.data = smoke_dir.path().join("data.npy");
        args.queries = smoke_dir.path().join("queries.npy");
        write_npy(&args.data, &clustered_unit_vectors(&spec), spec.dim).expect("data");
        let queries = clustered_unit_vectors(&ClusterSpec {
            n: 100,
            member_seed: 2,
            ..spec
        });
        write_npy(&args.queries, &queries, spec.dim).expect("queries");
        args.efs = vec![64];
        args.repeats = 1;
    }
    let (data, dim) = read_npy(&args.data).expect("data");
    let (queries, qdim) = read_npy(&args.queries).expect("queries");
    assert_eq!(dim, qdim);
    let n = data.len() / dim;
    let nq = queries.len() / dim;
    let unit = |v: &[f32]| {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let data: Vec<f32> = data.chunks(dim).flat_map(unit).collect();
    let queries: Vec<Vec<f32>> = queries.chunks(dim).map(unit).collect();
    eprintln!("[ann] n={n} dim={dim} queries={nq} k={}", args.k);

    let truth: Vec<Vec<u32>> = queries
        .iter()
        .map(|q| {
            exact_top_k(q, &data, dim, args.k, None)
                .iter()
                .map(|h| h.slot)
                .collect()
        })
        .collect();
    let exact_times: Vec<f64> = (0..args.repeats)
        .map(|_| {
            let t = Instant::now();
            for q in &queries {
                std::hint::black_box(exact_top_k(q, &data, dim, args.k, None));
            }
            t.elapsed().as_secs_f64()
        })
        .collect();

    let points: Vec<GraphPoint> = data
        .chunks(dim)
        .enumerate()
        .map(|(i, v)| GraphPoint {
            node: i as u32,
            hash: [0; 16],
            id: String::new(),
            vector: v.to_vec(),
        })
        .collect();
    let params = HnswParams {
        m: args.m,
        ef_construction: args.ef_construction,
        ..HnswParams::default()
    };
    let cached = args.graph_cache.as_ref().filter(|p| p.exists());
    let (graph, build_seconds) = match cached {
        Some(path) => (Graph::read(path).expect("cached graph"), f64::NAN),
        None => {
            let started = Instant::now();
            let graph = Graph::build(points, dim, "bench", &params).expect("build");
            (graph, started.elapsed().as_secs_f64())
        }
    };
    eprintln!(
        "[ann] attune build {build_seconds:.1}s (rayon threads {})",
        rayon::current_num_threads()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = args
        .graph_cache
        .clone()
        .unwrap_or_else(|| dir.path().join("bench.graph"));
    graph.write(&path).expect("write");
    let graph_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let reread = Graph::read(&path).expect("read");
    let read_seconds = t.elapsed().as_secs_f64();
    assert_eq!(reread.len(), graph.len());
    drop(reread);

    let mut rows = Vec::new();
    for &ef in &args.efs {
        let mut found = 0usize;
        for (q, t) in queries.iter().zip(&truth) {
            let hits = graph.search(q, args.k, ef, None);
            found += hits.iter().filter(|h| t.contains(&h.slot)).count();
        }
        let recall = found as f64 / (args.k * nq) as f64;
        let times: Vec<f64> = (0..args.repeats)
            .map(|_| {
                let t = Instant::now();
                for q in &queries {
                    std::hint::black_box(graph.search(q, args.k, ef, None));
                }
                t.elapsed().as_secs_f64()
            })
            .collect();
        let qps = nq as f64 / median(times.clone());
        eprintln!("[ann] attune ef={ef} recall={recall:.4} qps={qps:.0}");
        rows.push(serde_json::json!({"ef": ef, "recall": recall, "qps_1thread_median": qps, "pass_seconds": times}));
    }
    let result = serde_json::json!({
        "bench": "ann", "n": n, "dim": dim, "nq": nq, "k": args.k, "m": args.m,
        "ef_construction": args.ef_construction, "build_threads": rayon::current_num_threads(),
        "build_seconds": build_seconds, "graph_file_bytes": graph_bytes,
        "graph_read_seconds": read_seconds,
        "exact_qps_1thread_median": nq as f64 / median(exact_times),
        "search": rows,
    });
    let line = result.to_string();
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{line}\n")).expect("write result");
    }
    println!("{line}");
}
