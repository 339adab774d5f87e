//! Parity with sentence-transformers on the real all-MiniLM-L6-v2 (BERT) and all-mpnet-base-v2
//! (MPNet).
//!
//! Needs the models (`scripts/fetch-model.sh`, `scripts/fetch-model.sh all-mpnet-base-v2`, or
//! `ATTUNE_MODEL_DIR` / `ATTUNE_MPNET_DIR`) and the reference vectors in
//! `../shared/reference/embeddings/` (or `ATTUNE_SHARED_DIR`). A missing MiniLM fails the test
//! with the command that provides it. MPNet (438 MB, fetched on request) is skipped when absent,
//! and reported as skipped, unless `ATTUNE_REQUIRE_MPNET=1` (`.ci/run` fetches it and sets it).

use std::path::PathBuf;

use attune_model::{Encoder, EncoderSettings, ModelDir, TextKind};
use candle_core::Device;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A real model and what its reference vectors look like.
struct RealModel {
    name: &'static str,
    dir_variable: &'static str,
    dimension: usize,
    max_seq_length: usize,
    /// Whether a reference text is longer than `max_seq_length`.
    has_truncated_text: bool,
}

const MINILM: RealModel = RealModel {
    name: "all-MiniLM-L6-v2",
    dir_variable: "ATTUNE_MODEL_DIR",
    dimension: 384,
    max_seq_length: 256,
    has_truncated_text: true,
};

const MPNET: RealModel = RealModel {
    name: "all-mpnet-base-v2",
    dir_variable: "ATTUNE_MPNET_DIR",
    dimension: 768,
    max_seq_length: 384,
    has_truncated_text: true,
};

fn model_path(model: &RealModel) -> PathBuf {
    std::env::var_os(model.dir_variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models").join(model.name))
}

fn reference_path(model: &RealModel) -> PathBuf {
    std::env::var_os("ATTUNE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"))
        .join(format!("reference/embeddings/{}.jsonl", model.name))
}

struct Reference {
    text: String,
    embedding: Vec<f32>,
}

fn load_reference(model: &RealModel) -> Vec<Reference> {
    let path = reference_path(model);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set ATTUNE_SHARED_DIR)", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Reference {
                text: v["text"].as_str().unwrap().to_string(),
                embedding: serde_json::from_value(v["embedding"].clone()).unwrap(),
            }
        })
        .collect()
}

