//! The embedded store against Qdrant through the vector-store seam, on the same vectors in the
//! same run: re-index throughput (documents per second written by `VectorStore::build`, the
//! vectors given, so no model runs), recall@10 against exact search and single-client QPS at
//! the collections' default `ef_search` (64) through attune's `ServedCollection::search`, the
//! same search sent to Qdrant directly (its REST API, no attune in between), and resident
//! memory added per million documents (one space).
//!
//! ```text
//! cargo bench --bench vector_store -- --data D.npy --queries Q.npy --out result.json
//!     [--qdrant-url URL | (a Qdrant started from ../shared/tools/qdrant)] [--repeats 3]
//! ```
//! Without `--data` (as `cargo test --all-targets` runs it) a smoke run on 2,000 clustered
//! vectors, skipped when there is no Qdrant binary.
//!
//! `--ids DOCS.jsonl` names the rows (an `"id"` per line, in row order; default `d{row}`).
//! `--api-url URL --query-texts QUERIES.jsonl [--collection NAME] [--space NAME]` measures only
//! searches through a running `attune serve` (one client, the queries' `"text"`s, recall@10
//! against exact search over the rows, the ids mapped by `--ids`).
//!
//! Memory: the embedded store's is what a fresh process adds to its resident set by opening the
//! collection and searching it; Qdrant's is its server's resident set after the build and the
//! searches, minus the same server's before (so the bench starts its own Qdrant to measure it).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Instant;

use attune_index::fixtures::{
    clustered_unit_vectors, read_npy, write_npy, ClusterSpec, QdrantServer,
};
use attune_index::{
    exact_top_k, BuildMode, BuildSettings, BuildSource, Corpus, Document, Embedder, Filter,
    ModelIdentity, QdrantSettings, QdrantStore, SearchRequest, SpaceSpec, Store, VectorStore,
};
use serde_json::{json, Value};

/// Hands out the bench's vectors: document `d{i}` is row i.
struct Rows<'a> {
    data: &'a [f32],
    dim: usize,
    identity: ModelIdentity,
}

impl Embedder for Rows<'_> {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }
    fn embed_documents(
        &mut self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(texts
            .iter()
            .map(|t| {
                let i: usize = t.trim_start_matches('d').parse().expect("row text");
                self.data[i * self.dim..(i + 1) * self.dim].to_vec()
            })
            .collect())
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Resident set of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The pid listening on `port` (the Qdrant server the bench started).
fn qdrant_pid(port_url: &str) -> Option<u32> {
    let port = port_url.rsplit(':').next()?.trim_end_matches('/');
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ss -ltnpH 'sport = :{port}' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2"
        ))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

struct Measured {
    build_docs_per_s: f64,
    recall: f64,
    qps: f64,
    direct: Option<(f64, f64)>,
    memory_bytes: Option<u64>,
}

/// The id of each row: `--ids` (a JSONL file with an `"id"` per line) or `d{row}`.
fn row_ids(path: Option<&str>, n: usize) -> Vec<String> {
    match path {
        Some(path) => std::fs::read_to_string(path)
            .expect("--ids")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("--ids line");
                v["id"].as_str().expect("an id").to_string()
            })
            .collect(),
        None => (0..n).map(|i| format!("d{i}")).collect(),
    }
}

