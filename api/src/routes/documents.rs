//! `PUT /v1/collections/{collection}/documents` (batch upsert, embedded with every space's model)
//! and `DELETE /v1/collections/{collection}/documents/{id}`. A write is durable when it is
//! acknowledged, and it stays: the collection's journal carries it into every later generation
//! (a build merges a corpus into the collection's documents by default).

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use attune_index::{Document, ModelIdentity, UpsertDocument};
use attune_model::TextKind;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{blocking, check_len, ok_json, State};
use crate::auth::{ReadAccess, WriteAccess};
use crate::error::{ApiError, BodyErrors, ErrorBody};
use crate::inference::Lane;
use crate::state::{AppState, Served};

/// Registers upserts and deletes.
pub fn config_documents(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/collections/{collection}/documents")
            .route(web::put().to(upsert))
            .default_service(web::to(super::system::method_not_allowed)),
    )
    .service(
        web::resource("/v1/collections/{collection}/documents/{id}")
            .route(web::get().to(get))
            .route(web::delete().to(delete))
            .default_service(web::to(super::system::method_not_allowed)),
    );
}

/// A document to insert or replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentBody {
    /// Document id (replaces the document with this id, if any).
    #[schema(min_length = 1, max_length = 512)]
    pub id: String,
    /// Title (embedded before the text).
    #[serde(default)]
    pub title: String,
    /// Body text.
    #[serde(default)]
    pub text: String,
    /// Metadata: top-level strings, numbers, booleans and lists of them can be filtered on.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// A batch upsert.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertBody {
    /// Documents, at most the server's `max_upsert_documents`; the last of repeated ids wins.
    #[schema(min_items = 1)]
    pub documents: Vec<DocumentBody>,
}

/// What an upsert did.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpsertResponse {
    /// New ids.
    pub added: usize,
    /// Ids whose text changed (re-embedded).
    pub updated: usize,
    /// Ids whose embedded text was unchanged (title or metadata may have changed).
    pub unchanged: usize,
    /// Spaces whose graph was rebuilt afterwards.
    pub compacted: Vec<String>,
    /// Live documents after the upsert.
    pub documents: usize,
    /// The generation written to.
    pub generation: u64,
}

/// Inserts or replaces documents, embedding them with every space's model.
#[utoipa::path(
    put,
    path = "/v1/collections/{collection}/documents",
    tag = "documents",
    params(("collection" = String, Path, description = "Collection name", example = "products")),
    request_body = UpsertBody,
    responses(
        (status = 200, description = "Upserted", body = UpsertResponse),
        BodyErrors,
    )
)]
pub async fn upsert(
    _access: WriteAccess,
    state: State,
    path: web::Path<String>,
    body: web::Json<UpsertBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.documents.is_empty() {
        return Err(ApiError::invalid("documents", "give at least one document"));
    }
    check_len(
        "documents",
        body.documents.len(),
        state.settings.max_upsert_documents,
    )?;
    // The last of repeated ids wins, as in a corpus file.
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for (i, doc) in body.documents.iter().enumerate() {
        if doc.id.is_empty() || doc.id.len() > 512 {
            return Err(ApiError::invalid(
                &format!("documents[{i}].id"),
                "ids are 1 to 512 bytes",
            ));
        }
        by_id.insert(doc.id.clone(), i);
    }
    let mut keep: Vec<usize> = by_id.into_values().collect();
    keep.sort_unstable();
    let documents: Vec<Document> = keep
        .into_iter()
        .map(|i| {
            let doc = &body.documents[i];
            Document {
                id: doc.id.clone(),
                title: doc.title.clone(),
                text: doc.text.clone(),
                metadata: doc.metadata.clone(),
            }
        })
        .collect();
    let name = path.into_inner();
    let state = state.into_inner();
    let mut served = state.collection(&name)?;
    // A generation switch with other models between embedding and writing: embed again with
    // the new models (a switch is rare; two in a row during one write rarer still).
    for _ in 0..WRITE_ATTEMPTS {
        let (upserts, models) = embed_documents(&state, &served, &documents).await?;
        let (shared, collection, prepared) = (state.clone(), name.clone(), served.clone());
        let written = blocking(move || {
            let (state, name) = (shared, collection);
            let gate = state.write_gate(&name);
            let _shared = gate.read().unwrap_or_else(|e| e.into_inner());
            let Some(served) = state.collection_for_write(&name, &prepared)? else {
                return Ok(None);
            };
            let report = served.collection.upsert(&upserts, &models)?;
            let documents = served.collection.len();
            let generation = served.collection.generation();
            state
                .metrics
                .collection(served.collection.name(), documents, generation);
            Ok(Some(UpsertResponse {
                added: report.added,
                updated: report.updated,
                unchanged: report.unchanged,
                compacted: report.compacted,
                documents,
                generation,
            }))
        })
        .await?;
        match written {
            Some(response) => return Ok(ok_json(&response, "")),
            None => served = state.collection(&name)?,
        }
    }
    Err(ApiError::Unavailable(format!(
        "collection {name:?} switched to generations with other models {WRITE_ATTEMPTS} times \
         during this write; nothing was written, retry"
    )))
}

