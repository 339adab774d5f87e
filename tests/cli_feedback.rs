//! Learning from shoppers, end to end with all-MiniLM-L6-v2 on a small generated demo store:
//! the server logs plain searches for feedback, `attune feedback simulate` sends shoppers
//! through the public API, query drift rises on a shifted mix and not on the same volume of
//! in-distribution queries, and bad input (unknown requests, malformed since-times, a
//! collection without events) gives clear errors while nothing is exported or trained. On a
//! Qdrant store (skipped without the Qdrant binary, unless `ATTUNE_REQUIRE_QDRANT=1`), `attune
//! eval --collection` and `attune feedback export` work as on an embedded one.
//!
//! Needs the model (`scripts/fetch-model.sh`, or `ATTUNE_MODEL_DIR`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::*;

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A demo store indexed with the base model into collections "demo" (searched) and "quiet"
/// (never searched), shared by the tests.
struct Built {
    dir: tempfile::TempDir,
}

impl Built {
    fn data(&self) -> PathBuf {
        self.dir.path().join("shoe-store")
    }

    /// A copy of the store for one test.
    fn store_copy(&self, name: &str) -> PathBuf {
        let copy = self.dir.path().join(name);
        let status = Command::new("cp")
            .arg("-r")
            .arg(self.dir.path().join("store"))
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        copy
    }
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("shoe-store");
        let store = dir.path().join("store");
        ok(attune(&[
            "demo-data",
            "--out",
            data.to_str().unwrap(),
            "--products",
            "160",
            "--queries",
            "300",
        ]));
        for collection in ["demo", "quiet"] {
            ok(attune(&[
                "index",
                "build",
                "--store",
                store.to_str().unwrap(),
                "--collection",
                collection,
                "--corpus",
                data.to_str().unwrap(),
                "--space",
                &format!("base={}", model_dir().display()),
            ]));
        }
        Built { dir }
    })
}

/// Serves `store` with the settings `config` (TOML text); returns the server and its URL.
fn serve(store: &Path, config: &str) -> (Server, String) {
    let settings = store.with_extension("toml");
    std::fs::write(&settings, config).unwrap();
    serve_with(&["--store", store.to_str().unwrap()], &settings)
}

/// Serves the store the flags `store` name with the settings file `settings`; returns the
/// server and its URL once it is ready.
fn serve_with(store: &[&str], settings: &Path) -> (Server, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_attune"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .args(store)
            .arg("--config")
            .arg(settings)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "no server");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, base)
}

/// Stops a server with SIGTERM and waits: a graceful stop writes the searches no feedback has
/// flushed yet.
fn stop_gracefully(server: &mut Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server.0.wait().unwrap();
}

/// The pairs of an exported JSONL file.
fn read_pairs(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Two exports hold the same pairs in the same order (weights equal up to float rounding).
fn assert_same_pairs(a: &[Value], b: &[Value]) {
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        for field in ["query", "positive", "negatives", "grade", "source"] {
            assert_eq!(a[field], b[field], "{field}");
        }
        let (wa, wb) = (a["weight"].as_f64().unwrap(), b["weight"].as_f64().unwrap());
        assert!((wa - wb).abs() < 1e-9, "{wa} vs {wb}");
    }
}

/// GET `url`, or POST `body` to it; the status and the JSON answer.
fn request(url: &str, body: Option<&Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = match body {
        Some(body) => agent.post(url).send_json(body).unwrap(),
        None => agent.get(url).call().unwrap(),
    };
    (
        response.status().as_u16(),
        response.body_mut().read_json().unwrap_or(Value::Null),
    )
}

fn simulate(base: &str, split: &str, sessions: usize, seed: u64) -> Value {
    let out = ok(attune(&[
        "feedback",
        "simulate",
        "--url",
        base,
        "--collection",
        "demo",
        "--data",
        built().data().to_str().unwrap(),
        "--split",
        split,
        "--sessions",
        &sessions.to_string(),
        "--seed",
        &seed.to_string(),
    ]));
    serde_json::from_str(out.trim()).unwrap()
}

