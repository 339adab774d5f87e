//! Learning from shoppers: training pairs from a collection's feedback log (`attune feedback
//! export`, the pipeline's `[data] feedback`).
//!
//! What a pair means:
//! - **Positive**: a document that at least `min_events` distinct shoppers engaged with after
//!   typing the query (a shopper is a `(user, query)` session: the same user repeating a query
//!   counts once, at their best event). Its grade is the best event: purchase 3, add-to-cart 2,
//!   click 1.
//! - **Negatives**: results shown *above* an engaged one and skipped by that shopper; a document
//!   that any shopper engaged with for the query is never a negative of it.
//! - **Weight**: the engaged shoppers, each counted `1 / p(rank)` where `p` is the examination
//!   propensity of the rank it was engaged at (inverse propensity scoring), normalised to a
//!   mean of 1 over the export and clipped to [`MAX_WEIGHT`].
//!
//! Propensities come from **swap exploration**: the server swaps one random adjacent pair of
//! ranks `(r, r+1)` in a configured share of logged searches (`[feedback] explore_share`).
//! Because the swap is random, the same documents are seen at both ranks, and the ratio of their
//! click rates is the ratio of the ranks' examination probabilities. The per-rank ratios are
//! noisy at the traffic a store sees, so they are fitted by one exponent of the power-law
//! position-based model `p(r) = r^-eta` (weighted least squares on the log ratios). We chose the
//! intervention over fitting a click model to the logs alone because it needs no assumption about
//! relevance, only that the swap is random; its cost is a few swapped results. Without explored
//! traffic the export says so and weights are plain counts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use attune_index::{FeedbackRecord, IndexError, ServedRequest, VectorStore};
use serde::{Deserialize, Serialize};

/// Largest pair weight after normalisation to a mean of 1 (bounds the variance of inverse
/// propensity weights).
pub const MAX_WEIGHT: f64 = 10.0;

/// Smallest examination propensity used in a weight (so one click far down the list cannot
/// dominate).
pub const MIN_PROPENSITY: f64 = 0.05;

/// What a user tunes in an export: the flags of `attune feedback export` and the keys of
/// `[data] feedback` in `pipeline.toml` (declared here only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ExportSettings {
    /// The collection whose feedback log is read.
    #[cfg_attr(feature = "cli", arg(long))]
    pub collection: String,
    /// Only searches served since then: an RFC 3339 time (`2026-11-30T00:00:00Z`) or a duration
    /// back from now (`7d`, `12h`, `30m`, `2w`). Default: the whole log.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long, value_name = "TIME"))]
    pub since: Option<String>,
    /// Distinct shoppers who must have engaged a document for a query before it is a positive.
    /// Default 2.
    #[serde(default = "default_min_events")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N", default_value_t = default_min_events()))]
    pub min_events: usize,
    /// Weight engagements by inverse examination propensity. Default true
    /// (`--position-correction false` counts every engaged shopper as 1).
    #[serde(default = "default_true")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set))]
    pub position_correction: bool,
    /// Skipped-above negatives per pair at most (the most often skipped first). Default 3.
    #[serde(default = "default_max_negatives")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N", default_value_t = default_max_negatives()))]
    pub max_negatives: usize,
}

fn default_min_events() -> usize {
    2
}

fn default_true() -> bool {
    true
}

fn default_max_negatives() -> usize {
    3
}

impl ExportSettings {
    /// Settings with the documented defaults for `collection`.
    pub fn new(collection: impl Into<String>) -> Self {
        Self {
            collection: collection.into(),
            since: None,
            min_events: default_min_events(),
            position_correction: true,
            max_negatives: default_max_negatives(),
        }
    }
}

