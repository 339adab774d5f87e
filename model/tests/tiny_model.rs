//! Encoder behaviour on tiny random BERT directories written by the test itself (no download).

use std::path::{Path, PathBuf};

use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_model::{
    Architecture, BertFlavor, Encoder, EncoderSettings, ModelDir, PoolingMode, Precision, TextKind,
    TextTokenizer,
};
use candle_core::{DType, Device, Tensor};

const TEXTS: &[&str] = &[
    "red running shoes",
    "the return policy for leather jackets is 30 days",
    "a",
    "",
    "   padded with spaces\tand tabs\n",
    "laptop battery 4000mah",
    "zzzz qqqq xyz words the tiny vocabulary spells letter by letter",
];

fn model_dir(tmp: &Path, name: &str, spec: &RandomBertSpec) -> PathBuf {
    let dir = tmp.join(name);
    write_random_bert(&dir, spec).expect("writes a random model");
    dir
}

fn encoder(dir: &Path, settings: EncoderSettings) -> Encoder {
    Encoder::load(&ModelDir::open(dir).unwrap(), &Device::Cpu, settings).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// An independent reference: candle-transformers' BertModel for the hidden states, and pooling
/// written out by hand per text (no padding at all: each text runs alone).
fn reference_embedding(dir: &Path, text: &str, mode: PoolingMode, normalize: bool) -> Vec<f32> {
    use candle_transformers::models::bert as reference;
    let model_dir = ModelDir::open(dir).unwrap();
    let config: reference::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = model_dir.var_builder(DType::F32, &Device::Cpu).unwrap();
    let bert = reference::BertModel::load(vb, &config).unwrap();
    let tokenizer = TextTokenizer::new(&model_dir, None).unwrap();
    let tok = &tokenizer.tokenize(&[text], "").unwrap()[0];
    let ids = Tensor::new(tok.ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let types = ids.zeros_like().unwrap();
    let hidden = bert
        .forward(&ids, &types, None)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let rows = hidden.to_vec2::<f32>().unwrap();
    let dim = rows[0].len();
    let pooled: Vec<f32> = match mode {
        PoolingMode::Cls => rows[0].clone(),
        PoolingMode::Mean => (0..dim)
            .map(|j| rows.iter().map(|r| r[j]).sum::<f32>() / rows.len() as f32)
            .collect(),
        PoolingMode::Max => (0..dim)
            .map(|j| rows.iter().map(|r| r[j]).fold(f32::MIN, f32::max))
            .collect(),
        PoolingMode::MeanSqrtLen => (0..dim)
            .map(|j| rows.iter().map(|r| r[j]).sum::<f32>() / (rows.len() as f32).sqrt())
            .collect(),
    };
    if normalize {
        let n = norm(&pooled);
        pooled.iter().map(|x| x / n).collect()
    } else {
        pooled
    }
}

#[test]
fn every_pooling_mode_with_and_without_normalize_matches_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    for mode in [
        PoolingMode::Mean,
        PoolingMode::Cls,
        PoolingMode::Max,
        PoolingMode::MeanSqrtLen,
    ] {
        for normalize in [true, false] {
            let spec = RandomBertSpec {
                pooling: vec![mode],
                normalize,
                ..RandomBertSpec::default()
            };
            let dir = model_dir(tmp.path(), &format!("{mode:?}-{normalize}"), &spec);
            let enc = encoder(&dir, EncoderSettings::default());
            let out = enc.embed(TEXTS, TextKind::Plain).unwrap();
            assert_eq!(out.embeddings.len(), TEXTS.len());
            for (text, got) in TEXTS.iter().zip(&out.embeddings) {
                let want = reference_embedding(&dir, text, mode, normalize);
                let d = max_abs_diff(got, &want);
                assert!(
                    d < 1e-5,
                    "{mode:?} normalize={normalize} {text:?}: max diff {d}"
                );
                if normalize {
                    assert!((norm(got) - 1.0).abs() < 1e-5);
                }
            }
            if !normalize {
                // Without the Normalize module the vectors are not unit length.
                assert!(out.embeddings.iter().any(|v| (norm(v) - 1.0).abs() > 1e-3));
            }
        }
    }
}

#[test]
fn concatenated_pooling_modes_give_the_modes_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = RandomBertSpec {
        pooling: vec![PoolingMode::Cls, PoolingMode::Mean],
        normalize: false,
        ..RandomBertSpec::default()
    };
    let dir = model_dir(tmp.path(), "cls-mean", &spec);
    let enc = encoder(&dir, EncoderSettings::default());
    assert_eq!(enc.dimension(), 64);
    let got = &enc.embed(&[TEXTS[1]], TextKind::Plain).unwrap().embeddings[0];
    let cls = reference_embedding(&dir, TEXTS[1], PoolingMode::Cls, false);
    let mean = reference_embedding(&dir, TEXTS[1], PoolingMode::Mean, false);
    assert!(max_abs_diff(&got[..32], &cls) < 1e-5);
    assert!(max_abs_diff(&got[32..], &mean) < 1e-5);
}

