//! `attune pipeline --config pipeline.toml`: from data to a promoted model in one command.
//!
//! Stages, in order: `check` (training data) → `mine` (hard negatives, when `[mine]` is given)
//! → `train` → `eval` (tuned vs base with the gate) → `index` (re-embed the corpus with base and
//! tuned into a new generation and switch to it; skipped when the gate failed) → `report`
//! (written under the work directory and published in the store for `attune serve`).
//!
//! Each finished stage leaves a marker, `WORK/stages/<stage>.json`, holding a key derived from
//! its settings and from the key of the stage before it. A rerun skips every stage whose marker
//! holds the key it would compute now, and runs the rest: after a crash it resumes after the
//! last finished stage (training resumes from its newest checkpoint), and after a change of
//! settings it reruns from the first stage they affect. `--from STAGE` reruns from a stage.
//!
//! Since the gate is decided before the re-index, a failed gate leaves the store exactly as it
//! was: the serving generation keeps serving, and the command exits with status 3 saying why.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use attune_app::{IndexInputs, IndexJob, IndexSettings, SpaceModel};
use attune_index::Store;
use attune_model::DeviceRequest;
use clap::{Args, FromArgMatches, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::GateFailed;

/// Arguments of `attune pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline's settings (TOML; relative paths in it are relative to this file).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Rerun from this stage even when it finished before (later stages rerun too).
    #[arg(long, value_enum)]
    pub from: Option<Stage>,
}

/// The stages of a pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Check the training data (fatal problems stop the pipeline).
    Check,
    /// Mine hard negatives with the base model.
    Mine,
    /// Fine-tune the base model.
    Train,
    /// Evaluate tuned vs base on the test split (and the general set) and apply the gate.
    Eval,
    /// Re-index the corpus into a new generation and switch to it (only after a passed gate).
    Index,
    /// Write and publish the report.
    Report,
}

impl Stage {
    const ALL: [Stage; 6] = [
        Stage::Check,
        Stage::Mine,
        Stage::Train,
        Stage::Eval,
        Stage::Index,
        Stage::Report,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Check => "check",
            Stage::Mine => "mine",
            Stage::Train => "train",
            Stage::Eval => "eval",
            Stage::Index => "index",
            Stage::Report => "report",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `pipeline.toml`. Unknown keys are errors; every setting not given takes the default of the
/// command that runs the stage (`attune data check`, `mine`, `train`, `eval`, `index build`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Directory for stage outputs and markers.
    pub work_dir: PathBuf,
    /// The base model directory (the model to tune and to compare with).
    pub base_model: PathBuf,
    /// Device for every stage: auto (default), cpu, cuda, cuda:N.
    #[serde(default)]
    pub device: Option<String>,
    /// Training and test data.
    pub data: DataConfig,
    /// Hard-negative mining; the stage runs only when this table is present.
    #[serde(default)]
    pub mine: Option<MineConfig>,
    /// Fine-tuning.
    #[serde(default)]
    pub train: TrainConfig,
    /// The promotion gate.
    #[serde(default)]
    pub gate: GateConfig,
    /// Where the corpus is indexed.
    pub index: IndexConfig,
}

/// `[data]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A BEIR directory: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.
    pub path: PathBuf,
    /// Qrels split trained on. Default `train`.
    #[serde(default = "default_train_split")]
    pub train_split: String,
    /// Qrels split evaluated on. Default `test`.
    #[serde(default = "default_test_split")]
    pub test_split: String,
    /// The corpus to index (JSONL or BEIR directory). Default: `path`.
    #[serde(default)]
    pub corpus: Option<PathBuf>,
    /// Accept training queries that also appear in the test split (reported as a warning by
    /// the check stage instead of stopping the pipeline). Default false.
    #[serde(default)]
    pub allow_leakage: bool,
    /// Instead of the qrels pairs, train on this pairs JSONL file
    /// (`{"query", "positive", "negatives"?}`); mining then mines for it.
    #[serde(default)]
    pub train_pairs: Option<PathBuf>,
}

fn default_train_split() -> String {
    "train".into()
}

fn default_test_split() -> String {
    "test".into()
}

