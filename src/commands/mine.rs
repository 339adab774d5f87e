//! `attune mine`: hard negatives for training pairs, mined with a (base) model.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use attune_eval::BeirDataset;
use attune_model::{DeviceRequest, Encoder, EncoderSettings, ModelDir};
use attune_trainer::data::TrainingData;
use attune_trainer::mine::{mine, MineSettings, MiningInput};
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
    /// Rank window candidates come from, 0-based START:END, END exclusive.
    #[arg(long, value_name = "START:END", default_value = "10:50")]
    pub range: String,
    /// Negatives per pair.
    #[arg(long, value_name = "N", default_value_t = MineSettings::default().per_query)]
    pub per_query: usize,
    /// Candidates scoring above (positive's cosine − margin) are dropped as likely unjudged
    /// positives.
    #[arg(long, value_name = "F", default_value_t = MineSettings::default().margin, allow_hyphen_values = true)]
    pub margin: f32,
    /// Truncate texts to this many tokens (default: the model's max_seq_length).
    #[arg(long, value_name = "N")]
    pub max_seq_len: Option<usize>,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_range(spec: &str) -> Result<std::ops::Range<usize>> {
    let parsed = spec
        .split_once(':')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
    match parsed {
        Some((start, end)) if start < end => Ok(start..end),
        _ => bail!("--range {spec:?}: expected START:END with START < END, e.g. 10:50"),
    }
}

/// Runs `attune mine`.
pub fn run(args: MineArgs) -> Result<()> {
    let started = Instant::now();
    let settings = MineSettings {
        ranks: parse_range(&args.range)?,
        per_query: args.per_query,
        margin: args.margin,
        ..MineSettings::default()
    };
    let input = if args.data.is_dir() {
        let dataset = BeirDataset::load(&args.data, &args.split)?;
        for warning in dataset.report.warnings(&args.data.display().to_string()) {
            eprintln!("attune: warning: {warning}");
        }
        MiningInput::from_beir(&dataset)
    } else {
        MiningInput::from_pairs(&TrainingData::load(&args.data, &args.split)?)
    };
    let device = args.device.open()?;
    let dir = ModelDir::open(&args.model)?;
    let encoder = Encoder::load(
        &dir,
        &device,
        EncoderSettings {
            max_seq_length: args.max_seq_len,
            ..EncoderSettings::default()
        },
    )
    .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let bar = progress_bar(
        Some((input.corpus.len() + input.queries.len()) as u64),
        "texts",
    );
    let (pairs, report) = mine(&encoder, &input, &settings, &mut |n| {
        bar.set_position(n as u64)
    })?;
    bar.finish_and_clear();
    // Written whole to a temporary file and renamed: a crash leaves no half file.
    let tmp = args.out.with_extension("jsonl.tmp");
    {
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for pair in &pairs {
            serde_json::to_writer(&mut out, pair)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["seconds"] = serde_json::json!(seconds);
        value["out"] = serde_json::json!(args.out.display().to_string());
        println!("{value}");
    }
    eprintln!(
        "mined {} queries from a corpus of {}: {} pairs, {} negatives ({} pairs short of {}); \
         skipped {} judged positives and {} candidates within {} of the positive; {:.1} s → {}",
        report.queries,
        input.corpus.len(),
        report.pairs,
        report.negatives,
        report.short_pairs,
        settings.per_query,
        report.skipped_judged,
        report.skipped_margin,
        settings.margin,
        seconds,
        args.out.display()
    );
    Ok(())
}