/// Recall@10 and single-client QPS of text searches through a running attune server.
fn through_api(
    url: &str,
    collection: &str,
    space: &str,
    texts: &[String],
    truth: &[Vec<String>],
    repeats: usize,
) -> (f64, f64) {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let endpoint = format!("{url}/v1/collections/{collection}/search");
    let search = |text: &str| -> Vec<String> {
        let body = json!({"query": text, "k": 10, "space": space});
        let answer: Value = agent
            .post(&endpoint)
            .send_json(&body)
            .expect("search")
            .body_mut()
            .read_json()
            .expect("json");
        answer["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect()
    };
    recall_and_qps(texts.len(), |i| search(&texts[i]), truth, repeats)
}

/// Recall@10 of `search` (query index → ids, best first) over `queries` queries against
/// `truth`, and its single-client QPS: the median of `repeats` passes, one query at a time.
fn recall_and_qps(
    queries: usize,
    search: impl Fn(usize) -> Vec<String>,
    truth: &[Vec<String>],
    repeats: usize,
) -> (f64, f64) {
    let results: Vec<Vec<String>> = (0..queries).map(&search).collect();
    let recall = recall_of(&results, truth, 10);
    let qps = median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                for i in 0..queries {
                    std::hint::black_box(search(i));
                }
                queries as f64 / t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    (recall, qps)
}

fn recall_of(results: &[Vec<String>], truth: &[Vec<String>], k: usize) -> f64 {
    let hits: usize = results
        .iter()
        .zip(truth)
        .map(|(r, t)| r.iter().filter(|id| t.contains(id)).count())
        .sum();
    hits as f64 / (truth.len() * k) as f64
}

fn measure(
    store: &dyn VectorStore,
    ids: &[String],
    data: &[f32],
    dim: usize,
    queries: &[f32],
    truth: &[Vec<String>],
    repeats: usize,
) -> Measured {
    let n = data.len() / dim;
    let identity = ModelIdentity {
        fingerprint: format!("bench-rows-{n}x{dim}"),
        dim,
        source: String::new(),
        encoding: None,
    };
    let corpus = Corpus {
        path: PathBuf::from("bench"),
        documents: (0..n)
            .map(|i| Document {
                id: ids[i].clone(),
                title: String::new(),
                text: format!("d{i}"),
                metadata: Default::default(),
            })
            .collect(),
        duplicates: Vec::new(),
        empty: Vec::new(),
    };
    let mut rows = Rows {
        data,
        dim,
        identity: identity.clone(),
    };
    let mut spaces = [SpaceSpec {
        name: "v".into(),
        embedder: &mut rows as &mut dyn Embedder,
    }];
    let settings = BuildSettings {
        lexical: None,
        ..BuildSettings::default()
    };
    let started = Instant::now();
    store
        .build(
            "bench",
            BuildSource::Corpus {
                corpus: &corpus,
                mode: BuildMode::Replace,
            },
            &mut spaces,
            &settings,
            &mut |_| {},
        )
        .expect("build");
    let build_docs_per_s = n as f64 / started.elapsed().as_secs_f64();
    let collection = store.open_collection("bench").expect("open");
    let filter = Filter::default();
    let search = |q: &[f32]| -> Vec<String> {
        let request = SearchRequest {
            space: "v",
            vector: q,
            model: &identity,
            k: 10,
            ef: None,
            filter: &filter,
        };
        collection
            .search(&request)
            .expect("search")
            .into_iter()
            .map(|h| h.id)
            .collect()
    };
    let nq = queries.len() / dim;
    let (recall, qps) = recall_and_qps(
        nq,
        |i| search(&queries[i * dim..(i + 1) * dim]),
        truth,
        repeats,
    );
    Measured {
        build_docs_per_s,
        recall,
        qps,
        direct: None,
        memory_bytes: None,
    }
}

/// Resident memory a process adds by opening the embedded store's collection "bench" and
/// searching it once per query: measured in a child process of its own (this one's allocator
/// keeps what the build used).
fn served_memory(store: &std::path::Path, queries: &std::path::Path) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().expect("this bench"))
        .arg("--serve-memory")
        .arg(store)
        .arg("--queries")
        .arg(queries)
        .output()
        .expect("run the memory child");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("bytes")
}

/// The child of [`served_memory`]: prints the bytes.
fn serve_memory(dir: &std::path::Path, queries: &std::path::Path) {
    let (queries, dim) = read_npy(queries).expect("queries");
    let before = rss(std::process::id());
    let store = Store::open(dir).expect("store");
    let collection = store.open_collection("bench").expect("open");
    let identity = collection.spaces()["v"].clone();
    let filter = Filter::default();
    for q in queries.chunks(dim) {
        let request = SearchRequest {
            space: "v",
            vector: q,
            model: &identity,
            k: 10,
            ef: None,
            filter: &filter,
        };
        std::hint::black_box(collection.search(&request).expect("search"));
    }
    println!("{}", rss(std::process::id()).saturating_sub(before));
}