/// Why an export produced nothing. Every variant leaves the output file untouched.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    /// `since` is neither an RFC 3339 time nor a duration.
    #[error(
        "since {value:?}: {problem} (give an RFC 3339 time such as 2026-11-30T00:00:00Z, or a \
         duration back from now such as 7d, 12h, 30m)"
    )]
    Since {
        /// The value given.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `min_events` is 0.
    #[error("min_events must be at least 1")]
    MinEvents,
    /// The store has no such collection.
    #[error("the store has no collection {0:?}")]
    UnknownCollection(String),
    /// No search was logged (in the window).
    #[error(
        "collection {collection:?} has no logged searches{window} (searches are logged with \
         space \"auto\", or for every search when the server's [feedback] log lists the \
         collection)"
    )]
    NoRequests {
        /// The collection.
        collection: String,
        /// ` since ...` when a window was given.
        window: String,
    },
    /// Searches were logged but nobody gave feedback on them.
    #[error(
        "collection {collection:?} has {requests} logged searches{window} but no feedback \
         events on them (POST /v1/collections/{collection}/feedback)"
    )]
    NoEvents {
        /// The collection.
        collection: String,
        /// Logged searches in the window.
        requests: usize,
        /// ` since ...` when a window was given.
        window: String,
    },
    /// Events exist, but no document reached `min_events` shoppers.
    #[error(
        "collection {collection:?}: no document was engaged by {min_events} or more shoppers \
         for one query ({sessions} shopper sessions, at most {best} on one document); lower \
         min_events or collect more feedback"
    )]
    NothingPassed {
        /// The collection.
        collection: String,
        /// The threshold.
        min_events: usize,
        /// `(user, query)` sessions with events.
        sessions: usize,
        /// Most shoppers on one (query, document).
        best: usize,
    },
    /// Reading the store or the log failed.
    #[error("collection {collection:?}: {source}")]
    Store {
        /// The collection.
        collection: String,
        /// The store's error.
        source: Box<IndexError>,
    },
    /// Writing the pairs failed.
    #[error(transparent)]
    Write(Box<attune_trainer::TrainError>),
    /// Creating the output's directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One exported training pair (a line of the pairs JSONL the trainer reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedbackPair {
    /// The query as shoppers typed it (its first 1,000 bytes).
    pub query: String,
    /// The engaged document's embedding text.
    pub positive: String,
    /// Embedding texts of documents shown above an engaged one and skipped.
    pub negatives: Vec<String>,
    /// Best event: 3 purchase, 2 add-to-cart, 1 click.
    pub grade: u32,
    /// Loss weight (mean 1 over the export).
    pub weight: f64,
    /// `feedback:<collection>`, counted in the training card.
    pub source: String,
}

/// Examination propensities by rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Propensities {
    /// How they were obtained.
    pub method: String,
    /// Fitted exponent of `p(r) = r^-eta` (absent without exploration).
    pub eta: Option<f64>,
    /// Per adjacent pair `(r, r+1)`: the measured click-rate ratio `p(r+1)/p(r)` and the swapped
    /// searches behind it.
    pub measured: Vec<MeasuredRatio>,
}

/// One measured propensity ratio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeasuredRatio {
    /// The upper rank of the pair (1-based).
    pub rank: usize,
    /// `p(rank+1) / p(rank)`.
    pub ratio: f64,
    /// Searches swapped at this pair.
    pub swapped_searches: usize,
}

impl Propensities {
    /// `p(rank)` (1-based; 1 without a fitted model), at least [`MIN_PROPENSITY`].
    pub fn at(&self, rank: usize) -> f64 {
        match self.eta {
            Some(eta) => (rank.max(1) as f64).powf(-eta).max(MIN_PROPENSITY),
            None => 1.0,
        }
    }
}

/// What an export found, for the command's summary and the pipeline report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportReport {
    /// Logged searches in the window.
    pub requests: usize,
    /// Of them, searches with an exploration swap.
    pub explored_requests: usize,
    /// Feedback events on searches in the window.
    pub events: usize,
    /// Events whose search is not in the log (skipped).
    pub unknown_request_events: usize,
    /// `(user, query)` sessions with at least one event.
    pub sessions: usize,
    /// Distinct queries among the pairs.
    pub queries: usize,
    /// Pairs written.
    pub pairs: usize,
    /// Engaged (query, document)s below `min_events` shoppers (not exported).
    pub below_min_events: usize,
    /// Documents no longer in the collection (not exported).
    pub missing_documents: usize,
    /// Examination propensities used (`None`: position correction off).
    pub propensities: Option<Propensities>,
}