/// Times an upsert embeds and tries to write before it gives up on a collection whose models
/// keep changing under it.
const WRITE_ATTEMPTS: usize = 3;

/// The upserts of `documents` with a vector per space of `served`, and the models that
/// embedded them.
async fn embed_documents(
    state: &AppState,
    served: &Served,
    documents: &[Document],
) -> Result<(Vec<UpsertDocument>, BTreeMap<String, ModelIdentity>), ApiError> {
    let texts: Vec<String> = documents.iter().map(Document::embedding_text).collect();
    let mut vectors: Vec<BTreeMap<String, Vec<f32>>> = vec![BTreeMap::new(); documents.len()];
    let mut models = BTreeMap::new();
    for (space, model) in &served.models {
        let chunk = state.settings.inference.max_batch_texts.max(1);
        let mut start = 0;
        for part in texts.chunks(chunk) {
            let embedded = model
                .embed_in(
                    Lane::Bulk,
                    part.to_vec(),
                    TextKind::Document,
                    model.max_seq_length(),
                )
                .await?;
            for (j, e) in embedded.into_iter().enumerate() {
                vectors[start + j].insert(space.clone(), e.vector);
            }
            start += part.len();
        }
        models.insert(space.clone(), model.identity().clone());
    }
    let upserts = documents
        .iter()
        .cloned()
        .zip(vectors)
        .map(|(document, vectors)| UpsertDocument { document, vectors })
        .collect();
    Ok((upserts, models))
}

/// A stored document.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentResponse {
    /// Document id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Body text.
    pub text: String,
    /// Metadata.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// The generation it was read from.
    pub generation: u64,
}

/// Reads one document as stored.
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/documents/{id}",
    tag = "documents",
    params(
        ("collection" = String, Path, description = "Collection name", example = "products"),
        ("id" = String, Path, description = "Document id"),
    ),
    responses(
        (status = 200, description = "The document", body = DocumentResponse),
        (status = 401, description = "API key required", body = ErrorBody),
        (status = 404, description = "Unknown collection or document", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    )
)]
pub async fn get(
    _access: ReadAccess,
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (collection, id) = path.into_inner();
    let served = state.collection(&collection)?;
    let response = blocking(move || {
        let document = served
            .collection
            .document(&id)?
            .ok_or_else(|| ApiError::no_document(served.collection.name(), &id))?;
        Ok(DocumentResponse {
            id: document.id,
            title: document.title,
            text: document.text,
            metadata: document.metadata,
            generation: served.collection.generation(),
        })
    })
    .await?;
    Ok(ok_json(&response, ""))
}

/// A deleted document.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteResponse {
    /// The id deleted.
    pub deleted: String,
    /// Live documents after the delete.
    pub documents: usize,
}

/// Deletes one document; it never appears in results afterwards.
#[utoipa::path(
    delete,
    path = "/v1/collections/{collection}/documents/{id}",
    tag = "documents",
    params(
        ("collection" = String, Path, description = "Collection name", example = "products"),
        ("id" = String, Path, description = "Document id"),
    ),
    responses(
        (status = 200, description = "Deleted", body = DeleteResponse),
        (status = 401, description = "API key required", body = ErrorBody),
        (status = 404, description = "Unknown collection or document", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    )
)]
pub async fn delete(
    _access: WriteAccess,
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (collection, id) = path.into_inner();
    state.collection(&collection)?;
    let state = state.into_inner();
    let response = blocking(move || {
        let gate = state.write_gate(&collection);
        let _shared = gate.read().unwrap_or_else(|e| e.into_inner());
        let served = state.collection(&collection)?;
        if !served.collection.delete(&id)? {
            return Err(ApiError::no_document(served.collection.name(), &id));
        }
        let documents = served.collection.len();
        state.metrics.collection(
            served.collection.name(),
            documents,
            served.collection.generation(),
        );
        Ok(DeleteResponse {
            deleted: id,
            documents,
        })
    })
    .await?;
    Ok(ok_json(&response, ""))
}
