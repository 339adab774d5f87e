//! Operations: `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /openapi.json`, and the
//! JSON answers for unknown routes and methods.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::State;
use crate::error::ApiError;
use crate::openapi::ApiDoc;

/// Registers the operational routes.
pub fn config_system(cfg: &mut web::ServiceConfig) {
    for (path, route) in [
        ("/healthz", web::get().to(healthz)),
        ("/readyz", web::get().to(readyz)),
        ("/metrics", web::get().to(metrics)),
        ("/openapi.json", web::get().to(openapi)),
    ] {
        cfg.service(
            web::resource(path)
                .route(route)
                .default_service(web::to(method_not_allowed)),
        );
    }
}

/// 405 as JSON, for a known route with another method.
pub async fn method_not_allowed() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::MethodNotAllowed)
}

/// 404 as JSON, for unknown routes.
pub async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::NotFound(format!(
        "no route {} {}",
        req.method(),
        req.path()
    )))
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// True when the store answers and every collection of it is served with its models
    /// loaded.
    pub ready: bool,
    /// The store: its directory, or `qdrant URL`.
    pub store: String,
    /// Why the store could not be read at the last check (e.g. Qdrant unreachable); absent
    /// when it could.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    /// Served collections and their generations.
    pub collections: BTreeMap<String, u64>,
    /// Loaded models.
    pub models: Vec<String>,
    /// Collections that cannot be served, and why.
    pub problems: BTreeMap<String, String>,
}

/// The store is open and every collection's models are loaded (503 otherwise, with reasons).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready; `problems` says why", body = Ready),
    ))]
pub async fn readyz(state: State) -> HttpResponse {
    let problems = state.problems();
    let store_error = state.store_problem();
    let body = Ready {
        ready: problems.is_empty() && store_error.is_none(),
        store: state.store_location(),
        store_error,
        collections: state
            .all()
            .iter()
            .map(|s| (s.collection.name().to_string(), s.collection.generation()))
            .collect(),
        models: state
            .models()
            .iter()
            .map(|m| m.label().to_string())
            .collect(),
        problems,
    };
    if body.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI document", body = Object)))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serializes"),
    )
}
