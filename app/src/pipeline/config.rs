//! `pipeline.toml`: what a pipeline run is wired with and the settings of each stage, each
//! stage's section being that stage's settings struct (declared once, shared with its command).

use std::fmt;
use std::path::{Path, PathBuf};

use attune_index::store::validate_name;

use crate::feedback::ExportSettings;
use attune_model::DeviceRequest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::PipelineError;
use crate::index_job::IndexSettings;
use crate::mine_job::MineSettings;
use crate::train_job::TrainSettings;

/// The stages of a pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
    /// Every stage, in order.
    pub const ALL: [Stage; 6] = [
        Stage::Check,
        Stage::Mine,
        Stage::Train,
        Stage::Eval,
        Stage::Index,
        Stage::Report,
    ];

    /// The stage's name (its marker file's name).
    pub fn name(self) -> &'static str {
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

/// `pipeline.toml`. Unknown keys are errors; every setting not given takes its documented
/// default, the same as the command that runs the stage alone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Directory for stage outputs and markers.
    pub work_dir: PathBuf,
    /// The base model directory (the model to tune and to compare with).
    pub base_model: PathBuf,
    /// Device for every stage: auto (default), cpu, cuda, cuda:N.
    #[serde(default)]
    pub device: DeviceRequest,
    /// Training and test data.
    pub data: DataConfig,
    /// Hard-negative mining (`attune mine`'s settings); the stage runs only when this table is
    /// present.
    #[serde(default)]
    pub mine: Option<MineSettings>,
    /// Fine-tuning (`attune train`'s settings).
    #[serde(default)]
    pub train: TrainSettings,
    /// The promotion gate.
    #[serde(default)]
    pub gate: GateConfig,
    /// Where the corpus is indexed.
    pub index: IndexConfig,
    /// `[store]`: which backend holds the collection. Default: the embedded store in
    /// `[index] store`; `backend = "qdrant"` with `[store.qdrant] url = ...` puts it on Qdrant
    /// (`[index] store` then only names nothing the index stage writes).
    #[serde(default, skip_serializing_if = "is_default")]
    pub store: attune_index::StoreSettings,
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
    /// the check stage instead of stopping the pipeline; as `[train] leakage = "allow"`).
    /// Default false.
    #[serde(default)]
    pub allow_leakage: bool,
    /// Instead of the qrels pairs, train on this pairs JSONL file
    /// (`{"query", "positive", "negatives"?}`); mining then mines for it.
    #[serde(default)]
    pub train_pairs: Option<PathBuf>,
    /// Instead, train on what shoppers did: pairs exported from the feedback log of a
    /// collection of `[index] store` (`{ collection = "shop", since = "30d", min_events = 2 }`;
    /// the keys of `attune feedback export`). The export is part of the check stage, written to
    /// the work directory; the judged test split stays the evaluation. The log is held by a
    /// running server on that store: stop it, or export from the server
    /// (`attune feedback export --url`) and name the file in `train_pairs`.
    #[serde(default)]
    pub feedback: Option<ExportSettings>,
    /// With `feedback`: also train on the judged pairs of `train_split` (mixed, each pair naming
    /// its source in the training card). Default false.
    #[serde(default)]
    pub mix_judged: bool,
}

fn default_train_split() -> String {
    "train".into()
}

fn default_test_split() -> String {
    "test".into()
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
    /// Reads `path`; relative paths in it are relative to its directory. Errors name the file
    /// and the key.
    pub fn read(path: &Path) -> Result<Self, PipelineError> {
        let invalid = |message: String| PipelineError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the contents of `path` (see [`PipelineConfig::read`]).
    pub fn parse(path: &Path, text: &str) -> Result<Self, PipelineError> {
        let invalid = |message: String| PipelineError::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut config: PipelineConfig =
            toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve(&base);
        config.validate().map_err(invalid)?;
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

    fn validate(&self) -> Result<(), String> {
        validate_name(&self.index.collection).map_err(|e| format!("index.collection: {e}"))?;
        for (key, name) in [
            ("index.base_space", &self.index.base_space),
            ("index.tuned_space", &self.index.tuned_space),
        ] {
            validate_name(name).map_err(|e| format!("{key}: {e}"))?;
        }
        if self.index.base_space == self.index.tuned_space {
            return Err("index.base_space and index.tuned_space must differ".into());
        }
        if self.data.feedback.is_some() && self.data.train_pairs.is_some() {
            return Err(
                "data.feedback and data.train_pairs are two training sources; give one".into(),
            );
        }
        if self.data.mix_judged && self.data.feedback.is_none() {
            return Err("data.mix_judged mixes judged pairs into data.feedback; set it".into());
        }
        if let Some(feedback) = &self.data.feedback {
            if let Some(since) = &feedback.since {
                crate::feedback::parse_since(since, 0)
                    .map_err(|e| format!("data.feedback: {e}"))?;
            }
            if feedback.min_events == 0 {
                return Err("data.feedback.min_events: must be at least 1".into());
            }
        }
        if !self.gate.require_gain && self.gate.general_data.is_none() {
            return Err(
                "the gate checks nothing (gate.require_gain = false and no gate.general_data)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The stages this configuration runs (mining only with `[mine]`).
    pub fn stages(&self) -> Vec<Stage> {
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
            // Evaluated at the served Matryoshka dimension and precision, when the index sets
            // them (keys of earlier configurations stay as they were).
            Stage::Eval => {
                let build = &self.index.build;
                let precision_set = build.precision != attune_model::Precision::Auto;
                if build.dimension.is_none() && !precision_set {
                    return json!(self.gate);
                }
                let mut key = json!({"gate": self.gate});
                if let Some(dimension) = build.dimension {
                    key["dimension"] = json!(dimension);
                }
                if precision_set {
                    key["precision"] = json!(build.precision);
                }
                key
            }
            Stage::Index => json!({"index": self.index, "corpus": self.corpus()}),
            Stage::Report => json!(null),
        }
    }

    /// The corpus indexed.
    pub fn corpus(&self) -> &Path {
        self.data.corpus.as_deref().unwrap_or(&self.data.path)
    }

    /// Every stage's key, chained: a stage's key covers its settings and every earlier
    /// stage's, so a changed setting reruns its stage and every later one.
    pub fn stage_keys(&self) -> Vec<(Stage, String)> {
        let mut previous = String::new();
        self.stages()
            .into_iter()
            .map(|stage| {
                let mut hasher = Sha256::new();
                hasher.update(previous.as_bytes());
                hasher.update(stage.name().as_bytes());
                hasher.update(self.stage_settings(stage).to_string().as_bytes());
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
}
