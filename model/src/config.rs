//! Model configuration: `config.json` (the transformer) and `1_Pooling/config.json` (pooling).
//!
//! Families are an enum so that others can be added beside BERT without touching callers; a
//! family registered at run time ([`crate::family`]) is found by its `model_type`.

use std::path::Path;
use std::sync::Arc;

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::bert::BertModel;
use crate::error::{ModelError, Result};
use crate::family::{
    registered_family, registered_model_types, FamilyConfig, ModelFamily, TransformerModel,
};
use crate::modernbert::{ModernBertConfig, ModernBertModel};

/// The model families attune implements, as `config.json`'s `model_type` spells them.
pub const SUPPORTED_MODEL_TYPES: &[&str] =
    &["bert", "camembert", "mpnet", "roberta", "xlm-roberta"];

/// The BERT-shaped families: one encoder ([`crate::BertModel`]) with their differences in
/// positions, segments, tensor names and attention bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BertFlavor {
    /// BERT and BERT-shaped models: positions from 0, token types, `attention.self.*` names.
    #[default]
    Bert,
    /// RoBERTa, XLM-RoBERTa and CamemBERT: positions start after the padding index, one token
    /// type.
    Roberta,
    /// MPNet: RoBERTa's positions, no token types, `attention.attn.{q,k,v,o}` names and a
    /// relative-position bias (bucketed, shared by every layer) added to the attention scores.
    Mpnet,
}

impl BertFlavor {
    /// The flavor of `model_type`, if it is one of the BERT-shaped families.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "bert" => Some(BertFlavor::Bert),
            "roberta" | "xlm-roberta" | "camembert" => Some(BertFlavor::Roberta),
            "mpnet" => Some(BertFlavor::Mpnet),
            _ => None,
        }
    }

    /// Where the checkpoint of a task model (e.g. `RobertaForMaskedLM`) keeps the encoder.
    pub fn checkpoint_prefix(self) -> &'static str {
        match self {
            BertFlavor::Bert => "bert",
            BertFlavor::Roberta => "roberta",
            BertFlavor::Mpnet => "mpnet",
        }
    }
}

/// The transformer architecture of a model directory, parsed from `config.json`.
#[derive(Debug, Clone)]
pub enum Architecture {
    /// BERT and BERT-shaped models (MiniLM, bge-small/base, e5-small-v2, gte-small, ...;
    /// RoBERTa, XLM-RoBERTa, CamemBERT and MPNet as [`BertFlavor`]s).
    Bert(BertConfig),
    /// ModernBERT (gte-modernbert, modernbert-embed, ...).
    ModernBert(ModernBertConfig),
    /// A family added through [`crate::family::register_family`].
    Registered {
        /// The family.
        family: Arc<dyn ModelFamily>,
        /// The parsed `config.json`.
        config: serde_json::Value,
        /// What the family read from it.
        shape: FamilyConfig,
    },
}

impl PartialEq for Architecture {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Architecture::Bert(a), Architecture::Bert(b)) => a == b,
            (Architecture::ModernBert(a), Architecture::ModernBert(b)) => a == b,
            (
                Architecture::Registered {
                    family: fa,
                    config: ca,
                    ..
                },
                Architecture::Registered {
                    family: fb,
                    config: cb,
                    ..
                },
            ) => fa.model_type() == fb.model_type() && ca == cb,
            _ => false,
        }
    }
}

