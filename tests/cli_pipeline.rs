//! `attune pipeline` end to end with all-MiniLM-L6-v2 on a small generated demo store: a good
//! run is promoted, a rerun resumes after its finished stages, a model trained on shuffled
//! pairs is not promoted while the previous generation keeps serving, and the web page works in
//! headless Chromium.
//!
//! Needs the model (`scripts/fetch-model.sh`, or `ATTUNE_MODEL_DIR`). The browser test needs
//! Chromium (`/usr/bin/chromium`, or `CHROMIUM`) and `npm ci --prefix tests/browser`; without
//! them it is skipped, unless `ATTUNE_REQUIRE_BROWSER=1` (set by `.ci/run`) makes that a failure.
//! `ATTUNE_SCREENSHOT=PATH` keeps its screenshot.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// A pipeline configuration in `dir/pipeline.toml`.
fn write_config(dir: &Path, work: &Path, store: &Path, data: &Path, extra: &str) -> PathBuf {
    let config = format!(
        "work_dir = {work:?}\nbase_model = {model:?}\ndevice = \"cpu\"\n\n[data]\npath = {data:?}\n{extra}\n\
         [train]\nepochs = 1\n\n[index]\nstore = {store:?}\ncollection = \"demo\"\n",
        model = model_dir(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A demo store and a pipeline run up to its evaluation, shared by the tests: each copies the
/// work directory and finishes the run into its own store.
struct Trained {
    _dir: tempfile::TempDir,
    data: PathBuf,
    work: PathBuf,
}

fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("shoe-store");
        let out = attune(&[
            "demo-data",
            "--out",
            data.to_str().unwrap(),
            "--products",
            "160",
            "--queries",
            "220",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let work = dir.path().join("work");
        let store = dir.path().join("store");
        let config = write_config(dir.path(), &work, &store, &data, "");
        let out = attune(&["pipeline", "--config", config.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let report = read_json(&work.join("report/pipeline.json"));
        assert_eq!(report["promoted"], true, "{report}");
        // The report shows the recipe: the demo's queries share judged products, and they were
        // kept out of each other's negatives (the trainer's default).
        let recipe = &report["recipe"];
        assert_eq!(
            recipe["hyperparameters"]["mask_judged_positives"], true,
            "{recipe}"
        );
        assert_eq!(
            recipe["hyperparameters"]["grade_weighting"], "uniform",
            "{recipe}"
        );
        assert!(
            recipe["judged_negatives_masked"].as_u64().unwrap() > 0,
            "{recipe}"
        );
        let markdown = std::fs::read_to_string(work.join("report/pipeline.md")).unwrap();
        assert!(markdown.contains("## Training recipe"), "{markdown}");
        assert!(markdown.contains("never its negatives"), "{markdown}");
        // The test split searched in the served collection, lexical and hybrid spaces too.
        let search = &report["collection_search"];
        let spaces: Vec<&str> = search["spaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[0].as_str().unwrap())
            .collect();
        assert_eq!(
            spaces,
            ["base", "tuned", "lexical", "hybrid:base", "hybrid:tuned"],
            "{search}"
        );
        assert!(
            search["spaces"][2][1]["ndcg@10"].as_f64().unwrap() > 0.1,
            "{search}"
        );
        assert!(
            markdown.contains("## Searched in the served collection"),
            "{markdown}"
        );
        Trained {
            _dir: dir,
            data,
            work,
        }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Copies the shared run and finishes it into `dir/store`; returns the config.
fn promoted_store(dir: &Path) -> PathBuf {
    let shared = trained();
    let work = dir.join("work");
    copy_dir(&shared.work, &work);
    let config = write_config(dir, &work, &dir.join("store"), &shared.data, "");
    let out = attune(&["pipeline", "--config", config.to_str().unwrap()]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    // Only the stages that depend on the store ran again.
    for stage in ["check", "train", "eval"] {
        assert!(
            log.contains(&format!("pipeline: {stage}: done before")),
            "{stage}: {log}"
        );
    }
    assert!(log.contains("pipeline: index: running"), "{log}");
    config
}

fn serve(store: &Path) -> (Server, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(["serve", "--device", "cpu", "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--store")
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        assert!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    (server, base)
}

fn get(url: &str) -> Value {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_json()
        .unwrap()
}

/// The training pairs with every positive moved to another query.
fn shuffled_pairs(data: &Path, out: &Path) {
    let queries: std::collections::HashMap<String, String> =
        std::fs::read_to_string(data.join("queries.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["_id"].as_str().unwrap().to_string(),
                    v["text"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    let documents: std::collections::HashMap<String, String> =
        std::fs::read_to_string(data.join("corpus.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["_id"].as_str().unwrap().to_string(),
                    format!(
                        "{} {}",
                        v["title"].as_str().unwrap(),
                        v["text"].as_str().unwrap()
                    ),
                )
            })
            .collect();
    let pairs: Vec<(String, String)> = std::fs::read_to_string(data.join("qrels/train.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|row| {
            let cols: Vec<&str> = row.split('\t').collect();
            (queries[cols[0]].clone(), documents[cols[1]].clone())
        })
        .collect();
    // Rotate the positives by a third of the list: no query keeps a positive of its own.
    let shift = pairs.len() / 3;
    let lines: Vec<String> = (0..pairs.len())
        .map(|i| {
            serde_json::json!({"query": pairs[i].0, "positive": pairs[(i + shift) % pairs.len()].1})
                .to_string()
        })
        .collect();
    std::fs::write(out, lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_worse_model_is_not_promoted_and_the_previous_generation_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    promoted_store(dir.path());
    let store = dir.path().join("store");
    let manifest_path = store.join("collections/demo/collection.json");
    let before = read_json(&manifest_path);
    assert_eq!(before["current"], 1, "{before}");
    let (_server, base) = serve(&store);
    let served = get(&format!("{base}/v1/collections/demo"));
    assert_eq!(served["generation"], 1);

    // Same store and collection, a model trained on shuffled pairs.
    let shared = trained();
    let shuffled = dir.path().join("shuffled.jsonl");
    shuffled_pairs(&shared.data, &shuffled);
    let bad_dir = dir.path().join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let config = write_config(
        &bad_dir,
        &bad_dir.join("work"),
        &store,
        &shared.data,
        &format!("train_pairs = {shuffled:?}\n"),
    );
    let out = attune(&["pipeline", "--config", config.to_str().unwrap()]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("pipeline: index: skipped, the gate failed"),
        "{log}"
    );
    assert!(
        log.contains("not promoted") && log.contains("domain gain"),
        "the reason is given: {log}"
    );
    assert!(
        log.contains("generation 1 of collection \"demo\" keeps serving"),
        "{log}"
    );
    let report = read_json(&bad_dir.join("work/report/pipeline.json"));
    assert_eq!(report["promoted"], false);
    let (base_ndcg, tuned_ndcg) = (
        report["domain"]["base"]["ndcg@10"].as_f64().unwrap(),
        report["domain"]["tuned"]["ndcg@10"].as_f64().unwrap(),
    );
    assert!(
        tuned_ndcg < base_ndcg,
        "shuffled pairs made it worse: {report}"
    );

    // The store is untouched: same manifest (generation, models, commit time).
    assert_eq!(read_json(&manifest_path), before);
    assert!(!bad_dir.join("work/stages/index.json").exists());
    // The server still serves generation 1, and publishes the failed run's report.
    let served = get(&format!("{base}/v1/collections/demo"));
    assert_eq!(served["generation"], 1);
    let published = get(&format!("{base}/v1/collections/demo/report"));
    assert_eq!(published["summary"]["promoted"], false);
    assert!(published["summary"]["verdict"]
        .as_str()
        .unwrap()
        .contains("generation 1 keeps serving"));

    // A rerun resumes: every stage is done, and the verdict is the same.
    let out = attune(&["pipeline", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let log = stderr(&out);
    assert!(log.contains("pipeline: train: done before"), "{log}");
    assert!(log.contains("pipeline: eval: done before"), "{log}");
    assert_eq!(read_json(&manifest_path), before);
}

fn browser_ready() -> Option<PathBuf> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let ready = chromium.exists()
        && driver.join("node_modules/playwright-core").exists()
        && Command::new("node").arg("--version").output().is_ok();
    let required = std::env::var("ATTUNE_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    match (ready, required) {
        (true, _) => Some(chromium),
        (false, true) => panic!(
            "ATTUNE_REQUIRE_BROWSER=1 but Chromium ({}), node or tests/browser/node_modules is missing",
            chromium.display()
        ),
        (false, false) => {
            attune_model::fixtures::report_skipped(
                "the_web_page_compares_filters_and_judges_in_headless_chromium",
                "no Chromium or playwright-core (npm ci --prefix tests/browser)",
            );
            None
        }
    }
}

#[test]
fn the_web_page_compares_filters_and_judges_in_headless_chromium() {
    let Some(chromium) = browser_ready() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    promoted_store(dir.path());
    let (_server, base) = serve(&dir.path().join("store"));
    let screenshot = std::env::var_os("ATTUNE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("page.png"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/page-test.mjs");
    let out = Command::new("node")
        .arg(script)
        .args(["--url", &base, "--collection", "demo"])
        .args(["--query", "boots for wide feet I can send back"])
        .arg("--chromium")
        .arg(&chromium)
        .arg("--screenshot")
        .arg(&screenshot)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    for step in [
        "both columns show results",
        "applies to the results",
        "judged relevant",
        "the evaluation shows nDCG@10",
        "the report's plots render",
    ] {
        assert!(log.contains(step), "{step}: {log}");
    }
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
}