/// `[mine]`: see `attune mine --help`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MineConfig {
    /// Rank window `FROM:TO` to take negatives from.
    pub range: Option<String>,
    /// Negatives per pair.
    pub per_query: Option<usize>,
    /// Skip candidates scoring above `positive − margin`.
    pub margin: Option<f64>,
}

/// `[train]`: see `attune train --help`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: Option<usize>,
    pub max_steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub mini_batch: Option<usize>,
    pub lr: Option<f64>,
    pub warmup_ratio: Option<f64>,
    pub weight_decay: Option<f64>,
    pub temperature: Option<f64>,
    pub symmetric: Option<bool>,
    pub max_seq_len: Option<usize>,
    pub seed: Option<u64>,
    pub lora_rank: Option<usize>,
    pub lora_alpha: Option<f64>,
    pub lora_targets: Option<String>,
    /// Checkpoint every N steps (a crashed train stage resumes from the newest).
    pub checkpoint_every: Option<usize>,
    /// Dtype of the matrix products: auto (bf16 on a GPU, f32 on the CPU), f32, bf16, f16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

/// `[gate]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Require the tuned model's nDCG@10 on the test split to beat the base's. Default true.
    #[serde(default = "default_true")]
    pub require_gain: bool,
    /// A general-capability BEIR set whose nDCG@10 may not drop by more than
    /// `max_general_drop`. Default: none (only the domain gain is checked).
    #[serde(default)]
    pub general_data: Option<PathBuf>,
    /// Qrels split of the general set. Default `test`.
    #[serde(default = "default_test_split")]
    pub general_split: String,
    /// Largest allowed nDCG@10 drop on the general set (absolute). Default: `attune eval`'s.
    #[serde(default)]
    pub max_general_drop: Option<f64>,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            require_gain: true,
            general_data: None,
            general_split: default_test_split(),
            max_general_drop: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// `[index]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Store directory (created if missing).
    pub store: PathBuf,
    /// Collection name.
    pub collection: String,
    /// Space of the base model. Default `base`.
    #[serde(default = "default_base_space")]
    pub base_space: String,
    /// Space of the tuned model. Default `tuned`.
    #[serde(default = "default_tuned_space")]
    pub tuned_space: String,
    /// `[index.build]`: the settings of `attune index build` (batch size, HNSW parameters,
    /// truncation length), under the same names as its flags. Left out of the stage key when
    /// default, so work directories of earlier versions stay valid.
    #[serde(default, skip_serializing_if = "is_default")]
    pub build: IndexSettings,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_base_space() -> String {
    "base".into()
}

fn default_tuned_space() -> String {
    "tuned".into()
}

impl PipelineConfig {
    /// Reads `path`; errors name the file and the key.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: PipelineConfig =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve(&base);
        config.validate(path)?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let at = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        at(&mut self.work_dir);
        at(&mut self.base_model);
        at(&mut self.data.path);
        at(&mut self.index.store);
        for p in [
            self.data.corpus.as_mut(),
            self.data.train_pairs.as_mut(),
            self.gate.general_data.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            at(p);
        }
    }

    fn validate(&self, path: &Path) -> Result<()> {
        attune_index::store::validate_name(&self.index.collection)
            .with_context(|| format!("{}: index.collection", path.display()))?;
        for (key, name) in [
            ("index.base_space", &self.index.base_space),
            ("index.tuned_space", &self.index.tuned_space),
        ] {
            attune_index::store::validate_name(name)
                .with_context(|| format!("{}: {key}", path.display()))?;
        }
        if self.index.base_space == self.index.tuned_space {
            bail!(
                "{}: index.base_space and index.tuned_space must differ",
                path.display()
            );
        }
        if !self.gate.require_gain && self.gate.general_data.is_none() {
            bail!(
                "{}: the gate checks nothing (gate.require_gain = false and no gate.general_data)",
                path.display()
            );
        }
        Ok(())
    }

    fn stages(&self) -> Vec<Stage> {
        Stage::ALL
            .into_iter()
            .filter(|s| *s != Stage::Mine || self.mine.is_some())
            .collect()
    }

    /// The settings a stage depends on (its key also chains the key of the stage before).
    fn stage_settings(&self, stage: Stage) -> Value {
        match stage {
            Stage::Check => json!({"base": self.base_model, "data": self.data}),
            Stage::Mine => json!(self.mine),
            Stage::Train => json!({"train": self.train, "device": self.device}),
            Stage::Eval => json!(self.gate),
            Stage::Index => json!({"index": self.index, "corpus": self.corpus()}),
            Stage::Report => json!(null),
        }
    }

    fn corpus(&self) -> &Path {
        self.data.corpus.as_deref().unwrap_or(&self.data.path)
    }

    fn device(&self) -> &str {
        self.device.as_deref().unwrap_or("auto")
    }
}

