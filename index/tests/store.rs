//! The store end to end with a deterministic fake model: persistence, incremental and resumed
//! builds, upserts and deletes, filters, model identity and bad input.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use attune_index::{
    build_collection, BuildMode, BuildReport, BuildSettings, BuildSource, CompactionPolicy, Corpus,
    Document, Filter, IndexError, LexicalRequest, ModelIdentity, SearchHit, SearchRequest,
    SpaceSpec, Store, UpsertDocument,
};
use serde_json::json;

mod common;
use common::*;

struct Setup {
    _tmp: tempfile::TempDir,
    store: Store,
    corpus: PathBuf,
}

fn setup(n: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.jsonl");
    write_corpus(&corpus, &(0..n).map(product).collect::<Vec<_>>());
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    Setup {
        _tmp: tmp,
        store,
        corpus,
    }
}

/// A replace build: the collection becomes the corpus.
fn build(
    setup: &Setup,
    base: &mut WordHash,
    tuned: &mut WordHash,
    settings: &BuildSettings,
) -> attune_index::Result<BuildReport> {
    build_mode(setup, base, tuned, settings, BuildMode::Replace)
}

fn build_mode(
    setup: &Setup,
    base: &mut WordHash,
    tuned: &mut WordHash,
    settings: &BuildSettings,
    mode: BuildMode,
) -> attune_index::Result<BuildReport> {
    let corpus = Corpus::read(&setup.corpus)?;
    let mut spaces = [
        SpaceSpec {
            name: "base".into(),
            embedder: base,
        },
        SpaceSpec {
            name: "tuned".into(),
            embedder: tuned,
        },
    ];
    build_collection(
        &setup.store,
        "shop",
        BuildSource::Corpus {
            corpus: &corpus,
            mode,
        },
        &mut spaces,
        settings,
        &mut |_| {},
    )
}

fn search(
    collection: &attune_index::store::Collection,
    space: &str,
    salt: u64,
    text: &str,
    k: usize,
    filter: &Filter,
) -> Vec<SearchHit> {
    search_vector(
        collection,
        space,
        &identity(space),
        &word_vector(text, salt),
        k,
        None,
        filter,
    )
    .unwrap()
}

fn search_vector(
    collection: &attune_index::store::Collection,
    space: &str,
    model: &ModelIdentity,
    vector: &[f32],
    k: usize,
    ef: Option<usize>,
    filter: &Filter,
) -> attune_index::Result<Vec<SearchHit>> {
    collection.search(&SearchRequest {
        space,
        vector,
        model,
        k,
        ef,
        filter,
    })
}

#[test]
fn close_and_reopen_returns_identical_results() {
    let s = setup(3_000);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    let report = build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    assert_eq!((report.added, report.documents), (3_000, 3_000));
    assert_eq!(report.embedded["base"], 3_000);
    let queries = [
        "red leather boot",
        "wool hat",
        "canvas sandal style3",
        "white shirt",
    ];
    let collection = s.store.open_collection("shop").unwrap();
    let before: Vec<Vec<SearchHit>> = queries
        .iter()
        .map(|q| search(&collection, "tuned", 2, q, 10, &Filter::default()))
        .collect();
    assert!(before.iter().all(|hits| hits.len() == 10));
    drop(collection);
    let reopened = s.store.open_collection("shop").unwrap();
    for (q, hits) in queries.iter().zip(&before) {
        assert_eq!(
            &search(&reopened, "tuned", 2, q, 10, &Filter::default()),
            hits
        );
    }
    // Every document finds itself first from its own stored vector.
    for id in ["p0", "p1234", "p2999"] {
        let vector = reopened.vector("base", id).unwrap().unwrap();
        let hits = search_vector(
            &reopened,
            "base",
            &identity("base"),
            &vector,
            1,
            None,
            &Filter::default(),
        )
        .unwrap();
        assert_eq!(hits[0].id, id);
    }
}

