//! The OpenAPI document, generated from the handlers' annotations and the request and response
//! types, served at `/openapi.json`.

use utoipa::OpenApi;

use crate::routes;

/// attune's API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "attune",
        description = "Semantic search with base and domain-tuned embeddings: search, A/B \
            comparison, relevance evaluation, GEO visibility, document upserts and \
            OpenAI-compatible embeddings. When the server has an API key, writes (and, if \
            configured, reads) need `Authorization: Bearer KEY` or `x-api-key: KEY`."
    ),
    paths(
        routes::search::search,
        routes::search::compare,
        routes::search::visibility,
        routes::evaluate::evaluate,
        routes::documents::upsert,
        routes::documents::get,
        routes::documents::delete,
        routes::collections::list,
        routes::collections::get,
        routes::collections::facets,
        routes::reports::report,
        routes::reports::report_file,
        routes::ab::feedback,
        routes::ab::feedback_pairs,
        routes::ab::ab_report,
        routes::drift::drift,
        routes::embeddings::embeddings,
        routes::embeddings::models,
        routes::system::healthz,
        routes::system::readyz,
        routes::system::metrics,
        routes::system::openapi,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail))
)]
pub struct ApiDoc;
