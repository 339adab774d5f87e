//! The training job: a base model fine-tuned on pairs, written as a model directory. `attune
//! train` and the pipeline's train stage both run it, with the same [`TrainSettings`].

use std::path::PathBuf;

use attune_eval::data::BeirDataset;
use attune_model::{Device, ModelDir, Precision};
use attune_trainer::data::TrainingData;
use attune_trainer::lora::{parse_targets, LoraSettings};
use attune_trainer::loss::LossSettings;
use attune_trainer::optim::AdamWSettings;
use attune_trainer::prompt::PromptSettings;
use attune_trainer::targets::{GradeWeighting, GuideSettings, TargetSettings};
/// The training queries a tuned model's card lists (the server's drift reference).
pub use attune_trainer::train::reference_queries;
use attune_trainer::train::{
    train, Event, LeakagePolicy, TrainInputs as EngineInputs, TrainOutput,
    TrainSettings as EngineSettings, TrainSummary,
};
use attune_trainer::TrainError;
use serde::{Deserialize, Serialize};

/// What a user tunes in a training run: the flags of `attune train` and the keys of `[train]` in
/// `pipeline.toml` (both map onto this struct; a setting is declared here only). `Default`
/// gives the documented defaults, sentence-transformers' recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct TrainSettings {
    /// Passes over the data. Default 1.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainSettings::default().epochs))]
    pub epochs: usize,
    /// Optimizer steps to take instead of whole epochs.
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_steps: Option<usize>,
    /// Pairs per batch (each query's negatives include the other pairs' positives). Default 32.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainSettings::default().batch_size))]
    pub batch_size: usize,
    /// GradCache: embed each batch this many texts at a time, with the exact gradients of the
    /// whole batch's loss and the memory of this many texts; lets --batch-size grow past memory
    /// (e.g. --batch-size 512 --mini-batch 32).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub mini_batch: Option<usize>,
    /// LoRA: train rank-R adapters instead of every weight (merged into the written model; also
    /// written on their own as adapter_model.safetensors).
    #[cfg_attr(feature = "cli", arg(long, value_name = "R"))]
    pub lora_rank: Option<usize>,
    /// LoRA scale numerator: adapters are multiplied by alpha / rank [default: 2 × rank]. Needs
    /// lora_rank.
    #[cfg_attr(feature = "cli", arg(long, value_name = "A"))]
    pub lora_alpha: Option<f64>,
    /// LoRA target layers in every transformer layer: q, k, v, o, ffn. Default q,k,v,o. Needs
    /// lora_rank when changed.
    #[cfg_attr(feature = "cli", arg(long, value_name = "LIST", default_value_t = TrainSettings::default().lora_targets))]
    pub lora_targets: String,
    /// Prompt tuning: learn a soft prompt of N vectors placed after each text's first token,
    /// every weight of the model frozen (the written directory adds soft_prompt.safetensors,
    /// which only attune applies). Wants a far larger --lr than full fine-tuning (e.g. 1e-3).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub prompt_tokens: Option<usize>,
    /// The text whose token embeddings the soft prompt starts from (cycled to prompt_tokens).
    /// Needs prompt_tokens when changed.
    #[cfg_attr(feature = "cli", arg(long, value_name = "TEXT", default_value_t = TrainSettings::default().prompt_init))]
    pub prompt_init: String,
    /// Peak learning rate. Default 2e-5.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainSettings::default().lr))]
    pub lr: f64,
    /// Share of steps spent warming up the learning rate (then linear decay to 0). Default 0.1.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainSettings::default().warmup_ratio))]
    pub warmup_ratio: f64,
    /// AdamW weight decay (not applied to biases and LayerNorm weights). Default 0.01.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainSettings::default().weight_decay))]
    pub weight_decay: f64,
    /// Gradient-norm clipping threshold; 0 disables clipping. Default 1.0.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainSettings::default().max_grad_norm))]
    pub max_grad_norm: f64,
    /// InfoNCE temperature (0.05 = sentence-transformers' scale 20). Default 0.05.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainSettings::default().temperature))]
    pub temperature: f64,
    /// Add the document → query direction to the loss. Default false.
    #[cfg_attr(feature = "cli", arg(long))]
    pub symmetric: bool,
    /// Keep every text judged relevant to a query (any of its positives in the training data)
    /// out of its in-batch and hard negatives. Default true; false is sentence-transformers'
    /// MNRL, which pushes such texts away.
    #[cfg_attr(feature = "cli", arg(long, value_name = "BOOL", default_value_t = TrainSettings::default().mask_judged_positives, action = clap::ArgAction::Set))]
    pub mask_judged_positives: bool,
    /// Pairs of one query drawn into the same batch, at most. Default 1 (every text of a batch
    /// distinct). Above 1 a query's judged answers meet in one batch, kept out of each other's
    /// negatives (needs mask_judged_positives).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N", default_value_t = TrainSettings::default().positives_per_query))]
    pub positives_per_query: usize,
    /// How relevance grades weigh pairs in the loss: uniform (default) or linear (grade / the
    /// highest grade in the data). Pair weights from a pairs file's `weight` multiply in.
    #[cfg_attr(feature = "cli", arg(long, value_name = "HOW", default_value_t = TrainSettings::default().grade_weighting))]
    pub grade_weighting: GradeWeighting,
    /// GISTEmbed: a guide model (the base model, or --guide-model) embeds each batch once more,
    /// and candidates it scores above the query's own positive minus --guide-margin are masked
    /// as likely unjudged answers. Costs one inference pass per step. Default false.
    #[cfg_attr(feature = "cli", arg(long))]
    pub guide_filter: bool,
    /// The guide model directory (default: the base model). Needs guide_filter.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub guide_model: Option<PathBuf>,
    /// Cosine margin below the positive's guide score within which candidates are masked.
    /// Default 0 (masked when the guide ranks them above the positive). Needs guide_filter.
    #[cfg_attr(feature = "cli", arg(long, value_name = "M", default_value_t = TrainSettings::default().guide_margin))]
    pub guide_margin: f64,
    /// Matryoshka: also train each of these leading dimensions (e.g. 384,256,128,64; each
    /// prefix re-normalised, losses summed), so spaces can be served truncated. Default: off.
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIMS", value_delimiter = ','))]
    pub matryoshka_dims: Vec<usize>,
    /// Tokens per text while training (default: the model's max_seq_length).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_seq_len: Option<usize>,
    /// Seed of the batch order and dropout. Default 42.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainSettings::default().seed))]
    pub seed: u64,
    /// Validate every N steps and keep the best weights by nDCG@10 (default: validate before
    /// and after training only).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub eval_every: Option<usize>,
    /// Write a checkpoint every N steps.
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub checkpoint_every: Option<usize>,
    /// Training queries that also appear in the held-out data: refuse (default) to train, drop
    /// the leaked pairs, or allow them (recorded in the training card).
    #[cfg_attr(feature = "cli", arg(long, value_name = "POLICY", default_value_t = TrainSettings::default().leakage))]
    pub leakage: LeakagePolicy,
    /// Dtype of the matrix products: auto (bf16 on a GPU, f32 on the CPU; the default), f32,
    /// bf16, f16 (int8 is for inference only). Weights, optimizer state, gradients and the loss
    /// stay f32.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainSettings::default().precision))]
    pub precision: Precision,
}

