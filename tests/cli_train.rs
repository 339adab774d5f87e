//! `attune train` end to end on a tiny random model: the tuned directory is complete, a run
//! killed with SIGKILL resumes to the same weights as an uninterrupted one, and bad data is
//! refused with nothing written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_trainer::fixtures::{write_synthetic_beir, SyntheticSpec};
use candle_core::{Device, Tensor};

fn attune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(args)
        .output()
        .expect("attune runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        write_random_bert(&tmp.path().join("model"), &RandomBertSpec::default()).unwrap();
        write_synthetic_beir(&tmp.path().join("data"), &SyntheticSpec::default()).unwrap();
        Self { tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// `attune train` on the synthetic data with `extra` flags, writing to `out`.
    fn train_command(&self, out: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_attune"));
        command
            .args(["train", "--model", &self.arg("model"), "--data"])
            .arg(self.arg("data"))
            .args([
                "--out",
                &self.arg(out),
                "--batch-size",
                "8",
                "--device",
                "cpu",
            ])
            .args(extra);
        if !extra.contains(&"--lr") {
            command.args(["--lr", "5e-3"]);
        }
        command
    }

    fn write(&self, name: &str, body: &str) -> String {
        std::fs::write(self.path(name), body).unwrap();
        self.arg(name)
    }
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_difference(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .filter(|(_, t)| t.dtype() == candle_core::DType::F32)
        .map(|(name, t)| {
            (t - &b[name])
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0.0, f32::max)
}

#[test]
fn writes_a_complete_sentence_transformers_directory_with_card_and_log() {
    let fx = Fixture::new();
    let out = fx
        .train_command(
            "tuned",
            &[
                "--max-steps",
                "12",
                "--eval-data",
                &fx.arg("data"),
                "--eval-split",
                "test",
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("plan: 48 pairs, 12 steps (2 warmup), batch 8"),
        "{stdout}"
    );
    assert!(stdout.contains("ndcg@10"), "{stdout}");
    let dir = fx.path("tuned");
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
        "training_card.json",
        "README.md",
        "training_log.jsonl",
    ] {
        assert!(dir.join(file).exists(), "{file} missing");
    }
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("training_card.json")).unwrap())
            .unwrap();
    assert_eq!(card["data"]["pairs_trained"], 48);
    assert_eq!(card["steps"], 12);
    assert!(card["metrics_before"]["ndcg@10"].is_number());
    assert!(card["metrics_after"]["ndcg@10"].is_number());
    assert_eq!(card["hyperparameters"]["lr"], 5e-3);
    let log = std::fs::read_to_string(dir.join("training_log.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"train\"")).count(), 12);

    // Every tensor of the base checkpoint is there with its shape; trained ones changed.
    let base = weights(&fx.path("model"));
    let tuned = weights(&dir);
    assert_eq!(base.len(), tuned.len());
    for (name, t) in &base {
        assert_eq!(t.shape(), tuned[name].shape(), "{name}");
    }
    assert!(max_abs_difference(&base, &tuned) > 1e-4);

    // The tuned directory is a model attune can load and embed with.
    let input = fx.write("texts.txt", "red shoe\n");
    let embed = attune(&["embed", "--model", dir.to_str().unwrap(), "--input", &input]);
    assert!(embed.status.success(), "{}", text(&embed));
    assert!(String::from_utf8_lossy(&embed.stdout).contains("\"embedding\""));
}

