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

/// The error of training `root/model` on `root/data` with `settings` (which must fail).
fn training_error(root: &Path, settings: &TrainSettings) -> String {
    let model = ModelDir::open(root.join("model")).unwrap();
    let data = TrainingData::load(&root.join("data"), "train").unwrap();
    let inputs = TrainInputs {
        model: &model,
        data: &data,
        held_out: None,
        validation: None,
        device: &Device::Cpu,
    };
    let out = TrainOutput::new(root.join("refused"));
    train(&inputs, settings, &out, &mut |_| {})
        .unwrap_err()
        .to_string()
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
    // Pairs are counted by source (here the data directory), and the distinct training queries
    // are the server's drift reference.
    let sources = card["data"]["sources"].as_object().unwrap();
    assert_eq!(sources.len(), 1);
    assert_eq!(
        sources.values().next().unwrap(),
        &card["data"]["pairs_loaded"]
    );
    let reference = attune_trainer::train::reference_queries(&out)
        .unwrap()
        .unwrap();
    let distinct: std::collections::HashSet<&String> = reference.iter().collect();
    assert!(!reference.is_empty() && distinct.len() == reference.len());
    assert_eq!(
        card["data"]["reference_queries"].as_array().unwrap().len(),
        reference.len()
    );
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

/// Seeds of the mixed-precision comparison. bf16 rounding makes each run's trajectory its own:
/// on this tiny model at a learning rate of 1e-2, the bf16 run's tail loss ranged from 0.99× to
/// 1.22× the f32 run's over seeds 1–5 and 42 (mean 1.10×), with the kernels of 2026-12-02 and
/// with those before them alike, so one seed cannot tell a broken path from an unlucky one.
const MIXED_PRECISION_SEEDS: [u64; 3] = [42, 1, 2];

#[test]
fn mixed_precision_learns_like_f32_and_writes_f32_weights() {
    use attune_model::Precision;
    let tmp = setup();
    let recipe = |seed: u64| TrainSettings {
        eval_every: None,
        seed,
        ..settings()
    };
    let bf16 = |seed: u64| TrainSettings {
        precision: Precision::Bf16,
        ..recipe(seed)
    };
    let exact = run(tmp.path(), "f32", &recipe(42));
    let mixed = run(tmp.path(), "bf16", &bf16(42));
    let ndcg = |s: &TrainSummary| s.after.as_ref().unwrap()["ndcg@10"];
    let before = exact.before.as_ref().unwrap()["ndcg@10"];
    eprintln!(
        "validation nDCG@10: base {before:.4}, f32 {:.4}, bf16 {:.4}",
        ndcg(&exact),
        ndcg(&mixed)
    );
    assert!(ndcg(&mixed) > before + 0.05, "bf16 training did not learn");
    assert!(
        (ndcg(&mixed) - ndcg(&exact)).abs() < 0.1,
        "bf16 {:.4} vs f32 {:.4}",
        ndcg(&mixed),
        ndcg(&exact)
    );
    // The loss curves agree: the mean loss of the last 20 steps, averaged over the seeds, within
    // 15 % (a path that does not learn stays near its first steps' loss).
    let tail_loss = |name: &str| {
        let losses: Vec<f64> = log(&tmp.path().join(name))
            .iter()
            .filter(|r| r.kind == "train")
            .filter_map(|r| r.loss)
            .collect();
        losses[losses.len() - 20..].iter().sum::<f64>() / 20.0
    };
    let (mut exact_loss, mut mixed_loss) = (tail_loss("f32"), tail_loss("bf16"));
    for &seed in &MIXED_PRECISION_SEEDS[1..] {
        run(tmp.path(), &format!("f32-{seed}"), &recipe(seed));
        run(tmp.path(), &format!("bf16-{seed}"), &bf16(seed));
        exact_loss += tail_loss(&format!("f32-{seed}"));
        mixed_loss += tail_loss(&format!("bf16-{seed}"));
    }
    let seeds = MIXED_PRECISION_SEEDS.len() as f64;
    let (exact_loss, mixed_loss) = (exact_loss / seeds, mixed_loss / seeds);
    eprintln!("mean loss of the last 20 steps over {seeds} seeds: f32 {exact_loss:.4}, bf16 {mixed_loss:.4}");
    assert!(
        (mixed_loss - exact_loss).abs() < 0.15 * exact_loss,
        "loss bf16 {mixed_loss:.4} vs f32 {exact_loss:.4}"
    );
    let read = |name: &str| {
        candle_core::safetensors::load(
            tmp.path().join(name).join("model.safetensors"),
            &Device::Cpu,
        )
        .unwrap()
    };
    let (exact_weights, mixed_weights) = (read("f32"), read("bf16"));
    let mut largest = 0f32;
    for (name, tensor) in &mixed_weights {
        assert_eq!(tensor.dtype(), candle_core::DType::F32, "{name}");
        largest = largest.max(max_abs_difference(tensor, &exact_weights[name]));
    }
    assert!(
        largest > 0.0,
        "bf16 products changed nothing: did they run?"
    );
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("bf16/training_card.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(card["hyperparameters"]["precision"], "bf16");
}

#[test]
fn lora_trains_only_adapters_and_writes_them_merged() {
    use attune_model::{Encoder, EncoderSettings, LinearTarget, TextKind};
    use attune_trainer::lora::LoraSettings;
    let tmp = setup();
    let lora = LoraSettings {
        rank: 4,
        alpha: 8.0,
        targets: vec![
            LinearTarget::Query,
            LinearTarget::Value,
            LinearTarget::Intermediate,
            LinearTarget::Output,
        ],
    };
    let settings = TrainSettings {
        lora: Some(lora),
        optimizer: AdamWSettings {
            lr: 2e-3,
            ..Default::default()
        },
        ..settings()
    };
    let summary = run(tmp.path(), "lora", &settings);
    // 2 layers × rank 4 × (in + out) of query, value (32 → 32) and the feed-forward pair
    // (32 → 64 → 32).
    assert_eq!(
        summary.trainable_parameters,
        2 * 4 * ((32 + 32) + (32 + 32) + (32 + 64) + (64 + 32))
    );
    // The adapters learn: the training loss falls. (On this random tiny model LoRA does not
    // lift validation the way full fine-tuning does; the scifact run in the README does. Its
    // gradients are checked against finite differences in tests/gradients.rs.)
    let losses: Vec<f64> = log(&tmp.path().join("lora"))
        .iter()
        .filter_map(|r| r.loss)
        .collect();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[losses.len() - 10..]));
    assert!(last < first - 0.5, "training loss {first:.3} -> {last:.3}");

    let out = tmp.path().join("lora");
    let load = |dir: &Path| {
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (base, tuned) = (load(&tmp.path().join("model")), load(&out));
    let differs = |name: &str| max_abs_difference(&base[name], &tuned[name]) > 0.0;
    // Adapted layers changed; everything else is the base model's, bit for bit.
    assert!(differs("encoder.layer.0.attention.self.query.weight"));
    assert!(differs("encoder.layer.1.attention.self.value.weight"));
    assert!(!differs("encoder.layer.0.attention.self.key.weight"));
    assert!(differs("encoder.layer.1.intermediate.dense.weight"));
    assert!(!differs("encoder.layer.1.attention.output.dense.weight"));
    assert!(!differs("embeddings.word_embeddings.weight"));
    assert!(out.join("adapter_model.safetensors").exists());
    let adapters =
        candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(adapters.len(), 16);
    // The merged weights are W + B·A·alpha/rank.
    let name = "encoder.layer.0.attention.self.query";
    let delta = (adapters[&format!("{name}.lora_B")]
        .matmul(&adapters[&format!("{name}.lora_A")])
        .unwrap()
        * 2.0)
        .unwrap();
    let expected = (&base[&format!("{name}.weight")] + delta).unwrap();
    let gap = max_abs_difference(&expected, &tuned[&format!("{name}.weight")]);
    assert!(gap < 1e-6, "{gap}");
    // The written model loads as a plain directory.
    let dir = ModelDir::open(&out).unwrap();
    let encoder = Encoder::load(&dir, &Device::Cpu, EncoderSettings::default()).unwrap();
    assert_eq!(
        encoder
            .embed(&["red shoe"], TextKind::Query)
            .unwrap()
            .embeddings[0]
            .len(),
        32
    );
}

/// Prompt tuning trains the soft prompt alone (N × hidden parameters), leaves every weight of
/// the base model as it was, writes the prompt in its own file with a card that says
/// sentence-transformers cannot apply it, and the written directory embeds with the prompt.
#[test]
fn prompt_tuning_trains_only_the_soft_prompt_and_writes_it_apart() {
    use attune_model::{soft_prompt, Encoder, EncoderSettings, TextKind};
    use attune_trainer::prompt::PromptSettings;
    let tmp = setup();
    let settings = TrainSettings {
        prompt: Some(PromptSettings {
            tokens: 4,
            init_text: PromptSettings::DEFAULT_INIT.into(),
        }),
        optimizer: AdamWSettings {
            lr: 5e-2,
            ..Default::default()
        },
        ..settings()
    };
    let summary = run(tmp.path(), "prompt", &settings);
    assert_eq!(summary.trainable_parameters, 4 * 32);
    // The prompt learns: the training loss falls. (On this random two-layer model a prompt
    // does not lift validation above the base; on scifact it does, see the README.)
    let losses: Vec<f64> = log(&tmp.path().join("prompt"))
        .iter()
        .filter_map(|r| r.loss)
        .collect();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[losses.len() - 10..]));
    assert!(last < first - 0.2, "training loss {first:.3} -> {last:.3}");

    let out = tmp.path().join("prompt");
    let load = |dir: &Path| {
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (base, tuned) = (load(&tmp.path().join("model")), load(&out));
    assert_eq!(base.len(), tuned.len());
    for (name, tensor) in &base {
        assert_eq!(max_abs_difference(tensor, &tuned[name]), 0.0, "{name}");
    }
    let prompt = candle_core::safetensors::load(out.join(soft_prompt::FILE), &Device::Cpu)
        .unwrap()
        .remove(soft_prompt::TENSOR)
        .unwrap();
    assert_eq!(prompt.dims(), [4, 32]);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("sentence-transformers (and other loaders) do not read"));

    let embed = |dir: &Path| {
        let dir = ModelDir::open(dir).unwrap();
        let encoder = Encoder::load(&dir, &Device::Cpu, EncoderSettings::default()).unwrap();
        encoder
            .embed(&["red shoe"], TextKind::Query)
            .unwrap()
            .embeddings[0]
            .clone()
    };
    let (with, without) = (embed(&out), embed(&tmp.path().join("model")));
    let gap = with
        .iter()
        .zip(&without)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        gap > 1e-3,
        "the prompt-tuned directory embeds like the base ({gap})"
    );

    let both = TrainSettings {
        lora: Some(attune_trainer::lora::LoraSettings {
            rank: 2,
            alpha: 4.0,
            targets: vec![attune_model::LinearTarget::Query],
        }),
        ..settings
    };
    let err = training_error(tmp.path(), &both);
    assert!(err.contains("choose one"), "{err}");
}

