//! How attune's records look in Qdrant: point ids, documents as payloads, filters as Qdrant
//! filters, and the point requests every part of the Qdrant store sends. The one module that
//! reads and writes Qdrant payloads.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::client::{Client, Method};
use crate::corpus::Document;
use crate::error::{IndexError, Result};
use crate::filter::Filter;
use crate::store::StoredDocument;

/// Points fetched per scroll request.
const SCROLL_PAGE: usize = 1_000;

/// The Qdrant point id (a UUID) of the record keyed `key` (a document id, `collection/NAME`).
pub(crate) fn point_id(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let h: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The payload key of metadata field `field`.
pub(crate) fn metadata_key(field: &str) -> Result<String> {
    if field.contains('"') || field.contains('\\') {
        return Err(IndexError::InvalidFilter {
            filter: field.to_string(),
            message: "metadata field names with '\"' or '\\' cannot be filtered on Qdrant".into(),
        });
    }
    Ok(format!("m.\"{field}\""))
}

/// The payload of a live document written by journal record `seq`.
pub(crate) fn document_payload(document: &Document, hash: &str, seq: u64) -> Value {
    json!({"id": document.id, "title": document.title, "text": document.text,
           "m": document.metadata, "hash": hash, "seq": seq, "live": true})
}

/// The payload of a tombstone: document `id` deleted by journal record `seq`.
pub(crate) fn tombstone_payload(id: &str, seq: u64) -> Value {
    json!({"id": id, "seq": seq, "live": false})
}

/// The stored document of a point's payload; `None` for a tombstone.
pub(crate) fn stored_document(payload: &Value) -> Option<StoredDocument> {
    if payload["live"] != Value::Bool(true) {
        return None;
    }
    let text = |key: &str| payload[key].as_str().unwrap_or_default().to_string();
    Some(StoredDocument {
        id: text("id"),
        title: text("title"),
        text: text("text"),
        metadata: payload["m"].as_object().cloned().unwrap_or_default(),
        hash: text("hash"),
    })
}

/// Metadata of a point's payload.
pub(crate) fn metadata(payload: &Value) -> Map<String, Value> {
    payload["m"].as_object().cloned().unwrap_or_default()
}

/// `filter` as a Qdrant filter (every clause must hold; a clause holds when the field equals
/// one of its values; numbers compare by value, so `1` matches `1.0`), with `extra` conditions.
pub(crate) fn filter_json(filter: &Filter, extra: Vec<Value>) -> Result<Value> {
    filter.validate()?;
    let mut must = extra;
    for clause in &filter.clauses {
        let key = metadata_key(&clause.field)?;
        let should: Vec<Value> = clause
            .values
            .iter()
            .map(|value| match value {
                Value::Number(n) => {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    json!({"key": key, "range": {"gte": f, "lte": f}})
                }
                other => json!({"key": key, "match": {"value": other}}),
            })
            .collect();
        must.push(json!({"should": should}));
    }
    Ok(json!({"must": must}))
}

/// The condition "is a live document" (not a tombstone).
pub(crate) fn live() -> Value {
    json!({"key": "live", "match": {"value": true}})
}

/// Points `ids` of `collection` (those that exist), with their payloads when asked and the
/// named vectors `vectors`.
pub(crate) fn retrieve<Id: serde::Serialize>(
    client: &Client,
    collection: &str,
    ids: &[Id],
    with_payload: bool,
    vectors: &[&str],
) -> Result<Vec<Value>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let with_vector = if vectors.is_empty() {
        json!(false)
    } else {
        json!(vectors)
    };
    let body = json!({"ids": ids, "with_payload": with_payload, "with_vector": with_vector});
    let result = client.expect(
        Method::Post,
        &format!("/collections/{collection}/points"),
        Some(&body),
    )?;
    Ok(result.as_array().cloned().unwrap_or_default())
}

/// Upserts `points` and waits until they are applied.
pub(crate) fn upsert(client: &Client, collection: &str, points: &[Value]) -> Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    client.expect(
        Method::Put,
        &format!("/collections/{collection}/points?wait=true"),
        Some(&json!({"points": points})),
    )?;
    Ok(())
}

/// Writes each point only where the stored point has a smaller `seq` (or is absent): the
/// points' own `seq` payloads order them. Waits until applied.
pub(crate) fn upsert_newer(
    client: &Client,
    collection: &str,
    points: &[(u64, Value)],
) -> Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    let operations: Vec<Value> = points
        .iter()
        .map(|(seq, point)| {
            json!({"upsert": {"points": [point],
                   "update_filter": {"must": [{"key": "seq", "range": {"lt": seq}}]}}})
        })
        .collect();
    client.expect(
        Method::Post,
        &format!("/collections/{collection}/points/batch?wait=true&ordering=medium"),
        Some(&json!({"operations": operations})),
    )?;
    Ok(())
}

/// Deletes points `ids` and waits.
pub(crate) fn delete(client: &Client, collection: &str, ids: &[String]) -> Result<()> {
    client.expect(
        Method::Post,
        &format!("/collections/{collection}/points/delete?wait=true"),
        Some(&json!({"points": ids})),
    )?;
    Ok(())
}

/// Every point of `collection` that passes `filter`, in pages, with payloads (and the named
/// vectors `vectors` when given), ordered by the integer field `order_by` when given.
pub(crate) fn scroll(
    client: &Client,
    collection: &str,
    filter: &Value,
    with_vectors: bool,
    order_by: Option<&str>,
) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut offset = Value::Null;
    loop {
        let mut body = json!({"filter": filter, "limit": SCROLL_PAGE, "with_payload": true,
                              "with_vector": with_vectors});
        match order_by {
            // Ordered scrolls page by the order value (Qdrant gives no offset for them).
            Some(field) => {
                body["order_by"] = json!({"key": field, "direction": "asc"});
                if let Some(after) = out
                    .last()
                    .and_then(|p: &Value| p["payload"][field].as_u64())
                {
                    body["filter"] =
                        json!({"must": [filter, {"key": field, "range": {"gt": after}}]});
                }
            }
            None if !offset.is_null() => body["offset"] = offset.clone(),
            None => {}
        }
        let page = client.expect(
            Method::Post,
            &format!("/collections/{collection}/points/scroll"),
            Some(&body),
        )?;
        let points = page["points"].as_array().cloned().unwrap_or_default();
        let full = points.len() == SCROLL_PAGE;
        out.extend(points);
        offset = page["next_page_offset"].clone();
        let more = match order_by {
            Some(_) => full,
            None => !offset.is_null(),
        };
        if !more {
            return Ok(out);
        }
    }
}

/// Live points of `collection` that pass `filter`, counted exactly.
pub(crate) fn count(client: &Client, collection: &str, filter: &Value) -> Result<usize> {
    let result = client.expect(
        Method::Post,
        &format!("/collections/{collection}/points/count"),
        Some(&json!({"filter": filter, "exact": true})),
    )?;
    Ok(result["count"].as_u64().unwrap_or(0) as usize)
}
