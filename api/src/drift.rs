//! Query drift per collection and vector space: how far the queries served lately have moved from
//! a reference set, and when that says "retrain".
//!
//! The reference is the queries the served model was trained and validated on
//! (`data.reference_queries` of the `training_card.json` in its directory), or, for a model attune
//! did not train, the first `window` queries the space serves. Over a sliding window of the
//! latest `window` searches, three shares are measured:
//! - `novel_share`: queries whose nearest reference query (cosine of the model's own vectors) is
//!   below `novel_similarity`: wording or intent the model was not tuned for;
//! - `weak_top_share`: queries whose best result scores below `weak_top_score` (vector searches
//!   only): the catalog answers them poorly;
//! - `unseen_word_share`: words (lowercased, split at non-alphanumerics) absent from every
//!   reference query: new vocabulary such as new brands, SKUs or another language.
//!
//! Once the window holds `min_queries`, a share past its `max_*` threshold marks the space
//! "retraining recommended", with the evidence. Each observation costs one pass over the
//! reference vectors (`max_reference` × dimension multiply-adds) and is bounded.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The gauge measures, in the order of `attune_query_drift`'s `measure` label.
pub const MEASURES: [&str; 5] = [
    "novel_share",
    "weak_top_share",
    "unseen_word_share",
    "window_queries",
    "retraining_recommended",
];

/// Characters of a query kept as an example in the report.
const EXAMPLE_CHARS: usize = 80;

/// `[feedback.drift]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftSettings {
    /// Searches in the sliding window (default 500).
    pub window: usize,
    /// Searches the window needs before it can recommend retraining (default 100).
    pub min_queries: usize,
    /// A query is novel when its cosine to the nearest reference query is below this
    /// (default 0.6).
    pub novel_similarity: f32,
    /// A search is weak when its top-1 cosine is below this (default 0.3).
    pub weak_top_score: f32,
    /// Largest novel share before retraining is recommended (default 0.25).
    pub max_novel_share: f64,
    /// Largest weak-top share before retraining is recommended (default 0.5).
    pub max_weak_share: f64,
    /// Largest share of unseen words before retraining is recommended (default 0.25).
    pub max_unseen_share: f64,
    /// Reference queries kept at most (default 2,000; the card's first ones).
    pub max_reference: usize,
}

impl Default for DriftSettings {
    fn default() -> Self {
        Self {
            window: 500,
            min_queries: 100,
            novel_similarity: 0.6,
            weak_top_score: 0.3,
            max_novel_share: 0.25,
            max_weak_share: 0.5,
            max_unseen_share: 0.25,
            max_reference: 2_000,
        }
    }
}

impl DriftSettings {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.window == 0 || self.max_reference == 0 {
            return Err("window and max_reference must be at least 1".into());
        }
        if self.min_queries == 0 || self.min_queries > self.window {
            return Err(format!(
                "min_queries must be between 1 and window ({})",
                self.window
            ));
        }
        for (name, share) in [
            ("max_novel_share", self.max_novel_share),
            ("max_weak_share", self.max_weak_share),
            ("max_unseen_share", self.max_unseen_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{name} must be between 0 and 1, found {share}"));
            }
        }
        for (name, score) in [
            ("novel_similarity", self.novel_similarity),
            ("weak_top_score", self.weak_top_score),
        ] {
            if !(-1.0..=1.0).contains(&score) {
                return Err(format!("{name} must be a cosine (-1 to 1), found {score}"));
            }
        }
        Ok(())
    }
}

/// The words of a query: lowercased runs of letters and digits.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// One served search in the window.
#[derive(Debug)]
struct Observation {
    text: String,
    vector: Vec<f32>,
    /// Cosine to the nearest reference query (`None` while the reference is being embedded).
    nearest: Option<f32>,
    top_score: Option<f32>,
    words: usize,
    unseen_words: usize,
}

/// Where the reference comes from.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceSource {
    /// The training queries in the served model's training card.
    TrainingCard,
    /// The first `window` queries the space served.
    FirstServed,
}