fn drift(base: &str) -> Value {
    let (status, body) = request(&format!("{base}/v1/collections/demo/drift"), None);
    assert_eq!(status, 200, "{body}");
    body["spaces"][0].clone()
}

#[test]
fn drift_rises_on_a_shifted_query_mix_and_not_on_as_many_in_distribution_queries() {
    let store = built().store_copy("drift-store");
    let (_server, base) = serve(
        &store,
        "[feedback]\nlog = [\"demo\"]\n[feedback.drift]\nwindow = 80\nmin_queries = 60\n",
    );
    // The base model was not trained by attune: its first 80 searches are the reference.
    simulate(&base, "shoppers", 80, 1);
    let report = drift(&base);
    assert_eq!(report["reference"], "first_served", "{report}");
    assert_eq!(report["reference_ready"], true, "{report}");
    assert_eq!(report["window_queries"], 0, "{report}");
    // As many in-distribution searches again: below every threshold.
    simulate(&base, "shoppers", 80, 2);
    let same = drift(&base);
    assert_eq!(same["window_queries"], 80, "{same}");
    assert_eq!(same["retraining_recommended"], false, "{same}");
    // The same volume of model numbers and SKUs, wording absent from the reference.
    simulate(&base, "identifiers", 80, 3);
    let shifted = drift(&base);
    assert_eq!(shifted["retraining_recommended"], true, "{shifted}");
    for measure in ["novel_share", "unseen_word_share"] {
        let (before, after) = (
            same[measure].as_f64().unwrap(),
            shifted[measure].as_f64().unwrap(),
        );
        assert!(after > before + 0.5, "{measure}: {before} → {after}");
    }
    assert!(!shifted["evidence"].as_array().unwrap().is_empty());
    eprintln!("in distribution: {same}\nshifted: {shifted}");
    // The gauges say the same.
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains(
            "attune_query_drift{collection=\"demo\",measure=\"retraining_recommended\",space=\"base\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn shoppers_become_pairs_and_bad_input_is_refused_without_writing() {
    let built = built();
    let store = built.store_copy("export-store");
    let out_dir = tempfile::tempdir().unwrap();
    let pairs = out_dir.path().join("pairs.jsonl");
    {
        let (mut server, base) = serve(
            &store,
            "[feedback]\nlog = [\"demo\"]\nexplore_share = 0.3\nexplore_ranks = 4\n",
        );
        // Feedback on a request the log does not have.
        let (status, body) = request(
            &format!("{base}/v1/collections/demo/feedback"),
            Some(&json!({"request_id": "no-such-request", "doc_id": "p0001", "event": "click"})),
        );
        assert_eq!(status, 404, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no-such-request"),
            "{body}"
        );
        // Plain searches return a request id, not an A/B variant.
        let (status, body) = request(
            &format!("{base}/v1/collections/demo/search"),
            Some(&json!({"query": "boots", "k": 3})),
        );
        assert_eq!(status, 200, "{body}");
        assert!(
            body["request_id"].is_string() && body.get("variant").is_none(),
            "{body}"
        );
        let simulated = simulate(&base, "shoppers", 400, 4);
        assert!(
            simulated["events"]["click"].as_u64().unwrap() > 100,
            "{simulated}"
        );
        // Exported from the running server: the same pairs the store gives once it stops.
        let from_server = out_dir.path().join("from-server.jsonl");
        let args = [
            "feedback",
            "export",
            "--url",
            &base,
            "--collection",
            "demo",
            "--out",
        ];
        let summary = ok(attune(
            &[&args[..], &[from_server.to_str().unwrap()]].concat(),
        ));
        assert!(summary.contains("swap exploration"), "{summary}");
        let out = attune(
            &[
                &args[..],
                &[from_server.to_str().unwrap(), "--since", "soon"],
            ]
            .concat(),
        );
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));
        // The A/B report counts none of these searches as A/B traffic.
        let (_, report) = request(&format!("{base}/v1/collections/demo/ab-report"), None);
        assert_eq!(report["variants"][0]["requests"], 0, "{report}");
        // A graceful stop writes the searches no feedback has flushed yet (a kill would lose
        // those, and the swap counts with them).
        stop_gracefully(&mut server);
    }
    let store_arg = store.to_str().unwrap();
    let export = |extra: &[&str]| {
        let mut args = vec!["feedback", "export", "--store", store_arg, "--out"];
        args.push(pairs.to_str().unwrap());
        args.extend_from_slice(extra);
        attune(&args)
    };
    // Malformed since-times, and a collection without events: errors, nothing written.
    for since in ["last-week", "7 days", "2026-02-30T00:00:00Z"] {
        let out = export(&["--collection", "demo", "--since", since]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(since),
            "{since}: {stderr}"
        );
        assert!(!pairs.exists());
    }
    let out = export(&["--collection", "quiet"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no logged searches"),
        "{stderr}"
    );
    let out = export(&["--collection", "nowhere"]);
    assert!(!out.status.success());
    assert!(!pairs.exists());
    // A window after every search: nothing in it.
    let out = export(&["--collection", "demo", "--since", "2999-01-01T00:00:00Z"]);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!pairs.exists());
    // The export itself.
    let summary = ok(export(&["--collection", "demo", "--since", "1h"]));
    assert!(summary.contains("swap exploration"), "{summary}");
    let lines = read_pairs(&pairs);
    // The running server exported the same pairs.
    assert_same_pairs(
        &lines,
        &read_pairs(&out_dir.path().join("from-server.jsonl")),
    );
    assert!(lines.len() > 20, "{summary}");
    for pair in &lines {
        assert_eq!(pair["source"], "feedback:demo");
        assert!(pair["weight"].as_f64().unwrap() > 0.0);
        // No document is a positive and a negative of one query.
        let positives: Vec<&Value> = lines
            .iter()
            .filter(|p| p["query"] == pair["query"])
            .map(|p| &p["positive"])
            .collect();
        for negative in pair["negatives"].as_array().unwrap() {
            assert!(!positives.contains(&negative), "{pair}");
        }
    }
    // A pipeline on the quiet collection's feedback stops at its check; nothing is trained.
    let work = out_dir.path().join("work");
    let config = out_dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "work_dir = {work:?}\nbase_model = {model:?}\ndevice = \"cpu\"\n\n[data]\npath = {data:?}\n\
             feedback = {{ collection = \"quiet\" }}\n\n[index]\nstore = {store:?}\ncollection = \"demo\"\n",
            model = model_dir(),
            data = built.data(),
        ),
    )
    .unwrap();
    let out = attune(&["pipeline", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no logged searches"),
        "{stderr}"
    );
    assert!(!work.join("tuned").exists());
}

