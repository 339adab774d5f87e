//! Nothing acknowledged is lost: documents written through a served collection survive corpus
//! builds, writes made while a build runs (or after it commits, before a server switches) reach
//! the new generation, and no build deletes a generation a server still serves.

use std::collections::BTreeMap;

use attune_index::store::Collection;
use attune_index::{
    build_collection, BuildMode, BuildReport, BuildSettings, BuildSource, Corpus, Document,
    Embedder, Filter, ModelIdentity, SearchRequest, SpaceSpec, Store, UpsertDocument,
};
use serde_json::Map;

mod common;
use common::*;

struct Fixture {
    tmp: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn new(n: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        write_corpus(
            &tmp.path().join("corpus.jsonl"),
            &(0..n).map(product).collect::<Vec<_>>(),
        );
        let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
        Self { tmp, store }
    }

    fn corpus(&self) -> Corpus {
        Corpus::read(&self.tmp.path().join("corpus.jsonl")).unwrap()
    }

    fn build(&self, mode: BuildMode, tuned: &mut dyn Embedder) -> BuildReport {
        let corpus = self.corpus();
        let source = BuildSource::Corpus {
            corpus: &corpus,
            mode,
        };
        self.build_from(source, tuned)
    }

    fn build_from(&self, source: BuildSource<'_>, tuned: &mut dyn Embedder) -> BuildReport {
        let mut base = WordHash::new("base", 1);
        let mut spaces = [
            SpaceSpec {
                name: "base".into(),
                embedder: &mut base,
            },
            SpaceSpec {
                name: "tuned".into(),
                embedder: tuned,
            },
        ];
        build_collection(
            &self.store,
            "shop",
            source,
            &mut spaces,
            &BuildSettings::default(),
            &mut |_| {},
        )
        .unwrap()
    }

    fn generation_exists(&self, generation: u64) -> bool {
        self.tmp
            .path()
            .join(format!("store/collections/shop/gen-{generation:06}"))
            .exists()
    }
}

/// A document with the vectors of the base model and of a tuned model with `tuned_salt`.
fn upsert(id: &str, text: &str, tuned: &str, tuned_salt: u64) -> (UpsertDocument, ModelMap) {
    let document = UpsertDocument {
        document: Document {
            id: id.into(),
            title: String::new(),
            text: text.into(),
            metadata: Map::new(),
        },
        vectors: [
            ("base".into(), word_vector(text, 1)),
            ("tuned".into(), word_vector(text, tuned_salt)),
        ]
        .into(),
    };
    let models = [
        ("base".into(), identity("base")),
        ("tuned".into(), identity(tuned)),
    ]
    .into();
    (document, models)
}

type ModelMap = BTreeMap<String, ModelIdentity>;

fn write(collection: &Collection, id: &str, text: &str) {
    let (document, models) = upsert(id, text, "tuned", 2);
    collection.upsert(&[document], &models).unwrap();
}

fn top_hit(collection: &Collection, text: &str) -> String {
    collection
        .search(&SearchRequest {
            space: "base",
            vector: &word_vector(text, 1),
            model: &identity("base"),
            k: 1,
            ef: None,
            filter: &Filter::default(),
        })
        .unwrap()[0]
        .id
        .clone()
}

/// Runs `hook` before each batch it embeds: writes arriving while a build runs.
struct DuringBuild<'a> {
    inner: WordHash,
    hook: Box<dyn FnMut() + 'a>,
}

impl Embedder for DuringBuild<'_> {
    fn identity(&self) -> &ModelIdentity {
        self.inner.identity()
    }
    fn embed_documents(
        &mut self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        (self.hook)();
        self.inner.embed_documents(texts)
    }
}

#[test]
fn documents_written_through_the_api_survive_a_corpus_build_and_a_replace_build_names_them() {
    let f = Fixture::new(30);
    f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    // The server keeps generation 1 open the whole time.
    let served = f.store.open_collection("shop").unwrap();
    write(&served, "api-1", "purple velvet slipper");
    write(&served, "api-2", "orange rubber clog");
    assert!(served.delete("api-2").unwrap());

    let report = f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    assert_eq!((report.kept, report.deleted, report.documents), (1, 0, 31));
    let current = f.store.open_collection("shop").unwrap();
    assert_eq!(current.generation(), 2);
    assert!(current.document("api-1").unwrap().is_some());
    assert!(current.document("api-2").unwrap().is_none());
    assert_eq!(top_hit(&current, "purple velvet slipper"), "api-1");
    drop(current);

    let report = f.build(BuildMode::Replace, &mut WordHash::new("tuned", 2));
    assert_eq!(report.removed, ["api-1"]);
    assert_eq!((report.deleted, report.documents), (1, 30));
    let current = f.store.open_collection("shop").unwrap();
    assert!(current.document("api-1").unwrap().is_none());
}