impl Default for TrainSettings {
    fn default() -> Self {
        let engine = EngineSettings::default();
        Self {
            epochs: engine.epochs,
            max_steps: engine.max_steps,
            batch_size: engine.batch_size,
            mini_batch: engine.mini_batch,
            lora_rank: None,
            lora_alpha: None,
            lora_targets: "q,k,v,o".into(),
            prompt_tokens: None,
            prompt_init: PromptSettings::DEFAULT_INIT.into(),
            lr: engine.optimizer.lr,
            warmup_ratio: engine.warmup_ratio,
            weight_decay: engine.optimizer.weight_decay,
            max_grad_norm: engine.max_grad_norm.unwrap_or(0.0),
            temperature: engine.loss.temperature,
            symmetric: engine.loss.symmetric,
            mask_judged_positives: engine.targets.mask_judged_positives,
            grade_weighting: engine.targets.grade_weighting,
            positives_per_query: engine.positives_per_query,
            matryoshka_dims: engine.loss.matryoshka_dims.clone(),
            guide_filter: false,
            guide_model: None,
            guide_margin: 0.0,
            max_seq_len: engine.max_seq_length,
            seed: engine.seed,
            eval_every: engine.eval_every,
            checkpoint_every: engine.checkpoint_every,
            leakage: engine.leakage,
            precision: engine.precision,
        }
    }
}

impl TrainSettings {
    /// The guide filter's settings; guide options without guide_filter are refused.
    fn guide(&self) -> Result<Option<GuideSettings>, TrainError> {
        if !self.guide_filter {
            if self.guide_model.is_some() || self.guide_margin != 0.0 {
                return Err(TrainError::InvalidSetting {
                    name: "guide-filter",
                    problem: "guide_model and guide_margin need guide_filter".into(),
                });
            }
            return Ok(None);
        }
        Ok(Some(GuideSettings {
            model: self.guide_model.clone(),
            margin: self.guide_margin,
        }))
    }

