//! What a vector space is bound to: the model that embeds its documents and queries, and how it
//! encodes them. Written into the store's manifests with every space; read back by every loader
//! (the server, `attune index search`, a rebuild), which rebuilds the same encoder from it.

use serde::{Deserialize, Serialize};

/// The identity of the model behind a space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// Hex digest over the model's weights, tokenizer, pooling, prompts and truncation length:
    /// two identities with equal fingerprints embed every text alike.
    pub fingerprint: String,
    /// Embedding dimension.
    pub dim: usize,
    /// Where the model was loaded from when the space was built (informative; not compared).
    #[serde(default)]
    pub source: String,
    /// How texts were encoded: what a loader needs to rebuild the same encoder from the model
    /// directory. `None` in identities written before attune recorded it; loaders recover it from
    /// the fingerprint (see `attune_app::ModelEmbedder::for_identity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
}

/// The encoder settings that change a space's vectors besides the model directory itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encoding {
    /// Truncation length in tokens, special tokens included.
    pub max_seq_len: usize,
    /// Prepended to every query before tokenizing (may be empty).
    pub query_prompt: String,
    /// Prepended to every document before tokenizing (may be empty).
    pub document_prompt: String,
    /// Matryoshka: the leading dimensions kept, re-normalised (`None`: the model's whole
    /// vector; absent in identities written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension: Option<usize>,
    /// The precision of the model's products when narrower than f32 (`"bf16"`, `"f16"`;
    /// `None`: f32, and absent in identities written before it existed). Vectors of two
    /// precisions differ, so a space holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

impl ModelIdentity {
    /// True when vectors of `other` can be compared with vectors of `self`.
    pub fn same_model(&self, other: &ModelIdentity) -> bool {
        self.fingerprint == other.fingerprint && self.dim == other.dim
    }
}