/// Where a pipeline keeps its outputs.
struct Work {
    dir: PathBuf,
}

impl Work {
    fn marker(&self, stage: Stage) -> PathBuf {
        self.dir.join("stages").join(format!("{stage}.json"))
    }
    fn mined(&self) -> PathBuf {
        self.dir.join("mined.jsonl")
    }
    fn tuned(&self) -> PathBuf {
        self.dir.join("tuned")
    }
    fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }
    fn eval(&self) -> PathBuf {
        self.dir.join("eval")
    }
    fn report(&self) -> PathBuf {
        self.dir.join("report")
    }
}

/// A finished stage's marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    stage: String,
    key: String,
    seconds: f64,
    finished_unix: u64,
    /// What the stage found (the gate's verdict, the generation switched to, …).
    outcome: Value,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a command's clap `Args` from an argument list, so that stages get exactly the
/// defaults and checks of the command line.
fn command_args<A: Args + FromArgMatches>(name: &'static str, argv: Vec<OsString>) -> Result<A> {
    let command = A::augment_args(clap::Command::new(name).no_binary_name(true));
    let matches = command
        .try_get_matches_from(argv)
        .map_err(|e| anyhow::anyhow!("stage {name}: {e}"))?;
    Ok(A::from_arg_matches(&matches)?)
}

/// Builds an argument list: flags with values, skipping unset ones.
#[derive(Default)]
struct Argv(Vec<OsString>);

impl Argv {
    fn arg(mut self, flag: &str, value: impl Into<OsString>) -> Self {
        self.0.push(flag.into());
        self.0.push(value.into());
        self
    }
    fn opt<T: ToString>(self, flag: &str, value: Option<T>) -> Self {
        match value {
            Some(v) => self.arg(flag, v.to_string()),
            None => self,
        }
    }
    fn flag(mut self, flag: &str, on: bool) -> Self {
        if on {
            self.0.push(flag.into());
        }
        self
    }
}

/// Every stage's key, chained: a stage's key covers its settings and every earlier stage's.
fn stage_keys(config: &PipelineConfig) -> Vec<(Stage, String)> {
    let mut previous = String::new();
    config
        .stages()
        .into_iter()
        .map(|stage| {
            let mut hasher = Sha256::new();
            hasher.update(previous.as_bytes());
            hasher.update(stage.name().as_bytes());
            hasher.update(config.stage_settings(stage).to_string().as_bytes());
            let key: String = hasher
                .finalize()
                .iter()
                .take(12)
                .map(|b| format!("{b:02x}"))
                .collect();
            previous = key.clone();
            (stage, key)
        })
        .collect()
}