#[test]
fn rebuilds_embed_only_what_changed_and_deletions_disappear() {
    let s = setup(800);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    assert_eq!(base.embedded, 800);

    // Unchanged corpus: nothing embedded, a new generation all the same.
    let report = build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    assert_eq!(report.embedded["base"] + report.embedded["tuned"], 0);
    assert_eq!((report.unchanged, report.generation), (800, 2));

    // Ten changed texts, one metadata-only change, one deletion.
    let mut docs: Vec<serde_json::Value> = (0..800).map(product).collect();
    for doc in docs.iter_mut().take(10) {
        doc["text"] = json!(format!("{} refreshed", doc["text"].as_str().unwrap()));
    }
    docs[20]["metadata"]["category"] = json!("clearance");
    let gone = docs.remove(500);
    write_corpus(&s.corpus, &docs);
    let report = build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    assert_eq!(report.embedded["base"], 10);
    assert_eq!(report.embedded["tuned"], 10);
    assert_eq!(
        (report.updated, report.deleted, report.documents),
        (10, 1, 799)
    );

    let collection = s.store.open_collection("shop").unwrap();
    let gone_id = gone["_id"].as_str().unwrap();
    let gone_title = gone["title"].as_str().unwrap();
    let hits = search(&collection, "base", 1, gone_title, 50, &Filter::default());
    assert!(hits.iter().all(|h| h.id != gone_id));
    assert!(collection.document(gone_id).unwrap().is_none());
    let clearance = Filter::parse_clauses(&["category=clearance"]).unwrap();
    let hits = search(&collection, "base", 1, "anything", 10, &clearance);
    assert_eq!(
        hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        vec!["p20"]
    );
    // Old generations beyond the previous one are removed.
    assert_eq!(
        fs::read_dir(s.store.root().join("collections/shop"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("gen-"))
            .count(),
        2
    );
}

#[test]
fn an_interrupted_build_keeps_serving_the_old_generation_and_resumes_without_redoing_work() {
    let s = setup(1_000);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    // A new model for "tuned": every document must be re-embedded in that space.
    let settings = BuildSettings {
        batch_size: 100,
        ..BuildSettings::default()
    };
    let mut retuned = WordHash::new("tuned-v2", 3);
    retuned.fail_after = Some(4);
    let err = build(&s, &mut base, &mut retuned, &settings).unwrap_err();
    assert!(matches!(err, IndexError::Embedding { .. }), "{err}");
    assert_eq!(retuned.embedded, 400);
    let manifest = s.store.manifest("shop").unwrap();
    assert_eq!((manifest.current, manifest.building), (Some(1), Some(2)));
    assert_eq!(manifest.spaces["tuned"].fingerprint, "fingerprint-tuned");
    // Still serving generation 1, with the old model.
    let collection = s.store.open_collection("shop").unwrap();
    assert_eq!(
        search(&collection, "tuned", 2, "red boot", 5, &Filter::default()).len(),
        5
    );
    drop(collection);

    retuned.fail_after = None;
    let report = build(&s, &mut base, &mut retuned, &settings).unwrap();
    assert!(report.resumed);
    assert_eq!(
        report.embedded["tuned"], 600,
        "work done before the crash is not redone"
    );
    assert_eq!(report.embedded["base"], 0);
    assert_eq!(retuned.embedded, 1_000);
    let collection = s.store.open_collection("shop").unwrap();
    assert_eq!(collection.generation(), 2);
    assert_eq!(collection.len(), 1_000);
}

#[test]
fn a_different_model_is_refused_naming_both_fingerprints() {
    let s = setup(200);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    let collection = s.store.open_collection("shop").unwrap();
    let other = identity("other");
    let none = Filter::default();
    let err = search_vector(
        &collection,
        "tuned",
        &other,
        &word_vector("red", 2),
        5,
        None,
        &none,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("fingerprint-tuned") && err.contains("fingerprint-other"),
        "{err}"
    );
    let models: BTreeMap<String, ModelIdentity> =
        [("base".into(), identity("base")), ("tuned".into(), other)].into();
    let err = collection
        .upsert(
            &[UpsertDocument {
                document: Document {
                    id: "new".into(),
                    title: "x".into(),
                    text: "y".into(),
                    metadata: Default::default(),
                },
                vectors: [
                    ("base".into(), word_vector("x y", 1)),
                    ("tuned".into(), word_vector("x y", 2)),
                ]
                .into(),
            }],
            &models,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fingerprint-tuned") && err.contains("fingerprint-other"),
        "{err}"
    );
    assert!(collection.document("new").unwrap().is_none());
}

#[test]
fn unknown_collection_and_space_are_clear_errors() {
    let s = setup(50);
    let err = s.store.open_collection("nope").unwrap_err().to_string();
    assert!(
        err.contains("unknown collection \"nope\"") && err.contains("none"),
        "{err}"
    );
    let err = Store::open(&s.corpus.with_file_name("elsewhere")).unwrap_err();
    assert!(matches!(err, IndexError::NotAStore { .. }), "{err}");
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    let err = s.store.open_collection("nope").unwrap_err().to_string();
    assert!(err.contains("collections: shop"), "{err}");
    let collection = s.store.open_collection("shop").unwrap();
    let (fancy, none) = (identity("fancy"), Filter::default());
    let err = search_vector(
        &collection,
        "fancy",
        &fancy,
        &word_vector("red", 2),
        5,
        None,
        &none,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no space \"fancy\"") && err.contains("base, tuned"),
        "{err}"
    );
    assert!(matches!(
        s.store.open_collection("../x"),
        Err(IndexError::InvalidName { .. })
    ));
}

