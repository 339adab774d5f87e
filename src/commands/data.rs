//! `attune data check`: report problems in training data before training; fatal ones exit 1.

use std::path::PathBuf;

use anyhow::{bail, Result};
use attune_app::{CheckInputs, CheckOutcome};
use attune_trainer::check::CheckSettings;
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
    let inputs = CheckInputs {
        data: args.data.clone(),
        split: args.split.clone(),
        test: args.test_data.clone().map(|p| (p, args.test_split.clone())),
        model: args.model.clone().map(|p| (p, args.max_seq_len)),
    };
    let settings = CheckSettings {
        samples: args.samples,
        allow_leakage: args.allow_leakage,
    };
    print_check(&inputs, &settings)
}

/// Runs a data check, prints its report, and fails on fatal findings.
fn print_check(inputs: &CheckInputs, settings: &CheckSettings) -> Result<()> {
    let outcome = attune_app::run_check(inputs, settings)?;
    print_check_outcome(&inputs.data, &outcome);
    if outcome.report.is_fatal() {
        bail!("{}: fatal data problems (see above)", inputs.data.display());
    }
    Ok(())
}

/// Prints a data check's report; shared with the pipeline's check stage.
pub(crate) fn print_check_outcome(data: &std::path::Path, outcome: &CheckOutcome) {
    println!("data check: {}", data.display());
    if let Some(length) = outcome.max_seq_length {
        println!("maximum sequence length: {length} tokens");
    }
    print!("{}", outcome.report);
}
