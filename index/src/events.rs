//! A collection's live A/B event log: which variant served each request (and what it returned)
//! and the feedback shoppers gave on those results. It lives beside the generations
//! (`collections/NAME/ab-events/`, a sled database of its own), so it survives re-index jobs and
//! is removed with the collection. Only the serving process opens it.

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::keys;
use crate::store::{validate_name, Store};

/// A request answered by an A/B variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedRequest {
    /// Unique id returned to the caller, quoted back in feedback.
    pub request_id: String,
    /// The space (variant) that served it.
    pub variant: String,
    /// The query text.
    pub query: String,
    /// Ids of the results in rank order (rank 1 first).
    pub results: Vec<String>,
    /// When it was served (milliseconds since the Unix epoch).
    pub unix_ms: u64,
}

/// Feedback on one result of a served request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    /// The served request.
    pub request_id: String,
    /// The document acted on.
    pub doc_id: String,
    /// What happened (`click`, `add_to_cart`, `purchase`).
    pub event: String,
    /// 1-based rank of `doc_id` in the served results.
    pub rank: usize,
    /// When it was recorded (milliseconds since the Unix epoch).
    pub unix_ms: u64,
}

/// The event log of one collection.
pub struct EventLog {
    path: std::path::PathBuf,
    db: sled::Db,
    served: sled::Tree,
    feedback: sled::Tree,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating) the A/B event log of collection `name`.
    pub fn open_events(&self, name: &str) -> Result<EventLog> {
        validate_name(name)?;
        let path = self.collection_dir(name).join(keys::EVENTS_DIR);
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(16 << 20)
            .open()
            .map_err(|e| IndexError::storage(&path, e))?;
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| IndexError::storage(&path, e))
        };
        Ok(EventLog {
            served: tree(keys::TREE_SERVED)?,
            feedback: tree(keys::TREE_FEEDBACK)?,
            db,
            path,
        })
    }
}

impl EventLog {
    fn err(&self, e: sled::Error) -> IndexError {
        IndexError::storage(&self.path, e)
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, bytes: &[u8], what: &str) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| IndexError::CorruptRecord {
            what: format!("{} ({what})", self.path.display()),
            reason: e.to_string(),
        })
    }

    /// Records a served request.
    pub fn record_served(&self, served: &ServedRequest) -> Result<()> {
        let body = serde_json::to_vec(served).expect("record serializes");
        self.served
            .insert(served.request_id.as_bytes(), body)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The served request `request_id`, if recorded.
    pub fn served(&self, request_id: &str) -> Result<Option<ServedRequest>> {
        match self
            .served
            .get(request_id.as_bytes())
            .map_err(|e| self.err(e))?
        {
            Some(bytes) => Ok(Some(self.decode(&bytes, "served request")?)),
            None => Ok(None),
        }
    }

    /// Records feedback on a served request, once per (request, document, event): returns
    /// false when that event was recorded before (nothing is written). Durable when it
    /// returns.
    pub fn record_feedback(&self, feedback: &FeedbackRecord) -> Result<bool> {
        let mut key = feedback.request_id.as_bytes().to_vec();
        for part in [&feedback.doc_id, &feedback.event] {
            key.push(0);
            key.extend_from_slice(part.as_bytes());
        }
        let body = serde_json::to_vec(feedback).expect("record serializes");
        let new = self
            .feedback
            .compare_and_swap(key, None as Option<&[u8]>, Some(body))
            .map_err(|e| self.err(e))?
            .is_ok();
        self.flush()?;
        Ok(new)
    }

    /// Every served request, in request-id order.
    pub fn all_served(&self) -> Result<Vec<ServedRequest>> {
        self.served
            .iter()
            .map(|entry| {
                let (_, value) = entry.map_err(|e| self.err(e))?;
                self.decode(&value, "served request")
            })
            .collect()
    }

    /// Every feedback record, grouped by request id.
    pub fn all_feedback(&self) -> Result<Vec<FeedbackRecord>> {
        self.feedback
            .iter()
            .map(|entry| {
                let (_, value) = entry.map_err(|e| self.err(e))?;
                self.decode(&value, "feedback")
            })
            .collect()
    }

    /// Writes buffered records to disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_persist_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let served = ServedRequest {
            request_id: "r1".into(),
            variant: "tuned".into(),
            query: "running shoes".into(),
            results: vec!["a".into(), "b".into()],
            unix_ms: 5,
        };
        {
            let log = store.open_events("shop").unwrap();
            log.record_served(&served).unwrap();
            let recorded: Vec<bool> = ["click", "purchase", "click"]
                .iter()
                .map(|event| {
                    log.record_feedback(&FeedbackRecord {
                        request_id: "r1".into(),
                        doc_id: "b".into(),
                        event: event.to_string(),
                        rank: 2,
                        unix_ms: 6,
                    })
                    .unwrap()
                })
                .collect();
            // The repeated click is not recorded again.
            assert_eq!(recorded, [true, true, false]);
        }
        let log = store.open_events("shop").unwrap();
        assert_eq!(log.served("r1").unwrap(), Some(served));
        assert_eq!(log.served("r2").unwrap(), None);
        let feedback = log.all_feedback().unwrap();
        assert_eq!(feedback.len(), 2);
        assert_eq!(feedback[0].event, "click");
        assert_eq!(feedback[1].event, "purchase");
        assert!(store.open_events("../x").is_err());
    }
}
