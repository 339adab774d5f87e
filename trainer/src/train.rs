//! The training loop: check the data, plan the batches, run AdamW steps on the InfoNCE loss,
//! validate and checkpoint on schedule, resume from the latest checkpoint, and write the tuned
//! model directory with its training card.
//!
//! Determinism: on the CPU a run is a function of (base model, data, settings). Batches come from
//! [`query_grouped_batches`] (by default `no_duplicate_batches`) with `(seed, epoch)`, and each
//! step's dropout generator is seeded with `(seed, step)`, so a run resumed from a checkpoint
//! takes exactly the steps the uninterrupted run would have taken.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use attune_eval::data::BeirDataset;
use attune_eval::evaluator::{evaluate_model, EvalSettings};
use attune_eval::metrics::{MetricKind, MetricName};
use attune_model::{Encoder, EncoderSettings, Mode, ModelDir, Precision, TextKind, TrainContext};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::batches::query_grouped_batches;
use crate::check::{check, CheckReport, CheckSettings, Finding, Severity};
use crate::checkpoint::{log_lines, Best, CheckpointStore, LogRecord, Progress, RunIdentity};
use crate::data::{TrainingData, TrainingPair};
use crate::error::{Result, TrainError};
use crate::lora::{self, LoraSettings};
use crate::loss::{info_nce, scalar, BatchTargets, LossSettings};
use crate::optim::{linear_schedule, AdamW, AdamWSettings};
use crate::prompt::{self, PromptSettings};
use crate::targets::{candidate_texts, GuideFilter, Judgments, TargetSettings};

/// What to do with training queries that also appear in the held-out data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakagePolicy {
    /// Refuse to train (default).
    #[default]
    Refuse,
    /// Train without the leaked pairs.
    Drop,
    /// Train on them anyway (e.g. to reproduce a published recipe); the card records it.
    Allow,
}

impl std::str::FromStr for LeakagePolicy {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "refuse" => Ok(Self::Refuse),
            "drop" => Ok(Self::Drop),
            "allow" => Ok(Self::Allow),
            _ => Err(TrainError::InvalidSetting {
                name: "leakage",
                problem: format!("`{s}`: expected one of refuse, drop, allow"),
            }),
        }
    }
}

impl std::fmt::Display for LeakagePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Refuse => "refuse",
            Self::Drop => "drop",
            Self::Allow => "allow",
        })
    }
}

/// Training settings. `Default` gives the documented defaults (sentence-transformers' recipe).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSettings {
    /// Passes over the training pairs (default 1). Ignored when `max_steps` is set.
    pub epochs: usize,
    /// Optimizer steps to take, cycling through epochs as needed; `None` trains `epochs` epochs.
    pub max_steps: Option<usize>,
    /// Pairs per batch (default 32). Every other pair's positive is a negative of each query.
    pub batch_size: usize,
    /// GradCache: embed the batch this many texts at a time, with the exact gradients of the
    /// whole-batch loss and the memory of this many texts (default `None`: the whole batch in one
    /// pass). Lets `batch_size` grow past what memory holds.
    pub mini_batch: Option<usize>,
    /// AdamW hyperparameters (peak lr 2e-5, weight decay 0.01).
    pub optimizer: AdamWSettings,
    /// Share of the steps spent warming the learning rate up from 0 (default 0.1); the warmup
    /// is `ceil(ratio × total steps)` steps, then the rate decays linearly to 0.
    pub warmup_ratio: f64,
    /// Gradient-norm clipping threshold (default 1.0); `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Temperature and symmetry of the InfoNCE loss.
    pub loss: LossSettings,
    /// Which candidates are negatives (judged positives masked by default) and how grades
    /// weigh pairs.
    pub targets: TargetSettings,
    /// Pairs of one query drawn into the same batch, at most (default 1: every text of a batch
    /// distinct, sentence-transformers' sampler). Above 1 a query's judged answers meet in one
    /// batch, masked out of each other's negatives (needs `mask_judged_positives`); see
    /// [`crate::batches::query_grouped_batches`].
    pub positives_per_query: usize,
    /// Tokens per text while training (default `None`: the model's `max_seq_length`).
    /// Validation and the written model keep the model's own length.
    pub max_seq_length: Option<usize>,
    /// Seed of the batch order and dropout (default 42).
    pub seed: u64,
    /// Validate every N steps and keep the best weights by nDCG@10 (default `None`: validate
    /// only before and after training, when validation data are given).
    pub eval_every: Option<usize>,
    /// Write a checkpoint every N steps (default `None`: none).
    pub checkpoint_every: Option<usize>,
    /// Step checkpoints kept on disk (default 1, the newest).
    pub checkpoints_kept: usize,
    /// Training queries found in the held-out data (default refuse).
    pub leakage: LeakagePolicy,
    /// Train LoRA adapters instead of every weight (default `None`: full fine-tuning). The
    /// written model has the adapters merged in; they are also written on their own.
    pub lora: Option<LoraSettings>,
    /// Prompt tuning: train a soft prompt instead of any weight (default `None`). The written
    /// model is the base's weights with the prompt in its own file, which only attune applies.
    pub prompt: Option<PromptSettings>,
    /// The dtype of the transformer's matrix products (default [`Precision::Auto`]: bf16 on a
    /// CUDA GPU, f32 on the CPU). Weights, optimizer state, gradients and the loss stay f32.
    pub precision: Precision,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            epochs: 1,
            max_steps: None,
            batch_size: 32,
            mini_batch: None,
            optimizer: AdamWSettings::default(),
            warmup_ratio: 0.1,
            max_grad_norm: Some(1.0),
            loss: LossSettings::default(),
            targets: TargetSettings::default(),
            positives_per_query: 1,
            max_seq_length: None,
            seed: 42,
            eval_every: None,
            checkpoint_every: None,
            checkpoints_kept: 1,
            leakage: LeakagePolicy::Refuse,
            lora: None,
            prompt: None,
            precision: Precision::Auto,
        }
    }
}