/// The pairs and what was found.
#[derive(Debug, Clone)]
pub struct Export {
    /// Pairs, by query then positive.
    pub pairs: Vec<FeedbackPair>,
    /// The summary.
    pub report: ExportReport,
}

/// Parses `since` into milliseconds since the Unix epoch (`now_ms` for durations).
pub fn parse_since(value: &str, now_ms: u64) -> Result<u64, FeedbackError> {
    let fail = |problem: &str| FeedbackError::Since {
        value: value.to_string(),
        problem: problem.to_string(),
    };
    let text = value.trim();
    if text.is_empty() {
        return Err(fail("empty"));
    }
    if text.contains('T') || text.contains('-') && text.contains(':') {
        let at: jiff::Timestamp = text
            .parse()
            .map_err(|e: jiff::Error| fail(&format!("not an RFC 3339 time ({e})")))?;
        let ms = at.as_millisecond();
        return u64::try_from(ms).map_err(|_| fail("before 1970"));
    }
    let ms = parse_duration_ms(text).ok_or_else(|| fail("not a time or a duration"))?;
    Ok(now_ms.saturating_sub(ms))
}

/// `7d`, `12h`, `30m`, `45s`, `2w`, or sums such as `1d12h`, in milliseconds.
fn parse_duration_ms(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
    }
    (digits.is_empty() && total > 0).then_some(total)
}

/// The grade of an event name: purchase 3, add-to-cart 2, click 1.
pub fn event_grade(event: &str) -> u32 {
    match event {
        "purchase" => 3,
        "add_to_cart" => 2,
        _ => 1,
    }
}

/// Builds the pairs of `settings.collection` from its log. `document` gives a document's
/// embedding text (`None` when it is gone); `now_ms` anchors durations in `since`.
pub fn export(
    settings: &ExportSettings,
    served: &[ServedRequest],
    feedback: &[FeedbackRecord],
    document: &dyn Fn(&str) -> Result<Option<String>, FeedbackError>,
    now_ms: u64,
) -> Result<Export, FeedbackError> {
    if settings.min_events == 0 {
        return Err(FeedbackError::MinEvents);
    }
    let since = settings
        .since
        .as_deref()
        .map(|s| parse_since(s, now_ms))
        .transpose()?;
    let window = settings
        .since
        .as_ref()
        .map_or(String::new(), |s| format!(" since {s}"));
    let collection = settings.collection.clone();
    let requests: Vec<&ServedRequest> = served
        .iter()
        .filter(|r| since.map_or(true, |t| r.unix_ms >= t))
        .collect();
    if requests.is_empty() {
        return Err(FeedbackError::NoRequests { collection, window });
    }
    let by_id: HashMap<&str, &ServedRequest> = requests
        .iter()
        .map(|r| (r.request_id.as_str(), *r))
        .collect();
    let all_ids: HashSet<&str> = served.iter().map(|r| r.request_id.as_str()).collect();
    let mut report = ExportReport {
        requests: requests.len(),
        explored_requests: requests.iter().filter(|r| r.swapped.is_some()).count(),
        ..ExportReport::default()
    };
    let mut events_of: HashMap<&str, Vec<&FeedbackRecord>> = HashMap::new();
    for event in feedback {
        if by_id.contains_key(event.request_id.as_str()) {
            events_of.entry(&event.request_id).or_default().push(event);
            report.events += 1;
        } else if !all_ids.contains(event.request_id.as_str()) {
            report.unknown_request_events += 1;
        }
    }
    if report.events == 0 {
        return Err(FeedbackError::NoEvents {
            collection,
            requests: requests.len(),
            window,
        });
    }
    let propensities = settings
        .position_correction
        .then(|| estimate_propensities(&requests, &events_of));
    let queries = aggregate(&requests, &events_of, propensities.as_ref(), &mut report);
    report.propensities = propensities;
    let pairs = build_pairs(settings, &queries, document, &mut report)?;
    if pairs.is_empty() {
        let best = queries
            .values()
            .flat_map(|q| q.engaged.values().map(|e| e.shoppers))
            .max()
            .unwrap_or(0);
        return Err(FeedbackError::NothingPassed {
            collection,
            min_events: settings.min_events,
            sessions: report.sessions,
            best,
        });
    }
    report.pairs = pairs.len();
    report.queries = pairs
        .iter()
        .map(|p| p.query.as_str())
        .collect::<HashSet<_>>()
        .len();
    Ok(Export { pairs, report })
}

