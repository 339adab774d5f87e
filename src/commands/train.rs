//! `attune train`: fine-tune a model on query–document pairs and write the tuned directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use attune_app::{TrainJob, TrainJobInputs, TrainSettings};
use attune_model::DeviceRequest;
use attune_trainer::train::{Event, Method, TrainSummary};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::progress_bar;

/// Arguments of `attune train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Base model: a sentence-transformers model directory.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Training data: a pairs JSONL file ({"query", "positive", "negatives"?} per line) or a BEIR
    /// directory (qrels rows with score > 0 become pairs; documents are `title + " " + text`).
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// Qrels split of a BEIR --data.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Where to write the tuned model directory (replaced if it holds a model).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// What a user tunes (epochs, batch, learning rate, LoRA, ...): the same struct as
    /// `[train]` in pipeline.toml.
    #[command(flatten)]
    pub settings: TrainSettings,
    /// Validation data: a BEIR directory. Its queries are also checked for leakage.
    #[arg(long, value_name = "PATH")]
    pub eval_data: Option<PathBuf>,
    /// Qrels split of --eval-data (default: dev when it exists, else test).
    #[arg(long)]
    pub eval_split: Option<String>,
    /// Checkpoint directory (default: <out>.checkpoints beside --out).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Keep the checkpoint directory after a successful run.
    #[arg(long)]
    pub keep_checkpoints: bool,
    /// Continue from the newest checkpoint (same data and settings).
    #[arg(long)]
    pub resume: bool,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
}

/// Peak resident memory of this process in MiB (Linux; `None` elsewhere).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs `attune train`.
pub fn run(args: TrainArgs) -> Result<()> {
    super::keep_freed_memory();
    let device = args.device.open()?;
    let precision = args.settings.precision;
    let job = TrainJob::prepare(
        TrainJobInputs {
            model: args.model.clone(),
            data: args.data.clone(),
            split: args.split.clone(),
            out: args.out.clone(),
            eval_data: args.eval_data.clone(),
            eval_split: args.eval_split.clone(),
            held_out: None,
            checkpoint_dir: args.checkpoint_dir.clone(),
            keep_checkpoints: args.keep_checkpoints,
            resume: args.resume,
            device: device.clone(),
        },
        &args.settings,
    )?;
    println!(
        "train: {} on {} ({} pairs, split {}), device {}, {} products",
        args.model.display(),
        args.data.display(),
        job.data().pairs.len(),
        args.split,
        attune_model::device::device_name(&device),
        precision.matmul_dtype(&device).as_str()
    );
    if let Some((v, split)) = job.validation() {
        println!(
            "validation: {} split {} ({} queries, {} documents)",
            v.root.display(),
            split,
            v.queries.len(),
            v.corpus.len()
        );
    }
    let batch_size = job.settings().batch_size;
    let summary = job
        .run(&mut print_events(batch_size))
        .with_context(|| format!("training on {}", args.data.display()))?;
    print_summary(&summary);
    Ok(())
}

/// Prints a training run's events (progress bars on a terminal, about 20 step lines without
/// one); shared with the pipeline's train stage.
pub(crate) fn print_events(batch_size: usize) -> impl FnMut(Event<'_>) {
    let steps = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    steps.set_style(
        ProgressStyle::with_template(
            "{spinner} train [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .expect("valid template"),
    );
    let mut docs: Option<ProgressBar> = None;
    move |event: Event<'_>| match event {
        Event::Checked(report) => print!("{report}"),
        Event::DroppedLeaked(n) => {
            println!("leakage: training without {n} pairs whose query is in the validation data")
        }
        Event::Resumed(Some(path)) => println!("resuming from {}", path.display()),
        Event::Resumed(None) => println!("no checkpoint to resume from; starting at step 0"),
        Event::Planned {
            pairs,
            total_steps,
            warmup_steps,
            first_step,
        } => {
            println!(
                "plan: {pairs} pairs, {total_steps} steps ({warmup_steps} warmup), batch {batch_size}"
            );
            steps.set_length(total_steps as u64);
            steps.set_position(first_step as u64);
            steps.reset_eta();
        }
        Event::ValidationStarted(n) => {
            let bar = progress_bar(Some(n as u64), "docs");
            bar.set_prefix("validate");
            docs = Some(bar);
        }
        Event::ValidationProgress(n) => {
            if let Some(bar) = &docs {
                bar.inc(n as u64);
            }
        }
        Event::Validated(record) => {
            if let Some(bar) = docs.take() {
                bar.finish_and_clear();
            }
            let metrics = record
                .metrics
                .iter()
                .flatten()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join("  ");
            let best = if record.best == Some(true) {
                "  (best)"
            } else {
                ""
            };
            steps.suspend(|| println!("step {:>5}  {metrics}{best}", record.step));
        }
        Event::Step(record) => {
            let message = format!(
                "loss {:.4}  lr {:.2e}  {:.2} ex/s",
                record.loss.unwrap_or(f64::NAN),
                record.lr.unwrap_or(0.0),
                record.examples_per_s.unwrap_or(0.0)
            );
            // Without a terminal the bar is hidden: print about 20 lines per run instead.
            let every = (steps.length().unwrap_or(1) / 20).max(1);
            if steps.is_hidden() && record.step as u64 % every == 0 {
                println!("step {:>5}  {message}", record.step);
            }
            steps.set_position(record.step as u64);
            steps.set_message(message);
        }
        Event::Checkpointed(path) => steps.suspend(|| println!("checkpoint {}", path.display())),
    }
}

/// Prints what a finished run did.
pub(crate) fn print_summary(summary: &TrainSummary) {
    println!(
        "trained {} steps ({} pairs seen) in {:.1} s: {:.2} examples/s; final loss {}; {} \
         trainable parameters{}",
        summary.steps,
        summary.examples,
        summary.training_s,
        summary.examples_per_s,
        summary
            .final_loss
            .map_or("-".to_string(), |l| format!("{l:.4}")),
        summary.trainable_parameters,
        match summary.method {
            Method::Full => String::new(),
            method => format!(" ({})", method.writes()),
        }
    );
    if let (Some(before), Some(after)) = (&summary.before, &summary.after) {
        println!(
            "{:<12} {:>8} {:>8} {:>8}",
            "metric", "base", "tuned", "delta"
        );
        for (name, b) in before {
            if let Some(a) = after.get(name) {
                println!("{name:<12} {b:>8.4} {a:>8.4} {:>+8.4}", a - b);
            }
        }
    }
    if let Some(best) = summary.best {
        println!(
            "wrote the weights of step {} (validation nDCG@10 {:.4})",
            best.step, best.ndcg_at_10
        );
    }
    if let Some(mib) = peak_rss_mib() {
        println!("peak memory: {mib:.0} MiB");
    }
    println!("tuned model: {}", summary.out.display());
}
