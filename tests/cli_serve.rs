//! `attune serve` end to end: the binary on a loopback port over a store built by
//! `attune index build` with a tiny random model; search, the API key, metrics, and a re-index
//! by a second process picked up while the server keeps answering.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use serde_json::{json, Value};

mod common;
use common::{free_port, Server};

fn corpus(path: &Path, n: usize, version: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"_id": format!("p{i}"), "title": format!("item{i} v{version}"),
                   "text": format!("shoe number {i} edition {version}")})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn build(store: &Path, corpus: &Path, model: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_attune"))
        .args([
            "index",
            "build",
            "--device",
            "cpu",
            "--collection",
            "shop",
            "--store",
        ])
        .arg(store)
        .arg("--corpus")
        .arg(corpus)
        .arg("--space")
        .arg(format!("base={}", model.display()))
        .arg("--space")
        .arg(format!("tuned={}", model.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `attune serve` on a free loopback port with API key "sesame" and waits until it serves
/// generation `generation` of "shop". Returns the server and its base URL.
fn start_server(store: &Path, config: &Path, generation: u64) -> (Server, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_attune"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--store"])
            .arg(store)
            .arg("--config")
            .arg(config)
            .env("ATTUNE_API_KEY", "sesame")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    loop {
        if let Ok(mut response) = ureq::get(&format!("{base}/readyz")).call() {
            let body: Value = response.body_mut().read_json().unwrap();
            assert_eq!(body["collections"]["shop"], generation, "{body}");
            return (server, base);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(url: &str) -> (u16, Value) {
    match ureq::get(url).call() {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_json().unwrap_or(Value::Null),
        ),
        Err(ureq::Error::StatusCode(code)) => (code, Value::Null),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn send(method: &str, url: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = match method {
        "PUT" => agent.put(url),
        "DELETE" => {
            let mut request = agent.delete(url);
            if let Some(key) = key {
                request = request.header("authorization", &format!("Bearer {key}"));
            }
            let mut response = request.call().unwrap();
            return (
                response.status().as_u16(),
                response.body_mut().read_json().unwrap_or(Value::Null),
            );
        }
        _ => agent.post(url),
    };
    if let Some(key) = key {
        request = request.header("authorization", &format!("Bearer {key}"));
    }
    let mut response = request.send_json(body).unwrap();
    (
        response.status().as_u16(),
        response.body_mut().read_json().unwrap_or(Value::Null),
    )
}

#[test]
fn serve_answers_and_picks_up_a_reindex() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| -> PathBuf { tmp.path().join(name) };
    write_random_bert(&path("model"), &RandomBertSpec::default()).unwrap();
    corpus(&path("v1.jsonl"), 30, 1);
    build(&path("store"), &path("v1.jsonl"), &path("model"));
    std::fs::write(
        path("attune.toml"),
        "reload_interval_ms = 100\ndevice = \"cpu\"\n",
    )
    .unwrap();

    let (_server, base) = start_server(&path("store"), &path("attune.toml"), 1);

    let search = format!("{base}/v1/collections/shop/search");
    let (status, body) = send(
        "POST",
        &search,
        None,
        &json!({"query": "item4 v1\nshoe number 4 edition 1", "k": 3}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["id"], "p4");
    let documents = format!("{base}/v1/collections/shop/documents");
    let doc = json!({"documents": [{"id": "extra", "text": "a red boot"}]});
    let (status, body) = send("PUT", &documents, None, &doc);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = send("PUT", &documents, Some("sesame"), &doc);
    assert_eq!(status, 200, "{body}");

    // A second process re-indexes a changed corpus; the server keeps answering throughout and
    // switches to generation 2 by itself.
    corpus(&path("v2.jsonl"), 40, 2);
    let builder = std::thread::spawn({
        let (store, corpus, model) = (path("store"), path("v2.jsonl"), path("model"));
        move || build(&store, &corpus, &model)
    });
    let mut answered = 0;
    let started = Instant::now();
    loop {
        let (status, body) = send(
            "POST",
            &search,
            None,
            &json!({"query": "item35 v2\nshoe number 35 edition 2", "k": 1}),
        );
        assert_eq!(status, 200, "{body}");
        answered += 1;
        if body["generation"] == 2 {
            assert_eq!(body["results"][0]["id"], "p35");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "generation 2 never served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    builder.join().unwrap();
    assert!(answered > 1);
    // The corpus's 40 documents and the one written through the API: a build merges.
    let (status, body) = get(&format!("{base}/v1/collections/shop"));
    assert_eq!((status, body["documents"].as_u64()), (200, Some(41)));
    let (status, body) = send(
        "POST",
        &search,
        None,
        &json!({"query": "a red boot", "k": 1}),
    );
    assert_eq!(
        (status, body["results"][0]["id"].as_str()),
        (200, Some("extra"))
    );
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("attune_collection_generation{collection=\"shop\"} 2"),
        "{metrics}"
    );
}

/// Feedback, upserts and deletes acknowledged by a server that is then killed (SIGKILL) are all
/// there after a restart and a corpus re-index; repeated feedback counts once.
#[test]
fn acknowledged_writes_and_feedback_survive_sigkill_and_a_reindex() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| -> PathBuf { tmp.path().join(name) };
    write_random_bert(&path("model"), &RandomBertSpec::default()).unwrap();
    corpus(&path("v1.jsonl"), 30, 1);
    build(&path("store"), &path("v1.jsonl"), &path("model"));
    std::fs::write(path("attune.toml"), "device = \"cpu\"\n").unwrap();
    let (mut server, base) = start_server(&path("store"), &path("attune.toml"), 1);
    let shop = format!("{base}/v1/collections/shop");

    let (status, body) = send(
        "POST",
        &format!("{shop}/search"),
        None,
        &json!({"query": "shoe number 4", "k": 3, "space": "auto", "user": "u1"}),
    );
    assert_eq!(status, 200, "{body}");
    let request_id = body["request_id"].as_str().unwrap().to_string();
    let doc_id = body["results"][1]["id"].as_str().unwrap().to_string();
    let feedback = json!({"request_id": request_id, "doc_id": doc_id, "event": "purchase"});
    let mut recorded = Vec::new();
    for _ in 0..3 {
        let (status, body) = send(
            "POST",
            &format!("{shop}/feedback"),
            Some("sesame"),
            &feedback,
        );
        assert_eq!(status, 200, "{body}");
        recorded.push(body["recorded"].as_bool().unwrap());
    }
    assert_eq!(recorded, [true, false, false]);
    let documents = json!({"documents": [
        {"id": "extra", "text": "a red boot"},
        {"id": "gone", "text": "a blue hat"},
    ]});
    let (status, body) = send(
        "PUT",
        &format!("{shop}/documents"),
        Some("sesame"),
        &documents,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        "DELETE",
        &format!("{shop}/documents/gone"),
        Some("sesame"),
        &json!({}),
    );
    assert_eq!(status, 200, "{body}");

    // SIGKILL: nothing is flushed on the way out.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(server);
    // A corpus re-index while no server runs.
    build(&path("store"), &path("v1.jsonl"), &path("model"));
    let (_server, base) = start_server(&path("store"), &path("attune.toml"), 2);
    let shop = format!("{base}/v1/collections/shop");
    let (status, body) = get(&format!("{shop}/ab-report"));
    assert_eq!(status, 200);
    let purchases: u64 = body["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["purchases"].as_u64().unwrap())
        .sum();
    assert_eq!(purchases, 1, "{body}");
    let (status, body) = get(&shop);
    assert_eq!(
        (status, body["documents"].as_u64()),
        (200, Some(31)),
        "{body}"
    );
    let (_, body) = send(
        "POST",
        &format!("{shop}/search"),
        None,
        &json!({"query": "a red boot", "k": 31}),
    );
    let ids: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "extra");
    assert!(!ids.contains(&"gone"));
}
