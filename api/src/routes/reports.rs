//! `GET /v1/collections/{collection}/report[/{file}]`: the latest report that `attune pipeline`
//! published for a collection (its verdict, base vs tuned metrics, the gate) and its files (the
//! HTML evaluation report with plots, metrics.json, per_query.csv, Markdown).

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use attune_app::PipelineReport;
use serde::Serialize;
use utoipa::ToSchema;

use super::{blocking, ok_json, State};
use crate::auth::ReadAccess;
use crate::error::{ApiError, ErrorBody};

/// The pipeline summary inside a published report.
pub const SUMMARY_FILE: &str = "pipeline.json";

/// Registers the report routes.
pub fn config_reports(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/collections/{collection}/report")
            .route(web::get().to(report))
            .default_service(web::to(super::system::method_not_allowed)),
    )
    .service(
        web::resource("/v1/collections/{collection}/report/{file}")
            .route(web::get().to(report_file))
            .default_service(web::to(super::system::method_not_allowed)),
    );
}

/// The latest published report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportResponse {
    /// Collection.
    pub collection: String,
    /// The pipeline's report (`pipeline.json`, [`PipelineReport`]): verdict, `promoted`, base
    /// and tuned metrics per dataset (`domain`, `general`), the gate's checks, stage timings.
    #[schema(value_type = Object)]
    pub summary: PipelineReport,
    /// Files of the report, for `/report/{file}`.
    pub files: Vec<String>,
}

fn no_report(collection: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no report published for collection {collection:?}; `attune pipeline` publishes one"
    ))
}

/// Reads a report file; invalid names are simply not found.
fn read(state: &State, collection: &str, file: &str) -> Result<Option<Vec<u8>>, ApiError> {
    match state.store().report_file(collection, file) {
        Ok(body) => Ok(body),
        Err(attune_index::IndexError::InvalidName { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The latest report of a collection: the pipeline's summary and the list of its files.
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/report",
    tag = "relevance",
    params(("collection" = String, Path, description = "Collection name", example = "products")),
    responses(
        (status = 200, description = "The latest report", body = ReportResponse),
        (status = 401, description = "API key required", body = ErrorBody),
        (status = 404, description = "No report published for this collection", body = ErrorBody),
    )
)]
pub async fn report(
    _access: ReadAccess,
    state: State,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let collection = path.into_inner();
    let response = blocking(move || {
        let summary =
            read(&state, &collection, SUMMARY_FILE)?.ok_or_else(|| no_report(&collection))?;
        let summary: PipelineReport = serde_json::from_slice(&summary).map_err(|e| {
            ApiError::Internal(format!(
                "the report of {collection:?} is not a pipeline report: {e}"
            ))
        })?;
        let files = state.store().report_files(&collection)?;
        Ok(ReportResponse {
            collection,
            summary,
            files,
        })
    })
    .await?;
    Ok(ok_json(&response, ""))
}

/// Content type by file extension.
fn content_type(file: &str) -> ContentType {
    match file.rsplit('.').next().unwrap_or_default() {
        "html" => ContentType::html(),
        "json" => ContentType::json(),
        "svg" => ContentType("image/svg+xml".parse().expect("mime")),
        "csv" => ContentType("text/csv; charset=utf-8".parse().expect("mime")),
        "md" => ContentType("text/markdown; charset=utf-8".parse().expect("mime")),
        _ => ContentType::plaintext(),
    }
}

/// One file of the latest report (`report.html` holds the plots).
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/report/{file}",
    tag = "relevance",
    params(
        ("collection" = String, Path, description = "Collection name", example = "products"),
        ("file" = String, Path, description = "File name", example = "report.html"),
    ),
    responses(
        (status = 200, description = "The file (HTML, JSON, CSV or Markdown)", content_type = "text/html"),
        (status = 401, description = "API key required", body = ErrorBody),
        (status = 404, description = "No such report or file", body = ErrorBody),
    )
)]
pub async fn report_file(
    _access: ReadAccess,
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (collection, file) = path.into_inner();
    let name = file.clone();
    let body = blocking(move || {
        read(&state, &collection, &name)?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "the report of collection {collection:?} has no file {name:?}"
            ))
        })
    })
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(content_type(&file))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(body))
}