#[test]
fn a_write_acknowledged_after_a_build_commits_reaches_the_new_generation() {
    let f = Fixture::new(30);
    f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    let served = f.store.open_collection("shop").unwrap();
    f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    // Generation 2 is committed; the server has not switched yet and still writes to 1.
    write(&served, "late", "purple velvet slipper");
    assert!(served.delete("p3").unwrap());
    // Opening generation 2 applies them (a server switching; or a restart).
    let current = f.store.open_collection("shop").unwrap();
    assert_eq!(current.generation(), 2);
    assert!(current.document("late").unwrap().is_some());
    assert!(current.document("p3").unwrap().is_none());
    assert_eq!(top_hit(&current, "purple velvet slipper"), "late");
    drop(current);
    // And so does the next build, although the server never switched.
    let report = f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    assert_eq!(report.kept, 1);
    let current = f.store.open_collection("shop").unwrap();
    assert_eq!(current.generation(), 3);
    assert!(current.document("late").unwrap().is_some());
    // p3 is in the corpus: a corpus build upserts it again.
    assert!(current.document("p3").unwrap().is_some());
}

#[test]
fn builds_never_delete_the_generation_a_server_still_serves() {
    let f = Fixture::new(30);
    f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    let served = f.store.open_collection("shop").unwrap();
    for _ in 0..3 {
        f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    }
    assert_eq!(f.store.manifest("shop").unwrap().current, Some(4));
    assert!(f.generation_exists(1), "the served generation was deleted");
    assert!(
        !f.generation_exists(2),
        "an unserved old generation was kept"
    );
    assert!(served.stats().unwrap().disk_bytes > 0);
    // Writes to it still count.
    write(&served, "still", "purple velvet slipper");
    drop(served);
    let current = f.store.open_collection("shop").unwrap();
    assert!(current.document("still").unwrap().is_some());
    drop(current);
    // Once nobody serves it, the next build removes it.
    f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    assert!(!f.generation_exists(1));
}

#[test]
fn a_clean_up_that_fails_after_the_switch_does_not_fail_the_build() {
    let f = Fixture::new(10);
    for _ in 0..3 {
        f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    }
    // Something that cannot be removed as a directory where a stale generation lies.
    let blocker = f.tmp.path().join("store/collections/shop/gen-000001");
    std::fs::write(&blocker, "not a generation").unwrap();
    let report = f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    assert_eq!(report.generation, 4);
    assert_eq!(
        report.cleanup_errors.len(),
        1,
        "{:?}",
        report.cleanup_errors
    );
    assert!(
        report.cleanup_errors[0].contains("gen-000001"),
        "{:?}",
        report.cleanup_errors
    );
    // The switch stands: generation 4 is served, and generation 2 still went.
    assert_eq!(f.store.manifest("shop").unwrap().current, Some(4));
    assert!(!f.generation_exists(2));
    assert_eq!(f.store.open_collection("shop").unwrap().len(), 10);
    // Once the obstacle is gone, the next build's clean-up removes what is stale.
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    let report = f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    assert!(
        report.cleanup_errors.is_empty(),
        "{:?}",
        report.cleanup_errors
    );
    assert!(!f.generation_exists(1) && !f.generation_exists(3));
}

#[test]
fn writes_made_while_a_build_runs_are_applied_after_the_corpus() {
    let f = Fixture::new(40);
    f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    let served = f.store.open_collection("shop").unwrap();
    let mut writes = 0;
    let mut tuned = DuringBuild {
        inner: WordHash::new("tuned", 2),
        hook: Box::new(|| {
            writes += 1;
            write(&served, &format!("mid-{writes}"), "purple velvet slipper");
            // Newer than the corpus: this text wins over the corpus's p5.
            write(&served, "p5", "orange rubber clog");
        }),
    };
    // A replace build of a grown corpus (the new documents are embedded): the corpus lacks
    // the ids written during the build, yet they are kept.
    write_corpus(
        &f.tmp.path().join("corpus.jsonl"),
        &(0..45).map(product).collect::<Vec<_>>(),
    );
    let corpus = f.corpus();
    let report = f.build_from(
        BuildSource::Corpus {
            corpus: &corpus,
            mode: BuildMode::Replace,
        },
        &mut tuned,
    );
    drop(tuned);
    assert!(writes >= 1);
    assert_eq!(report.replayed, 2 * writes);
    let current = f.store.open_collection("shop").unwrap();
    for i in 1..=writes {
        assert!(current.document(&format!("mid-{i}")).unwrap().is_some());
    }
    assert_eq!(
        current.document("p5").unwrap().unwrap().text,
        "orange rubber clog"
    );
    assert_eq!(current.len(), 45 + writes);
}

