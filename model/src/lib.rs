//! # attune-model
//!
//! Sentence-embedding models for attune: one encoder for serving and training.
//!
//! - [`ModelDir`] opens a sentence-transformers directory (the only code that reads or writes one).
//! - [`BertModel`] is a BERT encoder whose forward pass takes a [`Mode`]: fused kernels for
//!   inference, differentiable layer norm and seeded dropout for training, and LoRA slots on
//!   every linear layer.
//! - [`Encoder`] tokenizes as the model directory says (not as `tokenizer.json`'s own padding
//!   and truncation say), batches by token length, pools and normalizes.
//!
//! ```
//! use attune_model::{fixtures, DeviceRequest, Encoder, EncoderSettings, ModelDir, TextKind};
//!
//! # fn main() -> Result<(), attune_model::ModelError> {
//! let dir = std::env::temp_dir().join(format!("attune-doc-{}", std::process::id()));
//! fixtures::write_random_bert(&dir, &fixtures::RandomBertSpec::default())?;
//!
//! let model = ModelDir::open(&dir)?;
//! let device = DeviceRequest::Cpu.open()?;
//! let encoder = Encoder::load(&model, &device, EncoderSettings::default())?;
//! let out = encoder.embed(&["red running shoes", ""], TextKind::Query)?;
//! assert_eq!(out.embeddings.len(), 2);
//! assert_eq!(out.embeddings[0].len(), encoder.dimension());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod bert;
pub mod config;
pub mod dense;
pub mod device;
pub mod encoder;
pub mod error;
pub mod family;
pub mod fixtures;
pub mod int8;
pub mod kernels;
pub mod layers;
pub mod model_dir;
pub mod modernbert;
pub mod packed;
pub mod pooling;
mod side_by_side;
pub mod soft_prompt;
pub mod tokenize;
pub mod train_attention;
pub mod train_kernels;

pub use bert::{BertModel, LinearTarget};
pub use candle_core::Device;
pub use config::{Architecture, BertConfig, BertFlavor, PoolingConfig, PoolingMode};
pub use dense::{DenseActivation, DenseConfig, DenseLayer};
pub use device::{
    device_name, flush_denormals, set_flush_denormals_on_this_thread, DeviceRequest, Precision,
};
pub use encoder::{plan_batches, EmbedOutput, Encoder, EncoderSettings, TextKind};
pub use error::{ModelError, Result};
pub use family::{
    register_family, FamilyConfig, InputConventions, InputEmbeddingHook, ModelFamily,
    TransformerModel,
};
pub use layers::{LoraAdapter, Mode, TrainContext};
pub use model_dir::{DenseModule, ModelDir, WeightsFile};
pub use modernbert::{ModernBertConfig, ModernBertModel};
pub use soft_prompt::SoftPrompt;
pub use tokenize::{TextTokenizer, TokenizedText};