fn open_model(model: &RealModel) -> ModelDir {
    let path = model_path(model);
    ModelDir::open(&path).unwrap_or_else(|e| {
        panic!(
            "{e}\nfetch the model first: scripts/fetch-model.sh {} (or set {})",
            model.name, model.dir_variable
        )
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Every reference text embeds within cosine `bar` of sentence-transformers' fp32 vector.
fn check(real: &RealModel, settings: EncoderSettings, bar: f64) {
    let reference = load_reference(real);
    assert_eq!(reference.len(), 49, "reference file changed?");
    let model = open_model(real);
    assert_eq!(model.max_seq_length, real.max_seq_length);
    let encoder = Encoder::load(&model, &Device::Cpu, settings).unwrap();
    let texts: Vec<&str> = reference.iter().map(|r| r.text.as_str()).collect();
    let out = encoder.embed(&texts, TextKind::Plain).unwrap();
    assert_eq!(
        out.truncated >= 1,
        real.has_truncated_text,
        "texts over {} tokens",
        real.max_seq_length
    );
    let mut worst = (1.0f64, 0usize);
    for (i, (r, got)) in reference.iter().zip(&out.embeddings).enumerate() {
        assert_eq!(got.len(), real.dimension);
        let c = cosine(got, &r.embedding);
        if c < worst.0 {
            worst = (c, i);
        }
    }
    assert!(
        worst.0 >= bar,
        "text {} ({:?}): cosine {} < {bar}",
        worst.1,
        reference[worst.1].text,
        worst.0
    );
    eprintln!("{}: worst cosine {:.6} (bar {bar})", real.name, worst.0);
}

/// The bar of the f32 path: sentence-transformers' vectors to float noise.
const EXACT: f64 = 0.99999;
/// The bar of the bf16 products (operands rounded to 8 significant bits, sums in f32).
const BF16: f64 = 0.999;

/// Batches of 32 texts, whatever their length.
fn batches_of_32() -> EncoderSettings {
    EncoderSettings {
        batch_size: 32,
        max_tokens_per_batch: 32 * 512,
        ..EncoderSettings::default()
    }
}

fn one_per_batch() -> EncoderSettings {
    EncoderSettings {
        batch_size: 1,
        ..EncoderSettings::default()
    }
}

#[test]
fn every_reference_text_matches_sentence_transformers() {
    check(&MINILM, batches_of_32(), EXACT);
}

#[test]
fn parity_holds_one_text_per_batch() {
    check(&MINILM, one_per_batch(), EXACT);
}

/// Whether the MPNet tests run: the model is present, or `ATTUNE_REQUIRE_MPNET=1` demands it.
fn mpnet_runs(test: &str) -> bool {
    let required = std::env::var("ATTUNE_REQUIRE_MPNET").is_ok_and(|v| v == "1");
    if required || model_path(&MPNET).join("model.safetensors").exists() {
        return true;
    }
    attune_model::fixtures::report_skipped(
        test,
        "models/all-mpnet-base-v2 is absent (scripts/fetch-model.sh all-mpnet-base-v2)",
    );
    false
}

#[test]
fn mpnet_matches_sentence_transformers_in_batches_of_32() {
    if mpnet_runs("mpnet_matches_sentence_transformers_in_batches_of_32") {
        check(&MPNET, batches_of_32(), EXACT);
    }
}

#[test]
fn mpnet_matches_sentence_transformers_one_text_per_batch() {
    if mpnet_runs("mpnet_matches_sentence_transformers_one_text_per_batch") {
        check(&MPNET, one_per_batch(), EXACT);
    }
}

fn bf16(settings: EncoderSettings) -> EncoderSettings {
    EncoderSettings {
        precision: attune_model::Precision::Bf16,
        ..settings
    }
}

/// The reduced-precision path (AMX tiles where the CPU has them, else the same rounded operands
/// through f32) stays within cosine 0.999 of sentence-transformers' fp32 vectors, one text per
/// batch and in padded batches.
#[test]
fn bf16_products_stay_within_0_999_of_sentence_transformers() {
    eprintln!(
        "bf16 backend: {:?}",
        attune_model::packed::Bf16Backend::detect()
    );
    check(&MINILM, bf16(batches_of_32()), BF16);
    check(&MINILM, bf16(one_per_batch()), BF16);
    if mpnet_runs("bf16_products_stay_within_0_999_of_sentence_transformers (MPNet)") {
        check(&MPNET, bf16(batches_of_32()), BF16);
    }
}

fn int8(settings: EncoderSettings) -> EncoderSettings {
    EncoderSettings {
        precision: attune_model::Precision::Int8,
        ..settings
    }
}

/// The int8 path (AVX-512 VNNI where the CPU has it, else the same quantized operands through
/// f32) stays within cosine 0.999 of sentence-transformers' fp32 vectors, one text per batch and
/// in padded batches: the speed issue's bar for a reduced precision, as bf16's.
#[test]
fn int8_products_stay_within_0_999_of_sentence_transformers() {
    eprintln!(
        "int8 backend: {:?}",
        attune_model::int8::Int8Backend::detect()
    );
    check(&MINILM, int8(batches_of_32()), BF16);
    check(&MINILM, int8(one_per_batch()), BF16);
    if mpnet_runs("int8_products_stay_within_0_999_of_sentence_transformers (MPNet)") {
        check(&MPNET, int8(batches_of_32()), BF16);
    }
}
