//! The re-index job: a corpus embedded into a new generation of a collection, one vector space
//! per model, switched atomically. `attune index build` and the pipeline's index stage both run
//! it through [`IndexJob`], with the same [`IndexSettings`].

use std::path::PathBuf;

use attune_index::{
    BuildEvent, BuildMode, BuildReport, BuildSettings, BuildSource, Corpus, HnswParams, IndexError,
    LexicalSettings, SpaceSpec, VectorStore,
};
use attune_model::{Device, Precision};
use serde::{Deserialize, Serialize};

use crate::embedder::{EmbedderError, EncodingChoice, ModelEmbedder};

/// What a user tunes in a re-index job: the flags of `attune index build` and the keys of
/// `[index.build]` in `pipeline.toml` (both map onto this struct; a setting is declared here
/// only). `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct IndexSettings {
    /// What a corpus build does with the collection's documents the corpus lacks (written
    /// through the API, or by an earlier corpus): `merge` keeps them (default), `replace`
    /// deletes them so the collection equals the corpus, and names each one in its summary.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = BuildMode::Merge, value_name = "MODE"))]
    pub mode: BuildMode,
    /// Documents embedded and committed together (a crash loses at most one batch of work).
    /// Default 512.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = IndexSettings::default().batch_size))]
    pub batch_size: usize,
    /// HNSW links per point (M; layer 0 keeps 2M). Default 16, at most 128.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = IndexSettings::default().m))]
    pub m: usize,
    /// HNSW candidate list size while building. Default 100.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = IndexSettings::default().ef_construction))]
    pub ef_construction: usize,
    /// Default HNSW candidate list size for searches. Default 64.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = IndexSettings::default().ef_search))]
    pub ef_search: usize,
    /// Truncate documents to this many tokens (default: the model's max_seq_length). Recorded in
    /// each space's model identity, so queries are embedded at the same length.
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_seq_len: Option<usize>,
    /// Matryoshka: index every space at its first N dimensions, re-normalised (default: the
    /// model's whole vector). Recorded in each space's model identity, so queries are truncated
    /// alike and a space never mixes two widths. Suits models trained with --matryoshka-dims.
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub dimension: Option<usize>,
    /// Precision of the models' products: auto (f32 on the CPU, bf16 on CUDA), f32, bf16, f16
    /// or int8. On the CPU, bf16 runs on AMX tiles and int8 on AVX-512 VNNI where the CPU has
    /// them (about twice f32's speed), else emulated at f32 speed. Recorded in each space's
    /// identity: a space never mixes precisions, and queries are embedded in the space's.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = IndexSettings::default().precision))]
    pub precision: Precision,
    /// Build the collection's lexical space (BM25 over title, text and --lexical-fields, for
    /// the `lexical` and `hybrid:<space>` spaces). Default true; `--lexical false` builds none.
    #[cfg_attr(feature = "cli", arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set))]
    pub lexical: bool,
    /// Top-level metadata fields the lexical space indexes beside title and text (brand, model
    /// number, SKU...), comma-separated. Default none.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_delimiter = ',', value_name = "FIELD,...")
    )]
    pub lexical_fields: Vec<String>,
    /// Stemming language of the lexical space (english, german, french, ..., or none). Default
    /// english.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = IndexSettings::default().lexical_stemmer, value_name = "LANGUAGE"))]
    pub lexical_stemmer: String,
    /// Lowercase tokens in the lexical space. Default true.
    #[cfg_attr(feature = "cli", arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set))]
    pub lexical_lowercase: bool,
    /// Fold accents to ASCII in the lexical space. Default true.
    #[cfg_attr(feature = "cli", arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set))]
    pub lexical_ascii_folding: bool,
}

impl Default for IndexSettings {
    fn default() -> Self {
        let build = BuildSettings::default();
        let lexical = LexicalSettings::default();
        Self {
            mode: BuildMode::Merge,
            batch_size: build.batch_size,
            m: build.hnsw.m,
            ef_construction: build.hnsw.ef_construction,
            ef_search: build.hnsw.ef_search,
            max_seq_len: None,
            dimension: None,
            precision: Precision::Auto,
            lexical: true,
            lexical_fields: lexical.fields,
            lexical_stemmer: lexical.stemmer,
            lexical_lowercase: lexical.lowercase,
            lexical_ascii_folding: lexical.ascii_folding,
        }
    }
}