impl Architecture {
    /// Parses `config.json` text; `path` is only used in error messages.
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|source| ModelError::InvalidJson {
                path: path.to_path_buf(),
                source,
            })?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let architectures: Vec<String> = raw
            .get("architectures")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if model_type.as_deref() == Some("modernbert") {
            return Ok(Architecture::ModernBert(ModernBertConfig::from_json(
                path, text,
            )?));
        }
        let flavor = match model_type.as_deref() {
            Some(t) => BertFlavor::from_model_type(t),
            None => architectures
                .iter()
                .any(|a| a.starts_with("Bert"))
                .then_some(BertFlavor::Bert),
        };
        if let Some(family) = model_type.as_deref().and_then(registered_family) {
            let shape = family.read_config(path, &raw)?;
            return Ok(Architecture::Registered {
                family,
                config: raw,
                shape,
            });
        }
        let Some(flavor) = flavor else {
            let found = model_type.unwrap_or_else(|| {
                if architectures.is_empty() {
                    "(no model_type or architectures field)".to_string()
                } else {
                    architectures.join(", ")
                }
            });
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found,
                supported: SUPPORTED_MODEL_TYPES
                    .iter()
                    .map(|t| t.to_string())
                    .chain(registered_model_types())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        // Parsed from the text (not the value) so errors carry a line and column.
        let mut config: BertConfig =
            serde_json::from_str(text).map_err(|source| ModelError::InvalidJson {
                path: path.to_path_buf(),
                source,
            })?;
        config.flavor = flavor;
        config.validate(path)?;
        Ok(Architecture::Bert(config))
    }

    /// Width of the transformer's token embeddings.
    pub fn hidden_size(&self) -> usize {
        match self {
            Architecture::Bert(c) => c.hidden_size,
            Architecture::ModernBert(c) => c.hidden_size,
            Architecture::Registered { shape, .. } => shape.hidden_size,
        }
    }

    /// Where a task model's checkpoint (e.g. `BertForMaskedLM`) nests the encoder, and a tensor
    /// name the bare encoder has: `("bert", "embeddings.word_embeddings.weight")` for BERT.
    pub fn checkpoint_prefix(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Architecture::Bert(c) => Some((
                c.flavor.checkpoint_prefix(),
                "embeddings.word_embeddings.weight",
            )),
            Architecture::ModernBert(_) => Some(("model", "embeddings.tok_embeddings.weight")),
            Architecture::Registered { .. } => None,
        }
    }

    /// Loads the weights under `vb` as this architecture's [`TransformerModel`].
    pub fn load(&self, vb: VarBuilder) -> candle_core::Result<Box<dyn TransformerModel>> {
        match self {
            Architecture::Bert(cfg) => Ok(Box::new(BertModel::load(vb, cfg)?)),
            Architecture::ModernBert(cfg) => Ok(Box::new(ModernBertModel::load(vb, cfg)?)),
            Architecture::Registered { family, config, .. } => family.load(vb, config),
        }
    }

    /// Most tokens one text can have: the position embeddings the model has, less those
    /// before its first position (RoBERTa's 514 positions hold 512 tokens).
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            Architecture::Bert(c) => c.max_position_embeddings - c.position_offset(),
            Architecture::ModernBert(c) => c.max_position_embeddings,
            Architecture::Registered { shape, .. } => shape.max_position_embeddings,
        }
    }
}

/// Activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// Exact GELU with erf, as PyTorch's `gelu` (BERT's default).
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    /// Rectified linear unit.
    Relu,
}

impl HiddenAct {
    /// Applies the activation (differentiable; exact GELU has a fused backward on the CPU).
    pub fn apply(self, xs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            HiddenAct::Gelu if crate::train_kernels::applies(xs) => {
                crate::train_kernels::gelu_erf(xs)
            }
            HiddenAct::Gelu => xs.gelu_erf(),
            HiddenAct::GeluNew => xs.gelu(),
            HiddenAct::Relu => xs.relu(),
        }
    }
}

/// BERT hyper-parameters, as in Hugging Face's `config.json`. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Number of token ids in the vocabulary.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; divides `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Feed-forward activation (default `gelu`).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: HiddenAct,
    /// Dropout on embeddings and sub-layer outputs while training (default 0.1).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    /// Dropout on attention probabilities while training (default 0.1).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
    /// Number of position embeddings (the hard limit on sequence length).
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Epsilon of every layer norm (default 1e-12).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Id of the padding token.
    #[serde(default)]
    pub pad_token_id: u32,
    /// Only `absolute` position embeddings are implemented.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// MPNet's number of relative-position buckets (default 32; other flavors ignore it).
    #[serde(default = "default_relative_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Which BERT-shaped family this is (from `model_type`, not a field of `config.json`).
    #[serde(skip)]
    pub flavor: BertFlavor,
}

fn default_hidden_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_dropout() -> f32 {
    0.1
}
fn default_max_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_relative_buckets() -> usize {
    32
}
fn default_position_embedding_type() -> String {
    "absolute".to_string()
}