#[test]
fn an_unchanged_or_shrunk_corpus_carries_the_graph_over() {
    let s = setup(800);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    let mut docs: Vec<serde_json::Value> = (0..800).map(product).collect();
    let gone = docs.remove(123);
    write_corpus(&s.corpus, &docs);
    let report = build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    assert_eq!((report.deleted, report.unchanged), (1, 799));
    let collection = s.store.open_collection("shop").unwrap();
    let stats = collection.stats().unwrap();
    // The previous graph was relabeled, not rebuilt: the deleted point is a tombstone.
    assert!(stats
        .spaces
        .iter()
        .all(|sp| sp.graph_points == 800 && sp.tombstones == 1));
    let title = gone["title"].as_str().unwrap();
    let hits = search(&collection, "base", 1, title, 20, &Filter::default());
    assert!(hits.iter().all(|h| h.id != "p123"));
    assert_eq!(
        search(
            &collection,
            "base",
            1,
            "red leather shoe model0",
            1,
            &Filter::default()
        )[0]
        .id,
        "p0"
    );
    drop(collection);
    // Unchanged again: still carried over, and the tombstone is not counted as a document.
    let report = build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    assert_eq!(
        (report.deleted, report.unchanged, report.added),
        (0, 799, 0)
    );
    // The document comes back: the graph no longer covers the corpus and is rebuilt.
    docs.push(gone);
    write_corpus(&s.corpus, &docs);
    let report = build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    assert_eq!(report.added, 1);
    let stats = s.store.open_collection("shop").unwrap().stats().unwrap();
    assert!(stats
        .spaces
        .iter()
        .all(|sp| sp.graph_points == 800 && sp.tombstones == 0));
}

#[test]
fn a_generation_open_elsewhere_is_reported_as_in_use() {
    let s = setup(30);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    let serving = s.store.open_collection("shop").unwrap();
    let err = s.store.open_collection("shop").unwrap_err();
    assert!(matches!(err, IndexError::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another attune process"),
        "{err}"
    );
    // A build writes a new generation (its own database) while this one serves.
    let report = build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    assert_eq!(report.generation, 2);
    assert_eq!(serving.len(), 30);
}

#[test]
fn a_bad_corpus_line_commits_nothing() {
    let s = setup(100);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    let manifest = s.store.manifest("shop").unwrap();
    let mut body = fs::read_to_string(&s.corpus).unwrap();
    body.push_str("{\"_id\": \"broken\", \"title\": \"no text here\"}\n");
    fs::write(&s.corpus, body).unwrap();
    let err = build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("corpus.jsonl:101"), "{message}");
    assert_eq!(s.store.manifest("shop").unwrap(), manifest);
    assert_eq!(base.embedded, 100);
}

#[test]
fn filters_select_inside_the_graph_and_exactly_when_selective() {
    let s = setup(5_000);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    let collection = s.store.open_collection("shop").unwrap();
    // 2,500 footwear documents and a small ef: the graph walk is cheaper than a scan, so the
    // filter is applied inside the graph search.
    let footwear = Filter::parse_clauses(&["category=footwear"]).unwrap();
    let vector = word_vector("red leather shoe", 1);
    let hits = search_vector(
        &collection,
        "base",
        &identity("base"),
        &vector,
        20,
        Some(20),
        &footwear,
    )
    .unwrap();
    assert_eq!(hits.len(), 20);
    assert!(hits.iter().all(|h| h.metadata["category"] == "footwear"));
    // A selective conjunction with a list: answered exactly.
    let narrow = Filter::parse_clauses(&["material=wool", "size=[41,42]", "tags=boot"]).unwrap();
    let hits = search(&collection, "base", 1, "boot", 1_000, &narrow);
    let expected = (0..5_000)
        .map(product)
        .filter(|p| {
            let m = &p["metadata"];
            m["material"] == "wool"
                && (m["size"] == 41 || m["size"] == 42)
                && m["tags"].as_array().unwrap().contains(&json!("boot"))
        })
        .count();
    assert!(expected > 0);
    assert_eq!(hits.len(), expected);
}

