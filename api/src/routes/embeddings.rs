//! OpenAI-compatible embeddings: `POST /v1/embeddings` and `GET /v1/models`, so OpenAI clients
//! work unchanged. `model` names a space (`tuned`), a collection's space (`shop/tuned`), or a
//! model by its label (`all-MiniLM-L6-v2-326b6d9d`), directory name or fingerprint.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use attune_model::TextKind;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_len, ok_json, State};
use crate::auth::ReadAccess;
use crate::error::{ApiError, BodyErrors, ErrorBody};
use crate::inference::InferenceQueue;
use crate::inference::Lane;
use crate::state::AppState;

/// Registers the OpenAI-compatible routes.
pub fn config_embeddings(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/embeddings")
            .route(web::post().to(embeddings))
            .default_service(web::to(super::system::method_not_allowed)),
    )
    .service(
        web::resource("/v1/models")
            .route(web::get().to(models))
            .default_service(web::to(super::system::method_not_allowed)),
    );
}

/// One text or several. OpenAI's token-id forms (an array of integers, or of arrays of
/// integers) are recognised and refused with a message: attune tokenizes text with each model's
/// own tokenizer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
    /// Token ids of one text (refused).
    Tokens(Vec<i64>),
    /// Token ids of several texts (refused).
    TokenLists(Vec<Vec<i64>>),
}

/// How vectors are returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON numbers.
    #[default]
    Float,
    /// Base64 of little-endian f32 bytes.
    Base64,
}

/// An OpenAI embeddings request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingsBody {
    /// Text or texts to embed (no prefix is added, as `attune embed`).
    pub input: EmbeddingInput,
    /// A space name, `collection/space`, or a model label or fingerprint (see `GET /v1/models`).
    pub model: String,
    /// `float` (default) or `base64`.
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    /// Must equal the model's dimension when given (these models do not shorten vectors).
    #[schema(minimum = 1)]
    pub dimensions: Option<usize>,
    /// Ignored (accepted for compatibility).
    pub user: Option<String>,
}

/// A vector as floats or base64.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Vector {
    /// Floats.
    Float(Vec<f32>),
    /// Base64 of little-endian f32.
    Base64(String),
}

/// One embedding.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: &'static str,
    /// Position in the input.
    pub index: usize,
    /// The vector.
    pub embedding: Vector,
}

/// Token counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Tokens embedded, special tokens included.
    pub prompt_tokens: usize,
    /// Same as `prompt_tokens`.
    pub total_tokens: usize,
}

/// An OpenAI embeddings response.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: &'static str,
    /// One per input text, in order.
    pub data: Vec<EmbeddingData>,
    /// The model as asked.
    pub model: String,
    /// Token counts.
    pub usage: Usage,
}

/// Refuses (413) a request whose inputs could hold more than `budget` tokens: each text counts
/// as at most the model's max_seq_length, and at most its bytes plus the two special tokens (a
/// token covers at least one byte), so nothing is tokenized to decide.
fn check_token_budget(
    texts: &[String],
    model: &InferenceQueue,
    budget: usize,
) -> Result<(), ApiError> {
    let bound: usize = texts
        .iter()
        .map(|t| (t.len() + 2).min(model.max_seq_length()))
        .sum();
    if bound > budget {
        return Err(ApiError::PayloadTooLarge(format!(
            "input: up to {bound} tokens ({} texts of up to {} tokens each), over the budget of \
             {budget} tokens per request (max_embedding_tokens); split the request",
            texts.len(),
            model.max_seq_length()
        )));
    }
    Ok(())
}

/// The model `name` refers to.
fn resolve_model(state: &AppState, name: &str) -> Result<Arc<InferenceQueue>, ApiError> {
    if let Some((collection, space)) = name.split_once('/') {
        let served = state.collection(collection)?;
        return Ok(served.model(space)?.clone());
    }
    let mut found: Vec<Arc<InferenceQueue>> = Vec::new();
    for served in state.all() {
        if let Some(model) = served.models.get(name) {
            if !found
                .iter()
                .any(|m| m.identity().same_model(model.identity()))
            {
                found.push(model.clone());
            }
        }
    }
    if found.is_empty() {
        if let Some(model) = state.models().into_iter().find(|m| {
            m.label() == name
                || m.identity().fingerprint == name
                || Path::new(&m.identity().source).file_name() == Some(OsStr::new(name))
        }) {
            return Ok(model);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ApiError::NotFound(format!(
            "no model {name:?}; GET /v1/models lists them ({})",
            model_ids(state).join(", ")
        ))),
        _ => Err(ApiError::invalid(
            "model",
            format!("space {name:?} has different models in different collections; use collection/space"),
        )),
    }
}