/// Largest |a − b| over all elements.
fn max_abs_difference(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The trainer runs any family behind the model seam: the tiny mixer (a second implementation
/// of `TransformerModel`) learns, full and with LoRA on its feed-forward layers, and a LoRA
/// target the family lacks is refused by name.
#[test]
fn another_model_family_trains_full_and_with_lora() {
    use attune_model::fixtures::tiny_mixer::write_random_tiny_mixer;
    use attune_trainer::lora::{parse_targets, LoraSettings};
    let tmp = tempfile::tempdir().unwrap();
    write_random_tiny_mixer(&tmp.path().join("model"), &RandomBertSpec::default()).unwrap();
    write_synthetic_beir(&tmp.path().join("data"), &SyntheticSpec::default()).unwrap();

    let summary = run(tmp.path(), "tuned", &settings());
    let before = summary.before.as_ref().unwrap()["ndcg@10"];
    let after = summary.after.as_ref().unwrap()["ndcg@10"];
    eprintln!("mixer validation nDCG@10 {before:.4} -> {after:.4}");
    // The untrained mixer already ranks the synthetic catalogue well (about 0.93): a bag of
    // tokens matches its lexical queries. Training must still raise it.
    assert!(after > before + 0.01, "{before:.4} -> {after:.4}");
    // The written directory is a model of the same family that loads and embeds.
    let tuned = ModelDir::open(tmp.path().join("tuned")).unwrap();
    assert_eq!(
        tuned.architecture,
        ModelDir::open(tmp.path().join("model"))
            .unwrap()
            .architecture
    );

    let lora = |targets: &str| TrainSettings {
        lora: Some(LoraSettings {
            rank: 4,
            alpha: 8.0,
            targets: parse_targets(targets).unwrap(),
        }),
        ..settings()
    };
    let summary = run(tmp.path(), "lora", &lora("ffn,o"));
    let after = summary.after.as_ref().unwrap()["ndcg@10"];
    assert!(
        after > before,
        "LoRA on the mixer: {before:.4} -> {after:.4}"
    );

    let err = training_error(tmp.path(), &lora("q"));
    assert!(err.contains("lora-targets") && err.contains("`q`"), "{err}");
}

/// XLM-RoBERTa and MPNet (the BERT-shaped families with their own positions, names and, for
/// MPNet, relative-position bias) train full, and with LoRA on their attention projections
/// under GradCache and bf16 products; the tuned directory keeps the family.
#[test]
fn roberta_and_mpnet_train_full_and_with_lora_under_gradcache_and_bf16() {
    use attune_model::{BertFlavor, Precision};
    use attune_trainer::lora::{parse_targets, LoraSettings};
    for flavor in [BertFlavor::Roberta, BertFlavor::Mpnet] {
        let tmp = tempfile::tempdir().unwrap();
        let spec = RandomBertSpec {
            flavor,
            ..RandomBertSpec::default()
        };
        write_random_bert(&tmp.path().join("model"), &spec).unwrap();
        write_synthetic_beir(&tmp.path().join("data"), &SyntheticSpec::default()).unwrap();

        let summary = run(tmp.path(), "tuned", &settings());
        let before = summary.before.as_ref().unwrap()["ndcg@10"];
        let after = summary.after.as_ref().unwrap()["ndcg@10"];
        assert!(
            after > before + 0.01,
            "{flavor:?} full: {before:.4} -> {after:.4}"
        );
        let base = ModelDir::open(tmp.path().join("model")).unwrap();
        let tuned = ModelDir::open(tmp.path().join("tuned")).unwrap();
        assert_eq!(tuned.architecture, base.architecture);

        let lora = TrainSettings {
            lora: Some(LoraSettings {
                rank: 4,
                alpha: 8.0,
                targets: parse_targets("q,v").unwrap(),
            }),
            mini_batch: Some(4),
            precision: Precision::Bf16,
            ..settings()
        };
        let summary = run(tmp.path(), "lora", &lora);
        let after = summary.after.as_ref().unwrap()["ndcg@10"];
        assert!(after > before, "{flavor:?} LoRA: {before:.4} -> {after:.4}");
        assert_eq!(
            ModelDir::open(tmp.path().join("lora"))
                .unwrap()
                .architecture,
            base.architecture
        );
    }
}

/// ModernBERT (rotary positions, GeGLU, sliding windows; the committed tiny fixture with its
/// byte-level BPE tokenizer) trains full and with LoRA on its fused `Wqkv` (`q`) and
/// feed-forward projections; the family lacks separate `k` and `v` projections and says so.
#[test]
fn modernbert_trains_full_and_with_lora() {
    use attune_trainer::lora::{parse_targets, LoraSettings};
    let tmp = tempfile::tempdir().unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/families/modernbert");
    let model_dir = tmp.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            let sub = model_dir.join(entry.file_name());
            std::fs::create_dir_all(&sub).unwrap();
            for f in std::fs::read_dir(entry.path()).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), sub.join(f.file_name())).unwrap();
            }
        } else {
            std::fs::copy(entry.path(), model_dir.join(entry.file_name())).unwrap();
        }
    }
    write_synthetic_beir(&tmp.path().join("data"), &SyntheticSpec::default()).unwrap();

    let summary = run(tmp.path(), "tuned", &settings());
    let before = summary.before.as_ref().unwrap()["ndcg@10"];
    let after = summary.after.as_ref().unwrap()["ndcg@10"];
    eprintln!("modernbert validation nDCG@10 {before:.4} -> {after:.4}");
    assert!(after > before + 0.01, "full: {before:.4} -> {after:.4}");
    let base = ModelDir::open(&model_dir).unwrap();
    assert_eq!(
        ModelDir::open(tmp.path().join("tuned"))
            .unwrap()
            .architecture,
        base.architecture
    );

    let lora = |targets: &str| TrainSettings {
        lora: Some(LoraSettings {
            rank: 4,
            alpha: 8.0,
            targets: parse_targets(targets).unwrap(),
        }),
        ..settings()
    };
    let summary = run(tmp.path(), "lora", &lora("q,ffn"));
    let after = summary.after.as_ref().unwrap()["ndcg@10"];
    assert!(after > before, "LoRA: {before:.4} -> {after:.4}");

    let err = training_error(tmp.path(), &lora("v"));
    assert!(err.contains("lora-targets") && err.contains("`v`"), "{err}");
}

