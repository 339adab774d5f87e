//! A collection's A/B log in Qdrant (`PREFIX~NAME~events`, payload only), so every attune
//! server in front of one Qdrant records into, and reports from, the same log. Every write
//! waits until Qdrant has applied it (`wait=true`): a recorded event is acknowledged only once
//! it is durable there.

use serde_json::{json, Value};

use super::client::Client;
use super::payload;
use super::QdrantStore;
use crate::error::{IndexError, Result};
use crate::events::{FeedbackRecord, ServedRequest};
use crate::vector_store::AbEventLog;

/// The A/B log of one collection.
#[derive(Debug)]
pub(crate) struct QdrantEvents {
    client: Client,
    collection: String,
    salt: String,
}

impl QdrantEvents {
    /// Opens (creating) the log of `name`; the first opener draws the salt.
    pub(crate) fn open(store: &QdrantStore, name: &str) -> Result<Self> {
        let client = store.client().clone();
        let collection = store.names().events(name);
        super::ensure_payload_collection(&client, &collection, &[("kind", "keyword")])?;
        let mut log = Self {
            client,
            collection,
            salt: String::new(),
        };
        let salt = crate::store::hex(&rand::random::<[u8; 16]>());
        log.salt = log
            .insert_once(
                &payload::point_id("salt"),
                json!({"kind": "salt", "salt": salt}),
            )?
            .1["salt"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(log)
    }

    /// Inserts a point unless one with `id` exists; returns whether it was inserted and the
    /// payload stored.
    fn insert_once(&self, id: &str, payload: Value) -> Result<(bool, Value)> {
        let token = crate::store::hex(&rand::random::<[u8; 16]>());
        let mut payload = payload;
        payload["token"] = json!(token);
        self.client.expect(
            super::client::Method::Put,
            &format!(
                "/collections/{}/points?wait=true&ordering=medium",
                self.collection
            ),
            Some(
                &json!({"points": [{"id": id, "vector": {}, "payload": payload}],
                         "update_mode": "insert_only"}),
            ),
        )?;
        let stored =
            payload::retrieve(&self.client, &self.collection, &[id.to_string()], true, &[])?;
        let stored = stored
            .into_iter()
            .next()
            .map(|p| p["payload"].clone())
            .ok_or_else(|| {
                self.client.error(
                    &self.collection,
                    format!("point {id} vanished after its insert"),
                )
            })?;
        Ok((stored["token"] == json!(token), stored))
    }

    fn all<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>> {
        let filter = json!({"must": [{"key": "kind", "match": {"value": kind}}]});
        payload::scroll(&self.client, &self.collection, &filter, false, None)?
            .iter()
            .map(|p| self.decode(&p["payload"]["record"]))
            .collect()
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, record: &Value) -> Result<T> {
        serde_json::from_value(record.clone()).map_err(|e| IndexError::CorruptRecord {
            what: format!("A/B log {}", self.collection),
            reason: e.to_string(),
        })
    }
}

impl AbEventLog for QdrantEvents {
    fn salt(&self) -> Result<String> {
        Ok(self.salt.clone())
    }

    fn record_served(&self, served: &ServedRequest) -> Result<()> {
        let id = payload::point_id(&format!("served/{}", served.request_id));
        let point = json!({"id": id, "vector": {},
                           "payload": {"kind": "served", "record": served}});
        payload::upsert(&self.client, &self.collection, &[point])
    }

    fn served(&self, request_id: &str) -> Result<Option<ServedRequest>> {
        let id = payload::point_id(&format!("served/{request_id}"));
        payload::retrieve(&self.client, &self.collection, &[id], true, &[])?
            .first()
            .map(|p| self.decode(&p["payload"]["record"]))
            .transpose()
    }

    fn record_feedback(&self, feedback: &FeedbackRecord) -> Result<bool> {
        let key = format!(
            "feedback/{}/{}/{}",
            feedback.request_id, feedback.doc_id, feedback.event
        );
        let payload = json!({"kind": "feedback", "record": feedback});
        Ok(self.insert_once(&payload::point_id(&key), payload)?.0)
    }

    fn all_served(&self) -> Result<Vec<ServedRequest>> {
        self.all("served")
    }

    fn all_feedback(&self) -> Result<Vec<FeedbackRecord>> {
        let mut all: Vec<FeedbackRecord> = self.all("feedback")?;
        all.sort_by_key(|f| f.unix_ms);
        Ok(all)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
