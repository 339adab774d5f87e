//! Gradient correctness of the training path on a tiny random BERT: every trainable tensor gets a
//! non-zero gradient from the contrastive loss (the fused layer-norm trap gives silent zeros),
//! and the analytic gradient matches central finite differences along random directions.

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_model::{Encoder, EncoderSettings, Mode, ModelDir, TextKind, TrainContext};
use attune_trainer::loss::{info_nce, scalar, BatchTargets, LossSettings};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{rngs::StdRng, Rng, SeedableRng};

const QUERIES: [&str; 4] = [
    "red running shoes",
    "usb c hub",
    "wireless mouse",
    "yoga mat",
];
const POSITIVES: [&str; 4] = [
    "nike pegasus running shoe in red",
    "seven port usb c hub with hdmi",
    "silent wireless mouse for laptops",
    "non slip yoga mat six millimetres",
];
const NEGATIVES: [&str; 2] = ["blue leather boots", "hdmi cable two metres"];

fn load(dropout: f32) -> (tempfile::TempDir, Encoder, VarMap) {
    let tmp = tempfile::tempdir().unwrap();
    let spec = RandomBertSpec {
        dropout,
        ..Default::default()
    };
    write_random_bert(tmp.path(), &spec).unwrap();
    let dir = ModelDir::open(tmp.path()).unwrap();
    let (encoder, varmap) =
        Encoder::load_trainable(&dir, &Device::Cpu, EncoderSettings::default()).unwrap();
    (tmp, encoder, varmap)
}

fn loss(encoder: &Encoder, seed: u64) -> Tensor {
    let queries = encoder.tokenize(&QUERIES, TextKind::Query).unwrap();
    let docs: Vec<&str> = POSITIVES.iter().chain(NEGATIVES.iter()).copied().collect();
    let docs = encoder.tokenize(&docs, TextKind::Document).unwrap();
    let ctx = TrainContext::new(seed);
    let q = encoder
        .forward_batch(&queries.iter().collect::<Vec<_>>(), Mode::Train(&ctx))
        .unwrap();
    let c = encoder
        .forward_batch(&docs.iter().collect::<Vec<_>>(), Mode::Train(&ctx))
        .unwrap();
    let settings = LossSettings {
        symmetric: true,
        ..Default::default()
    };
    info_nce(&q, &c, &BatchTargets::default(), &settings).unwrap()
}

fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn squared_norm(t: &Tensor) -> f64 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

#[test]
fn every_trainable_tensor_gets_a_non_zero_gradient() {
    let (_tmp, encoder, varmap) = load(0.1);
    let grads = loss(&encoder, 1).backward().unwrap();
    let vars = sorted_vars(&varmap);
    // Embeddings (3 tables + layer norm weight and bias) and 16 tensors per layer × 2 layers.
    assert_eq!(
        vars.len(),
        5 + 16 * 2,
        "{:?}",
        vars.iter().map(|v| &v.0).collect::<Vec<_>>()
    );
    let zero: Vec<&str> = vars
        .iter()
        .filter(|(_, var)| {
            grads
                .get(var.as_tensor())
                .is_none_or(|g| squared_norm(g) == 0.0)
        })
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(zero.is_empty(), "no gradient for {zero:?}");
}

#[test]
fn gradients_match_central_finite_differences() {
    // Dropout off, so the loss is a deterministic function of the weights.
    let (_tmp, encoder, varmap) = load(0.0);
    check_finite_differences(&encoder, &sorted_vars(&varmap));
}

