//! Tiny randomly initialised model directories (BERT, and the test-only [`tiny_mixer`] family),
//! for tests and benchmarks that must not
//! depend on a download. They are complete sentence-transformers directories written by
//! [`write_model_dir`], so they exercise the same loading path as a real model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;

use crate::bert::LinearTarget;
use crate::config::{BertFlavor, PoolingConfig, PoolingMode};
use crate::error::{ModelError, Result};
use crate::model_dir::{write_model_dir, ModelFiles, SentenceBertConfig};

pub mod tiny_mixer;

/// Whether test `test`, which needs a CPU feature, can run: `true` where `available`.
/// Otherwise it fails if the environment variable `required_by` is `1` (CI sets it where
/// `/proc/cpuinfo` lists the feature, so a kernel that should run is never skipped there), and
/// else reports the test skipped with `why_not` and returns `false`.
pub fn cpu_feature_test_runs(
    test: &str,
    available: bool,
    required_by: &str,
    why_not: &str,
) -> bool {
    if available {
        return true;
    }
    let required = std::env::var(required_by).is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{required_by}=1, but {test} cannot run: {why_not}"
    );
    report_skipped(test, why_not);
    false
}

/// Records that test `test` did not run, and why: printed, and appended to the file named by
/// `ATTUNE_SKIP_LOG` (which `scripts/test.sh` sets, so its summary line counts skipped tests
/// apart from passed ones).
pub fn report_skipped(test: &str, why: &str) {
    use std::io::Write;
    eprintln!("skipped: {test}: {why}");
    if let Some(path) = std::env::var_os("ATTUNE_SKIP_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{test}: {why}");
        }
    }
}

/// Shape and behaviour of a random model. `Default` is a 2-layer, 32-wide model with mean
/// pooling and normalization.
#[derive(Debug, Clone)]
pub struct RandomBertSpec {
    /// Hidden width.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_layers: usize,
    /// Attention heads (divides `hidden_size`).
    pub num_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Position embeddings.
    pub max_position_embeddings: usize,
    /// `max_seq_length` in `sentence_bert_config.json`.
    pub max_seq_length: usize,
    /// Pooling modes (concatenated when several).
    pub pooling: Vec<PoolingMode>,
    /// Whether a Normalize module is listed.
    pub normalize: bool,
    /// The padding *and* truncation length written into `tokenizer.json` itself, deliberately
    /// different from `max_seq_length` (as in all-MiniLM-L6-v2), so tests see it overridden.
    pub tokenizer_fixed_length: usize,
    /// Weight seed: equal seeds give equal models.
    pub seed: u64,
    /// `hidden_dropout_prob` and `attention_probs_dropout_prob` in `config.json`.
    pub dropout: f32,
    /// Which BERT-shaped family's layout and `model_type` (`bert`, `xlm-roberta`, `mpnet`); the
    /// tokenizer is the same WordPiece one for all (real families' tokenizers are in the
    /// committed fixtures of `model/tests/fixtures/families/`).
    pub flavor: BertFlavor,
}

impl Default for RandomBertSpec {
    fn default() -> Self {
        RandomBertSpec {
            hidden_size: 32,
            num_layers: 2,
            num_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 64,
            max_seq_length: 32,
            pooling: vec![PoolingMode::Mean],
            normalize: true,
            tokenizer_fixed_length: 8,
            seed: 42,
            dropout: 0.1,
            flavor: BertFlavor::Bert,
        }
    }
}

const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
const WORDS: &[&str] = &[
    "the", "a", "of", "and", "to", "in", "is", "for", "with", "on", "shoe", "shoes", "running",
    "red", "blue", "size", "return", "policy", "leather", "cotton", "jacket", "laptop", "battery",
    "cell", "protein", "study", "model", "search", "query", "document", "man", "eating", "food",
];

/// The vocabulary of random models: special tokens, some words, and every letter and digit as
/// a word start and as a `##` continuation, so any ASCII word tokenizes without `[UNK]`.
pub(crate) fn vocabulary() -> Vec<String> {
    let mut vocab: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
    vocab.extend(WORDS.iter().map(|s| s.to_string()));
    let chars: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    vocab.extend(chars.iter().map(|c| c.to_string()));
    vocab.extend(chars.iter().map(|c| format!("##{c}")));
    vocab.extend(
        [".", ",", "!", "?", "'", "-", ":"]
            .iter()
            .map(|s| s.to_string()),
    );
    vocab
}

fn tokenizer_json(vocab: &[String], fixed_length: usize) -> serde_json::Value {
    let vocab_map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = SPECIAL
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": fixed_length, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": fixed_length}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab_map}
    })
}

