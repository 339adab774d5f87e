//! Evaluation embeds exactly the text the index serves: for every document of the shared BEIR
//! sets and of a corpus with stray whitespace, the text `attune eval` (and mining and training,
//! which read corpora through `attune-eval`) embeds equals, byte for byte, the text that
//! `attune index build` hands to the model. Reads `../shared/data` (or `ATTUNE_SHARED_DIR`);
//! a missing set fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attune_eval::data::{read_corpus, DataReport};
use attune_index::Store;
use attune_index::{
    build_collection, BuildMode, BuildSettings, BuildSource, Corpus, Embedder, ModelIdentity,
    SpaceSpec,
};

/// Hands out small fixed vectors and records every text it was asked to embed.
struct Recorder {
    identity: ModelIdentity,
    texts: Vec<String>,
}

impl Embedder for Recorder {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn embed_documents(
        &mut self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        self.texts.extend(texts.iter().map(|t| t.to_string()));
        Ok(texts
            .iter()
            .map(|t| vec![1.0, t.len() as f32 % 7.0, 0.5])
            .collect())
    }
}

fn shared_data() -> PathBuf {
    std::env::var_os("ATTUNE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("data")
}

/// The texts evaluation embeds, by document id.
fn evaluated(corpus: &Path) -> BTreeMap<String, String> {
    read_corpus(corpus, &mut DataReport::default())
        .unwrap_or_else(|e| panic!("{}: {e} (set ATTUNE_SHARED_DIR)", corpus.display()))
        .into_iter()
        .map(|d| (d.id.clone(), d.embedding_text()))
        .collect()
}

/// The texts a fresh index build hands to the model, and the index's own text by id.
fn indexed(corpus: &Path) -> (Vec<String>, BTreeMap<String, String>) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(tmp.path()).unwrap();
    let corpus = Corpus::read(corpus).unwrap();
    let mut recorder = Recorder {
        identity: ModelIdentity {
            fingerprint: "recorder".into(),
            dim: 3,
            source: String::new(),
            encoding: None,
        },
        texts: Vec::new(),
    };
    let mut spaces = [SpaceSpec {
        name: "base".into(),
        embedder: &mut recorder,
    }];
    build_collection(
        &store,
        "docs",
        BuildSource::Corpus {
            corpus: &corpus,
            mode: BuildMode::Merge,
        },
        &mut spaces,
        &BuildSettings::default(),
        &mut |_| {},
    )
    .unwrap();
    let by_id = corpus
        .documents
        .iter()
        .map(|d| (d.id.clone(), d.embedding_text()))
        .collect();
    (recorder.texts, by_id)
}

fn assert_same_texts(corpus: &Path) {
    let evaluated = evaluated(corpus);
    let (mut embedded, indexed) = indexed(corpus);
    assert_eq!(evaluated.len(), indexed.len(), "{}", corpus.display());
    for (id, text) in &evaluated {
        assert_eq!(
            Some(text),
            indexed.get(id),
            "{}: document {id:?}",
            corpus.display()
        );
    }
    let mut expected: Vec<String> = evaluated.into_values().collect();
    expected.sort();
    embedded.sort();
    assert!(
        embedded == expected,
        "{}: the index build embedded other texts than evaluation",
        corpus.display()
    );
}

#[test]
fn beir_sets_are_embedded_alike_by_evaluation_and_the_index() {
    for set in ["scifact", "cranfield", "haystack_icecat"] {
        assert_same_texts(&shared_data().join(set).join("corpus.jsonl"));
    }
}

#[test]
fn stray_whitespace_is_embedded_alike_by_evaluation_and_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("corpus.jsonl");
    let lines = [
        r#"{"_id": "a", "title": "  Trail shoe ", "text": "\n grippy sole\t"}"#,
        r#"{"_id": "b", "title": "", "text": "  untitled text  "}"#,
        r#"{"_id": "c", "title": " \t", "text": "blank title"}"#,
        r#"{"_id": "d", "title": "title only ", "text": "   "}"#,
        r#"{"_id": "e", "title": "inner  spaces", "text": "kept\nas  is"}"#,
        r#"{"_id": "f", "title": "\u00a0nbsp\u00a0", "text": "\u3000ideographic"}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    assert_same_texts(&path);
    let (embedded, _) = indexed(&path);
    assert!(
        embedded.contains(&"Trail shoe grippy sole".to_string()),
        "{embedded:?}"
    );
    assert!(
        embedded.contains(&"untitled text".to_string()),
        "{embedded:?}"
    );
}
