//! Query-to-content matching: `search` (one space, or a live A/B variant), `compare` (two
//! spaces side by side with rank movements) and `visibility` (where one page ranks for a list of
//! queries, per space).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use attune_app::relevance::{self, movements, Movement, Placement, SpaceQueries, SpaceVisibility};
use attune_index::{retrieve, DenseQuery, Fusion, Retrieval, RetrievalRequest, ServedRequest};
use attune_model::TextKind;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{
    blocking, check_ef, check_k, check_len, filter_from_json, fusion_from, fusion_label,
    millis_since, ok_labelled, requested_spaces, retrieval, Hit, State,
};
use crate::ab::assign_variant;
use crate::auth::ReadAccess;
use crate::error::{ApiError, BodyErrors};
use crate::inference::Embedded;
use crate::inference::Lane;
use crate::settings::FeedbackSettings;
use crate::state::Served;
use rand::Rng;

/// Registers search, compare and visibility.
pub fn config_search(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/collections/{collection}/search")
            .route(web::post().to(search))
            .default_service(web::to(super::system::method_not_allowed)),
    )
    .service(
        web::resource("/v1/collections/{collection}/compare")
            .route(web::post().to(compare))
            .default_service(web::to(super::system::method_not_allowed)),
    )
    .service(
        web::resource("/v1/collections/{collection}/visibility")
            .route(web::post().to(visibility))
            .default_service(web::to(super::system::method_not_allowed)),
    );
}

fn default_k() -> usize {
    10
}

/// A search.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// The query text (truncated to the server's query token limit; see `truncated`).
    #[schema(min_length = 1, pattern = r"\S")]
    pub query: String,
    /// Results wanted.
    #[serde(default = "default_k")]
    #[schema(minimum = 1, maximum = 1000, default = 10)]
    pub k: usize,
    /// The space to search: a vector space (`base`, `tuned`, ...), `lexical` (BM25),
    /// `hybrid:<space>` (lexical fused with a vector space), or `auto` for the live A/B test,
    /// which needs `user`. Default: `tuned`, or the collection's only vector space.
    pub space: Option<String>,
    /// Metadata filter: `{"field": value, "field2": [one, of, these]}`; all must hold.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Map<String, Value>>,
    /// HNSW candidate list size (default: the collection's `ef_search`).
    #[schema(minimum = 1, maximum = 10000)]
    pub ef: Option<usize>,
    /// Stable user or session key: assigns the A/B variant when `space` is `auto`.
    pub user: Option<String>,
    /// How a `hybrid:<space>` fuses: `{"method": "rrf" | "weighted", "k": 60, "weight": 0.5}`
    /// (defaults shown; `k` is rrf's rank constant, `weight` the vector space's share in
    /// weighted fusion). With `auto`, the A/B test's own fusion applies.
    #[schema(value_type = Option<Object>)]
    pub fusion: Option<Fusion>,
}

/// Search results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// Results, best first.
    pub results: Vec<Hit>,
    /// The space that answered.
    pub space: String,
    /// The generation that answered.
    pub generation: u64,
    /// Tokens of the embedded query, special tokens included (0 in `lexical`, which embeds
    /// nothing).
    pub query_tokens: usize,
    /// True when the query was cut to the token limit.
    pub truncated: bool,
    /// Server time in milliseconds (embedding and search).
    pub took_ms: f64,
    /// The id to quote in feedback: with `space: "auto"`, and for every search of a collection
    /// the server's `[feedback] log` lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// With `space: "auto"`: the variant that served the user (same as `space`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The space a request names, or the default: `tuned` when the collection has it, else its only
