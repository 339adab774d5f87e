//! The sentence-transformers model directory: the only module that reads or writes one.
//!
//! Layout (as sentence-transformers saves it):
//! ```text
//! DIR/modules.json                      module list: Transformer, Pooling, Normalize
//! DIR/config.json                       transformer hyper-parameters (in the Transformer module's path)
//! DIR/tokenizer.json                    fast tokenizer (its own padding/truncation are overridden)
//! DIR/model.safetensors | pytorch_model.bin
//! DIR/sentence_bert_config.json         max_seq_length, do_lower_case (6.x: length in
//!                                       tokenizer_config.json's model_max_length instead)
//! DIR/1_Pooling/config.json             pooling modes (legacy booleans, or 6.x's pooling_mode)
//! DIR/2_Dense/config.json, weights      optional projections after pooling
//! DIR/config_sentence_transformers.json optional prompts ({"prompts": {"query": "query: "}})
//! DIR/soft_prompt.safetensors           optional learned soft prompt (attune's prompt tuning;
//!                                       sentence-transformers does not read it)
//! ```
//!
//! Both the classic module type paths (`sentence_transformers.models.Pooling`) and those of
//! sentence-transformers 6.x (`sentence_transformers.sentence_transformer.modules.pooling.Pooling`)
//! are read; directories are written in the classic layout, which 6.x loads unchanged.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::config::{Architecture, PoolingConfig, PoolingMode};
use crate::dense::{DenseActivation, DenseConfig, DenseLayer};
use crate::error::{ModelError, Result};
use crate::soft_prompt::SoftPrompt;

/// File names inside a model directory.
pub mod files {
    /// sentence-transformers' module list.
    pub const MODULES: &str = "modules.json";
    /// Transformer hyper-parameters.
    pub const CONFIG: &str = "config.json";
    /// Fast tokenizer.
    pub const TOKENIZER: &str = "tokenizer.json";
    /// Weights in safetensors format (preferred).
    pub const SAFETENSORS: &str = "model.safetensors";
    /// Weights as a PyTorch pickle (used only when no safetensors file exists).
    pub const PYTORCH_BIN: &str = "pytorch_model.bin";
    /// `max_seq_length` and `do_lower_case`.
    pub const SENTENCE_BERT_CONFIG: &str = "sentence_bert_config.json";
    /// Pooling configuration, inside the Pooling module's folder.
    pub const POOLING_CONFIG: &str = "config.json";
    /// Prompts and library versions.
    pub const ST_CONFIG: &str = "config_sentence_transformers.json";
    /// Tokenizer settings; sentence-transformers 6.x keeps `model_max_length` here.
    pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
}

/// Tokenizer files besides `tokenizer.json` that Hugging Face loaders read; a derived model
/// directory carries them over verbatim.
const TOKENIZER_COMPANIONS: [&str; 3] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

const TRANSFORMER_MODULE: &str = "sentence_transformers.models.Transformer";
const POOLING_MODULE: &str = "sentence_transformers.models.Pooling";
const DENSE_MODULE: &str = "sentence_transformers.models.Dense";
const NORMALIZE_MODULE: &str = "sentence_transformers.models.Normalize";
const SUPPORTED_MODULES: &str = "Transformer, Pooling, Dense, Normalize";

/// The modules attune implements, in the order a directory must list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ModuleKind {
    Transformer,
    Pooling,
    Dense,
    Normalize,
}

/// Module type paths as sentence-transformers writes them: classic (up to 5.x) and 6.x.
const MODULE_TYPES: [(&str, ModuleKind); 8] = [
    (TRANSFORMER_MODULE, ModuleKind::Transformer),
    (
        "sentence_transformers.base.modules.transformer.Transformer",
        ModuleKind::Transformer,
    ),
    (POOLING_MODULE, ModuleKind::Pooling),
    (
        "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        ModuleKind::Pooling,
    ),
    (DENSE_MODULE, ModuleKind::Dense),
    (
        "sentence_transformers.base.modules.dense.Dense",
        ModuleKind::Dense,
    ),
    (NORMALIZE_MODULE, ModuleKind::Normalize),
    (
        "sentence_transformers.base.modules.normalize.Normalize",
        ModuleKind::Normalize,
    ),
];

/// A `Dense` module of a model directory (see [`crate::dense`]).
#[derive(Debug, Clone)]
pub struct DenseModule {
    /// Its folder (`DIR/2_Dense`).
    pub dir: PathBuf,
    /// Its `config.json`.
    pub config: DenseConfig,
    /// Its activation, parsed from the config.
    pub activation: DenseActivation,
    /// Its weights (`linear.weight`, `linear.bias`).
    pub weights: WeightsFile,
}

