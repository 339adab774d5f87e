//! attune over a three-node Qdrant cluster on loopback (distributed mode; each generation a
//! collection of 3 shards with replication factor 2), end to end with the binaries: `attune
//! index build --backend qdrant`, two `attune serve` processes over the same cluster, searches
//! and upserts under load while a node is killed with SIGKILL and restarted, and a re-index with
//! a tuned model. Each test starts its own cluster; they run one at a time (2 cores). Skipped
//! without the Qdrant binary, unless `ATTUNE_REQUIRE_QDRANT=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attune_index::fixtures::QdrantServer;
use attune_model::fixtures::{report_skipped, write_random_bert, RandomBertSpec};
use serde_json::{json, Value};

mod common;
use common::{free_port, Server};

/// Documents in the collection.
const DOCUMENTS: usize = 300;
/// Documents upserted while a node is down.
const WRITTEN_WHILE_DOWN: usize = 10;
/// The longest a failover may disturb searches (the bound).
const FAILOVER_WINDOW: Duration = Duration::from_secs(10);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The Qdrant binary, or `None` (the test reported skipped).
fn qdrant(test: &str) -> Option<PathBuf> {
    let binary = QdrantServer::binary();
    if binary.is_none() {
        assert!(
            !QdrantServer::required(),
            "ATTUNE_REQUIRE_QDRANT=1 but there is no Qdrant binary"
        );
        report_skipped(
            &format!("tests/qdrant_cluster.rs::{test}"),
            "no Qdrant binary (../shared/tools/qdrant/qdrant or ATTUNE_QDRANT_BIN)",
        );
    }
    binary
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// (status, body) of a request; status 0 when there was no answer.
fn send(agent: &ureq::Agent, method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let result = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("PUT", Some(body)) => agent
            .put(url)
            .header("authorization", "Bearer sesame")
            .send_json(body),
        (_, Some(body)) => agent.post(url).send_json(body),
        _ => unreachable!("POST and PUT carry a body"),
    };
    match result {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_json().unwrap_or(Value::Null),
        ),
        Err(e) => (0, Value::String(e.to_string())),
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Three Qdrant nodes in distributed mode.
struct Cluster {
    nodes: Vec<QdrantServer>,
}

impl Cluster {
    fn start(binary: &Path) -> Self {
        let first = QdrantServer::start_node(binary, None).unwrap();
        let peer = first.peer_uri();
        let mut nodes = vec![first];
        for _ in 0..2 {
            nodes.push(QdrantServer::start_node(binary, Some(peer.clone())).unwrap());
        }
        let cluster = Self { nodes };
        let http = agent(Duration::from_secs(5));
        wait_until("three peers", Duration::from_secs(60), || {
            let (_, body) = send(&http, "GET", &format!("{}/cluster", cluster.url(0)), None);
            body["result"]["peers"]
                .as_object()
                .is_some_and(|p| p.len() == 3)
        });
        cluster
    }

    fn url(&self, node: usize) -> String {
        self.nodes[node].url()
    }

    /// Every node's URL, starting with `first`.
    fn urls_from(&self, first: usize) -> String {
        (0..self.nodes.len())
            .map(|i| self.url((first + i) % self.nodes.len()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Live documents of "shop" counted through node `node`.
    fn count(&self, node: usize) -> Option<u64> {
        let body =
            json!({"exact": true, "filter": {"must": [{"key": "live", "match": {"value": true}}]}});
        let url = format!("{}/collections/attune~shop/points/count", self.url(node));
        let (status, answer) = send(&agent(Duration::from_secs(10)), "POST", &url, Some(&body));
        (status == 200)
            .then(|| answer["result"]["count"].as_u64())
            .flatten()
    }

    /// True when every shard replica node `node` holds of generation `generation` is Active.
    fn local_shards_active(&self, node: usize, generation: u64) -> bool {
        let url = format!(
            "{}/collections/attune~shop~g{generation}/cluster",
            self.url(node)
        );
        let (status, body) = send(&agent(Duration::from_secs(10)), "GET", &url, None);
        let shards = body["result"]["local_shards"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        status == 200 && !shards.is_empty() && shards.iter().all(|s| s["state"] == "Active")
    }
}

fn write_corpus(path: &Path, n: usize) {
    let colours = ["red", "blue", "green", "black"];
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"_id": format!("p{i}"), "title": format!("item{i} {}", colours[i % 4]),
                   "text": format!("{} shoe number {i}", colours[(i / 4) % 4]),
                   "metadata": {"colour": colours[i % 4]}})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// The store flags of every command: the cluster's nodes (from `first`), 3 shards, 2 copies.
fn store_args(cluster: &Cluster, first: usize) -> Vec<String> {
    [
        "--backend",
        "qdrant",
        "--qdrant-url",
        &cluster.urls_from(first),
        "--qdrant-shards",
        "3",
        "--qdrant-replication",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `attune index build` of "shop" (from `corpus`, or its own documents) with spaces base and
/// tuned; returns the build report.
fn build(cluster: &Cluster, corpus: Option<&Path>, base: &Path, tuned: &Path) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_attune"));
    command
        .args([
            "index",
            "build",
            "--device",
            "cpu",
            "--collection",
            "shop",
            "--json",
        ])
        .args(store_args(cluster, 0))
        .arg("--space")
        .arg(format!("base={}", base.display()))
        .arg("--space")
        .arg(format!("tuned={}", tuned.display()));
    if let Some(corpus) = corpus {
        command.arg("--corpus").arg(corpus);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `attune serve` over the cluster (nodes tried from `first`), once it serves "shop" at
/// `generation`.
fn serve(cluster: &Cluster, first: usize, generation: u64) -> (Server, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_attune"))
            .args([
                "serve",
                "--device",
                "cpu",
                "--bind",
                &format!("127.0.0.1:{port}"),
            ])
            .args(store_args(cluster, first))
            .env("ATTUNE_API_KEY", "sesame")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("attune serve ready", Duration::from_secs(60), || {
        served_generation(&base) == Some(generation)
    });
    (server, base)
}

fn served_generation(base: &str) -> Option<u64> {
    let (_, body) = send(
        &agent(Duration::from_secs(5)),
        "GET",
        &format!("{base}/readyz"),
        None,
    );
    body["collections"]["shop"].as_u64()
}

/// One request of the load: when it started and ended (seconds since the load began) and
/// whether it failed (with why).
#[derive(Debug, Clone)]
struct Outcome {
    start: f64,
    end: f64,
    failure: Option<String>,
}

/// Searches `base` until `stop`, one at a time.
fn search_load(base: String, stop: Arc<AtomicBool>, t0: Instant) -> Vec<Outcome> {
    let http = agent(Duration::from_secs(30));
    let mut out = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let start = t0.elapsed().as_secs_f64();
        let query = json!({"query": format!("shoe number {}", i % DOCUMENTS), "k": 5});
        let (status, body) = send(
            &http,
            "POST",
            &format!("{base}/v1/collections/shop/search"),
            Some(&query),
        );
        let ok = status == 200 && body["results"].as_array().is_some_and(|r| r.len() == 5);
        out.push(Outcome {
            start,
            end: t0.elapsed().as_secs_f64(),
            failure: (!ok).then(|| format!("{status} {body}")),
        });
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    out
}

/// The span from the first failed request's start to the last one's end (zero when none
/// failed), and how many failed.
fn failure_window(outcomes: &[Outcome]) -> (f64, usize) {
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    match (failed.first(), failed.last()) {
        (Some(first), Some(last)) => (last.end - first.start, failed.len()),
        _ => (0.0, 0),
    }
}

#[test]
fn searches_through_two_servers_survive_a_node_killed_and_restarted() {
    let Some(binary) = qdrant("searches_through_two_servers_survive_a_node_killed_and_restarted")
    else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    write_random_bert(&model, &RandomBertSpec::default()).unwrap();
    let corpus = tmp.path().join("corpus.jsonl");
    write_corpus(&corpus, DOCUMENTS);
    let mut cluster = Cluster::start(&binary);
    let total = (DOCUMENTS + WRITTEN_WHILE_DOWN) as u64;
    let report = build(&cluster, Some(&corpus), &model, &model);
    assert_eq!(report["documents"], DOCUMENTS, "{report}");

    // Server B tries node 3 first: the node that is killed.
    let (_a, server_a) = serve(&cluster, 0, 1);
    let (_b, server_b) = serve(&cluster, 2, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let servers = [server_a, server_b];
    let loads: Vec<_> = servers
        .clone()
        .into_iter()
        .map(|base| {
            let stop = stop.clone();
            std::thread::spawn(move || search_load(base, stop, t0))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let killed_at = t0.elapsed().as_secs_f64();
    cluster.nodes[2].kill();
    std::thread::sleep(Duration::from_secs(2));
    // Writes while node 3 is down reach it when it is back.
    let http = agent(Duration::from_secs(30));
    for i in 0..WRITTEN_WHILE_DOWN {
        let body = json!({"documents": [{"id": format!("down{i}"), "title": "written while a node was down",
                                         "text": format!("suede boot {i}")}]});
        let url = format!("{}/v1/collections/shop/documents", servers[i % 2]);
        let (status, answer) = send(&http, "PUT", &url, Some(&body));
        assert_eq!(status, 200, "{answer}");
    }
    std::thread::sleep(Duration::from_secs(8));
    let restarted_at = t0.elapsed().as_secs_f64();
    cluster.nodes[2].launch().unwrap();
    wait_until("node 3 caught up", Duration::from_secs(120), || {
        cluster.local_shards_active(2, 1) && cluster.count(2) == Some(total)
    });
    let caught_up_at = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let outcomes: Vec<Vec<Outcome>> = loads.into_iter().map(|h| h.join().unwrap()).collect();

    let all: Vec<Outcome> = outcomes.concat();
    let (window, failed) = failure_window(&all);
    println!(
        "qdrant failover: {} searches through 2 servers; node 3 killed at {killed_at:.1} s, \
         restarted at {restarted_at:.1} s, caught up at {caught_up_at:.1} s; {failed} failed, \
         failover window {window:.2} s",
        all.len()
    );
    for outcome in all.iter().filter(|o| o.failure.is_some()).take(5) {
        println!(
            "  failed at {:.2}-{:.2} s: {}",
            outcome.start,
            outcome.end,
            outcome.failure.as_deref().unwrap_or("")
        );
    }
    assert!(
        all.len() > 100,
        "too little load to judge: {} searches",
        all.len()
    );
    assert!(
        window <= FAILOVER_WINDOW.as_secs_f64(),
        "failover window {window:.2} s"
    );
    for node in 0..3 {
        assert_eq!(
            cluster.count(node),
            Some(total),
            "documents through node {}",
            node + 1
        );
    }
}

#[test]
fn a_reindex_with_a_tuned_model_loses_no_write_under_load() {
    let Some(binary) = qdrant("a_reindex_with_a_tuned_model_loses_no_write_under_load") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (base, tuned) = (tmp.path().join("base"), tmp.path().join("tuned"));
    write_random_bert(&base, &RandomBertSpec::default()).unwrap();
    let spec = RandomBertSpec {
        seed: 7,
        ..RandomBertSpec::default()
    };
    write_random_bert(&tuned, &spec).unwrap();
    let corpus = tmp.path().join("corpus.jsonl");
    write_corpus(&corpus, DOCUMENTS);
    let cluster = Cluster::start(&binary);
    build(&cluster, Some(&corpus), &base, &base);
    let (_a, server_a) = serve(&cluster, 0, 1);
    let (_b, server_b) = serve(&cluster, 1, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut searches: Vec<_> = [server_a.clone(), server_b.clone()]
        .into_iter()
        .map(|base| {
            let stop = stop.clone();
            std::thread::spawn(move || search_load(base, stop, t0))
        })
        .collect();
    let writer = {
        let (stop, servers) = (stop.clone(), [server_a.clone(), server_b.clone()]);
        std::thread::spawn(move || {
            let http = agent(Duration::from_secs(30));
            let (mut acknowledged, mut outcomes) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("u{i}");
                let body = json!({"documents": [{"id": id, "title": format!("velvet slipper {i}"),
                                                 "text": "written while the collection was re-indexed"}]});
                let base = &servers[i % 2];
                let start = t0.elapsed().as_secs_f64();
                let (status, answer) = send(
                    &http,
                    "PUT",
                    &format!("{base}/v1/collections/shop/documents"),
                    Some(&body),
                );
                outcomes.push(Outcome {
                    start,
                    end: t0.elapsed().as_secs_f64(),
                    failure: (status != 200).then(|| format!("{status} {answer}")),
                });
                if status == 200 {
                    acknowledged.push(id);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (acknowledged, outcomes)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let report = build(&cluster, None, &base, &tuned);
    assert_eq!(report["generation"], 2, "{report}");
    let built_at = t0.elapsed().as_secs_f64();
    for server in [&server_a, &server_b] {
        wait_until(
            "the switch seen by both servers",
            Duration::from_secs(30),
            || served_generation(server) == Some(2),
        );
    }
    let switched_at = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, writes) = writer.join().unwrap();
    let reads: Vec<Outcome> = searches.drain(..).flat_map(|h| h.join().unwrap()).collect();

    let failed: Vec<&Outcome> = reads
        .iter()
        .chain(&writes)
        .filter(|o| o.failure.is_some())
        .collect();
    println!(
        "qdrant re-index under load: {} searches and {} upserts through 2 servers; build done at \
         {built_at:.1} s (replayed {} writes), both servers on generation 2 at {switched_at:.1} s; \
         {} failed",
        reads.len(),
        writes.len(),
        report["replayed"],
        failed.len()
    );
    for outcome in failed.iter().take(5) {
        println!(
            "  failed at {:.2} s: {}",
            outcome.start,
            outcome.failure.as_deref().unwrap_or("")
        );
    }
    assert!(failed.is_empty(), "{} requests failed", failed.len());
    assert!(
        acknowledged.len() > 20,
        "too few writes to judge: {}",
        acknowledged.len()
    );
    let http = agent(Duration::from_secs(10));
    for server in [&server_a, &server_b] {
        for id in &acknowledged {
            let url = format!("{server}/v1/collections/shop/documents/{id}");
            let (status, body) = send(&http, "GET", &url, None);
            assert_eq!(
                status, 200,
                "acknowledged {id} missing through {server}: {body}"
            );
        }
    }
    // Every acknowledged write is searchable in the tuned space, embedded by the tuned model.
    let query = json!({"query": format!("velvet slipper {}", acknowledged.len() / 2), "k": 1000, "space": "tuned"});
    let (status, body) = send(
        &http,
        "POST",
        &format!("{server_a}/v1/collections/shop/search"),
        Some(&query),
    );
    assert_eq!(status, 200, "{body}");
    let found: std::collections::HashSet<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    for id in &acknowledged {
        assert!(
            found.contains(id.as_str()),
            "{id} is not in the tuned space"
        );
    }
    assert_eq!(
        cluster.count(0),
        Some((DOCUMENTS + acknowledged.len()) as u64)
    );
}
