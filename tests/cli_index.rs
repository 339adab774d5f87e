//! `attune index` end to end on a tiny random model: build, search, stats, drop, incremental
//! rebuilds, bad input, model identity, and SIGKILL at random moments during a build.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use attune_index::{Filter, LexicalRequest, ModelIdentity, SearchRequest, Store};
use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_model::ModelDir;

fn attune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(args)
        .output()
        .expect("attune runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const COLOURS: [&str; 4] = ["red", "blue", "green", "black"];

/// `n` products; `version` changes every text (so a rebuild must embed everything).
fn corpus_lines(n: usize, version: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "_id": format!("p{i}"),
                "title": format!("item{i} v{version} {}", COLOURS[i % 4]),
                "text": format!("{} shoe number {i} edition {version}", COLOURS[(i / 4) % 4]),
                "metadata": {"colour": COLOURS[i % 4]},
            })
            .to_string()
        })
        .collect()
}

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    /// The identity of collection `shop`'s `base` space as stored.
    fn base_identity(&self) -> ModelIdentity {
        Store::open(&self.path("store"))
            .unwrap()
            .manifest("shop")
            .unwrap()
            .spaces["base"]
            .clone()
    }

    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        write_random_bert(&tmp.path().join("model"), &RandomBertSpec::default()).unwrap();
        Self { tmp }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
    fn write_corpus(&self, name: &str, lines: &[String]) {
        std::fs::write(self.path(name), lines.join("\n") + "\n").unwrap();
    }
    fn build_args(&self, corpus: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "index",
            "build",
            "--store",
            &self.arg("store"),
            "--collection",
            "shop",
            "--corpus",
            &self.arg(corpus),
            "--space",
            &format!("base={}", self.arg("model")),
            "--device",
            "cpu",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }
    /// `attune index search` on this fixture's store for `query`, with `extra` flags.
    fn search(&self, query: &str, extra: &[&str]) -> Output {
        let store = self.arg("store");
        let mut args = vec![
            "index", "search", "--store", &store, "--query", query, "--device", "cpu",
        ];
        args.extend_from_slice(extra);
        attune(&args)
    }

    /// The `index search --json` command of "item7 v1 blue" in `space` of `shop`, top 3, with
    /// `extra` flags.
    fn search_top3_command(&self, space: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "--collection",
            "shop",
            "--space",
            space,
            "-k",
            "3",
            "--json",
        ];
        args.extend_from_slice(extra);
        self.search("item7 v1 blue", &args)
    }

    /// `index search` of "item7 v1 blue" in `space` of `shop` answers 3 results: their scores.
    fn search_top3(&self, space: &str) -> Vec<f64> {
        let out = self.search_top3_command(space, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results.len(), 3, "{answer}");
        results
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect()
    }

    /// `index search` of "item7 v1 blue" in space `base` of `shop` answers 3 results.
    fn search_top3_of_base(&self) {
        self.search_top3("base");
    }

    fn build(&self, corpus: &str, extra: &[&str]) -> serde_json::Value {
        let args = self.build_args(corpus, extra);
        let out = attune(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[test]
fn build_search_stats_rebuild_and_drop() {
    let f = Fixture::new();
    let mut lines = corpus_lines(300, 1);
    lines.push(lines[5].replace("item5", "item5 again"));
    f.write_corpus("corpus.jsonl", &lines);
    let args = f.build_args("corpus.jsonl", &[]);
    let out = attune(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 ids appear more than once") && stderr.contains("\"p5\" (lines 6, 301)"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["documents"], 300);
    assert_eq!(report["embedded"]["base"], 300);

    let store = f.arg("store");
    let out = f.search(
        "item5 again",
        &[
            "--collection",
            "shop",
            "--space",
            "base",
            "-k",
            "3",
            "--filter",
            "colour=blue",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = result["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["metadata"]["colour"] == "blue"));

    let out = attune(&["index", "stats", "--store", &store]);
    assert!(out.status.success(), "{}", text(&out));
    let stats = String::from_utf8_lossy(&out.stdout);
    assert!(
        stats.contains("shop: generation 1, 300 documents"),
        "{stats}"
    );
    assert!(stats.contains("bytes per document"), "{stats}");
    assert!(
        stats.contains("lexical: BM25 over title, text; stemmer english"),
        "{stats}"
    );

    // Unchanged: nothing embedded. Ten texts changed: exactly ten embedded.
    let report = f.build("corpus.jsonl", &[]);
    assert_eq!(
        (
            report["embedded"]["base"].as_u64(),
            report["unchanged"].as_u64()
        ),
        (Some(0), Some(300))
    );
    let mut changed = lines.clone();
    for line in changed.iter_mut().skip(100).take(10) {
        *line = line.replace("edition 1", "edition 2");
    }
    changed.remove(0);
    f.write_corpus("corpus.jsonl", &changed);
    // A merge build (the default) keeps the document the corpus lost...
    let report = f.build("corpus.jsonl", &[]);
    assert_eq!(report["embedded"]["base"], 10);
    assert_eq!(
        (
            report["updated"].as_u64(),
            report["kept"].as_u64(),
            report["deleted"].as_u64()
        ),
        (Some(10), Some(1), Some(0))
    );
    // ...a replace build deletes it and names it.
    let report = f.build("corpus.jsonl", &["--mode", "replace"]);
    assert_eq!(report["embedded"]["base"], 0);
    assert_eq!(report["deleted"], 1);
    assert_eq!(report["removed"], serde_json::json!(["p0"]));
    let out = f.search(
        "item0 v1 red",
        &[
            "--collection",
            "shop",
            "--space",
            "base",
            "-k",
            "300",
            "--json",
        ],
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(result["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["id"] != "p0"));

    let out = attune(&["index", "drop", "--store", &store, "--collection", "shop"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = attune(&["index", "drop", "--store", &store, "--collection", "shop"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown collection \"shop\""),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_input_and_other_models_are_refused_with_clear_messages() {
    let f = Fixture::new();
    f.write_corpus("corpus.jsonl", &corpus_lines(50, 1));
    f.build("corpus.jsonl", &[]);
    let manifest = std::fs::read(f.path("store/collections/shop/collection.json")).unwrap();

    let mut lines = corpus_lines(50, 2);
    lines.insert(7, r#"{"_id": "x", "title": "no body"}"#.to_string());
    f.write_corpus("bad.jsonl", &lines);
    let args = f.build_args("bad.jsonl", &[]);
    let out = attune(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("bad.jsonl:8: document \"x\" has no \"text\" field"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(f.path("store/collections/shop/collection.json")).unwrap(),
        manifest
    );

    let search = |extra: &[&str]| f.search("red", extra);
    let out = search(&["--collection", "nope", "--space", "base"]);
    assert!(
        text(&out).contains("unknown collection \"nope\"")
            && text(&out).contains("collections: shop"),
        "{}",
        text(&out)
    );
    let out = search(&["--collection", "shop", "--space", "tuned"]);
    assert!(
        text(&out).contains("has no space \"tuned\" (spaces: base, lexical, hybrid:base)"),
        "{}",
        text(&out)
    );

    // Another model for the query: refused, naming both fingerprints.
    write_random_bert(
        &f.path("other"),
        &RandomBertSpec {
            seed: 7,
            ..RandomBertSpec::default()
        },
    )
    .unwrap();
    let other = f.arg("other");
    let out = search(&["--collection", "shop", "--space", "base", "--model", &other]);
    assert!(!out.status.success());
    let message = text(&out);
    let stored = Store::open(&f.path("store"))
        .unwrap()
        .manifest("shop")
        .unwrap()
        .spaces["base"]
        .fingerprint
        .clone();
    assert!(
        message.contains(&format!("built with model {stored}")),
        "{message}"
    );
    assert!(
        message.contains("the vectors given come from model"),
        "{message}"
    );
}

/// A prompt-tuned model (the base's weights plus a soft prompt) is another model to the index:
/// its space is embedded with the prompt, its identity is the prompted directory's fingerprint,
/// and queries embedded by the base model are refused for it.
#[test]
fn a_prompt_tuned_space_is_embedded_with_its_prompt_and_is_its_own_model() {
    use attune_model::{soft_prompt, SoftPrompt};
    let f = Fixture::new();
    let base = ModelDir::open(f.path("model")).unwrap();
    let vectors = candle_core::Tensor::randn(0f32, 1.0, (3, 32), &candle_core::Device::Cpu);
    let prompt = SoftPrompt::new(vectors.unwrap()).unwrap();
    base.write_updated(
        &f.path("prompted"),
        &Default::default(),
        &[(soft_prompt::FILE.to_string(), prompt.to_bytes().unwrap())],
    )
    .unwrap();
    let prompted = ModelDir::open(f.path("prompted")).unwrap();
    f.write_corpus("corpus.jsonl", &corpus_lines(40, 1));
    let tuned_space = format!("tuned={}", f.arg("prompted"));
    let report = f.build("corpus.jsonl", &["--space", &tuned_space]);
    assert_eq!(report["embedded"]["tuned"], 40, "{report}");
    let manifest = Store::open(&f.path("store"))
        .unwrap()
        .manifest("shop")
        .unwrap();
    let (b, t) = (&manifest.spaces["base"], &manifest.spaces["tuned"]);
    // The identity derives from the prompted directory's fingerprint, which the prompt changes.
    assert_ne!(prompted.fingerprint().unwrap(), base.fingerprint().unwrap());
    assert_ne!(t.fingerprint, b.fingerprint);
    assert!(t.source.ends_with("prompted"), "{}", t.source);

    assert_ne!(f.search_top3("tuned"), f.search_top3("base"));
    let base_arg = f.arg("model");
    let out = f.search_top3_command("tuned", &["--model", &base_arg]);
    assert!(!out.status.success());
    assert!(text(&out).contains("built with model"), "{}", text(&out));
}

/// A space built at a truncation length other than the model's default is searched at that
/// length: the identity records it, and `attune index search` rebuilds the same encoder (it
/// used to reload the model at its default length and refuse the space as another model).
#[test]
fn a_space_built_with_max_seq_len_is_searched_at_that_length() {
    let f = Fixture::new();
    f.write_corpus("corpus.jsonl", &corpus_lines(40, 1));
    let report = f.build("corpus.jsonl", &["--max-seq-len", "12"]);
    assert_eq!(report["embedded"]["base"], 40);
    let identity = f.base_identity();
    assert_eq!(identity.encoding.as_ref().unwrap().max_seq_len, 12);
    f.search_top3_of_base();
}

/// A Matryoshka space: built at its first 8 dimensions, recorded in the identity, searched with
/// queries truncated alike; a rebuild at the full width is another model, re-embedded whole.
#[test]
fn a_space_built_at_a_matryoshka_dimension_is_searched_at_it() {
    let f = Fixture::new();
    f.write_corpus("corpus.jsonl", &corpus_lines(40, 1));
    let report = f.build("corpus.jsonl", &["--dimension", "8"]);
    assert_eq!(report["embedded"]["base"], 40);
    let identity = f.base_identity();
    assert_eq!(identity.dim, 8);
    assert_eq!(identity.encoding.as_ref().unwrap().dimension, Some(8));
    f.search_top3_of_base();
    // The whole vector is another identity: a rebuild re-embeds every document into a new
    // generation, so a space never mixes two widths.
    let report = f.build("corpus.jsonl", &[]);
    assert_eq!(report["embedded"]["base"], 40, "{report}");
    let identity = f.base_identity();
    assert!(identity.dim > 8 && identity.encoding.as_ref().unwrap().dimension.is_none());
    let wide = f.build_args("corpus.jsonl", &["--dimension", "100000"]);
    let out = attune(&wide.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !out.status.success() && text(&out).contains("truncate_dim"),
        "{}",
        text(&out)
    );
}

/// A space built with bf16 products (AMX tiles where the CPU has them): the precision is in the
/// identity, queries are embedded in bf16 too, and an f32 rebuild is another model, re-embedded
/// whole, so a space never mixes vectors of two precisions.
#[test]
fn a_space_built_with_bf16_products_is_searched_in_bf16_and_never_mixed() {
    let f = Fixture::new();
    f.write_corpus("corpus.jsonl", &corpus_lines(40, 1));
    let report = f.build("corpus.jsonl", &["--precision", "bf16"]);
    assert_eq!(report["embedded"]["base"], 40);
    let bf16 = f.base_identity();
    assert_eq!(
        bf16.encoding.as_ref().unwrap().precision.as_deref(),
        Some("bf16")
    );
    f.search_top3_of_base();
    // Unchanged documents at the same precision are not re-embedded.
    let report = f.build("corpus.jsonl", &["--precision", "bf16"]);
    assert_eq!(report["embedded"]["base"], 0, "{report}");
    let report = f.build("corpus.jsonl", &["--precision", "f32"]);
    assert_eq!(report["embedded"]["base"], 40, "{report}");
    let f32 = f.base_identity();
    assert!(f32.encoding.as_ref().unwrap().precision.is_none());
    assert!(!f32.same_model(&bf16));
}

/// A store written before identities recorded their encoding (the identity JSON had no
/// `encoding`; the fingerprint is the same) still serves: `attune index search` recovers the
/// truncation length from the fingerprint, and the next `attune index build` upgrades the
/// stored identity.
#[test]
fn a_store_written_before_encodings_were_recorded_is_searched_and_upgraded() {
    use attune_app::ModelEmbedder;
    use attune_index::{
        build_collection, BuildMode, BuildSettings, BuildSource, Corpus, Embedder, SpaceSpec,
    };

    /// The model as the old code presented it to the store: same vectors, identity without
    /// an encoding.
    struct OldIdentity(ModelEmbedder, ModelIdentity);
    impl Embedder for OldIdentity {
        fn identity(&self) -> &ModelIdentity {
            &self.1
        }
        fn embed_documents(
            &mut self,
            texts: &[&str],
        ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
            self.0.embed_documents(texts)
        }
    }

    let f = Fixture::new();
    f.write_corpus("corpus.jsonl", &corpus_lines(40, 1));
    let model =
        ModelEmbedder::load(&f.path("model"), &attune_model::Device::Cpu, Some(12)).unwrap();
    let old = ModelIdentity {
        encoding: None,
        ..model.identity().clone()
    };
    let mut embedder = OldIdentity(model, old.clone());
    let store = Store::open_or_create(&f.path("store")).unwrap();
    build_collection(
        &store,
        "shop",
        BuildSource::Corpus {
            corpus: &Corpus::read(&f.path("corpus.jsonl")).unwrap(),
            mode: BuildMode::Merge,
        },
        &mut [SpaceSpec {
            name: "base".into(),
            embedder: &mut embedder,
        }],
        &BuildSettings::default(),
        &mut |_| {},
    )
    .unwrap();
    drop(store);
    let manifest =
        std::fs::read_to_string(f.path("store/collections/shop/collection.json")).unwrap();
    assert!(!manifest.contains("encoding"), "{manifest}");

    f.search_top3_of_base();

    // A rebuild with the same model at the same length embeds nothing and records the encoding.
    let report = f.build("corpus.jsonl", &["--max-seq-len", "12"]);
    assert_eq!(report["embedded"]["base"], 0, "{report}");
    let identity = f.base_identity();
    assert_eq!(identity.fingerprint, old.fingerprint);
    assert_eq!(identity.encoding.as_ref().unwrap().max_seq_len, 12);
}

/// Checks the store serves one complete generation: every document of `expected` (one of the
/// corpora) present, with that corpus's text, and found by a search with its own vector.
fn check_served(store_dir: &Path, corpora: &[Vec<String>]) -> usize {
    let store = Store::open(store_dir).unwrap();
    let collection = store.open_collection("shop").unwrap();
    let ids: HashSet<String> = collection.ids().unwrap().into_iter().collect();
    let spaces: BTreeMap<_, _> = collection.spaces();
    let model = &spaces["base"];
    let matching: Vec<usize> = corpora
        .iter()
        .enumerate()
        .filter(|(_, corpus)| {
            corpus.len() == ids.len()
                && corpus.iter().all(|line| {
                    let doc: serde_json::Value = serde_json::from_str(line).unwrap();
                    let id = doc["_id"].as_str().unwrap();
                    collection
                        .document(id)
                        .unwrap()
                        .is_some_and(|stored| stored.text == doc["text"].as_str().unwrap())
                })
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "the served generation is not exactly one of the corpora"
    );
    for id in &ids {
        let vector = collection.vector("base", id).unwrap().unwrap();
        let hits = collection
            .search(&SearchRequest {
                space: "base",
                vector: &vector,
                model,
                k: 20,
                ef: Some(400),
                filter: &Filter::default(),
            })
            .unwrap();
        // The tiny random model maps many texts to nearly equal vectors, so a wide search.
        assert!(
            hits.iter().any(|h| &h.id == id),
            "{id} is not searchable: {:?}",
            hits.iter().map(|h| (&h.id, h.score)).collect::<Vec<_>>()
        );
    }
    // The lexical space of the served generation holds exactly its live documents.
    let every = collection
        .lexical_search(&LexicalRequest {
            text: "shoe",
            k: ids.len() + 10,
            filter: &Filter::default(),
        })
        .unwrap();
    assert_eq!(every.len(), ids.len(), "lexical space vs live documents");
    for id in &ids {
        let title = collection.document(id).unwrap().unwrap().title;
        let token = title.split(' ').next().unwrap();
        let hits = collection
            .lexical_search(&LexicalRequest {
                text: token,
                k: 1,
                filter: &Filter::default(),
            })
            .unwrap();
        assert_eq!(hits[0].id, *id, "lexical search of {token:?}");
    }
    matching[0]
}

#[test]
fn sigkill_at_random_moments_never_loses_the_served_generation() {
    let f = Fixture::new();
    let corpora = [corpus_lines(4_000, 1), corpus_lines(4_000, 2)];
    f.write_corpus("v0.jsonl", &corpora[0]);
    f.write_corpus("v1.jsonl", &corpora[1]);
    f.build("v0.jsonl", &["--batch-size", "100"]);
    // The duration of a build that re-embeds everything, the work every trial below does.
    let started = Instant::now();
    f.build("v1.jsonl", &["--batch-size", "100"]);
    let full = started.elapsed();
    assert_eq!(check_served(&f.path("store"), &corpora), 1);

    // A deterministic spread of kill moments across the whole build, start to switch.
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut outcomes = Vec::new();
    for trial in 0..12 {
        let target = trial % 2 == 1; // alternate corpora so every build has real work
        let corpus = if target { "v1.jsonl" } else { "v0.jsonl" };
        let served_before = check_served(&f.path("store"), &corpora);
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let fraction = (state % 1000) as f64 / 1000.0;
        let delay = full.mul_f64(0.02 + 0.98 * fraction);
        let args = f.build_args(corpus, &["--batch-size", "100"]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_attune"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        let served = check_served(&f.path("store"), &corpora);
        assert!(
            served == served_before || served == target as usize,
            "trial {trial}: served corpus {served}"
        );
        outcomes.push((delay, finished, served != served_before));
        // A rerun completes and serves the new corpus.
        f.build(corpus, &["--batch-size", "100"]);
        assert_eq!(
            check_served(&f.path("store"), &corpora),
            target as usize,
            "trial {trial}"
        );
    }
    let interrupted = outcomes.iter().filter(|(_, finished, _)| !finished).count();
    eprintln!("kill trials (delay, finished before the kill, switched): {outcomes:?}");
    assert!(
        interrupted >= 8,
        "most kills must land mid-build: {outcomes:?}"
    );
}

/// The demo store's identifier queries (a product's model number or SKU, kept in metadata and
/// indexed lexically) find that product at rank 1 in `lexical` and in `hybrid:base` under
/// either fusion; the vector space is measured beside them (`attune eval --collection`).
#[test]
fn identifier_queries_find_their_product_first_in_lexical_and_hybrid_spaces() {
    let f = Fixture::new();
    let data = f.arg("demo");
    let out = attune(&[
        "demo-data",
        "--out",
        &data,
        "--products",
        "120",
        "--queries",
        "60",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let build = f.build_args("demo", &["--lexical-fields", "brand,model,sku"]);
    let out = attune(&build.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));
    let queries = f.path("demo").join("queries-identifiers.jsonl");
    for fusion in ["rrf", "weighted"] {
        let out = attune(&[
            "eval",
            "--store",
            &f.arg("store"),
            "--collection",
            "shop",
            "--data",
            &data,
            "--split",
            "identifiers",
            "--queries",
            queries.to_str().unwrap(),
            "--spaces",
            "lexical,hybrid:base,base",
            "--k",
            "1",
            "--fusion",
            fusion,
            "--device",
            "cpu",
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let evaluation = &answer["evaluations"][0];
        assert_eq!(evaluation["evaluated_queries"], 100, "{answer}");
        let found = |i: usize| {
            evaluation["spaces"][i]["metrics"]["recall@1"]
                .as_f64()
                .unwrap()
        };
        assert_eq!(found(0), 1.0, "lexical, {fusion}: {answer}");
        assert_eq!(found(1), 1.0, "hybrid:base, {fusion}: {answer}");
        assert!(
            found(2) < 0.5,
            "the vector space cannot read identifiers: {answer}"
        );
    }
}