impl IndexSettings {
    /// The index engine's settings.
    pub fn build_settings(&self) -> BuildSettings {
        BuildSettings {
            batch_size: self.batch_size,
            hnsw: HnswParams {
                m: self.m,
                ef_construction: self.ef_construction,
                ef_search: self.ef_search,
            },
            lexical: self.lexical.then(|| LexicalSettings {
                fields: self.lexical_fields.clone(),
                lowercase: self.lexical_lowercase,
                ascii_folding: self.lexical_ascii_folding,
                stemmer: self.lexical_stemmer.clone(),
            }),
        }
    }
}

/// A vector space to build and the model directory that embeds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceModel {
    /// Space name (`base`, `tuned`, ...).
    pub space: String,
    /// Model directory.
    pub model: PathBuf,
}

/// What a re-index job is wired with (paths and names, not settings; the store is given to
/// [`IndexJob::run`]).
#[derive(Debug, Clone)]
pub struct IndexInputs {
    /// Collection name.
    pub collection: String,
    /// Corpus: JSONL or a BEIR directory; `None` re-embeds the collection's own documents (it
    /// must exist).
    pub corpus: Option<PathBuf>,
    /// The spaces to build.
    pub spaces: Vec<SpaceModel>,
    /// Device the models run on.
    pub device: Device,
}

/// Why a re-index job failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexJobError {
    /// The store, the corpus or the settings were refused.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A space's model could not be loaded.
    #[error("space {space:?}: cannot load model {}: {source}", model.display())]
    Model {
        /// The space.
        space: String,
        /// Its model directory.
        model: PathBuf,
        /// Why.
        source: Box<EmbedderError>,
    },
    /// The corpus holds no document.
    #[error("{}: no documents", .0.display())]
    EmptyCorpus(PathBuf),
}

/// A re-index job whose corpus is read and checked and whose models are loaded; nothing has
/// been written yet.
pub struct IndexJob {
    inputs: IndexInputs,
    settings: IndexSettings,
    corpus: Option<Corpus>,
    embedders: Vec<(String, ModelEmbedder)>,
}

impl IndexJob {
    /// Checks the settings, reads the whole corpus and loads every space's model, before the
    /// store is touched (bad input leaves the store as it was).
    pub fn prepare(inputs: IndexInputs, settings: IndexSettings) -> Result<Self, IndexJobError> {
        settings.build_settings().hnsw.validate()?;
        let corpus = match &inputs.corpus {
            Some(path) => {
                let corpus = Corpus::read(path)?;
                if corpus.documents.is_empty() {
                    return Err(IndexJobError::EmptyCorpus(corpus.path));
                }
                Some(corpus)
            }
            None => None,
        };
        let mut embedders = Vec::new();
        for SpaceModel { space, model } in &inputs.spaces {
            let choice = EncodingChoice {
                max_seq_len: settings.max_seq_len,
                dimension: settings.dimension,
                precision: settings.precision,
            };
            let embedder =
                ModelEmbedder::load_with(model, &inputs.device, &choice).map_err(|source| {
                    IndexJobError::Model {
                        space: space.clone(),
                        model: model.clone(),
                        source: Box::new(source),
                    }
                })?;
            embedders.push((space.clone(), embedder));
        }
        Ok(Self {
            inputs,
            settings,
            corpus,
            embedders,
        })
    }

    /// The corpus as read (its duplicate ids and empty documents, for reporting); `None` when
    /// the collection's own documents are re-embedded.
    pub fn corpus(&self) -> Option<&Corpus> {
        self.corpus.as_ref()
    }

    /// Embeds what changed into a new generation of `store` and switches to it; `progress` sees
    /// each step. Writes acknowledged by a server while the job runs are kept (see
    /// [`VectorStore::build`]).
    pub fn run(
        mut self,
        store: &dyn VectorStore,
        progress: &mut dyn FnMut(BuildEvent),
    ) -> Result<BuildReport, IndexJobError> {
        let mut spaces: Vec<SpaceSpec<'_>> = self
            .embedders
            .iter_mut()
            .map(|(name, embedder)| SpaceSpec {
                name: name.clone(),
                embedder,
            })
            .collect();
        let source = match &self.corpus {
            Some(corpus) => BuildSource::Corpus {
                corpus,
                mode: self.settings.mode,
            },
            None => BuildSource::Collection,
        };
        Ok(store.build(
            &self.inputs.collection,
            source,
            &mut spaces,
            &self.settings.build_settings(),
            progress,
        )?)
    }
}
