//! Errors. [`ApiError`] is what a request can fail with; its [`ApiError::status`] is the one place
//! that decides HTTP status codes, and every error body is `{"error": {"code", "message"}}`.
//! [`SettingsError`] and [`StartError`] are failures before the server answers anything.

use std::path::PathBuf;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use attune_index::IndexError;
use serde::Serialize;
use utoipa::ToSchema;

/// A request failed. User errors (4xx) carry a message that says what to change; internal errors
/// (500) are logged in full and answered with a short message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not the JSON of this endpoint's shape (400).
    #[error("{0}")]
    BadRequest(String),
    /// The API key is missing or wrong (401).
    #[error("missing or wrong API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`")]
    Unauthorized,
    /// No such collection, space, document, request or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method (405).
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The body or a list in it is larger than the server accepts (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Well-formed JSON with a value out of range or inconsistent (422); names the field.
    #[error("{0}")]
    Invalid(String),
    /// Not ready, overloaded, or a collection not built yet (503); retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a storage failure (500).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error responses of an endpoint that takes a JSON body and a collection (OpenAPI).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// Malformed JSON.
    #[response(status = 400, description = "Malformed JSON or wrong content type")]
    BadRequest(ErrorBody),
    /// Missing or wrong API key.
    #[response(status = 401, description = "API key required")]
    Unauthorized(ErrorBody),
    /// Unknown collection, space or document.
    #[response(status = 404, description = "Unknown collection, space or document")]
    NotFound(ErrorBody),
    /// Body or list too large.
    #[response(
        status = 413,
        description = "Body too large, or too many items in a list"
    )]
    PayloadTooLarge(ErrorBody),
    /// A field out of range.
    #[response(status = 422, description = "A field is invalid; the message names it")]
    Invalid(ErrorBody),
    /// Not ready or overloaded.
    #[response(status = 503, description = "Not ready or overloaded; retry")]
    Unavailable(ErrorBody),
}

/// Code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `bad_request`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `payload_too_large`, `invalid_request`, `unavailable`, `internal`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// 404: collection `collection` has no document `id`.
    pub fn no_document(collection: &str, id: &str) -> Self {
        Self::NotFound(format!("collection {collection:?} has no document {id:?}"))
    }

    /// The HTTP status of this error: the one place statuses are decided.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Invalid(_) => "invalid_request",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// Shorthand for [`ApiError::Invalid`] naming a field.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Self::Invalid(format!("{field}: {message}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(message) = self {
            tracing::error!("internal error: {message}");
        }
        HttpResponse::build(self.status()).json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
            },
        })
    }
}

impl From<IndexError> for ApiError {
    fn from(err: IndexError) -> Self {
        match &err {
            IndexError::UnknownCollection { .. } | IndexError::UnknownSpace { .. } => {
                Self::NotFound(err.to_string())
            }
            IndexError::NotBuilt { .. }
            | IndexError::InUse { .. }
            | IndexError::Superseded { .. }
            | IndexError::Qdrant { .. } => Self::Unavailable(err.to_string()),
            _ if err.is_user_error() => Self::Invalid(err.to_string()),
            _ => Self::Internal(err.to_string()),
        }
    }
}

impl From<attune_eval::EvalError> for ApiError {
    fn from(err: attune_eval::EvalError) -> Self {
        match err {
            attune_eval::EvalError::InvalidSetting { .. } | attune_eval::EvalError::Empty(_) => {
                Self::Invalid(err.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<attune_app::relevance::RelevanceError> for ApiError {
    fn from(err: attune_app::relevance::RelevanceError) -> Self {
        match err {
            attune_app::relevance::RelevanceError::Index(e) => e.into(),
            attune_app::relevance::RelevanceError::Eval(e) => e.into(),
        }
    }
}

impl From<attune_app::feedback::FeedbackError> for ApiError {
    fn from(err: attune_app::feedback::FeedbackError) -> Self {
        use attune_app::feedback::FeedbackError as E;
        match err {
            E::Store { source, .. } => (*source).into(),
            E::UnknownCollection(_) | E::NoRequests { .. } | E::NoEvents { .. } => {
                Self::NotFound(err.to_string())
            }
            E::Since { .. } | E::MinEvents | E::NothingPassed { .. } => {
                Self::Invalid(err.to_string())
            }
            E::Write(_) | E::Io { .. } => Self::Internal(err.to_string()),
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(err: actix_web::error::BlockingError) -> Self {
        Self::Unavailable(format!("the blocking thread pool is gone: {err}"))
    }
}

/// JSON body errors from actix's extractor, mapped onto [`ApiError`].
pub fn json_error(err: &actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::OverflowKnownLength { .. } | E::Overflow { .. } => {
            ApiError::PayloadTooLarge(format!("request body too large: {err}"))
        }
        E::Deserialize(inner) if inner.is_data() => ApiError::Invalid(inner.to_string()),
        E::ContentType => ApiError::BadRequest("expected Content-Type: application/json".into()),
        _ => ApiError::BadRequest(err.to_string()),
    }
}

/// Settings that cannot be read or are out of range.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The settings file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The settings file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line, column, key).
        message: String,
    },
    /// A setting is out of range.
    #[error("setting {field}: {message}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// The allowed range.
        message: String,
    },
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Settings are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] IndexError),
    /// A model cannot be loaded.
    #[error("model {path}: {message}")]
    Model {
        /// The model directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The address cannot be bound.
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        /// The address.
        bind: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Prometheus metrics cannot be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_errors_map_to_user_or_internal_statuses() {
        let unknown = ApiError::from(IndexError::UnknownSpace {
            collection: "c".into(),
            space: "x".into(),
            available: "base".into(),
        });
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        let filter = ApiError::from(IndexError::InvalidFilter {
            filter: "a".into(),
            message: "m".into(),
        });
        assert_eq!(filter.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let corrupt = ApiError::from(IndexError::CorruptRecord {
            what: "w".into(),
            reason: "r".into(),
        });
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(corrupt.code(), "internal");
    }
}