    /// The trainer's settings; LoRA options without a rank are refused.
    pub fn engine_settings(&self) -> Result<EngineSettings, TrainError> {
        let default = Self::default();
        let lora = match self.lora_rank {
            Some(rank) => Some(LoraSettings {
                rank,
                alpha: self.lora_alpha.unwrap_or(2.0 * rank as f64),
                targets: parse_targets(&self.lora_targets)?,
            }),
            None if self.lora_alpha.is_some() || self.lora_targets != default.lora_targets => {
                return Err(TrainError::InvalidSetting {
                    name: "lora-rank",
                    problem: "lora_alpha and lora_targets need lora_rank (the adapters' rank)"
                        .into(),
                })
            }
            None => None,
        };
        let prompt = match self.prompt_tokens {
            Some(tokens) => Some(PromptSettings {
                tokens,
                init_text: self.prompt_init.clone(),
            }),
            None if self.prompt_init != default.prompt_init => {
                return Err(TrainError::InvalidSetting {
                    name: "prompt-tokens",
                    problem: "prompt_init needs prompt_tokens (the soft prompt's length)".into(),
                })
            }
            None => None,
        };
        Ok(EngineSettings {
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            mini_batch: self.mini_batch,
            optimizer: AdamWSettings {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..AdamWSettings::default()
            },
            warmup_ratio: self.warmup_ratio,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            loss: LossSettings {
                temperature: self.temperature,
                symmetric: self.symmetric,
                matryoshka_dims: self.matryoshka_dims.clone(),
            },
            targets: TargetSettings {
                mask_judged_positives: self.mask_judged_positives,
                grade_weighting: self.grade_weighting,
                guide: self.guide()?,
            },
            positives_per_query: self.positives_per_query,
            max_seq_length: self.max_seq_len,
            seed: self.seed,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            checkpoints_kept: 1,
            leakage: self.leakage,
            lora,
            prompt,
            precision: self.precision,
        })
    }
}

/// What a training run is wired with (data, model and output paths; run controls).
#[derive(Debug, Clone)]
pub struct TrainJobInputs {
    /// Base model directory.
    pub model: PathBuf,
    /// Pairs JSONL file or BEIR directory.
    pub data: PathBuf,
    /// Qrels split of a BEIR `data`.
    pub split: String,
    /// Where the tuned model directory is written.
    pub out: PathBuf,
    /// Validation data (a BEIR directory), whose queries are also checked for leakage.
    pub eval_data: Option<PathBuf>,
    /// Qrels split of `eval_data` (default: dev when it exists, else test).
    pub eval_split: Option<String>,
    /// Held-out data checked for leakage without validating on it (the pipeline's test split):
    /// a BEIR directory and split. Ignored when `eval_data` is given.
    pub held_out: Option<(PathBuf, String)>,
    /// Checkpoint directory (default: `<out>.checkpoints`).
    pub checkpoint_dir: Option<PathBuf>,
    /// Keep the checkpoint directory after a successful run.
    pub keep_checkpoints: bool,
    /// Continue from the newest checkpoint.
    pub resume: bool,
    /// Device to train on.
    pub device: Device,
}

/// A training run with its data loaded.
pub struct TrainJob {
    inputs: TrainJobInputs,
    settings: EngineSettings,
    model: ModelDir,
    data: TrainingData,
    validation: Option<(BeirDataset, String)>,
    held_out: Option<TrainingData>,
}

impl TrainJob {
    /// Checks the settings and reads the model directory and every data set.
    pub fn prepare(inputs: TrainJobInputs, settings: &TrainSettings) -> Result<Self, TrainError> {
        let settings = settings.engine_settings()?;
        let model = ModelDir::open(&inputs.model)?;
        let data = TrainingData::load(&inputs.data, &inputs.split)?;
        let eval_split = match (&inputs.eval_data, &inputs.eval_split) {
            (_, Some(split)) => Some(split.clone()),
            (Some(dir), None) if dir.join("qrels").join("dev.tsv").exists() => Some("dev".into()),
            (Some(_), None) => Some("test".into()),
            (None, None) => None,
        };
        let (validation, held_out) = match (&inputs.eval_data, eval_split, &inputs.held_out) {
            (Some(dir), Some(split), _) => (
                Some((BeirDataset::load(dir, &split)?, split.clone())),
                Some(TrainingData::load(dir, &split)?),
            ),
            (None, _, Some((dir, split))) => (None, Some(TrainingData::load(dir, split)?)),
            _ => (None, None),
        };
        Ok(Self {
            inputs,
            settings,
            model,
            data,
            validation,
            held_out,
        })
    }

    /// The training pairs.
    pub fn data(&self) -> &TrainingData {
        &self.data
    }

    /// The validation set and its split, when validating.
    pub fn validation(&self) -> Option<(&BeirDataset, &str)> {
        self.validation.as_ref().map(|(d, s)| (d, s.as_str()))
    }

    /// The trainer's settings in force.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Trains and writes the tuned model; `on_event` sees every step.
    pub fn run(self, on_event: &mut dyn FnMut(Event<'_>)) -> Result<TrainSummary, TrainError> {
        let mut output = TrainOutput::new(&self.inputs.out);
        if let Some(dir) = &self.inputs.checkpoint_dir {
            output.checkpoints = dir.clone();
        }
        output.resume = self.inputs.resume;
        output.keep_checkpoints = self.inputs.keep_checkpoints;
        let inputs = EngineInputs {
            model: &self.model,
            data: &self.data,
            held_out: self.held_out.as_ref(),
            validation: self.validation.as_ref().map(|(d, _)| d),
            device: &self.inputs.device,
        };
        train(&inputs, &self.settings, &output, on_event)
    }
}
