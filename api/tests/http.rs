//! Every endpoint through actix's test harness, over a store built with two tiny random models
//! ("base" and "tuned"): answers, errors, the API key, A/B feedback, metrics, the OpenAPI
//! document, and a re-index picked up without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use attune_api::{app, AppState, ServeSettings};
use attune_app::{ModelEmbedder, PipelineReport};
use attune_index::{
    BuildMode, BuildSettings, BuildSource, Corpus, Embedder, ExactStore, QdrantSettings,
    QdrantStore, SpaceSpec, Store, VectorStore,
};
use attune_model::fixtures::tiny_mixer::write_random_tiny_mixer;
use attune_model::fixtures::{write_random_bert, RandomBertSpec};
use attune_model::{Device, Encoder, EncoderSettings, ModelDir, TextKind};
use serde_json::{json, Value};

const COLOURS: [&str; 4] = ["red", "blue", "green", "black"];

fn doc_text(i: usize, version: usize) -> (String, String) {
    (
        format!("item{i} {}", COLOURS[i % 4]),
        format!("{} shoe number {i} edition {version}", COLOURS[(i / 4) % 4]),
    )
}

/// A store with collection "shop": `n` products, spaces base and tuned (two random models).
struct Fixture {
    tmp: tempfile::TempDir,
    /// The truncation length the spaces are built at (`None`: the models' default).
    max_seq_len: Option<usize>,
    backend: Backend,
    exact: Arc<ExactStore>,
    /// The fixture's store on the test binary's Qdrant server (its own prefix there), for
    /// [`StoreKind::Qdrant`].
    qdrant: Option<Arc<QdrantStore>>,
}

/// What a test runs against: every test runs against both implementations of the vector-store
/// seam and both model families (the seams' second implementations live in the tests).
#[derive(Debug, Clone, Copy)]
struct Backend {
    store: StoreKind,
    family: Family,
}

/// An implementation of the vector-store seam.
#[derive(Debug, Clone, Copy)]
enum StoreKind {
    /// hnsw_rs + sled in a store directory ([`Store`]).
    Embedded,
    /// Exact search in memory ([`ExactStore`]).
    Exact,
    /// A Qdrant server ([`QdrantStore`]), started by the test binary.
    Qdrant,
}

/// Settings of a test's own store on the Qdrant at `url` (a prefix of its own; few, quick
/// retries).
fn qdrant_settings(url: &str) -> QdrantSettings {
    QdrantSettings {
        prefix: format!("t{:016x}", rand::random::<u64>()),
        retries: 1,
        backoff_ms: 10,
        timeout_ms: 5_000,
        ..QdrantSettings::at(url)
    }
}

/// True (and the test reported skipped) when `test` cannot run against Qdrant: no Qdrant
/// binary, and `ATTUNE_REQUIRE_QDRANT` unset.
fn qdrant_missing(test: &str) -> bool {
    let missing = attune_index::fixtures::shared_qdrant_url().is_none();
    if missing {
        attune_model::fixtures::report_skipped(
            &format!("api/tests/http.rs::{test}::qdrant_store_bert"),
            "no Qdrant binary (../shared/tools/qdrant/qdrant or ATTUNE_QDRANT_BIN)",
        );
    }
    missing
}

/// An implementation of the model-architecture seam.
#[derive(Debug, Clone, Copy)]
enum Family {
    /// BERT (built in).
    Bert,
    /// The tiny mixer (a family registered by the tests).
    Mixer,
    /// XLM-RoBERTa (built in; the fixture's WordPiece vocabulary, XLM-R's layout and positions).
    XlmRoberta,
}

impl Fixture {
    fn new(backend: Backend, n: usize) -> Self {
        Self::built_at(backend, n, None)
    }

    fn built_at(backend: Backend, n: usize, max_seq_len: Option<usize>) -> Self {
        Self::with_models(backend, n, max_seq_len, |_| {})
    }

    /// A fixture whose models `prepare` may change (in its temporary directory) before the
    /// collection is built.
    fn with_models(
        backend: Backend,
        n: usize,
        max_seq_len: Option<usize>,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let qdrant = matches!(backend.store, StoreKind::Qdrant).then(|| {
            let url = attune_index::fixtures::shared_qdrant_url().expect("checked by the test");
            Arc::new(QdrantStore::connect(qdrant_settings(&url)).unwrap())
        });
        Self::with_models_on(backend, n, max_seq_len, prepare, qdrant)
    }

    /// [`Fixture::with_models`] on a Qdrant store of the test's own.
    fn with_models_on(
        backend: Backend,
        n: usize,
        max_seq_len: Option<usize>,
        prepare: impl FnOnce(&Path),
        qdrant: Option<Arc<QdrantStore>>,
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for (name, seed) in [("base-model", 1), ("tuned-model", 2)] {
            let spec = RandomBertSpec {
                seed,
                ..RandomBertSpec::default()
            };
            match backend.family {
                Family::Bert => write_random_bert(&tmp.path().join(name), &spec).unwrap(),
                Family::Mixer => write_random_tiny_mixer(&tmp.path().join(name), &spec).unwrap(),
                Family::XlmRoberta => {
                    let spec = RandomBertSpec {
                        flavor: attune_model::BertFlavor::Roberta,
                        ..spec
                    };
                    write_random_bert(&tmp.path().join(name), &spec).unwrap()
                }
            };
        }
        prepare(tmp.path());
        let fixture = Self {
            tmp,
            max_seq_len,
            backend,
            exact: Arc::new(ExactStore::new()),
            qdrant,
        };
        fixture.build(n, 0);
        fixture
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Builds (or rebuilds) "shop" from `n` products of corpus `version`.
    fn build(&self, n: usize, version: usize) {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                let (title, text) = doc_text(i, version);
                json!({"_id": format!("p{i}"), "title": title, "text": text,
                       "metadata": {"colour": COLOURS[i % 4], "size": 36 + i % 10}})
                .to_string()
            })
            .collect();
        let corpus_path = self.path(&format!("corpus-{version}.jsonl"));
        std::fs::write(&corpus_path, lines.join("\n")).unwrap();
        let corpus = Corpus::read(&corpus_path).unwrap();
        let store = self.store();
        let load = |name: &str| {
            ModelEmbedder::load(&self.path(name), &Device::Cpu, self.max_seq_len).unwrap()
        };
        let mut base = load("base-model");
        let mut tuned = load("tuned-model");
        let mut spaces = [
            SpaceSpec {
                name: "base".into(),
                embedder: &mut base as &mut dyn Embedder,
            },
            SpaceSpec {
                name: "tuned".into(),
                embedder: &mut tuned as &mut dyn Embedder,
            },
        ];
        store
            .build(
                "shop",
                BuildSource::Corpus {
                    corpus: &corpus,
                    mode: BuildMode::Merge,
                },
                &mut spaces,
                &BuildSettings::default(),
                &mut |_| {},
            )
            .unwrap();
    }

    fn state(&self, settings: ServeSettings) -> Arc<AppState> {
        AppState::with_store(self.store(), settings).unwrap()
    }

    /// The store under test (the embedded one reopened from its directory each time).
    fn store(&self) -> Arc<dyn VectorStore> {
        match self.backend.store {
            StoreKind::Embedded => Arc::new(Store::open_or_create(&self.path("store")).unwrap()),
            StoreKind::Exact => self.exact.clone(),
            StoreKind::Qdrant => self.qdrant.clone().expect("a Qdrant fixture has its store"),
        }
    }
}

fn encoder(path: &Path) -> Encoder {
    let dir = ModelDir::open(path).unwrap();
    Encoder::load(&dir, &Device::Cpu, EncoderSettings::default()).unwrap()
}