/// space.
fn resolve_space(served: &Served, space: Option<&str>) -> Result<Retrieval, ApiError> {
    if let Some(space) = space {
        return retrieval(served, space);
    }
    if served.models.contains_key("tuned") {
        return Ok(Retrieval::Dense("tuned".into()));
    }
    if served.models.len() == 1 {
        let only = served.models.keys().next().expect("one").clone();
        return Ok(Retrieval::Dense(only));
    }
    Err(ApiError::invalid(
        "space",
        format!(
            "this collection has no `tuned` space; name one of: {}",
            served.models.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    ))
}

fn check_query(query: &str) -> Result<(), ApiError> {
    if query.trim().is_empty() {
        return Err(ApiError::invalid("query", "must not be empty"));
    }
    Ok(())
}

/// Embeds `query` for `space`: in the interactive lane when it is short (at most
/// `interactive_query_bytes`, as shoppers' queries are), in the bulk lane otherwise, so a long
/// query neither pads a batch of short ones nor delays them.
async fn embed_query(
    served: &Served,
    space: &str,
    query: &str,
    max_tokens: usize,
    settings: &crate::settings::InferenceSettings,
) -> Result<Embedded, ApiError> {
    let lane = if query.len() <= settings.interactive_query_bytes {
        Lane::Interactive
    } else {
        Lane::Bulk
    };
    let mut out = served
        .model(space)?
        .embed_in(lane, vec![query.to_string()], TextKind::Query, max_tokens)
        .await?;
    Ok(out.remove(0))
}

/// One space's answer to a query.
struct Answer {
    hits: Vec<Hit>,
    /// The query as the dense part's model embedded it (`None` in `lexical`).
    embedded: Option<Embedded>,
}

impl Answer {
    fn tokens(&self) -> usize {
        self.embedded.as_ref().map_or(0, |e| e.tokens)
    }

    fn truncated(&self) -> bool {
        self.embedded.as_ref().is_some_and(|e| e.truncated)
    }
}

/// What one search asks of a space besides the query.
#[derive(Debug, Clone)]
struct Ask {
    k: usize,
    ef: Option<usize>,
    filter: attune_index::Filter,
    fusion: Fusion,
}

/// Top-k of `retrieval` for `query`: embedded on the dense part's inference thread, searched
/// (and fused) on the blocking pool.
async fn answer(
    served: &Arc<Served>,
    retrieval: &Retrieval,
    query: &str,
    ask: Ask,
    state: &crate::state::AppState,
) -> Result<Answer, ApiError> {
    let embedded = match retrieval.dense_space() {
        Some(space) => Some(
            embed_query(
                served,
                space,
                query,
                state.settings.max_query_tokens,
                &state.settings.inference,
            )
            .await?,
        ),
        None => None,
    };
    let (served, retrieval) = (served.clone(), retrieval.clone());
    let (text, vector) = (
        query.to_string(),
        embedded.as_ref().map(|e| e.vector.clone()),
    );
    let hits = blocking(move || {
        let model = match retrieval.dense_space() {
            Some(space) => Some(served.model(space)?.identity().clone()),
            None => None,
        };
        let dense = model
            .as_ref()
            .zip(vector.as_deref())
            .map(|(model, vector)| DenseQuery { vector, model });
        let hits = retrieve(
            served.collection.as_ref(),
            &RetrievalRequest {
                retrieval: &retrieval,
                text: &text,
                dense,
                k: ask.k,
                ef: ask.ef,
                filter: &ask.filter,
                fusion: &ask.fusion,
            },
        )?;
        Ok(hits.into_iter().map(Hit::from).collect())
    })
    .await?;
    Ok(Answer { hits, embedded })
}

/// Searches one space of a collection.
#[utoipa::path(
    post,
    path = "/v1/collections/{collection}/search",
    tag = "search",
    params(("collection" = String, Path, description = "Collection name", example = "products")),
    request_body = SearchBody,
    responses(
        (status = 200, description = "Results, best first", body = SearchResponse),
        BodyErrors,
    )
)]
pub async fn search(
    _access: ReadAccess,
    state: State,
    path: web::Path<String>,
    body: web::Json<SearchBody>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = body.into_inner();
    check_query(&body.query)?;
    check_k(body.k)?;
    check_ef(body.ef)?;
    let filter = filter_from_json(body.filter.as_ref())?;
    let name = path.into_inner();
    let served = state.collection(&name)?;
    let auto = body.space.as_deref() == Some("auto");
    if auto && body.fusion.is_some() {
        return Err(ApiError::invalid(
            "fusion",
            "space \"auto\" fuses as the A/B test is set up (ab.fusion); send no fusion",
        ));
    }
    let fusion = if auto {
        state.settings.ab.fusion
    } else {
        fusion_from(body.fusion)?
    };
    let mut test_salt = String::new();
    let retrieval = if auto {
        let Some(user) = body.user.as_deref().filter(|u| !u.is_empty()) else {
            return Err(ApiError::invalid(
                "user",
                "space \"auto\" assigns the A/B variant by user; send a user key",
            ));
        };
        let events = served.events.clone();
        let salt = blocking(move || Ok(events.salt()?)).await?;
        test_salt.clone_from(&salt);
        let variant = assign_variant(&state.settings.ab, &salt, &name, user).to_string();
        retrieval(&served, &variant).map_err(|_| {
            ApiError::Invalid(format!(
                "space \"auto\": the A/B variant {variant:?} is not a space of collection \
                 {name:?}; it needs spaces {:?} and {:?}",
                state.settings.ab.control, state.settings.ab.treatment
            ))
        })?
    } else {
        resolve_space(&served, body.space.as_deref())?
    };
    let space = retrieval.name();
    let ask = Ask {
        k: body.k,
        ef: body.ef,
        filter,
        fusion,
    };
    let answer = answer(&served, &retrieval, &body.query, ask, &state).await?;
    let (query_tokens, truncated) = (answer.tokens(), answer.truncated());
    if let (Some(dense), Some(embedded)) = (retrieval.dense_space(), &answer.embedded) {
        // The top-1 cosine says how well the catalog answers; fused scores are no cosine.
        let top = matches!(retrieval, Retrieval::Dense(_))
            .then(|| answer.hits.first().map(|h| h.score))
            .flatten();
        observe_drift(&state, &served, dense, &body.query, &embedded.vector, top).await;
    }
    let mut results = answer.hits;
    let logged = auto || state.settings.feedback.logs(&name);
    let request_id = if logged {
        let swapped = explore(&state.settings.feedback, &mut results);
        let logged = LoggedSearch {
            variant: space.clone(),
            ab: auto,
            test_salt,
            user: body.user.clone().unwrap_or_default(),
            query: body.query.clone(),
            shown: results.iter().map(|h| h.id.clone()).collect(),
            swapped,
        };
        Some(log_search(&served, state.settings.ab.salt.clone(), logged).await?)
    } else {
        None
    };
    let response = SearchResponse {
        results,
        generation: served.collection.generation(),
        query_tokens,
        truncated,
        took_ms: millis_since(started),
        variant: auto.then(|| space.clone()),
        request_id,
        space: space.clone(),
    };
    Ok(ok_labelled(
        &response,
        &space,
        fusion_label([&retrieval], &fusion),
    ))
}

