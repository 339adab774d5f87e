//! Models as the index sees them: an [`Encoder`] with the [`ModelIdentity`] its vector spaces
//! bind to. The single owner of how an identity is derived and of how a loader rebuilds the
//! encoder a space was built with.
//!
//! An identity's fingerprint hashes the model directory's fingerprint (weights, tokenizer,
//! config, pooling), the document and query prompts, the truncation length and (when set) the
//! Matryoshka dimension and the products' precision (when narrower than f32). Since identities record those explicitly ([`Encoding`]), a loader applies them instead of the model's
//! defaults, so a space built with `--max-seq-len 128` is served at 128 tokens. Identities written
//! before that carry only the fingerprint; [`ModelEmbedder::for_identity`] recovers their encoding
//! by trying the model's prompts at every truncation length it admits.

use std::path::{Path, PathBuf};

use attune_index::{Embedder, Encoding, ModelIdentity};
use attune_model::{Device, Encoder, EncoderSettings, ModelDir, ModelError, Precision, TextKind};
use sha2::{Digest, Sha256};

/// Why a model could not be loaded for a space.
#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    /// The model directory could not be read or loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The directory holds another model than the one the space was built with.
    #[error(
        "the space was built with model {expected} (loaded from {built_from}), but the vectors \
         given come from model {found} ({path} at the space's encoding)"
    )]
    OtherModel {
        /// The directory loaded.
        path: PathBuf,
        /// Where the space's model was loaded from at build time.
        built_from: String,
        /// The space's fingerprint.
        expected: String,
        /// The directory's fingerprint at the space's encoding (or its default one).
        found: String,
    },
}

/// What a space chooses about its model's encoding beyond the directory's defaults; every
/// choice is recorded in the space's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodingChoice {
    /// Truncation length in tokens (default: the model's max_seq_length).
    pub max_seq_len: Option<usize>,
    /// Matryoshka: keep the first N dimensions, re-normalised (default: the whole vector).
    pub dimension: Option<usize>,
    /// Precision of the transformer's products (default auto: f32 on the CPU, bf16 on CUDA).
    /// bf16 on the CPU runs on AMX tiles where the CPU has them ([`attune_model::packed`]); int8
    /// on AVX-512 VNNI ([`attune_model::int8`]).
    pub precision: Precision,
}

/// A model loaded for indexing or querying, with its identity.
pub struct ModelEmbedder {
    encoder: Encoder,
    identity: ModelIdentity,
}