#[test]
fn upserts_and_deletes_are_searchable_at_once_and_compaction_rebuilds_the_graph() {
    let s = setup(1_500);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    let policy = CompactionPolicy {
        min_changes: 40,
        ratio: 0.02,
    };
    let collection = s.store.open_collection_with("shop", policy).unwrap();
    let models: BTreeMap<String, ModelIdentity> = [
        ("base".into(), identity("base")),
        ("tuned".into(), identity("tuned")),
    ]
    .into();
    let doc = |id: &str, text: &str| UpsertDocument {
        document: Document {
            id: id.into(),
            title: String::new(),
            text: text.into(),
            metadata: json!({"category": "new"}).as_object().unwrap().clone(),
        },
        vectors: [
            ("base".into(), word_vector(text, 1)),
            ("tuned".into(), word_vector(text, 2)),
        ]
        .into(),
    };
    let report = collection
        .upsert(
            &[
                doc("fresh", "purple velvet slipper"),
                doc("p3", "orange rubber clog"),
            ],
            &models,
        )
        .unwrap();
    assert_eq!((report.added, report.updated), (1, 1));
    let hits = search(
        &collection,
        "tuned",
        2,
        "purple velvet slipper",
        3,
        &Filter::default(),
    );
    assert_eq!(hits[0].id, "fresh");
    let hits = search(
        &collection,
        "base",
        1,
        "orange rubber clog",
        3,
        &Filter::default(),
    );
    assert_eq!(hits[0].id, "p3");
    assert_eq!(
        hits.iter().filter(|h| h.id == "p3").count(),
        1,
        "the old version is gone"
    );

    assert!(collection.delete("fresh").unwrap());
    assert!(!collection.delete("fresh").unwrap());
    let hits = search(
        &collection,
        "tuned",
        2,
        "purple velvet slipper",
        10,
        &Filter::default(),
    );
    assert!(hits.iter().all(|h| h.id != "fresh"));

    // Enough changes to pass the policy: the graphs are rebuilt, results stay right.
    let batch: Vec<UpsertDocument> = (0..40)
        .map(|i| doc(&format!("extra{i}"), &format!("extra item number{i} teal")))
        .collect();
    let report = collection.upsert(&batch, &models).unwrap();
    assert_eq!(
        report.compacted,
        vec!["base".to_string(), "tuned".to_string()]
    );
    let stats = collection.stats().unwrap();
    assert!(stats
        .spaces
        .iter()
        .all(|s| s.tombstones == 0 && s.delta == 0));
    assert_eq!(stats.documents, 1_540);
    let hits = search(
        &collection,
        "base",
        1,
        "extra item number7 teal",
        1,
        &Filter::default(),
    );
    assert_eq!(hits[0].id, "extra7");
    drop(collection);
    // The rebuilt graph was persisted: reopening finds no delta.
    let reopened = s.store.open_collection("shop").unwrap();
    assert!(reopened
        .stats()
        .unwrap()
        .spaces
        .iter()
        .all(|s| s.delta == 0 && s.tombstones == 0));
}

#[test]
fn a_corrupt_or_missing_graph_is_rebuilt_from_the_stored_vectors() {
    let s = setup(600);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    let dir = s.store.root().join("collections/shop/gen-000001");
    let graph = dir.join("base.graph");
    let mut bytes = fs::read(&graph).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 1;
    fs::write(&graph, bytes).unwrap();
    fs::remove_file(dir.join("tuned.graph")).unwrap();
    let collection = s.store.open_collection("shop").unwrap();
    let hits = search(
        &collection,
        "base",
        1,
        "red leather shoe model0",
        1,
        &Filter::default(),
    );
    assert_eq!(hits[0].id, "p0");
    assert!(dir.join("tuned.graph").exists());
    assert_eq!(collection.stats().unwrap().spaces[0].graph_points, 600);
}

