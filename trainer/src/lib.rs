//! # attune-trainer
//!
//! Contrastive fine-tuning of a sentence encoder on domain query–document pairs: pairs JSONL or
//! BEIR directories in, a complete sentence-transformers model directory out.
//!
//! It trains the same [`attune_model::BertModel`] that serves, through
//! [`attune_model::Mode::Train`] (differentiable layer norm and softmax, seeded dropout), and
//! writes its output only through [`attune_model::model_dir`], the owner of that format.
//!
//! The training loop itself (InfoNCE with in-batch and hard negatives, AdamW with warmup and
//! decay, checkpoints and resume, LoRA) is tracked by the trainer issue; this crate holds the
//! place and the dependency edges in the workspace until then.
