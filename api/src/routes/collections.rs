//! `GET /v1/collections` and `GET /v1/collections/{collection}`: what is served.

use actix_web::{web, HttpResponse};
use attune_index::CollectionStats;
use serde::Serialize;
use utoipa::ToSchema;

use super::{blocking, ok_json, State};
use crate::auth::ReadAccess;
use crate::error::{ApiError, ErrorBody};
use crate::state::Served;

/// Registers the collection listing and details.
pub fn config_collections(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/collections")
            .route(web::get().to(list))
            .default_service(web::to(super::system::method_not_allowed)),
    )
    .service(
        web::resource("/v1/collections/{collection}")
            .route(web::get().to(get))
            .default_service(web::to(super::system::method_not_allowed)),
    );
}

/// A vector space of a collection.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpaceInfo {
    /// Space name.
    pub name: String,
    /// Fingerprint of the model it is bound to.
    pub model_fingerprint: String,
    /// Where that model was loaded from.
    pub model_source: String,
    /// Embedding dimension.
    pub dim: usize,
    /// Points in the HNSW graph.
    pub graph_points: usize,
    /// Graph points deleted or replaced since the graph was built.
    pub tombstones: usize,
    /// Live documents added since the graph was built (searched exactly).
    pub delta: usize,
}

/// HNSW settings of a collection.
#[derive(Debug, Serialize, ToSchema)]
pub struct HnswInfo {
    /// Links per point.
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Default candidate list size for searches.
    pub ef_search: usize,
}

/// A served collection.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionInfo {
    /// Name.
    pub name: String,
    /// Generation served.
    pub generation: u64,
    /// Live documents.
    pub documents: usize,
    /// HNSW settings.
    pub hnsw: HnswInfo,
    /// Vector spaces.
    pub spaces: Vec<SpaceInfo>,
    /// Bytes on disk of the served generation.
    pub disk_bytes: u64,
}

impl From<CollectionStats> for CollectionInfo {
    fn from(stats: CollectionStats) -> Self {
        Self {
            name: stats.name,
            generation: stats.generation,
            documents: stats.documents,
            hnsw: HnswInfo {
                m: stats.hnsw.m,
                ef_construction: stats.hnsw.ef_construction,
                ef_search: stats.hnsw.ef_search,
            },
            spaces: stats
                .spaces
                .into_iter()
                .map(|s| SpaceInfo {
                    name: s.name,
                    model_fingerprint: s.model.fingerprint,
                    model_source: s.model.source,
                    dim: s.model.dim,
                    graph_points: s.graph_points,
                    tombstones: s.tombstones,
                    delta: s.delta,
                })
                .collect(),
            disk_bytes: stats.disk_bytes,
        }
    }
}

/// The served collections.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionList {
    /// Collections, by name.
    pub collections: Vec<CollectionInfo>,
}

async fn info(served: std::sync::Arc<Served>) -> Result<CollectionInfo, ApiError> {
    blocking(move || Ok(served.collection.stats()?.into())).await
}

/// Lists the served collections.
#[utoipa::path(
    get,
    path = "/v1/collections",
    tag = "collections",
    responses(
        (status = 200, description = "Served collections", body = CollectionList),
        (status = 401, description = "API key required", body = ErrorBody),
    )
)]
pub async fn list(_access: ReadAccess, state: State) -> Result<HttpResponse, ApiError> {
    let mut collections = Vec::new();
    for served in state.all() {
        collections.push(info(served).await?);
    }
    Ok(ok_json(&CollectionList { collections }, ""))
}

/// One collection's generation, spaces, models and sizes.
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}",
    tag = "collections",
    params(("collection" = String, Path, description = "Collection name", example = "products")),
    responses(
        (status = 200, description = "The collection", body = CollectionInfo),
        (status = 401, description = "API key required", body = ErrorBody),
        (status = 404, description = "Unknown collection", body = ErrorBody),
        (status = 503, description = "Collection not servable yet", body = ErrorBody),
    )
)]
pub async fn get(
    _access: ReadAccess,
    state: State,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let served = state.collection(&path.into_inner())?;
    Ok(ok_json(&info(served).await?, ""))
}