fn read_marker(path: &Path) -> Option<Marker> {
    let text = fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

pub fn run(args: PipelineArgs) -> Result<()> {
    let config = PipelineConfig::read(&args.config)?;
    let work = Work {
        dir: config.work_dir.clone(),
    };
    fs::create_dir_all(&work.dir).with_context(|| format!("creating {}", work.dir.display()))?;
    let keys = stage_keys(&config);
    let started = Instant::now();
    let mut outcomes: Vec<(Stage, Marker, bool)> = Vec::new();
    let mut rerun_rest = false;
    let mut gate_failure: Option<String> = None;
    for (stage, key) in &keys {
        let stage = *stage;
        let path = work.marker(stage);
        if args.from.is_some_and(|from| stage >= from) {
            rerun_rest = true;
        }
        if !rerun_rest {
            if let Some(marker) = read_marker(&path).filter(|m| m.key == *key) {
                eprintln!(
                    "pipeline: {stage}: done before ({:.1} s), skipped",
                    marker.seconds
                );
                if stage == Stage::Eval && !gate_passed(&marker.outcome) {
                    gate_failure = Some(gate_message(&marker.outcome));
                }
                outcomes.push((stage, marker, true));
                continue;
            }
        }
        // From here on every stage runs: later markers describe outputs about to change.
        rerun_rest = true;
        let _ = fs::remove_file(&path);
        if stage == Stage::Index {
            if let Some(reasons) = &gate_failure {
                eprintln!("pipeline: index: skipped, the gate failed ({reasons})");
                continue;
            }
        }
        eprintln!("pipeline: {stage}: running");
        let stage_started = Instant::now();
        let outcome = match stage {
            Stage::Check => run_check(&config)?,
            Stage::Mine => run_mine(&config, &work)?,
            Stage::Train => run_train(&config, &work)?,
            Stage::Eval => {
                let outcome = run_eval(&config, &work)?;
                if !gate_passed(&outcome) {
                    gate_failure = Some(gate_message(&outcome));
                }
                outcome
            }
            Stage::Index => run_index(&config, &work)?,
            Stage::Report => {
                let report = build_report(&config, &work, &outcomes, gate_failure.as_deref())?;
                publish_report(&config, &work, &report)?;
                json!({"promoted": report["promoted"], "verdict": report["verdict"]})
            }
        };
        let marker = Marker {
            stage: stage.name().into(),
            key: key.clone(),
            seconds: stage_started.elapsed().as_secs_f64(),
            finished_unix: now_unix(),
            outcome,
        };
        write_json(&path, &marker)?;
        eprintln!("pipeline: {stage}: done in {:.1} s", marker.seconds);
        outcomes.push((stage, marker, false));
    }
    let report_path = work.report().join("pipeline.md");
    eprintln!(
        "pipeline: finished in {:.1} s; report: {}",
        started.elapsed().as_secs_f64(),
        report_path.display()
    );
    if let Ok(md) = fs::read_to_string(&report_path) {
        print!("{md}");
    }
    match gate_failure {
        Some(reasons) => {
            let serving = current_generation(&config)?;
            Err(GateFailed(format!(
                "gate failed, the tuned model was not promoted: {reasons}; {}",
                match serving {
                    Some(g) => format!(
                        "generation {g} of collection {:?} keeps serving",
                        config.index.collection
                    ),
                    None => format!("collection {:?} was not built", config.index.collection),
                }
            ))
            .into())
        }
        None => Ok(()),
    }
}

fn gate_passed(outcome: &Value) -> bool {
    outcome["gate"]["passed"].as_bool().unwrap_or(false)
}

fn gate_message(outcome: &Value) -> String {
    let failed: Vec<&str> = outcome["gate"]["checks"]
        .as_array()
        .map(|checks| {
            checks
                .iter()
                .filter(|c| c["passed"] == json!(false))
                .filter_map(|c| c["message"].as_str())
                .collect()
        })
        .unwrap_or_default();
    if failed.is_empty() {
        "no gate verdict".into()
    } else {
        failed.join("; ")
    }
}

fn current_generation(config: &PipelineConfig) -> Result<Option<u64>> {
    if !config.index.store.exists() {
        return Ok(None);
    }
    let store = Store::open_or_create(&config.index.store)?;
    match store.manifest(&config.index.collection) {
        Ok(manifest) => Ok(manifest.current),
        Err(attune_index::IndexError::UnknownCollection { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn run_check(config: &PipelineConfig) -> Result<Value> {
    let (data, split) = training_data(config, None);
    let argv = Argv::default()
        .arg("--data", data)
        .arg("--split", split)
        .arg("--test-data", &config.data.path)
        .arg("--test-split", &config.data.test_split)
        .arg("--model", &config.base_model)
        .flag("--allow-leakage", config.data.allow_leakage)
        .opt("--max-seq-len", config.train.max_seq_len);
    let args: super::data::CheckArgs = command_args("check", argv.0)?;
    super::data::run(super::data::DataCommand::Check(args))?;
    Ok(json!({"data": config.data.path}))
}

/// The training data: mined pairs when mining ran, else the configured pairs or qrels split.
fn training_data(config: &PipelineConfig, work: Option<&Work>) -> (PathBuf, String) {
    if let (Some(work), Some(_)) = (work, &config.mine) {
        return (work.mined(), config.data.train_split.clone());
    }
    match &config.data.train_pairs {
        Some(pairs) => (pairs.clone(), config.data.train_split.clone()),
        None => (config.data.path.clone(), config.data.train_split.clone()),
    }
}

fn run_mine(config: &PipelineConfig, work: &Work) -> Result<Value> {
    let mine = config.mine.clone().unwrap_or_default();
    let (data, split) = training_data(config, None);
    let argv = Argv::default()
        .arg("--model", &config.base_model)
        .arg("--data", data)
        .arg("--split", split)
        .arg("--out", work.mined())
        .opt("--range", mine.range)
        .opt("--per-query", mine.per_query)
        .opt("--margin", mine.margin)
        .opt("--max-seq-len", config.train.max_seq_len)
        .arg("--device", config.device());
    let args: super::mine::MineArgs = command_args("mine", argv.0)?;
    super::mine::run(args)?;
    Ok(json!({"pairs": work.mined()}))
}

fn run_train(config: &PipelineConfig, work: &Work) -> Result<Value> {
    let (data, split) = training_data(config, Some(work));
    let t = &config.train;
    let argv = Argv::default()
        .arg("--model", &config.base_model)
        .arg("--data", data)
        .arg("--split", split)
        .arg("--out", work.tuned())
        .arg("--checkpoint-dir", work.checkpoints())
        .flag("--resume", true)
        .opt("--epochs", t.epochs)
        .opt("--max-steps", t.max_steps)
        .opt("--batch-size", t.batch_size)
        .opt("--mini-batch", t.mini_batch)
        .opt("--lr", t.lr)
        .opt("--warmup-ratio", t.warmup_ratio)
        .opt("--weight-decay", t.weight_decay)
        .opt("--temperature", t.temperature)
        .flag("--symmetric", t.symmetric.unwrap_or(false))
        .opt("--max-seq-len", t.max_seq_len)
        .opt("--seed", t.seed)
        .opt("--lora-rank", t.lora_rank)
        .opt("--lora-alpha", t.lora_alpha)
        .opt("--lora-targets", t.lora_targets.clone())
        .opt("--checkpoint-every", t.checkpoint_every)
        .opt("--precision", t.precision.clone())
        .arg("--device", config.device());
    let args: super::train::TrainArgs = command_args("train", argv.0)?;
    super::train::run(args)?;
    Ok(json!({"model": work.tuned()}))
}

fn run_eval(config: &PipelineConfig, work: &Work) -> Result<Value> {
    let gate = &config.gate;
    let argv = Argv::default()
        .arg("--model", work.tuned())
        .arg("--baseline", &config.base_model)
        .arg("--data", &config.data.path)
        .arg("--split", &config.data.test_split)
        .arg("--out", work.eval())
        .flag("--require-gain", gate.require_gain)
        .opt(
            "--general-data",
            gate.general_data.as_ref().map(|p| p.display()),
        )
        .arg("--general-split", &gate.general_split)
        .opt("--max-general-drop", gate.max_general_drop)
        // Evaluated at each model's own max_seq_length, as served: train.max_seq_len is a
        // training setting.
        .arg("--device", config.device());
    let args: super::eval::EvalArgs = command_args("eval", argv.0)?;
    match super::eval::run(args) {
        Ok(()) => {}
        // A failed gate is this stage's result, not a failure of the run.
        Err(e) if e.downcast_ref::<GateFailed>().is_some() => {}
        Err(e) => return Err(e),
    }
    let metrics_path = work.eval().join("metrics.json");
    let metrics: Value = serde_json::from_str(
        &fs::read_to_string(&metrics_path)
            .with_context(|| format!("reading {}", metrics_path.display()))?,
    )
    .with_context(|| format!("parsing {}", metrics_path.display()))?;
    Ok(json!({"gate": metrics["gate"]}))
}

fn run_index(config: &PipelineConfig, work: &Work) -> Result<Value> {
    let before = current_generation(config)?;
    let inputs = IndexInputs {
        store: config.index.store.clone(),
        collection: config.index.collection.clone(),
        corpus: config.corpus().to_path_buf(),
        spaces: vec![
            SpaceModel {
                space: config.index.base_space.clone(),
                model: config.base_model.clone(),
            },
            SpaceModel {
                space: config.index.tuned_space.clone(),
                model: work.tuned(),
            },
        ],
        device: config.device().parse::<DeviceRequest>()?.open()?,
    };
    let job = IndexJob::prepare(inputs, config.index.build.clone())?;
    super::index::report_corpus_findings(job.corpus());
    let report = job.run(&mut |_| {})?;
    eprintln!(
        "attune: collection {:?} generation {}: {} documents, embedded {:?}",
        report.collection, report.generation, report.documents, report.embedded
    );
    let after = current_generation(config)?;
    Ok(json!({"generation_before": before, "generation_after": after}))
}

/// Metric means of one model on one dataset of `metrics.json`.
fn dataset_summary(dataset: &Value) -> Value {
    let models = &dataset["models"];
    json!({
        "name": dataset["name"],
        "role": dataset["role"],
        "split": dataset["split"],
        "queries": dataset["queries"],
        "base": models["base"]["metrics"],
        "tuned": models["tuned"]["metrics"],
        "comparison": dataset["comparison"],
    })
}

fn build_report(
    config: &PipelineConfig,
    work: &Work,
    outcomes: &[(Stage, Marker, bool)],
    gate_failure: Option<&str>,
) -> Result<Value> {
    let metrics_path = work.eval().join("metrics.json");
    let metrics: Value = serde_json::from_str(
        &fs::read_to_string(&metrics_path)
            .with_context(|| format!("reading {}", metrics_path.display()))?,
    )?;
    let datasets = metrics["datasets"].as_array().cloned().unwrap_or_default();
    let role = |r: &str| {
        datasets
            .iter()
            .find(|d| d["role"] == r)
            .map(dataset_summary)
    };
    let index = outcomes
        .iter()
        .find(|(s, _, _)| *s == Stage::Index)
        .map(|(_, m, _)| m.outcome.clone());
    let serving = current_generation(config)?;
    let promoted = gate_failure.is_none() && index.is_some();
    let verdict = match gate_failure {
        None => format!(
            "promoted: generation {} of collection {:?} serves the tuned model in space {:?} beside the base in {:?}",
            serving.map_or("?".into(), |g| g.to_string()),
            config.index.collection,
            config.index.tuned_space,
            config.index.base_space
        ),
        Some(reasons) => format!(
            "not promoted: {reasons}; {}",
            match serving {
                Some(g) => format!("generation {g} keeps serving"),
                None => "the collection was not built".into(),
            }
        ),
    };
    let stages: Vec<Value> = outcomes
        .iter()
        .map(|(stage, marker, reused)| {
            json!({"stage": stage, "seconds": marker.seconds, "reused": reused})
        })
        .collect();
    Ok(json!({
        "collection": config.index.collection,
        "base_model": config.base_model,
        "tuned_model": work.tuned(),
        "data": config.data.path,
        "base_space": config.index.base_space,
        "tuned_space": config.index.tuned_space,
        "domain": role("domain"),
        "general": role("general"),
        "gate": metrics["gate"],
        "promoted": promoted,
        "serving_generation": serving,
        "index": index,
        "verdict": verdict,
        "stages": stages,
        "finished_unix": now_unix(),
    }))
}

fn metric(summary: &Value, model: &str, name: &str) -> String {
    summary[model][name]
        .as_f64()
        .map_or("–".into(), |v| format!("{v:.4}"))
}

/// `pipeline.md`: the verdict and base vs tuned on each dataset.
fn report_markdown(report: &Value) -> String {
    let mut md = format!(
        "# Pipeline report: collection `{}`\n\n**{}**\n\n",
        report["collection"].as_str().unwrap_or_default(),
        report["verdict"].as_str().unwrap_or_default()
    );
    for role in ["domain", "general"] {
        let summary = &report[role];
        if summary.is_null() {
            continue;
        }
        md.push_str(&format!(
            "## {} set: {} (split {}, {} queries)\n\n| metric | base | tuned |\n|---|---|---|\n",
            role,
            summary["name"].as_str().unwrap_or_default(),
            summary["split"].as_str().unwrap_or_default(),
            summary["queries"]
        ));
        for name in ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"] {
            md.push_str(&format!(
                "| {name} | {} | {} |\n",
                metric(summary, "base", name),
                metric(summary, "tuned", name)
            ));
        }
        let c = &summary["comparison"];
        if let Some(delta) = c["mean_delta"].as_f64() {
            md.push_str(&format!(
                "\nnDCG@10 delta {delta:+.4} (95% CI {:+.4}…{:+.4}, p = {:.4}; wins/ties/losses {}/{}/{})\n",
                c["ci95"][0].as_f64().unwrap_or(f64::NAN),
                c["ci95"][1].as_f64().unwrap_or(f64::NAN),
                c["p_value"].as_f64().unwrap_or(f64::NAN),
                c["wins"],
                c["ties"],
                c["losses"]
            ));
        }
        md.push('\n');
    }
    md.push_str("## Gate\n\n");
    for check in report["gate"]["checks"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "- {} {}\n",
            if check["passed"] == json!(true) {
                "PASS"
            } else {
                "FAIL"
            },
            check["message"].as_str().unwrap_or_default()
        ));
    }
    md.push_str("\n## Stages\n\n| stage | seconds | |\n|---|---|---|\n");
    for stage in report["stages"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {:.1} | {} |\n",
            stage["stage"].as_str().unwrap_or_default(),
            stage["seconds"].as_f64().unwrap_or(0.0),
            if stage["reused"] == json!(true) {
                "done before"
            } else {
                ""
            }
        ));
    }
    md
}