#[test]
fn matryoshka_trains_nested_dimensions_and_refuses_impossible_ones() {
    let tmp = setup();
    let matryoshka = TrainSettings {
        max_steps: Some(20),
        eval_every: None,
        loss: attune_trainer::loss::LossSettings {
            matryoshka_dims: vec![32, 16, 8],
            ..Default::default()
        },
        ..settings()
    };
    let summary = run(tmp.path(), "matryoshka", &matryoshka);
    assert!(summary.final_loss.unwrap().is_finite());
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("matryoshka/training_card.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        card["hyperparameters"]["matryoshka_dims"],
        serde_json::json!([32, 16, 8])
    );
    for (dims, needle) in [
        (vec![64], "wider than the model's 32"),
        (vec![16, 16], "distinct"),
        (vec![0], "distinct and at least 1"),
    ] {
        let refused = TrainSettings {
            loss: attune_trainer::loss::LossSettings {
                matryoshka_dims: dims,
                ..Default::default()
            },
            ..settings()
        };
        let error = training_error(tmp.path(), &refused);
        assert!(
            error.contains("matryoshka-dims") && error.contains(needle),
            "{error}"
        );
    }
    assert!(!tmp.path().join("refused").exists());
}

#[test]
fn the_guide_masks_what_it_ranks_above_the_positive_and_training_records_it() {
    use attune_model::{Encoder, EncoderSettings};
    use attune_trainer::targets::{GuideFilter, GuideSettings, TargetSettings};
    let tmp = setup();
    let model = ModelDir::open(tmp.path().join("model")).unwrap();
    let encoder = Encoder::load(&model, &Device::Cpu, EncoderSettings::default()).unwrap();
    let guide = GuideFilter::new(encoder, 0.01);
    let queries = ["red running shoes", "leather boots"];
    // Candidate 2 repeats query 0's positive: the guide scores it exactly as the positive.
    let candidates = [
        "red trail runner shoe",
        "brown leather boot",
        "red trail runner shoe",
    ];
    let excluded = guide.exclusions(&queries, &candidates).unwrap();
    assert!(excluded.contains(&(0, 2)), "{excluded:?}");
    assert!(excluded.iter().all(|&(i, k)| i != k), "{excluded:?}");
    // With margin 0, equal scores are not above the positive: the repeat stays a negative.
    let model_again = Encoder::load(&model, &Device::Cpu, EncoderSettings::default()).unwrap();
    let strict = GuideFilter::new(model_again, 0.0);
    assert!(!strict
        .exclusions(&queries, &candidates)
        .unwrap()
        .contains(&(0, 2)));

    let guided = TrainSettings {
        max_steps: Some(10),
        eval_every: None,
        targets: TargetSettings {
            guide: Some(GuideSettings {
                model: None,
                margin: 0.05,
            }),
            ..Default::default()
        },
        ..settings()
    };
    let summary = run(tmp.path(), "guided", &guided);
    assert!(summary.guide_negatives_masked.is_some());
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("guided/training_card.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(card["hyperparameters"]["guide"]["margin"], 0.05);
    assert!(
        card["loss"].as_str().unwrap().contains("GISTEmbed"),
        "{card}"
    );
    assert_eq!(
        card["guide_negatives_masked"].as_u64(),
        summary.guide_negatives_masked.map(|n| n as u64)
    );
}
