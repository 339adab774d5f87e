//! Query drift: `GET /v1/collections/{collection}/drift` reports, per vector space, how far the
//! latest searches have moved from the queries its model was trained on, and whether that
//! recommends retraining (see [`crate::drift`]).

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use attune_model::TextKind;
use serde::Serialize;
use utoipa::ToSchema;

use super::{blocking, ok_json, State};
use crate::auth::ReadAccess;
use crate::drift::{DriftMonitor, DriftReport};
use crate::error::{ApiError, ErrorBody};
use crate::inference::Lane;
use crate::state::Served;

/// Registers the drift report.
pub fn config_drift(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/collections/{collection}/drift")
            .route(web::get().to(drift))
            .default_service(web::to(super::system::method_not_allowed)),
    );
}

/// A collection's drift.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionDrift {
    /// The collection.
    pub collection: String,
    /// True when any space recommends retraining.
    pub retraining_recommended: bool,
    /// One report per vector space.
    pub spaces: Vec<DriftReport>,
}

/// Per vector space: the shares of novel queries, weak top results and unseen words over the
/// sliding window, against the model's training queries (or its first served queries), and
/// whether retraining is recommended, with the evidence.
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/drift",
    tag = "feedback",
    params(("collection" = String, Path, description = "Collection name", example = "products")),
    responses(
        (status = 200, description = "Drift per vector space", body = CollectionDrift),
        (status = 401, description = "API key required", body = ErrorBody),
        (status = 404, description = "Unknown collection", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    )
)]
pub async fn drift(
    _access: ReadAccess,
    state: State,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let served = state.collection(&path.into_inner())?;
    let (app, for_monitors) = (state.get_ref().clone(), served.clone());
    let monitors = blocking(move || {
        let mut monitors = Vec::new();
        for space in for_monitors.models.keys() {
            let (monitor, card) = app.drift_monitor(&for_monitors, space)?;
            monitors.push((space.clone(), monitor, card));
        }
        Ok(monitors)
    })
    .await?;
    let mut spaces = Vec::new();
    for (space, monitor, card) in monitors {
        if let Some(queries) = card {
            embed_reference(&state, &served, &space, monitor.clone(), queries);
        }
        spaces.push(monitor.report(&space));
    }
    let body = CollectionDrift {
        collection: served.collection.name().to_string(),
        retraining_recommended: spaces.iter().any(|s| s.retraining_recommended),
        spaces,
    };
    Ok(ok_json(&body, ""))
}

/// Embeds a training card's reference `queries` for `monitor` in the background (bulk lane, so
/// searches do not wait behind it).
pub(crate) fn embed_reference(
    state: &State,
    served: &Arc<Served>,
    space: &str,
    monitor: Arc<DriftMonitor>,
    queries: Vec<String>,
) {
    let Ok(queue) = served.model(space) else {
        return;
    };
    let (queue, max_tokens) = (queue.clone(), state.settings.max_query_tokens);
    actix_web::rt::spawn(async move {
        match queue
            .embed_in(Lane::Bulk, queries, TextKind::Query, max_tokens)
            .await
        {
            Ok(embedded) => {
                monitor.set_reference_vectors(embedded.into_iter().map(|e| e.vector).collect())
            }
            Err(e) => tracing::warn!("embedding the drift reference: {e}"),
        }
    });
}