#[test]
fn lora_adapter_gradients_match_central_finite_differences() {
    use attune_model::LinearTarget;
    use attune_trainer::lora::{attach, LoraSettings};
    let tmp = tempfile::tempdir().unwrap();
    write_random_bert(
        tmp.path(),
        &RandomBertSpec {
            dropout: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let dir = ModelDir::open(tmp.path()).unwrap();
    // Frozen weights: plain tensors, only the adapters are variables.
    let mut encoder = Encoder::load(&dir, &Device::Cpu, EncoderSettings::default()).unwrap();
    let settings = LoraSettings {
        rank: 2,
        alpha: 4.0,
        targets: LinearTarget::ALL.to_vec(),
    };
    let vars = attach(encoder.model_mut(), &settings, 3, &Device::Cpu).unwrap();
    assert_eq!(vars.len(), 2 * 6 * 2);
    // B starts at zero (A's gradient is then zero); give it values so both are exercised.
    let mut rng = StdRng::seed_from_u64(9);
    for (name, var) in &vars {
        if name.ends_with("lora_B") {
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-0.2f32..0.2))
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    check_finite_differences(&encoder, &vars);
}

/// Every variable's analytic gradient against central finite differences of the loss.
fn check_finite_differences(encoder: &Encoder, vars: &[(String, Var)]) {
    let grads = loss(encoder, 1).backward().unwrap();
    let eps = 3e-2;
    let mut worst = (0.0f64, String::new());
    let mut rng = StdRng::seed_from_u64(42);
    for (name, var) in vars {
        let original = var.as_tensor().copy().unwrap();
        let grad = grads.get(var.as_tensor()).unwrap();
        // Half the gradient's own direction (so the change in loss stands well above f32
        // rounding), half a seeded random one (so every component is exercised), unit length.
        let random: Vec<f32> = (0..original.elem_count())
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let random = Tensor::from_vec(random, original.shape(), &Device::Cpu).unwrap();
        let unit = |t: &Tensor| (t / squared_norm(t).sqrt()).unwrap();
        let direction = unit(&(unit(grad) + unit(&random)).unwrap());
        let analytic = (grad * &direction)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let at = |step: f64| {
            var.set(&(&original + (&direction * step).unwrap()).unwrap())
                .unwrap();
            scalar(&loss(encoder, 1)).unwrap()
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        var.set(&original).unwrap();
        // Relative error, with derivatives under 3e-3 compared in absolute terms: f32 rounding of
        // the loss (about 1e-6) puts ~2e-5 of noise on each finite difference, and some
        // derivatives are exactly zero in exact arithmetic (a key bias shifts every score of a
        // query equally, which softmax ignores).
        let error = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(3e-3);
        assert!(
            error <= 1e-2,
            "{name}: analytic {analytic:.6} vs numeric {numeric:.6}, relative error {error:.2e}"
        );
        if error > worst.0 {
            worst = (error, name.clone());
        }
    }
    eprintln!("largest relative error {:.2e} ({})", worst.0, worst.1);
}

#[test]
fn grad_cache_gives_the_gradients_of_the_uncached_loss() {
    use attune_trainer::data::{Location, TrainingPair};
    use attune_trainer::train::{batch_gradients, Batch};
    let (_tmp, encoder, varmap) = load(0.0);
    let location = Location {
        path: std::sync::Arc::new("pairs.jsonl".into()),
        line: 1,
    };
    let pairs: Vec<TrainingPair> = (0..4)
        .map(|i| TrainingPair {
            source: None,
            query: QUERIES[i].into(),
            positive: POSITIVES[i].into(),
            negatives: if i < 2 {
                vec![NEGATIVES[i].into()]
            } else {
                vec![]
            },
            grade: 1,
            weight: 1.0,
            location: location.clone(),
        })
        .collect();
    let vars = sorted_vars(&varmap);
    let settings = LossSettings {
        symmetric: true,
        ..Default::default()
    };
    // Masked cells and unequal weights go through both paths alike.
    let targets = BatchTargets {
        weights: vec![1.0, 0.5, 2.0, 1.0],
        excluded: vec![(0, 1), (2, 4)],
    };
    let batch = Batch {
        pairs: &pairs,
        indices: &[0, 1, 2, 3],
        targets: &targets,
    };
    let (loss, tokens, whole) =
        batch_gradients(&encoder, &batch, 7, &settings, None, &vars).unwrap();
    for mini_batch in [1, 3, 5] {
        let (cached_loss, cached_tokens, cached) =
            batch_gradients(&encoder, &batch, 7, &settings, Some(mini_batch), &vars).unwrap();
        assert_eq!(tokens, cached_tokens);
        assert!((scalar(&loss).unwrap() - scalar(&cached_loss).unwrap()).abs() < 1e-6);
        let mut worst = 0f64;
        for (name, var) in &vars {
            let a = whole.get(var.as_tensor()).unwrap();
            let b = cached
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient with mini-batch {mini_batch}"));
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            assert!(
                diff <= 1e-5,
                "{name}: |uncached − cached| = {diff} (mini-batch {mini_batch})"
            );
            worst = worst.max(diff);
        }
        eprintln!("mini-batch {mini_batch}: largest gradient difference {worst:e}");
    }
}
