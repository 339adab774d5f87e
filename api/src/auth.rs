//! API-key checks as extractors: a handler that takes [`WriteAccess`] (or [`ReadAccess`]) is only
//! called when the request carries the configured key (or none is configured).

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};

use crate::error::ApiError;
use crate::state::AppState;

/// Proof that the request may write (upserts, deletes, feedback).
#[derive(Debug)]
pub struct WriteAccess;

/// Proof that the request may read (search, compare, evaluate, embeddings...).
#[derive(Debug)]
pub struct ReadAccess;

/// The key the request presents: `Authorization: Bearer KEY` or `x-api-key: KEY`.
fn presented_key(req: &HttpRequest) -> Option<&str> {
    let headers = req.headers();
    if let Some(value) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(value.trim());
    }
    headers
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn same_key(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, byte) in b.iter().enumerate() {
        diff |= byte ^ a.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

fn check(req: &HttpRequest, for_reads: bool) -> Result<(), ApiError> {
    let state = req
        .app_data::<web::Data<Arc<AppState>>>()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))?;
    let settings = &state.settings;
    let Some(expected) = settings.api_key.as_deref() else {
        return Ok(());
    };
    if for_reads && !settings.require_key_for_reads {
        return Ok(());
    }
    match presented_key(req) {
        Some(key) if same_key(key, expected) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

impl FromRequest for WriteAccess {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(check(req, false).map(|()| WriteAccess))
    }
}

impl FromRequest for ReadAccess {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(check(req, true).map(|()| ReadAccess))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same_key("secret", "secret"));
        assert!(!same_key("secre", "secret"));
        assert!(!same_key("secretx", "secret"));
        assert!(!same_key("", "secret"));
    }
}