impl BertConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        let field_err = |field: &str, problem: String| ModelError::InvalidField {
            path: path.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        if self.position_embedding_type != "absolute" {
            return Err(field_err(
                "position_embedding_type",
                format!(
                    "`{}` is not supported; only `absolute` is",
                    self.position_embedding_type
                ),
            ));
        }
        if self.max_position_embeddings <= self.position_offset() + 1 {
            return Err(field_err(
                "max_position_embeddings",
                format!(
                    "{} leaves no room for a text: positions start at {} (pad_token_id + 1)",
                    self.max_position_embeddings,
                    self.position_offset()
                ),
            ));
        }
        if self.flavor == BertFlavor::Mpnet && self.relative_attention_num_buckets < 4 {
            return Err(field_err(
                "relative_attention_num_buckets",
                format!("{} is below 4", self.relative_attention_num_buckets),
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(field_err(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(field_err(name, format!("{p} is not in [0, 1)")));
            }
        }
        Ok(())
    }

    /// The position id of a text's first token: 0 for BERT, `pad_token_id + 1` for RoBERTa
    /// and MPNet (Hugging Face's `create_position_ids_from_input_ids`).
    pub fn position_offset(&self) -> usize {
        match self.flavor {
            BertFlavor::Bert => 0,
            BertFlavor::Roberta | BertFlavor::Mpnet => self.pad_token_id as usize + 1,
        }
    }

    /// Width of one attention head.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Pooling modes of sentence-transformers' `Pooling` module. When several are on, their
/// outputs are concatenated in sentence-transformers' order: cls, max, mean, mean-sqrt-len.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolingConfig {
    /// Width of the token embeddings the module pools.
    pub word_embedding_dimension: usize,
    /// The first token's embedding (`[CLS]`).
    #[serde(default)]
    pub pooling_mode_cls_token: bool,
    /// The mean of the non-padding token embeddings.
    #[serde(default)]
    pub pooling_mode_mean_tokens: bool,
    /// The element-wise maximum over the non-padding token embeddings.
    #[serde(default)]
    pub pooling_mode_max_tokens: bool,
    /// The sum of the non-padding token embeddings over the square root of their count.
    #[serde(default)]
    pub pooling_mode_mean_sqrt_len_tokens: bool,
    /// Position-weighted mean (not implemented; an error if set).
    #[serde(default)]
    pub pooling_mode_weightedmean_tokens: bool,
    /// The last token's embedding (not implemented; an error if set).
    #[serde(default)]
    pub pooling_mode_lasttoken: bool,
    /// Whether prompt tokens are pooled too (default true; false is not implemented).
    #[serde(default = "default_include_prompt")]
    pub include_prompt: bool,
}

fn default_include_prompt() -> bool {
    true
}

/// sentence-transformers 6.x's pooling mode names, in the legacy concatenation order.
const POOLING_MODE_NAMES: [&str; 6] = [
    "cls",
    "max",
    "mean",
    "mean_sqrt_len_tokens",
    "weightedmean",
    "lasttoken",
];

/// One pooling operation, in the order they are concatenated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// First token.
    Cls,
    /// Element-wise max over real tokens.
    Max,
    /// Mean over real tokens.
    Mean,
    /// Sum over real tokens / sqrt(count).
    MeanSqrtLen,
}

impl PoolingConfig {
    /// A config with exactly one mode on.
    pub fn single(mode: PoolingMode, dimension: usize) -> Self {
        PoolingConfig {
            word_embedding_dimension: dimension,
            pooling_mode_cls_token: mode == PoolingMode::Cls,
            pooling_mode_mean_tokens: mode == PoolingMode::Mean,
            pooling_mode_max_tokens: mode == PoolingMode::Max,
            pooling_mode_mean_sqrt_len_tokens: mode == PoolingMode::MeanSqrtLen,
            pooling_mode_weightedmean_tokens: false,
            pooling_mode_lasttoken: false,
            include_prompt: true,
        }
    }

    /// A config from sentence-transformers 6.x's mode names (`"mean"`, `["cls", "mean"]`).
    /// Several modes must be listed in the legacy order (cls, max, mean, mean_sqrt_len_tokens),
    /// the only order the legacy booleans can write back; the error says what is wrong.
    pub fn from_mode_names(
        dimension: usize,
        names: &[String],
    ) -> std::result::Result<Self, String> {
        let mut config = PoolingConfig::single(PoolingMode::Mean, dimension);
        config.pooling_mode_mean_tokens = false;
        let mut last = None;
        for name in names {
            let Some(rank) = POOLING_MODE_NAMES.iter().position(|n| n == name) else {
                return Err(format!(
                    "unknown mode `{name}`; known: {}",
                    POOLING_MODE_NAMES.join(", ")
                ));
            };
            if last.is_some_and(|l| l >= rank) {
                return Err(format!(
                    "modes must be listed once each, in the order {}",
                    POOLING_MODE_NAMES.join(", ")
                ));
            }
            last = Some(rank);
            let flag = match rank {
                0 => &mut config.pooling_mode_cls_token,
                1 => &mut config.pooling_mode_max_tokens,
                2 => &mut config.pooling_mode_mean_tokens,
                3 => &mut config.pooling_mode_mean_sqrt_len_tokens,
                4 => &mut config.pooling_mode_weightedmean_tokens,
                _ => &mut config.pooling_mode_lasttoken,
            };
            *flag = true;
        }
        Ok(config)
    }