/// What shoppers did with one document for one query.
#[derive(Debug, Default, Clone)]
struct Engagement {
    /// Distinct shoppers who engaged.
    shoppers: usize,
    /// Σ over them of 1 / p(rank engaged at).
    weighted: f64,
    /// Best grade any of them gave.
    grade: u32,
}

/// One query's evidence across shoppers.
#[derive(Debug, Default)]
struct QueryEvidence {
    text: String,
    engaged: BTreeMap<String, Engagement>,
    /// Documents skipped above an engaged one: shoppers who skipped each.
    skipped: BTreeMap<String, usize>,
}

/// Groups events by `(user, query)` session and then by query.
fn aggregate(
    requests: &[&ServedRequest],
    events_of: &HashMap<&str, Vec<&FeedbackRecord>>,
    propensities: Option<&Propensities>,
    report: &mut ExportReport,
) -> BTreeMap<String, QueryEvidence> {
    // (user key, query key) -> the session's requests.
    let mut sessions: BTreeMap<(String, String), Vec<&ServedRequest>> = BTreeMap::new();
    for request in requests {
        if !events_of.contains_key(request.request_id.as_str()) {
            continue;
        }
        // Searches without a user key are each their own shopper.
        let user = if request.user_hash.is_empty() {
            format!("request:{}", request.request_id)
        } else {
            request.user_hash.clone()
        };
        sessions
            .entry((user, query_key(request)))
            .or_default()
            .push(request);
    }
    report.sessions = sessions.len();
    let mut queries: BTreeMap<String, QueryEvidence> = BTreeMap::new();
    for ((_, query), session) in sessions {
        // This shopper's best grade per document, at the best rank it was engaged at.
        let mut best: BTreeMap<&str, (u32, usize)> = BTreeMap::new();
        let mut skipped: HashSet<&str> = HashSet::new();
        for request in &session {
            let events = &events_of[request.request_id.as_str()];
            let deepest = events.iter().map(|e| e.rank).max().unwrap_or(0);
            for event in events {
                let entry = best.entry(event.doc_id.as_str()).or_insert((0, event.rank));
                let grade = event_grade(&event.event);
                if grade > entry.0 || grade == entry.0 && event.rank < entry.1 {
                    *entry = (grade, event.rank);
                }
            }
            for id in request.results.iter().take(deepest.saturating_sub(1)) {
                skipped.insert(id.as_str());
            }
        }
        let evidence = queries.entry(query).or_default();
        if evidence.text.is_empty() {
            evidence.text = session[0].query.clone();
        }
        for (doc, (grade, rank)) in &best {
            let engagement = evidence.engaged.entry(doc.to_string()).or_default();
            engagement.shoppers += 1;
            engagement.weighted += 1.0 / propensities.map_or(1.0, |p| p.at(*rank));
            engagement.grade = engagement.grade.max(*grade);
        }
        for doc in skipped.into_iter().filter(|d| !best.contains_key(d)) {
            *evidence.skipped.entry(doc.to_string()).or_default() += 1;
        }
    }
    queries
}

/// The query's identity in the log: the hash of its whole text (the text for old records).
fn query_key(request: &ServedRequest) -> String {
    if request.query_sha256.is_empty() {
        request.query.clone()
    } else {
        request.query_sha256.clone()
    }
}