/// The same searches sent to Qdrant's REST API directly (same ef), read back as ids.
fn direct_qdrant(
    url: &str,
    prefix: &str,
    dim: usize,
    queries: &[f32],
    truth: &[Vec<String>],
    repeats: usize,
) -> (f64, f64) {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let endpoint = format!("{url}/collections/{prefix}~bench/points/query");
    let search = |q: &[f32]| -> Vec<String> {
        let body = json!({"query": q, "using": "v", "limit": 10, "params": {"hnsw_ef": 64},
                          "with_payload": ["id"]});
        let answer: Value = agent
            .post(&endpoint)
            .send_json(&body)
            .expect("query")
            .body_mut()
            .read_json()
            .expect("json");
        answer["result"]["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["payload"]["id"].as_str().map(str::to_string))
            .collect()
    };
    let nq = queries.len() / dim;
    recall_and_qps(
        nq,
        |i| search(&queries[i * dim..(i + 1) * dim]),
        truth,
        repeats,
    )
}

fn main() {
    let raw: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        raw.iter()
            .position(|a| a == name)
            .and_then(|i| raw.get(i + 1).cloned())
    };
    let repeats: usize = flag("--repeats").map_or(3, |v| v.parse().unwrap());
    if let Some(store) = flag("--serve-memory") {
        serve_memory(
            &PathBuf::from(store),
            &PathBuf::from(flag("--queries").expect("--queries")),
        );
        return;
    }
    let smoke_dir = tempfile::tempdir().expect("tempdir");
    let (data_path, queries_path) = match (flag("--data"), flag("--queries")) {
        (Some(d), Some(q)) => (PathBuf::from(d), PathBuf::from(q)),
        _ => {
            let spec = ClusterSpec {
                n: 2_000,
                dim: 64,
                clusters: 20,
                ..ClusterSpec::default()
            };
            let (d, q) = (
                smoke_dir.path().join("d.npy"),
                smoke_dir.path().join("q.npy"),
            );
            write_npy(&d, &clustered_unit_vectors(&spec), spec.dim).unwrap();
            let queries = ClusterSpec {
                n: 50,
                member_seed: 2,
                ..spec
            };
            write_npy(&q, &clustered_unit_vectors(&queries), spec.dim).unwrap();
            (d, q)
        }
    };
    let (data, dim) = read_npy(&data_path).expect("data");
    let (queries, _) = read_npy(&queries_path).expect("queries");
    let nq = queries.len() / dim;
    let n = data.len() / dim;
    let ids = row_ids(flag("--ids").as_deref(), n);
    assert_eq!(ids.len(), n, "--ids names every row");
    let truth: Vec<Vec<String>> = (0..nq)
        .map(|i| {
            exact_top_k(&queries[i * dim..(i + 1) * dim], &data, dim, 10, None)
                .into_iter()
                .map(|h| ids[h.slot as usize].clone())
                .collect()
        })
        .collect();
    if let Some(url) = flag("--api-url") {
        let texts: Vec<String> =
            std::fs::read_to_string(flag("--query-texts").expect("--query-texts"))
                .expect("--query-texts")
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str::<Value>(l).expect("query line")["text"]
                        .as_str()
                        .expect("text")
                        .to_string()
                })
                .collect();
        assert_eq!(texts.len(), nq, "one text per query vector");
        let collection = flag("--collection").unwrap_or_else(|| "scifact".into());
        let space = flag("--space").unwrap_or_else(|| "base".into());
        let (recall, qps) = through_api(&url, &collection, &space, &texts, &truth, repeats);
        let out = json!({"api": url, "queries": nq, "recall_at_10": recall, "qps": qps});
        if let Some(path) = flag("--out") {
            std::fs::write(path, out.to_string()).expect("write --out");
        }
        println!("{out}");
        return;
    }
    let mut out = json!({"documents": n, "dim": dim, "queries": nq, "k": 10, "ef": 64});

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_or_create(&dir.path().join("store")).expect("store");
    let mut embedded = measure(&store, &ids, &data, dim, &queries, &truth, repeats);
    drop(store);
    embedded.memory_bytes = Some(served_memory(&dir.path().join("store"), &queries_path));
    out["embedded"] = report(&embedded, n);

    let server = match flag("--qdrant-url") {
        Some(_) => None,
        None => match QdrantServer::binary() {
            Some(binary) => Some(QdrantServer::start(&binary).expect("start qdrant")),
            None => {
                eprintln!("vector_store: no Qdrant binary; measured the embedded store only");
                println!("{out}");
                return;
            }
        },
    };
    let url = flag("--qdrant-url").unwrap_or_else(|| server.as_ref().unwrap().url());
    let pid = server.as_ref().and_then(|s| qdrant_pid(&s.url()));
    let idle = pid.map(rss);
    let prefix = format!("bench{:08x}", rand::random::<u32>());
    let store = QdrantStore::connect(QdrantSettings {
        prefix: prefix.clone(),
        ..QdrantSettings::at(&url)
    })
    .expect("qdrant");
    let mut qdrant = measure(&store, &ids, &data, dim, &queries, &truth, repeats);
    qdrant.direct = Some(direct_qdrant(&url, &prefix, dim, &queries, &truth, repeats));
    qdrant.memory_bytes = pid
        .zip(idle)
        .map(|(pid, idle)| rss(pid).saturating_sub(idle));
    store.drop_collection("bench").expect("drop");
    out["qdrant"] = report(&qdrant, n);
    let text = serde_json::to_string_pretty(&out).unwrap();
    if let Some(path) = flag("--out") {
        std::fs::write(path, &text).expect("write --out");
    }
    println!("{text}");
}

fn report(m: &Measured, n: usize) -> Value {
    let mut value = json!({
        "build_docs_per_s": m.build_docs_per_s,
        "recall_at_10": m.recall,
        "qps_through_attune": m.qps,
    });
    if let Some((recall, qps)) = m.direct {
        value["direct"] = json!({"recall_at_10": recall, "qps": qps});
    }
    if let Some(bytes) = m.memory_bytes {
        value["memory_bytes"] = json!(bytes);
        value["memory_mib_per_million_documents"] =
            json!(bytes as f64 / n as f64 * 1e6 / 1048576.0);
    }
    value
}