impl std::fmt::Debug for ModelEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEmbedder")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ModelEmbedder {
    /// Loads the model directory at `path` on `device` to build a space; `max_seq_len`
    /// overrides the model's truncation length in tokens (it becomes part of the identity).
    pub fn load(
        path: &Path,
        device: &Device,
        max_seq_len: Option<usize>,
    ) -> Result<Self, EmbedderError> {
        let choice = EncodingChoice {
            max_seq_len,
            ..EncodingChoice::default()
        };
        Self::load_with(path, device, &choice)
    }

    /// [`ModelEmbedder::load`] with every choice that changes a space's vectors; each becomes
    /// part of the identity.
    pub fn load_with(
        path: &Path,
        device: &Device,
        choice: &EncodingChoice,
    ) -> Result<Self, EmbedderError> {
        let dir = ModelDir::open(path)?;
        let settings = EncoderSettings {
            max_seq_length: choice.max_seq_len,
            truncate_dim: choice.dimension,
            precision: choice.precision,
            ..EncoderSettings::default()
        };
        let encoder = Encoder::load(&dir, device, settings)?;
        let identity = model_identity(&dir, &encoder, path)?;
        Ok(Self { encoder, identity })
    }

    /// Loads the model directory at `path` as the model of a space whose recorded identity is
    /// `space`: the encoder gets the space's truncation length and prompts (recovered from the
    /// fingerprint for identities written before they were recorded). The returned embedder's
    /// identity is `space`'s, upgraded with the encoding; a directory holding another model is
    /// [`EmbedderError::OtherModel`].
    pub fn for_identity(
        path: &Path,
        device: &Device,
        space: &ModelIdentity,
    ) -> Result<Self, EmbedderError> {
        let dir = ModelDir::open(path)?;
        let dir_fingerprint = dir.fingerprint()?;
        let encoding =
            match &space.encoding {
                Some(encoding) => encoding.clone(),
                None => recover_encoding(&dir, &dir_fingerprint, &space.fingerprint).ok_or_else(
                    || EmbedderError::OtherModel {
                        path: path.to_path_buf(),
                        built_from: space.source.clone(),
                        expected: space.fingerprint.clone(),
                        found: fingerprint(&dir_fingerprint, &default_encoding(&dir)),
                    },
                )?,
            };
        let found = fingerprint(&dir_fingerprint, &encoding);
        if found != space.fingerprint {
            return Err(EmbedderError::OtherModel {
                path: path.to_path_buf(),
                built_from: space.source.clone(),
                expected: space.fingerprint.clone(),
                found,
            });
        }
        let precision = match &encoding.precision {
            Some(name) => name.parse::<Precision>()?,
            None => Precision::F32,
        };
        let settings = EncoderSettings {
            max_seq_length: Some(encoding.max_seq_len),
            query_prefix: Some(encoding.query_prompt.clone()),
            document_prefix: Some(encoding.document_prompt.clone()),
            truncate_dim: encoding.dimension,
            precision,
            ..EncoderSettings::default()
        };
        let encoder = Encoder::load(&dir, device, settings)?;
        let identity = ModelIdentity {
            encoding: Some(encoding),
            ..space.clone()
        };
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

/// The identity a space binds to when `encoder` (loaded from `dir`, found at `source`) embeds
/// it: the fingerprint over the directory and the encoder's prompts and truncation length, with
/// those recorded explicitly.
pub fn model_identity(
    dir: &ModelDir,
    encoder: &Encoder,
    source: &Path,
) -> Result<ModelIdentity, ModelError> {
    let encoding = Encoding {
        max_seq_len: encoder.max_seq_length(),
        query_prompt: encoder.prefix(TextKind::Query).to_string(),
        document_prompt: encoder.prefix(TextKind::Document).to_string(),
        dimension: encoder.settings().truncate_dim,
        precision: encoder.narrowed_precision().map(|p| p.to_string()),
    };
    Ok(ModelIdentity {
        fingerprint: fingerprint(&dir.fingerprint()?, &encoding),
        dim: encoder.dimension(),
        source: std::fs::canonicalize(source)
            .unwrap_or_else(|_| source.to_path_buf())
            .display()
            .to_string(),
        encoding: Some(encoding),
    })
}

/// The identity fingerprint: 32 hex digits of SHA-256 over the directory fingerprint, the
/// document prompt, the query prompt, the truncation length and, only when set, the Matryoshka
/// dimension and, only when narrower than f32, the products' precision and its quantization
/// recipe after the first (that order and layout are what stores on disk hold; changing them
/// orphans every built space).
fn fingerprint(dir_fingerprint: &str, encoding: &Encoding) -> String {
    let recipe = encoding
        .precision
        .as_ref()
        .and_then(|p| p.parse::<Precision>().ok())
        .and_then(Precision::recipe_version);
    fingerprint_under(dir_fingerprint, encoding, recipe)
}

/// [`fingerprint`] with the precision's quantization recipe `recipe` (recipe 1 and `None` add
/// nothing).
fn fingerprint_under(dir_fingerprint: &str, encoding: &Encoding, recipe: Option<u32>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(dir_fingerprint.as_bytes());
    for part in [
        encoding.document_prompt.as_str(),
        encoding.query_prompt.as_str(),
        &encoding.max_seq_len.to_string(),
    ] {
        hasher.update(b"\0");
        hasher.update(part.as_bytes());
    }
    if let Some(dimension) = encoding.dimension {
        hasher.update(format!("\0dimension={dimension}").as_bytes());
    }
    if let Some(precision) = &encoding.precision {
        hasher.update(format!("\0precision={precision}").as_bytes());
        // int8 spaces of recipe 1 were fingerprinted without it.
        if let Some(recipe) = recipe.filter(|&v| v > 1) {
            hasher.update(format!("\0recipe={recipe}").as_bytes());
        }
    }
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The encoding the model directory gives by default (what `attune index build` used before
/// identities recorded it, unless `--max-seq-len` was set).
fn default_encoding(dir: &ModelDir) -> Encoding {
    let prompt = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| dir.prompts.get(*n).cloned())
            .unwrap_or_default()
    };
    Encoding {
        max_seq_len: dir.max_seq_length,
        query_prompt: prompt(&["query"]),
        document_prompt: prompt(&["document", "passage", "corpus"]),
        dimension: None,
        precision: None,
    }
}

/// The encoding of an identity written before encodings were recorded: the model's own prompts
/// (the only ones `attune index build` ever used) at the default truncation length, or at
/// whichever admissible length (2..=max_position_embeddings) reproduces `target`.
fn recover_encoding(dir: &ModelDir, dir_fingerprint: &str, target: &str) -> Option<Encoding> {
    let default = default_encoding(dir);
    if fingerprint(dir_fingerprint, &default) == target {
        return Some(default);
    }
    (2..=dir.architecture.max_position_embeddings())
        .map(|max_seq_len| Encoding {
            max_seq_len,
            ..default.clone()
        })
        .find(|encoding| fingerprint(dir_fingerprint, encoding) == target)
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

#[cfg(test)]
mod tests {
    use attune_model::fixtures::{write_random_bert, RandomBertSpec};

    use super::*;

    fn model(dir: &Path, seed: u64) -> PathBuf {
        let path = dir.join(format!("model-{seed}"));
        let spec = RandomBertSpec {
            seed,
            ..RandomBertSpec::default()
        };
        write_random_bert(&path, &spec).unwrap();
        path
    }

    #[test]
    fn a_space_is_served_at_the_length_it_was_built_with() {
        let tmp = tempfile::tempdir().unwrap();
        let path = model(tmp.path(), 1);
        let built = ModelEmbedder::load(&path, &Device::Cpu, Some(7)).unwrap();
        let identity = built.identity().clone();
        assert_eq!(identity.encoding.as_ref().unwrap().max_seq_len, 7);
        let served = ModelEmbedder::for_identity(&path, &Device::Cpu, &identity).unwrap();
        assert_eq!(served.encoder().max_seq_length(), 7);
        assert_eq!(served.identity(), &identity);
        let long = "red shoe ".repeat(20);
        assert_eq!(
            served.embed_query(&long).unwrap(),
            built.embed_query(&long).unwrap()
        );
        // The model's default length is another identity.
        let default = ModelEmbedder::load(&path, &Device::Cpu, None).unwrap();
        assert!(!default.identity().same_model(&identity));
    }

    #[test]
    fn identities_written_before_encodings_were_recorded_are_upgraded() {
        let tmp = tempfile::tempdir().unwrap();
        let path = model(tmp.path(), 1);
        for length in [None, Some(9)] {
            let built = ModelEmbedder::load(&path, &Device::Cpu, length).unwrap();
            // What older stores hold: the same fingerprint, no encoding.
            let old = ModelIdentity {
                encoding: None,
                ..built.identity().clone()
            };
            let json = serde_json::to_string(&old).unwrap();
            assert!(!json.contains("encoding"), "{json}");
            let served = ModelEmbedder::for_identity(&path, &Device::Cpu, &old).unwrap();
            assert_eq!(served.identity(), built.identity());
            assert_eq!(
                served.encoder().max_seq_length(),
                built.encoder().max_seq_length()
            );
        }
    }

    #[test]
    fn another_model_is_refused_with_both_fingerprints() {
        let tmp = tempfile::tempdir().unwrap();
        let built = ModelEmbedder::load(&model(tmp.path(), 1), &Device::Cpu, Some(9)).unwrap();
        let other = model(tmp.path(), 2);
        for identity in [
            built.identity().clone(),
            ModelIdentity {
                encoding: None,
                ..built.identity().clone()
            },
        ] {
            let err = ModelEmbedder::for_identity(&other, &Device::Cpu, &identity).unwrap_err();
            assert!(matches!(err, EmbedderError::OtherModel { .. }), "{err}");
            assert!(err.to_string().contains(&identity.fingerprint), "{err}");
        }
    }

    #[test]
    fn a_matryoshka_space_is_its_own_identity_and_serves_truncated_unit_vectors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = model(tmp.path(), 1);
        let full = ModelEmbedder::load(&path, &Device::Cpu, None).unwrap();
        let built = ModelEmbedder::load_with(&path, &Device::Cpu, &at_dimension(Some(8))).unwrap();
        let identity = built.identity().clone();
        assert_eq!(identity.dim, 8);
        assert_eq!(identity.encoding.as_ref().unwrap().dimension, Some(8));
        assert!(!identity.same_model(full.identity()));
        // Without a dimension the identity (and its fingerprint) is what it always was.
        assert!(!serde_json::to_string(full.identity())
            .unwrap()
            .contains("dimension"));
        let served = ModelEmbedder::for_identity(&path, &Device::Cpu, &identity).unwrap();
        assert_eq!(served.identity(), &identity);
        let text = "red running shoes";
        let (short, long) = (
            served.embed_query(text).unwrap(),
            full.embed_query(text).unwrap(),
        );
        assert_eq!(short.len(), 8);
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm(&short) - 1.0).abs() < 1e-5);
        // The prefix of the full vector, re-normalised.
        let prefix_norm = norm(&long[..8]);
        for (a, b) in short.iter().zip(&long[..8]) {
            assert!((a - b / prefix_norm).abs() < 1e-5, "{short:?} vs {long:?}");
        }
        let too_wide = ModelEmbedder::load_with(&path, &Device::Cpu, &at_dimension(Some(10_000)));
        assert!(too_wide.unwrap_err().to_string().contains("truncate_dim"));
    }

    fn at_dimension(dimension: Option<usize>) -> EncodingChoice {
        EncodingChoice {
            dimension,
            ..EncodingChoice::default()
        }
    }

    /// bf16 products are part of the identity: another fingerprint than f32's, recorded, and
    /// applied when a server reloads the space (so queries are embedded as the documents were).
    #[test]
    fn precision_is_part_of_the_identity_and_reloads() {
        let tmp = tempfile::tempdir().unwrap();
        let path = model(tmp.path(), 1);
        let f32_space = ModelEmbedder::load(&path, &Device::Cpu, None).unwrap();
        let choice = EncodingChoice {
            precision: Precision::Bf16,
            ..EncodingChoice::default()
        };
        let built = ModelEmbedder::load_with(&path, &Device::Cpu, &choice).unwrap();
        let identity = built.identity().clone();
        assert_eq!(
            identity.encoding.as_ref().unwrap().precision.as_deref(),
            Some("bf16")
        );
        assert!(!identity.same_model(f32_space.identity()));
        // f32 identities are what they were before precision was recorded.
        assert!(!serde_json::to_string(f32_space.identity())
            .unwrap()
            .contains("precision"));
        let served = ModelEmbedder::for_identity(&path, &Device::Cpu, &identity).unwrap();
        let query = "a query about cells";
        let from_build = built.embed_query(query).unwrap();
        assert_eq!(served.embed_query(query).unwrap(), from_build);
        assert_ne!(f32_space.embed_query(query).unwrap(), from_build);
        // The fingerprint covers the precision: an identity whose recorded precision was
        // changed no longer matches the directory.
        let mut changed = identity.clone();
        changed.encoding.as_mut().unwrap().precision = Some("f16".into());
        let err = ModelEmbedder::for_identity(&path, &Device::Cpu, &changed).unwrap_err();
        assert!(matches!(err, EmbedderError::OtherModel { .. }), "{err}");
    }

    /// int8 is a precision of its own: recorded, another space than bf16's and f32's, and
    /// applied again when a server reloads the space.
    #[test]
    fn int8_spaces_record_their_precision_and_reload_in_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = model(tmp.path(), 1);
        let load = |precision| {
            let choice = EncodingChoice {
                precision,
                ..EncodingChoice::default()
            };
            ModelEmbedder::load_with(&path, &Device::Cpu, &choice).unwrap()
        };
        let (int8, bf16, f32_space) = (
            load(Precision::Int8),
            load(Precision::Bf16),
            load(Precision::F32),
        );
        let identity = int8.identity().clone();
        assert_eq!(
            identity.encoding.as_ref().unwrap().precision.as_deref(),
            Some("int8")
        );
        assert!(!identity.same_model(bf16.identity()));
        assert!(!identity.same_model(f32_space.identity()));
        let served = ModelEmbedder::for_identity(&path, &Device::Cpu, &identity).unwrap();
        let query = "a query about cells";
        let from_build = int8.embed_query(query).unwrap();
        assert_eq!(served.embed_query(query).unwrap(), from_build);
        assert_ne!(f32_space.embed_query(query).unwrap(), from_build);
        // A space built under the first int8 recipe is another space: its vectors would not
        // match today's queries.
        let dir_fingerprint = ModelDir::open(&path).unwrap().fingerprint().unwrap();
        let encoding = identity.encoding.clone().unwrap();
        assert_eq!(
            fingerprint_under(
                &dir_fingerprint,
                &encoding,
                Precision::Int8.recipe_version()
            ),
            identity.fingerprint
        );
        let first_recipe = ModelIdentity {
            fingerprint: fingerprint_under(&dir_fingerprint, &encoding, Some(1)),
            ..identity.clone()
        };
        let err = ModelEmbedder::for_identity(&path, &Device::Cpu, &first_recipe).unwrap_err();
        assert!(matches!(err, EmbedderError::OtherModel { .. }), "{err}");
    }
}
