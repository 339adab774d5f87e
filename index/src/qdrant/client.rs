//! Qdrant's REST API through `ureq` (blocking, which is what the vector-store seam is): one
//! agent with a timeout per request, retries with exponential backoff on transport errors and
//! on answers that say "try again" (408, 429, 5xx), and errors that name Qdrant's URL.
//!
//! Every request attune sends is safe to repeat: points have fixed ids, journal slots are
//! claimed with `insert_only` and read back, alias changes replace whole.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{IndexError, Result};

/// How attune reaches a Qdrant deployment, and how it lays collections out there. Read from
/// `[store]` of `attune.toml` and `pipeline.toml` and from `--qdrant-url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QdrantSettings {
    /// Base URL of Qdrant's REST API: one node, a load balancer in front of a cluster, or
    /// several nodes separated by commas (a request that gets no answer from one goes to the
    /// next at once, and later requests stay there). Default `http://127.0.0.1:6333`.
    pub url: String,
    /// Sent as `api-key` when set. Default none.
    pub api_key: Option<String>,
    /// Prefix of every Qdrant collection and alias attune creates, so several attune
    /// deployments can share one Qdrant. Default `attune`.
    pub prefix: String,
    /// Time allowed for one request, milliseconds. Default 10,000.
    pub timeout_ms: u64,
    /// Attempts after the first for a request that failed in transport or was answered 408,
    /// 429 or 5xx. Default 4.
    pub retries: u32,
    /// Wait before the first retry, milliseconds; doubled for each next one. Default 100
    /// (with 4 retries a request gives up after about 1.5 s of waiting).
    pub backoff_ms: u64,
    /// Shards of each generation's collection. Default 1.
    pub shard_number: u32,
    /// Copies of each shard. Default 1 (2 or more to survive the loss of a node).
    pub replication_factor: u32,
    /// Copies that must acknowledge a write before Qdrant answers. Default 1.
    pub write_consistency_factor: u32,
}

impl Default for QdrantSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:6333".into(),
            api_key: None,
            prefix: "attune".into(),
            timeout_ms: 10_000,
            retries: 4,
            backoff_ms: 100,
            shard_number: 1,
            replication_factor: 1,
            write_consistency_factor: 1,
        }
    }
}

impl QdrantSettings {
    /// Settings for the deployment at `url`, the rest default.
    pub fn at(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            ..Self::default()
        }
    }

    /// The nodes of [`QdrantSettings::url`], in order.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(IndexError::InvalidSetting(m));
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return bad(format!(
                "qdrant url {:?} must start with http:// or https://",
                self.url
            ));
        }
        if self.prefix.is_empty() || !self.prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
            return bad(format!(
                "qdrant prefix {:?} must be letters and digits",
                self.prefix
            ));
        }
        if self.timeout_ms == 0 || self.shard_number == 0 || self.replication_factor == 0 {
            return bad(
                "qdrant timeout_ms, shard_number and replication_factor are at least 1".into(),
            );
        }
        if self.write_consistency_factor == 0
            || self.write_consistency_factor > self.replication_factor
        {
            return bad(format!(
                "qdrant write_consistency_factor must be between 1 and replication_factor ({})",
                self.replication_factor
            ));
        }
        Ok(())
    }
}

/// HTTP methods attune uses.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// A connection to one Qdrant deployment.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    agent: ureq::Agent,
    settings: QdrantSettings,
    urls: Vec<String>,
    /// The node requests go to (an index into `urls`), moved on when one does not answer.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Client {
    pub(crate) fn new(settings: QdrantSettings) -> Result<Self> {
        settings.validate()?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(settings.timeout_ms)))
            .build()
            .into();
        let urls = settings.urls();
        if urls.is_empty() {
            return Err(IndexError::InvalidSetting("qdrant url is empty".into()));
        }
        Ok(Self {
            agent,
            settings,
            urls,
            current: Default::default(),
        })
    }

    pub(crate) fn settings(&self) -> &QdrantSettings {
        &self.settings
    }

    /// The error of a request that failed, naming Qdrant and the request.
    pub(crate) fn error(&self, what: &str, message: impl std::fmt::Display) -> IndexError {
        IndexError::Qdrant {
            url: self.settings.url.clone(),
            message: format!("{what}: {message}"),
        }
    }

    /// Sends a request and returns Qdrant's `result`; `None` when Qdrant answers 404 (no such
    /// collection or point). Retries as the settings say.
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>> {
        let what = format!("{} {path}", method.name());
        let mut wait = Duration::from_millis(self.settings.backoff_ms);
        let mut attempt = 0;
        // Nodes tried since the last wait: a node that does not answer hands over to the next
        // without waiting, once per node.
        let mut unanswered = 0;
        loop {
            let failure = match self.send(method, path, body) {
                Ok((200, value)) => {
                    return Ok(Some(value.get("result").cloned().unwrap_or(Value::Null)))
                }
                Ok((404, _)) => return Ok(None),
                Ok((status, value)) if retryable(status) => {
                    format!("HTTP {status}: {}", message_of(&value))
                }
                Ok((status, value)) => {
                    return Err(self.error(&what, format!("HTTP {status}: {}", message_of(&value))))
                }
                Err(e) => {
                    unanswered += 1;
                    let node = self.node();
                    if unanswered < self.urls.len() {
                        self.current
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(
                            "qdrant {node} did not answer {what} ({e}); trying the next node"
                        );
                        continue;
                    }
                    self.current
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    format!("{e} from {node} (is Qdrant running there?)")
                }
            };
            unanswered = 0;
            if attempt >= self.settings.retries {
                return Err(self.error(
                    &what,
                    format!("{failure}; gave up after {} attempts", attempt + 1),
                ));
            }
            tracing::debug!("qdrant {what}: {failure}; retrying in {wait:?}");
            std::thread::sleep(wait);
            wait *= 2;
            attempt += 1;
        }
    }

    /// [`Client::call`] for requests whose target must exist.
    pub(crate) fn expect(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        self.call(method, path, body)?
            .ok_or_else(|| self.error(&format!("{} {path}", method.name()), "not found"))
    }

    /// The node requests go to now.
    fn node(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.urls.len();
        &self.urls[i]
    }

    fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> std::result::Result<(u16, Value), ureq::Error> {
        let url = format!("{}{path}", self.node());
        let key = self.settings.api_key.as_deref();
        let mut response = match method {
            Method::Get | Method::Delete => {
                let mut request = match method {
                    Method::Get => self.agent.get(&url),
                    _ => self.agent.delete(&url),
                };
                if let Some(key) = key {
                    request = request.header("api-key", key);
                }
                request.call()?
            }
            Method::Post | Method::Put | Method::Patch => {
                let mut request = match method {
                    Method::Post => self.agent.post(&url),
                    Method::Put => self.agent.put(&url),
                    _ => self.agent.patch(&url),
                };
                if let Some(key) = key {
                    request = request.header("api-key", key);
                }
                request.send_json(body.unwrap_or(&Value::Null))?
            }
        };
        let status = response.status().as_u16();
        let value = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_json::<Value>()
            .unwrap_or(Value::Null);
        Ok((status, value))
    }
}

fn retryable(status: u16) -> bool {
    matches!(status, 408 | 429) || status >= 500
}

fn message_of(value: &Value) -> String {
    value
        .pointer("/status/error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string())
}
