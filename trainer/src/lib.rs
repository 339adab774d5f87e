//! # attune-trainer
//!
//! Contrastive fine-tuning of a sentence encoder on domain query–document pairs: pairs JSONL or
//! BEIR directories in, a complete sentence-transformers model directory out.
//!
//! It trains the same [`attune_model::BertModel`] that serves, through
//! [`attune_model::Mode::Train`] (differentiable layer norm and softmax, seeded dropout), and
//! writes its output only through [`attune_model::model_dir`], the owner of that format.
//!
//! - [`data`]: training pairs from a pairs JSONL file or a BEIR directory, each with its
//!   `file:line`;
//! - [`check`]: what is wrong with the data (empty texts, duplicates, contradictions, leakage
//!   into the test data, long texts), fatal or not;
//! - [`batches`]: shuffled batches in which no text appears twice;
//! - [`mine`]: hard negatives mined with the base model (exact blocked search, judged positives
//!   and near-positives skipped);
//! - [`lora`]: low-rank adapters on chosen linear layers, merged into the weights on save;
//! - [`loss`]: InfoNCE with in-batch and hard negatives and an optional symmetric term;
//! - [`optim`]: AdamW (no decay on biases and LayerNorm weights), the linear warmup/decay
//!   schedule, and global gradient-norm clipping, as PyTorch and Hugging Face compute them;
//! - [`train`]: the loop: data check, plan, steps, validation keeping the best weights,
//!   checkpoints and resume, and the tuned directory with its training card;
//! - [`checkpoint`]: the checkpoint directory (the only reader and writer of that format);
//! - [`fixtures`]: a synthetic catalogue in BEIR layout for tests and examples.
//!
//! Trainable weights come from [`attune_model::Encoder::load_trainable`].
//!
//! ```
//! use attune_trainer::check::{check, CheckSettings};
//! use attune_trainer::data::TrainingData;
//!
//! # fn main() -> Result<(), attune_trainer::TrainError> {
//! let dir = std::env::temp_dir().join(format!("attune-trainer-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("pairs.jsonl");
//! std::fs::write(
//!     &path,
//!     "{\"query\": \"red running shoes\", \"positive\": \"Nike Pegasus, red\"}\n\
//!      {\"query\": \"usb-c hub\", \"positive\": \"7-port USB-C hub\", \"negatives\": [\"HDMI cable\"]}\n",
//! )
//! .unwrap();
//!
//! let data = TrainingData::load(&path, "train")?;
//! let report = check(&data, None, None, &CheckSettings::default())?;
//! assert_eq!(report.counts.pairs, 2);
//! assert!(!report.is_fatal());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod batches;
pub mod check;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod fixtures;
pub mod lora;
pub mod loss;
pub mod mine;
pub mod optim;
pub mod prompt;
pub mod targets;
pub mod train;

pub use error::{Result, TrainError};
