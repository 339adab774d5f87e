//! `attune embed` end to end on a tiny random model the test writes itself.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_model::{Encoder, EncoderSettings, ModelDir, TextKind};
use candle_core::Device;

fn attune(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attune runs");
    // attune may exit (on bad arguments) before reading its input: a broken pipe is fine here.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn output_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn embedding(v: &serde_json::Value) -> Vec<f32> {
    serde_json::from_value(v["embedding"].clone()).unwrap()
}

fn tiny_model(tmp: &Path) -> String {
    let dir = tmp.join("tiny");
    write_random_bert(&dir, &RandomBertSpec::default()).unwrap();
    dir.to_str().unwrap().to_string()
}

#[test]
fn text_lines_give_one_output_line_each_in_order_with_empty_lines_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = "red running shoes\n\nleather jacket return policy\n   \nlaptop\n";
    let lines = output_lines(&attune(&["embed", "--model", &model], input));
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l.get("id").is_none()));

    // Same vectors as the library, in input order.
    let enc = Encoder::load(
        &ModelDir::open(&model).unwrap(),
        &Device::Cpu,
        EncoderSettings::default(),
    )
    .unwrap();
    let texts: Vec<&str> = input.lines().collect();
    let want = enc.embed(&texts, TextKind::Plain).unwrap().embeddings;
    for (line, want) in lines.iter().zip(&want) {
        let got = embedding(line);
        let d = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-6, "max diff {d}");
    }
}

#[test]
fn jsonl_ids_are_copied_and_files_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("in.jsonl");
    let output = tmp.path().join("out.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"p1\", \"text\": \"red shoes\"}\n{\"text\": \"no id\"}\n{\"id\": 7, \"text\": \"\"}\n",
    )
    .unwrap();
    let out = attune(
        &[
            "embed",
            "--model",
            &model,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], "p1");
    assert!(lines[1].get("id").is_none());
    assert_eq!(lines[2]["id"], 7);
    assert_eq!(embedding(&lines[0]).len(), 32);
}

/// Embeds `texts` with the library, as plain texts.
fn library_embeddings(model: &str, texts: &[&str]) -> Vec<Vec<f32>> {
    let enc = Encoder::load(
        &ModelDir::open(model).unwrap(),
        &Device::Cpu,
        EncoderSettings::default(),
    )
    .unwrap();
    enc.embed(texts, TextKind::Plain).unwrap().embeddings
}

fn assert_same_vectors(lines: &[serde_json::Value], want: &[Vec<f32>]) {
    assert_eq!(lines.len(), want.len());
    for (line, want) in lines.iter().zip(want) {
        let d = embedding(line)
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-6, "{}: max diff {d}", line["id"]);
    }
}

#[test]
fn a_beir_corpus_is_embedded_as_the_index_embeds_it_and_queries_as_given() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let corpus = "{\"_id\": \"d1\", \"title\": \" Boot \", \"text\": \"red  leather\\n\"}\n\n\
                  {\"_id\": 2, \"title\": \"\", \"text\": \" laptop bag\"}\n\
                  {\"_id\": \"d3\", \"text\": \"no title\"}\n";
    // Auto reads it as a corpus (its first object has "_id" and "title"); blank lines have no
    // output line, "_id" becomes "id".
    for format in [&[][..], &["--input-format", "corpus"][..]] {
        let args = [&["embed", "--model", &model][..], format].concat();
        let lines = output_lines(&attune(&args, corpus));
        let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["d1", "2", "d3"]);
        let want = [
            attune_core::embedding_text(" Boot ", "red  leather\n"),
            attune_core::embedding_text("", " laptop bag"),
            attune_core::embedding_text("", "no title"),
        ];
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        assert_same_vectors(&lines, &library_embeddings(&model, &want));
    }

    let queries =
        "{\"_id\": \"q1\", \"text\": \" red boots \"}\n{\"_id\": \"q2\", \"text\": \"bag\"}\n";
    let lines = output_lines(&attune(&["embed", "--model", &model], queries));
    assert_eq!(lines[1]["id"], "q2");
    // Untrimmed, as `attune eval` embeds a query.
    assert_same_vectors(&lines, &library_embeddings(&model, &[" red boots ", "bag"]));

    let out = attune(
        &["embed", "--model", &model, "--input-format", "corpus"],
        "{\"_id\": \"d1\", \"text\": \"fine\"}\n{\"title\": \"no id\", \"text\": \"x\"}\n",
    );
    assert_refused_with_no_output(&out, "<stdin>:2: missing field \"_id\"");
}

/// `out` failed, its stderr names `message`, and no line was written (not even the valid ones
/// before the bad line).
fn assert_refused_with_no_output(out: &Output, message: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(message), "{err}");
    assert!(out.stdout.is_empty(), "the valid lines were written alone");
}

#[test]
fn bad_jsonl_names_the_line_and_writes_no_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = "{\"text\": \"fine\"}\n{\"text\": 12}\n";
    let out = attune(
        &["embed", "--model", &model, "--input-format", "jsonl"],
        input,
    );
    assert_refused_with_no_output(&out, "<stdin>:2: field \"text\" must be a string");

    let out = attune(
        &["embed", "--model", &model, "--input-format", "jsonl"],
        "{\"text\": \"ok\"}\n{oops\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("<stdin>:2: not valid JSON"),
        "{err}"
    );
}

#[test]
fn a_broken_model_directory_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    std::fs::remove_file(Path::new(&model).join("tokenizer.json")).unwrap();
    let out = attune(&["embed", "--model", &model], "x\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokenizer.json: missing"), "{err}");

    let out = attune(&["embed", "--model", "/nonexistent/model"], "x\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/model: missing (model directory)"),
        "{err}"
    );
}

#[test]
fn truncation_is_reported_once_with_the_count() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let long = vec!["shoe"; 100].join(" ");
    let input = format!("{long}\nshort\n{long}\n");
    let out = attune(&["embed", "--model", &model, "--max-seq-len", "16"], &input);
    assert_eq!(output_lines(&out).len(), 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("truncated").count(), 1, "{err}");
    assert!(
        err.contains("2 of 3 texts were longer than 16 tokens"),
        "{err}"
    );
}

#[test]
fn a_cuda_request_that_cannot_be_met_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    if cfg!(feature = "cuda") {
        // A CUDA build (scripts/build-cuda.sh --test runs this against the stub driver): an
        // ordinal no machine has is refused with the device named, as is a machine with no GPU.
        let out = attune(&["embed", "--model", &model, "--device", "cuda:97"], "x\n");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("device `cuda:97`"), "{err}");
        assert!(err.contains("no usable CUDA GPU with ordinal 97"), "{err}");
    } else {
        let out = attune(&["embed", "--model", &model, "--device", "cuda:0"], "x\n");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("without the `cuda` feature"), "{err}");
    }
    let out = attune(&["embed", "--model", &model, "--device", "tpu"], "x\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected one of auto, cpu, cuda, cuda:N")
    );
}
