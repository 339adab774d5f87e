//! # attune-api
//!
//! attune's HTTP server on actix-web: query-to-content search over a store's collections, A/B
//! comparison of base and tuned spaces (side by side and live, with feedback), relevance
//! evaluation and GEO visibility for SEO teams, document upserts, OpenAI-compatible embeddings,
//! health, readiness, Prometheus metrics and an OpenAPI document.
//!
//! - [`state`]: the collections served (generation swaps picked up from the store) and their
//!   models;
//! - [`inference`]: one thread per model embeds queries, batching concurrent requests into one
//!   forward pass;
//! - [`routes`]: one module per resource, each with a `config_*` function;
//! - [`error`]: [`ApiError`], the one place HTTP statuses are decided;
//! - [`routes::ui`]: the web page at `/` (search with base and tuned side by side, filters,
//!   judging, the latest pipeline report), plain HTML and JavaScript compiled into the binary;
//! - [`settings`], [`auth`], [`metrics`], [`ab`], [`openapi`].
//!
//! Models are loaded through [`attune_app::ModelEmbedder`], the application layer's owner of
//! model identities.
//!
//! ```no_run
//! use attune_api::{serve, AppState, ServeSettings};
//!
//! let state = AppState::open("out/store".as_ref(), ServeSettings::default())?;
//! actix_web::rt::System::new().block_on(serve(state))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod ab;
pub mod auth;
pub mod drift;
pub mod error;
pub mod inference;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod settings;
pub mod state;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};

pub use error::{ApiError, SettingsError, StartError};
pub use settings::{AbSettings, InferenceSettings, ServeSettings};
pub use state::AppState;

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    routes::search::config_search(cfg);
    routes::evaluate::config_evaluate(cfg);
    routes::documents::config_documents(cfg);
    routes::collections::config_collections(cfg);
    routes::reports::config_reports(cfg);
    routes::ui::config_ui(cfg);
    routes::ab::config_ab(cfg);
    routes::drift::config_drift(cfg);
    routes::embeddings::config_embeddings(cfg);
    routes::system::config_system(cfg);
}

/// The actix application over `state`: routes, JSON limits and error mapping, metrics.
pub fn app(
    state: Arc<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limit = state.settings.max_body_bytes;
    App::new()
        .app_data(web::Data::new(state))
        .app_data(
            web::JsonConfig::default()
                .limit(limit)
                .error_handler(|err, _req| error::json_error(&err).into()),
        )
        .app_data(
            web::QueryConfig::default()
                .error_handler(|err, _req| ApiError::Invalid(err.to_string()).into()),
        )
        .app_data(
            web::PathConfig::default()
                .error_handler(|err, _req| ApiError::NotFound(err.to_string()).into()),
        )
        .configure(configure)
        .default_service(web::to(routes::system::not_found))
        .wrap(from_fn(record_metrics))
        .wrap(from_fn(head_as_get))
}

/// Answers `HEAD` on every `GET` route as `GET` would, without the body (RFC 9110 §9.3.2).
async fn head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let head = req.method() == Method::HEAD;
    if head {
        req.head_mut().method = Method::GET;
    }
    let response = next.call(req).await?;
    Ok(if head {
        response.map_body(|_, _| BoxBody::new(()))
    } else {
        response.map_into_boxed_body()
    })
}

/// Counts and times every request by route pattern and the space(s) the handler used.
async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<Arc<AppState>>>().cloned();
    let endpoint = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.call(req).await?;
    if let Some(state) = state {
        let (space, fusion) = response
            .response()
            .extensions()
            .get::<routes::SpaceLabel>()
            .map(|s| (s.space.clone(), s.fusion))
            .unwrap_or_default();
        state.metrics.request(
            &endpoint,
            &space,
            fusion,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    Ok(response)
}

/// Serves `state` on `state.settings.bind` until the process is told to stop (SIGINT/SIGTERM);
/// watches the store for new generations meanwhile.
pub async fn serve(state: Arc<AppState>) -> Result<(), StartError> {
    state.spawn_watcher();
    let bind = state.settings.bind.clone();
    let workers = state.settings.workers;
    let for_app = state.clone();
    let server = HttpServer::new(move || app(for_app.clone()))
        .workers(workers)
        .bind(&bind)
        .map_err(|source| StartError::Bind {
            bind: bind.clone(),
            source,
        })?;
    for address in server.addrs() {
        tracing::info!("listening on http://{address}");
    }
    server
        .run()
        .await
        .map_err(|source| StartError::Bind { bind, source })?;
    state.flush();
    Ok(())
}