/// A search to record in the feedback log.
struct LoggedSearch {
    variant: String,
    /// Whether the A/B test assigned `variant`.
    ab: bool,
    /// The test's salt when the A/B test already read it, else empty.
    test_salt: String,
    user: String,
    query: String,
    /// Result ids as shown (after any exploration swap).
    shown: Vec<String>,
    swapped: Option<usize>,
}

/// Records `search` in the collection's log (on disk within the log's half-second background
/// flush, at once with the next feedback, or at shutdown);
/// returns its request id. The user key is hashed with the test's salt (`configured_salt`, else
/// the log's own), never bare; a search without one is a shopper of its own.
async fn log_search(
    served: &Served,
    configured_salt: Option<String>,
    search: LoggedSearch,
) -> Result<String, ApiError> {
    let events = served.events.clone();
    blocking(move || {
        let salt = match (configured_salt, search.test_salt.is_empty()) {
            (Some(salt), _) => salt,
            (None, false) => search.test_salt,
            (None, true) => events.salt()?,
        };
        let mut record = ServedRequest::new(
            uuid::Uuid::new_v4().to_string(),
            search.variant,
            &salt,
            &search.user,
            &search.query,
            search.shown,
            unix_ms(),
        );
        record.ab = search.ab;
        record.swapped = search.swapped;
        if search.user.is_empty() {
            record.user_hash.clear();
        }
        events.record_served(&record)?;
        Ok(record.request_id)
    })
    .await
}

/// Exploration: with probability `explore_share`, swaps the results at one random adjacent pair
/// of ranks within the top `explore_ranks`; returns the upper rank (1-based) when it did.
fn explore(settings: &FeedbackSettings, results: &mut [Hit]) -> Option<usize> {
    let ranks = settings.explore_ranks.min(results.len());
    if ranks < 2 || settings.explore_share <= 0.0 {
        return None;
    }
    let mut rng = rand::rng();
    if !rng.random_bool(settings.explore_share) {
        return None;
    }
    let upper = rng.random_range(1..ranks);
    results.swap(upper - 1, upper);
    Some(upper)
}