impl TrainSettings {
    fn validate(&self) -> Result<()> {
        let invalid = |name: &'static str, problem: &str| {
            Err(TrainError::InvalidSetting {
                name,
                problem: problem.to_string(),
            })
        };
        if self.precision == Precision::Int8 {
            return invalid(
                "precision",
                "int8 quantizes fixed weights for inference; train in f32, bf16 or f16, then \
                 embed or index the tuned model with --precision int8",
            );
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        if let Some(prompt) = &self.prompt {
            prompt.validate()?;
            if self.lora.is_some() {
                return invalid(
                    "prompt-tokens",
                    "prompt tuning and LoRA are two methods; choose one",
                );
            }
        }
        if self.positives_per_query == 0 || self.positives_per_query > self.batch_size {
            return invalid(
                "positives-per-query",
                "must be between 1 and the batch size",
            );
        }
        if self.positives_per_query > 1 && !self.targets.mask_judged_positives {
            return invalid(
                "positives-per-query",
                "above 1 needs mask_judged_positives: a query's other answers in the batch \
                 would be its negatives",
            );
        }
        if self.mini_batch == Some(0) {
            return invalid("mini-batch", "at least 1 text");
        }
        if self.batch_size < 2 {
            return invalid(
                "batch-size",
                "must be at least 2: in-batch negatives need other pairs",
            );
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return invalid("epochs", "must be at least 1");
        }
        if self.max_steps == Some(0) {
            return invalid("max-steps", "must be at least 1");
        }
        if !(self.optimizer.lr > 0.0 && self.optimizer.lr.is_finite()) {
            return invalid("lr", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return invalid("warmup-ratio", "must be in [0, 1)");
        }
        if !(self.loss.temperature > 0.0 && self.loss.temperature.is_finite()) {
            return invalid("temperature", "must be a positive number");
        }
        if self.eval_every == Some(0) {
            return invalid("eval-every", "must be at least 1");
        }
        let dims = &self.loss.matryoshka_dims;
        if dims.contains(&0) || (1..dims.len()).any(|i| dims[..i].contains(&dims[i])) {
            return invalid(
                "matryoshka-dims",
                "dimensions must be distinct and at least 1",
            );
        }
        if self.checkpoint_every == Some(0) {
            return invalid("checkpoint-every", "must be at least 1");
        }
        Ok(())
    }

    /// The settings that change the trained weights, as JSON (the run identity of checkpoints
    /// and the training card's hyperparameters).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "mini_batch": self.mini_batch,
            "lora": self.lora,
            "prompt": self.prompt,
            "lr": self.optimizer.lr,
            "beta1": self.optimizer.beta1,
            "beta2": self.optimizer.beta2,
            "eps": self.optimizer.eps,
            "weight_decay": self.optimizer.weight_decay,
            "warmup_ratio": self.warmup_ratio,
            "max_grad_norm": self.max_grad_norm,
            "temperature": self.loss.temperature,
            "symmetric_loss": self.loss.symmetric,
            "matryoshka_dims": self.loss.matryoshka_dims,
            "mask_judged_positives": self.targets.mask_judged_positives,
            "positives_per_query": self.positives_per_query,
            "grade_weighting": self.targets.grade_weighting,
            "guide": self.targets.guide.as_ref().map(|g| serde_json::json!({
                "model": g.model.as_ref().map(|m| m.display().to_string()),
                "margin": g.margin,
            })),
            "max_seq_length": self.max_seq_length,
            "seed": self.seed,
            "eval_every": self.eval_every,
            "leakage": self.leakage,
            "precision": self.precision.to_string(),
        })
    }
}

/// What a run reads.
pub struct TrainInputs<'a> {
    /// The base model.
    pub model: &'a ModelDir,
    /// Training pairs.
    pub data: &'a TrainingData,
    /// Held-out pairs for the leakage check (usually the validation split's), if any.
    pub held_out: Option<&'a TrainingData>,
    /// Validation data (a BEIR split), if any.
    pub validation: Option<&'a BeirDataset>,
    /// Where to train.
    pub device: &'a Device,
}

/// Where a run writes.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    /// The tuned model directory (written once, at the end, atomically).
    pub out: PathBuf,
    /// The checkpoint directory.
    pub checkpoints: PathBuf,
    /// Continue from the newest checkpoint there.
    pub resume: bool,
    /// Keep the checkpoint directory after a successful run (default: delete it).
    pub keep_checkpoints: bool,
}

impl TrainOutput {
    /// `out`, with checkpoints in the sibling `<out>.checkpoints`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        let out = out.into();
        let mut name = out
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "model".into());
        name.push(".checkpoints");
        Self {
            checkpoints: out.with_file_name(name),
            out,
            resume: false,
            keep_checkpoints: false,
        }
    }
}