/// The demo collection's nDCG@10 per space as `attune eval --collection` reports it, with
/// `store` naming the store.
fn collection_ndcg(store: &[&str]) -> (Value, BTreeMap<String, f64>) {
    let data = built().data();
    let args = [
        "eval",
        "--collection",
        "demo",
        "--data",
        data.to_str().unwrap(),
        "--spaces",
        "base,lexical",
        "--k",
        "10",
        "--device",
        "cpu",
        "--json",
    ];
    let answer: Value =
        serde_json::from_str(ok(attune(&[&args[..], store].concat())).trim()).unwrap();
    let spaces = answer["evaluations"][0]["spaces"].as_array().unwrap();
    let ndcg = ["base", "lexical"]
        .iter()
        .zip(spaces)
        .map(|(name, space)| {
            (
                name.to_string(),
                space["metrics"]["ndcg@10"].as_f64().unwrap(),
            )
        })
        .collect();
    (answer, ndcg)
}

/// On the Qdrant store the CLI does what it does on an embedded one: `attune eval --collection`
/// searches the collection built there (the same figures within HNSW's noise), and `attune
/// feedback export --backend qdrant` reads the log, while the server runs too, and gives the
/// pairs the server gives.
#[test]
fn a_qdrant_collection_is_evaluated_and_its_feedback_exported_by_the_cli() {
    let test = "tests/cli_feedback.rs::a_qdrant_collection_is_evaluated_and_its_feedback_exported_by_the_cli";
    let Some(url) = attune_index::fixtures::shared_qdrant_url() else {
        attune_model::fixtures::report_skipped(test, "no Qdrant binary");
        return;
    };
    let built = built();
    let data = built.data();
    let qdrant = ["--backend", "qdrant", "--qdrant-url", url.as_str()];
    let space = format!("base={}", model_dir().display());
    let build = [
        "index",
        "build",
        "--collection",
        "demo",
        "--corpus",
        data.to_str().unwrap(),
        "--space",
        &space,
        "--device",
        "cpu",
    ];
    ok(attune(&[&build[..], &qdrant].concat()));

    let store = built.store_copy("qdrant-eval-store");
    let (embedded, embedded_ndcg) = collection_ndcg(&["--store", store.to_str().unwrap()]);
    let (on_qdrant, qdrant_ndcg) = collection_ndcg(&qdrant);
    assert_eq!(on_qdrant["store"], format!("qdrant {url}"));
    assert_eq!(
        on_qdrant["evaluations"][0]["evaluated_queries"],
        embedded["evaluations"][0]["evaluated_queries"]
    );
    for (space, ndcg) in &embedded_ndcg {
        let other = qdrant_ndcg[space];
        assert!(*ndcg > 0.2, "{space}: {embedded}");
        assert!(
            (ndcg - other).abs() < 0.01,
            "{space}: {ndcg} embedded, {other} on Qdrant"
        );
    }

    let out_dir = tempfile::tempdir().unwrap();
    let settings = out_dir.path().join("serve.toml");
    std::fs::write(
        &settings,
        "[feedback]\nlog = [\"demo\"]\nexplore_share = 0.3\n",
    )
    .unwrap();
    let (mut server, base) = serve_with(&qdrant, &settings);
    simulate(&base, "shoppers", 400, 7);
    let export = |source: &[&str], file: &str| {
        let path = out_dir.path().join(file);
        let args = ["feedback", "export", "--collection", "demo", "--out"];
        let summary = ok(attune(
            &[&args[..], &[path.to_str().unwrap()], source].concat(),
        ));
        (summary, path)
    };
    let (_, from_server) = export(&["--url", &base], "from-server.jsonl");
    // The Qdrant log is read while the server that writes it runs.
    let (summary, _) = export(&qdrant, "while-running.jsonl");
    assert!(summary.contains("swap exploration"), "{summary}");
    // After a graceful stop (which writes the searches no feedback flushed), the same pairs.
    stop_gracefully(&mut server);
    let (summary, from_qdrant) = export(&qdrant, "from-qdrant.jsonl");
    let lines = read_pairs(&from_qdrant);
    // The shoppers engaged enough to export pairs (the server explores at random, so the count
    // varies from run to run; the comparison below is what matters).
    assert!(lines.len() >= 5, "{summary}");
    assert_same_pairs(&lines, &read_pairs(&from_server));
    // Without a store, a URL or a backend, the command says what it needs.
    let nowhere = out_dir.path().join("nowhere.jsonl");
    let out = attune(&[
        "feedback",
        "export",
        "--collection",
        "demo",
        "--out",
        nowhere.to_str().unwrap(),
    ]);
    assert!(!out.status.success() && !nowhere.exists());
}