/// Feeds a search to the drift monitor of its space and updates the gauges; the first search
/// of a model whose training card lists its queries embeds them (bulk lane, in the background).
/// Drift is a side measurement: a failure is logged, never the search's.
async fn observe_drift(
    state: &State,
    served: &Arc<Served>,
    space: &str,
    query: &str,
    vector: &[f32],
    top: Option<f32>,
) {
    let (app, served_now, space_name) =
        (state.get_ref().clone(), served.clone(), space.to_string());
    let (query, vector) = (query.to_string(), vector.to_vec());
    let observed = blocking(move || {
        let (monitor, card) = app.drift_monitor(&served_now, &space_name)?;
        monitor.observe(&query, &vector, top);
        let name = served_now.collection.name();
        for (measure, value) in crate::drift::MEASURES.iter().zip(monitor.gauges()) {
            app.metrics.drift(name, &space_name, measure, value);
        }
        Ok((monitor, card))
    })
    .await;
    let (monitor, card) = match observed {
        Ok(observed) => observed,
        Err(e) => {
            tracing::warn!("drift of {:?}: {e}", served.collection.name());
            return;
        }
    };
    if let Some(queries) = card {
        super::drift::embed_reference(state, served, space, monitor, queries);
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn default_compare_spaces() -> Vec<String> {
    vec!["base".into(), "tuned".into()]
}

/// A side-by-side comparison of two spaces.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareBody {
    /// The query text.
    #[schema(min_length = 1, pattern = r"\S")]
    pub query: String,
    /// Results per space.
    #[serde(default = "default_k")]
    #[schema(minimum = 1, maximum = 1000, default = 10)]
    pub k: usize,
    /// The two spaces, "from" then "to" (default `["base", "tuned"]`); any space search
    /// takes (`lexical`, `hybrid:tuned`, ...).
    #[serde(default = "default_compare_spaces")]
    #[schema(min_items = 2, max_items = 2)]
    pub spaces: Vec<String>,
    /// Metadata filter, as in search.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Map<String, Value>>,
    /// HNSW candidate list size.
    #[schema(minimum = 1, maximum = 10000)]
    pub ef: Option<usize>,
    /// How a `hybrid:<space>` among them fuses (as in search).
    #[schema(value_type = Option<Object>)]
    pub fusion: Option<Fusion>,
}

/// One space's ranked list.
#[derive(Debug, Serialize, ToSchema)]
pub struct RankedList {
    /// The space.
    pub space: String,
    /// Results, best first.
    pub results: Vec<Hit>,
}

/// Two ranked lists and how they differ.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompareResponse {
    /// The two lists, in the order asked.
    pub lists: Vec<RankedList>,
    /// Documents in both top-k lists over the longer list's length (0 to 1).
    pub overlap_at_k: f64,
    /// Every document of either list: second space's order, then those that left.
    pub movements: Vec<Movement>,
    /// Tokens of the embedded query (first embedding space's model; 0 when neither embeds).
    pub query_tokens: usize,
    /// True when the query was cut to the token limit.
    pub truncated: bool,
    /// Server time in milliseconds.
    pub took_ms: f64,
}

/// `(id, title)` of each hit, in rank order.
fn id_titles(hits: &[Hit]) -> Vec<(&str, &str)> {
    hits.iter()
        .map(|h| (h.id.as_str(), h.title.as_str()))
        .collect()
}