/// Writes a sentence-transformers directory at `dest` of a random model: `config_json` and
/// `tensors`, the fixtures' WordPiece tokenizer over `vocab`, `pooling`, and `spec`'s sequence
/// length and normalization.
fn write_fixture_dir(
    dest: &Path,
    spec: &RandomBertSpec,
    vocab: &[String],
    config_json: &serde_json::Value,
    tensors: &HashMap<String, Tensor>,
    pooling: &PoolingConfig,
) -> Result<()> {
    let tokenizer_text = tokenizer_json(vocab, spec.tokenizer_fixed_length).to_string();
    let tokenizer =
        Tokenizer::from_str(&tokenizer_text).map_err(|e| ModelError::InvalidTokenizer {
            path: dest.join("tokenizer.json"),
            message: e.to_string(),
        })?;
    write_model_dir(
        dest,
        &ModelFiles {
            config_json,
            tokenizer: &tokenizer,
            tensors,
            pooling,
            dense: &[],
            normalize: spec.normalize,
            sentence_bert: &SentenceBertConfig {
                max_seq_length: Some(spec.max_seq_length),
                do_lower_case: false,
                transformer_task: None,
            },
            prompts: &BTreeMap::new(),
            extra_files: &[],
        },
    )
}

/// Writes a random BERT sentence-transformers directory at `dest` and returns its vocabulary size.
pub fn write_random_bert(dest: &Path, spec: &RandomBertSpec) -> Result<usize> {
    let vocab = vocabulary();

    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, shape: &[usize], mean: f32, std: f32| -> Result<()> {
        let n: usize = shape.iter().product();
        // Box–Muller normal samples from the seeded generator.
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
                let u2: f32 = rng.random::<f32>();
                mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        Ok(())
    };
    let (h, ff, flavor) = (spec.hidden_size, spec.intermediate_size, spec.flavor);
    // RoBERTa and MPNet spend positions 0..=pad_token_id before a text's first token.
    let pad_token_id = 0usize;
    let positions = match flavor {
        BertFlavor::Bert => spec.max_position_embeddings,
        BertFlavor::Roberta | BertFlavor::Mpnet => spec.max_position_embeddings + pad_token_id + 1,
    };
    put(
        "embeddings.word_embeddings.weight".into(),
        &[vocab.len(), h],
        0.0,
        0.5,
    )?;
    put(
        "embeddings.position_embeddings.weight".into(),
        &[positions, h],
        0.0,
        0.5,
    )?;
    if flavor != BertFlavor::Mpnet {
        put(
            "embeddings.token_type_embeddings.weight".into(),
            &[2, h],
            0.0,
            0.5,
        )?;
    } else {
        put(
            "encoder.relative_attention_bias.weight".into(),
            &[32, spec.num_heads],
            0.0,
            1.0,
        )?;
    }
    put("embeddings.LayerNorm.weight".into(), &[h], 1.0, 0.1)?;
    put("embeddings.LayerNorm.bias".into(), &[h], 0.0, 0.1)?;
    let attention_norm = match flavor {
        BertFlavor::Mpnet => "attention.LayerNorm",
        BertFlavor::Bert | BertFlavor::Roberta => "attention.output.LayerNorm",
    };
    for l in 0..spec.num_layers {
        let p = format!("encoder.layer.{l}");
        for target in LinearTarget::ALL {
            let (out_dim, in_dim) = match target {
                LinearTarget::Intermediate => (ff, h),
                LinearTarget::Output => (h, ff),
                _ => (h, h),
            };
            let name = target.checkpoint_name_in(flavor);
            put(format!("{p}.{name}.weight"), &[out_dim, in_dim], 0.0, 0.3)?;
            put(format!("{p}.{name}.bias"), &[out_dim], 0.0, 0.1)?;
        }
        for norm in [attention_norm, "output.LayerNorm"] {
            put(format!("{p}.{norm}.weight"), &[h], 1.0, 0.1)?;
            put(format!("{p}.{norm}.bias"), &[h], 0.0, 0.1)?;
        }
    }

    let (model_type, architecture) = match flavor {
        BertFlavor::Bert => ("bert", "BertModel"),
        BertFlavor::Roberta => ("xlm-roberta", "XLMRobertaModel"),
        BertFlavor::Mpnet => ("mpnet", "MPNetModel"),
    };
    let config_json = serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": vocab.len(),
        "hidden_size": h,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "intermediate_size": ff,
        "hidden_act": "gelu",
        "hidden_dropout_prob": spec.dropout,
        "attention_probs_dropout_prob": spec.dropout,
        "max_position_embeddings": positions,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "pad_token_id": pad_token_id,
        "position_embedding_type": "absolute"
    });
    let mut pooling = PoolingConfig::single(spec.pooling[0], h);
    for mode in &spec.pooling[1..] {
        match mode {
            PoolingMode::Cls => pooling.pooling_mode_cls_token = true,
            PoolingMode::Mean => pooling.pooling_mode_mean_tokens = true,
            PoolingMode::Max => pooling.pooling_mode_max_tokens = true,
            PoolingMode::MeanSqrtLen => pooling.pooling_mode_mean_sqrt_len_tokens = true,
        }
    }
    write_fixture_dir(dest, spec, &vocab, &config_json, &tensors, &pooling)?;
    Ok(vocab.len())
}
