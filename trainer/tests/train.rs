//! The training loop end to end on a tiny random model and a synthetic catalogue: it learns,
//! validates on schedule, keeps the best weights, and is deterministic for a seed.

use std::path::Path;

use attune_eval::data::BeirDataset;
use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_model::ModelDir;
use attune_trainer::checkpoint::LogRecord;
use attune_trainer::data::TrainingData;
use attune_trainer::fixtures::{write_synthetic_beir, SyntheticSpec};
use attune_trainer::optim::AdamWSettings;
use attune_trainer::train::{train, TrainInputs, TrainOutput, TrainSettings, TrainSummary};
use candle_core::Device;

fn settings() -> TrainSettings {
    TrainSettings {
        max_steps: Some(60),
        batch_size: 8,
        optimizer: AdamWSettings {
            lr: 1e-2,
            ..Default::default()
        },
        eval_every: Some(15),
        ..Default::default()
    }
}

fn run(root: &Path, out: &str, settings: &TrainSettings) -> TrainSummary {
    let model = ModelDir::open(root.join("model")).unwrap();
    let data = TrainingData::load(&root.join("data"), "train").unwrap();
    let validation = BeirDataset::load(root.join("data"), "test").unwrap();
    let held_out = TrainingData::load(&root.join("data"), "test").unwrap();
    let inputs = TrainInputs {
        model: &model,
        data: &data,
        held_out: Some(&held_out),
        validation: Some(&validation),
        device: &Device::Cpu,
    };
    train(
        &inputs,
        settings,
        &TrainOutput::new(root.join(out)),
        &mut |_| {},
    )
    .unwrap()
}

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_random_bert(&tmp.path().join("model"), &RandomBertSpec::default()).unwrap();
    write_synthetic_beir(&tmp.path().join("data"), &SyntheticSpec::default()).unwrap();
    tmp
}

fn log(dir: &Path) -> Vec<LogRecord> {
    std::fs::read_to_string(dir.join("training_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn training_improves_validation_and_writes_the_best_step() {
    let tmp = setup();
    let summary = run(tmp.path(), "tuned", &settings());
    let before = summary.before.as_ref().unwrap()["ndcg@10"];
    let after = summary.after.as_ref().unwrap()["ndcg@10"];
    eprintln!("validation nDCG@10 {before:.4} -> {after:.4}");
    assert!(
        after > before + 0.05,
        "validation nDCG@10 {before:.4} -> {after:.4}"
    );

    let out = tmp.path().join("tuned");
    let records = log(&out);
    let train_steps: Vec<usize> = records
        .iter()
        .filter(|r| r.kind == "train")
        .map(|r| r.step)
        .collect();
    assert_eq!(train_steps, (1..=60).collect::<Vec<_>>());
    let evals: Vec<(usize, f64)> = records
        .iter()
        .filter(|r| r.kind == "eval")
        .map(|r| (r.step, r.metrics.as_ref().unwrap()["ndcg@10"]))
        .collect();
    assert_eq!(
        evals.iter().map(|e| e.0).collect::<Vec<_>>(),
        [0, 15, 30, 45, 60]
    );
    // The written weights are those of the best validated step (the base is not a candidate).
    let best = evals[1..]
        .iter()
        .fold((0, f64::MIN), |b, &e| if e.1 > b.1 { e } else { b });
    assert_eq!(summary.best.unwrap().step, best.0);
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training_card.json")).unwrap())
            .unwrap();
    assert_eq!(card["written_step"], best.0);
    assert_eq!(card["metrics_after"]["ndcg@10"], best.1);
    assert_eq!(card["hyperparameters"]["batch_size"], 8);
    // The first step's learning rate is 0 (warmup), the peak is reached after the warmup.
    let first = records.iter().find(|r| r.kind == "train").unwrap();
    assert_eq!(first.lr, Some(0.0));
    // The checkpoint directory is gone after a successful run.
    assert!(!tmp.path().join("tuned.checkpoints").exists());
}

#[test]
fn a_seed_determines_the_weights() {
    let tmp = setup();
    let settings = TrainSettings {
        max_steps: Some(6),
        eval_every: None,
        ..settings()
    };
    run(tmp.path(), "a", &settings);
    run(tmp.path(), "b", &settings);
    run(
        tmp.path(),
        "c",
        &TrainSettings {
            seed: 43,
            ..settings.clone()
        },
    );
    let weights =
        |name: &str| std::fs::read(tmp.path().join(name).join("model.safetensors")).unwrap();
    assert!(weights("a") == weights("b"), "same seed, different weights");
    assert!(
        weights("a") != weights("c"),
        "another seed gave the same weights"
    );
    assert!(
        weights("a") != std::fs::read(tmp.path().join("model/model.safetensors")).unwrap(),
        "training changed nothing"
    );
}