#[test]
fn a_text_embeds_the_same_whatever_shares_its_batch() {
    let tmp = tempfile::tempdir().unwrap();
    for mode in [PoolingMode::Mean, PoolingMode::Cls, PoolingMode::Max] {
        let spec = RandomBertSpec {
            pooling: vec![mode],
            ..RandomBertSpec::default()
        };
        let dir = model_dir(tmp.path(), &format!("inv-{mode:?}"), &spec);
        let enc = encoder(&dir, EncoderSettings::default());
        let alone: Vec<Vec<f32>> = TEXTS
            .iter()
            .map(|t| {
                enc.embed(&[*t], TextKind::Plain)
                    .unwrap()
                    .embeddings
                    .remove(0)
            })
            .collect();
        // All texts in one padded batch, then in batches of two, then reversed.
        let together = enc.embed(TEXTS, TextKind::Plain).unwrap().embeddings;
        let small = encoder(
            &dir,
            EncoderSettings {
                batch_size: 2,
                ..EncoderSettings::default()
            },
        );
        let in_pairs = small.embed(TEXTS, TextKind::Plain).unwrap().embeddings;
        let reversed: Vec<&str> = TEXTS.iter().rev().copied().collect();
        let mut rev = enc.embed(&reversed, TextKind::Plain).unwrap().embeddings;
        rev.reverse();
        for i in 0..TEXTS.len() {
            for other in [&together[i], &in_pairs[i], &rev[i]] {
                let d = max_abs_diff(&alone[i], other);
                assert!(d <= 1e-5, "{mode:?} text {i}: batch changed it by {d}");
            }
        }
    }
}

#[test]
fn padding_and_truncation_follow_the_model_directory_not_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    // tokenizer.json says: pad and truncate to 8. sentence_bert_config.json says 32.
    let dir = model_dir(tmp.path(), "trunc", &RandomBertSpec::default());
    let model = ModelDir::open(&dir).unwrap();
    assert_eq!(model.max_seq_length, 32);
    let tok = TextTokenizer::new(&model, None).unwrap();
    let short = &tok.tokenize(&["red shoes"], "").unwrap()[0];
    assert_eq!(
        short.ids.len(),
        4,
        "no fixed padding: [CLS] red shoes [SEP]"
    );
    let twenty_words = vec!["shoe"; 20].join(" ");
    let t = &tok.tokenize(&[twenty_words.as_str()], "").unwrap()[0];
    assert_eq!(t.ids.len(), 22, "not truncated at tokenizer.json's 8");
    assert!(!t.truncated);
    let fifty_words = vec!["shoe"; 50].join(" ");
    let t = &tok.tokenize(&[fifty_words.as_str()], "").unwrap()[0];
    assert_eq!(t.ids.len(), 32, "truncated at max_seq_length");
    assert_eq!(*t.ids.last().unwrap(), 3, "[SEP] kept at the end");
    assert!(t.truncated);

    let enc = encoder(&dir, EncoderSettings::default());
    let out = enc
        .embed(
            &[fifty_words.as_str(), "red", fifty_words.as_str()],
            TextKind::Plain,
        )
        .unwrap();
    assert_eq!(out.truncated, 2);
    // An override of max_seq_length is honoured, and bounded by the position embeddings.
    let enc16 = encoder(
        &dir,
        EncoderSettings {
            max_seq_length: Some(16),
            ..EncoderSettings::default()
        },
    );
    assert_eq!(
        enc16
            .tokenize(&[twenty_words.as_str()], TextKind::Plain)
            .unwrap()[0]
            .ids
            .len(),
        16
    );
    let err = Encoder::load(
        &model,
        &Device::Cpu,
        EncoderSettings {
            max_seq_length: Some(65),
            ..EncoderSettings::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("max_seq_length") && err.contains("64"),
        "{err}"
    );
}

