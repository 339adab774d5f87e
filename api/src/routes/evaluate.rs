//! `POST /v1/collections/{collection}/evaluate`: relevance judgments in, metrics per space,
//! per-query deltas and wins/ties/losses out (computed by `attune_app::relevance` over the
//! served index).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use actix_web::{web, HttpResponse};
use attune_app::relevance::{
    evaluate_over_index, MetricComparison, QueryResult, SpaceMetrics, SpaceQueries,
};
use attune_eval::Qrels;
use attune_index::{Fusion, Retrieval};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::search::embed_all;
use super::{
    blocking, check_k, check_len, fusion_from, fusion_label, millis_since, ok_labelled,
    requested_spaces, State,
};
use crate::auth::ReadAccess;
use crate::error::{ApiError, BodyErrors};

/// Registers evaluate.
pub fn config_evaluate(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/collections/{collection}/evaluate")
            .route(web::post().to(evaluate))
            .default_service(web::to(super::system::method_not_allowed)),
    );
}

/// A query to evaluate.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalQuery {
    /// Query id, referenced by qrels.
    #[schema(min_length = 1)]
    pub id: String,
    /// Query text.
    #[schema(min_length = 1)]
    pub text: String,
}

/// A relevance judgment.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Judgment {
    /// The query.
    pub query_id: String,
    /// The document.
    pub doc_id: String,
    /// Graded relevance: 0 not relevant, 1 relevant, 2+ more relevant.
    pub score: i32,
}

fn default_k() -> usize {
    10
}

/// Judged queries to evaluate the served spaces on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateBody {
    /// Queries (ids unique).
    #[schema(min_items = 1)]
    pub queries: Vec<EvalQuery>,
    /// Judgments; queries without a relevant judgment are left out of the means.
    #[schema(min_items = 1)]
    pub qrels: Vec<Judgment>,
    /// Cutoff of every metric and depth of retrieval.
    #[serde(default = "default_k")]
    #[schema(minimum = 1, maximum = 1000, default = 10)]
    pub k: usize,
    /// Spaces to evaluate, baseline first, any search takes (`lexical`, `hybrid:tuned`, ...;
    /// default: every vector space, control first).
    pub spaces: Option<Vec<String>>,
    /// How a `hybrid:<space>` among them fuses (as in search).
    #[schema(value_type = Option<Object>)]
    pub fusion: Option<Fusion>,
}

/// The evaluation.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluateResponse {
    /// Cutoff.
    pub k: usize,
    /// Queries with at least one relevant judgment, evaluated.
    pub evaluated_queries: usize,
    /// Metrics per space, baseline first.
    pub spaces: Vec<SpaceMetrics>,
    /// Each later space against the first, per metric.
    pub comparisons: Vec<MetricComparison>,
    /// Per query, largest |delta| first.
    pub per_query: Vec<QueryResult>,
    /// Judged documents the collection does not hold (they count as never retrieved).
    pub unknown_documents: usize,
    /// Server time in milliseconds.
    pub took_ms: f64,
}

/// Evaluates spaces of a collection on judged queries.
#[utoipa::path(
    post,
    path = "/v1/collections/{collection}/evaluate",
    tag = "relevance",
    params(("collection" = String, Path, description = "Collection name", example = "products")),
    request_body = EvaluateBody,
    responses(
        (status = 200, description = "Metrics, comparisons and per-query deltas", body = EvaluateResponse),
        BodyErrors,
    )
)]
pub async fn evaluate(
    _access: ReadAccess,
    state: State,
    path: web::Path<String>,
    body: web::Json<EvaluateBody>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = body.into_inner();
    check_k(body.k)?;
    check_len("queries", body.queries.len(), state.settings.max_queries)?;
    let mut ids = HashSet::new();
    for (i, query) in body.queries.iter().enumerate() {
        if query.id.is_empty() || query.text.trim().is_empty() {
            return Err(ApiError::invalid(
                &format!("queries[{i}]"),
                "id and text must not be empty",
            ));
        }
        if !ids.insert(query.id.as_str()) {
            return Err(ApiError::invalid(
                &format!("queries[{i}].id"),
                format!("{:?} appears twice", query.id),
            ));
        }
    }
    let mut qrels = Qrels::default();
    for (i, judgment) in body.qrels.iter().enumerate() {
        if !ids.contains(judgment.query_id.as_str()) {
            return Err(ApiError::invalid(
                &format!("qrels[{i}].query_id"),
                format!("{:?} is not among the queries", judgment.query_id),
            ));
        }
        qrels.insert(&judgment.query_id, &judgment.doc_id, judgment.score);
    }
    if !body.qrels.iter().any(|j| j.score > 0) {
        return Err(ApiError::invalid(
            "qrels",
            "no judgment has a score above 0: nothing is relevant",
        ));
    }
    let served = state.collection(&path.into_inner())?;
    let fusion = fusion_from(body.fusion)?;
    let spaces = requested_spaces(&served, body.spaces.as_deref(), &state)?;
    let retrievals: Vec<Retrieval> = spaces.iter().map(|s| Retrieval::parse(s)).collect();
    let texts: Vec<String> = body.queries.iter().map(|q| q.text.clone()).collect();
    // Queries embedded once per vector space (`tuned` and `hybrid:tuned` share them).
    let mut vectors: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
    for dense in retrievals.iter().filter_map(Retrieval::dense_space) {
        if !vectors.contains_key(dense) {
            let embedded = embed_all(&served, dense, &texts, &state).await?;
            let embedded = embedded.into_iter().map(|e| e.vector).collect();
            vectors.insert(dense.to_string(), embedded);
        }
    }
    let k = body.k;
    let query_ids: Vec<String> = body.queries.iter().map(|q| q.id.clone()).collect();
    let label = fusion_label(&retrievals, &fusion);
    let evaluation = blocking(move || {
        let mut models = BTreeMap::new();
        for space in vectors.keys() {
            models.insert(space.clone(), served.model(space)?.identity().clone());
        }
        let queries: Vec<SpaceQueries<'_>> = retrievals
            .iter()
            .map(|retrieval| SpaceQueries {
                retrieval,
                texts: &texts,
                embedded: retrieval
                    .dense_space()
                    .map(|space| (&models[space], vectors[space].as_slice())),
                fusion: &fusion,
            })
            .collect();
        Ok::<_, ApiError>(evaluate_over_index(
            served.collection.as_ref(),
            &queries,
            &query_ids,
            &qrels,
            k,
        )?)
    })
    .await?;
    let response = EvaluateResponse {
        k,
        evaluated_queries: evaluation.evaluated_queries,
        spaces: evaluation.spaces,
        comparisons: evaluation.comparisons,
        per_query: evaluation.per_query,
        unknown_documents: evaluation.unknown_documents,
        took_ms: 0.0,
    };
    let response = EvaluateResponse {
        took_ms: millis_since(started),
        ..response
    };
    Ok(ok_labelled(&response, &spaces.join(","), label))
}