/// Compares two spaces' results for one query.
#[utoipa::path(
    post,
    path = "/v1/collections/{collection}/compare",
    tag = "search",
    params(("collection" = String, Path, description = "Collection name", example = "products")),
    request_body = CompareBody,
    responses(
        (status = 200, description = "Both lists and the rank movements", body = CompareResponse),
        BodyErrors,
    )
)]
pub async fn compare(
    _access: ReadAccess,
    state: State,
    path: web::Path<String>,
    body: web::Json<CompareBody>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = body.into_inner();
    check_query(&body.query)?;
    check_k(body.k)?;
    check_ef(body.ef)?;
    if body.spaces.len() != 2 || body.spaces[0] == body.spaces[1] {
        return Err(ApiError::invalid(
            "spaces",
            format!("name two different spaces, got {:?}", body.spaces),
        ));
    }
    let filter = filter_from_json(body.filter.as_ref())?;
    let fusion = fusion_from(body.fusion)?;
    let served = state.collection(&path.into_inner())?;
    let (from, to) = (
        retrieval(&served, &body.spaces[0])?,
        retrieval(&served, &body.spaces[1])?,
    );
    let ask = Ask {
        k: body.k,
        ef: body.ef,
        filter,
        fusion,
    };
    let (a, b) = tokio::join!(
        answer(&served, &from, &body.query, ask.clone(), &state),
        answer(&served, &to, &body.query, ask, &state)
    );
    let (a, b) = (a?, b?);
    let tokens = if a.embedded.is_some() {
        a.tokens()
    } else {
        b.tokens()
    };
    let truncated = a.truncated() || b.truncated();
    let (from_hits, to_hits) = (a.hits, b.hits);
    let (movements, overlap_at_k) = movements(&id_titles(&from_hits), &id_titles(&to_hits));
    let response = CompareResponse {
        lists: vec![
            RankedList {
                space: from.name(),
                results: from_hits,
            },
            RankedList {
                space: to.name(),
                results: to_hits,
            },
        ],
        overlap_at_k,
        movements,
        query_tokens: tokens,
        truncated,
        took_ms: millis_since(started),
    };
    Ok(ok_labelled(
        &response,
        &format!("{from},{to}"),
        fusion_label([&from, &to], &fusion),
    ))
}

/// Where one document ranks for a list of queries.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VisibilityBody {
    /// The document (page) whose visibility is measured.
    #[schema(min_length = 1)]
    pub doc_id: String,
    /// Queries people might ask.
    #[schema(min_items = 1)]
    pub queries: Vec<String>,
    /// Depth of the ranking inspected.
    #[serde(default = "default_k")]
    #[schema(minimum = 1, maximum = 1000, default = 10)]
    pub k: usize,
    /// Spaces to measure, any search takes (default: every vector space, control and
    /// treatment first).
    pub spaces: Option<Vec<String>>,
    /// How a `hybrid:<space>` among them fuses (as in search).
    #[schema(value_type = Option<Object>)]
    pub fusion: Option<Fusion>,
}

/// One query's placements.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueryVisibility {
    /// The query.
    pub query: String,
    /// True when the query was cut to the token limit.
    pub truncated: bool,
    /// Placement per space.
    pub spaces: BTreeMap<String, Placement>,
}

/// How visible a document is to retrieval, per query and space.
#[derive(Debug, Serialize, ToSchema)]
pub struct VisibilityResponse {
    /// The document.
    pub doc_id: String,
    /// Depth inspected.
    pub k: usize,
    /// Per query.
    pub queries: Vec<QueryVisibility>,
    /// Per space, in the order measured.
    pub summary: Vec<SpaceVisibility>,
    /// Server time in milliseconds.
    pub took_ms: f64,
}

