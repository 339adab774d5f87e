//! HTTP handlers, one module per resource, each with a `config_*` function that registers its
//! routes. Handlers validate, enqueue embeddings on the model's inference thread, and run store
//! work (sled, HNSW) on actix's blocking pool; none of it runs on the async worker threads.

pub mod ab;
pub mod collections;
pub mod documents;
pub mod drift;
pub mod embeddings;
pub mod evaluate;
pub mod reports;
pub mod search;
pub mod system;
pub mod ui;

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use attune_index::{Filter, FilterClause, Fusion, FusionMethod, Retrieval, SearchHit};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

/// The application state as handlers receive it.
pub type State = web::Data<Arc<AppState>>;

/// Most results one search may ask for.
pub const MAX_K: usize = 1000;
/// Largest HNSW candidate list a request may ask for.
pub const MAX_EF: usize = 10_000;

/// The space(s) that served a response and the fusion a hybrid one used, read by the metrics
/// middleware. Both come from validated requests (a collection's known spaces, a fusion
/// method), never free-form text.
#[derive(Debug, Clone)]
pub struct SpaceLabel {
    /// Space names, comma-separated (`tuned`, `lexical`, `hybrid:tuned`, `base,tuned`).
    pub space: String,
    /// `rrf` or `weighted` when a hybrid space answered, else empty.
    pub fusion: &'static str,
}

/// A JSON 200 response labelled with the space(s) it used.
pub fn ok_json<T: Serialize>(body: &T, space: &str) -> HttpResponse {
    ok_labelled(body, space, None)
}

/// [`ok_json`] with the fusion method of a hybrid space among them.
pub fn ok_labelled<T: Serialize>(
    body: &T,
    space: &str,
    fusion: Option<FusionMethod>,
) -> HttpResponse {
    let mut response = HttpResponse::Ok().json(body);
    response.extensions_mut().insert(SpaceLabel {
        space: space.to_string(),
        fusion: fusion.map_or("", FusionMethod::name),
    });
    response
}

/// The fusion method to label a response with when any of `retrievals` is hybrid.
pub fn fusion_label<'a>(
    retrievals: impl IntoIterator<Item = &'a Retrieval>,
    fusion: &Fusion,
) -> Option<FusionMethod> {
    retrievals
        .into_iter()
        .any(|r| matches!(r, Retrieval::Hybrid(_)))
        .then_some(fusion.method)
}

/// The space `name` of a served collection: a vector space with a model, `lexical` when the
/// collection has a lexical space, or `hybrid:<vector space>`; 404 naming what there is.
pub fn retrieval(served: &crate::state::Served, name: &str) -> Result<Retrieval, ApiError> {
    let retrieval = Retrieval::parse(name);
    retrieval.check(served.collection.as_ref())?;
    if let Some(dense) = retrieval.dense_space() {
        served.model(dense)?;
    }
    Ok(retrieval)
}

/// The fusion parameters of a request (defaults when absent), checked.
pub fn fusion_from(fusion: Option<Fusion>) -> Result<Fusion, ApiError> {
    let fusion = fusion.unwrap_or_default();
    fusion
        .validate()
        .map_err(|e| ApiError::invalid("fusion", e.to_string()))?;
    Ok(fusion)
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Hit {
    /// Document id.
    pub id: String,
    /// The space's score: cosine similarity (-1 to 1) in a vector space, BM25 in `lexical`,
    /// the fused score in `hybrid:<space>`.
    pub score: f32,
    /// Document title.
    pub title: String,
    /// Document metadata.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

impl From<SearchHit> for Hit {
    fn from(hit: SearchHit) -> Self {
        Self {
            id: hit.id,
            score: hit.score,
            title: hit.title,
            metadata: hit.metadata,
        }
    }
}

/// Checks `k` (1 to [`MAX_K`]).
pub fn check_k(k: usize) -> Result<(), ApiError> {
    if k == 0 || k > MAX_K {
        return Err(ApiError::invalid(
            "k",
            format!("must be 1 to {MAX_K}, got {k}"),
        ));
    }
    Ok(())
}

/// Checks `ef` (1 to [`MAX_EF`]).
pub fn check_ef(ef: Option<usize>) -> Result<(), ApiError> {
    match ef {
        Some(ef) if ef == 0 || ef > MAX_EF => Err(ApiError::invalid(
            "ef",
            format!("must be 1 to {MAX_EF}, got {ef}"),
        )),
        _ => Ok(()),
    }
}

/// A metadata filter from its JSON form `{"field": value, "other": [v1, v2]}`: every field must
/// match; a list means "one of".
pub fn filter_from_json(filter: Option<&Map<String, Value>>) -> Result<Filter, ApiError> {
    let mut out = Filter::default();
    if let Some(map) = filter {
        for (field, value) in map {
            let values = match value {
                Value::Array(values) => values.clone(),
                other => vec![other.clone()],
            };
            out.clauses.push(FilterClause {
                field: field.clone(),
                values,
            });
        }
    }
    out.validate()
        .map_err(|e| ApiError::invalid("filter", e.to_string()))?;
    Ok(out)
}

/// Runs blocking store work on actix's blocking pool.
pub async fn blocking<T, F>(work: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    web::block(work).await?
}

/// Checks a list's length against a limit (413 when over).
pub fn check_len(field: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if len > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "{field}: at most {max} per request, got {len}"
        )));
    }
    Ok(())
}

/// Milliseconds since `start`.
pub fn millis_since(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// The spaces a request names, each once in the order first named (each must be a space of the
/// collection, so the work and the metric label of a request are bounded by the collection's
/// spaces), or by default all of the collection's in report order.
pub fn requested_spaces(
    served: &crate::state::Served,
    requested: Option<&[String]>,
    state: &AppState,
) -> Result<Vec<String>, ApiError> {
    match requested {
        Some(spaces) if !spaces.is_empty() => {
            let mut distinct: Vec<String> = Vec::new();
            for space in spaces {
                if !distinct.contains(space) {
                    retrieval(served, space)?;
                    distinct.push(space.clone());
                }
            }
            Ok(distinct)
        }
        _ => Ok(ordered_spaces(&served.models, state)),
    }
}

/// Spaces of a collection in report order: control and treatment first, then the rest.
pub fn ordered_spaces<T>(spaces: &BTreeMap<String, T>, state: &AppState) -> Vec<String> {
    let ab = &state.settings.ab;
    let mut order: Vec<String> = [&ab.control, &ab.treatment]
        .into_iter()
        .filter(|s| spaces.contains_key(*s))
        .cloned()
        .collect();
    for name in spaces.keys() {
        if !order.contains(name) {
            order.push(name.clone());
        }
    }
    order
}