/// Something that happened during a run (for progress display).
#[derive(Debug)]
pub enum Event<'a> {
    /// The data check's report (printed before anything else happens).
    Checked(&'a CheckReport),
    /// Pairs left out under [`LeakagePolicy::Drop`].
    DroppedLeaked(usize),
    /// The plan: steps in all, warmup, and the step the run starts at (non-zero on resume).
    Planned {
        /// Training pairs.
        pairs: usize,
        /// Optimizer steps in all.
        total_steps: usize,
        /// Warmup steps.
        warmup_steps: usize,
        /// First step to run (0-based).
        first_step: usize,
    },
    /// `--resume` found a checkpoint (or none: the run starts at step 0).
    Resumed(Option<&'a Path>),
    /// A validation begins: the corpus has this many documents.
    ValidationStarted(usize),
    /// Documents embedded in a validation.
    ValidationProgress(usize),
    /// A validation finished.
    Validated(&'a LogRecord),
    /// An optimizer step finished.
    Step(&'a LogRecord),
    /// A checkpoint was written.
    Checkpointed(&'a Path),
}

/// What a finished run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Optimizer steps in all.
    pub steps: usize,
    /// Step the run (re)started at.
    pub first_step: usize,
    /// Pairs trained on (after leakage handling).
    pub pairs: usize,
    /// Pairs left out as leakage.
    pub dropped_leaked: usize,
    /// Training examples (pairs) seen, across resumptions.
    pub examples: usize,
    /// Seconds of training (validation excluded), across resumptions.
    pub training_s: f64,
    /// `examples / training_s`.
    pub examples_per_s: f64,
    /// Loss of the last step.
    pub final_loss: Option<f64>,
    /// Validation metrics of the base model.
    pub before: Option<BTreeMap<String, f64>>,
    /// Validation metrics of the written weights.
    pub after: Option<BTreeMap<String, f64>>,
    /// The validation that chose the written weights.
    pub best: Option<Best>,
    /// The tuned model directory.
    pub out: PathBuf,
    /// Parameters the optimizer updated (all weights, the LoRA adapters, or the soft prompt).
    pub trainable_parameters: usize,
    /// What was trained.
    pub method: Method,
    /// (query, candidate) cells of the whole plan kept out of the negatives because the
    /// candidate is judged relevant to the query (0 with the mask off).
    pub judged_negatives_masked: usize,
    /// Further cells the guide model masked in the steps of this session (`None` without a
    /// guide).
    pub guide_negatives_masked: Option<usize>,
    /// Training queries with more than one judged positive.
    pub queries_with_several_positives: usize,
}

/// What a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Every weight.
    Full,
    /// LoRA adapters, merged into the written weights.
    Lora,
    /// A soft prompt, written on its own; the weights stay the base's.
    Prompt,
}

impl Method {
    /// The method `settings` choose.
    pub fn of(settings: &TrainSettings) -> Self {
        match (&settings.lora, &settings.prompt) {
            (Some(_), _) => Method::Lora,
            (None, Some(_)) => Method::Prompt,
            (None, None) => Method::Full,
        }
    }

    /// What the written directory holds, in words.
    pub fn writes(self) -> &'static str {
        match self {
            Method::Full => "every weight updated",
            Method::Lora => {
                "LoRA adapters merged into the weights; adapter_model.safetensors beside them"
            }
            Method::Prompt => {
                "the base's weights unchanged; the soft prompt in soft_prompt.safetensors, \
                 which only attune applies"
            }
        }
    }
}

/// Metrics logged at each validation.
const LOGGED_METRICS: [(MetricKind, usize); 5] = [
    (MetricKind::Ndcg, 10),
    (MetricKind::Recall, 10),
    (MetricKind::Recall, 100),
    (MetricKind::Mrr, 10),
    (MetricKind::Map, 100),
];

/// The key of nDCG@10 in logged metrics.
fn ndcg_key() -> String {
    MetricName::NDCG_10.to_string()
}

/// Batches of every epoch the run needs, and the step counts.
struct Plan {
    epochs: Vec<Vec<Vec<usize>>>,
    total_steps: usize,
    warmup_steps: usize,
}

impl Plan {
    fn new(pairs: &[TrainingPair], settings: &TrainSettings) -> Self {
        let epoch = |e: usize| {
            query_grouped_batches(
                pairs,
                settings.batch_size,
                settings.positives_per_query,
                settings.seed,
                e,
            )
        };
        let mut epochs = Vec::new();
        let total_steps = match settings.max_steps {
            Some(max) => {
                let mut planned = 0;
                while planned < max {
                    let batches = epoch(epochs.len());
                    planned += batches.len();
                    epochs.push(batches);
                }
                max
            }
            None => {
                epochs = (0..settings.epochs).map(epoch).collect();
                epochs.iter().map(Vec::len).sum()
            }
        };
        let warmup_steps = (settings.warmup_ratio * total_steps as f64).ceil() as usize;
        Self {
            epochs,
            total_steps,
            warmup_steps,
        }
    }

    /// The batch of 0-based step `step` and the fractional epoch at its end.
    fn batch(&self, step: usize) -> (&[usize], f64) {
        let mut remaining = step;
        for (e, batches) in self.epochs.iter().enumerate() {
            if remaining < batches.len() {
                let epoch = e as f64 + (remaining + 1) as f64 / batches.len() as f64;
                return (&batches[remaining], epoch);
            }
            remaining -= batches.len();
        }
        unreachable!("step {step} is beyond the plan")
    }
}

/// sha256 over the pairs' texts in order.
fn data_fingerprint(pairs: &[TrainingPair]) -> String {
    let mut hasher = Sha256::new();
    for pair in pairs {
        for text in std::iter::once(&pair.query)
            .chain(std::iter::once(&pair.positive))
            .chain(&pair.negatives)
        {
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hasher.update(pair.negatives.len().to_le_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// The dropout seed of 0-based step `step`.
fn step_seed(seed: u64, step: usize) -> u64 {
    seed ^ (step as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// Trainable variables by name, in name order.
fn named_vars(varmap: &candle_nn::VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("var map lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The variables' current tensors by name. They share the variables' storage, so write them
/// out before the next optimizer step.
fn snapshot(vars: &[(String, Var)]) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect()
}

fn restore(vars: &[(String, Var)], weights: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    for (name, var) in vars {
        let tensor = weights.get(name).ok_or_else(|| TrainError::Checkpoint {
            path: path.to_path_buf(),
            problem: format!("no weights for `{name}`"),
        })?;
        if tensor.shape() != var.shape() {
            return Err(TrainError::Checkpoint {
                path: path.to_path_buf(),
                problem: format!(
                    "`{name}` has shape {:?}, the model {:?}",
                    tensor.shape(),
                    var.shape()
                ),
            });
        }
        var.set(&tensor.to_device(var.device())?)?;
    }
    Ok(())
}

/// Applies the leakage policy to the check's report: leakage that the policy accepts becomes a
/// warning that says what happens to those pairs.
fn apply_leakage_policy(report: &mut CheckReport, policy: LeakagePolicy) {
    let verdict = match policy {
        LeakagePolicy::Refuse => return,
        LeakagePolicy::Drop => "dropped from training (leakage policy `drop`)",
        LeakagePolicy::Allow => "trained on anyway (leakage policy `allow`)",
    };
    for finding in &mut report.findings {
        if finding.code == "leakage" {
            finding.severity = Severity::Warning;
            finding.message = format!("{}: {verdict}", finding.message);
        }
    }
}

/// The pairs to train on after the data check, and how many leaked pairs were dropped. Fatal
/// findings refuse the data with every problem in the message.
fn admit(
    data: &TrainingData,
    held_out: Option<&TrainingData>,
    report: &CheckReport,
    policy: LeakagePolicy,
) -> Result<(Vec<TrainingPair>, usize)> {
    let fatal: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Fatal)
        .collect();
    if !fatal.is_empty() {
        let problems = fatal
            .iter()
            .map(|f| {
                let mut line = format!("  {} [{}]", f.message, f.code);
                if !f.samples.is_empty() {
                    line.push_str(&format!(": {}", f.samples.join("; ")));
                }
                if f.code == "leakage" {
                    line.push_str(
                        "\n  (leakage policy `drop` trains without those pairs; `allow` trains on them anyway)",
                    );
                }
                line
            })
            .collect::<Vec<_>>()
            .join("\n");
        return Err(TrainError::RefusedData {
            path: data.source.clone(),
            problems,
        });
    }
    let mut pairs = data.pairs.clone();
    let mut dropped = 0;
    if let (LeakagePolicy::Drop, Some(held_out)) = (policy, held_out) {
        let leaked: HashSet<&str> = held_out.pairs.iter().map(|p| p.query.trim()).collect();
        let before = pairs.len();
        pairs.retain(|p| !leaked.contains(p.query.trim()));
        dropped = before - pairs.len();
        if pairs.is_empty() {
            return Err(TrainError::RefusedData {
                path: data.source.clone(),
                problems: "  every training query appears in the held-out data [leakage]"
                    .to_string(),
            });
        }
    }
    Ok((pairs, dropped))
}

/// Refuses an `--out` that holds something other than a model directory (it is replaced).
fn check_out_dir(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let empty = std::fs::read_dir(out)
        .map_err(|e| TrainError::io(out, e))?
        .next()
        .is_none();
    if empty || out.join("config.json").exists() {
        return Ok(());
    }
    Err(TrainError::InvalidSetting {
        name: "out",
        problem: format!(
            "{} exists and is not a model directory; it would be replaced",
            out.display()
        ),
    })
}

/// Validation metrics of `encoder` on `data`.
fn validate(
    encoder: &Encoder,
    data: &BeirDataset,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<BTreeMap<String, f64>> {
    on_event(Event::ValidationStarted(data.corpus.len()));
    let settings = EvalSettings::default();
    let result = evaluate_model(encoder, "", data, &settings, &mut |n| {
        on_event(Event::ValidationProgress(n))
    })?;
    Ok(LOGGED_METRICS
        .iter()
        .filter_map(|&(kind, k)| {
            let name = MetricName::at(kind, k);
            result
                .evaluation
                .mean_of(name)
                .map(|v| (name.to_string(), v))
        })
        .collect())
}

/// One batch: its pairs and what the loss knows about them.
pub struct Batch<'a> {
    /// Every training pair.
    pub pairs: &'a [TrainingPair],
    /// The batch's pairs, as indices into `pairs`.
    pub indices: &'a [usize],
    /// Masked cells and weights ([`Judgments::batch_targets`]).
    pub targets: &'a BatchTargets,
}

impl Batch<'_> {
    /// Its queries and candidates ([`batch_texts`]).
    fn texts(&self) -> (Vec<&str>, Vec<&str>) {
        batch_texts(self.pairs, self.indices)
    }
}

/// The texts of a batch: its queries, then its candidates ([`candidate_texts`], the layout
/// [`Judgments::batch_targets`] indexes).
fn batch_texts<'a>(pairs: &'a [TrainingPair], batch: &[usize]) -> (Vec<&'a str>, Vec<&'a str>) {
    let queries: Vec<&str> = batch.iter().map(|&i| pairs[i].query.as_str()).collect();
    (queries, candidate_texts(pairs, batch))
}

/// The loss of a batch (a scalar, detached), the real (unpadded) tokens it processed, and the
/// gradients of the loss with respect to every variable in `vars`.
///
/// With `mini_batch: None`, queries and candidates go through the model in one forward pass
/// each, with dropout from `TrainContext::new(seed)`. With `Some(n)`, it is GradCache (Gao et
/// al., 2021): the batch is embedded `n` texts at a time without keeping activations, the loss
/// and its gradient with respect to the embeddings are computed on the whole batch, and each
/// chunk is embedded again with activations and back-propagated with those embedding gradients.
/// Chunk `k` draws its dropout from its own context (seed mixed with `k`) in both passes, so the
/// gradients are exactly those of the whole-batch loss at the chunk's masks, and memory is that
/// of `n` texts. Without dropout the two paths give the same gradients.
pub fn batch_gradients(
    encoder: &Encoder,
    batch: &Batch<'_>,
    seed: u64,
    loss_settings: &LossSettings,
    mini_batch: Option<usize>,
    vars: &[(String, Var)],
) -> Result<(Tensor, usize, GradStore)> {
    let (queries, candidates) = batch.texts();
    let queries = encoder.tokenize(&queries, TextKind::Query)?;
    let candidates = encoder.tokenize(&candidates, TextKind::Document)?;
    let tokens = queries.iter().chain(&candidates).map(|t| t.ids.len()).sum();
    let Some(chunk) = mini_batch else {
        let ctx = TrainContext::new(seed);
        let q = encoder.forward_batch(&queries.iter().collect::<Vec<_>>(), Mode::Train(&ctx))?;
        let c = encoder.forward_batch(&candidates.iter().collect::<Vec<_>>(), Mode::Train(&ctx))?;
        let loss = info_nce(&q, &c, batch.targets, loss_settings)?;
        let grads = loss.backward()?;
        return Ok((loss.detach(), tokens, grads));
    };
    let chunk = chunk.max(1);
    // Chunks of queries, then of candidates: (first text, texts, chunk id).
    let parts: Vec<(bool, usize, usize)> = (0..queries.len())
        .step_by(chunk)
        .map(|start| (true, start, chunk.min(queries.len() - start)))
        .chain(
            (0..candidates.len())
                .step_by(chunk)
                .map(|start| (false, start, chunk.min(candidates.len() - start))),
        )
        .collect();
    let embed = |k: usize| -> Result<Tensor> {
        let (is_query, start, len) = parts[k];
        let texts = if is_query { &queries } else { &candidates };
        let ctx = TrainContext::new(seed ^ splitmix(k as u64 + 1));
        Ok(encoder.forward_batch(
            &texts[start..start + len].iter().collect::<Vec<_>>(),
            Mode::Train(&ctx),
        )?)
    };
    // Pass 1: embeddings only; detaching drops each chunk's activations.
    let mut query_parts = Vec::new();
    let mut candidate_parts = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        let embedded = embed(k)?.detach();
        if part.0 {
            query_parts.push(embedded);
        } else {
            candidate_parts.push(embedded);
        }
    }
    let q = Var::from_tensor(&Tensor::cat(&query_parts, 0)?)?;
    let c = Var::from_tensor(&Tensor::cat(&candidate_parts, 0)?)?;
    let loss = info_nce(q.as_tensor(), c.as_tensor(), batch.targets, loss_settings)?;
    let embedding_grads = loss.backward()?;
    let missing = || TrainError::Candle(candle_core::Error::Msg("no embedding gradient".into()));
    let q_grad = embedding_grads
        .get(q.as_tensor())
        .ok_or_else(missing)?
        .clone();
    let c_grad = embedding_grads
        .get(c.as_tensor())
        .ok_or_else(missing)?
        .clone();
    drop(embedding_grads);
    // Pass 2: each chunk again, back-propagating its rows of the embedding gradient.
    let mut total: Option<GradStore> = None;
    for (k, &(is_query, start, len)) in parts.iter().enumerate() {
        let upstream = if is_query { &q_grad } else { &c_grad }.narrow(0, start, len)?;
        let surrogate = (embed(k)? * upstream)?.sum_all()?;
        let grads = surrogate.backward()?;
        match total.as_mut() {
            None => total = Some(grads),
            Some(total) => {
                for (_, var) in vars {
                    if let Some(g) = grads.get(var.as_tensor()) {
                        let sum = match total.get(var.as_tensor()) {
                            Some(previous) => (previous + g)?,
                            None => g.clone(),
                        };
                        total.insert(var.as_tensor(), sum);
                    }
                }
            }
        }
    }
    Ok((loss.detach(), tokens, total.expect("a batch has texts")))
}

/// SplitMix64: decorrelates chunk seeds.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Trains, then writes the tuned model directory to `output.out`. Nothing is written anywhere
/// if the data check refuses the data or a setting is invalid.
pub fn train(
    inputs: &TrainInputs<'_>,
    settings: &TrainSettings,
    output: &TrainOutput,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TrainSummary> {
    settings.validate()?;
    check_out_dir(&output.out)?;
    let encoder_settings = EncoderSettings {
        precision: settings.precision,
        ..training_encoder_settings(settings)
    };
    // LoRA and prompt tuning freeze the model's weights (plain tensors, no gradients) and train
    // adapters or the prompt only.
    let method = Method::of(settings);
    let (mut encoder, varmap) = match method {
        Method::Full => Encoder::load_trainable(inputs.model, inputs.device, encoder_settings)?,
        Method::Lora | Method::Prompt => (
            Encoder::load(inputs.model, inputs.device, encoder_settings)?,
            candle_nn::VarMap::new(),
        ),
    };
    let adapter_vars = match (&settings.lora, &settings.prompt) {
        (Some(lora), _) => lora::attach(encoder.model_mut(), lora, settings.seed, inputs.device)?,
        (None, Some(prompt)) => prompt::attach(&mut encoder, prompt)?,
        (None, None) => Vec::new(),
    };
    let eval_encoder = encoder.with_settings(inputs.model, EncoderSettings::default())?;
    let guide = load_guide(inputs, settings)?;
    if let Some(&dim) = settings
        .loss
        .matryoshka_dims
        .iter()
        .find(|&&d| d > encoder.dimension())
    {
        return Err(TrainError::InvalidSetting {
            name: "matryoshka-dims",
            problem: format!(
                "{dim} is wider than the model's {} dimensions",
                encoder.dimension()
            ),
        });
    }

    let probe = |texts: &[&str]| -> Result<Vec<bool>> {
        Ok(encoder
            .tokenize(texts, TextKind::Plain)?
            .iter()
            .map(|t| t.truncated)
            .collect())
    };
    let mut report = check(
        inputs.data,
        inputs.held_out,
        Some(&probe),
        &CheckSettings::default(),
    )?;
    apply_leakage_policy(&mut report, settings.leakage);
    on_event(Event::Checked(&report));
    let (pairs, dropped_leaked) = admit(inputs.data, inputs.held_out, &report, settings.leakage)?;
    if dropped_leaked > 0 {
        on_event(Event::DroppedLeaked(dropped_leaked));
    }

    let plan = Plan::new(&pairs, settings);
    let judgments = Judgments::from_pairs(&pairs);
    // Every step's targets, planned once: the card counts them, the loop uses them.
    let planned_targets: Vec<BatchTargets> = (0..plan.total_steps)
        .map(|step| judgments.batch_targets(&pairs, plan.batch(step).0, &settings.targets))
        .collect();
    let judged_negatives_masked = planned_targets.iter().map(|t| t.excluded.len()).sum();
    let identity = RunIdentity {
        base_model: inputs.model.fingerprint()?,
        data: data_fingerprint(&pairs),
        settings: settings.to_json(),
    };
    let store = CheckpointStore::new(&output.checkpoints);
    let vars = match method {
        Method::Full => named_vars(&varmap),
        Method::Lora | Method::Prompt => adapter_vars,
    };
    let trainable_parameters = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut optimizer = AdamW::new(vars.clone(), settings.optimizer.clone())?;
    let mut progress = Progress {
        step: 0,
        examples: 0,
        elapsed_s: 0.0,
        best: None,
        log: Vec::new(),
    };
    if output.resume {
        let latest = store.latest()?;
        on_event(Event::Resumed(latest.as_deref()));
        if let Some(path) = latest {
            let checkpoint = store.load(&path, &identity, inputs.device)?;
            restore(&vars, &checkpoint.weights, &path)?;
            optimizer.restore(checkpoint.optimizer)?;
            progress = checkpoint.progress;
        }
    } else if store.latest()?.is_some() {
        return Err(TrainError::InvalidSetting {
            name: "resume",
            problem: format!(
                "{} holds checkpoints of an earlier run: resume it, or remove the directory",
                store.dir().display()
            ),
        });
    }
    // The live log restarts at the checkpoint (or empty): a killed run's later lines go.
    store.rewrite_log(&progress.log)?;
    on_event(Event::Planned {
        pairs: pairs.len(),
        total_steps: plan.total_steps,
        warmup_steps: plan.warmup_steps,
        first_step: progress.step,
    });

    let first_step = progress.step;
    let record_eval = |progress: &mut Progress,
                       metrics: BTreeMap<String, f64>,
                       on_event: &mut dyn FnMut(Event<'_>)|
     -> Result<bool> {
        let step = progress.step;
        let ndcg = metrics.get(&ndcg_key()).copied().unwrap_or(f64::NAN);
        // The base model (step 0) is the reference, not a candidate.
        let best = step > 0 && progress.best.map_or(true, |b| ndcg > b.ndcg_at_10);
        if best {
            progress.best = Some(Best {
                step,
                ndcg_at_10: ndcg,
            });
        }
        let record = LogRecord {
            kind: "eval".to_string(),
            step,
            epoch: None,
            loss: None,
            lr: None,
            grad_norm: None,
            tokens: None,
            examples_per_s: None,
            metrics: Some(metrics),
            best: (step > 0).then_some(best),
            elapsed_s: progress.elapsed_s,
        };
        store.append_log(&record)?;
        on_event(Event::Validated(&record));
        progress.log.push(record);
        Ok(best)
    };

    if let Some(validation) = inputs.validation {
        if progress.step == 0 && !progress.log.iter().any(|r| r.kind == "eval") {
            // The reference is the base model as it is: a fresh soft prompt is not part of it.
            let mut base_encoder = eval_encoder.with_settings(inputs.model, Default::default())?;
            base_encoder.set_soft_prompt(inputs.model.load_soft_prompt(inputs.device)?)?;
            let metrics = validate(&base_encoder, validation, on_event)?;
            record_eval(&mut progress, metrics, on_event)?;
        }
    }

    let session_start = Instant::now();
    let session_elapsed_before = progress.elapsed_s;
    let mut paused_s = 0.0;
    let mut final_loss = None;
    let mut guide_masked = 0;
    while progress.step < plan.total_steps {
        let step = progress.step;
        let (batch, epoch) = plan.batch(step);
        let lr = settings.optimizer.lr * linear_schedule(step, plan.warmup_steps, plan.total_steps);
        let mut targets = planned_targets[step].clone();
        if let Some(guide) = &guide {
            let (queries, candidates) = batch_texts(&pairs, batch);
            let judged: HashSet<(usize, usize)> = targets.excluded.iter().copied().collect();
            let extra: Vec<(usize, usize)> = guide
                .exclusions(&queries, &candidates)?
                .into_iter()
                .filter(|cell| !judged.contains(cell))
                .collect();
            guide_masked += extra.len();
            targets.excluded.extend(extra);
        }
        let (loss, tokens, grads) = batch_gradients(
            &encoder,
            &Batch {
                pairs: &pairs,
                indices: batch,
                targets: &targets,
            },
            step_seed(settings.seed, step),
            &settings.loss,
            settings.mini_batch,
            &vars,
        )?;
        let grad_norm = optimizer.step(&grads, lr, settings.max_grad_norm)?;
        drop(grads);
        let loss_value = scalar(&loss)?;
        if !loss_value.is_finite() {
            return Err(TrainError::Candle(candle_core::Error::Msg(format!(
                "the loss became {loss_value} at step {}; lower the learning rate",
                step + 1
            ))));
        }
        final_loss = Some(loss_value);
        progress.step += 1;
        progress.examples += batch.len();
        progress.elapsed_s =
            session_elapsed_before + session_start.elapsed().as_secs_f64() - paused_s;
        let record = LogRecord {
            kind: "train".to_string(),
            step: progress.step,
            epoch: Some(epoch),
            loss: Some(loss_value),
            lr: Some(lr),
            grad_norm: Some(grad_norm),
            tokens: Some(tokens),
            examples_per_s: Some(progress.examples as f64 / progress.elapsed_s.max(1e-9)),
            metrics: None,
            best: None,
            elapsed_s: progress.elapsed_s,
        };
        store.append_log(&record)?;
        on_event(Event::Step(&record));
        progress.log.push(record);

        let last = progress.step == plan.total_steps;
        if let Some(validation) = inputs.validation {
            let due = settings.eval_every.is_some_and(|n| progress.step % n == 0);
            if due || last {
                let pause = Instant::now();
                let metrics = validate(&eval_encoder, validation, on_event)?;
                let best = record_eval(&mut progress, metrics, on_event)?;
                if best && settings.eval_every.is_some() && !last {
                    store.save_best(&snapshot(&vars), progress.best.as_ref().expect("best"))?;
                }
                paused_s += pause.elapsed().as_secs_f64();
            }
        }
        if settings
            .checkpoint_every
            .is_some_and(|n| progress.step % n == 0)
            && !last
        {
            let weights = snapshot(&vars);
            let path = store.save(
                &identity,
                &progress,
                &weights,
                &optimizer.state()?,
                settings.checkpoints_kept,
            )?;
            on_event(Event::Checkpointed(&path));
        }
    }

    // The written weights: the best validated ones, or the last.
    let final_is_best = progress.best.map_or(true, |b| b.step == progress.step);
    let weights = if final_is_best {
        snapshot(&vars)
    } else {
        let expected = progress.best.map_or(0, |b| b.step);
        match store.load_best(inputs.device)? {
            Some((best, weights)) if best.step == expected => weights,
            found => {
                return Err(TrainError::Checkpoint {
                    path: store.dir().join(crate::checkpoint::files::BEST),
                    problem: format!(
                        "the best weights should be step {expected}'s, found {}",
                        found.map_or("none".to_string(), |(b, _)| format!("step {}'s", b.step))
                    ),
                })
            }
        }
    };
    let before = progress
        .log
        .iter()
        .find(|r| r.kind == "eval" && r.step == 0)
        .and_then(|r| r.metrics.clone());
    let written_step = progress.best.map_or(progress.step, |b| b.step);
    let after = progress
        .log
        .iter()
        .rev()
        .find(|r| r.kind == "eval" && r.step == written_step && r.step > 0)
        .and_then(|r| r.metrics.clone());
    let summary = TrainSummary {
        steps: plan.total_steps,
        first_step,
        pairs: pairs.len(),
        dropped_leaked,
        examples: progress.examples,
        training_s: progress.elapsed_s,
        examples_per_s: progress.examples as f64 / progress.elapsed_s.max(1e-9),
        final_loss,
        before,
        after,
        best: progress.best,
        out: output.out.clone(),
        trainable_parameters,
        method,
        judged_negatives_masked,
        guide_negatives_masked: guide.is_some().then_some(guide_masked),
        queries_with_several_positives: judgments.queries_with_several_positives(),
    };
    let card = training_card(inputs, settings, &report, &summary, &plan, written_step)?;
    let extra_files = vec![
        (
            files::CARD_JSON.to_string(),
            serde_json::to_vec_pretty(&card).expect("card serializes"),
        ),
        (
            files::CARD_MARKDOWN.to_string(),
            card_markdown(&card).into_bytes(),
        ),
        (
            files::LOG.to_string(),
            log_lines(&progress.log).into_bytes(),
        ),
    ];
    let (weights, extra_files) = match (&settings.lora, &settings.prompt) {
        (Some(lora), _) => {
            let mut files = extra_files;
            files.extend(lora::adapter_files(lora, &weights)?);
            (
                lora::merged_weights(encoder.model_mut(), lora, &weights)?,
                files,
            )
        }
        (None, Some(_)) => {
            let mut files = extra_files;
            files.push(prompt::prompt_file(&weights)?);
            (HashMap::new(), files)
        }
        (None, None) => (weights, extra_files),
    };
    inputs
        .model
        .write_updated(&output.out, &weights, &extra_files)?;
    if !output.keep_checkpoints {
        store.remove()?;
    }
    Ok(summary)
}

/// How a tuned model was trained: the part of its training card a report shows.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Recipe {
    /// The loss in words (masking of judged positives and grade weighting included).
    pub loss: String,
    /// The settings that changed the weights ([`TrainSettings::to_json`]).
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    /// Optimizer steps taken.
    pub steps: usize,
    /// (query, candidate) cells kept out of the negatives as judged relevant.
    #[serde(default)]
    pub judged_negatives_masked: usize,
}

impl Recipe {
    /// The recipe in `model_dir`'s training card; `None` when the directory has no card (a
    /// model attune did not train).
    pub fn read(model_dir: &Path) -> Result<Option<Self>> {
        let path = model_dir.join(files::CARD_JSON);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TrainError::io(&path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TrainError::malformed(&path, e.line(), e.to_string()))
    }
}

/// Files the trainer adds to the tuned model directory.
pub mod files {
    /// The training card, machine-readable.
    pub const CARD_JSON: &str = "training_card.json";
    /// The training card as a model-card README.
    pub const CARD_MARKDOWN: &str = "README.md";
    /// The training log (one JSON object per line).
    pub const LOG: &str = "training_log.jsonl";
}

/// Encoder settings at the training length (every text of a batch fits one forward pass).
fn training_encoder_settings(settings: &TrainSettings) -> EncoderSettings {
    EncoderSettings {
        max_seq_length: settings.max_seq_length,
        max_tokens_per_batch: EncoderSettings::default()
            .max_tokens_per_batch
            .max(settings.max_seq_length.unwrap_or(0)),
        ..Default::default()
    }
}

/// The guide filter of `settings`, its model loaded for inference at the training length.
fn load_guide(inputs: &TrainInputs<'_>, settings: &TrainSettings) -> Result<Option<GuideFilter>> {
    let Some(guide) = &settings.targets.guide else {
        return Ok(None);
    };
    if !(guide.margin.is_finite() && guide.margin >= 0.0) {
        return Err(TrainError::InvalidSetting {
            name: "guide-margin",
            problem: format!("{}: must be a number ≥ 0", guide.margin),
        });
    }
    let opened;
    let dir = match &guide.model {
        Some(path) => {
            opened = ModelDir::open(path)?;
            &opened
        }
        None => inputs.model,
    };
    let encoder = Encoder::load(dir, inputs.device, training_encoder_settings(settings))?;
    Ok(Some(GuideFilter::new(encoder, guide.margin)))
}

/// The loss, in words, for the training card.
fn loss_description(settings: &TrainSettings) -> String {
    let targets = &settings.targets;
    let mut text = "InfoNCE (multiple negatives ranking), cosine similarity / temperature, \
                    in-batch and hard negatives"
        .to_string();
    if targets.mask_judged_positives {
        text.push_str("; candidates judged relevant to a query are never its negatives");
    }
    if let Some(guide) = &targets.guide {
        text.push_str(&format!(
            "; candidates the guide model ({}) scores above the positive minus {} are masked \
             (GISTEmbed)",
            guide
                .model
                .as_ref()
                .map_or("the base model".to_string(), |m| m.display().to_string()),
            guide.margin
        ));
    }
    if targets.grade_weighting != crate::targets::GradeWeighting::Uniform {
        text.push_str(&format!(
            "; pairs weighted by grade ({})",
            targets.grade_weighting
        ));
    }
    if settings.positives_per_query > 1 {
        text.push_str(&format!(
            "; batches bring up to {} pairs of a query together",
            settings.positives_per_query
        ));
    }
    text
}

fn training_card(
    inputs: &TrainInputs<'_>,
    settings: &TrainSettings,
    report: &CheckReport,
    summary: &TrainSummary,
    plan: &Plan,
    written_step: usize,
) -> Result<serde_json::Value> {
    let finished = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(serde_json::json!({
        "attune_version": env!("CARGO_PKG_VERSION"),
        "base_model": {
            "path": inputs.model.root.display().to_string(),
            "fingerprint": inputs.model.fingerprint()?,
        },
        "data": {
            "source": inputs.data.source.display().to_string(),
            "pairs_loaded": inputs.data.pairs.len(),
            "sources": pair_sources(inputs.data),
            "reference_queries": reference_queries_of(inputs.data, inputs.validation),
            "pairs_trained": summary.pairs,
            "pairs_dropped_as_leakage": summary.dropped_leaked,
            "queries": report.counts.queries,
            "positives": report.counts.positives,
            "negatives": report.counts.negatives,
            "rows_skipped": inputs.data.skipped.len(),
            "texts_longer_than_max_seq_length": report.long_text_share,
            "findings": report.findings.iter().map(|f| serde_json::json!({
                "code": f.code, "severity": format!("{:?}", f.severity).to_lowercase(),
                "count": f.count, "message": f.message,
            })).collect::<Vec<_>>(),
            "validation": inputs.validation.map(|v| serde_json::json!({
                "source": v.root.display().to_string(), "split": v.split,
                "queries": v.queries.len(), "documents": v.corpus.len(),
            })),
        },
        "hyperparameters": settings.to_json(),
        "loss": loss_description(settings),
        "judged_negatives_masked": summary.judged_negatives_masked,
        "guide_negatives_masked": summary.guide_negatives_masked,
        "queries_with_several_positives": summary.queries_with_several_positives,
        "optimizer": "AdamW, no decay on biases and LayerNorm weights; linear warmup then linear decay; global gradient-norm clipping",
        "steps": summary.steps,
        "warmup_steps": plan.warmup_steps,
        "written_step": written_step,
        "examples": summary.examples,
        "trainable_parameters": summary.trainable_parameters,
        "method": summary.method,
        "writes": summary.method.writes(),
        "training_seconds": summary.training_s,
        "examples_per_second": summary.examples_per_s,
        "final_loss": summary.final_loss,
        "metrics_before": summary.before,
        "metrics_after": summary.after,
        "best": summary.best,
        "device": attune_model::device::device_name(inputs.device),
        "finished_unix_s": finished,
    }))
}

/// Most training queries a card lists for the server's drift reference.
pub const CARD_REFERENCE_QUERIES: usize = 2_000;

/// Pairs per source: the `source` a pair names, else the data path.
fn pair_sources(data: &TrainingData) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let path = data.source.display().to_string();
    for pair in &data.pairs {
        *counts
            .entry(pair.source.clone().unwrap_or_else(|| path.clone()))
            .or_default() += 1;
    }
    counts
}

/// The distinct queries the model was trained on, then those it was validated on, in
/// first-seen order, at most [`CARD_REFERENCE_QUERIES`].
fn reference_queries_of<'a>(
    data: &'a TrainingData,
    validation: Option<&'a BeirDataset>,
) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    let validated = validation.into_iter().flat_map(|v| &v.queries);
    data.pairs
        .iter()
        .map(|p| p.query.as_str())
        .chain(validated.map(|q| q.text.as_str()))
        .filter(|q| seen.insert(*q))
        .take(CARD_REFERENCE_QUERIES)
        .collect()
}

/// The training (and validation) queries listed in `model_dir`'s training card
/// (`data.reference_queries`), the reference the server measures query drift against; `None`
/// without a card or the list.
pub fn reference_queries(model_dir: &Path) -> Result<Option<Vec<String>>> {
    let path = model_dir.join(files::CARD_JSON);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io(&path, e)),
    };
    let card: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::malformed(&path, e.line(), e.to_string()))?;
    Ok(card["data"]["reference_queries"].as_array().map(|queries| {
        queries
            .iter()
            .filter_map(|q| q.as_str().map(str::to_string))
            .collect()
    }))
}