#[test]
fn a_run_killed_after_a_checkpoint_resumes_to_the_same_weights() {
    let fx = Fixture::new();
    // Long enough that the kill lands well before the end, short enough to be quick.
    let flags = ["--max-steps", "400", "--checkpoint-every", "20"];
    let full = fx.train_command("full", &flags).output().unwrap();
    assert!(full.status.success(), "{}", text(&full));

    let mut child = fx
        .train_command("resumed", &flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoints = fx.path("resumed.checkpoints");
    let started = Instant::now();
    let killed_at = loop {
        let latest = std::fs::read_dir(&checkpoints).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok())
                // A complete checkpoint: renamed into place (the hidden staging directory
                // holds state.json a moment before its rename).
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(name, path)| {
                    name.starts_with("step-") && path.join("state.json").exists()
                })
                .map(|(name, _)| name)
                .max()
        });
        if let Some(latest) = latest {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break latest;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before a checkpoint was seen"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        !fx.path("resumed").exists(),
        "the killed run finished before the kill ({killed_at})"
    );

    let resumed = fx
        .train_command("resumed", &[&flags[..], &["--resume"]].concat())
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed));
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(stdout.contains("resuming from"), "{stdout}");

    let difference = max_abs_difference(&weights(&fx.path("full")), &weights(&fx.path("resumed")));
    eprintln!(
        "killed after {killed_at}; resumed; max |Δw| against the uninterrupted run: {difference}"
    );
    assert!(
        difference <= 1e-5,
        "resumed after {killed_at}: max |Δw| = {difference}"
    );
    // The resumed log continues the checkpoint's: one record per step, no repeats.
    let log = std::fs::read_to_string(fx.path("resumed/training_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 400, "{killed_at}");
}

/// Trains on the pairs file `data` with defaults, expects exit status 1 with nothing written,
/// and returns stderr.
fn refused_stderr(fx: &Fixture, data: &str) -> String {
    let out = attune(&[
        "train",
        "--model",
        &fx.arg("model"),
        "--data",
        data,
        "--out",
        &fx.arg("tuned"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!fx.path("tuned").exists());
    assert!(!fx.path("tuned.checkpoints").exists());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_malformed_line_is_an_error_naming_file_and_line_and_nothing_is_written() {
    let fx = Fixture::new();
    let data = fx.write(
        "pairs.jsonl",
        "{\"query\": \"red shoe\", \"positive\": \"a red leather shoe\"}\n{\"query\": \"blue jacket\", \"positive\": }\n",
    );
    let stderr = refused_stderr(&fx, &data);
    assert!(stderr.contains(&format!("{data}:2:")), "{stderr}");
}

#[test]
fn an_empty_dataset_is_refused() {
    let fx = Fixture::new();
    let data = fx.write("empty.jsonl", "\n");
    let stderr = refused_stderr(&fx, &data);
    assert!(stderr.contains("training data refused"), "{stderr}");
    assert!(
        stderr.contains("no training pairs [empty_dataset]"),
        "{stderr}"
    );
}

#[test]
fn leakage_is_refused_unless_the_policy_says_otherwise() {
    let fx = Fixture::new();
    // Two training queries copied into the test split.
    let queries = std::fs::read_to_string(fx.path("data/queries.jsonl")).unwrap();
    let leaked: Vec<&str> = queries.lines().take(2).collect();
    std::fs::write(fx.path("data/queries.jsonl"), {
        let mut q = queries.clone();
        for (i, line) in leaked.iter().enumerate() {
            q.push_str(&line.replace(&format!("\"q{i}\""), &format!("\"leak{i}\"")));
            q.push('\n');
        }
        q
    })
    .unwrap();
    let mut test = std::fs::read_to_string(fx.path("data/qrels/test.tsv")).unwrap();
    test.push_str("leak0\td0\t1\nleak1\td1\t1\n");
    std::fs::write(fx.path("data/qrels/test.tsv"), test).unwrap();

    let eval = ["--eval-data", &fx.arg("data"), "--eval-split", "test"];
    let out = fx
        .train_command("tuned", &[&eval[..], &["--max-steps", "2"]].concat())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 training queries also appear in the test data"),
        "{stderr}"
    );
    assert!(stderr.contains("qrels/train.tsv:2"), "{stderr}");
    assert!(!fx.path("tuned").exists());
    assert!(!fx.path("tuned.checkpoints").exists());

    let out = fx
        .train_command(
            "tuned",
            &[&eval[..], &["--max-steps", "2", "--leakage", "drop"]].concat(),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path("tuned/training_card.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(card["data"]["pairs_trained"], 46);
    assert_eq!(card["data"]["pairs_dropped_as_leakage"], 2);
}

#[test]
fn a_checkpoint_of_another_run_is_not_resumed() {
    let fx = Fixture::new();
    let flags = [
        "--max-steps",
        "4",
        "--checkpoint-every",
        "2",
        "--keep-checkpoints",
    ];
    let out = fx.train_command("tuned", &flags).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Starting over without --resume would mix runs: refused.
    let out = fx.train_command("tuned", &flags).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("holds checkpoints of an earlier run"));
    // Resuming with another learning rate: refused, naming the setting.
    let out = fx
        .train_command(
            "tuned",
            &[&flags[..], &["--resume", "--lr", "1e-3"]].concat(),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("setting `lr` was"), "{}", text(&out));
}

/// `attune train --prompt-tokens`: the written directory holds the soft prompt beside the
/// base's weights, `attune embed` applies it, and `attune eval --sweep-alphas` refuses the
/// model with the reason before merging anything.
#[test]
fn prompt_tuning_writes_a_soft_prompt_that_embed_applies_and_the_sweep_refuses() {
    let fx = Fixture::new();
    let out = fx
        .train_command(
            "prompted",
            &["--max-steps", "6", "--prompt-tokens", "4", "--lr", "5e-2"],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("128 trainable parameters (the base's weights unchanged"),
        "{}",
        text(&out)
    );
    let dir = fx.path("prompted");
    assert!(dir.join("soft_prompt.safetensors").exists());
    assert_eq!(
        max_abs_difference(&weights(&fx.path("model")), &weights(&dir)),
        0.0
    );
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("training_card.json")).unwrap())
            .unwrap();
    assert_eq!(card["method"], "prompt");
    assert_eq!(card["hyperparameters"]["prompt"]["tokens"], 4);

    let input = fx.write("texts.txt", "red shoe\n");
    let embedding = |model: &Path| -> Vec<f64> {
        let out = attune(&[
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--input",
            &input,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        serde_json::from_value(line["embedding"].clone()).unwrap()
    };
    assert_ne!(embedding(&dir), embedding(&fx.path("model")));

    let sweep = attune(&[
        "eval",
        "--model",
        dir.to_str().unwrap(),
        "--baseline",
        &fx.arg("model"),
        "--data",
        &fx.arg("data"),
        "--general-data",
        &fx.arg("data"),
        "--sweep-alphas",
        "0.5,1",
        "--out",
        &fx.arg("sweep"),
    ]);
    assert!(!sweep.status.success());
    assert!(
        text(&sweep).contains("a prompt-tuned model cannot be interpolated with its base"),
        "{}",
        text(&sweep)
    );
}
