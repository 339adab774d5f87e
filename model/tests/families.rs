//! Parity with sentence-transformers for the model families beyond BERT, on tiny randomly
//! initialised directories committed in `tests/fixtures/families/` (written, with their
//! reference embeddings, by `scripts/make-family-fixtures.py`): XLM-RoBERTa (Unigram/Metaspace
//! tokenizer), RoBERTa (byte-level BPE, CLS pooling) and a BERT with a `Dense` module. Each is
//! checked in the classic layout and as sentence-transformers 6.2 saves it (its JSON files
//! with the classic directory's weights and tokenizer). all-MiniLM-L6-v2 as 6.2 saves it is
//! checked against the original directory.

use std::fs;
use std::path::{Path, PathBuf};

use attune_model::{Encoder, EncoderSettings, ModelDir, TextKind};
use candle_core::Device;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families")
}

struct Reference {
    text: String,
    embedding: Vec<f32>,
}

fn reference(family: &str) -> Vec<Reference> {
    let path = fixtures().join(family).join("reference.jsonl");
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            Reference {
                text: v["text"].as_str().unwrap().to_string(),
                embedding: serde_json::from_value(v["embedding"].clone()).unwrap(),
            }
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn embed(dir: &Path, texts: &[&str], batch_size: usize) -> Vec<Vec<f32>> {
    let model = ModelDir::open(dir).unwrap_or_else(|e| panic!("{e}"));
    let settings = EncoderSettings {
        batch_size,
        ..EncoderSettings::default()
    };
    let encoder = Encoder::load(&model, &Device::Cpu, settings).unwrap();
    encoder.embed(texts, TextKind::Plain).unwrap().embeddings
}

/// The worst cosine of `got` to `want`, and the text it belongs to.
fn worst(texts: &[&str], got: &[Vec<f32>], want: &[Vec<f32>]) -> (f64, String) {
    assert_eq!(got.len(), want.len());
    texts
        .iter()
        .zip(got.iter().zip(want))
        .map(|(text, (g, w))| {
            assert_eq!(g.len(), w.len(), "dimension");
            (cosine(g, w), text.to_string())
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap()
}

fn check_family(family: &str, dir: &Path) {
    let reference = reference(family);
    let texts: Vec<&str> = reference.iter().map(|r| r.text.as_str()).collect();
    let want: Vec<Vec<f32>> = reference.iter().map(|r| r.embedding.clone()).collect();
    for batch_size in [32, 1] {
        let got = embed(dir, &texts, batch_size);
        let (cos, text) = worst(&texts, &got, &want);
        assert!(
            cos >= 0.99999,
            "{family} at {} (batch {batch_size}): cosine {cos} for {text:?}",
            dir.display()
        );
    }
}

/// Copies every file under `from` into `to`, keeping relative paths.
fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A directory as sentence-transformers 6.2 saves `classic`: the JSON files it wrote
/// (`st6_json`) with `classic`'s weights and tokenizer.
fn st6_dir(tmp: &Path, classic: &Path, st6_json: &Path) -> PathBuf {
    let dir = tmp.join("st6");
    fs::create_dir_all(&dir).unwrap();
    copy_tree(st6_json, &dir);
    for name in [
        "model.safetensors",
        "tokenizer.json",
        "2_Dense/model.safetensors",
    ] {
        if classic.join(name).exists() {
            fs::copy(classic.join(name), dir.join(name)).unwrap();
        }
    }
    dir
}

fn check_both_layouts(family: &str) {
    let classic = fixtures().join(family);
    check_family(family, &classic);
    let tmp = tempfile::tempdir().unwrap();
    let st6_json = fixtures().join(format!("{family}-st6"));
    check_family(family, &st6_dir(tmp.path(), &classic, &st6_json));
}

#[test]
fn xlm_roberta_matches_sentence_transformers_in_both_layouts() {
    check_both_layouts("xlm-roberta");
}

#[test]
fn roberta_with_byte_level_bpe_matches_sentence_transformers_in_both_layouts() {
    check_both_layouts("roberta");
}

#[test]
fn a_dense_module_matches_sentence_transformers_in_both_layouts() {
    let model = ModelDir::open(fixtures().join("bert-dense")).unwrap();
    assert_eq!(model.dense.len(), 1);
    assert_eq!(model.embedding_dimension(), 16);
    check_both_layouts("bert-dense");
}

#[test]
fn sentence_transformers_6_layout_reads_its_length_from_the_tokenizer_config() {
    let tmp = tempfile::tempdir().unwrap();
    let classic = fixtures().join("xlm-roberta");
    let dir = st6_dir(tmp.path(), &classic, &fixtures().join("xlm-roberta-st6"));
    let model = ModelDir::open(&dir).unwrap();
    assert_eq!(
        model.max_seq_length, 24,
        "tokenizer_config.json's model_max_length"
    );
    assert!(model.normalize);
    assert_eq!(
        model.pooling_modes,
        ModelDir::open(&classic).unwrap().pooling_modes
    );
}

#[test]
fn a_directory_attune_writes_keeps_the_dense_module() {
    let tmp = tempfile::tempdir().unwrap();
    let source = ModelDir::open(fixtures().join("bert-dense")).unwrap();
    let written = tmp.path().join("copy");
    source
        .write_updated(&written, &Default::default(), &[])
        .unwrap();
    let modules = fs::read_to_string(written.join("modules.json")).unwrap();
    assert!(
        modules.contains("sentence_transformers.models.Dense"),
        "{modules}"
    );
    check_family("bert-dense", &written);
}

#[test]
fn minilm_as_sentence_transformers_6_saves_it_embeds_like_the_original() {
    let original = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
    assert!(
        original.join("model.safetensors").exists(),
        "fetch the model first: scripts/fetch-model.sh"
    );
    let tmp = tempfile::tempdir().unwrap();
    let st6_json = fixtures().join("st6-all-MiniLM-L6-v2");
    let st6 = st6_dir(tmp.path(), &original, &st6_json);
    let texts: Vec<String> = reference("xlm-roberta")
        .into_iter()
        .map(|r| r.text)
        .chain(std::iter::once(
            "a long text about return policies ".repeat(60),
        ))
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let model = ModelDir::open(&st6).unwrap();
    assert_eq!(model.max_seq_length, 256);
    let want = embed(&original, &texts, 32);
    let got = embed(&st6, &texts, 32);
    let (cos, text) = worst(&texts, &got, &want);
    assert!(cos >= 0.99999, "cosine {cos} for {text:?}");
}

#[test]
fn modernbert_matches_sentence_transformers_in_both_layouts() {
    check_both_layouts("modernbert");
}

/// Released ModernBERT checkpoints spell the layer pattern and rotary bases the old way
/// (`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`); transformers 5.x
/// writes `layer_types` and `rope_parameters`. Both give the same model.
#[test]
fn modernbert_reads_the_released_config_spelling() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("released");
    fs::create_dir_all(&dir).unwrap();
    copy_tree(&fixtures().join("modernbert"), &dir);
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let object = config.as_object_mut().unwrap();
    object.remove("layer_types");
    object.remove("rope_parameters");
    object.insert("global_attn_every_n_layers".into(), 3.into());
    object.insert("global_rope_theta".into(), 160000.0.into());
    object.insert("local_rope_theta".into(), 10000.0.into());
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    check_family("modernbert", &dir);
}

/// ModernBERT's fused inference path (rotary in place, sliding windows as a bias) agrees with
/// its differentiable training path.
#[test]
fn modernbert_fused_and_training_paths_agree() {
    use attune_model::{Mode, TextTokenizer, TrainContext};
    use candle_core::{DType, Tensor};
    let model = ModelDir::open(fixtures().join("modernbert")).unwrap();
    let transformer = model
        .architecture
        .load(model.var_builder(DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let tokenizer = TextTokenizer::new(&model, None).unwrap();
    let texts: Vec<String> = reference("modernbert")
        .into_iter()
        .map(|r| r.text)
        .collect();
    let toks = tokenizer.tokenize(&texts, "").unwrap();
    let (n, seq) = (toks.len(), toks.iter().map(|t| t.ids.len()).max().unwrap());
    let mut ids = vec![transformer.pad_token_id(); n * seq];
    let mut mask = vec![0f32; n * seq];
    for (row, t) in toks.iter().enumerate() {
        ids[row * seq..row * seq + t.ids.len()].copy_from_slice(&t.ids);
        mask[row * seq..row * seq + t.ids.len()].fill(1.0);
    }
    let ids = Tensor::from_vec(ids, (n, seq), &Device::Cpu).unwrap();
    let mask_t = Tensor::from_vec(mask.clone(), (n, seq), &Device::Cpu).unwrap();
    let types = ids.zeros_like().unwrap();
    let ctx = TrainContext::new(0);
    let run = |mode| {
        transformer
            .forward(&ids, &types, &mask_t, mode)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap()
    };
    let (fused, train) = (run(Mode::Inference), run(Mode::Train(&ctx)));
    for row in 0..n {
        for pos in 0..seq {
            if mask[row * seq + pos] == 1.0 {
                let d = fused[row][pos]
                    .iter()
                    .zip(&train[row][pos])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-4, "text {row} token {pos}: {d}");
            }
        }
    }
}

/// A sparse encoder or cross-encoder directory is refused by name, not embedded as if it were a
/// sentence-embedding model.
#[test]
fn other_kinds_of_sentence_transformers_models_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let classic = fixtures().join("xlm-roberta");
    let dir = st6_dir(tmp.path(), &classic, &fixtures().join("xlm-roberta-st6"));
    let path = dir.join("config_sentence_transformers.json");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        text.replace("\"SentenceTransformer\"", "\"SparseEncoder\""),
    )
    .unwrap();
    let err = ModelDir::open(&dir).unwrap_err().to_string();
    assert!(
        err.contains("config_sentence_transformers.json") && err.contains("SparseEncoder"),
        "{err}"
    );
    fs::write(&path, text).unwrap();

    let path = dir.join("sentence_bert_config.json");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replace("feature-extraction", "fill-mask")).unwrap();
    let err = ModelDir::open(&dir).unwrap_err().to_string();
    assert!(
        err.contains("transformer_task") && err.contains("fill-mask"),
        "{err}"
    );
}

