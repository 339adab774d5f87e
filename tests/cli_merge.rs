//! `attune merge` on two tiny random models: alpha 0 reproduces the base model's vectors, alpha 1
//! the tuned model's, and alpha 0.5 writes the midpoint of every weight; mismatched models and
//! out-of-range alphas are refused.

use std::path::Path;
use std::process::Command;

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_model::{Device, Encoder, EncoderSettings, ModelDir, TextKind};

fn merge(base: &Path, tuned: &Path, alpha: &str, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(["merge", "--alpha", alpha, "--base"])
        .arg(base)
        .arg("--tuned")
        .arg(tuned)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn vectors(dir: &Path) -> Vec<Vec<f32>> {
    let dir = ModelDir::open(dir).unwrap();
    Encoder::load(&dir, &Device::Cpu, EncoderSettings::default())
        .unwrap()
        .embed(&["red shoe", "blue jacket size 4"], TextKind::Plain)
        .unwrap()
        .embeddings
}

fn weight(dir: &Path, name: &str) -> Vec<f32> {
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    tensors[name]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn merge_interpolates_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |n: &str| tmp.path().join(n);
    for (name, seed) in [("base", 1), ("tuned", 2)] {
        let spec = RandomBertSpec {
            seed,
            ..RandomBertSpec::default()
        };
        write_random_bert(&path(name), &spec).unwrap();
    }
    for (alpha, expected) in [("0", "base"), ("1", "tuned")] {
        let out = path(&format!("merged-{alpha}"));
        let result = merge(&path("base"), &path("tuned"), alpha, &out);
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        for (a, b) in vectors(&out).iter().zip(vectors(&path(expected))) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-6, "alpha {alpha}: {x} vs {y}");
            }
        }
        assert!(out.join("merge_card.json").exists());
    }
    let half = path("merged-half");
    assert!(merge(&path("base"), &path("tuned"), "0.5", &half)
        .status
        .success());
    let name = "encoder.layer.0.attention.self.query.weight";
    let (b, t, m) = (
        weight(&path("base"), name),
        weight(&path("tuned"), name),
        weight(&half, name),
    );
    for ((b, t), m) in b.iter().zip(&t).zip(&m) {
        assert!((m - (b + t) / 2.0).abs() < 1e-6);
    }

    let result = merge(&path("base"), &path("tuned"), "1.5", &path("x"));
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("--alpha"));
    let wide = RandomBertSpec {
        hidden_size: 64,
        intermediate_size: 128,
        ..RandomBertSpec::default()
    };
    write_random_bert(&path("wide"), &wide).unwrap();
    let result = merge(&path("base"), &path("wide"), "0.5", &path("y"));
    assert!(!result.status.success());
    assert!(
        String::from_utf8_lossy(&result.stderr).contains("shape"),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(!path("y").exists(), "nothing written on refusal");
}
