//! Live A/B feedback: `POST /v1/collections/{collection}/feedback` records what a shopper did
//! with a result of an A/B-served search; `GET /v1/collections/{collection}/ab-report` compares
//! the variants.

use actix_web::{web, HttpResponse};
use attune_index::FeedbackRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
        web::resource("/v1/collections/{collection}/ab-report")
            .route(web::get().to(ab_report))
            .default_service(web::to(super::system::method_not_allowed)),
    );
}

/// Feedback on a result of an A/B-served search.
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
                "no A/B-served request {:?} in collection {:?} (feedback is for searches with \
                 space \"auto\")",
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