/// Prompt tuning's soft prompt on every family: a directory with a prompt equal to the token
/// embeddings of two words embeds a text exactly as the same model without a prompt embeds
/// `[first token] word word text...` with the two words left out of pooling (written out here
/// from the model's hidden states, its pooling and its Dense modules). The prompt changes the
/// model's fingerprint, is carried into a directory written from it, and blocks interpolation.
#[test]
fn a_soft_prompt_acts_as_its_vectors_would_as_tokens_in_every_family() {
    use attune_model::fixtures::{write_random_bert, RandomBertSpec};
    use attune_model::pooling::{l2_normalize, pool};
    use attune_model::{soft_prompt, BertFlavor, Mode, SoftPrompt};
    use candle_core::{DType, Tensor};

    let tmp = tempfile::tempdir().unwrap();
    let mpnet = tmp.path().join("mpnet");
    let spec = RandomBertSpec {
        flavor: BertFlavor::Mpnet,
        ..RandomBertSpec::default()
    };
    write_random_bert(&mpnet, &spec).unwrap();
    let mut dirs = vec![("mpnet".to_string(), mpnet)];
    for family in ["bert-dense", "roberta", "xlm-roberta", "modernbert"] {
        dirs.push((family.to_string(), fixtures().join(family)));
    }
    let texts = ["red running shoes", "a", "the return policy is 30 days"];
    for (family, base_dir) in dirs {
        let base = ModelDir::open(&base_dir).unwrap();
        let plain = Encoder::load(&base, &Device::Cpu, EncoderSettings::default()).unwrap();
        let words: Vec<u32> =
            plain.tokenize(&["shoe size"], TextKind::Plain).unwrap()[0].ids[1..3].to_vec();
        let table = base.var_builder(DType::F32, &Device::Cpu).unwrap();
        let name = match family.as_str() {
            "modernbert" => "embeddings.tok_embeddings.weight",
            _ => "embeddings.word_embeddings.weight",
        };
        let table = table.get_unchecked(name).unwrap();
        let ids = Tensor::new(words.as_slice(), &Device::Cpu).unwrap();
        let prompt = SoftPrompt::new(table.index_select(&ids, 0).unwrap()).unwrap();

        let tuned = tmp.path().join(format!("{family}-prompted"));
        base.write_updated(
            &tuned,
            &Default::default(),
            &[(soft_prompt::FILE.to_string(), prompt.to_bytes().unwrap())],
        )
        .unwrap();
        let tuned = ModelDir::open(&tuned).unwrap();
        assert_ne!(tuned.fingerprint().unwrap(), base.fingerprint().unwrap());
        let encoder = Encoder::load(&tuned, &Device::Cpu, EncoderSettings::default()).unwrap();
        assert_eq!(encoder.soft_prompt().map(SoftPrompt::len), Some(2));
        let got = encoder.embed(&texts, TextKind::Plain).unwrap().embeddings;

        for (text, got) in texts.iter().zip(&got) {
            let mut ids = plain.tokenize(&[*text], TextKind::Plain).unwrap()[0]
                .ids
                .clone();
            ids.splice(1..1, words.iter().copied());
            let seq = ids.len();
            let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let ones = Tensor::ones((1, seq), DType::F32, &Device::Cpu).unwrap();
            let hidden = plain
                .model()
                .forward(&ids, &ids.zeros_like().unwrap(), &ones, Mode::Inference)
                .unwrap();
            let mut keep = vec![1f32; seq];
            keep[1..3].fill(0.0);
            let keep = Tensor::from_vec(keep, (1, seq), &Device::Cpu).unwrap();
            let mut pooled = pool(&hidden, &keep, &base.pooling_modes).unwrap();
            for dense in base.load_dense(&Device::Cpu).unwrap() {
                pooled = dense.forward(&pooled).unwrap();
            }
            if base.normalize {
                pooled = l2_normalize(&pooled).unwrap();
            }
            let want = pooled.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
            let cos = cosine(got, &want);
            assert!(cos > 0.99999, "{family}, {text:?}: cosine {cos}");
            let unprompted = &plain.embed(&[*text], TextKind::Plain).unwrap().embeddings[0];
            assert!(
                cosine(got, unprompted) < 0.9999,
                "{family}: the prompt changed nothing"
            );
        }

        let copy = tmp.path().join(format!("{family}-copy"));
        tuned
            .write_updated(&copy, &Default::default(), &[])
            .unwrap();
        let copy = ModelDir::open(&copy).unwrap();
        assert_eq!(copy.fingerprint().unwrap(), tuned.fingerprint().unwrap());
        let merged = tmp.path().join(format!("{family}-merged"));
        let err = ModelDir::interpolate(&base, &tuned, 0.5, &merged, &[]).unwrap_err();
        assert!(err.to_string().contains("prompt-tuned"), "{err}");
        assert!(!merged.exists());
    }
}