    /// The modes that are on, in concatenation order; an error names an unsupported or empty
    /// selection.
    pub fn modes(&self, path: &Path) -> Result<Vec<PoolingMode>> {
        let unsupported = [
            (
                "pooling_mode_weightedmean_tokens",
                self.pooling_mode_weightedmean_tokens,
            ),
            ("pooling_mode_lasttoken", self.pooling_mode_lasttoken),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, on)| *on) {
            return Err(ModelError::InvalidField {
                path: path.to_path_buf(),
                field: field.to_string(),
                problem:
                    "this pooling mode is not supported; supported: cls, max, mean, mean_sqrt_len"
                        .to_string(),
            });
        }
        let modes: Vec<PoolingMode> = [
            (self.pooling_mode_cls_token, PoolingMode::Cls),
            (self.pooling_mode_max_tokens, PoolingMode::Max),
            (self.pooling_mode_mean_tokens, PoolingMode::Mean),
            (
                self.pooling_mode_mean_sqrt_len_tokens,
                PoolingMode::MeanSqrtLen,
            ),
        ]
        .into_iter()
        .filter_map(|(on, mode)| on.then_some(mode))
        .collect();
        if modes.is_empty() {
            return Err(ModelError::InvalidField {
                path: path.to_path_buf(),
                field: "pooling_mode_*".to_string(),
                problem: "no pooling mode is on".to_string(),
            });
        }
        Ok(modes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"architectures":["BertModel"],"hidden_act":"gelu","hidden_size":384,
        "intermediate_size":1536,"layer_norm_eps":1e-12,"max_position_embeddings":512,"model_type":"bert",
        "num_attention_heads":12,"num_hidden_layers":6,"vocab_size":30522,"extra_field":[1,2]}"#;

    #[test]
    fn parses_a_bert_config_with_defaults_and_unknown_fields() {
        let Architecture::Bert(c) = Architecture::from_json(Path::new("c.json"), MINILM).unwrap()
        else {
            panic!("BERT")
        };
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.head_size()),
            (384, 6, 32)
        );
        assert_eq!(c.hidden_act, HiddenAct::Gelu);
        assert_eq!(c.type_vocab_size, 2);
        assert!((c.hidden_dropout_prob - 0.1).abs() < 1e-9);
    }

    #[test]
    fn unsupported_family_lists_the_supported_ones() {
        let text = r#"{"model_type":"gpt2","architectures":["GPT2Model"]}"#;
        let err = Architecture::from_json(Path::new("m/config.json"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("m/config.json"), "{err}");
        assert!(err.contains("gpt2"), "{err}");
        assert!(
            err.contains("supported: bert, camembert, mpnet, roberta, xlm-roberta"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_field_is_named_with_its_position() {
        let text = r#"{"model_type":"bert","hidden_size":8}"#;
        let err = Architecture::from_json(Path::new("config.json"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `vocab_size`"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn heads_must_divide_hidden_size() {
        let text = MINILM.replace("\"num_attention_heads\":12", "\"num_attention_heads\":5");
        let err = Architecture::from_json(Path::new("config.json"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_attention_heads"), "{err}");
    }

    #[test]
    fn sentence_transformers_6_mode_names_map_to_the_legacy_flags() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = PoolingConfig::from_mode_names(8, &names(&["cls", "mean"])).unwrap();
        assert_eq!(
            p.modes(Path::new("p")).unwrap(),
            vec![PoolingMode::Cls, PoolingMode::Mean]
        );
        assert_eq!(
            PoolingConfig::from_mode_names(8, &names(&["mean"])).unwrap(),
            PoolingConfig::single(PoolingMode::Mean, 8)
        );
        let err = PoolingConfig::from_mode_names(8, &names(&["mean", "cls"])).unwrap_err();
        assert!(err.contains("in the order"), "{err}");
        let err = PoolingConfig::from_mode_names(8, &names(&["median"])).unwrap_err();
        assert!(err.contains("unknown mode `median`"), "{err}");
    }

    #[test]
    fn pooling_modes_follow_sentence_transformers_order() {
        let mut p = PoolingConfig::single(PoolingMode::Mean, 8);
        p.pooling_mode_cls_token = true;
        assert_eq!(
            p.modes(Path::new("p")).unwrap(),
            vec![PoolingMode::Cls, PoolingMode::Mean]
        );
        p.pooling_mode_lasttoken = true;
        let err = p
            .modes(Path::new("1_Pooling/config.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pooling_mode_lasttoken"), "{err}");
    }
}