#[test]
fn prefixes_apply_per_text_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), "prefix", &RandomBertSpec::default());
    let enc = encoder(
        &dir,
        EncoderSettings {
            query_prefix: Some("query: ".into()),
            document_prefix: Some("document: ".into()),
            ..EncoderSettings::default()
        },
    );
    let q = enc
        .embed(&["red shoes"], TextKind::Query)
        .unwrap()
        .embeddings
        .remove(0);
    let literal = enc
        .embed(&["query: red shoes"], TextKind::Plain)
        .unwrap()
        .embeddings
        .remove(0);
    assert!(max_abs_diff(&q, &literal) < 1e-6);
    let d = enc
        .embed(&["red shoes"], TextKind::Document)
        .unwrap()
        .embeddings
        .remove(0);
    assert!(
        max_abs_diff(&q, &d) > 1e-3,
        "query and document prefixes differ"
    );
}

#[test]
fn empty_and_whitespace_texts_are_embedded_not_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), "empty", &RandomBertSpec::default());
    let enc = encoder(&dir, EncoderSettings::default());
    let out = enc
        .embed(&["", "   ", "\n", "shoes"], TextKind::Plain)
        .unwrap();
    assert_eq!(out.embeddings.len(), 4);
    for v in &out.embeddings {
        assert_eq!(v.len(), 32);
        assert!(v.iter().all(|x| x.is_finite()));
    }
    // Whitespace is stripped, as sentence-transformers does: all three are the empty text.
    assert!(max_abs_diff(&out.embeddings[0], &out.embeddings[1]) < 1e-6);
    assert!(max_abs_diff(&out.embeddings[0], &out.embeddings[2]) < 1e-6);
    assert!(enc
        .embed(&[] as &[&str], TextKind::Plain)
        .unwrap()
        .embeddings
        .is_empty());
}

#[test]
fn missing_weights_name_both_accepted_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), "arch", &RandomBertSpec::default());
    let model = ModelDir::open(&dir).unwrap();
    let Architecture::Bert(cfg) = &model.architecture else {
        panic!("a BERT fixture")
    };
    assert_eq!(cfg.num_hidden_layers, 2);
    assert!(matches!(
        model.weights,
        attune_model::WeightsFile::Safetensors(_)
    ));
    std::fs::rename(dir.join("model.safetensors"), dir.join("elsewhere")).unwrap();
    let err = ModelDir::open(&dir).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("pytorch_model.bin"),
        "{err}"
    );
}

#[test]
fn fused_inference_kernels_agree_with_the_differentiable_training_path() {
    fused_and_training_paths_agree(BertFlavor::Bert);
}

#[test]
fn roberta_fused_and_training_paths_agree() {
    fused_and_training_paths_agree(BertFlavor::Roberta);
}

#[test]
fn mpnet_fused_and_training_paths_agree_with_its_position_bias() {
    fused_and_training_paths_agree(BertFlavor::Mpnet);
}

fn fused_and_training_paths_agree(flavor: BertFlavor) {
    use attune_model::{BertModel, Mode, TrainContext};
    let tmp = tempfile::tempdir().unwrap();
    let spec = RandomBertSpec {
        dropout: 0.0,
        flavor,
        ..RandomBertSpec::default()
    };
    let dir = model_dir(tmp.path(), "paths", &spec);
    let model = ModelDir::open(&dir).unwrap();
    let Architecture::Bert(cfg) = &model.architecture else {
        panic!("a BERT fixture")
    };
    let bert = BertModel::load(model.var_builder(DType::F32, &Device::Cpu).unwrap(), cfg).unwrap();
    let tokenizer = TextTokenizer::new(&model, None).unwrap();
    let toks = tokenizer.tokenize(&TEXTS[..3], "").unwrap();
    let seq = toks.iter().map(|t| t.ids.len()).max().unwrap();
    let mut ids = vec![0u32; 3 * seq];
    let mut mask = vec![0f32; 3 * seq];
    for (r, t) in toks.iter().enumerate() {
        ids[r * seq..r * seq + t.ids.len()].copy_from_slice(&t.ids);
        mask[r * seq..r * seq + t.ids.len()].fill(1.0);
    }
    let ids = Tensor::from_vec(ids, (3, seq), &Device::Cpu).unwrap();
    let mask_t = Tensor::from_vec(mask.clone(), (3, seq), &Device::Cpu).unwrap();
    let types = ids.zeros_like().unwrap();
    let ctx = TrainContext::new(0);
    let fused = bert
        .forward(&ids, &types, &mask_t, Mode::Inference)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let train = bert
        .forward(&ids, &types, &mask_t, Mode::Train(&ctx))
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    for r in 0..3 {
        for p in 0..seq {
            if mask[r * seq + p] == 1.0 {
                let d = max_abs_diff(&fused[r][p], &train[r][p]);
                assert!(d < 1e-4, "text {r} token {p}: {d}");
            }
        }
    }
}

