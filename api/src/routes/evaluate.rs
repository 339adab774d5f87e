//! `POST /v1/collections/{collection}/evaluate`: relevance judgments in, metrics per space,
//! per-query deltas and wins/ties/losses out (computed by `attune-eval` over the served index).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use actix_web::{web, HttpResponse};
use attune_eval::compare::{compare, ComparisonSettings};
use attune_eval::{
    evaluate as score, MetricKind, MetricName, MetricsSettings, Qrels, Run, ScoredDoc,
};
use attune_index::{Filter, SearchRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::search::embed_all;
use super::{blocking, check_k, check_len, millis_since, ok_json, requested_spaces, State};
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
    /// Spaces to evaluate, baseline first (default: every space, control first).
    pub spaces: Option<Vec<String>>,
}

/// Metrics of one space, means over the evaluated queries.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpaceMetrics {
    /// The space.
    pub space: String,
    /// Metric name (`ndcg@10`, `recall@10`, `mrr@10`, `map@10`) → mean.
    pub metrics: BTreeMap<String, f64>,
}

/// One metric, a candidate space against the baseline space.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricComparison {
    /// Metric name.
    pub metric: String,
    /// Baseline space.
    pub baseline: String,
    /// Candidate space.
    pub candidate: String,
    /// Baseline mean.
    pub baseline_mean: f64,
    /// Candidate mean.
    pub candidate_mean: f64,
    /// Candidate minus baseline.
    pub mean_delta: f64,
    /// Bootstrap 95% interval of the mean delta, low.
    pub ci95_low: f64,
    /// Bootstrap 95% interval of the mean delta, high.
    pub ci95_high: f64,
    /// Paired randomization test p-value.
    pub p_value: f64,
    /// Queries where the candidate is better.
    pub wins: usize,
    /// Queries where they are equal.
    pub ties: usize,
    /// Queries where the candidate is worse.
    pub losses: usize,
}

/// One query's nDCG@k per space and the candidate-minus-baseline delta.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueryResult {
    /// Query id.
    pub query_id: String,
    /// nDCG@k per space.
    pub ndcg: BTreeMap<String, f64>,
    /// Second space minus first (0 with one space).
    pub delta: f64,
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
    let spaces = requested_spaces(&served, body.spaces.as_deref(), &state)?;
    let texts: Vec<String> = body.queries.iter().map(|q| q.text.clone()).collect();
    let mut vectors = Vec::new();
    for space in &spaces {
        let embedded = embed_all(&served, space, &texts, &state).await?;
        vectors.push(embedded.into_iter().map(|e| e.vector).collect::<Vec<_>>());
    }
    let k = body.k;
    let query_ids: Vec<String> = body.queries.iter().map(|q| q.id.clone()).collect();
    let judged_docs: Vec<String> = body.qrels.iter().map(|j| j.doc_id.clone()).collect();
    let response = blocking(move || {
        let settings = MetricsSettings {
            cutoffs: vec![k],
            ..MetricsSettings::default()
        };
        let mut evaluations = Vec::new();
        for (space, space_vectors) in spaces.iter().zip(&vectors) {
            let model = served.model(space)?.identity().clone();
            let mut run = Run::new();
            for (query_id, vector) in query_ids.iter().zip(space_vectors) {
                let hits = served.collection.search(&SearchRequest {
                    space,
                    vector,
                    model: &model,
                    k,
                    ef: None,
                    filter: &Filter::default(),
                })?;
                run.insert(
                    query_id.clone(),
                    hits.into_iter()
                        .map(|h| ScoredDoc {
                            doc_id: h.id,
                            score: f64::from(h.score),
                        })
                        .collect(),
                );
            }
            evaluations.push(score(&run, &qrels, &settings)?);
        }
        let mut unknown = HashSet::new();
        for doc in &judged_docs {
            if served.collection.document(doc)?.is_none() {
                unknown.insert(doc.as_str());
            }
        }
        let headline = [
            MetricName::at(MetricKind::Ndcg, k),
            MetricName::at(MetricKind::Recall, k),
            MetricName::at(MetricKind::Mrr, k),
            MetricName::at(MetricKind::Map, k),
        ];
        let space_metrics = spaces
            .iter()
            .zip(&evaluations)
            .map(|(space, evaluation)| SpaceMetrics {
                space: space.clone(),
                metrics: headline
                    .iter()
                    .filter_map(|m| Some((m.to_string(), evaluation.mean_of(*m)?)))
                    .collect(),
            })
            .collect();
        let mut comparisons = Vec::new();
        let comparison_settings = ComparisonSettings::default();
        for (space, evaluation) in spaces.iter().zip(&evaluations).skip(1) {
            for metric in headline {
                let c = compare(&evaluations[0], evaluation, metric, &comparison_settings)?;
                comparisons.push(MetricComparison {
                    metric: metric.to_string(),
                    baseline: spaces[0].clone(),
                    candidate: space.clone(),
                    baseline_mean: c.baseline_mean,
                    candidate_mean: c.candidate_mean,
                    mean_delta: c.mean_delta,
                    ci95_low: c.ci95.0,
                    ci95_high: c.ci95.1,
                    p_value: c.p_value,
                    wins: c.wins,
                    ties: c.ties,
                    losses: c.losses,
                });
            }
        }
        let ndcg = MetricName::at(MetricKind::Ndcg, k);
        let mut per_query: Vec<QueryResult> = evaluations[0]
            .per_query
            .iter()
            .map(|q| QueryResult {
                query_id: q.query_id.clone(),
                ndcg: BTreeMap::new(),
                delta: 0.0,
            })
            .collect();
        for (space, evaluation) in spaces.iter().zip(&evaluations) {
            let column = evaluation.column(ndcg).expect("ndcg@k computed");
            for (row, q) in per_query.iter_mut().zip(&evaluation.per_query) {
                row.ndcg.insert(space.clone(), q.values[column]);
            }
        }
        if spaces.len() > 1 {
            for row in &mut per_query {
                row.delta = row.ndcg[&spaces[1]] - row.ndcg[&spaces[0]];
            }
        }
        per_query.sort_by(|a, b| b.delta.abs().total_cmp(&a.delta.abs()));
        Ok(EvaluateResponse {
            k,
            evaluated_queries: evaluations[0].per_query.len(),
            spaces: space_metrics,
            comparisons,
            per_query,
            unknown_documents: unknown.len(),
            took_ms: 0.0,
        })
    })
    .await?;
    let response = EvaluateResponse {
        took_ms: millis_since(started),
        ..response
    };
    Ok(ok_json(&response, ""))
}
