//! `attune mine`: hard negatives for training pairs, mined with a (base) model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use attune_app::{MineJob, MineJobInputs, MineOutcome, MineSettings};
use attune_model::DeviceRequest;
use clap::Args;

use super::progress_bar;

/// Arguments of `attune mine`.
#[derive(Debug, Args)]
pub struct MineArgs {
    /// The model that ranks candidates (usually the base model).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// A BEIR directory (its corpus is searched; qrels rows with score > 0 are the positives) or
    /// a pairs JSONL file (its positive and negative texts are the corpus).
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// Qrels split of a BEIR --data.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Output pairs JSONL: {"query", "positive", "negatives": [...]} per (query, positive).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// What a user tunes (rank window, negatives per pair, margin, length): the same struct
    /// as `[mine]` in pipeline.toml.
    #[command(flatten)]
    pub settings: MineSettings,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `attune mine`.
pub fn run(args: MineArgs) -> Result<()> {
    super::keep_freed_memory();
    let started = Instant::now();
    let job = MineJob::prepare(
        MineJobInputs {
            model: args.model.clone(),
            data: args.data.clone(),
            split: args.split.clone(),
            out: args.out.clone(),
            device: args.device.open()?,
        },
        args.settings.clone(),
    )?;
    let outcome = run_job(job, &args.settings)?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut value = serde_json::to_value(&outcome.report)?;
        value["seconds"] = serde_json::json!(seconds);
        value["out"] = serde_json::json!(outcome.out.display().to_string());
        println!("{value}");
    }
    Ok(())
}

/// Runs a prepared mining job with a progress bar and prints its summary.
fn run_job(job: MineJob, settings: &MineSettings) -> Result<MineOutcome> {
    let started = Instant::now();
    for warning in job.warnings() {
        eprintln!("attune: warning: {warning}");
    }
    let bar = progress_bar(Some(job.texts() as u64), "texts");
    let outcome = job.run(&mut |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    print_mined(&outcome, settings, started.elapsed().as_secs_f64());
    Ok(outcome)
}

/// Prints what mining did; shared with the pipeline's mine stage.
pub(crate) fn print_mined(outcome: &MineOutcome, settings: &MineSettings, seconds: f64) {
    let report = &outcome.report;
    eprintln!(
        "mined {} queries from a corpus of {}: {} pairs, {} negatives ({} pairs short of {}); \
         skipped {} judged positives and {} candidates within {} of the positive; {:.1} s → {}",
        report.queries,
        outcome.corpus,
        report.pairs,
        report.negatives,
        report.short_pairs,
        settings.per_query,
        report.skipped_judged,
        report.skipped_margin,
        settings.margin,
        seconds,
        outcome.out.display()
    );
}
