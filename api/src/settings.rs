//! Server settings. Every field has a documented default; `attune serve` layers a TOML file, then
//! `ATTUNE_*` environment variables, then flags over [`ServeSettings::default`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::SettingsError;

/// Everything `attune serve` needs besides the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSettings {
    /// Address to listen on (default `127.0.0.1:8080`).
    pub bind: String,
    /// actix worker threads (default 2). They only parse, route and await: embedding runs on the
    /// inference threads and searches on the blocking pool.
    pub workers: usize,
    /// When set, writes (document upserts and deletes, feedback) need it as
    /// `Authorization: Bearer KEY` or `x-api-key: KEY` (default none).
    pub api_key: Option<String>,
    /// Require the key for reads too (search, compare, evaluate, embeddings...; default false).
    /// Health, readiness, metrics and the OpenAPI document stay open.
    pub require_key_for_reads: bool,
    /// Largest request body in bytes (default 8 MiB); larger bodies get 413.
    pub max_body_bytes: usize,
    /// Queries are truncated to this many tokens, special tokens included (default 128, and never
    /// more than the model's max_seq_length); responses flag truncation.
    pub max_query_tokens: usize,
    /// Most queries in one evaluate or visibility request (default 5,000).
    pub max_queries: usize,
    /// Most documents in one upsert request (default 1,000).
    pub max_upsert_documents: usize,
    /// Token budget of one `/v1/embeddings` request (default 32,768): the inputs' tokens,
    /// each counted as at most the model's max_seq_length (bounded from the text's bytes before
    /// anything is tokenized). Larger requests get 413; split them.
    pub max_embedding_tokens: usize,
    /// How often the store is checked for new generations, in milliseconds (default 1,000).
    pub reload_interval_ms: u64,
    /// Device for the models: `auto`, `cpu`, `cuda`, `cuda:N` (default `auto`).
    pub device: String,
    /// Model directory per space name, overriding the one each space was built from (default
    /// none). The model's fingerprint must still match the space's.
    pub models: BTreeMap<String, PathBuf>,
    /// Query embedding.
    pub inference: InferenceSettings,
    /// Live A/B tests (`space: "auto"`).
    pub ab: AbSettings,
    /// The feedback log of plain searches, exploration, and drift (`[feedback]`).
    pub feedback: FeedbackSettings,
    /// Where the collections live (`[store]`): the embedded store in the `--store` directory
    /// (default), or a Qdrant deployment (`backend = "qdrant"`, `[store.qdrant] url = ...`).
    pub store: attune_index::StoreSettings,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            workers: 2,
            api_key: None,
            require_key_for_reads: false,
            max_body_bytes: 8 << 20,
            max_query_tokens: 128,
            max_queries: 5_000,
            max_upsert_documents: 1_000,
            max_embedding_tokens: 32_768,
            reload_interval_ms: 1_000,
            device: "auto".into(),
            models: BTreeMap::new(),
            inference: InferenceSettings::default(),
            ab: AbSettings::default(),
            feedback: FeedbackSettings::default(),
            store: attune_index::StoreSettings::default(),
        }
    }
}

/// The inference thread of each model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceSettings {
    /// Embed the requests queued while the previous forward pass ran in one pass (default
    /// true). Off, every request gets a forward pass of its own.
    pub dynamic_batching: bool,
    /// Most texts gathered into one forward pass (default 64).
    pub max_batch_texts: usize,
    /// Most padded tokens in one forward pass (default 8,192).
    pub max_batch_tokens: usize,
    /// Requests waiting for each lane's thread before new ones get 503 (default 1,024).
    pub queue_capacity: usize,
    /// Threads of the bulk lane (evaluations, visibility, upserts, `/v1/embeddings`, and
    /// queries longer than `interactive_query_bytes`), which run at the lowest OS priority so
    /// searches keep the cores (default 1).
    pub bulk_threads: usize,
    /// Search queries of at most this many bytes go to the interactive lane (default 512;
    /// shoppers' queries are far shorter); longer ones to the bulk lane.
    pub interactive_query_bytes: usize,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        Self {
            dynamic_batching: true,
            max_batch_texts: 64,
            max_batch_tokens: 8_192,
            queue_capacity: 1_024,
            bulk_threads: 1,
            interactive_query_bytes: 512,
        }
    }
}

/// Live A/B test settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AbSettings {
    /// The control variant's space (default `base`; `lexical` and `hybrid:<space>` too).
    pub control: String,
    /// The treatment variant's space (default `tuned`; `lexical` and `hybrid:<space>` too).
    pub treatment: String,
    /// How a hybrid variant fuses (`[ab.fusion]`: `method`, `k`, `weight`; defaults rrf, 60,
    /// 0.5). Fixed for the test: `auto` searches take no `fusion` of their own.
    pub fusion: attune_index::Fusion,
    /// Share of users served by the treatment, 0 to 1 (default 0.5).
    pub treatment_share: f64,
    /// Mixed into the user hash. By default each collection's A/B test draws a random salt when
    /// its event log starts and keeps it while the log lives (users keep their variant; nobody
    /// can predict a user's variant from outside). Set one to pin or reshuffle assignments.
    pub salt: Option<String>,
}

impl Default for AbSettings {
    fn default() -> Self {
        Self {
            control: "base".into(),
            treatment: "tuned".into(),
            fusion: attune_index::Fusion::default(),
            treatment_share: 0.5,
            salt: None,
        }
    }
}

