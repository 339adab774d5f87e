//! Models as the index sees them: an [`attune_model::Encoder`] with the [`ModelIdentity`] its
//! vector spaces bind to. Shared by `attune index` (building) and the server (querying), so both
//! derive identities the same way.

use std::path::Path;

use attune_index::{Embedder, ModelIdentity};
use attune_model::{Device, Encoder, EncoderSettings, ModelDir, ModelError, TextKind};
use sha2::{Digest, Sha256};

/// A model loaded for indexing or querying, with its identity.
pub struct ModelEmbedder {
    encoder: Encoder,
    identity: ModelIdentity,
}

impl ModelEmbedder {
    /// Loads the model directory at `path` on `device`; `max_seq_len` overrides the model's
    /// truncation length (it is part of the identity).
    pub fn load(
        path: &Path,
        device: &Device,
        max_seq_len: Option<usize>,
    ) -> Result<Self, ModelError> {
        let dir = ModelDir::open(path)?;
        let settings = EncoderSettings {
            max_seq_length: max_seq_len,
            ..EncoderSettings::default()
        };
        let encoder = Encoder::load(&dir, device, settings)?;
        let identity = model_identity(&dir, &encoder, path)?;
        Ok(Self { encoder, identity })
    }

    /// The query vector of `text`.
    pub fn embed_query(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        let mut out = self.encoder.embed(&[text], TextKind::Query)?;
        Ok(out.embeddings.remove(0))
    }

    /// The model identity.
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// The encoder and identity, taken apart.
    pub fn into_parts(self) -> (Encoder, ModelIdentity) {
        (self.encoder, self.identity)
    }
}

/// The identity a space binds to: the model directory's fingerprint (weights, tokenizer,
/// config, pooling) plus the prompts and truncation length this encoder applies.
pub fn model_identity(
    dir: &ModelDir,
    encoder: &Encoder,
    source: &Path,
) -> Result<ModelIdentity, ModelError> {
    let mut hasher = Sha256::new();
    hasher.update(dir.fingerprint()?.as_bytes());
    for part in [
        encoder.prefix(TextKind::Document),
        encoder.prefix(TextKind::Query),
        &encoder.max_seq_length().to_string(),
    ] {
        hasher.update(b"\0");
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    Ok(ModelIdentity {
        fingerprint: digest[..16].iter().map(|b| format!("{b:02x}")).collect(),
        dim: encoder.dimension(),
        source: std::fs::canonicalize(source)
            .unwrap_or_else(|_| source.to_path_buf())
            .display()
            .to_string(),
    })
}

impl Embedder for ModelEmbedder {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn embed_documents(
        &mut self,
        texts: &[&str],
    ) -> std::result::Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.encoder.embed(texts, TextKind::Document)?.embeddings)
    }
}