#[test]
fn a_pytorch_model_bin_directory_embeds_like_its_safetensors_twin() {
    // tests/fixtures/tiny_pytorch_model.bin holds the default tiny model's weights in PyTorch's
    // format (regenerate with tests/fixtures/make_tiny_pth.py).
    let tmp = tempfile::tempdir().unwrap();
    let safetensors_dir = model_dir(tmp.path(), "st", &RandomBertSpec::default());
    let pth_dir = model_dir(tmp.path(), "pth", &RandomBertSpec::default());
    std::fs::remove_file(pth_dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_pytorch_model.bin"),
        pth_dir.join("pytorch_model.bin"),
    )
    .unwrap();
    let model = ModelDir::open(&pth_dir).unwrap();
    assert!(matches!(
        model.weights,
        attune_model::WeightsFile::PyTorch(_)
    ));
    let want = encoder(&safetensors_dir, EncoderSettings::default())
        .embed(TEXTS, TextKind::Plain)
        .unwrap();
    let got = encoder(&pth_dir, EncoderSettings::default())
        .embed(TEXTS, TextKind::Plain)
        .unwrap();
    for (g, w) in got.embeddings.iter().zip(&want.embeddings) {
        assert_eq!(g, w, "same weights, same vectors");
    }
}

#[test]
fn bf16_and_f16_products_embed_close_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), "precision", &RandomBertSpec::default());
    let exact = encoder(&dir, EncoderSettings::default())
        .embed(TEXTS, TextKind::Plain)
        .unwrap();
    for precision in [attune_model::Precision::Bf16, attune_model::Precision::F16] {
        let mixed = encoder(
            &dir,
            EncoderSettings {
                precision,
                ..EncoderSettings::default()
            },
        )
        .embed(TEXTS, TextKind::Plain)
        .unwrap();
        for (e, m) in exact.embeddings.iter().zip(&mixed.embeddings) {
            let cosine: f32 =
                e.iter().zip(m).map(|(a, b)| a * b).sum::<f32>() / (norm(e) * norm(m));
            // Narrowed products change the vector a little (not at all would mean they did not run).
            assert!(cosine > 0.999, "{precision}: cosine {cosine}");
            assert!(max_abs_diff(e, m) > 0.0, "{precision}: identical to f32");
            assert!((norm(m) - 1.0).abs() < 1e-5, "still unit length");
        }
    }
}

/// int8 products embed close to f32 on BERT; a family without an int8 path refuses it with an
/// error naming the setting, instead of running f32 under an int8 identity.
#[test]
fn int8_products_embed_close_to_f32_and_other_families_refuse_them() {
    use attune_model::fixtures::tiny_mixer::write_random_tiny_mixer;

    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), "int8", &RandomBertSpec::default());
    let int8 = EncoderSettings {
        precision: attune_model::Precision::Int8,
        ..EncoderSettings::default()
    };
    let exact = encoder(&dir, EncoderSettings::default())
        .embed(TEXTS, TextKind::Plain)
        .unwrap();
    let quantized = encoder(&dir, int8.clone())
        .embed(TEXTS, TextKind::Plain)
        .unwrap();
    for (e, q) in exact.embeddings.iter().zip(&quantized.embeddings) {
        let cosine: f32 = e.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() / (norm(e) * norm(q));
        assert!(cosine > 0.999, "cosine {cosine}");
        assert!(
            max_abs_diff(e, q) > 0.0,
            "identical to f32: int8 did not run"
        );
    }
    let mixer = tmp.path().join("mixer");
    write_random_tiny_mixer(&mixer, &RandomBertSpec::default()).unwrap();
    let Err(err) = Encoder::load(&ModelDir::open(&mixer).unwrap(), &Device::Cpu, int8) else {
        panic!("the tiny mixer has no int8 path, yet loaded with int8");
    };
    let err = err.to_string();
    assert!(
        err.contains("precision") && err.contains("no int8 path"),
        "{err}"
    );
}