fn model_ids(state: &AppState) -> Vec<String> {
    let mut ids = Vec::new();
    for served in state.all() {
        for space in served.models.keys() {
            ids.push(format!("{}/{space}", served.collection.name()));
            if !ids.contains(space) {
                ids.push(space.clone());
            }
        }
    }
    for model in state.models() {
        ids.push(model.label().to_string());
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Embeds texts (OpenAI-compatible).
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "embeddings",
    request_body = EmbeddingsBody,
    responses(
        (status = 200, description = "Embeddings", body = EmbeddingsResponse),
        BodyErrors,
    )
)]
pub async fn embeddings(
    _access: ReadAccess,
    state: State,
    body: web::Json<EmbeddingsBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let texts = match body.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
        EmbeddingInput::Tokens(_) | EmbeddingInput::TokenLists(_) => {
            return Err(ApiError::invalid(
                "input",
                "token-id arrays are not accepted: each attune model has its own tokenizer; \
                 send the text (a string or an array of strings)",
            ))
        }
    };
    if texts.is_empty() {
        return Err(ApiError::invalid("input", "give at least one text"));
    }
    check_len("input", texts.len(), state.settings.max_queries)?;
    let model = resolve_model(&state, &body.model)?;
    check_token_budget(&texts, &model, state.settings.max_embedding_tokens)?;
    if let Some(dimensions) = body.dimensions {
        if dimensions != model.identity().dim {
            return Err(ApiError::invalid(
                "dimensions",
                format!(
                    "this model gives {} dimensions and cannot shorten them, got {dimensions}",
                    model.identity().dim
                ),
            ));
        }
    }
    let chunk = state.settings.inference.max_batch_texts.max(1);
    let mut data = Vec::with_capacity(texts.len());
    let mut tokens = 0;
    let mut truncated = 0;
    for part in texts.chunks(chunk) {
        for embedded in model
            .embed_in(
                Lane::Bulk,
                part.to_vec(),
                TextKind::Plain,
                model.max_seq_length(),
            )
            .await?
        {
            tokens += embedded.tokens;
            truncated += usize::from(embedded.truncated);
            let embedding = match body.encoding_format {
                EncodingFormat::Float => Vector::Float(embedded.vector),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = embedded
                        .vector
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect();
                    Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            data.push(EmbeddingData {
                object: "embedding",
                index: data.len(),
                embedding,
            });
        }
    }
    let response = EmbeddingsResponse {
        object: "list",
        data,
        model: body.model.clone(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    // Labelled with the model's own label: bounded by the models loaded, whatever the spelling.
    let mut http = ok_json(&response, model.label());
    http.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("x-attune-truncated"),
        actix_web::http::header::HeaderValue::from(truncated),
    );
    Ok(http)
}

/// A model entry (OpenAI shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    /// Name to pass as `model`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Always 0.
    pub created: u64,
    /// Always `attune`.
    pub owned_by: &'static str,
}

/// The model list (OpenAI shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// Models.
    pub data: Vec<ModelEntry>,
}

/// Lists the names `model` accepts.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "embeddings",
    responses(
        (status = 200, description = "Models", body = ModelList),
        (status = 401, description = "API key required", body = ErrorBody),
    )
)]
pub async fn models(_access: ReadAccess, state: State) -> Result<HttpResponse, ApiError> {
    let data = model_ids(&state)
        .into_iter()
        .map(|id| ModelEntry {
            id,
            object: "model",
            created: 0,
            owned_by: "attune",
        })
        .collect();
    Ok(ok_json(
        &ModelList {
            object: "list",
            data,
        },
        "",
    ))
}