/// `[feedback]`: which searches are logged for feedback, how much of that traffic explores, and
/// when a collection's queries have drifted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackSettings {
    /// Collections whose every search is logged and returns a `request_id` for feedback
    /// (`["*"]`: all; default none, when only `space: "auto"` searches are logged). The log
    /// keeps what the A/B log keeps: a hashed user key, the query's first 1,000 bytes, the
    /// result ids as shown.
    pub log: Vec<String>,
    /// Share of logged searches, 0 to 1, whose results at one random adjacent pair of ranks
    /// (`r`, `r + 1`, `r < explore_ranks`) are swapped before the response, so that
    /// `attune feedback export` can measure how much less shoppers look at lower ranks
    /// (default 0: no exploration). Swapped results keep their own scores, so the two are out of
    /// score order. The A/B report leaves these requests out of its figures.
    pub explore_share: f64,
    /// Swaps fall within the top this many ranks (default 10; at least 2).
    pub explore_ranks: usize,
    /// Query drift (`GET /v1/collections/{c}/drift`).
    pub drift: DriftSettings,
}

impl Default for FeedbackSettings {
    fn default() -> Self {
        Self {
            log: Vec::new(),
            explore_share: 0.0,
            explore_ranks: 10,
            drift: DriftSettings::default(),
        }
    }
}

impl FeedbackSettings {
    /// Whether collection `name` logs every search.
    pub fn logs(&self, name: &str) -> bool {
        self.log.iter().any(|c| c == "*" || c == name)
    }
}

pub use crate::drift::DriftSettings;

impl ServeSettings {
    /// Reads a TOML file; unknown keys are errors that name the file.
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| SettingsError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field: &'static str, message: &str| {
            Err(SettingsError::Invalid {
                field,
                message: message.to_string(),
            })
        };
        if self.workers == 0 {
            return invalid("workers", "at least 1");
        }
        if self.store.backend == attune_index::StoreBackend::Qdrant {
            if let Err(e) = self.store.qdrant.validate() {
                return invalid("store.qdrant", &e.to_string());
            }
        }
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes", "at least 1024");
        }
        if self.max_query_tokens < 2 {
            return invalid("max_query_tokens", "at least 2 (the special tokens)");
        }
        if self.max_queries == 0 || self.max_upsert_documents == 0 {
            return invalid("max_queries/max_upsert_documents", "at least 1");
        }
        if self.inference.max_batch_texts == 0 || self.inference.queue_capacity == 0 {
            return invalid(
                "inference",
                "max_batch_texts and queue_capacity are at least 1",
            );
        }
        if self.inference.max_batch_tokens < 2 {
            return invalid("inference.max_batch_tokens", "at least 2");
        }
        if let Err(e) = self.ab.fusion.validate() {
            return invalid("ab.fusion", &e.to_string());
        }
        if !(0.0..=1.0).contains(&self.ab.treatment_share) {
            return invalid("ab.treatment_share", "between 0 and 1");
        }
        if self.ab.control == self.ab.treatment {
            return invalid("ab", "control and treatment are different spaces");
        }
        if self.api_key.as_deref() == Some("") {
            return invalid(
                "api_key",
                "an empty key would accept anyone; leave it unset",
            );
        }
        if self.require_key_for_reads && self.api_key.is_none() {
            return invalid(
                "require_key_for_reads",
                "needs an API key (api_key, --api-key or ATTUNE_API_KEY); without one every \
                 read would stay open",
            );
        }
        if self.max_embedding_tokens == 0 {
            return invalid("max_embedding_tokens", "at least 1");
        }
        if !(0.0..=1.0).contains(&self.feedback.explore_share) {
            return invalid("feedback.explore_share", "between 0 and 1");
        }
        if self.feedback.explore_ranks < 2 {
            return invalid("feedback.explore_ranks", "at least 2 (a pair of ranks)");
        }
        if let Err(message) = self.feedback.drift.validate() {
            return Err(SettingsError::Invalid {
                field: "feedback.drift",
                message,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requiring_a_key_for_reads_without_a_key_is_refused() {
        let open = ServeSettings {
            require_key_for_reads: true,
            ..ServeSettings::default()
        };
        let error = open.validate().unwrap_err().to_string();
        assert!(error.contains("require_key_for_reads"), "{error}");
        let keyed = ServeSettings {
            api_key: Some("k".into()),
            ..open
        };
        assert!(keyed.validate().is_ok());
    }

    #[test]
    fn file_overrides_defaults_and_unknown_keys_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attune.toml");
        std::fs::write(
            &path,
            "bind = \"0.0.0.0:9000\"\n[ab]\ntreatment_share = 0.2\n[models]\ntuned = \"out/tuned\"\n",
        )
        .unwrap();
        let settings = ServeSettings::from_file(&path).unwrap();
        assert_eq!(settings.bind, "0.0.0.0:9000");
        assert_eq!(settings.ab.treatment_share, 0.2);
        assert_eq!(settings.ab.control, "base");
        assert_eq!(settings.models["tuned"], PathBuf::from("out/tuned"));
        assert_eq!(settings.workers, ServeSettings::default().workers);
        settings.validate().unwrap();

        std::fs::write(&path, "bnid = \"x\"\n").unwrap();
        let err = ServeSettings::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("attune.toml") && err.contains("bnid"), "{err}");

        let bad = ServeSettings {
            ab: AbSettings {
                treatment_share: 1.5,
                ..AbSettings::default()
            },
            ..ServeSettings::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("treatment_share"));
    }
}
