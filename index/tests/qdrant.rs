//! The Qdrant store's own guarantees, with the deterministic fake model, against a Qdrant server
//! the test binary starts: a rebuild embeds only what changed, writes from several connections
//! (as from several attune servers) get distinct sequence numbers and the last acknowledged one
//! wins, a late replay never brings back an older write, the journal carries writes made on
//! an old generation into the new one, and a rebuild trims the journal to what the generations
//! it keeps lack and drops every generation before the previous one. Skipped without the Qdrant binary, unless `ATTUNE_REQUIRE_QDRANT=1`.

use std::collections::BTreeMap;

use attune_index::fixtures::shared_qdrant_url;
use attune_index::{
    BuildMode, BuildSettings, BuildSource, Corpus, Document, Embedder, ModelIdentity,
    QdrantSettings, QdrantStore, ServedCollection, SpaceSpec, UpsertDocument, VectorStore,
};

mod common;
use common::*;

/// A store of the test's own on the shared server, or `None` when there is none (skipped).
fn store(test: &str) -> Option<QdrantStore> {
    let Some(url) = shared_qdrant_url() else {
        eprintln!("skipped: index/tests/qdrant.rs::{test}: no Qdrant binary");
        if let Some(path) = std::env::var_os("ATTUNE_SKIP_LOG") {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(file, "index/tests/qdrant.rs::{test}: no Qdrant binary").unwrap();
        }
        return None;
    };
    let settings = QdrantSettings {
        prefix: format!("i{:016x}", rand::random::<u64>()),
        ..QdrantSettings::at(&url)
    };
    Some(QdrantStore::connect(settings).unwrap())
}

fn corpus(dir: &std::path::Path, docs: &[serde_json::Value]) -> Corpus {
    let path = dir.join(format!("corpus-{}.jsonl", rand::random::<u32>()));
    write_corpus(&path, docs);
    Corpus::read(&path).unwrap()
}

fn build(
    store: &QdrantStore,
    corpus: &Corpus,
    base: &mut WordHash,
    tuned: &mut WordHash,
) -> attune_index::BuildReport {
    let mut spaces = [
        SpaceSpec {
            name: "base".into(),
            embedder: base as &mut dyn Embedder,
        },
        SpaceSpec {
            name: "tuned".into(),
            embedder: tuned as &mut dyn Embedder,
        },
    ];
    store
        .build(
            "shop",
            BuildSource::Corpus {
                corpus,
                mode: BuildMode::Merge,
            },
            &mut spaces,
            &BuildSettings::default(),
            &mut |_| {},
        )
        .unwrap()
}

fn upsert(collection: &dyn ServedCollection, id: &str, title: &str) {
    let document = Document {
        id: id.into(),
        title: title.into(),
        text: format!("text of {title}"),
        metadata: Default::default(),
    };
    let text = document.embedding_text();
    let vectors: BTreeMap<String, Vec<f32>> = collection
        .spaces()
        .iter()
        .map(|(space, identity)| (space.clone(), word_vector(&text, salt_of(identity))))
        .collect();
    let models: BTreeMap<String, ModelIdentity> = collection.spaces();
    collection
        .upsert(&[UpsertDocument { document, vectors }], &models)
        .unwrap();
}

/// The salt of the fake models this test builds with (base 1, tuned 2, retuned 3).
fn salt_of(identity: &ModelIdentity) -> u64 {
    [("base", 1), ("tuned", 2), ("retuned", 3)]
        .iter()
        .find(|(name, _)| *identity == common::identity(name))
        .map(|(_, salt)| *salt)
        .expect("a model of this test")
}

#[test]
fn a_rebuild_embeds_only_what_changed() {
    let Some(store) = store("a_rebuild_embeds_only_what_changed") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let docs: Vec<_> = (0..40).map(product).collect();
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    let first = build(&store, &corpus(tmp.path(), &docs), &mut base, &mut tuned);
    assert_eq!(
        (
            first.generation,
            first.embedded["base"],
            first.embedded["tuned"]
        ),
        (1, 40, 40)
    );
    let again = build(&store, &corpus(tmp.path(), &docs), &mut base, &mut tuned);
    assert_eq!(
        (again.generation, again.embedded["base"], again.unchanged),
        (2, 0, 40)
    );
    let mut changed = docs.clone();
    for doc in changed.iter_mut().take(3) {
        doc["text"] = serde_json::json!(format!("{} rewritten", doc["text"].as_str().unwrap()));
    }
    let third = build(&store, &corpus(tmp.path(), &changed), &mut base, &mut tuned);
    assert_eq!(
        (
            third.embedded["base"],
            third.embedded["tuned"],
            third.updated
        ),
        (3, 3, 3)
    );
    let collection = store.open_collection("shop").unwrap();
    assert_eq!((collection.generation(), collection.len()), (3, 40));
    // The vectors reused are the ones the model gives.
    let doc = collection.document("p7").unwrap().unwrap();
    let expected = word_vector(&doc.to_document().embedding_text(), 1);
    let stored = collection.vector("base", "p7").unwrap().unwrap();
    let cosine = cosine(&expected, &stored);
    assert!(cosine > 0.9999, "{cosine}");
}

