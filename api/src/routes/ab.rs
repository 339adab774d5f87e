//! Live A/B feedback: `POST /v1/collections/{collection}/feedback` records what a shopper did
//! with a result of an A/B-served search; `GET /v1/collections/{collection}/ab-report` compares
//! the variants; `GET /v1/collections/{collection}/feedback/pairs` exports training pairs from
//! the log while the server runs.

use actix_web::{web, HttpResponse};
use attune_app::feedback::{export, ExportReport, ExportSettings, FeedbackError, FeedbackPair};
use attune_index::FeedbackRecord;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::search::unix_ms;
use super::{blocking, ok_json, State};
use crate::ab::{report, AbReport, FeedbackEvent};
use crate::auth::{ReadAccess, WriteAccess};
use crate::error::{ApiError, BodyErrors, ErrorBody};

/// Registers feedback and the report.
pub fn config_ab(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/collections/{collection}/feedback")
            .route(web::post().to(feedback))
            .default_service(web::to(super::system::method_not_allowed)),
    )
    .service(
        web::resource("/v1/collections/{collection}/feedback/pairs")
            .route(web::get().to(feedback_pairs))
            .default_service(web::to(super::system::method_not_allowed)),
    )
    .service(
        web::resource("/v1/collections/{collection}/ab-report")
            .route(web::get().to(ab_report))
            .default_service(web::to(super::system::method_not_allowed)),
    );
}

/// Feedback on a result of a logged search (A/B-served, or any search of a collection whose
/// feedback log is on).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// The `request_id` of the search response.
    pub request_id: String,
    /// The result acted on.
    pub doc_id: String,
    /// What happened.
    pub event: FeedbackEvent,
}

/// Recorded feedback.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackResponse {
    /// The request.
    pub request_id: String,
    /// The variant that served it.
    pub variant: String,
    /// 1-based rank of the document in that response.
    pub rank: usize,
    /// False when this event on this document of this request was recorded before: it counts
    /// once.
    pub recorded: bool,
}

/// Records a click, add-to-cart or purchase, durably before it answers; an event repeated on
/// the same document of the same request is recorded once.
#[utoipa::path(
    post,
    path = "/v1/collections/{collection}/feedback",
    tag = "ab",
    params(("collection" = String, Path, description = "Collection name", example = "products")),
    request_body = FeedbackBody,
    responses(
        (status = 200, description = "Recorded", body = FeedbackResponse),
        BodyErrors,
    )
)]
pub async fn feedback(
    _access: WriteAccess,
    state: State,
    path: web::Path<String>,
    body: web::Json<FeedbackBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let served = state.collection(&path.into_inner())?;
    let response = blocking(move || {
        let Some(request) = served.events.served(&body.request_id)? else {
            return Err(ApiError::NotFound(format!(
                "no logged search {:?} in collection {:?} (feedback quotes the request_id of a \
                 search with space \"auto\", or of any search when the server's [feedback] log \
                 lists the collection)",
                body.request_id,
                served.collection.name()
            )));
        };
        let Some(index) = request.results.iter().position(|id| *id == body.doc_id) else {
            return Err(ApiError::invalid(
                "doc_id",
                format!(
                    "{:?} was not among the {} results of request {:?}",
                    body.doc_id,
                    request.results.len(),
                    body.request_id
                ),
            ));
        };
        let recorded = served.events.record_feedback(&FeedbackRecord {
            request_id: body.request_id.clone(),
            doc_id: body.doc_id,
            event: body.event.as_str().to_string(),
            rank: index + 1,
            unix_ms: unix_ms(),
        })?;
        Ok(FeedbackResponse {
            request_id: body.request_id,
            variant: request.variant,
            rank: index + 1,
            recorded,
        })
    })
    .await?;
    let space = response.variant.clone();
    Ok(ok_json(&response, &space))
}

/// What to export (the keys of `attune feedback export`; defaults as there).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PairsQuery {
    /// Only searches served since then: RFC 3339, or a duration back from now (`7d`, `12h`).
    pub since: Option<String>,
    /// Distinct shoppers who must have engaged a document for a query (default 2).
    #[param(minimum = 1)]
    pub min_events: Option<usize>,
    /// Inverse-propensity weights from the swap exploration (default true).
    pub position_correction: Option<bool>,
    /// Skipped-above negatives per pair at most (default 3).
    pub max_negatives: Option<usize>,
}

/// Training pairs from the collection's feedback log, and what the export found.
#[derive(Debug, Serialize, ToSchema)]
pub struct PairsResponse {
    /// Counts, and the position-bias estimate used.
    pub report: ExportReport,
    /// The pairs (each a line of the trainer's pairs JSONL).
    pub pairs: Vec<FeedbackPair>,
}

/// Exports training pairs from what shoppers did with logged searches while the server runs
/// (`attune feedback export --url`). Reads the whole log: it needs the API key when the server
/// has one.
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/feedback/pairs",
    tag = "ab",
    params(("collection" = String, Path, description = "Collection name", example = "products"), PairsQuery),
    responses(
        (status = 200, description = "The pairs", body = PairsResponse),
        (status = 401, description = "API key required", body = ErrorBody),
        (status = 404, description = "Unknown collection, or no logged searches or events", body = ErrorBody),
        (status = 422, description = "Malformed since, or no document past min_events", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    )
)]
pub async fn feedback_pairs(
    _access: WriteAccess,
    state: State,
    path: web::Path<String>,
    query: web::Query<PairsQuery>,
) -> Result<HttpResponse, ApiError> {
    let served = state.collection(&path.into_inner())?;
    let query = query.into_inner();
    let defaults = ExportSettings::new(served.collection.name());
    let settings = ExportSettings {
        since: query.since,
        min_events: query.min_events.unwrap_or(defaults.min_events),
        position_correction: query
            .position_correction
            .unwrap_or(defaults.position_correction),
        max_negatives: query.max_negatives.unwrap_or(defaults.max_negatives),
        ..defaults
    };
    let response = blocking(move || {
        let requests = served.events.all_served()?;
        let feedback = served.events.all_feedback()?;
        let collection = served.collection.clone();
        let name = collection.name().to_string();
        let document = |id: &str| -> Result<Option<String>, FeedbackError> {
            let stored = collection
                .document(id)
                .map_err(|source| FeedbackError::Store {
                    collection: name.clone(),
                    source: Box::new(source),
                })?;
            Ok(stored.map(|d| attune_core::embedding_text(&d.title, &d.text)))
        };
        let export = export(&settings, &requests, &feedback, &document, unix_ms())?;
        Ok(PairsResponse {
            report: export.report,
            pairs: export.pairs,
        })
    })
    .await?;
    Ok(ok_json(&response, ""))
}

/// Per-variant click-through rate and mean reciprocal rank of clicks, with 95% intervals.
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/ab-report",
    tag = "ab",
    params(("collection" = String, Path, description = "Collection name", example = "products")),
    responses(
        (status = 200, description = "The report", body = AbReport),
        (status = 401, description = "API key required", body = ErrorBody),
        (status = 404, description = "Unknown collection", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    )
)]
pub async fn ab_report(
    _access: ReadAccess,
    state: State,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let served = state.collection(&path.into_inner())?;
    let settings = state.settings.ab.clone();
    let report = blocking(move || {
        let served_requests = served.events.all_served()?;
        let feedback = served.events.all_feedback()?;
        Ok(report(&settings, &served_requests, &feedback))
    })
    .await?;
    Ok(ok_json(&report, ""))
}