fn card_markdown(card: &serde_json::Value) -> String {
    let mut md = String::new();
    md.push_str("---\ntags:\n- sentence-transformers\n- sentence-similarity\n- attune\n---\n\n");
    md.push_str("# Tuned with attune\n\n");
    md.push_str(&format!(
        "Fine-tuned from `{}` on `{}` ({} pairs) with attune {}.\n\n",
        card["base_model"]["path"].as_str().unwrap_or("?"),
        card["data"]["source"].as_str().unwrap_or("?"),
        card["data"]["pairs_trained"],
        card["attune_version"].as_str().unwrap_or("?"),
    ));
    if let Some(sources) = card["data"]["sources"].as_object() {
        let named: Vec<String> = sources
            .iter()
            .map(|(source, pairs)| format!("`{source}` ({pairs} pairs)"))
            .collect();
        md.push_str(&format!("Pairs by source: {}.\n\n", named.join(", ")));
    }
    md.push_str(&format!(
        "{} steps ({} warmup) in {:.0} s, {:.2} examples/s on {}; final loss {}.\n\n",
        card["steps"],
        card["warmup_steps"],
        card["training_seconds"].as_f64().unwrap_or(0.0),
        card["examples_per_second"].as_f64().unwrap_or(0.0),
        card["device"].as_str().unwrap_or("?"),
        card["final_loss"]
            .as_f64()
            .map_or("-".to_string(), |l| format!("{l:.4}")),
    ));
    if let Some(findings) = card["data"]["findings"].as_array() {
        if !findings.is_empty() {
            md.push_str("## Data check\n\n");
            for f in findings {
                md.push_str(&format!(
                    "- {}: {}\n",
                    f["severity"].as_str().unwrap_or("?"),
                    f["message"].as_str().unwrap_or("?")
                ));
            }
            md.push('\n');
        }
    }
    if let (Some(before), Some(after)) = (
        card["metrics_before"].as_object(),
        card["metrics_after"].as_object(),
    ) {
        let validation = &card["data"]["validation"];
        md.push_str(&format!(
            "## Validation\n\n`{}`, split `{}` ({} queries, {} documents); the written weights are step {}'s.\n\n",
            validation["source"].as_str().unwrap_or("?"),
            validation["split"].as_str().unwrap_or("?"),
            validation["queries"],
            validation["documents"],
            card["written_step"],
        ));
        md.push_str("| metric | base | tuned | Δ |\n|---|---:|---:|---:|\n");
        for (name, b) in before {
            if let (Some(b), Some(a)) = (b.as_f64(), after.get(name).and_then(|v| v.as_f64())) {
                md.push_str(&format!("| {name} | {b:.4} | {a:.4} | {:+.4} |\n", a - b));
            }
        }
        md.push('\n');
    }
    if let Some(tokens) = card["hyperparameters"]["prompt"]["tokens"].as_u64() {
        md.push_str(&format!(
            "## Soft prompt: only attune applies it\n\nThis model was prompt-tuned: its \
             transformer weights are the base model's, and a learned soft prompt of {tokens} \
             vectors (`{}`) goes after every text's first token. attune's encoder, index and \
             server apply it. **sentence-transformers (and other loaders) do not read that \
             file: they load this directory as the untuned base model.** It cannot be \
             interpolated with its base.\n\n",
            attune_model::soft_prompt::FILE
        ));
    }
    md.push_str("## Hyperparameters\n\n```json\n");
    md.push_str(&serde_json::to_string_pretty(&card["hyperparameters"]).expect("JSON serializes"));
    md.push_str("\n```\n\nThe full record is in `training_card.json`; the step log in `training_log.jsonl`.\n");
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Location;
    use std::sync::Arc;

    fn pairs(n: usize) -> Vec<TrainingPair> {
        let path = Arc::new(PathBuf::from("p.jsonl"));
        (0..n)
            .map(|i| TrainingPair {
                source: None,
                query: format!("q{i}"),
                positive: format!("d{i}"),
                negatives: Vec::new(),
                grade: 1,
                weight: 1.0,
                location: Location {
                    path: path.clone(),
                    line: i + 1,
                },
            })
            .collect()
    }

    #[test]
    fn plan_counts_steps_and_warmup_like_hugging_face() {
        // 919 pairs, batch 32, 3 epochs: 29 steps per epoch, 87 in all, ceil(8.7) = 9 warmup.
        let settings = TrainSettings {
            epochs: 3,
            ..Default::default()
        };
        let plan = Plan::new(&pairs(919), &settings);
        assert_eq!(plan.total_steps, 87);
        assert_eq!(plan.warmup_steps, 9);
        let (batch, epoch) = plan.batch(28);
        assert_eq!(batch.len(), 919 - 28 * 32);
        assert!((epoch - 1.0).abs() < 1e-12);
        let (_, epoch) = plan.batch(29);
        assert!((epoch - (1.0 + 1.0 / 29.0)).abs() < 1e-12);
    }

    #[test]
    fn max_steps_cycles_through_epochs() {
        let settings = TrainSettings {
            max_steps: Some(7),
            batch_size: 4,
            ..Default::default()
        };
        let plan = Plan::new(&pairs(10), &settings);
        assert_eq!(plan.total_steps, 7);
        assert_eq!(plan.epochs.len(), 3);
        assert_eq!(plan.batch(6).0.len(), 4);
        assert_eq!(plan.warmup_steps, 1);
    }

    #[test]
    fn invalid_settings_name_the_flag() {
        for (settings, name) in [
            (
                TrainSettings {
                    batch_size: 1,
                    ..Default::default()
                },
                "batch-size",
            ),
            (
                TrainSettings {
                    warmup_ratio: 1.0,
                    ..Default::default()
                },
                "warmup-ratio",
            ),
            (
                TrainSettings {
                    eval_every: Some(0),
                    ..Default::default()
                },
                "eval-every",
            ),
            (
                TrainSettings {
                    precision: Precision::Int8,
                    ..Default::default()
                },
                "precision",
            ),
        ] {
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{name}`")), "{err}");
        }
    }

    #[test]
    fn the_data_fingerprint_sees_every_text() {
        let a = pairs(3);
        let mut b = pairs(3);
        b[2].negatives.push("n".into());
        let mut c = pairs(3);
        c[1].positive.push('!');
        let fa = data_fingerprint(&a);
        assert_ne!(fa, data_fingerprint(&b));
        assert_ne!(fa, data_fingerprint(&c));
        assert_eq!(fa, data_fingerprint(&pairs(3)));
    }
}