#[test]
fn a_new_model_re_embeds_writes_made_during_the_build() {
    let f = Fixture::new(30);
    f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    let served = f.store.open_collection("shop").unwrap();
    let mut once = false;
    let mut tuned = DuringBuild {
        inner: WordHash::new("tuned-v2", 3),
        hook: Box::new(|| {
            if !std::mem::replace(&mut once, true) {
                write(&served, "mid", "purple velvet slipper");
            }
        }),
    };
    f.build(BuildMode::Merge, &mut tuned);
    drop(tuned);
    // After the commit, before the switch: carries the old model's vectors.
    write(&served, "after", "orange rubber clog");
    let current = f.store.open_collection("shop").unwrap();
    let expected = |text: &str| {
        let mut v = word_vector(text, 3);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    };
    let mid = current.vector("tuned", "mid").unwrap().unwrap();
    assert!(mid
        .iter()
        .zip(expected("purple velvet slipper"))
        .all(|(a, b)| (a - b).abs() < 1e-6));
    // "after" needs the new model: opening without one leaves it for the server's catch-up,
    // and the generation refuses writes until then.
    assert!(current.document("after").unwrap().is_none());
    assert!(matches!(
        current.delete("p1"),
        Err(attune_index::IndexError::Superseded { .. })
    ));
    struct NewModel;
    impl attune_index::SpaceEmbedder for NewModel {
        fn embed_documents(
            &mut self,
            space: &str,
            texts: &[&str],
        ) -> Result<Vec<Vec<f32>>, String> {
            assert_eq!(
                space, "tuned",
                "base has the same model: its vector is reused"
            );
            Ok(texts.iter().map(|t| word_vector(t, 3)).collect())
        }
    }
    assert_eq!(current.catch_up(Some(&mut NewModel)).unwrap(), 1);
    let after = current.vector("tuned", "after").unwrap().unwrap();
    assert!(after
        .iter()
        .zip(expected("orange rubber clog"))
        .all(|(a, b)| (a - b).abs() < 1e-6));
    assert!(current.delete("p1").unwrap());
}

#[test]
fn a_collection_is_re_embedded_from_its_own_documents_without_a_corpus() {
    let f = Fixture::new(30);
    f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    {
        let served = f.store.open_collection("shop").unwrap();
        write(&served, "api-1", "purple velvet slipper");
        assert!(served.delete("p0").unwrap());
    }
    let mut tuned = WordHash::new("tuned-v2", 3);
    let report = f.build_from(BuildSource::Collection, &mut tuned);
    assert_eq!((report.documents, report.embedded["tuned"]), (30, 30));
    // Base vectors are reused (same model), tuned ones re-embedded.
    assert_eq!(report.embedded["base"], 0);
    let current = f.store.open_collection("shop").unwrap();
    assert!(current.document("api-1").unwrap().is_some());
    assert!(current.document("p0").unwrap().is_none());
    assert_eq!(current.spaces()["tuned"], identity("tuned-v2"));

    let missing = build_collection(
        &f.store,
        "nope",
        BuildSource::Collection,
        &mut [SpaceSpec {
            name: "base".into(),
            embedder: &mut WordHash::new("base", 1),
        }],
        &BuildSettings::default(),
        &mut |_| {},
    );
    assert!(matches!(
        missing,
        Err(attune_index::IndexError::UnknownCollection { .. })
    ));
}

#[test]
fn a_collection_that_is_never_rebuilt_keeps_its_journal_bounded() {
    let f = Fixture::new(10);
    f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    let served = f.store.open_collection("shop").unwrap();
    let journal = f.tmp.path().join("store/collections/shop/journal");
    let segments = || {
        std::fs::read_dir(&journal)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count()
    };
    // About 1 MB per write: 80 writes fill five 16 MiB segments without a checkpoint.
    let big = "slipper ".repeat(130_000);
    for i in 0..80 {
        write(&served, &format!("big-{i}"), &big);
    }
    assert!(segments() < 4, "{} segments", segments());
    drop(served);
    // The checkpoint's snapshot and the remaining records still give every document.
    let report = f.build(BuildMode::Merge, &mut WordHash::new("tuned", 2));
    assert_eq!((report.kept, report.documents), (80, 90));
    let current = f.store.open_collection("shop").unwrap();
    assert_eq!(current.len(), 90);
}