#[derive(Debug)]
struct Reference {
    source: ReferenceSource,
    words: HashSet<String>,
    vectors: Vec<Vec<f32>>,
    /// Queries the reference will hold; vectors may still be on their way.
    expected: usize,
}

impl Reference {
    fn ready(&self) -> bool {
        !self.vectors.is_empty() && self.vectors.len() >= self.expected
    }

    fn nearest(&self, vector: &[f32]) -> Option<f32> {
        self.ready().then(|| {
            self.vectors
                .iter()
                .map(|r| dot(r, vector))
                .fold(f32::NEG_INFINITY, f32::max)
        })
    }
}

/// Dot product in eight independent lanes, so the compiler can keep them in one vector register.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (chunks_a, chunks_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The drift monitor of one space of one collection, for one model.
#[derive(Debug)]
pub struct DriftMonitor {
    settings: DriftSettings,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    reference: Reference,
    window: VecDeque<Observation>,
}

/// A space's drift, as `GET /v1/collections/{c}/drift` reports it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DriftReport {
    /// The vector space.
    pub space: String,
    /// Where the reference queries come from.
    pub reference: ReferenceSource,
    /// Reference queries (embedded or expected).
    pub reference_queries: usize,
    /// False while the reference is being embedded or still filling from traffic.
    pub reference_ready: bool,
    /// Searches in the window.
    pub window_queries: usize,
    /// Share of the window's queries with no reference query above `novel_similarity`.
    pub novel_share: Option<f64>,
    /// Share of the window's vector searches whose top-1 score is below `weak_top_score`.
    pub weak_top_share: Option<f64>,
    /// Share of the window's words that no reference query contains.
    pub unseen_word_share: Option<f64>,
    /// True once the window is full enough and a share is past its threshold.
    pub retraining_recommended: bool,
    /// Why (one line per share past its threshold), empty otherwise.
    pub evidence: Vec<String>,
    /// The settings the shares are judged by.
    #[schema(value_type = Object)]
    pub thresholds: DriftSettings,
}

impl DriftMonitor {
    /// A monitor whose reference is `reference_queries` (from a training card; their vectors
    /// arrive through [`DriftMonitor::set_reference_vectors`]), or the first served queries when
    /// `None`.
    pub fn new(settings: DriftSettings, reference_queries: Option<&[String]>) -> Self {
        let reference = match reference_queries {
            Some(queries) => {
                let queries = &queries[..queries.len().min(settings.max_reference)];
                Reference {
                    source: ReferenceSource::TrainingCard,
                    words: queries.iter().flat_map(|q| words(q)).collect(),
                    vectors: Vec::new(),
                    expected: queries.len(),
                }
            }
            None => Reference {
                source: ReferenceSource::FirstServed,
                words: HashSet::new(),
                vectors: Vec::new(),
                expected: settings.window.min(settings.max_reference),
            },
        };
        Self {
            settings,
            state: Mutex::new(State {
                reference,
                window: VecDeque::new(),
            }),
        }
    }

    /// Sets the vectors of the training card's reference queries, and measures the window's
    /// searches that waited for them.
    pub fn set_reference_vectors(&self, vectors: Vec<Vec<f32>>) {
        let mut state = self.state.lock().expect("drift lock");
        let state = &mut *state;
        state.reference.expected = vectors.len();
        state.reference.vectors = vectors;
        for observation in &mut state.window {
            observation.nearest = state.reference.nearest(&observation.vector);
        }
    }

    /// Records one search: the query, its vector (unit length), and its top-1 cosine (`None`
    /// when the answer was not a plain vector search or found nothing).
    pub fn observe(&self, query: &str, vector: &[f32], top_score: Option<f32>) {
        let mut state = self.state.lock().expect("drift lock");
        let query_words: Vec<String> = words(query).collect();
        let reference = &mut state.reference;
        if reference.source == ReferenceSource::FirstServed && !reference.ready() {
            reference.words.extend(query_words);
            reference.vectors.push(vector.to_vec());
            return;
        }
        let unseen_words = query_words
            .iter()
            .filter(|w| !reference.words.contains(*w))
            .count();
        let observation = Observation {
            text: query.chars().take(EXAMPLE_CHARS).collect(),
            vector: vector.to_vec(),
            nearest: reference.nearest(vector),
            top_score,
            words: query_words.len(),
            unseen_words,
        };
        state.window.push_back(observation);
        while state.window.len() > self.settings.window {
            state.window.pop_front();
        }
    }

