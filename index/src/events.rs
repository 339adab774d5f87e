//! A collection's live A/B event log: which variant served each request (and what it returned)
//! and the feedback shoppers gave on those results. It lives beside the generations
//! (`collections/NAME/ab-events/`, a sled database of its own), so it survives re-index jobs and
//! is removed with the collection. Only the serving process opens it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{IndexError, Result};
use crate::keys;
use crate::store::{validate_name, Store};

/// Bytes of a query's text kept in the log (cut at a character boundary); enough to train on,
/// bounded whatever the query.
pub const LOGGED_QUERY_BYTES: usize = 1_000;

/// A request answered by an A/B variant. Records from before the hashed user and the bounded
/// query have empty `user_hash` and `query_sha256`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedRequest {
    /// Unique id returned to the caller, quoted back in feedback.
    pub request_id: String,
    /// The space (variant) that served it.
    pub variant: String,
    /// SHA-256 (hex, first 16 bytes) of the test's salt and the user key: the same user gives
    /// the same hash within a test, and the key itself is not stored.
    #[serde(default)]
    pub user_hash: String,
    /// The query text, its first [`LOGGED_QUERY_BYTES`] bytes at most.
    pub query: String,
    /// SHA-256 (hex) of the whole query text.
    #[serde(default)]
    pub query_sha256: String,
    /// Length of the whole query text in bytes.
    #[serde(default)]
    pub query_bytes: usize,
    /// Ids of the results in rank order (rank 1 first).
    pub results: Vec<String>,
    /// When it was served (milliseconds since the Unix epoch).
    pub unix_ms: u64,
    /// True when the live A/B test assigned the variant (`space: "auto"`); false for searches
    /// logged only for feedback. Records from before this field were all A/B requests.
    #[serde(default = "served_by_ab_test")]
    pub ab: bool,
    /// Exploration: the 1-based rank `r` whose result was swapped with the one at `r + 1`
    /// before the response (`results` lists them as shown). Such requests estimate position
    /// bias; the A/B report keeps them apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapped: Option<usize>,
}

fn served_by_ab_test() -> bool {
    true
}

impl ServedRequest {
    /// The record of a request: the user key hashed with the test's `salt`, the query cut to
    /// [`LOGGED_QUERY_BYTES`] with a hash of the whole.
    pub fn new(
        request_id: String,
        variant: String,
        salt: &str,
        user: &str,
        query: &str,
        results: Vec<String>,
        unix_ms: u64,
    ) -> Self {
        let mut cut = query.len().min(LOGGED_QUERY_BYTES);
        while !query.is_char_boundary(cut) {
            cut -= 1;
        }
        let user_hash = Sha256::new()
            .chain_update(salt.as_bytes())
            .chain_update([0u8])
            .chain_update(user.as_bytes())
            .finalize();
        Self {
            request_id,
            variant,
            user_hash: crate::store::hex(&user_hash[..16]),
            query: query[..cut].to_string(),
            query_sha256: crate::store::hex(&Sha256::digest(query.as_bytes())),
            query_bytes: query.len(),
            results,
            unix_ms,
            ab: true,
            swapped: None,
        }
    }
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

/// The salt of logs created before salts were drawn at random.
pub const LEGACY_SALT: &str = "attune-ab";

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
    /// Whether collection `name` has an event log (a search was ever logged for it); reading
    /// jobs check this instead of opening, which would create one.
    pub fn has_events(&self, name: &str) -> bool {
        validate_name(name).is_ok() && self.collection_dir(name).join(keys::EVENTS_DIR).is_dir()
    }

    /// Opens (creating) the A/B event log of collection `name`.
    pub fn open_events(&self, name: &str) -> Result<EventLog> {
        validate_name(name)?;
        let path = self.collection_dir(name).join(keys::EVENTS_DIR);
        let db = crate::open_sled(&path, 16 << 20)?;
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

    /// The salt of this collection's A/B test: drawn at random when the log is created and kept
    /// for as long as the log lives. A log from before salts were stored, holding requests
    /// already, keeps the old public default (`attune-ab`) so its users keep their variants.
    pub fn salt(&self) -> Result<String> {
        if let Some(salt) = self.db.get(keys::KEY_SALT).map_err(|e| self.err(e))? {
            return Ok(String::from_utf8_lossy(&salt).into_owned());
        }
        let salt = if self.served.is_empty() {
            let bytes: [u8; 16] = rand::random();
            crate::store::hex(&bytes)
        } else {
            LEGACY_SALT.to_string()
        };
        // Another thread may have drawn one meanwhile: the first stored wins.
        let _ = self
            .db
            .compare_and_swap(keys::KEY_SALT, None as Option<&[u8]>, Some(salt.as_bytes()))
            .map_err(|e| self.err(e))?;
        self.flush()?;
        let stored = self.db.get(keys::KEY_SALT).map_err(|e| self.err(e))?;
        Ok(String::from_utf8_lossy(&stored.expect("salt stored")).into_owned())
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
        let served = ServedRequest::new(
            "r1".into(),
            "tuned".into(),
            "salt",
            "user-7",
            "running shoes",
            vec!["a".into(), "b".into()],
            5,
        );
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

    #[test]
    fn each_log_draws_its_own_salt_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let salt = store.open_events("shop").unwrap().salt().unwrap();
        assert_eq!(salt.len(), 32);
        assert_ne!(salt, LEGACY_SALT);
        assert_eq!(store.open_events("shop").unwrap().salt().unwrap(), salt);
        assert_ne!(store.open_events("other").unwrap().salt().unwrap(), salt);
    }

    #[test]
    fn the_log_keeps_a_bounded_query_and_no_user_key() {
        let query = format!("{}é tail", "x".repeat(LOGGED_QUERY_BYTES - 1));
        let served = ServedRequest::new(
            "r".into(),
            "base".into(),
            "s",
            "alice@example.com",
            &query,
            Vec::new(),
            0,
        );
        // "é" straddles the limit: the cut falls before it.
        assert_eq!(served.query.len(), LOGGED_QUERY_BYTES - 1);
        assert_eq!(served.query_bytes, query.len());
        assert_eq!(served.query_sha256.len(), 64);
        let json = serde_json::to_string(&served).unwrap();
        assert!(!json.contains("alice"), "{json}");
        let again = ServedRequest::new(
            "r".into(),
            "base".into(),
            "s",
            "alice@example.com",
            "q",
            Vec::new(),
            0,
        );
        assert_eq!(again.user_hash, served.user_hash);
    }
}
