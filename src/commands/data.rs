//! `attune data check`: report problems in training data before training; fatal ones exit 1.

use std::path::PathBuf;

use anyhow::{bail, Result};
use attune_model::{DeviceRequest, Encoder, EncoderSettings, ModelDir, TextKind};
use attune_trainer::check::{check, CheckSettings};
use attune_trainer::data::TrainingData;
use clap::{Args, Subcommand};

/// `attune data …`
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Check training data: counts, empty texts, duplicates, a query equal to its positive, a
    /// text both positive and negative for one query, leakage into test data, long texts.
    Check(CheckArgs),
}

/// Arguments of `attune data check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Training data: a pairs JSONL file ({"query", "positive", "negatives"?} per line) or a BEIR
    /// directory (qrels rows with score > 0 become pairs).
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// Qrels split of a BEIR --data.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Test data (same formats): training queries found there are leakage.
    #[arg(long, value_name = "PATH")]
    pub test_data: Option<PathBuf>,
    /// Qrels split of a BEIR --test-data.
    #[arg(long, default_value = "test")]
    pub test_split: String,
    /// A model directory whose tokenizer measures the share of texts longer than the maximum
    /// sequence length (skipped without it).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Maximum sequence length for that measure (default: the model's).
    #[arg(long, value_name = "N")]
    pub max_seq_len: Option<usize>,
    /// Report training queries found in the test data as a warning, not a fatal problem.
    #[arg(long)]
    pub allow_leakage: bool,
    /// Places listed per problem.
    #[arg(long, default_value_t = CheckSettings::default().samples)]
    pub samples: usize,
}

/// Runs `attune data …`.
pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Check(args) => run_check(args),
    }
}

fn run_check(args: CheckArgs) -> Result<()> {
    let train = TrainingData::load(&args.data, &args.split)?;
    let test = args
        .test_data
        .as_deref()
        .map(|p| TrainingData::load(p, &args.test_split))
        .transpose()?;
    let encoder = args
        .model
        .as_deref()
        .map(|dir| -> Result<Encoder> {
            let model = ModelDir::open(dir)?;
            let settings = EncoderSettings {
                max_seq_length: args.max_seq_len,
                ..Default::default()
            };
            Ok(Encoder::load(
                &model,
                &DeviceRequest::Cpu.open()?,
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
        &CheckSettings {
            samples: args.samples,
            allow_leakage: args.allow_leakage,
        },
    )?;
    println!("data check: {}", args.data.display());
    if let Some(encoder) = &encoder {
        println!(
            "maximum sequence length: {} tokens",
            encoder.max_seq_length()
        );
    }
    print!("{report}");
    if report.is_fatal() {
        bail!("{}: fatal data problems (see above)", args.data.display());
    }
    Ok(())
}