async fn call<S, B>(service: &S, request: TestRequest) -> (StatusCode, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let response = test::call_service(service, request.to_request()).await;
    let status = response.status();
    let bytes = test::read_body(response).await;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

fn post(uri: &str, body: Value) -> TestRequest {
    TestRequest::post().uri(uri).set_json(body)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn search_answers_and_rejects_bad_requests(backend: Backend) {
    let fixture = Fixture::new(backend, 40);
    let settings = ServeSettings {
        max_query_tokens: 6,
        max_body_bytes: 4096,
        ..ServeSettings::default()
    };
    let service = test::init_service(app(fixture.state(settings))).await;
    let uri = "/v1/collections/shop/search";

    // A document's own text finds it first in both spaces (no prompts: equal vectors).
    let (title, text) = doc_text(7, 0);
    let query = format!("{title}\n{text}");
    for space in ["base", "tuned"] {
        let (status, body) = call(
            &service,
            post(uri, json!({"query": query, "k": 5, "space": space})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["space"], space);
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), 5);
        // Truncated at 6 tokens the query is no longer the document text; short queries are not.
        assert_eq!(body["truncated"], true);
        assert_eq!(body["query_tokens"], 6);
        let scores: Vec<f64> = results
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    }
    let (status, body) = call(&service, post(uri, json!({"query": "red", "k": 3}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["space"], "tuned", "tuned is the default space");
    assert_eq!(body["truncated"], false);
    assert_eq!(body["generation"], 1);

    // Filters hold for every result; a list means "one of".
    let (status, body) = call(
        &service,
        post(
            uri,
            json!({"query": "shoe", "k": 40, "filter": {"colour": ["red", "blue"], "size": 36}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for r in results {
        assert!(["red", "blue"].contains(&r["metadata"]["colour"].as_str().unwrap()));
        assert_eq!(r["metadata"]["size"], 36);
    }

    for (request, status, code) in [
        (json!({"query": "  "}), 422, "invalid_request"),
        (json!({"query": "x", "k": 0}), 422, "invalid_request"),
        (json!({"query": "x", "k": 1001}), 422, "invalid_request"),
        (json!({"query": "x", "ef": 0}), 422, "invalid_request"),
        (json!({"query": "x", "space": "nope"}), 404, "not_found"),
        (
            json!({"query": "x", "filter": {"colour": {"a": 1}}}),
            422,
            "invalid_request",
        ),
        (
            json!({"query": "x", "space": "auto"}),
            422,
            "invalid_request",
        ),
        (
            json!({"query": "x", "qurey": "typo"}),
            422,
            "invalid_request",
        ),
        (json!({"query": 5}), 422, "invalid_request"),
        (json!({"query": "x".repeat(5000)}), 413, "payload_too_large"),
    ] {
        let (got, body) = call(&service, post(uri, request.clone())).await;
        assert_eq!(got.as_u16(), status, "{request} → {body}");
        assert_eq!(error_code(&body), code, "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let (status, body) = call(
        &service,
        post("/v1/collections/nope/search", json!({"query": "x"})),
    )
    .await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, "not_found"));
    let malformed = TestRequest::post()
        .uri(uri)
        .insert_header(("content-type", "application/json"))
        .set_payload("{\"query\": ");
    let (status, body) = call(&service, malformed).await;
    assert_eq!((status.as_u16(), error_code(&body)), (400, "bad_request"));
    let (status, body) = call(&service, TestRequest::get().uri(uri)).await;
    assert_eq!(
        (status.as_u16(), error_code(&body)),
        (405, "method_not_allowed")
    );
    let (status, body) = call(&service, TestRequest::get().uri("/v2/nothing")).await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, "not_found"));
}

/// Spaces built at a truncation length other than the models' default are served at that
/// length (the server used to reload models at their default length and refuse the spaces).
async fn spaces_built_with_max_seq_len_are_served_at_that_length(backend: Backend) {
    let fixture = Fixture::built_at(backend, 30, Some(10));
    let service = test::init_service(app(fixture.state(ServeSettings::default()))).await;
    let (title, text) = doc_text(7, 0);
    for space in ["base", "tuned"] {
        let (status, body) = call(
            &service,
            post(
                "/v1/collections/shop/search",
                json!({"query": format!("{title} {text}"), "k": 3, "space": space}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // The query embeds exactly like document p7 did: same text, same 10 tokens.
        let top = body["results"][0]["score"].as_f64().unwrap();
        assert!(top > 0.999, "{body}");
    }
}

/// A prompt-tuned model's space is served with its soft prompt: a query equal to a document's
/// text finds it at cosine 1 (the server embeds the query with the prompt the documents were
/// built with).
async fn a_prompt_tuned_space_is_served_with_its_prompt(backend: Backend) {
    use attune_model::{soft_prompt, SoftPrompt};
    let fixture = Fixture::with_models(backend, 30, None, |root| {
        let tuned = ModelDir::open(root.join("tuned-model")).unwrap();
        let values: Vec<f32> = (0..96).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.5).collect();
        let vectors = candle_core::Tensor::from_vec(values, (3, 32), &Device::Cpu).unwrap();
        let prompt = SoftPrompt::new(vectors).unwrap();
        let file = (soft_prompt::FILE.to_string(), prompt.to_bytes().unwrap());
        tuned
            .write_updated(&root.join("prompted"), &Default::default(), &[file])
            .unwrap();
        std::fs::remove_dir_all(root.join("tuned-model")).unwrap();
        std::fs::rename(root.join("prompted"), root.join("tuned-model")).unwrap();
    });
    let prompted = encoder(&fixture.path("tuned-model"));
    assert_eq!(prompted.soft_prompt().map(SoftPrompt::len), Some(3));
    let service = test::init_service(app(fixture.state(ServeSettings::default()))).await;
    let (title, text) = doc_text(7, 0);
    let query = format!("{title} {text}");
    let (status, body) = call(
        &service,
        post(
            "/v1/collections/shop/search",
            json!({"query": query, "k": 3, "space": "tuned"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["id"], "p7", "{body}");
    assert!(
        body["results"][0]["score"].as_f64().unwrap() > 0.999,
        "{body}"
    );
    // Without the prompt the same query embeds elsewhere: the score above (> 0.9999) needed it.
    let mut unprompted = encoder(&fixture.path("tuned-model"));
    unprompted.set_soft_prompt(None).unwrap();
    let with = &prompted
        .embed(&[query.as_str()], TextKind::Plain)
        .unwrap()
        .embeddings[0];
    let without = &unprompted
        .embed(&[query.as_str()], TextKind::Plain)
        .unwrap()
        .embeddings[0];
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let dot: f32 = with.iter().zip(without).map(|(a, b)| a * b).sum();
    let cosine = dot / (norm(with) * norm(without));
    assert!(
        cosine < 0.999,
        "the prompt barely moves the query ({cosine})"
    );
}

async fn concurrent_searches_match_sequential_ones(backend: Backend) {
    let fixture = Fixture::new(backend, 40);
    let service = test::init_service(app(fixture.state(ServeSettings::default()))).await;
    let queries: Vec<String> = (0..16).map(|i| format!("item{i} shoe")).collect();
    let mut sequential = Vec::new();
    for q in &queries {
        let (_, body) = call(
            &service,
            post("/v1/collections/shop/search", json!({"query": q, "k": 5})),
        )
        .await;
        sequential.push(body["results"].clone());
    }
    let concurrent = futures_util::future::join_all(queries.iter().map(|q| {
        call(
            &service,
            post("/v1/collections/shop/search", json!({"query": q, "k": 5})),
        )
    }))
    .await;
    for ((status, body), expected) in concurrent.iter().zip(&sequential) {
        assert_eq!(*status, StatusCode::OK);
        let ids = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids(&body["results"]), ids(expected));
        for (a, b) in body["results"]
            .as_array()
            .unwrap()
            .iter()
            .zip(expected.as_array().unwrap())
        {
            let (a, b) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!((a - b).abs() < 1e-4, "batched {a} vs alone {b}");
        }
    }
}

async fn compare_shows_both_lists_and_rank_moves(backend: Backend) {
    let fixture = Fixture::new(backend, 40);
    let service = test::init_service(app(fixture.state(ServeSettings::default()))).await;
    let uri = "/v1/collections/shop/compare";
    let (status, body) = call(
        &service,
        post(uri, json!({"query": "green shoe item3", "k": 8})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lists = body["lists"].as_array().unwrap();
    assert_eq!(
        (lists[0]["space"].as_str(), lists[1]["space"].as_str()),
        (Some("base"), Some("tuned"))
    );
    let ids = |i: usize| -> Vec<String> {
        lists[i]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (base, tuned) = (ids(0), ids(1));
    assert_eq!((base.len(), tuned.len()), (8, 8));
    let shared = tuned.iter().filter(|id| base.contains(id)).count();
    assert!((body["overlap_at_k"].as_f64().unwrap() - shared as f64 / 8.0).abs() < 1e-12);
    let movements = body["movements"].as_array().unwrap();
    assert_eq!(movements.len(), 16 - shared);
    for m in movements {
        let id = m["id"].as_str().unwrap();
        let from = base.iter().position(|x| x == id).map(|p| p + 1);
        let to = tuned.iter().position(|x| x == id).map(|p| p + 1);
        assert_eq!(m["from_rank"].as_u64().map(|r| r as usize), from);
        assert_eq!(m["to_rank"].as_u64().map(|r| r as usize), to);
        let expected = match (from, to) {
            (Some(f), Some(t)) if f > t => "up",
            (Some(f), Some(t)) if f < t => "down",
            (Some(_), Some(_)) => "same",
            (None, Some(_)) => "entered",
            _ => "left",
        };
        assert_eq!(m["change"], expected);
    }
    let (status, body) = call(
        &service,
        post(uri, json!({"query": "x", "spaces": ["base", "base"]})),
    )
    .await;
    assert_eq!(
        (status.as_u16(), error_code(&body)),
        (422, "invalid_request")
    );
    let (status, _) = call(
        &service,
        post(uri, json!({"query": "x", "spaces": ["base", "nope"]})),
    )
    .await;
    assert_eq!(status.as_u16(), 404);
}

async fn evaluate_and_visibility_measure_relevance(backend: Backend) {
    let fixture = Fixture::new(backend, 40);
    let service = test::init_service(app(fixture.state(ServeSettings::default()))).await;
    // Queries that are documents' own texts: nDCG@10 is 1 in both spaces for them.
    let queries: Vec<Value> = [3usize, 11, 25]
        .iter()
        .map(|&i| {
            let (title, text) = doc_text(i, 0);
            json!({"id": format!("q{i}"), "text": format!("{title}\n{text}")})
        })
        .collect();
    let qrels: Vec<Value> = [3usize, 11, 25]
        .iter()
        .map(|&i| json!({"query_id": format!("q{i}"), "doc_id": format!("p{i}"), "score": 1}))
        .chain([json!({"query_id": "q3", "doc_id": "missing", "score": 0})])
        .collect();
    let uri = "/v1/collections/shop/evaluate";
    let (status, body) = call(
        &service,
        post(uri, json!({"queries": queries, "qrels": qrels, "k": 10})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["evaluated_queries"], 3);
    assert_eq!(body["unknown_documents"], 1);
    for space in body["spaces"].as_array().unwrap() {
        assert!(
            (space["metrics"]["ndcg@10"].as_f64().unwrap() - 1.0).abs() < 1e-9,
            "{space}"
        );
        assert!((space["metrics"]["recall@10"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    }
    let ndcg = &body["comparisons"][0];
    assert_eq!(
        (ndcg["metric"].as_str(), ndcg["baseline"].as_str()),
        (Some("ndcg@10"), Some("base"))
    );
    assert_eq!(ndcg["ties"], 3);
    assert_eq!(body["per_query"].as_array().unwrap().len(), 3);

    for (request, status) in [
        (
            json!({"queries": queries, "qrels": [{"query_id": "zz", "doc_id": "p1", "score": 1}]}),
            422,
        ),
        (
            json!({"queries": queries, "qrels": [{"query_id": "q3", "doc_id": "p1", "score": 0}]}),
            422,
        ),
        (
            json!({"queries": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}],
                "qrels": [{"query_id": "a", "doc_id": "p1", "score": 1}]}),
            422,
        ),
        (json!({"queries": queries, "qrels": qrels, "k": 0}), 422),
    ] {
        let (got, body) = call(&service, post(uri, request)).await;
        assert_eq!(got.as_u16(), status, "{body}");
    }

    let (title, text) = doc_text(11, 0);
    let uri = "/v1/collections/shop/visibility";
    let (status, body) = call(
        &service,
        post(
            uri,
            json!({"doc_id": "p11", "queries": [format!("{title}\n{text}"), "zebra"], "k": 1}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = &body["queries"][0]["spaces"];
    assert_eq!(first["base"]["rank"], 1);
    assert_eq!(first["tuned"]["rank"], 1);
    assert!((first["tuned"]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    let summary = body["summary"].as_array().unwrap();
    assert_eq!(summary[0]["space"], "base");
    assert!(summary[0]["visible"].as_u64().unwrap() >= 1);
    let (status, body) = call(
        &service,
        post(uri, json!({"doc_id": "nope", "queries": ["x"]})),
    )
    .await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, "not_found"));
    let (status, _) = call(&service, post(uri, json!({"doc_id": "p1", "queries": []}))).await;
    assert_eq!(status.as_u16(), 422);
}

async fn documents_need_the_key_and_change_results(backend: Backend) {
    let fixture = Fixture::new(backend, 20);
    let settings = ServeSettings {
        api_key: Some("sesame".into()),
        max_upsert_documents: 3,
        ..ServeSettings::default()
    };
    let service = test::init_service(app(fixture.state(settings))).await;
    let uri = "/v1/collections/shop/documents";
    let doc = json!({"documents": [{"id": "new", "title": "purple boot", "text": "a purple boot",
                                     "metadata": {"colour": "purple"}}]});
    let (status, body) = call(&service, TestRequest::put().uri(uri).set_json(doc.clone())).await;
    assert_eq!((status.as_u16(), error_code(&body)), (401, "unauthorized"));
    let (status, _) = call(
        &service,
        TestRequest::put()
            .uri(uri)
            .insert_header(("x-api-key", "wrong"))
            .set_json(doc.clone()),
    )
    .await;
    assert_eq!(status.as_u16(), 401);
    let (status, body) = call(
        &service,
        TestRequest::put()
            .uri(uri)
            .insert_header(("authorization", "Bearer sesame"))
            .set_json(doc.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["added"].as_u64(), body["documents"].as_u64()),
        (Some(1), Some(21))
    );
    // Reads need no key unless configured.
    let (status, body) = call(
        &service,
        post(
            "/v1/collections/shop/search",
            json!({"query": "a purple boot", "k": 1, "filter": {"colour": "purple"}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["results"][0]["id"], "new");
    // Same text, new metadata: unchanged vectors.
    let (_, body) = call(
        &service,
        TestRequest::put()
            .uri(uri)
            .insert_header(("x-api-key", "sesame"))
            .set_json(
                json!({"documents": [{"id": "new", "title": "purple boot", "text": "a purple boot",
                                  "metadata": {"colour": "violet"}}]}),
            ),
    )
    .await;
    assert_eq!(body["unchanged"], 1);
    let too_many = json!({"documents": (0..4).map(|i| json!({"id": format!("x{i}"), "text": "t"})).collect::<Vec<_>>()});
    let (status, _) = call(
        &service,
        TestRequest::put()
            .uri(uri)
            .insert_header(("x-api-key", "sesame"))
            .set_json(too_many),
    )
    .await;
    assert_eq!(status.as_u16(), 413);
    let (status, _) = call(
        &service,
        TestRequest::put()
            .uri(uri)
            .insert_header(("x-api-key", "sesame"))
            .set_json(json!({"documents": [{"id": "", "text": "t"}]})),
    )
    .await;
    assert_eq!(status.as_u16(), 422);

    let delete = "/v1/collections/shop/documents/new";
    let (status, _) = call(&service, TestRequest::delete().uri(delete)).await;
    assert_eq!(status.as_u16(), 401);
    let (status, body) = call(
        &service,
        TestRequest::delete()
            .uri(delete)
            .insert_header(("x-api-key", "sesame")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["documents"], 20);
    let (status, _) = call(
        &service,
        TestRequest::delete()
            .uri(delete)
            .insert_header(("x-api-key", "sesame")),
    )
    .await;
    assert_eq!(status.as_u16(), 404);
    let (_, body) = call(
        &service,
        post(
            "/v1/collections/shop/search",
            json!({"query": "a purple boot", "k": 20}),
        ),
    )
    .await;
    assert!(body["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["id"] != "new"));
}

async fn reads_can_require_the_key(backend: Backend) {
    let fixture = Fixture::new(backend, 8);
    let settings = ServeSettings {
        api_key: Some("sesame".into()),
        require_key_for_reads: true,
        ..ServeSettings::default()
    };
    let service = test::init_service(app(fixture.state(settings))).await;
    let (status, _) = call(&service, TestRequest::get().uri("/v1/collections")).await;
    assert_eq!(status.as_u16(), 401);
    let (status, _) = call(
        &service,
        TestRequest::get()
            .uri("/v1/collections")
            .insert_header(("x-api-key", "sesame")),
    )
    .await;
    assert_eq!(status.as_u16(), 200);
    // Operations stay open.
    for uri in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (status, _) = call(&service, TestRequest::get().uri(uri)).await;
        assert_eq!(status.as_u16(), 200, "{uri}");
    }
}

async fn collections_are_listed_with_their_spaces(backend: Backend) {
    let fixture = Fixture::new(backend, 12);
    let service = test::init_service(app(fixture.state(ServeSettings::default()))).await;
    let (status, body) = call(&service, TestRequest::get().uri("/v1/collections")).await;
    assert_eq!(status, StatusCode::OK);
    let shop = &body["collections"][0];
    assert_eq!(
        (shop["name"].as_str(), shop["documents"].as_u64()),
        (Some("shop"), Some(12))
    );
    let (status, body) = call(&service, TestRequest::get().uri("/v1/collections/shop")).await;
    assert_eq!(status, StatusCode::OK);
    let spaces: Vec<&str> = body["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(spaces, ["base", "tuned"]);
    assert_eq!(body["spaces"][0]["dim"], 32);
    let (status, body) = call(&service, TestRequest::get().uri("/v1/collections/none")).await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, "not_found"));
}

async fn openai_embeddings_match_the_encoder(backend: Backend) {
    let fixture = Fixture::new(backend, 8);
    let service = test::init_service(app(fixture.state(ServeSettings::default()))).await;
    let texts = ["red shoe", "a much longer text about blue boots"];
    let expected = encoder(&fixture.path("tuned-model"))
        .embed(&texts, TextKind::Plain)
        .unwrap()
        .embeddings;
    let (status, body) = call(
        &service,
        post("/v1/embeddings", json!({"input": texts, "model": "tuned"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "list");
    for (i, want) in expected.iter().enumerate() {
        let got: Vec<f64> = body["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(body["data"][i]["index"], i);
        for (a, b) in got.iter().zip(want) {
            assert!((a - f64::from(*b)).abs() < 1e-5);
        }
    }
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 4);
    // base64: little-endian f32, as OpenAI's client decodes it; one string input.
    let (status, body) = call(
        &service,
        post(
            "/v1/embeddings",
            json!({"input": texts[0], "model": "shop/tuned", "encoding_format": "base64"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded.len(), 32);
    for (a, b) in decoded.iter().zip(&expected[0]) {
        assert!((a - b).abs() < 1e-5);
    }
    let (status, body) = call(&service, TestRequest::get().uri("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"tuned") && ids.contains(&"shop/base"),
        "{ids:?}"
    );
    for (request, status) in [
        (json!({"input": "x", "model": "nope"}), 404),
        (json!({"input": [], "model": "tuned"}), 422),
        (
            json!({"input": "x", "model": "tuned", "dimensions": 8}),
            422,
        ),
    ] {
        let (got, body) = call(&service, post("/v1/embeddings", request)).await;
        assert_eq!(got.as_u16(), status, "{body}");
    }
    // Token ids (OpenAI's other input forms) are refused with a message that says so.
    for input in [json!([1, 2]), json!([[1, 2], [3]])] {
        let (got, body) = call(
            &service,
            post("/v1/embeddings", json!({"input": input, "model": "tuned"})),
        )
        .await;
        assert_eq!(got.as_u16(), 422, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("token-id arrays are not accepted"),
            "{body}"
        );
    }
    // A per-request token budget, decided before anything is tokenized.
    let long = "boots ".repeat(400);
    let many: Vec<&str> = vec![long.as_str(); 2_000];
    let (got, body) = call(
        &service,
        post("/v1/embeddings", json!({"input": many, "model": "tuned"})),
    )
    .await;
    assert_eq!(
        (got.as_u16(), error_code(&body)),
        (413, "payload_too_large"),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_embedding_tokens"));
}

async fn live_ab_assigns_records_feedback_and_reports(backend: Backend) {
    let fixture = Fixture::new(backend, 20);
    let service = test::init_service(app(fixture.state(ServeSettings::default()))).await;
    let search = "/v1/collections/shop/search";
    let mut variants = std::collections::BTreeMap::new();
    let mut clicked = 0;
    for u in 0..24 {
        let user = format!("user-{u}");
        let request = json!({"query": "red shoe", "k": 5, "space": "auto", "user": user});
        let (status, body) = call(&service, post(search, request.clone())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let variant = body["variant"].as_str().unwrap().to_string();
        assert_eq!(body["space"], variant);
        // The same user gets the same variant.
        let (_, again) = call(&service, post(search, request)).await;
        assert_eq!(again["variant"], variant);
        *variants.entry(variant).or_insert(0) += 2;
        if u % 2 == 0 {
            let feedback = json!({"request_id": body["request_id"], "doc_id": body["results"][1]["id"],
                                  "event": "click"});
            let (status, body) =
                call(&service, post("/v1/collections/shop/feedback", feedback)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["rank"], 2);
            clicked += 1;
        }
    }
    assert_eq!(
        variants.len(),
        2,
        "24 users split over both variants: {variants:?}"
    );
    let (status, report) = call(
        &service,
        TestRequest::get().uri("/v1/collections/shop/ab-report"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let rows = report["variants"].as_array().unwrap();
    assert_eq!(rows[0]["variant"], "base");
    let requests: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 48);
    let clicks: u64 = rows.iter().map(|r| r["clicks"].as_u64().unwrap()).sum();
    assert_eq!(clicks, clicked);
    for row in rows {
        let ctr = &row["click_through_rate"];
        let (low, value, high) = (
            ctr["low"].as_f64().unwrap(),
            ctr["value"].as_f64().unwrap(),
            ctr["high"].as_f64().unwrap(),
        );
        assert!(low <= value && value <= high);
        // Every click was at rank 2: MRR is CTR / 2.
        assert!(
            (row["mean_reciprocal_rank"]["value"].as_f64().unwrap() - value / 2.0).abs() < 1e-12
        );
    }
    assert!(report["difference"].is_object());

    let feedback = "/v1/collections/shop/feedback";
    let (status, _) = call(
        &service,
        post(
            feedback,
            json!({"request_id": "nope", "doc_id": "p1", "event": "click"}),
        ),
    )
    .await;
    assert_eq!(status.as_u16(), 404);
    let (_, body) = call(
        &service,
        post(
            search,
            json!({"query": "red", "k": 1, "space": "auto", "user": "z"}),
        ),
    )
    .await;
    let (status, _) = call(
        &service,
        post(
            feedback,
            json!({"request_id": body["request_id"], "doc_id": "not-shown", "event": "click"}),
        ),
    )
    .await;
    assert_eq!(status.as_u16(), 422);
    let (status, _) = call(
        &service,
        post(feedback, json!({"request_id": body["request_id"], "doc_id": body["results"][0]["id"], "event": "like"})),
    )
    .await;
    assert_eq!(status.as_u16(), 422);
}

async fn logged_searches_take_feedback_explore_and_measure_drift(backend: Backend) {
    let fixture = Fixture::new(backend, 20);
    let mut settings = ServeSettings::default();
    settings.feedback.log = vec!["shop".into()];
    settings.feedback.explore_share = 1.0;
    settings.feedback.explore_ranks = 3;
    settings.feedback.drift.window = 10;
    settings.feedback.drift.min_queries = 5;
    let state = fixture.state(settings);
    let service = test::init_service(app(state.clone())).await;
    // compare is not logged: the base ranking as the model gives it.
    let (_, compared) = call(
        &service,
        post(
            "/v1/collections/shop/compare",
            json!({"query": "red shoe", "k": 5}),
        ),
    )
    .await;
    let ranked = result_ids(&compared["lists"][0]);
    let (status, body) = call(
        &service,
        post(
            "/v1/collections/shop/search",
            json!({"query": "red shoe", "k": 5, "space": "base"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["request_id"].is_string() && body.get("variant").is_none(),
        "{body}"
    );
    // Every search explores: one adjacent pair within the top 3 swapped, the rest in place.
    let shown = result_ids(&body);
    let moved: Vec<usize> = (0..5).filter(|&i| shown[i] != ranked[i]).collect();
    assert!(
        moved == [0, 1] || moved == [1, 2],
        "{ranked:?} vs {shown:?}"
    );
    assert_eq!(
        (shown[moved[0]].clone(), shown[moved[1]].clone()),
        (ranked[moved[1]].clone(), ranked[moved[0]].clone())
    );
    let feedback =
        json!({"request_id": body["request_id"], "doc_id": shown[0], "event": "purchase"});
    let (status, recorded) = call(&service, post("/v1/collections/shop/feedback", feedback)).await;
    assert_eq!(status, StatusCode::OK, "{recorded}");
    assert_eq!(recorded["rank"], 1);
    // Pairs from the log while serving: the purchase is a positive of grade 3.
    let (status, exported) = call(
        &service,
        TestRequest::get().uri("/v1/collections/shop/feedback/pairs?min_events=1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{exported}");
    assert_eq!(exported["pairs"].as_array().unwrap().len(), 1, "{exported}");
    assert_eq!(exported["pairs"][0]["grade"], 3);
    assert_eq!(exported["pairs"][0]["source"], "feedback:shop");
    assert_eq!(exported["report"]["explored_requests"], 1);
    for (uri, code) in [
        ("/v1/collections/shop/feedback/pairs?since=yesterday", 422),
        ("/v1/collections/shop/feedback/pairs", 422),
        (
            "/v1/collections/shop/feedback/pairs?since=2999-01-01T00:00:00Z",
            404,
        ),
        ("/v1/collections/nope/feedback/pairs", 404),
    ] {
        let (status, body) = call(&service, TestRequest::get().uri(uri)).await;
        assert_eq!(status.as_u16(), code, "{uri}: {body}");
    }
    // A user key is hashed with the log's salt, never bare; a search without one has no hash.
    let (_, with_user) = call(
        &service,
        post(
            "/v1/collections/shop/search",
            json!({"query": "red", "space": "base", "user": "alice"}),
        ),
    )
    .await;
    let events = state.collection("shop").unwrap().events.clone();
    let logged = events.all_served().unwrap();
    let find = |id: &Value| {
        logged
            .iter()
            .find(|r| r.request_id == id.as_str().unwrap())
            .unwrap()
    };
    let salt = events.salt().unwrap();
    let expected = attune_index::ServedRequest::new(
        String::new(),
        String::new(),
        &salt,
        "alice",
        "",
        vec![],
        0,
    );
    let unsalted =
        attune_index::ServedRequest::new(String::new(), String::new(), "", "alice", "", vec![], 0);
    assert_eq!(find(&with_user["request_id"]).user_hash, expected.user_hash);
    assert_ne!(expected.user_hash, unsalted.user_hash);
    assert_eq!(find(&body["request_id"]).user_hash, "");
    // Logged-only searches are no A/B traffic.
    let (_, report) = call(
        &service,
        TestRequest::get().uri("/v1/collections/shop/ab-report"),
    )
    .await;
    let requests: u64 = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 0, "{report}");
    // Drift: the first 10 searches of the base space (2 so far) are its reference, then the
    // window fills.
    for i in 0..13 {
        let query = json!({"query": format!("red shoe {i}"), "space": "base"});
        let (status, _) = call(&service, post("/v1/collections/shop/search", query)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, drift) = call(
        &service,
        TestRequest::get().uri("/v1/collections/shop/drift"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{drift}");
    let spaces = drift["spaces"].as_array().unwrap();
    let base = spaces.iter().find(|s| s["space"] == "base").unwrap();
    assert_eq!(base["reference"], "first_served", "{base}");
    assert_eq!(
        (
            base["reference_ready"].clone(),
            base["window_queries"].clone()
        ),
        (json!(true), json!(5)),
        "{base}"
    );
    let tuned = spaces.iter().find(|s| s["space"] == "tuned").unwrap();
    assert_eq!(tuned["window_queries"], 0, "{tuned}");
    let (status, _) = call(
        &service,
        TestRequest::get().uri("/v1/collections/nope/drift"),
    )
    .await;
    assert_eq!(status.as_u16(), 404);
}

async fn operations_endpoints_report_health_metrics_and_schema(backend: Backend) {
    let fixture = Fixture::new(backend, 8);
    let service = test::init_service(app(fixture.state(ServeSettings::default()))).await;
    let (status, body) = call(&service, TestRequest::get().uri("/healthz")).await;
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (200, Some("ok"))
    );
    // HEAD answers every GET route as GET would, without a body.
    for uri in [
        "/healthz",
        "/v1/collections/shop",
        "/metrics",
        "/openapi.json",
    ] {
        let response = test::call_service(
            &service,
            TestRequest::default()
                .method(actix_web::http::Method::HEAD)
                .uri(uri)
                .to_request(),
        )
        .await;
        assert_eq!(response.status().as_u16(), 200, "HEAD {uri}");
        assert!(test::read_body(response).await.is_empty(), "HEAD {uri}");
    }
    let (status, body) = call(
        &service,
        TestRequest::default()
            .method(actix_web::http::Method::HEAD)
            .uri("/v1/collections/shop/search"),
    )
    .await;
    assert_eq!(status.as_u16(), 405, "{body}");
    let (status, body) = call(&service, TestRequest::get().uri("/readyz")).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    assert_eq!(body["collections"]["shop"], 1);
    assert_eq!(body["models"].as_array().unwrap().len(), 2);
    call(
        &service,
        post(
            "/v1/collections/shop/search",
            json!({"query": "red", "space": "base"}),
        ),
    )
    .await;
    let (status, body) = call(&service, TestRequest::get().uri("/metrics")).await;
    assert_eq!(status.as_u16(), 200);
    let text = body.as_str().unwrap();
    assert!(text.contains(
        "attune_http_requests_total{endpoint=\"/v1/collections/{collection}/search\",fusion=\"\",space=\"base\",status=\"200\"} 1"
    ), "{text}");
    assert!(text.contains("attune_embedding_batch_texts_count"));
    assert!(text.contains("attune_collection_documents{collection=\"shop\"} 8"));
    let (status, body) = call(&service, TestRequest::get().uri("/openapi.json")).await;
    assert_eq!(status.as_u16(), 200);
    let paths = body["paths"].as_object().unwrap();
    for path in [
        "/v1/collections/{collection}/search",
        "/v1/collections/{collection}/compare",
        "/v1/collections/{collection}/evaluate",
        "/v1/collections/{collection}/visibility",
        "/v1/collections/{collection}/documents",
        "/v1/collections/{collection}/documents/{id}",
        "/v1/collections",
        "/v1/collections/{collection}",
        "/v1/collections/{collection}/feedback",
        "/v1/collections/{collection}/feedback/pairs",
        "/v1/collections/{collection}/ab-report",
        "/v1/collections/{collection}/drift",
        "/v1/embeddings",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/collections/{collection}/facets",
        "/v1/collections/{collection}/report",
        "/v1/collections/{collection}/report/{file}",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
    // Found by schemathesis: the facets query parameter is a query parameter, and a facet value
    // is any JSON scalar, not an object.
    let facets = &paths["/v1/collections/{collection}/facets"]["get"]["parameters"];
    let max_values = facets
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "max_values")
        .unwrap();
    assert_eq!(max_values["in"], "query", "{max_values}");
    let value = &body["components"]["schemas"]["FacetValueInfo"]["properties"]["value"];
    assert!(value.get("type").is_none(), "{value}");
}

async fn a_new_generation_is_picked_up_without_restart(backend: Backend) {
    let fixture = Fixture::new(backend, 10);
    let state = fixture.state(ServeSettings::default());
    let service = test::init_service(app(state.clone())).await;
    let (_, body) = call(&service, TestRequest::get().uri("/v1/collections/shop")).await;
    assert_eq!(
        (body["generation"].as_u64(), body["documents"].as_u64()),
        (Some(1), Some(10))
    );
    // A re-index with more documents commits generation 2 while generation 1 is served.
    fixture.build(14, 1);
    let (_, body) = call(&service, TestRequest::get().uri("/v1/collections/shop")).await;
    assert_eq!(
        body["generation"], 1,
        "still serving until the store is checked"
    );
    state.refresh();
    let (_, body) = call(&service, TestRequest::get().uri("/v1/collections/shop")).await;
    assert_eq!(
        (body["generation"].as_u64(), body["documents"].as_u64()),
        (Some(2), Some(14))
    );
    let (title, text) = doc_text(13, 1);
    let (_, body) = call(
        &service,
        post(
            "/v1/collections/shop/search",
            json!({"query": format!("{title}\n{text}"), "k": 1}),
        ),
    )
    .await;
    assert_eq!(body["results"][0]["id"], "p13");
    assert_eq!(body["generation"], 2);
}

async fn the_page_facets_and_published_reports_are_served(backend: Backend) {
    let fixture = Fixture::new(backend, 20);
    let state = fixture.state(ServeSettings {
        api_key: Some("sesame".into()),
        require_key_for_reads: true,
        ..ServeSettings::default()
    });
    let service = test::init_service(app(state.clone())).await;
    let key = ("x-api-key", "sesame");

    // The page and its assets: no key needed, compiled in, no third-party origin.
    for (uri, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let response = test::call_service(&service, TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(response.status().as_u16(), 200, "{uri}");
        let headers = response.headers().clone();
        assert!(
            headers
                .get("content-type")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{uri}"
        );
        assert!(headers
            .get("content-security-policy")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("default-src 'self'"));
        let body = String::from_utf8(test::read_body(response).await.to_vec()).unwrap();
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{uri} loads nothing from elsewhere"
        );
    }
    let (status, _) = call(&service, TestRequest::post().uri("/")).await;
    assert_eq!(status.as_u16(), 405);

    // Facets: counts per metadata value, behind the key like every read.
    let (status, _) = call(
        &service,
        TestRequest::get().uri("/v1/collections/shop/facets"),
    )
    .await;
    assert_eq!(status.as_u16(), 401);
    let (status, body) = call(
        &service,
        TestRequest::get()
            .uri("/v1/collections/shop/facets")
            .insert_header(key),
    )
    .await;
    assert_eq!(status.as_u16(), 200, "{body}");
    assert_eq!(body["documents"], 20);
    let colour = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "colour")
        .unwrap();
    assert_eq!(colour["distinct"], 4);
    let total: u64 = colour["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 20);
    let size = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "size")
        .unwrap();
    assert!(size["values"][0]["value"].is_number());
    let (status, body) = call(
        &service,
        TestRequest::get()
            .uri("/v1/collections/shop/facets?max_values=1")
            .insert_header(key),
    )
    .await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(body["fields"][0]["values"].as_array().unwrap().len(), 1);
    for (uri, code) in [
        ("/v1/collections/shop/facets?max_values=0", 422),
        ("/v1/collections/shop/facets?max_values=x", 422),
        ("/v1/collections/shop/facets?other=1", 422),
        ("/v1/collections/none/facets", 404),
    ] {
        let (status, body) = call(&service, TestRequest::get().uri(uri).insert_header(key)).await;
        assert_eq!(status.as_u16(), code, "{uri}: {body}");
    }

    // Reports: 404 until one is published, then the summary and each file.
    let (status, body) = call(
        &service,
        TestRequest::get()
            .uri("/v1/collections/shop/report")
            .insert_header(key),
    )
    .await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, "not_found"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("attune pipeline"));
    let published = serde_json::to_vec(&PipelineReport {
        collection: "shop".into(),
        base_model: "base-model".into(),
        tuned_model: "tuned-model".into(),
        data: "data".into(),
        base_space: "base".into(),
        tuned_space: "tuned".into(),
        domain: None,
        general: None,
        gate: None,
        recipe: None,
        promoted: true,
        serving_generation: Some(1),
        index: None,
        collection_search: None,
        verdict: "promoted".into(),
        stages: Vec::new(),
        finished_unix: 0,
    })
    .unwrap();
    state
        .store()
        .publish_report(
            "shop",
            &[
                ("pipeline.json", published.as_slice()),
                ("report.html", b"<html><svg></svg></html>"),
            ],
        )
        .unwrap();
    let (status, body) = call(
        &service,
        TestRequest::get()
            .uri("/v1/collections/shop/report")
            .insert_header(key),
    )
    .await;
    assert_eq!(status.as_u16(), 200, "{body}");
    assert_eq!(body["summary"]["promoted"], true);
    assert_eq!(body["files"], json!(["pipeline.json", "report.html"]));
    let response = test::call_service(
        &service,
        TestRequest::get()
            .uri("/v1/collections/shop/report/report.html")
            .insert_header(key)
            .to_request(),
    )
    .await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    for uri in [
        "/v1/collections/shop/report/missing.html",
        "/v1/collections/shop/report/..%2Fcollection.json",
        "/v1/collections/shop/report/.hidden",
    ] {
        let (status, _) = call(&service, TestRequest::get().uri(uri).insert_header(key)).await;
        assert_eq!(status.as_u16(), 404, "{uri}");
    }
}

/// A write acknowledged through the API stays: a corpus re-index keeps it (the build merges),
/// and a write that lands on the old generation after a re-index committed, before the server
/// switched, is carried into the new one at the switch.
async fn acknowledged_writes_outlive_reindexes_and_switches(backend: Backend) {
    let fixture = Fixture::new(backend, 10);
    let settings = ServeSettings {
        api_key: Some("sesame".into()),
        ..ServeSettings::default()
    };
    let state = fixture.state(settings);
    let service = test::init_service(app(state.clone())).await;
    let put = |id: &str, text: &str| {
        TestRequest::put()
            .uri("/v1/collections/shop/documents")
            .insert_header(("authorization", "Bearer sesame"))
            .set_json(json!({"documents": [{"id": id, "title": text, "text": text}]}))
    };
    // Every document's ids, by a search deep enough to return them all.
    let all = || {
        post(
            "/v1/collections/shop/search",
            json!({"query": "x", "k": 50}),
        )
    };
    let ids = |body: &Value| -> Vec<String> {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, body) = call(&service, put("extra", "purple velvet slipper")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    fixture.build(12, 1);
    state.refresh();
    let (_, body) = call(&service, TestRequest::get().uri("/v1/collections/shop")).await;
    assert_eq!(
        (body["generation"].as_u64(), body["documents"].as_u64()),
        (Some(2), Some(13)),
        "{body}"
    );
    let (_, body) = call(&service, all()).await;
    assert!(ids(&body).contains(&"extra".to_string()), "{body}");

    // Generation 3 commits; the server still serves 2 and acknowledges a write there.
    fixture.build(12, 2);
    let (status, body) = call(&service, put("late", "orange rubber clog")).await;
    assert_eq!(
        (status, body["generation"].as_u64()),
        (StatusCode::OK, Some(2))
    );
    let delete = TestRequest::delete()
        .uri("/v1/collections/shop/documents/extra")
        .insert_header(("authorization", "Bearer sesame"));
    let (status, _) = call(&service, delete).await;
    assert_eq!(status, StatusCode::OK);
    state.refresh();
    let (_, body) = call(&service, TestRequest::get().uri("/v1/collections/shop")).await;
    assert_eq!(
        (body["generation"].as_u64(), body["documents"].as_u64()),
        (Some(3), Some(13)),
        "{body}"
    );
    let (_, body) = call(&service, all()).await;
    assert!(ids(&body).contains(&"late".to_string()), "{body}");
    assert!(!ids(&body).contains(&"extra".to_string()), "{body}");
}

/// What a request costs is bounded by what a user could ask for honestly: repeated spaces are
/// evaluated once (and label metrics once), and the A/B log keeps a bounded query text and a
/// hashed user key.
async fn repeated_spaces_and_long_queries_cost_what_honest_ones_do(backend: Backend) {
    let fixture = Fixture::new(backend, 20);
    let state = fixture.state(ServeSettings::default());
    let service = test::init_service(app(state.clone())).await;
    let (title, text) = doc_text(3, 0);
    let spaces: Vec<&str> = ["base", "tuned"].repeat(200);
    let request = json!({"queries": [{"id": "q", "text": format!("{title}\n{text}")}],
                         "qrels": [{"query_id": "q", "doc_id": "p3", "score": 1}],
                         "spaces": spaces});
    let (status, body) = call(&service, post("/v1/collections/shop/evaluate", request)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["spaces"].as_array().unwrap().len(), 2);
    let visibility =
        json!({"doc_id": "p3", "queries": ["red"], "spaces": ["tuned", "base", "tuned"]});
    let (status, body) = call(
        &service,
        post("/v1/collections/shop/visibility", visibility),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["summary"].as_array().unwrap().len(), 2);
    let (_, metrics) = call(&service, TestRequest::get().uri("/metrics")).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(metrics.contains("space=\"tuned,base\""), "{metrics}");
    assert!(!metrics.contains("tuned,base,tuned"), "{metrics}");

    let long = format!("red shoe {}", "very ".repeat(20_000));
    let (status, body) = call(
        &service,
        post(
            "/v1/collections/shop/search",
            json!({"query": long, "k": 3, "space": "auto", "user": "alice@example.com"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let served = state.collection("shop").unwrap();
    let logged = served.events.all_served().unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(
        logged[0].query.len(),
        attune_index::events::LOGGED_QUERY_BYTES
    );
    assert_eq!(logged[0].query_bytes, long.len());
    assert!(!serde_json::to_string(&logged[0]).unwrap().contains("alice"));
}

/// Ids of a search's results, in order.
fn result_ids(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Reciprocal rank fusion of two ranked id lists (k = 60; ties to the id both lists hold,
/// then by id), the `k` best.
fn rrf(a: &[String], b: &[String], k: usize) -> Vec<String> {
    let mut scores: std::collections::BTreeMap<&str, (f32, u8)> = Default::default();
    for list in [a, b] {
        for (rank, id) in list.iter().enumerate() {
            let entry = scores.entry(id).or_default();
            entry.0 += 1.0 / (60.0 + rank as f32 + 1.0);
            entry.1 += 1;
        }
    }
    let mut fused: Vec<(&str, (f32, u8))> = scores.into_iter().collect();
    fused.sort_by(|x, y| {
        (y.1 .0)
            .total_cmp(&x.1 .0)
            .then(y.1 .1.cmp(&x.1 .1))
            .then(x.0.cmp(y.0))
    });
    fused
        .into_iter()
        .take(k)
        .map(|(id, _)| id.to_string())
        .collect()
}

/// The lexical space and hybrid spaces answer search, compare, evaluate, visibility and live
/// A/B; fusion parameters are checked; upserts and deletes reach the lexical and dense spaces
/// alike; metrics name the fusion.
async fn lexical_and_hybrid_spaces_answer_every_endpoint(backend: Backend) {
    let fixture = Fixture::new(backend, 40);
    let settings = ServeSettings {
        ab: attune_api::settings::AbSettings {
            control: "tuned".into(),
            treatment: "hybrid:tuned".into(),
            ..Default::default()
        },
        ..ServeSettings::default()
    };
    let service = test::init_service(app(fixture.state(settings))).await;
    let uri = "/v1/collections/shop/search";
    let search = |body: Value| {
        let service = &service;
        async move {
            let (status, answer) = call(service, post(uri, body.clone())).await;
            assert_eq!(status, StatusCode::OK, "{body} → {answer}");
            answer
        }
    };

    // BM25 finds the one title with "item7"; nothing is embedded.
    let body = search(json!({"query": "item7", "k": 5, "space": "lexical"})).await;
    assert_eq!(result_ids(&body)[0], "p7");
    assert_eq!(
        (body["space"].as_str(), body["query_tokens"].as_u64()),
        (Some("lexical"), Some(0))
    );
    // Hybrid = RRF of the lexical and the tuned rankings (each part's top 100).
    let lexical =
        result_ids(&search(json!({"query": "red shoe 7", "k": 100, "space": "lexical"})).await);
    let tuned =
        result_ids(&search(json!({"query": "red shoe 7", "k": 100, "space": "tuned"})).await);
    let hybrid = search(json!({"query": "red shoe 7", "k": 10, "space": "hybrid:tuned"})).await;
    assert_eq!(result_ids(&hybrid), rrf(&lexical, &tuned, 10));
    assert!(hybrid["query_tokens"].as_u64().unwrap() > 0);
    // Weighted fusion at the extremes is one part's order.
    let lexical_only = json!({"method": "weighted", "weight": 0.0});
    let body =
        search(json!({"query": "item7", "k": 3, "space": "hybrid:base", "fusion": lexical_only}))
            .await;
    assert_eq!(result_ids(&body)[0], "p7");
    let dense_only = json!({"method": "weighted", "weight": 1.0});
    let body = search(
        json!({"query": "red shoe 7", "k": 5, "space": "hybrid:tuned", "fusion": dense_only}),
    )
    .await;
    assert_eq!(result_ids(&body), tuned[..5]);
    // Filters hold in both parts.
    let body = search(
        json!({"query": "shoe", "k": 40, "space": "hybrid:tuned", "filter": {"colour": "red"}}),
    )
    .await;
    assert_eq!(result_ids(&body).len(), 10);
    assert!(body["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["metadata"]["colour"] == "red"));

    for (request, status) in [
        (json!({"query": "x", "space": "hybrid:nope"}), 404),
        (
            json!({"query": "x", "space": "hybrid:tuned", "fusion": {"method": "max"}}),
            422,
        ),
        (
            json!({"query": "x", "space": "hybrid:tuned", "fusion": {"weight": 2}}),
            422,
        ),
        (
            json!({"query": "x", "space": "hybrid:tuned", "fusion": {"k": 0}}),
            422,
        ),
        (
            json!({"query": "x", "space": "auto", "user": "u", "fusion": {"k": 10}}),
            422,
        ),
    ] {
        let (got, body) = call(&service, post(uri, request.clone())).await;
        assert_eq!(got.as_u16(), status, "{request} → {body}");
    }

    // Upserts and deletes: the lexical and the dense spaces hold the same live documents.
    let put = json!({"documents": [{"id": "new", "title": "purple boot ZX-900", "text": "a shoe",
                                     "metadata": {"colour": "purple"}}]});
    let (status, body) = call(
        &service,
        TestRequest::put()
            .uri("/v1/collections/shop/documents")
            .set_json(put),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for id in ["p3", "p8"] {
        let (status, _) = call(
            &service,
            TestRequest::delete().uri(&format!("/v1/collections/shop/documents/{id}")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let body = search(json!({"query": "zx-900", "k": 3, "space": "lexical"})).await;
    assert_eq!(result_ids(&body)[0], "new");
    let mut lexical =
        result_ids(&search(json!({"query": "shoe", "k": 100, "space": "lexical"})).await);
    let mut dense = result_ids(&search(json!({"query": "shoe", "k": 100, "space": "tuned"})).await);
    lexical.sort();
    dense.sort();
    assert_eq!(lexical.len(), 39);
    assert_eq!(lexical, dense);

    // Compare, evaluate and visibility take them.
    let (status, body) = call(
        &service,
        post(
            "/v1/collections/shop/compare",
            json!({"query": "item7", "spaces": ["tuned", "hybrid:tuned"]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["lists"][1]["space"], "hybrid:tuned");
    let evaluate = json!({"queries": [{"id": "q7", "text": "item7"}, {"id": "q9", "text": "item9 red"}],
                          "qrels": [{"query_id": "q7", "doc_id": "p7", "score": 1},
                                    {"query_id": "q9", "doc_id": "p9", "score": 1}],
                          "spaces": ["tuned", "lexical", "hybrid:tuned"]});
    let (status, body) = call(&service, post("/v1/collections/shop/evaluate", evaluate)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["spaces"][1]["space"], "lexical");
    assert_eq!(body["spaces"][1]["metrics"]["mrr@10"], 1.0);
    let visibility =
        json!({"doc_id": "p7", "queries": ["item7", "item9"], "spaces": ["lexical", "tuned"]});
    let (status, body) = call(
        &service,
        post("/v1/collections/shop/visibility", visibility),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["queries"][0]["spaces"]["lexical"]["rank"], 1);
    assert!(
        body["queries"][0]["spaces"]["lexical"]["score"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(body["queries"][1]["spaces"]["lexical"]["score"].is_null());
    assert!(body["queries"][1]["spaces"]["tuned"]["score"].is_number());

    // Live A/B with a hybrid treatment.
    let mut variants = std::collections::BTreeSet::new();
    for u in 0..16 {
        let body =
            search(json!({"query": "red shoe", "k": 5, "space": "auto", "user": format!("u{u}")}))
                .await;
        variants.insert(body["variant"].as_str().unwrap().to_string());
    }
    assert_eq!(
        variants.into_iter().collect::<Vec<_>>(),
        ["hybrid:tuned", "tuned"]
    );

    // The page lists them; metrics name the fusion.
    let (_, info) = call(&service, TestRequest::get().uri("/v1/collections/shop")).await;
    assert_eq!(
        info["searchable"],
        json!(["base", "tuned", "lexical", "hybrid:base", "hybrid:tuned"])
    );
    let (_, metrics) = call(&service, TestRequest::get().uri("/metrics")).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(r#"fusion="rrf",space="hybrid:tuned",status="200""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"fusion="weighted",space="hybrid:base",status="200""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"fusion="",space="lexical",status="200""#),
        "{metrics}"
    );
}

/// A collection built without a lexical space says so.
async fn a_collection_without_a_lexical_space_refuses_lexical_searches(backend: Backend) {
    let fixture = Fixture::new(backend, 10);
    let corpus_path = fixture.path("corpus-0.jsonl");
    let corpus = Corpus::read(&corpus_path).unwrap();
    let mut base = ModelEmbedder::load(&fixture.path("base-model"), &Device::Cpu, None).unwrap();
    let mut spaces = [SpaceSpec {
        name: "base".into(),
        embedder: &mut base as &mut dyn Embedder,
    }];
    let settings = BuildSettings {
        lexical: None,
        ..BuildSettings::default()
    };
    let source = BuildSource::Corpus {
        corpus: &corpus,
        mode: BuildMode::Merge,
    };
    fixture
        .store()
        .build("plain", source, &mut spaces, &settings, &mut |_| {})
        .unwrap();
    let service = test::init_service(app(fixture.state(ServeSettings::default()))).await;
    for space in ["lexical", "hybrid:base"] {
        let (status, body) = call(
            &service,
            post(
                "/v1/collections/plain/search",
                json!({"query": "item1", "space": space}),
            ),
        )
        .await;
        assert_eq!(status.as_u16(), 404, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("(spaces: base)")
                || body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("available: base"),
            "{body}"
        );
    }
    let (_, info) = call(&service, TestRequest::get().uri("/v1/collections/plain")).await;
    assert_eq!(info["searchable"], json!(["base"]));
    assert!(info["lexical"].is_null());
}

/// When Qdrant stops answering, `/readyz` says so (503, naming Qdrant), searches and writes get
/// 503 naming it, and nothing is acknowledged; when it is back, the server answers again.
#[actix_web::test]
async fn an_unreachable_qdrant_makes_readyz_and_requests_fail_clearly() {
    let Some(binary) = attune_index::fixtures::QdrantServer::binary() else {
        assert!(!attune_index::fixtures::QdrantServer::required());
        attune_model::fixtures::report_skipped(
            "api/tests/http.rs::an_unreachable_qdrant_makes_readyz_and_requests_fail_clearly",
            "no Qdrant binary (../shared/tools/qdrant/qdrant or ATTUNE_QDRANT_BIN)",
        );
        return;
    };
    let mut server = attune_index::fixtures::QdrantServer::start(&binary).unwrap();
    let store = Arc::new(QdrantStore::connect(qdrant_settings(&server.url())).unwrap());
    let backend = Backend {
        store: StoreKind::Qdrant,
        family: Family::Bert,
    };
    let fixture = Fixture::with_models_on(backend, 12, None, |_| {}, Some(store));
    let settings = ServeSettings {
        api_key: Some("sesame".into()),
        ..ServeSettings::default()
    };
    let state = fixture.state(settings);
    let service = test::init_service(app(state.clone())).await;
    let search = || {
        post(
            "/v1/collections/shop/search",
            json!({"query": "red shoe", "k": 3}),
        )
    };
    let (status, _) = call(&service, TestRequest::get().uri("/readyz")).await;
    assert_eq!(status, StatusCode::OK);

    server.kill();
    state.refresh();
    let (status, body) = call(&service, TestRequest::get().uri("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["store_error"].as_str().unwrap().contains("Qdrant at"),
        "{body}"
    );
    let (status, body) = call(&service, search()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Qdrant at"),
        "{body}"
    );
    let put = TestRequest::put()
        .uri("/v1/collections/shop/documents")
        .insert_header(("authorization", "Bearer sesame"))
        .set_json(
            json!({"documents": [{"id": "lost", "title": "t", "text": "never acknowledged"}]}),
        );
    let (status, _) = call(&service, put).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    server.launch().unwrap();
    state.refresh();
    let (status, body) = call(&service, TestRequest::get().uri("/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&service, search()).await;
    assert_eq!(
        (status, body["results"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(3))
    );
    let (status, _) = call(
        &service,
        TestRequest::get().uri("/v1/collections/shop/documents/lost"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Two servers over one Qdrant (each with its own connection, as two machines would have) answer
/// alike, see each other's writes, assign a user the same variant, and one A/B report counts
/// the traffic and feedback of both.
#[actix_web::test]
async fn two_servers_over_one_qdrant_answer_alike_and_share_the_ab_log() {
    if qdrant_missing("two_servers_over_one_qdrant_answer_alike_and_share_the_ab_log") {
        return;
    }
    let backend = Backend {
        store: StoreKind::Qdrant,
        family: Family::Bert,
    };
    let fixture = Fixture::new(backend, 20);
    let settings = ServeSettings {
        api_key: Some("sesame".into()),
        ..ServeSettings::default()
    };
    let own_connection = || {
        let store = fixture.qdrant.as_ref().expect("a Qdrant fixture");
        let again = QdrantStore::connect(store.settings().clone()).unwrap();
        AppState::with_store(Arc::new(again), settings.clone()).unwrap()
    };
    let first = test::init_service(app(own_connection())).await;
    let second = test::init_service(app(own_connection())).await;
    let search = "/v1/collections/shop/search";
    let plain = json!({"query": "red shoe", "k": 5, "space": "tuned", "filter": {"colour": "red"}});
    let (_, a) = call(&first, post(search, plain.clone())).await;
    let (_, b) = call(&second, post(search, plain.clone())).await;
    assert_eq!(result_ids(&a), result_ids(&b));
    assert_eq!(a["results"], b["results"]);

    let put = TestRequest::put()
        .uri("/v1/collections/shop/documents")
        .insert_header(("authorization", "Bearer sesame"))
        .set_json(
            json!({"documents": [{"id": "new", "title": "red velvet slipper", "text": "red",
                                        "metadata": {"colour": "red"}}]}),
        );
    let (status, body) = call(&first, put).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &second,
        TestRequest::get().uri("/v1/collections/shop/documents/new"),
    )
    .await;
    assert_eq!(
        (status, body["title"].as_str()),
        (StatusCode::OK, Some("red velvet slipper"))
    );

    let mut clicks = 0;
    for u in 0..12 {
        let request =
            json!({"query": "red shoe", "k": 5, "space": "auto", "user": format!("user-{u}")});
        let (_, one) = call(&first, post(search, request.clone())).await;
        let (_, two) = call(&second, post(search, request)).await;
        assert_eq!(
            one["variant"], two["variant"],
            "a user's variant is the same on both"
        );
        // Feedback on a request served by the first server, sent to the second.
        let feedback = json!({"request_id": one["request_id"], "doc_id": one["results"][0]["id"],
                              "event": "click"});
        let request = post("/v1/collections/shop/feedback", feedback)
            .insert_header(("authorization", "Bearer sesame"));
        let (status, body) = call(&second, request).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        clicks += 1;
    }
    for service in [&first, &second] {
        let (status, report) = call(
            service,
            TestRequest::get().uri("/v1/collections/shop/ab-report"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{report}");
        let rows = report["variants"].as_array().unwrap();
        let requests: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
        let clicked: u64 = rows.iter().map(|r| r["clicks"].as_u64().unwrap()).sum();
        assert_eq!((requests, clicked), (24, clicks), "{report}");
    }
}

/// Runs each test against both implementations of each seam: the embedded and the exact store,
/// BERT and the tiny mixer.
macro_rules! against_both_implementations {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                use super::{Backend, Family, StoreKind};

                #[actix_web::test]
                async fn embedded_store_bert() {
                    super::$test(Backend { store: StoreKind::Embedded, family: Family::Bert }).await
                }

                #[actix_web::test]
                async fn exact_store_bert() {
                    super::$test(Backend { store: StoreKind::Exact, family: Family::Bert }).await
                }

                #[actix_web::test]
                async fn embedded_store_mixer() {
                    super::$test(Backend { store: StoreKind::Embedded, family: Family::Mixer }).await
                }

                #[actix_web::test]
                async fn exact_store_mixer() {
                    super::$test(Backend { store: StoreKind::Exact, family: Family::Mixer }).await
                }

                #[actix_web::test]
                async fn qdrant_store_bert() {
                    if super::qdrant_missing(stringify!($test)) {
                        return;
                    }
                    super::$test(Backend { store: StoreKind::Qdrant, family: Family::Bert }).await
                }

                #[actix_web::test]
                async fn embedded_store_xlm_roberta() {
                    super::$test(Backend { store: StoreKind::Embedded, family: Family::XlmRoberta }).await
                }
            }
        )*
    };
}

against_both_implementations!(
    search_answers_and_rejects_bad_requests,
    spaces_built_with_max_seq_len_are_served_at_that_length,
    a_prompt_tuned_space_is_served_with_its_prompt,
    concurrent_searches_match_sequential_ones,
    compare_shows_both_lists_and_rank_moves,
    evaluate_and_visibility_measure_relevance,
    documents_need_the_key_and_change_results,
    reads_can_require_the_key,
    collections_are_listed_with_their_spaces,
    openai_embeddings_match_the_encoder,
    live_ab_assigns_records_feedback_and_reports,
    logged_searches_take_feedback_explore_and_measure_drift,
    operations_endpoints_report_health_metrics_and_schema,
    a_new_generation_is_picked_up_without_restart,
    the_page_facets_and_published_reports_are_served,
    acknowledged_writes_outlive_reindexes_and_switches,
    repeated_spaces_and_long_queries_cost_what_honest_ones_do,
    lexical_and_hybrid_spaces_answer_every_endpoint,
    a_collection_without_a_lexical_space_refuses_lexical_searches,
);
