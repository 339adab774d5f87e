//! The data check: what is wrong with training data before anything trains on it. `attune data
//! check` and the pipeline's check stage both run it.

use std::path::PathBuf;

use attune_model::{Device, Encoder, EncoderSettings, ModelDir, TextKind};
use attune_trainer::check::{check, CheckReport, CheckSettings};
use attune_trainer::data::TrainingData;
use attune_trainer::TrainError;

/// What a data check is wired with.
#[derive(Debug, Clone)]
pub struct CheckInputs {
    /// Training data: pairs JSONL or a BEIR directory.
    pub data: PathBuf,
    /// Qrels split of a BEIR `data`.
    pub split: String,
    /// Test data and its split: training queries found there are leakage.
    pub test: Option<(PathBuf, String)>,
    /// A model directory whose tokenizer measures the share of texts longer than the maximum
    /// sequence length, and the length (default: the model's).
    pub model: Option<(PathBuf, Option<usize>)>,
}

/// What the check found.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    /// The findings.
    pub report: CheckReport,
    /// The length long texts were measured against, when a model was given.
    pub max_seq_length: Option<usize>,
}

/// Reads the data (and the model's tokenizer) and checks them.
pub fn run_check(
    inputs: &CheckInputs,
    settings: &CheckSettings,
) -> Result<CheckOutcome, TrainError> {
    let train = TrainingData::load(&inputs.data, &inputs.split)?;
    let test = inputs
        .test
        .as_ref()
        .map(|(path, split)| TrainingData::load(path, split))
        .transpose()?;
    let encoder = inputs
        .model
        .as_ref()
        .map(|(dir, max_seq_len)| -> Result<Encoder, TrainError> {
            let settings = EncoderSettings {
                max_seq_length: *max_seq_len,
                ..EncoderSettings::default()
            };
            Ok(Encoder::load(
                &ModelDir::open(dir)?,
                &Device::Cpu,
                settings,
            )?)
        })
        .transpose()?;
    let probe = |texts: &[&str]| -> attune_trainer::Result<Vec<bool>> {
        let encoder = encoder.as_ref().expect("probe is only passed with a model");
        Ok(encoder
            .tokenize(texts, TextKind::Plain)?
            .iter()
            .map(|t| t.truncated)
            .collect())
    };
    let report = check(
        &train,
        test.as_ref(),
        encoder.as_ref().map(|_| &probe as _),
        settings,
    )?;
    Ok(CheckOutcome {
        report,
        max_seq_length: encoder.as_ref().map(Encoder::max_seq_length),
    })
}
