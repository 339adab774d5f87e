//! Parity with sentence-transformers on the real all-MiniLM-L6-v2.
//!
//! Needs the model (`scripts/fetch-model.sh`, or `ATTUNE_MODEL_DIR`) and the reference vectors in
//! `../shared/reference/embeddings/` (or `ATTUNE_SHARED_DIR`). Missing inputs fail the test with
//! the command that provides them; CI always has both.

use std::path::PathBuf;

use attune_model::{Encoder, EncoderSettings, ModelDir, TextKind};
use candle_core::Device;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_path() -> PathBuf {
    std::env::var_os("ATTUNE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models/all-MiniLM-L6-v2"))
}

fn reference_path() -> PathBuf {
    std::env::var_os("ATTUNE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"))
        .join("reference/embeddings/all-MiniLM-L6-v2.jsonl")
}

struct Reference {
    text: String,
    embedding: Vec<f32>,
}

fn load_reference() -> Vec<Reference> {
    let path = reference_path();
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

fn open_model() -> ModelDir {
    let path = model_path();
    ModelDir::open(&path).unwrap_or_else(|e| {
        panic!("{e}\nfetch the model first: scripts/fetch-model.sh (or set ATTUNE_MODEL_DIR)")
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn check(settings: EncoderSettings) {
    let reference = load_reference();
    assert_eq!(reference.len(), 49, "reference file changed?");
    let model = open_model();
    assert_eq!(model.max_seq_length, 256);
    let encoder = Encoder::load(&model, &Device::Cpu, settings).unwrap();
    let texts: Vec<&str> = reference.iter().map(|r| r.text.as_str()).collect();
    let out = encoder.embed(&texts, TextKind::Plain).unwrap();
    assert!(
        out.truncated >= 1,
        "the reference has a text over 256 tokens"
    );
    let mut worst = (1.0f64, 0usize);
    for (i, (r, got)) in reference.iter().zip(&out.embeddings).enumerate() {
        assert_eq!(got.len(), 384);
        let c = cosine(got, &r.embedding);
        if c < worst.0 {
            worst = (c, i);
        }
    }
    assert!(
        worst.0 >= 0.99999,
        "text {} ({:?}): cosine {} < 0.99999",
        worst.1,
        reference[worst.1].text,
        worst.0
    );
}

#[test]
fn every_reference_text_matches_sentence_transformers() {
    check(EncoderSettings::default());
}

#[test]
fn parity_holds_one_text_per_batch() {
    check(EncoderSettings {
        batch_size: 1,
        ..EncoderSettings::default()
    });
}
