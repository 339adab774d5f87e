//! The mining job: hard negatives for training pairs, ranked by a (base) model, written as a
//! pairs file. `attune mine` and the pipeline's mine stage both run it, with the same
//! [`MineSettings`].

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;

use attune_eval::BeirDataset;
use attune_model::{Device, Encoder, EncoderSettings, ModelDir};
use attune_trainer::data::TrainingData;
use attune_trainer::mine::{mine, MineReport, MineSettings as EngineSettings, MiningInput};
use attune_trainer::TrainError;
use serde::{Deserialize, Serialize};

/// A 0-based rank window `START:END`, END exclusive, written as on the command line (`"10:50"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankWindow(pub Range<usize>);

impl FromStr for RankWindow {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let parsed = spec
            .split_once(':')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        match parsed {
            Some((start, end)) if start < end => Ok(Self(start..end)),
            _ => Err(format!(
                "{spec:?}: expected START:END with START < END, e.g. 10:50"
            )),
        }
    }
}

impl fmt::Display for RankWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0.start, self.0.end)
    }
}

// Written and read as on the command line (`"10:50"`).
attune_core::serde_via_str!(RankWindow);

/// What a user tunes in mining: the flags of `attune mine` and the keys of `[mine]` in
/// `pipeline.toml` (both map onto this struct; a setting is declared here only). `Default`
/// gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct MineSettings {
    /// Rank window candidates come from, 0-based START:END, END exclusive. Default 10:50.
    #[cfg_attr(feature = "cli", arg(long, value_name = "START:END", default_value_t = MineSettings::default().range))]
    pub range: RankWindow,
    /// Negatives per pair. Default 5.
    #[cfg_attr(feature = "cli", arg(long, value_name = "N", default_value_t = MineSettings::default().per_query))]
    pub per_query: usize,
    /// Candidates scoring above (positive's cosine − margin) are dropped as likely unjudged
    /// positives. Default 0.05.
    #[cfg_attr(feature = "cli", arg(long, value_name = "F", default_value_t = MineSettings::default().margin, allow_hyphen_values = true))]
    pub margin: f32,
    /// Truncate texts to this many tokens (default: the model's max_seq_length, also in a
    /// pipeline whose `[train] max_seq_len` is shorter).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_seq_len: Option<usize>,
}

impl Default for MineSettings {
    fn default() -> Self {
        let engine = EngineSettings::default();
        Self {
            range: RankWindow(engine.ranks),
            per_query: engine.per_query,
            margin: engine.margin,
            max_seq_len: None,
        }
    }
}

impl MineSettings {
    /// The miner's settings.
    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            ranks: self.range.0.clone(),
            per_query: self.per_query,
            margin: self.margin,
            ..EngineSettings::default()
        }
    }
}

/// What a mining run is wired with.
#[derive(Debug, Clone)]
pub struct MineJobInputs {
    /// The model that ranks candidates (usually the base model).
    pub model: PathBuf,
    /// A BEIR directory or a pairs JSONL file.
    pub data: PathBuf,
    /// Qrels split of a BEIR `data`.
    pub split: String,
    /// Output pairs JSONL (written whole, then renamed into place).
    pub out: PathBuf,
    /// Device the model runs on.
    pub device: Device,
}

/// What a mining run did.
#[derive(Debug, Clone, Serialize)]
pub struct MineOutcome {
    /// The miner's report.
    #[serde(flatten)]
    pub report: MineReport,
    /// Documents searched.
    pub corpus: usize,
    /// The pairs file written.
    pub out: PathBuf,
}

/// A mining run with its data read.
pub struct MineJob {
    inputs: MineJobInputs,
    settings: MineSettings,
    input: MiningInput,
    warnings: Vec<String>,
}

impl MineJob {
    /// Reads the data (nothing is written yet).
    pub fn prepare(inputs: MineJobInputs, settings: MineSettings) -> Result<Self, TrainError> {
        let (input, warnings) = if inputs.data.is_dir() {
            let dataset = BeirDataset::load(&inputs.data, &inputs.split)?;
            let mut warnings = dataset.report.warnings(&inputs.data.display().to_string());
            let empty = MiningInput::empty_documents(&dataset);
            if empty > 0 {
                warnings.push(format!(
                    "{}: {empty} documents without title and text are left out of mining",
                    inputs.data.display()
                ));
            }
            (MiningInput::from_beir(&dataset), warnings)
        } else {
            let data = TrainingData::load(&inputs.data, &inputs.split)?;
            (MiningInput::from_pairs(&data), Vec::new())
        };
        Ok(Self {
            inputs,
            settings,
            input,
            warnings,
        })
    }

    /// What reading the data found (duplicates, dangling qrels, ...).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Texts to embed (corpus and queries), for progress bars.
    pub fn texts(&self) -> usize {
        self.input.corpus.len() + self.input.queries.len()
    }

    /// Mines and writes the pairs file; `on_progress` gets the texts embedded so far.
    pub fn run(self, on_progress: &mut dyn FnMut(usize)) -> Result<MineOutcome, TrainError> {
        let dir = ModelDir::open(&self.inputs.model)?;
        let encoder = Encoder::load(
            &dir,
            &self.inputs.device,
            EncoderSettings {
                max_seq_length: self.settings.max_seq_len,
                ..EncoderSettings::default()
            },
        )?;
        let (pairs, report) = mine(
            &encoder,
            &self.input,
            &self.settings.engine_settings(),
            on_progress,
        )?;
        let out = &self.inputs.out;
        attune_trainer::data::write_pairs(out, &pairs)?;
        Ok(MineOutcome {
            report,
            corpus: self.input.corpus.len(),
            out: out.clone(),
        })
    }
}