/// Where the weights are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsFile {
    /// `model.safetensors` (memory-mapped).
    Safetensors(PathBuf),
    /// `pytorch_model.bin`.
    PyTorch(PathBuf),
}

impl WeightsFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            WeightsFile::Safetensors(p) | WeightsFile::PyTorch(p) => p,
        }
    }
}

/// An opened, validated model directory. Cheap to clone; weights are read by [`ModelDir::var_builder`].
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory.
    pub root: PathBuf,
    /// The transformer's architecture and hyper-parameters.
    pub architecture: Architecture,
    /// Pooling modes and their input width.
    pub pooling: PoolingConfig,
    /// Pooling modes in concatenation order (validated from `pooling`).
    pub pooling_modes: Vec<PoolingMode>,
    /// Dense projections after pooling, in order (most models have none).
    pub dense: Vec<DenseModule>,
    /// Whether the Normalize module follows pooling (unit-length output).
    pub normalize: bool,
    /// Longest input in tokens (special tokens included); longer inputs are truncated.
    pub max_seq_length: usize,
    /// Lower-case texts before tokenizing (sentence-transformers' `do_lower_case`).
    pub do_lower_case: bool,
    /// Named prompts from `config_sentence_transformers.json` (e.g. `query` → `"query: "`).
    pub prompts: BTreeMap<String, String>,
    /// The weights file.
    pub weights: WeightsFile,
    /// The tokenizer file.
    pub tokenizer_path: PathBuf,
    /// The transformer's `config.json`.
    pub config_path: PathBuf,
    /// A learned soft prompt ([`crate::soft_prompt::FILE`]), when the model was prompt-tuned.
    pub soft_prompt: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `sentence_bert_config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentenceBertConfig {
    /// Longest input in tokens.
    pub max_seq_length: Option<usize>,
    /// Lower-case before tokenizing.
    #[serde(default)]
    pub do_lower_case: bool,
    /// sentence-transformers 6.x: what the transformer computes; only `feature-extraction`
    /// (token embeddings) makes sentence embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformer_task: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct StConfig {
    #[serde(default)]
    prompts: BTreeMap<String, String>,
    /// `SentenceTransformer`, or another kind of model (`SparseEncoder`, `CrossEncoder`).
    model_type: Option<String>,
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            what: what.to_string(),
        }),
        Err(e) => Err(ModelError::io(path, e)),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = read_text(path, what)?;
    serde_json::from_str(&text).map_err(|source| ModelError::InvalidJson {
        path: path.to_path_buf(),
        source,
    })
}

/// Where `modules.json` puts each module.
struct ModuleLayout {
    transformer: PathBuf,
    pooling: Option<PathBuf>,
    dense: Vec<PathBuf>,
    normalize: bool,
}

/// Reads `modules.json`: one Transformer, then at most one Pooling, any Dense modules and at
/// most one Normalize, in that order, under classic or 6.x type paths.
fn read_module_layout(root: &Path, modules_path: &Path) -> Result<ModuleLayout> {
    let modules: Vec<ModuleEntry> = read_json(modules_path, "module list")?;
    let order_error = |problem: String| ModelError::InvalidField {
        path: modules_path.to_path_buf(),
        field: "type".to_string(),
        problem,
    };
    let mut layout = ModuleLayout {
        transformer: PathBuf::new(),
        pooling: None,
        dense: Vec::new(),
        normalize: false,
    };
    let mut last: Option<ModuleKind> = None;
    for m in &modules {
        let Some(kind) = MODULE_TYPES
            .iter()
            .find(|(name, _)| *name == m.kind)
            .map(|(_, kind)| *kind)
        else {
            return Err(ModelError::UnsupportedModule {
                path: modules_path.to_path_buf(),
                module: m.kind.clone(),
                supported: SUPPORTED_MODULES.to_string(),
            });
        };
        let repeated = last == Some(kind) && kind != ModuleKind::Dense;
        if last.is_some_and(|l| l > kind)
            || repeated
            || (last.is_none()) != (kind == ModuleKind::Transformer)
        {
            return Err(order_error(format!(
                "`{}` is out of place: modules must be one Transformer, then Pooling, Dense \
                 modules and Normalize, in that order",
                m.kind
            )));
        }
        let path = root.join(&m.path);
        match kind {
            ModuleKind::Transformer => layout.transformer = path,
            ModuleKind::Pooling => layout.pooling = Some(path),
            ModuleKind::Dense => layout.dense.push(path),
            ModuleKind::Normalize => layout.normalize = true,
        }
        last = Some(kind);
    }
    if last.is_none() {
        return Err(order_error(format!(
            "no `{TRANSFORMER_MODULE}` module is listed"
        )));
    }
    Ok(layout)
}

/// sentence-transformers 6.x's pooling config.
#[derive(Debug, Deserialize)]
struct PoolingConfigV6 {
    embedding_dimension: usize,
    pooling_mode: serde_json::Value,
    #[serde(default = "default_true")]
    include_prompt: bool,
}

fn default_true() -> bool {
    true
}

/// Reads `1_Pooling/config.json` in either layout: legacy `pooling_mode_*` booleans, or 6.x's
/// `pooling_mode` (one name or a list, concatenated in list order).
fn read_pooling_config(path: &Path) -> Result<PoolingConfig> {
    let text = read_text(path, "pooling config")?;
    let invalid_json = |source| ModelError::InvalidJson {
        path: path.to_path_buf(),
        source,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(invalid_json)?;
    let field_error = |field: &str, problem: String| ModelError::InvalidField {
        path: path.to_path_buf(),
        field: field.to_string(),
        problem,
    };
    let config = if value.get("pooling_mode").is_none() {
        serde_json::from_str::<PoolingConfig>(&text).map_err(invalid_json)?
    } else {
        let v6: PoolingConfigV6 = serde_json::from_str(&text).map_err(invalid_json)?;
        let names: Vec<String> = match &v6.pooling_mode {
            serde_json::Value::String(name) => vec![name.clone()],
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| field_error("pooling_mode", "not a list of names".to_string()))?,
            _ => {
                return Err(field_error(
                    "pooling_mode",
                    "not a name or a list".to_string(),
                ))
            }
        };
        let mut config = PoolingConfig::from_mode_names(v6.embedding_dimension, &names)
            .map_err(|problem| field_error("pooling_mode", problem))?;
        config.include_prompt = v6.include_prompt;
        config
    };
    if !config.include_prompt {
        return Err(field_error(
            "include_prompt",
            "false (prompt tokens left out of pooling) is not supported".to_string(),
        ));
    }
    Ok(config)
}

/// Reads each Dense module's config and finds its weights; `width` is the pooled embedding's.
fn read_dense_modules(dirs: &[PathBuf], mut width: usize) -> Result<Vec<DenseModule>> {
    let mut modules = Vec::new();
    for dir in dirs {
        let config_path = dir.join(files::CONFIG);
        let config: DenseConfig = read_json(&config_path, "Dense module config")?;
        let field_error = |field: &str, problem: String| ModelError::InvalidField {
            path: config_path.clone(),
            field: field.to_string(),
            problem,
        };
        let activation =
            DenseActivation::from_torch_path(&config.activation_function).ok_or_else(|| {
                let supported: Vec<&str> = DenseActivation::ALL
                    .iter()
                    .map(|a| a.torch_path())
                    .collect();
                field_error(
                    "activation_function",
                    format!(
                        "`{}` is not supported; supported: {}",
                        config.activation_function,
                        supported.join(", ")
                    ),
                )
            })?;
        if config.in_features != width {
            return Err(field_error(
                "in_features",
                format!(
                    "{} differs from its input's width {width}",
                    config.in_features
                ),
            ));
        }
        width = config.out_features;
        let weights = find_weights(dir)?;
        modules.push(DenseModule {
            dir: dir.clone(),
            config,
            activation,
            weights,
        });
    }
    Ok(modules)
}

/// Every tensor of a weights file by its stored name, on the CPU, in its stored dtype.
fn read_tensors(weights: &WeightsFile) -> Result<HashMap<String, Tensor>> {
    let wrap = |source| ModelError::InvalidWeights {
        path: weights.path().to_path_buf(),
        source,
    };
    match weights {
        WeightsFile::Safetensors(p) => {
            candle_core::safetensors::load(p, &Device::Cpu).map_err(wrap)
        }
        WeightsFile::PyTorch(p) => Ok(candle_core::pickle::read_all(p)
            .map_err(wrap)?
            .into_iter()
            .collect()),
    }
}

/// The weights file of a module folder: `model.safetensors`, else `pytorch_model.bin`.
fn find_weights(dir: &Path) -> Result<WeightsFile> {
    let safetensors = dir.join(files::SAFETENSORS);
    let pytorch = dir.join(files::PYTORCH_BIN);
    if safetensors.exists() {
        Ok(WeightsFile::Safetensors(safetensors))
    } else if pytorch.exists() {
        Ok(WeightsFile::PyTorch(pytorch))
    } else {
        Err(ModelError::MissingFile {
            path: safetensors,
            what: format!("model weights (or {})", files::PYTORCH_BIN),
        })
    }
}

impl ModelDir {
    /// Opens and validates a model directory. Reads only the small JSON files; weights and the
    /// tokenizer are checked for presence here and parsed when loaded.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(ModelError::MissingFile {
                path: root,
                what: "model directory".to_string(),
            });
        }
        let modules_path = root.join(files::MODULES);
        let layout = if modules_path.exists() {
            read_module_layout(&root, &modules_path)?
        } else {
            // A plain Hugging Face checkpoint: sentence-transformers wraps it with mean pooling.
            ModuleLayout {
                transformer: root.clone(),
                pooling: None,
                dense: Vec::new(),
                normalize: false,
            }
        };
        let (transformer_dir, pooling_dir, normalize) =
            (layout.transformer, layout.pooling, layout.normalize);

        let config_path = transformer_dir.join(files::CONFIG);
        let architecture = Architecture::from_json(
            &config_path,
            &read_text(&config_path, "transformer config")?,
        )?;

        let pooling = match &pooling_dir {
            Some(dir) => read_pooling_config(&dir.join(files::POOLING_CONFIG))?,
            None => PoolingConfig::single(PoolingMode::Mean, architecture.hidden_size()),
        };
        let pooling_path = pooling_dir
            .as_ref()
            .map(|d| d.join(files::POOLING_CONFIG))
            .unwrap_or_else(|| root.join(files::MODULES));
        let pooling_modes = pooling.modes(&pooling_path)?;
        if pooling.word_embedding_dimension != architecture.hidden_size() {
            return Err(ModelError::InvalidField {
                path: pooling_path,
                field: "word_embedding_dimension".to_string(),
                problem: format!(
                    "{} differs from the transformer's hidden_size {}",
                    pooling.word_embedding_dimension,
                    architecture.hidden_size()
                ),
            });
        }

        let sbert_path = transformer_dir.join(files::SENTENCE_BERT_CONFIG);
        let sbert: SentenceBertConfig = if sbert_path.exists() {
            read_json(&sbert_path, "sentence-transformers settings")?
        } else {
            SentenceBertConfig {
                max_seq_length: None,
                do_lower_case: false,
                transformer_task: None,
            }
        };
        if let Some(task) = sbert.transformer_task.as_deref() {
            if task != "feature-extraction" {
                return Err(ModelError::InvalidField {
                    path: sbert_path,
                    field: "transformer_task".to_string(),
                    problem: format!(
                        "`{task}` does not make sentence embeddings; only `feature-extraction` does"
                    ),
                });
            }
        }
        let max_positions = architecture.max_position_embeddings();
        // sentence-transformers 6.x keeps the length in the tokenizer's config (capped, as
        // there, at the model's positions).
        let tokenizer_limit = || -> Result<Option<usize>> {
            let path = transformer_dir.join(files::TOKENIZER_CONFIG);
            if !path.exists() {
                return Ok(None);
            }
            let config: TokenizerConfig = read_json(&path, "tokenizer config")?;
            Ok(config
                .model_max_length
                .filter(|n| *n >= 1.0)
                .map(|n| n.min(max_positions as f64) as usize))
        };
        let max_seq_length = match sbert.max_seq_length {
            Some(n) => n,
            None => tokenizer_limit()?.unwrap_or(max_positions),
        };
        if max_seq_length == 0 || max_seq_length > max_positions {
            return Err(ModelError::InvalidField {
                path: sbert_path,
                field: "max_seq_length".to_string(),
                problem: format!(
                    "{max_seq_length} is outside 1..={max_positions} (max_position_embeddings)"
                ),
            });
        }

        let st_config_path = root.join(files::ST_CONFIG);
        let st_config: StConfig = if st_config_path.exists() {
            read_json(&st_config_path, "sentence-transformers config")?
        } else {
            StConfig::default()
        };
        if let Some(kind) = st_config.model_type.as_deref() {
            if kind != "SentenceTransformer" {
                return Err(ModelError::InvalidField {
                    path: st_config_path,
                    field: "model_type".to_string(),
                    problem: format!(
                        "`{kind}` is not a sentence-embedding model; attune reads \
                         `SentenceTransformer` directories"
                    ),
                });
            }
        }

        let weights = find_weights(&transformer_dir)?;
        let dense = read_dense_modules(
            &layout.dense,
            pooling_modes.len() * pooling.word_embedding_dimension,
        )?;
        let tokenizer_path = transformer_dir.join(files::TOKENIZER);
        if !tokenizer_path.exists() {
            return Err(ModelError::MissingFile {
                path: tokenizer_path,
                what: "fast tokenizer; attune does not read vocab.txt alone".to_string(),
            });
        }

        Ok(ModelDir {
            architecture,
            pooling,
            pooling_modes,
            dense,
            normalize,
            max_seq_length,
            do_lower_case: sbert.do_lower_case,
            prompts: st_config.prompts,
            weights,
            tokenizer_path,
            config_path,
            soft_prompt: Some(root.join(crate::soft_prompt::FILE)).filter(|p| p.is_file()),
            root,
        })
    }

    /// The soft prompt on `device`, when the directory has one.
    pub fn load_soft_prompt(&self, device: &Device) -> Result<Option<SoftPrompt>> {
        self.soft_prompt
            .as_deref()
            .map(|path| SoftPrompt::read(path, self.architecture.hidden_size(), device))
            .transpose()
    }

    /// The soft prompt file's bytes, when there is one.
    fn soft_prompt_bytes(&self) -> Result<Option<Vec<u8>>> {
        self.soft_prompt
            .as_deref()
            .map(|path| fs::read(path).map_err(|e| ModelError::io(path, e)))
            .transpose()
    }

    /// The prefix (without its dot) under which the checkpoint nests the encoder, if it does
    /// (`bert.` in a `BertForMaskedLM` checkpoint, `roberta.`, `mpnet.`); `has` tells whether
    /// the checkpoint holds a tensor.
    fn nested_prefix(&self, has: impl Fn(&str) -> bool) -> Option<&'static str> {
        let (prefix, probe) = self.architecture.checkpoint_prefix()?;
        (!has(probe) && has(&format!("{prefix}.{probe}"))).then_some(prefix)
    }

    /// A variable builder over the weights, on `device` in `dtype`. Tensor names are those of the
    /// checkpoint, with a leading `bert.` (the family's prefix) stripped where the checkpoint
    /// has one.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        let path = self.weights.path().to_path_buf();
        let wrap = |source| ModelError::InvalidWeights {
            path: path.clone(),
            source,
        };
        let vb = match &self.weights {
            // SAFETY: the file is memory-mapped read-only; attune never writes a model directory
            // it has open (new models are written to a fresh directory and renamed into place).
            WeightsFile::Safetensors(p) => unsafe {
                VarBuilder::from_mmaped_safetensors(&[p], dtype, device).map_err(wrap)?
            },
            WeightsFile::PyTorch(p) => VarBuilder::from_pth(p, dtype, device).map_err(wrap)?,
        };
        Ok(match self.nested_prefix(|name| vb.contains_tensor(name)) {
            Some(prefix) => vb.pp(prefix),
            None => vb,
        })
    }

    /// A [`VarBuilder`] whose tensors are training variables (f32), and the [`VarMap`] that
    /// holds them. Only tensors the model actually requests become variables, so every entry of
    /// the map is trainable and reachable from the loss; keys are the names the model asked for
    /// (without a `bert.` prefix).
    pub fn trainable_var_builder(&self, device: &Device) -> Result<(VarMap, VarBuilder<'static>)> {
        let source = self.var_builder(DType::F32, device)?;
        let varmap = VarMap::new();
        let backend = TrainableBackend {
            source,
            varmap: varmap.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        Ok((varmap, vb))
    }

    /// Width of the sentence embeddings: the last Dense module's output, else the pooled
    /// width (hidden size × pooling modes).
    pub fn embedding_dimension(&self) -> usize {
        self.dense.last().map_or(
            self.pooling.word_embedding_dimension * self.pooling_modes.len(),
            |d| d.config.out_features,
        )
    }

    /// Loads the Dense modules onto `device` (f32), checking their weights' shapes.
    pub fn load_dense(&self, device: &Device) -> Result<Vec<DenseLayer>> {
        self.dense
            .iter()
            .map(|module| {
                let path = module.weights.path();
                let invalid = |message: String| ModelError::InvalidWeights {
                    path: path.to_path_buf(),
                    source: candle_core::Error::Msg(message),
                };
                let tensors = read_tensors(&module.weights)?;
                let (out_dim, in_dim) = (module.config.out_features, module.config.in_features);
                let weight = tensors
                    .get("linear.weight")
                    .ok_or_else(|| invalid("no tensor `linear.weight`".to_string()))?;
                if weight.dims() != [out_dim, in_dim] {
                    return Err(invalid(format!(
                        "`linear.weight` has shape {:?}, the config says ({out_dim}, {in_dim})",
                        weight.dims()
                    )));
                }
                let bias = match module.config.bias {
                    true => Some(
                        tensors
                            .get("linear.bias")
                            .filter(|b| b.dims() == [out_dim])
                            .ok_or_else(|| {
                                invalid(format!("no tensor `linear.bias` of shape ({out_dim})"))
                            })?,
                    ),
                    false => None,
                };
                DenseLayer::new(weight, bias, module.activation, device).map_err(|source| {
                    ModelError::InvalidWeights {
                        path: path.to_path_buf(),
                        source,
                    }
                })
            })
            .collect()
    }

    /// Every tensor of the weights file by its stored name, on the CPU, in its stored dtype.
    fn read_all_tensors(&self) -> Result<HashMap<String, Tensor>> {
        read_tensors(&self.weights)
    }

    /// Writes a complete copy of this model directory at `dest` (see [`write_model_dir`]) with the
    /// tensors in `updated` replaced. `updated` is keyed by the names the model requests (without
    /// a `bert.` prefix, as [`ModelDir::trainable_var_builder`] names them); every key must name a
    /// stored tensor of the same shape. Tensors the model never reads (e.g. a pooler) are kept,
    /// so Hugging Face loaders find a complete checkpoint. `extra_files` are added as given.
    pub fn write_updated(
        &self,
        dest: &Path,
        updated: &HashMap<String, Tensor>,
        extra_files: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let mut tensors = self.read_all_tensors()?;
        let prefix = self.nested_prefix(|name| tensors.contains_key(name));
        for (name, tensor) in updated {
            let stored = match prefix {
                Some(prefix) => format!("{prefix}.{name}"),
                None => name.clone(),
            };
            let invalid = |message: String| ModelError::InvalidWeights {
                path: self.weights.path().to_path_buf(),
                source: candle_core::Error::Msg(message),
            };
            let Some(original) = tensors.get(&stored) else {
                return Err(invalid(format!(
                    "updated tensor `{stored}` is not in the checkpoint"
                )));
            };
            if original.shape() != tensor.shape() {
                return Err(invalid(format!(
                    "updated tensor `{stored}` has shape {:?}, the checkpoint's has {:?}",
                    tensor.shape(),
                    original.shape()
                )));
            }
            let tensor = tensor.to_device(&Device::Cpu)?.to_dtype(original.dtype())?;
            tensors.insert(stored, tensor);
        }
        let config_json: serde_json::Value = read_json(&self.config_path, "transformer config")?;
        let tokenizer = self.load_tokenizer()?;
        let source_dir = self
            .tokenizer_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        let mut extras = Vec::new();
        for name in TOKENIZER_COMPANIONS {
            let path = source_dir.join(name);
            if path.exists() {
                extras.push((
                    name.to_string(),
                    fs::read(&path).map_err(|e| ModelError::io(&path, e))?,
                ));
            }
        }
        let replaces_prompt = extra_files
            .iter()
            .any(|(name, _)| name == crate::soft_prompt::FILE);
        if let Some(bytes) = self.soft_prompt_bytes()?.filter(|_| !replaces_prompt) {
            extras.push((crate::soft_prompt::FILE.to_string(), bytes));
        }
        extras.extend(extra_files.iter().cloned());
        write_model_dir(
            dest,
            &ModelFiles {
                config_json: &config_json,
                tokenizer: &tokenizer,
                tensors: &tensors,
                pooling: &self.pooling,
                dense: &self.dense,
                normalize: self.normalize,
                sentence_bert: &SentenceBertConfig {
                    max_seq_length: Some(self.max_seq_length),
                    do_lower_case: self.do_lower_case,
                    transformer_task: None,
                },
                prompts: &self.prompts,
                extra_files: &extras,
            },
        )
    }

    /// Writes at `dest` a copy of `tuned` whose weights are `base + alpha · (tuned − base)`
    /// (linear interpolation; `alpha` 0 gives the base weights, 1 the tuned ones). Every tensor
    /// of `tuned` must exist in `base` with the same shape; tensors that are not floating point
    /// (e.g. position-id buffers) must be equal and are kept. Everything else (tokenizer, config,
    /// pooling, a soft prompt) comes from `tuned`. Refused when the two models' soft prompts
    /// differ ([`ModelError::PromptNotInterpolable`]): a prompt-tuned model's weights are the
    /// base's, and its prompt has no counterpart in the base to interpolate with.
    pub fn interpolate(
        base: &ModelDir,
        tuned: &ModelDir,
        alpha: f64,
        dest: &Path,
        extra_files: &[(String, Vec<u8>)],
    ) -> Result<()> {
        Self::check_interpolable(base, tuned)?;
        let strip = |dir: &ModelDir| -> Result<HashMap<String, Tensor>> {
            let tensors = dir.read_all_tensors()?;
            let Some(prefix) = dir.nested_prefix(|name| tensors.contains_key(name)) else {
                return Ok(tensors);
            };
            let prefix = format!("{prefix}.");
            Ok(tensors
                .into_iter()
                .map(|(name, t)| (name.strip_prefix(&prefix).unwrap_or(&name).to_string(), t))
                .collect())
        };
        let base_tensors = strip(base)?;
        let tuned_tensors = strip(tuned)?;
        let invalid = |message: String| ModelError::InvalidWeights {
            path: base.weights.path().to_path_buf(),
            source: candle_core::Error::Msg(message),
        };
        let mut updated = HashMap::new();
        for (name, tuned_tensor) in &tuned_tensors {
            let Some(base_tensor) = base_tensors.get(name) else {
                return Err(invalid(format!(
                    "tensor `{name}` of the tuned model is not in the base model"
                )));
            };
            if base_tensor.shape() != tuned_tensor.shape() {
                return Err(invalid(format!(
                    "tensor `{name}`: base shape {:?}, tuned shape {:?}",
                    base_tensor.shape(),
                    tuned_tensor.shape()
                )));
            }
            if !tuned_tensor.dtype().is_float() {
                let same = base_tensor
                    .to_dtype(DType::F64)?
                    .eq(&tuned_tensor.to_dtype(DType::F64)?)?
                    .flatten_all()?
                    .min(0)?
                    .to_scalar::<u8>()?
                    == 1;
                if !same {
                    return Err(invalid(format!(
                        "integer tensor `{name}` differs between the models"
                    )));
                }
                continue;
            }
            let b = base_tensor.to_dtype(DType::F32)?;
            let t = tuned_tensor.to_dtype(DType::F32)?;
            let merged = (&b + ((&t - &b)? * alpha)?)?;
            updated.insert(name.clone(), merged);
        }
        tuned.write_updated(dest, &updated, extra_files)
    }

    /// Refuses to interpolate `tuned` with `base` when their soft prompts differ (see
    /// [`ModelDir::interpolate`]).
    pub fn check_interpolable(base: &ModelDir, tuned: &ModelDir) -> Result<()> {
        if base.soft_prompt_bytes()? != tuned.soft_prompt_bytes()? {
            return Err(ModelError::PromptNotInterpolable {
                path: tuned.root.clone(),
            });
        }
        Ok(())
    }

    /// Loads `tokenizer.json` as it is on disk (see [`crate::TextTokenizer`] for the configured one).
    pub fn load_tokenizer(&self) -> Result<Tokenizer> {
        Tokenizer::from_file(&self.tokenizer_path).map_err(|e| ModelError::InvalidTokenizer {
            path: self.tokenizer_path.clone(),
            message: e.to_string(),
        })
    }

    /// A fingerprint of everything that determines the embeddings: weights, tokenizer, config,
    /// pooling, normalization and sequence length (sha256, hex). Two directories with equal
    /// fingerprints produce equal vectors.
    pub fn fingerprint(&self) -> Result<String> {
        let mut hasher = Sha256::new();
        let dense_files = self.dense.iter().map(|d| d.weights.path());
        for path in [self.weights.path(), &self.tokenizer_path, &self.config_path]
            .into_iter()
            .chain(dense_files)
        {
            let mut file = fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
            std::io::copy(&mut file, &mut hasher).map_err(|e| ModelError::io(path, e))?;
        }
        if let Some(prompt) = self.soft_prompt_bytes()? {
            // Directories without a prompt keep the fingerprints they always had.
            hasher.update(b"soft_prompt");
            hasher.update(prompt);
        }
        for dense in &self.dense {
            hasher.update(serde_json::to_vec(&dense.config).expect("Dense config serializes"));
        }
        hasher.update(format!(
            "{:?}|{}|{}|{}",
            self.pooling_modes, self.normalize, self.max_seq_length, self.do_lower_case
        ));
        Ok(format!("{:x}", hasher.finalize()))
    }
}

/// Reads tensors from the model directory on first request and keeps them as [`Var`]s.
struct TrainableBackend {
    source: VarBuilder<'static>,
    varmap: VarMap,
}

impl TrainableBackend {
    fn keep(&self, name: &str, tensor: Tensor) -> candle_core::Result<Tensor> {
        let mut vars = self.varmap.data().lock().expect("var map lock");
        if let Some(var) = vars.get(name) {
            return Ok(var.as_tensor().clone());
        }
        let var = Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(out)
    }
}

impl SimpleBackend for TrainableBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self
            .source
            .get(shape, name)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        self.keep(name, tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let tensor = self
            .source
            .get_unchecked(name)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        self.keep(name, tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.source.contains_tensor(name)
    }
}

/// Everything needed to write a complete sentence-transformers model directory.
pub struct ModelFiles<'a> {
    /// `config.json` contents (written as given, so unknown fields survive a round trip).
    pub config_json: &'a serde_json::Value,
    /// The tokenizer (saved with its padding and truncation as they are).
    pub tokenizer: &'a Tokenizer,
    /// Named tensors for `model.safetensors`.
    pub tensors: &'a HashMap<String, Tensor>,
    /// Pooling configuration.
    pub pooling: &'a PoolingConfig,
    /// Dense modules after pooling, copied as they are (written as `2_Dense`, `3_Dense`, ...).
    pub dense: &'a [DenseModule],
    /// Whether a Normalize module follows pooling (and the Dense modules).
    pub normalize: bool,
    /// `sentence_bert_config.json`.
    pub sentence_bert: &'a SentenceBertConfig,
    /// Named prompts for `config_sentence_transformers.json`.
    pub prompts: &'a BTreeMap<String, String>,
    /// Further files written as given, by path relative to the directory (tokenizer companions
    /// such as `vocab.txt`, a model card, a training log).
    pub extra_files: &'a [(String, Vec<u8>)],
}

/// Writes a complete model directory at `dest`. The files are written into `dest.tmp-*` and
/// renamed into place, so a crash never leaves a half-written model at `dest`. An existing
/// `dest` is replaced.
pub fn write_model_dir(dest: &Path, model: &ModelFiles<'_>) -> Result<()> {
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string());
    let staging = dest.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| ModelError::io(&staging, e))?;
    }
    fs::create_dir_all(staging.join("1_Pooling")).map_err(|e| ModelError::io(&staging, e))?;

    let write_json = |name: &str, value: &serde_json::Value| -> Result<()> {
        let path = staging.join(name);
        let text = serde_json::to_string_pretty(value).expect("a JSON value serializes");
        fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
    };
    write_json(files::CONFIG, model.config_json)?;
    write_json(
        &format!("1_Pooling/{}", files::POOLING_CONFIG),
        &serde_json::to_value(model.pooling).expect("pooling config serializes"),
    )?;
    write_json(
        files::SENTENCE_BERT_CONFIG,
        &serde_json::to_value(model.sentence_bert).expect("settings serialize"),
    )?;
    let mut modules = vec![
        serde_json::json!({"idx": 0, "name": "0", "path": "", "type": TRANSFORMER_MODULE}),
        serde_json::json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING_MODULE}),
    ];
    for dense in model.dense {
        let idx = modules.len();
        let folder = format!("{idx}_Dense");
        fs::create_dir_all(staging.join(&folder)).map_err(|e| ModelError::io(&staging, e))?;
        write_json(
            &format!("{folder}/{}", files::CONFIG),
            &serde_json::to_value(&dense.config).expect("Dense config serializes"),
        )?;
        let source = dense.weights.path();
        let file_name = source.file_name().expect("a weights file has a name");
        let target = staging.join(&folder).join(file_name);
        fs::copy(source, &target).map_err(|e| ModelError::io(source, e))?;
        modules.push(
            serde_json::json!({"idx": idx, "name": idx.to_string(), "path": folder, "type": DENSE_MODULE}),
        );
    }
    if model.normalize {
        let idx = modules.len();
        modules.push(serde_json::json!({"idx": idx, "name": idx.to_string(),
            "path": format!("{idx}_Normalize"), "type": NORMALIZE_MODULE}));
    }
    write_json(files::MODULES, &serde_json::Value::Array(modules))?;
    write_json(
        files::ST_CONFIG,
        &serde_json::json!({"prompts": model.prompts, "default_prompt_name": null, "similarity_fn_name": "cosine"}),
    )?;

    for (name, bytes) in model.extra_files {
        let path = staging.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
        }
        fs::write(&path, bytes).map_err(|e| ModelError::io(&path, e))?;
    }
    let tokenizer_path = staging.join(files::TOKENIZER);
    model
        .tokenizer
        .save(&tokenizer_path, false)
        .map_err(|e| ModelError::InvalidTokenizer {
            path: tokenizer_path.clone(),
            message: e.to_string(),
        })?;
    let weights_path = staging.join(files::SAFETENSORS);
    candle_core::safetensors::save(model.tensors, &weights_path).map_err(|source| {
        ModelError::InvalidWeights {
            path: weights_path.clone(),
            source,
        }
    })?;

    if dest.exists() {
        fs::remove_dir_all(dest).map_err(|e| ModelError::io(dest, e))?;
    }
    fs::rename(&staging, dest).map_err(|e| ModelError::io(dest, e))
}