/// Writes the report under the work directory and publishes it, with the evaluation's files,
/// as the collection's latest report.
fn publish_report(config: &PipelineConfig, work: &Work, report: &Value) -> Result<()> {
    let dir = work.report();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let markdown = report_markdown(report);
    write_json(&dir.join("pipeline.json"), report)?;
    fs::write(dir.join("pipeline.md"), &markdown)
        .with_context(|| format!("writing {}", dir.join("pipeline.md").display()))?;
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("pipeline.json".into(), serde_json::to_vec_pretty(report)?),
        ("pipeline.md".into(), markdown.into_bytes()),
    ];
    for name in ["report.html", "report.md", "metrics.json", "per_query.csv"] {
        let path = work.eval().join(name);
        let body = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        files.push((name.into(), body));
    }
    let store = Store::open_or_create(&config.index.store)?;
    let borrowed: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    store.publish_report(&config.index.collection, &borrowed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<PipelineConfig> {
        let dir = tempfile::tempdir().unwrap();
        config_in(dir.path(), text)
    }

    /// Reads `text` as `dir/pipeline.toml` (relative paths resolve against `dir`).
    fn config_in(dir: &Path, text: &str) -> Result<PipelineConfig> {
        let path = dir.join("pipeline.toml");
        fs::write(&path, text).unwrap();
        PipelineConfig::read(&path)
    }

    const MINIMAL: &str = "work_dir = \"work\"\nbase_model = \"/models/base\"\n[data]\npath = \"data\"\n[index]\nstore = \"store\"\ncollection = \"shop\"\n";

    #[test]
    fn relative_paths_are_relative_to_the_file_and_defaults_apply() {
        let c = config(MINIMAL).unwrap();
        assert!(c.work_dir.is_absolute() && c.work_dir.ends_with("work"));
        assert_eq!(c.base_model, PathBuf::from("/models/base"));
        assert_eq!(c.data.train_split, "train");
        assert_eq!(c.data.test_split, "test");
        assert_eq!(c.index.base_space, "base");
        assert!(c.gate.require_gain);
        assert_eq!(
            c.stages(),
            vec![
                Stage::Check,
                Stage::Train,
                Stage::Eval,
                Stage::Index,
                Stage::Report
            ]
        );
        let mined = config(&format!("{MINIMAL}[mine]\nper_query = 3\n")).unwrap();
        assert_eq!(mined.stages().len(), 6);
    }

    #[test]
    fn unknown_keys_and_bad_names_are_errors_naming_them() {
        let err = format!(
            "{:#}",
            config(&format!("{MINIMAL}[train]\nepoch = 3\n")).unwrap_err()
        );
        assert!(
            err.contains("epoch") && err.contains("pipeline.toml"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            config(&MINIMAL.replace("\"shop\"", "\"../x\"")).unwrap_err()
        );
        assert!(err.contains("index.collection"), "{err}");
        let err = format!(
            "{:#}",
            config(&format!("{MINIMAL}[gate]\nrequire_gain = false\n")).unwrap_err()
        );
        assert!(err.contains("checks nothing"), "{err}");
    }

    /// A value for `field` that differs from its default `default` (JSON): numbers are moved,
    /// booleans flipped, unset options set.
    fn other_value(field: &str, default: &Value) -> Value {
        match default {
            Value::Bool(b) => Value::Bool(!b),
            Value::Number(n) if n.is_u64() => json!(n.as_u64().unwrap() + 3),
            Value::Number(n) => json!(n.as_f64().unwrap() * 0.5 + 0.125),
            Value::Null => json!(24),
            other => panic!("field {field}: no probe value for {other}"),
        }
    }

    /// Walks every field of the settings struct `S` (the list comes from serializing its
    /// `Default`, not from a hand-kept list): the `pipeline.toml` key under `table` and the
    /// command-line flag of the same name (`--` + the key with `-` for `_`) set the same field
    /// to the same value, and to a value other than the default.
    fn toml_keys_and_flags_set_the_same_fields<S>(
        table: &str,
        from_config: impl Fn(PipelineConfig) -> S,
    ) where
        S: Serialize + Default + PartialEq + fmt::Debug + Args + FromArgMatches,
    {
        let defaults = serde_json::to_value(S::default()).unwrap();
        let fields = defaults.as_object().expect("settings serialize as a table");
        assert!(!fields.is_empty());
        for (field, default) in fields {
            let value = other_value(field, default);
            let toml_value = toml::Value::try_from(&value).unwrap();
            let from_toml = from_config(
                config(&format!("{MINIMAL}[{table}]\n{field} = {toml_value}\n"))
                    .unwrap_or_else(|e| panic!("[{table}] {field}: {e:#}")),
            );
            let flag = format!("--{}", field.replace('_', "-"));
            let plain = value
                .as_str()
                .map(str::to_string)
                .unwrap_or(value.to_string());
            let from_flags: S = command_args("settings", vec![flag.clone().into(), plain.into()])
                .unwrap_or_else(|e| panic!("{flag}: {e:#}"));
            assert_eq!(from_toml, from_flags, "[{table}] {field} vs {flag}");
            assert_ne!(from_toml, S::default(), "[{table}] {field} changed nothing");
            assert_eq!(
                serde_json::to_value(&from_flags).unwrap()[field],
                value,
                "{flag} set another field"
            );
        }
    }

    #[test]
    fn index_settings_are_one_declaration_for_the_toml_and_the_flags() {
        toml_keys_and_flags_set_the_same_fields("index.build", |c| c.index.build);
    }

    #[test]
    fn a_changed_setting_changes_its_stage_key_and_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = config_in(dir.path(), MINIMAL).unwrap();
        let b = config_in(dir.path(), &format!("{MINIMAL}[train]\nepochs = 2\n")).unwrap();
        let (ka, kb) = (stage_keys(&a), stage_keys(&b));
        let changed: Vec<bool> = ka.iter().zip(&kb).map(|(x, y)| x.1 != y.1).collect();
        // check unchanged; train, eval, index, report changed.
        assert_eq!(changed, vec![false, true, true, true, true]);
        assert_eq!(stage_keys(&a), ka, "keys are deterministic");
    }

    #[test]
    fn stage_arguments_parse_with_the_commands_defaults() {
        let args: super::super::train::TrainArgs = command_args(
            "train",
            Argv::default()
                .arg("--model", "m")
                .arg("--data", "d")
                .arg("--out", "o")
                .opt("--epochs", Some(2))
                .opt::<usize>("--batch-size", None)
                .0,
        )
        .unwrap();
        assert_eq!(args.epochs, 2);
        assert_eq!(
            args.batch_size,
            attune_trainer::train::TrainSettings::default().batch_size
        );
        let err = command_args::<super::super::train::TrainArgs>(
            "train",
            Argv::default().arg("--model", "m").0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("stage train"), "{err}");
    }
}