/// For each query and space, the document's rank (or absent) and similarity.
#[utoipa::path(
    post,
    path = "/v1/collections/{collection}/visibility",
    tag = "relevance",
    params(("collection" = String, Path, description = "Collection name", example = "products")),
    request_body = VisibilityBody,
    responses(
        (status = 200, description = "Ranks per query and space", body = VisibilityResponse),
        BodyErrors,
    )
)]
pub async fn visibility(
    _access: ReadAccess,
    state: State,
    path: web::Path<String>,
    body: web::Json<VisibilityBody>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = body.into_inner();
    check_k(body.k)?;
    if body.queries.is_empty() {
        return Err(ApiError::invalid("queries", "give at least one query"));
    }
    check_len("queries", body.queries.len(), state.settings.max_queries)?;
    if let Some(i) = body.queries.iter().position(|q| q.trim().is_empty()) {
        return Err(ApiError::invalid(
            &format!("queries[{i}]"),
            "must not be empty",
        ));
    }
    let fusion = fusion_from(body.fusion)?;
    let served = state.collection(&path.into_inner())?;
    let spaces = requested_spaces(&served, body.spaces.as_deref(), &state)?;
    let retrievals: Vec<Retrieval> = spaces.iter().map(|s| Retrieval::parse(s)).collect();
    let doc_vectors = {
        let served = served.clone();
        let (doc_id, retrievals) = (body.doc_id.clone(), retrievals.clone());
        blocking(move || {
            if served.collection.document(&doc_id)?.is_none() {
                return Err(ApiError::no_document(served.collection.name(), &doc_id));
            }
            let mut vectors = BTreeMap::new();
            for retrieval in &retrievals {
                if let Retrieval::Dense(space) = retrieval {
                    if let Some(vector) = served.collection.vector(space, &doc_id)? {
                        vectors.insert(space.clone(), vector);
                    }
                }
            }
            Ok(vectors)
        })
        .await?
    };
    // Queries embedded once per vector space (`tuned` and `hybrid:tuned` share them).
    let mut per_space: BTreeMap<String, Vec<Embedded>> = BTreeMap::new();
    for dense in retrievals.iter().filter_map(Retrieval::dense_space) {
        if !per_space.contains_key(dense) {
            let embedded = embed_all(&served, dense, &body.queries, &state).await?;
            per_space.insert(dense.to_string(), embedded);
        }
    }
    // A query is flagged when any space's model cut it.
    let mut truncated = vec![false; body.queries.len()];
    for embedded in per_space.values() {
        for (flag, e) in truncated.iter_mut().zip(embedded) {
            *flag |= e.truncated;
        }
    }
    let k = body.k;
    let doc_id = body.doc_id.clone();
    let served_for_search = served.clone();
    let retrievals_for_search = retrievals.clone();
    let texts = body.queries.clone();
    let (placements, summary) = blocking(move || {
        let mut placements = vec![BTreeMap::new(); texts.len()];
        let mut summary = Vec::new();
        for retrieval in &retrievals_for_search {
            let dense = match retrieval.dense_space() {
                Some(space) => {
                    let model = served_for_search.model(space)?.identity().clone();
                    let vectors: Vec<Vec<f32>> =
                        per_space[space].iter().map(|e| e.vector.clone()).collect();
                    Some((model, vectors))
                }
                None => None,
            };
            let queries = SpaceQueries {
                retrieval,
                texts: &texts,
                embedded: dense.as_ref().map(|(m, v)| (m, v.as_slice())),
                fusion: &fusion,
            };
            let doc_vector = retrieval
                .dense_space()
                .and_then(|space| doc_vectors.get(space))
                .map(Vec::as_slice);
            let (placed, visibility) = relevance::visibility(
                served_for_search.collection.as_ref(),
                &queries,
                &doc_id,
                doc_vector,
                k,
            )?;
            for (row, placement) in placements.iter_mut().zip(placed) {
                row.insert(retrieval.name(), placement);
            }
            summary.push(visibility);
        }
        Ok::<_, ApiError>((placements, summary))
    })
    .await?;
    let response = VisibilityResponse {
        doc_id: body.doc_id,
        k,
        queries: body
            .queries
            .into_iter()
            .zip(placements)
            .zip(truncated)
            .map(|((query, spaces), truncated)| QueryVisibility {
                query,
                truncated,
                spaces,
            })
            .collect(),
        summary,
        took_ms: millis_since(started),
    };
    Ok(ok_labelled(
        &response,
        &spaces.join(","),
        fusion_label(&retrievals, &fusion),
    ))
}

/// Embeds many queries for `space` in chunks of the inference batch size, so other requests'
/// queries interleave with them on the inference thread.
pub async fn embed_all(
    served: &Served,
    space: &str,
    queries: &[String],
    state: &crate::state::AppState,
) -> Result<Vec<Embedded>, ApiError> {
    let model = served.model(space)?;
    let chunk = state.settings.inference.max_batch_texts.max(1);
    let mut out = Vec::with_capacity(queries.len());
    for part in queries.chunks(chunk) {
        out.extend(
            model
                .embed_in(
                    Lane::Bulk,
                    part.to_vec(),
                    TextKind::Query,
                    state.settings.max_query_tokens,
                )
                .await?,
        );
    }
    Ok(out)
}