/// Pairs from the evidence: positives past `min_events`, skipped negatives never engaged.
fn build_pairs(
    settings: &ExportSettings,
    queries: &BTreeMap<String, QueryEvidence>,
    document: &dyn Fn(&str) -> Result<Option<String>, FeedbackError>,
    report: &mut ExportReport,
) -> Result<Vec<FeedbackPair>, FeedbackError> {
    let source = format!("feedback:{}", settings.collection);
    let mut pairs = Vec::new();
    let mut texts: HashMap<String, Option<String>> = HashMap::new();
    let mut text_of = |id: &str| -> Result<Option<String>, FeedbackError> {
        if let Some(text) = texts.get(id) {
            return Ok(text.clone());
        }
        let text = document(id)?;
        texts.insert(id.to_string(), text.clone());
        Ok(text)
    };
    for evidence in queries.values() {
        let mut negatives: Vec<(&String, &usize)> = evidence
            .skipped
            .iter()
            .filter(|(doc, _)| !evidence.engaged.contains_key(*doc))
            .collect();
        negatives.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut negative_texts = Vec::new();
        for (doc, _) in negatives {
            if negative_texts.len() == settings.max_negatives {
                break;
            }
            if let Some(text) = text_of(doc)? {
                negative_texts.push(text);
            }
        }
        for (doc, engagement) in &evidence.engaged {
            if engagement.shoppers < settings.min_events {
                report.below_min_events += 1;
                continue;
            }
            let Some(positive) = text_of(doc)? else {
                report.missing_documents += 1;
                continue;
            };
            pairs.push(FeedbackPair {
                query: evidence.text.clone(),
                positive,
                negatives: negative_texts.clone(),
                grade: engagement.grade,
                weight: engagement.weighted,
                source: source.clone(),
            });
        }
    }
    normalise_weights(&mut pairs);
    Ok(pairs)
}

/// Scales weights to a mean of 1, clipped to [`MAX_WEIGHT`].
fn normalise_weights(pairs: &mut [FeedbackPair]) {
    let mean = pairs.iter().map(|p| p.weight).sum::<f64>() / pairs.len().max(1) as f64;
    if mean > 0.0 {
        for pair in pairs {
            pair.weight = (pair.weight / mean).min(MAX_WEIGHT);
        }
    }
}

/// Examination propensities from the swapped searches (see the module documentation).
fn estimate_propensities(
    requests: &[&ServedRequest],
    events_of: &HashMap<&str, Vec<&FeedbackRecord>>,
) -> Propensities {
    let engaged_at = |r: &ServedRequest, rank: usize| -> bool {
        events_of
            .get(r.request_id.as_str())
            .is_some_and(|events| events.iter().any(|e| e.rank == rank))
    };
    let deepest = requests.iter().filter_map(|r| r.swapped).max().unwrap_or(0);
    let mut measured = Vec::new();
    for rank in 1..=deepest {
        let rate = |requests: Vec<&&ServedRequest>, at: usize| -> (f64, usize) {
            let n = requests.len();
            let clicks = requests.iter().filter(|r| engaged_at(r, at)).count();
            (clicks as f64 / n.max(1) as f64, clicks)
        };
        let long_enough = |r: &&&ServedRequest| r.results.len() > rank;
        let swapped: Vec<_> = requests
            .iter()
            .filter(|r| r.swapped == Some(rank))
            .filter(long_enough)
            .collect();
        let plain: Vec<_> = requests
            .iter()
            .filter(|r| r.swapped.is_none())
            .filter(long_enough)
            .collect();
        if swapped.is_empty() || plain.is_empty() {
            continue;
        }
        let n_swapped = swapped.len();
        let (swap_upper, c1) = rate(swapped.clone(), rank);
        let (swap_lower, c2) = rate(swapped, rank + 1);
        let (plain_upper, _) = rate(plain.clone(), rank);
        let (plain_lower, _) = rate(plain, rank + 1);
        let (upper, lower) = (swap_upper + plain_upper, swap_lower + plain_lower);
        if c1 + c2 == 0 || upper <= 0.0 || lower <= 0.0 {
            continue;
        }
        measured.push(MeasuredRatio {
            rank,
            ratio: lower / upper,
            swapped_searches: n_swapped,
        });
    }
    // Weighted least squares through the origin: ln ratio = -eta * ln((r+1)/r).
    let (mut num, mut den) = (0.0, 0.0);
    for m in &measured {
        let x = ((m.rank + 1) as f64 / m.rank as f64).ln();
        let w = m.swapped_searches as f64;
        num += w * x * m.ratio.ln();
        den += w * x * x;
    }
    if den == 0.0 {
        return Propensities {
            method: "none: no swapped searches with clicks in the log (set [feedback] \
                     explore_share on the server); weights count shoppers"
                .into(),
            eta: None,
            measured,
        };
    }
    let eta = (-num / den).clamp(0.0, 3.0);
    Propensities {
        method: format!(
            "swap exploration, {} adjacent pairs measured, fitted p(r) = r^-{eta:.3}",
            measured.len()
        ),
        eta: Some(eta),
        measured,
    }
}

