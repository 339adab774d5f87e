//! `attune train`: fine-tune a model on query–document pairs and write the tuned directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use attune_eval::data::BeirDataset;
use attune_model::{DeviceRequest, ModelDir, Precision};
use attune_trainer::data::TrainingData;
use attune_trainer::lora::{parse_targets, LoraSettings};
use attune_trainer::loss::LossSettings;
use attune_trainer::optim::AdamWSettings;
use attune_trainer::train::{train, Event, LeakagePolicy, TrainInputs, TrainOutput, TrainSettings};
use clap::{Args, ValueEnum};
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
    /// Passes over the data.
    #[arg(long, default_value_t = TrainSettings::default().epochs)]
    pub epochs: usize,
    /// Optimizer steps to take instead of whole epochs.
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// Pairs per batch (each query's negatives include the other pairs' positives).
    #[arg(long, default_value_t = TrainSettings::default().batch_size)]
    pub batch_size: usize,
    /// GradCache: embed each batch this many texts at a time, with the exact gradients of the
    /// whole batch's loss and the memory of this many texts; lets --batch-size grow past memory
    /// (e.g. --batch-size 512 --mini-batch 32).
    #[arg(long, value_name = "N")]
    pub mini_batch: Option<usize>,
    /// LoRA: train rank-R adapters instead of every weight (merged into the written model; also
    /// written on their own as adapter_model.safetensors).
    #[arg(long, value_name = "R")]
    pub lora_rank: Option<usize>,
    /// LoRA scale numerator: adapters are multiplied by alpha / rank [default: 2 × rank].
    #[arg(long, value_name = "A", requires = "lora_rank")]
    pub lora_alpha: Option<f64>,
    /// LoRA target layers in every transformer layer: q, k, v, o, ffn.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "q,k,v,o",
        requires = "lora_rank"
    )]
    pub lora_targets: String,
    /// Peak learning rate.
    #[arg(long, default_value_t = AdamWSettings::default().lr)]
    pub lr: f64,
    /// Share of steps spent warming up the learning rate (then linear decay to 0).
    #[arg(long, default_value_t = TrainSettings::default().warmup_ratio)]
    pub warmup_ratio: f64,
    /// AdamW weight decay (not applied to biases and LayerNorm weights).
    #[arg(long, default_value_t = AdamWSettings::default().weight_decay)]
    pub weight_decay: f64,
    /// Gradient-norm clipping threshold; 0 disables clipping.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// InfoNCE temperature (0.05 = sentence-transformers' scale 20).
    #[arg(long, default_value_t = LossSettings::default().temperature)]
    pub temperature: f64,
    /// Add the document → query direction to the loss.
    #[arg(long)]
    pub symmetric: bool,
    /// Tokens per text while training (default: the model's max_seq_length).
    #[arg(long, value_name = "N")]
    pub max_seq_len: Option<usize>,
    /// Seed of the batch order and dropout.
    #[arg(long, default_value_t = TrainSettings::default().seed)]
    pub seed: u64,
    /// Validation data: a BEIR directory. Its queries are also checked for leakage.
    #[arg(long, value_name = "PATH")]
    pub eval_data: Option<PathBuf>,
    /// Qrels split of --eval-data (default: dev when it exists, else test).
    #[arg(long)]
    pub eval_split: Option<String>,
    /// Validate every N steps and keep the best weights by nDCG@10 (default: validate before
    /// and after training only).
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Write a checkpoint every N steps.
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Checkpoint directory (default: <out>.checkpoints beside --out).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Keep the checkpoint directory after a successful run.
    #[arg(long)]
    pub keep_checkpoints: bool,
    /// Continue from the newest checkpoint (same data and settings).
    #[arg(long)]
    pub resume: bool,
    /// Training queries that also appear in --eval-data.
    #[arg(long, value_enum, default_value_t = Leakage::Refuse)]
    pub leakage: Leakage,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// Dtype of the matrix products: auto (bf16 on a GPU, f32 on the CPU), f32, bf16, f16.
    /// Weights, optimizer state, gradients and the loss stay f32.
    #[arg(long, default_value = "auto")]
    pub precision: Precision,
}

