//! `attune eval` on the real all-MiniLM-L6-v2 and the real scifact test split, end to end:
//! nDCG@10 matches sentence-transformers' published figure, and a two-model report renders with
//! well-formed inline SVG plots.
//!
//! The second model is the same weights truncating documents at 128 tokens instead of 256 (a
//! model directory differing only in `sentence_bert_config.json`), a realistic question: what
//! does the shorter context cost?
//!
//! Needs the model (`scripts/fetch-model.sh`, or `ATTUNE_MODEL_DIR`) and `../shared` (or
//! `ATTUNE_SHARED_DIR`); missing inputs fail with the command that provides them. Embeds the
//! corpus twice (about 4 minutes on 2 cores).

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("ATTUNE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "{}: no model; run scripts/fetch-model.sh (or set ATTUNE_MODEL_DIR)",
        dir.display()
    );
    dir
}

fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("ATTUNE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"));
    assert!(
        dir.join("data/scifact/corpus.jsonl").is_file(),
        "{}: no scifact data (set ATTUNE_SHARED_DIR)",
        dir.display()
    );
    dir
}

/// The model directory with every file linked except `sentence_bert_config.json`, which says
/// `max_seq_length`.
fn with_max_seq_length(model: &Path, dest: &Path, max_seq_length: usize) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(model).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "sentence_bert_config.json" {
            continue;
        }
        std::os::unix::fs::symlink(
            entry.path().canonicalize().unwrap(),
            dest.join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::write(
        dest.join("sentence_bert_config.json"),
        format!("{{\"max_seq_length\": {max_seq_length}, \"do_lower_case\": false}}"),
    )
    .unwrap();
}

#[test]
fn scifact_ndcg_matches_sentence_transformers_and_the_report_renders() {
    let model = model_dir();
    let shared = shared_dir();
    let tmp = tempfile::tempdir().unwrap();
    let short = tmp.path().join("minilm-128");
    with_max_seq_length(&model, &short, 128);
    let out_dir = tmp.path().join("report");

    let out = Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(["eval", "--device", "cpu", "--model"])
        .arg(&model)
        .args(["--label", "base@256", "--baseline"])
        .arg(&short)
        .args(["--baseline-label", "base@128", "--data"])
        .arg(shared.join("data/scifact"))
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("metrics.json")).unwrap())
            .unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared.join("reference/st_scifact_base.json")).unwrap(),
    )
    .unwrap();
    let domain = &metrics["datasets"][0];
    assert_eq!(domain["queries"], 300);
    assert_eq!(domain["documents"], 5183);
    let ours = &domain["models"]["base@256"]["metrics"];
    let theirs = &reference["metrics"];
    for (name, tolerance) in [("ndcg@10", 0.003), ("recall@100", 0.005), ("mrr@10", 0.005)] {
        let (a, b) = (ours[name].as_f64().unwrap(), theirs[name].as_f64().unwrap());
        assert!(
            (a - b).abs() <= tolerance,
            "{name}: attune {a:.4} vs sentence-transformers {b:.4}"
        );
    }

    let csv = std::fs::read_to_string(out_dir.join("per_query.csv")).unwrap();
    assert_eq!(csv.lines().count(), 301);
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    let svgs: Vec<String> = html
        .split("<svg")
        .skip(1)
        .map(|chunk| format!("<svg{}", &chunk[..chunk.find("</svg>").unwrap() + 6]))
        .collect();
    assert_eq!(svgs.len(), 3, "metric bars, Δ histogram, wins/ties/losses");
    for svg in &svgs {
        let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
        let rects = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
        assert!(rects >= 3, "a plot without bars:\n{svg}");
    }
}