/// Writes pairs as a pairs JSONL file, atomically (the trainer's format and writer), so a
/// failed export leaves any previous file as it was.
pub fn write_pairs(path: &Path, pairs: &[FeedbackPair]) -> Result<(), FeedbackError> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| FeedbackError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    attune_trainer::data::write_pairs(path, pairs).map_err(|e| FeedbackError::Write(Box::new(e)))
}

/// Exports from the embedded store at `store`. The log is held by a running server: stop it
/// first, or export through the server (`GET /v1/collections/{c}/feedback/pairs`).
pub fn export_from_store(store: &Path, settings: &ExportSettings) -> Result<Export, FeedbackError> {
    let failed = |source| FeedbackError::Store {
        collection: settings.collection.clone(),
        source: Box::new(source),
    };
    let store = attune_index::Store::open(store).map_err(failed)?;
    // Opening a log creates it: a collection never logged has nothing to export.
    if store
        .collection_names()
        .map_err(failed)?
        .contains(&settings.collection)
        && !store.has_events(&settings.collection)
    {
        return Err(FeedbackError::NoRequests {
            collection: settings.collection.clone(),
            window: String::new(),
        });
    }
    export_from(&store, settings)
}

/// Exports from any implementation of the vector-store seam: the collection (for document
/// texts) and its feedback log.
pub fn export_from(
    store: &dyn VectorStore,
    settings: &ExportSettings,
) -> Result<Export, FeedbackError> {
    let failed = |source| FeedbackError::Store {
        collection: settings.collection.clone(),
        source: Box::new(source),
    };
    if !store
        .collection_names()
        .map_err(failed)?
        .contains(&settings.collection)
    {
        return Err(FeedbackError::UnknownCollection(
            settings.collection.clone(),
        ));
    }
    let log = store.open_events(&settings.collection).map_err(failed)?;
    let served = log.all_served().map_err(failed)?;
    let feedback = log.all_feedback().map_err(failed)?;
    drop(log);
    let collection = store
        .open_collection(&settings.collection)
        .map_err(failed)?;
    let document = |id: &str| -> Result<Option<String>, FeedbackError> {
        Ok(collection
            .document(id)
            .map_err(failed)?
            .map(|d| attune_core::embedding_text(&d.title, &d.text)))
    };
    export(settings, &served, &feedback, &document, now_ms())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 10 * 86_400_000;

    fn served(id: &str, user: &str, query: &str, results: &[&str]) -> ServedRequest {
        let mut r = ServedRequest::new(
            id.into(),
            "base".into(),
            "salt",
            user,
            query,
            results.iter().map(|s| s.to_string()).collect(),
            NOW - 1_000,
        );
        r.ab = false;
        r
    }

    fn event(request: &str, doc: &str, event: &str, rank: usize) -> FeedbackRecord {
        FeedbackRecord {
            request_id: request.into(),
            doc_id: doc.into(),
            event: event.into(),
            rank,
            unix_ms: NOW,
        }
    }

    fn text(id: &str) -> Result<Option<String>, FeedbackError> {
        Ok((id != "gone").then(|| format!("text of {id}")))
    }

    fn run(settings: &ExportSettings, s: &[ServedRequest], f: &[FeedbackRecord]) -> Export {
        export(settings, s, f, &text, NOW).unwrap()
    }

    fn settings(min_events: usize) -> ExportSettings {
        ExportSettings {
            min_events,
            ..ExportSettings::new("shop")
        }
    }

    #[test]
    fn an_engaged_document_is_never_a_negative_of_its_query() {
        // u1 clicks d3 (skipping d1, d2); u2 buys d1 (skipping nothing above it) and clicks d3.
        let s = [
            served("r1", "u1", "red shoes", &["d1", "d2", "d3"]),
            served("r2", "u2", "red shoes", &["d1", "d2", "d3"]),
            served("r3", "u3", "red shoes", &["d2", "d1", "d3"]),
        ];
        let f = [
            event("r1", "d3", "click", 3),
            event("r2", "d1", "purchase", 1),
            event("r2", "d3", "click", 3),
            event("r3", "d3", "add_to_cart", 3),
        ];
        let out = run(&settings(1), &s, &f);
        for pair in &out.pairs {
            assert!(
                !pair.negatives.contains(&"text of d1".to_string()),
                "{pair:?}"
            );
            assert!(
                !pair.negatives.contains(&"text of d3".to_string()),
                "{pair:?}"
            );
            assert_eq!(pair.negatives, vec!["text of d2".to_string()]);
            assert_eq!(pair.source, "feedback:shop");
        }
        let grades: Vec<(String, u32)> = out
            .pairs
            .iter()
            .map(|p| (p.positive.clone(), p.grade))
            .collect();
        assert_eq!(
            grades,
            vec![("text of d1".into(), 3), ("text of d3".into(), 2)]
        );
    }

    #[test]
    fn one_shopper_repeating_a_query_counts_once() {
        // u1 searches five times and clicks d1 each time; u2 clicks d2 once.
        let mut s = Vec::new();
        let mut f = Vec::new();
        for i in 0..5 {
            let id = format!("a{i}");
            s.push(served(&id, "u1", "boots", &["d1", "d2"]));
            f.push(event(&id, "d1", "click", 1));
        }
        s.push(served("b", "u2", "boots", &["d1", "d2"]));
        f.push(event("b", "d2", "click", 2));
        let out = run(
            &ExportSettings {
                position_correction: false,
                ..settings(1)
            },
            &s,
            &f,
        );
        assert_eq!(out.report.sessions, 2);
        assert_eq!(out.pairs.len(), 2);
        // Equal evidence (one shopper each) gives equal weights.
        assert_eq!(out.pairs[0].weight, out.pairs[1].weight);
        // At two shoppers, neither passes: five searches by one user are one shopper.
        let err = export(&settings(2), &s, &f, &text, NOW).unwrap_err();
        assert!(
            matches!(err, FeedbackError::NothingPassed { best: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn searches_without_a_user_are_shoppers_of_their_own() {
        let s = [
            served("r1", "", "boots", &["d1"]),
            served("r2", "", "boots", &["d1"]),
        ];
        let mut s = s.to_vec();
        for r in &mut s {
            r.user_hash.clear();
        }
        let f = [event("r1", "d1", "click", 1), event("r2", "d1", "click", 1)];
        let out = run(&settings(2), &s, &f);
        assert_eq!(out.pairs.len(), 1);
    }

    /// Shoppers examine rank r with probability r^-1 and click what they examine (equally
    /// attractive documents): 120 searches each without a swap and swapped at ranks 1, 2, 3.
    fn examined_by_rank() -> (Vec<ServedRequest>, Vec<FeedbackRecord>) {
        let mut s = Vec::new();
        let mut f = Vec::new();
        let mut n = 0;
        for swapped in [None, Some(1), Some(2), Some(3)] {
            for i in 0..120 {
                let id = format!("{swapped:?}-{i}");
                let mut r = served(&id, &format!("u{n}"), "q", &["a", "b", "c", "d", "e"]);
                r.swapped = swapped;
                if let Some(rank) = swapped {
                    r.results.swap(rank - 1, rank);
                }
                n += 1;
                for rank in 1..=5usize {
                    // Deterministic r^-1 share of the 120 searches.
                    if i * rank < 120 {
                        f.push(event(&id, &r.results[rank - 1], "click", rank));
                    }
                }
                s.push(r);
            }
        }
        (s, f)
    }

    #[test]
    fn swaps_measure_the_examination_propensity() {
        let (s, f) = examined_by_rank();
        let out = run(&settings(1), &s, &f);
        let p = out.report.propensities.unwrap();
        let eta = p.eta.unwrap();
        assert!((eta - 1.0).abs() < 0.05, "eta {eta}: {:?}", p.measured);
        assert!((p.at(4) - 0.25).abs() < 0.02);
        // Without exploration there is nothing to fit, and the report says so.
        let plain: Vec<_> = s.iter().filter(|r| r.swapped.is_none()).cloned().collect();
        let out = run(&settings(1), &plain, &f);
        let p = out.report.propensities.unwrap();
        assert!(p.eta.is_none() && p.method.starts_with("none"), "{p:?}");
    }

    #[test]
    fn position_correction_undoes_the_position_bias() {
        // Equally attractive documents: clicked less further down only because fewer look.
        let (s, f) = examined_by_rank();
        let weight = |e: &Export, doc: &str| {
            e.pairs
                .iter()
                .find(|p| p.positive == format!("text of {doc}"))
                .unwrap()
                .weight
        };
        let with = run(&settings(1), &s, &f);
        let without = run(
            &ExportSettings {
                position_correction: false,
                ..settings(1)
            },
            &s,
            &f,
        );
        let (a, e) = (weight(&with, "a"), weight(&with, "e"));
        assert!((e / a - 1.0).abs() < 0.25, "corrected a {a} e {e}");
        let (a, e) = (weight(&without, "a"), weight(&without, "e"));
        assert!(e / a < 0.3, "uncorrected a {a} e {e}");
    }

    #[test]
    fn bad_input_gives_an_error_and_writes_nothing() {
        let s = [served("r1", "u1", "q", &["d1"])];
        let f = [event("r1", "d1", "click", 1)];
        for since in ["yesterday", "7x", "2026-13-01T00:00:00Z", ""] {
            let bad = ExportSettings {
                since: Some(since.into()),
                ..settings(1)
            };
            let err = export(&bad, &s, &f, &text, NOW).unwrap_err();
            assert!(matches!(err, FeedbackError::Since { .. }), "{since}: {err}");
            assert!(err.to_string().contains(since), "{err}");
        }
        let err = export(&settings(1), &s, &[], &text, NOW).unwrap_err();
        assert!(
            matches!(err, FeedbackError::NoEvents { requests: 1, .. }),
            "{err}"
        );
        let err = export(&settings(1), &[], &f, &text, NOW).unwrap_err();
        assert!(matches!(err, FeedbackError::NoRequests { .. }), "{err}");
        // A window that excludes everything.
        let recent = ExportSettings {
            since: Some("1m".into()),
            ..settings(1)
        };
        let mut old = s.to_vec();
        old[0].unix_ms = 0;
        let err = export(&recent, &old, &f, &text, NOW).unwrap_err();
        assert!(err.to_string().contains("since 1m"), "{err}");
        // Events on requests the log does not have are counted, not used.
        let stray = [event("nope", "d1", "click", 1), f[0].clone()];
        assert_eq!(
            run(&settings(1), &s, &stray).report.unknown_request_events,
            1
        );
        // A removed document is not exported.
        let gone = [served("r1", "u1", "q", &["gone"])];
        let err = export(
            &settings(1),
            &gone,
            &[event("r1", "gone", "click", 1)],
            &text,
            NOW,
        );
        assert!(err.is_err());
    }

    #[test]
    fn since_takes_rfc3339_times_and_durations() {
        assert_eq!(parse_since("7d", NOW).unwrap(), NOW - 7 * 86_400_000);
        assert_eq!(parse_since("1d12h", NOW).unwrap(), NOW - 36 * 3_600_000);
        assert_eq!(parse_since("30m", NOW).unwrap(), NOW - 1_800_000);
        assert_eq!(
            parse_since("1970-01-02T00:00:00Z", NOW).unwrap(),
            86_400_000
        );
        assert_eq!(
            parse_since("1970-01-02T01:00:00+01:00", NOW).unwrap(),
            86_400_000
        );
    }

    #[test]
    fn pairs_are_written_atomically_as_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.jsonl");
        let pair = FeedbackPair {
            query: "q".into(),
            positive: "p".into(),
            negatives: vec!["n".into()],
            grade: 2,
            weight: 1.0,
            source: "feedback:shop".into(),
        };
        write_pairs(&path, std::slice::from_ref(&pair)).unwrap();
        let line = std::fs::read_to_string(&path).unwrap();
        let back: FeedbackPair = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(back, pair);
    }
}