    /// The gauge values now, in [`MEASURES`] order (absent shares as 0); what every search
    /// pays after its observation, so no evidence is written.
    pub fn gauges(&self) -> [f64; 5] {
        let state = self.state.lock().expect("drift lock");
        let shares = Shares::of(&self.settings, &state.window);
        [
            shares.novel.unwrap_or(0.0),
            shares.weak.unwrap_or(0.0),
            shares.unseen.unwrap_or(0.0),
            state.window.len() as f64,
            f64::from(u8::from(
                shares.recommend(&self.settings, state.window.len()),
            )),
        ]
    }

    /// The drift of `space` now.
    pub fn report(&self, space: &str) -> DriftReport {
        let state = self.state.lock().expect("drift lock");
        let settings = &self.settings;
        let window = &state.window;
        let Shares {
            novel: novel_share,
            weak: weak_top_share,
            unseen: unseen_word_share,
            scored,
        } = Shares::of(settings, window);
        let mut evidence = Vec::new();
        if window.len() >= settings.min_queries {
            let examples = |keep: &dyn Fn(&Observation) -> bool| {
                let mut seen = Vec::new();
                for o in window.iter().rev().filter(|o| keep(o)) {
                    if !seen.contains(&o.text) {
                        seen.push(o.text.clone());
                    }
                    if seen.len() == 3 {
                        break;
                    }
                }
                seen.iter()
                    .map(|t| format!("{t:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let past = |value: Option<f64>, max: f64| value.filter(|v| *v > max);
            if let Some(v) = past(novel_share, settings.max_novel_share) {
                evidence.push(format!(
                    "{:.0}% of the last {} queries have no reference query within cosine {} \
                     (threshold {:.0}%), e.g. {}",
                    v * 100.0,
                    window.len(),
                    settings.novel_similarity,
                    settings.max_novel_share * 100.0,
                    examples(&|o| o.nearest.is_some_and(|s| s < settings.novel_similarity))
                ));
            }
            if let Some(v) = past(weak_top_share, settings.max_weak_share) {
                evidence.push(format!(
                    "{:.0}% of the last {} searches have a top-1 score below {} (threshold \
                     {:.0}%), e.g. {}",
                    v * 100.0,
                    scored,
                    settings.weak_top_score,
                    settings.max_weak_share * 100.0,
                    examples(&|o| o.top_score.is_some_and(|s| s < settings.weak_top_score))
                ));
            }
            if let Some(v) = past(unseen_word_share, settings.max_unseen_share) {
                evidence.push(format!(
                    "{:.0}% of the words of the last {} queries appear in no reference query \
                     (threshold {:.0}%), e.g. {}",
                    v * 100.0,
                    window.len(),
                    settings.max_unseen_share * 100.0,
                    examples(&|o| o.unseen_words > 0)
                ));
            }
        }
        DriftReport {
            space: space.to_string(),
            reference: state.reference.source.clone(),
            reference_queries: state.reference.expected.max(state.reference.vectors.len()),
            reference_ready: state.reference.ready(),
            window_queries: window.len(),
            novel_share,
            weak_top_share,
            unseen_word_share,
            retraining_recommended: !evidence.is_empty(),
            evidence,
            thresholds: settings.clone(),
        }
    }
}

/// The window's shares (`None` when nothing in the window measures one).
struct Shares {
    novel: Option<f64>,
    weak: Option<f64>,
    unseen: Option<f64>,
    /// Searches with a top-1 score.
    scored: usize,
}

impl Shares {
    fn of(settings: &DriftSettings, window: &VecDeque<Observation>) -> Self {
        let share = |hits: usize, of: usize| (of > 0).then(|| hits as f64 / of as f64);
        let (mut measured, mut novel, mut scored, mut weak) = (0, 0, 0, 0);
        let (mut words, mut unseen) = (0, 0);
        for o in window {
            if let Some(nearest) = o.nearest {
                measured += 1;
                novel += usize::from(nearest < settings.novel_similarity);
            }
            if let Some(top) = o.top_score {
                scored += 1;
                weak += usize::from(top < settings.weak_top_score);
            }
            words += o.words;
            unseen += o.unseen_words;
        }
        Self {
            novel: share(novel, measured),
            weak: share(weak, scored),
            unseen: share(unseen, words),
            scored,
        }
    }

    /// Whether a window of `len` searches with these shares recommends retraining.
    fn recommend(&self, settings: &DriftSettings, len: usize) -> bool {
        let past = |value: Option<f64>, max: f64| value.is_some_and(|v| v > max);
        len >= settings.min_queries
            && (past(self.novel, settings.max_novel_share)
                || past(self.weak, settings.max_weak_share)
                || past(self.unseen, settings.max_unseen_share))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn small() -> DriftSettings {
        DriftSettings {
            window: 20,
            min_queries: 10,
            ..DriftSettings::default()
        }
    }

    #[test]
    fn the_first_window_is_the_reference_when_no_card_names_one() {
        let monitor = DriftMonitor::new(small(), None);
        for i in 0..20 {
            monitor.observe(&format!("red shoes {i}"), &unit(&[1.0, 0.1]), Some(0.8));
        }
        let report = monitor.report("base");
        assert!(report.reference_ready);
        assert_eq!(report.window_queries, 0);
        // The same mix again stays below every threshold.
        for i in 0..20 {
            monitor.observe(&format!("red shoes {i}"), &unit(&[1.0, 0.2]), Some(0.7));
        }
        let report = monitor.report("base");
        assert_eq!(report.window_queries, 20);
        assert_eq!(report.novel_share, Some(0.0));
        assert!(!report.retraining_recommended, "{report:?}");
        // A shifted mix passes them, with examples.
        for i in 0..20 {
            monitor.observe(&format!("SKU-{i}"), &unit(&[0.0, 1.0]), Some(0.1));
        }
        let report = monitor.report("base");
        assert!(report.retraining_recommended);
        assert_eq!(report.evidence.len(), 3, "{:?}", report.evidence);
        assert!(
            report.evidence[0].contains("\"SKU-19\""),
            "{:?}",
            report.evidence
        );
        assert_eq!(monitor.gauges()[4], 1.0);
        assert_eq!(monitor.gauges()[3], 20.0);
    }

    #[test]
    fn a_card_reference_measures_waiting_searches_once_embedded() {
        let queries = vec!["red shoes".to_string(), "blue boots".to_string()];
        let monitor = DriftMonitor::new(small(), Some(&queries));
        monitor.observe("green sandals", &unit(&[0.0, 1.0]), None);
        let report = monitor.report("tuned");
        assert!(!report.reference_ready);
        assert_eq!(report.novel_share, None);
        assert_eq!(report.unseen_word_share, Some(1.0));
        monitor.set_reference_vectors(vec![unit(&[1.0, 0.0]), unit(&[1.0, 1.0])]);
        let report = monitor.report("tuned");
        assert_eq!(report.novel_share, Some(0.0), "cos 0.707 ≥ 0.6");
        // Too few searches to recommend anything.
        assert!(!report.retraining_recommended);
    }

    #[test]
    fn settings_are_checked() {
        assert!(DriftSettings::default().validate().is_ok());
        let bad = DriftSettings {
            max_novel_share: 1.5,
            ..DriftSettings::default()
        };
        assert!(bad.validate().unwrap_err().contains("max_novel_share"));
        let bad = DriftSettings {
            min_queries: 600,
            ..DriftSettings::default()
        };
        assert!(bad.validate().is_err());
    }
}
