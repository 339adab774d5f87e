//! `GET /v1/collections` and `GET /v1/collections/{collection}`: what is served.

use actix_web::{web, HttpResponse};
use attune_index::{CollectionStats, LexicalSettings, Retrieval};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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
    )
    .service(
        web::resource("/v1/collections/{collection}/facets")
            .route(web::get().to(facets))
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
    /// The lexical space (BM25 over title, text and these settings' metadata fields); null
    /// when the collection was built without one.
    #[schema(value_type = Option<Object>)]
    pub lexical: Option<LexicalSettings>,
    /// Every space a search takes: the vector spaces, then `lexical` and `hybrid:<space>`
    /// when there is a lexical space.
    pub searchable: Vec<String>,
    /// Bytes on disk of the served generation.
    pub disk_bytes: u64,
}

impl From<CollectionStats> for CollectionInfo {
    fn from(stats: CollectionStats) -> Self {
        let searchable = Retrieval::all(
            stats.spaces.iter().map(|s| s.name.clone()),
            stats.lexical.is_some(),
        )
        .iter()
        .map(Retrieval::name)
        .collect();
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
            lexical: stats.lexical,
            searchable,
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

/// Query of the facets listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FacetsQuery {
    /// Most values listed per field (most frequent first), 1 to 1000. Default 50.
    #[param(minimum = 1, maximum = 1000, default = 50)]
    pub max_values: Option<usize>,
}

/// A value of a metadata field and how many documents have it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FacetValueInfo {
    /// The value (string, number or boolean), usable in a search filter.
    pub value: serde_json::Value,
    /// Documents with it.
    pub count: usize,
}

/// A filterable metadata field.
#[derive(Debug, Serialize, ToSchema)]
pub struct FacetInfo {
    /// Field name, usable as a filter key.
    pub field: String,
    /// Distinct values in the collection.
    pub distinct: usize,
    /// Values, most frequent first.
    pub values: Vec<FacetValueInfo>,
}

/// The filterable metadata of a collection.
#[derive(Debug, Serialize, ToSchema)]
pub struct FacetsResponse {
    /// Collection.
    pub collection: String,
    /// Documents in it.
    pub documents: usize,
    /// Fields by name.
    pub fields: Vec<FacetInfo>,
}

/// The metadata fields a collection can be filtered on, with their values and counts.
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/facets",
    tag = "collections",
    params(
        ("collection" = String, Path, description = "Collection name", example = "products"),
        FacetsQuery,
    ),
    responses(
        (status = 200, description = "Fields and values", body = FacetsResponse),
        (status = 401, description = "API key required", body = ErrorBody),
        (status = 404, description = "Unknown collection", body = ErrorBody),
        (status = 422, description = "max_values out of range", body = ErrorBody),
        (status = 503, description = "Collection not servable yet", body = ErrorBody),
    )
)]
pub async fn facets(
    _access: ReadAccess,
    state: State,
    path: web::Path<String>,
    query: web::Query<FacetsQuery>,
) -> Result<HttpResponse, ApiError> {
    let max_values = query.max_values.unwrap_or(50);
    if !(1..=1000).contains(&max_values) {
        return Err(ApiError::invalid(
            "max_values",
            format!("must be 1 to 1000, got {max_values}"),
        ));
    }
    let served = state.collection(&path.into_inner())?;
    let response = blocking(move || {
        let collection = &served.collection;
        Ok(FacetsResponse {
            collection: collection.name().to_string(),
            documents: collection.len(),
            fields: collection
                .facets(max_values)
                .into_iter()
                .map(|f| FacetInfo {
                    field: f.field,
                    distinct: f.distinct,
                    values: f
                        .values
                        .into_iter()
                        .map(|v| FacetValueInfo {
                            value: v.value,
                            count: v.count,
                        })
                        .collect(),
                })
                .collect(),
        })
    })
    .await?;
    Ok(ok_json(&response, ""))
}