#[test]
fn writes_from_several_connections_are_ordered_and_none_is_lost() {
    let Some(store) = store("writes_from_several_connections_are_ordered_and_none_is_lost") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(
        &store,
        &corpus(tmp.path(), &(0..5).map(product).collect::<Vec<_>>()),
        &mut base,
        &mut tuned,
    );
    let settings = store.settings().clone();
    // Four "servers" write 15 documents each at once.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let settings = settings.clone();
            std::thread::spawn(move || {
                let own = QdrantStore::connect(settings).unwrap();
                let collection = own.open_collection("shop").unwrap();
                for i in 0..15 {
                    upsert(
                        collection.as_ref(),
                        &format!("w{w}-{i}"),
                        &format!("writer {w} item {i}"),
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let collection = store.open_collection("shop").unwrap();
    assert_eq!(collection.len(), 5 + 60);
    // The last acknowledged write of a document wins, whichever connection made it.
    let other = QdrantStore::connect(settings)
        .unwrap()
        .open_collection("shop")
        .unwrap();
    upsert(collection.as_ref(), "p1", "first version");
    upsert(other.as_ref(), "p1", "second version");
    assert_eq!(
        collection.document("p1").unwrap().unwrap().title,
        "second version"
    );
    // A late replay of the journal (a server catching up) changes nothing: p1 stays the second
    // version, and a deleted document stays deleted.
    assert!(other.delete("p2").unwrap());
    let fresh = QdrantStore::connect(store.settings().clone())
        .unwrap()
        .open_collection("shop")
        .unwrap();
    assert!(
        fresh.catch_up(None).unwrap() >= 63,
        "every journaled write is replayed"
    );
    assert_eq!(
        fresh.document("p1").unwrap().unwrap().title,
        "second version"
    );
    assert!(fresh.document("p2").unwrap().is_none());
    assert_eq!(fresh.len(), 5 + 60 - 1);
}

#[test]
fn writes_to_an_old_generation_reach_the_new_one() {
    let Some(store) = store("writes_to_an_old_generation_reach_the_new_one") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let docs: Vec<_> = (0..10).map(product).collect();
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&store, &corpus(tmp.path(), &docs), &mut base, &mut tuned);
    let old = store.open_collection("shop").unwrap();
    // Generation 2 with another tuned model; a server still on generation 1 then writes.
    let mut retuned = WordHash::new("retuned", 3);
    let report = build(&store, &corpus(tmp.path(), &docs), &mut base, &mut retuned);
    assert_eq!(report.generation, 2);
    upsert(old.as_ref(), "late", "late arrival");
    assert!(old.delete("p3").unwrap());
    let new = store.open_collection("shop").unwrap();
    assert!(
        new.document("late").unwrap().is_none(),
        "not applied before catching up"
    );
    // Without the new model's embedder the upsert waits; with it, both writes apply.
    let mut embedder = Models(vec![
        ("base", WordHash::new("base", 1)),
        ("tuned", WordHash::new("retuned", 3)),
    ]);
    assert!(new.catch_up(Some(&mut embedder)).unwrap() >= 2);
    assert_eq!(new.document("late").unwrap().unwrap().title, "late arrival");
    assert!(new.document("p3").unwrap().is_none());
    let text = new
        .document("late")
        .unwrap()
        .unwrap()
        .to_document()
        .embedding_text();
    let stored = new.vector("tuned", "late").unwrap().unwrap();
    let cosine = cosine(&word_vector(&text, 3), &stored);
    assert!(cosine > 0.9999, "embedded by the new tuned model: {cosine}");
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The spaces' fake models, as the server's embedder of journaled writes.
struct Models(Vec<(&'static str, WordHash)>);

impl attune_index::SpaceEmbedder for Models {
    fn embed_documents(&mut self, space: &str, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let (_, model) = self
            .0
            .iter_mut()
            .find(|(s, _)| *s == space)
            .ok_or("no such space")?;
        model.embed_documents(texts).map_err(|e| e.to_string())
    }
}

/// The attune collections of `store` on its Qdrant server, through Qdrant's HTTP API.
fn qdrant_collections(store: &QdrantStore) -> Vec<String> {
    let settings = store.settings();
    let url = format!("{}/collections", settings.url.trim_end_matches('/'));
    let body: serde_json::Value = ureq::get(&url)
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let mut names: Vec<String> = body["result"]["collections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .filter(|name| name.starts_with(&format!("{}~", settings.prefix)))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[test]
fn a_rebuild_drops_every_generation_before_the_previous_one() {
    let Some(store) = store("a_rebuild_drops_every_generation_before_the_previous_one") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path(), &(0..5).map(product).collect::<Vec<_>>());
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    for _ in 0..3 {
        build(&store, &corpus, &mut base, &mut tuned);
    }
    let prefix = store.settings().prefix.clone();
    let generation = |g: u64| format!("{prefix}~shop~g{g}");
    let generations = |store: &QdrantStore| -> Vec<String> {
        qdrant_collections(store)
            .into_iter()
            .filter(|c| c.starts_with(&format!("{prefix}~shop~g")))
            .collect()
    };
    assert_eq!(generations(&store), [generation(2), generation(3)]);
    // Generation 1 as a clean-up that failed would have left it.
    let url = format!(
        "{}/collections/{}",
        store.settings().url.trim_end_matches('/'),
        generation(1)
    );
    ureq::put(&url)
        .send_json(serde_json::json!({"vectors": {}}))
        .unwrap();
    assert_eq!(generations(&store).len(), 3);
    let report = build(&store, &corpus, &mut base, &mut tuned);
    assert!(
        report.cleanup_errors.is_empty(),
        "{:?}",
        report.cleanup_errors
    );
    assert_eq!(generations(&store), [generation(3), generation(4)]);
    assert_eq!(store.open_collection("shop").unwrap().len(), 5);
}

/// Points in the collection's journal (one per journaled write call), counted through Qdrant's
/// HTTP API.
fn journal_records(store: &QdrantStore, collection: &str) -> u64 {
    let settings = store.settings();
    let url = format!(
        "{}/collections/{}~{collection}~journal/points/count",
        settings.url.trim_end_matches('/'),
        settings.prefix
    );
    let body: serde_json::Value = ureq::post(&url)
        .send_json(serde_json::json!({"exact": true}))
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    body["result"]["count"].as_u64().unwrap()
}

#[test]
fn a_rebuild_trims_the_journal_to_what_the_kept_generations_lack() {
    let Some(store) = store("a_rebuild_trims_the_journal_to_what_the_kept_generations_lack") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path(), &(0..5).map(product).collect::<Vec<_>>());
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&store, &corpus, &mut base, &mut tuned);
    let stale = store.open_collection("shop").unwrap();
    let first = store.open_collection("shop").unwrap();
    for i in 0..4 {
        upsert(
            first.as_ref(),
            &format!("a{i}"),
            &format!("first batch {i}"),
        );
    }
    // Generation 2 holds records 1–4; generation 1 (kept beside it) holds none: nothing goes.
    build(&store, &corpus, &mut base, &mut tuned);
    assert_eq!(journal_records(&store, "shop"), 4);
    let second = store.open_collection("shop").unwrap();
    for i in 0..3 {
        upsert(
            second.as_ref(),
            &format!("b{i}"),
            &format!("second batch {i}"),
        );
    }
    // Generation 3 drops generation 1; generations 2 and 3 both hold records 1–3.
    build(&store, &corpus, &mut base, &mut tuned);
    assert_eq!(journal_records(&store, "shop"), 4, "records 4–7 stay");
    // A server on generation 2 still catches up; one on the dropped generation 1 is told so.
    assert!(second.catch_up(None).is_ok());
    let error = stale.catch_up(None).unwrap_err();
    assert!(
        matches!(error, attune_index::IndexError::Superseded { .. }),
        "{error}"
    );
    // Numbering goes on after the trim, and every write reaches the next generation.
    let third = store.open_collection("shop").unwrap();
    upsert(third.as_ref(), "c0", "third batch");
    assert_eq!(journal_records(&store, "shop"), 5);
    let report = build(&store, &corpus, &mut base, &mut tuned);
    assert_eq!(report.generation, 4);
    let fresh = store.open_collection("shop").unwrap();
    assert_eq!(fresh.len(), 5 + 4 + 3 + 1);
    assert_eq!(fresh.document("c0").unwrap().unwrap().title, "third batch");
    assert_eq!(
        fresh.document("a0").unwrap().unwrap().title,
        "first batch 0"
    );
}
