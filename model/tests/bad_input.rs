//! A broken model directory gets an error that names the file and the problem.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_model::{Encoder, EncoderSettings, ModelDir};
use candle_core::Device;

fn fresh(tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    write_random_bert(&dir, &RandomBertSpec::default()).unwrap();
    dir
}

/// Opens and loads the directory, returning the error message.
fn load_error(dir: &Path) -> String {
    match ModelDir::open(dir) {
        Err(e) => e.to_string(),
        Ok(model) => match Encoder::load(&model, &Device::Cpu, EncoderSettings::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        },
    }
}

#[test]
fn missing_directory_and_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = load_error(&tmp.path().join("nope"));
    assert!(
        err.contains("nope") && err.contains("missing (model directory)"),
        "{err}"
    );

    for (file, what) in [
        ("config.json", "transformer config"),
        ("tokenizer.json", "fast tokenizer"),
        ("model.safetensors", "model weights"),
        ("1_Pooling/config.json", "pooling config"),
    ] {
        let dir = fresh(tmp.path(), &file.replace('/', "_"));
        fs::remove_file(dir.join(file)).unwrap();
        let err = load_error(&dir);
        assert!(
            err.contains(file) && err.contains("missing") && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn invalid_json_is_named_with_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    for file in [
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        let dir = fresh(tmp.path(), &file.replace('/', "_"));
        // Well-typed up to line 3, where the syntax breaks.
        let broken = if file == "modules.json" {
            "[\n  {\"path\": \"\",\n  oops\n]"
        } else {
            "{\n  \"hidden_size\": 32,\n  oops\n}"
        };
        fs::write(dir.join(file), broken).unwrap();
        let err = load_error(&dir);
        assert!(
            err.contains(file) && err.contains("invalid JSON") && err.contains("line 3"),
            "{err}"
        );
    }
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fresh(tmp.path(), "arch");
    let path = dir.join("config.json");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"bert\"", "\"t5\"")
        .replace("BertModel", "T5Model");
    fs::write(&path, text).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("unsupported architecture `t5`"), "{err}");
    assert!(err.contains("supported: bert, camembert, mpnet"), "{err}");
}

#[test]
fn unsupported_module_lists_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fresh(tmp.path(), "cnn");
    let path = dir.join("modules.json");
    let mut modules: Vec<serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    modules.push(serde_json::json!({"idx": 3, "name": "3", "path": "3_CNN", "type": "sentence_transformers.models.CNN"}));
    fs::write(&path, serde_json::to_string(&modules).unwrap()).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("modules.json") && err.contains("sentence_transformers.models.CNN"),
        "{err}"
    );
    assert!(
        err.contains("supported: Transformer, Pooling, Dense, Normalize"),
        "{err}"
    );
}

#[test]
fn corrupt_tokenizer_and_weights_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fresh(tmp.path(), "tok");
    fs::write(dir.join("tokenizer.json"), "{\"model\": 12}").unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("tokenizer.json") && err.contains("invalid tokenizer"),
        "{err}"
    );

    let dir = fresh(tmp.path(), "weights");
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("model.safetensors") && err.contains("invalid weights"),
        "{err}"
    );
}

#[test]
fn a_missing_or_misshapen_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fresh(tmp.path(), "tensors");
    let path = dir.join("model.safetensors");
    let mut tensors: HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("encoder.layer.1.output.dense.weight");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("encoder.layer.1.output.dense.weight"), "{err}");

    let dir = fresh(tmp.path(), "shape");
    let path = dir.join("model.safetensors");
    let mut tensors: HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.insert(
        "encoder.layer.0.attention.self.query.weight".into(),
        candle_core::Tensor::zeros((32, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("encoder.layer.0.attention.self.query.weight") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn impossible_settings_in_the_directory_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fresh(tmp.path(), "seq");
    fs::write(
        dir.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 4096}"#,
    )
    .unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("sentence_bert_config.json") && err.contains("max_seq_length"),
        "{err}"
    );

    let dir = fresh(tmp.path(), "pool");
    fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("1_Pooling/config.json") && err.contains("no pooling mode"),
        "{err}"
    );
}