#[test]
fn facets_count_live_documents_per_metadata_value() {
    let s = setup(300);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    let collection = s.store.open_collection("shop").unwrap();
    let products: Vec<serde_json::Value> = (0..300).map(product).collect();
    let count = |field: &str, value: &serde_json::Value, products: &[serde_json::Value]| {
        products
            .iter()
            .filter(|p| match &p["metadata"][field] {
                serde_json::Value::Array(items) => items.contains(value),
                other => other == value,
            })
            .count()
    };
    let facets = collection.facets(100);
    let material = facets.iter().find(|f| f.field == "material").unwrap();
    assert_eq!(material.distinct, MATERIALS.len());
    for value in &material.values {
        assert_eq!(
            value.count,
            count("material", &value.value, &products),
            "{value:?}"
        );
    }
    assert!(material.values.windows(2).all(|w| w[0].count >= w[1].count));
    let tags = facets.iter().find(|f| f.field == "tags").unwrap();
    for value in &tags.values {
        assert_eq!(
            value.count,
            count("tags", &value.value, &products),
            "{value:?}"
        );
    }
    // Numbers come back as numbers; a deleted document no longer counts; max_values caps.
    let size = facets.iter().find(|f| f.field == "size").unwrap();
    assert!(size.values.iter().all(|v| v.value.is_number()));
    let first = products[0]["metadata"]["material"].clone();
    let before = count("material", &first, &products);
    assert!(collection
        .delete(products[0]["_id"].as_str().unwrap())
        .unwrap());
    let after = collection.facets(1);
    let material = after.iter().find(|f| f.field == "material").unwrap();
    assert_eq!(material.values.len(), 1);
    let counted: usize = collection
        .facets(100)
        .iter()
        .find(|f| f.field == "material")
        .unwrap()
        .values
        .iter()
        .find(|v| v.value == first)
        .unwrap()
        .count;
    assert_eq!(counted, before - 1);
}

/// Copies directory `from` to `to` (files only, one level of subdirectories deep is enough for
/// a tantivy index, which is flat).
fn copy_flat(from: &std::path::Path, to: &std::path::Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The lexical space is derived from the stored documents: after writes, it answers like the
/// dense space; one that is missing, or behind the journal (a crash between a write's commit and
/// its lexical commit, simulated by restoring an older copy), is rebuilt when the collection
/// opens; and a filter applies to it as to the dense spaces.
#[test]
fn the_lexical_space_follows_writes_and_is_rebuilt_when_missing_or_behind() {
    let s = setup(300);
    let (mut base, mut tuned) = (WordHash::new("base", 1), WordHash::new("tuned", 2));
    build(&s, &mut base, &mut tuned, &BuildSettings::default()).unwrap();
    let dir = s.store.root().join("collections/shop/gen-000001");
    let lexical_dir = dir.join("lexical.tantivy");
    let older = s._tmp.path().join("lexical-before-writes");
    copy_flat(&lexical_dir, &older);
    let lexical = |collection: &attune_index::store::Collection, text: &str, filter: &Filter| {
        collection
            .lexical_search(&LexicalRequest {
                text,
                k: 400,
                filter,
            })
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect::<Vec<_>>()
    };
    let models: BTreeMap<String, ModelIdentity> = [
        ("base".into(), identity("base")),
        ("tuned".into(), identity("tuned")),
    ]
    .into();
    let upsert = UpsertDocument {
        document: Document {
            id: "fresh".into(),
            title: "zebra sandal".into(),
            text: "a striped sandal".into(),
            metadata: json!({"category": "footwear"}).as_object().unwrap().clone(),
        },
        vectors: [
            ("base".into(), word_vector("zebra sandal", 1)),
            ("tuned".into(), word_vector("zebra sandal", 2)),
        ]
        .into(),
    };
    {
        let collection = s.store.open_collection("shop").unwrap();
        collection.upsert(&[upsert], &models).unwrap();
        for id in ["p1", "p2", "p3"] {
            assert!(collection.delete(id).unwrap());
        }
        assert_eq!(lexical(&collection, "zebra", &Filter::default()), ["fresh"]);
        // Every live document holds "made of": both kinds of space return the same set.
        let mut lexical_ids = lexical(&collection, "made of", &Filter::default());
        lexical_ids.push("fresh".into());
        lexical_ids.sort();
        let mut dense_ids: Vec<String> = collection.ids().unwrap();
        dense_ids.sort();
        assert_eq!(lexical_ids, dense_ids);
        let footwear = Filter::parse_clauses(&["category=footwear"]).unwrap();
        let filtered = lexical(&collection, "made of", &footwear);
        assert!(!filtered.is_empty() && filtered.len() < dense_ids.len() - 1);
        for id in &filtered {
            let doc = collection.document(id).unwrap().unwrap();
            assert_eq!(doc.metadata["category"], "footwear", "{id}");
        }
    }
    for damage in ["behind", "missing"] {
        fs::remove_dir_all(&lexical_dir).unwrap();
        if damage == "behind" {
            copy_flat(&older, &lexical_dir);
        }
        let collection = s.store.open_collection("shop").unwrap();
        assert_eq!(
            lexical(&collection, "zebra", &Filter::default()),
            ["fresh"],
            "{damage}"
        );
        assert!(
            lexical(&collection, "model2", &Filter::default()).is_empty(),
            "{damage}"
        );
        assert_eq!(
            lexical(&collection, "model7", &Filter::default())[0],
            "p7",
            "{damage}"
        );
    }
}
