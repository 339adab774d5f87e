//! `attune data check` end to end on pairs files the tests write themselves.

use std::path::Path;
use std::process::{Command, Output};

use attune_model::fixtures::{write_random_bert, RandomBertSpec};

fn attune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(args)
        .output()
        .expect("attune runs")
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn clean_data_passes_and_long_texts_are_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "word ".repeat(100);
    let train = write(
        tmp.path(),
        "train.jsonl",
        &format!(
            "{{\"query\": \"red shoes\", \"positive\": \"{long}\"}}\n{{\"query\": \"usb hub\", \"positive\": \"a hub\", \"negatives\": [\"a cable\"]}}\n"
        ),
    );
    let model = tmp.path().join("tiny");
    write_random_bert(&model, &RandomBertSpec::default()).unwrap();
    let out = attune(&[
        "data",
        "check",
        "--data",
        &train,
        "--model",
        model.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("pairs 2, distinct queries 2, distinct positives 2, hard negatives 1"),
        "{stdout}"
    );
    // Distinct texts: 2 queries, 2 positives, 1 negative; only the 100-word positive is long.
    assert!(
        stdout.contains("longer than the maximum sequence length: 20.0%"),
        "{stdout}"
    );
    assert!(stdout.contains("ok: no fatal problem"));
}

#[test]
fn fatal_problems_exit_1_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let train = write(
        tmp.path(),
        "train.jsonl",
        "{\"query\": \"red shoes\", \"positive\": \"Red shoes\"}\n{\"query\": \"usb hub\", \"positive\": \"a hub\"}\n",
    );
    let test = write(
        tmp.path(),
        "test.jsonl",
        "{\"query\": \"usb hub\", \"positive\": \"other hub\"}\n",
    );
    let out = attune(&["data", "check", "--data", &train, "--test-data", &test]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[fatal] 1 training queries also appear in the test data"),
        "{stdout}"
    );
    assert!(stdout.contains("train.jsonl:2 (\"usb hub\")"), "{stdout}");

    let empty = write(tmp.path(), "empty.jsonl", "\n");
    let out = attune(&["data", "check", "--data", &empty]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no training pairs"));

    let bad = write(
        tmp.path(),
        "bad.jsonl",
        "{\"query\": \"q\", \"positive\": \"p\"}\n{\"query\": \"q\"}\n",
    );
    let out = attune(&["data", "check", "--data", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.jsonl:2: missing field \"positive\""),
        "{stderr}"
    );
}