/// The model seam's second implementation: the tiny mixer loads through the family registry,
/// embeds batches exactly like single texts (the mask is honoured), and its input-embedding
/// hook reaches the forward pass; BERT's hook does too.
#[test]
fn another_family_embeds_through_the_same_encoder_and_hooks_reach_both() {
    use std::sync::Arc;

    use attune_model::fixtures::tiny_mixer::{write_random_tiny_mixer, MODEL_TYPE};
    use attune_model::InputEmbeddingHook;

    let tmp = tempfile::tempdir().unwrap();
    let mixer = tmp.path().join("mixer");
    write_random_tiny_mixer(&mixer, &RandomBertSpec::default()).unwrap();
    let dir = ModelDir::open(&mixer).unwrap();
    assert!(matches!(
        &dir.architecture,
        attune_model::Architecture::Registered { family, .. } if family.model_type() == MODEL_TYPE
    ));
    let texts = [
        "red running shoes",
        "a",
        "leather jacket with cotton lining and a zip",
    ];
    let mut encoder = Encoder::load(&dir, &Device::Cpu, EncoderSettings::default()).unwrap();
    let batch = encoder.embed(&texts, TextKind::Plain).unwrap().embeddings;
    for (text, vector) in texts.iter().zip(&batch) {
        let single = encoder.embed(&[*text], TextKind::Plain).unwrap().embeddings;
        let diff = single[0]
            .iter()
            .zip(vector)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{text}: padded and unpadded differ by {diff}");
        let norm: f32 = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    assert!(encoder.forward_flops(2, 8) > 0.0);

    // Zeroed token embeddings leave only positions: texts of one length embed alike.
    let zero: InputEmbeddingHook = Arc::new(|xs| xs.zeros_like());
    encoder.model_mut().set_input_embedding_hook(Some(zero));
    let hooked = encoder
        .embed(&["red shoe", "blue size"], TextKind::Plain)
        .unwrap();
    assert_eq!(hooked.embeddings[0], hooked.embeddings[1]);
    encoder.model_mut().set_input_embedding_hook(None);
    assert_eq!(
        encoder.embed(&texts, TextKind::Plain).unwrap().embeddings,
        batch
    );

    let bert = tmp.path().join("bert");
    write_random_bert(&bert, &RandomBertSpec::default()).unwrap();
    let dir = ModelDir::open(&bert).unwrap();
    let mut encoder = Encoder::load(&dir, &Device::Cpu, EncoderSettings::default()).unwrap();
    let plain = encoder.embed(&texts, TextKind::Plain).unwrap().embeddings;
    let zero: InputEmbeddingHook = Arc::new(|xs| xs.zeros_like());
    encoder.model_mut().set_input_embedding_hook(Some(zero));
    let hooked = encoder
        .embed(&["red shoe", "blue size"], TextKind::Plain)
        .unwrap();
    assert_eq!(hooked.embeddings[0], hooked.embeddings[1]);
    encoder.model_mut().set_input_embedding_hook(None);
    assert_eq!(
        encoder.embed(&texts, TextKind::Plain).unwrap().embeddings,
        plain
    );
}

/// Batches side by side (one per lane, each on its own thread) give the very embeddings and
/// counts that one batch at a time over all threads gives, in f32 and in int8.
#[test]
fn batches_computed_side_by_side_equal_one_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), "lanes", &RandomBertSpec::default());
    let texts: Vec<String> = (0..23)
        .map(|i| TEXTS[i % TEXTS.len()].repeat(1 + i % 3))
        .collect();
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for precision in [Precision::F32, Precision::Int8] {
        let run = |concurrent_batches| {
            let settings = EncoderSettings {
                batch_size: 3,
                precision,
                concurrent_batches,
                ..EncoderSettings::default()
            };
            let enc = encoder(&dir, settings);
            let mut progress = Vec::new();
            let out = threads.install(|| {
                enc.embed_with_progress(&texts, TextKind::Plain, &mut |n| progress.push(n))
                    .unwrap()
            });
            (out, progress)
        };
        let (alone, steps) = run(Some(1));
        assert_eq!(steps.len(), 8, "23 texts in batches of 3");
        for lanes in [None, Some(2), Some(5)] {
            let (side_by_side, progress) = run(lanes);
            assert_eq!(
                side_by_side.embeddings, alone.embeddings,
                "{precision} {lanes:?}"
            );
            assert_eq!(
                (
                    side_by_side.tokens,
                    side_by_side.padded_tokens,
                    side_by_side.flops
                ),
                (alone.tokens, alone.padded_tokens, alone.flops)
            );
            assert_eq!(progress.iter().sum::<usize>(), texts.len());
            assert_eq!(progress.len(), steps.len(), "one report per batch");
        }
    }
    let err = Encoder::load(
        &ModelDir::open(&dir).unwrap(),
        &Device::Cpu,
        EncoderSettings {
            concurrent_batches: Some(0),
            ..EncoderSettings::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("concurrent_batches"), "{err}");
}