/// `--leakage` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Leakage {
    /// Refuse to train.
    Refuse,
    /// Train without the leaked pairs.
    Drop,
    /// Train on them anyway (recorded in the training card).
    Allow,
}

impl From<Leakage> for LeakagePolicy {
    fn from(l: Leakage) -> Self {
        match l {
            Leakage::Refuse => LeakagePolicy::Refuse,
            Leakage::Drop => LeakagePolicy::Drop,
            Leakage::Allow => LeakagePolicy::Allow,
        }
    }
}

impl TrainArgs {
    fn settings(&self) -> Result<TrainSettings> {
        let lora = match self.lora_rank {
            Some(rank) => Some(LoraSettings {
                rank,
                alpha: self.lora_alpha.unwrap_or(2.0 * rank as f64),
                targets: parse_targets(&self.lora_targets)?,
            }),
            None => None,
        };
        Ok(TrainSettings {
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            mini_batch: self.mini_batch,
            optimizer: AdamWSettings {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..Default::default()
            },
            warmup_ratio: self.warmup_ratio,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            loss: LossSettings {
                temperature: self.temperature,
                symmetric: self.symmetric,
            },
            max_seq_length: self.max_seq_len,
            seed: self.seed,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            checkpoints_kept: 1,
            leakage: self.leakage.into(),
            lora,
            precision: self.precision,
        })
    }
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
    let settings = args.settings()?;
    let model = ModelDir::open(&args.model)?;
    let data = TrainingData::load(&args.data, &args.split)?;
    let eval_split = match (&args.eval_data, &args.eval_split) {
        (_, Some(split)) => Some(split.clone()),
        (Some(dir), None) => Some(
            if dir.join("qrels").join("dev.tsv").exists() {
                "dev"
            } else {
                "test"
            }
            .to_string(),
        ),
        (None, None) => None,
    };
    let (validation, held_out) = match (&args.eval_data, &eval_split) {
        (Some(dir), Some(split)) => (
            Some(BeirDataset::load(dir, split)?),
            Some(TrainingData::load(dir, split)?),
        ),
        _ => (None, None),
    };
    let device = args.device.open()?;
    let mut output = TrainOutput::new(&args.out);
    if let Some(dir) = &args.checkpoint_dir {
        output.checkpoints = dir.clone();
    }
    output.resume = args.resume;
    output.keep_checkpoints = args.keep_checkpoints;

    println!(
        "train: {} on {} ({} pairs, split {}), device {}, {} products",
        args.model.display(),
        args.data.display(),
        data.pairs.len(),
        args.split,
        attune_model::device::device_name(&device),
        args.precision.matmul_dtype(&device).as_str()
    );
    if let (Some(v), Some(split)) = (&validation, &eval_split) {
        println!(
            "validation: {} split {} ({} queries, {} documents)",
            v.root.display(),
            split,
            v.queries.len(),
            v.corpus.len()
        );
    }

    let steps = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    steps.set_style(
        ProgressStyle::with_template(
            "{spinner} train [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .expect("valid template"),
    );
    let mut docs: Option<ProgressBar> = None;
    let mut on_event = |event: Event<'_>| match event {
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
                "plan: {pairs} pairs, {total_steps} steps ({warmup_steps} warmup), batch {}",
                settings.batch_size
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
    };
    let inputs = TrainInputs {
        model: &model,
        data: &data,
        held_out: held_out.as_ref(),
        validation: validation.as_ref(),
        device: &device,
    };
    let summary = train(&inputs, &settings, &output, &mut on_event)
        .with_context(|| format!("training on {}", args.data.display()))?;
    steps.finish_and_clear();

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
        if settings.lora.is_some() {
            " (LoRA adapters, merged into the written weights)"
        } else {
            ""
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
    Ok(())
}
