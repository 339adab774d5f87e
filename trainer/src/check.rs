//! `attune data check`: what is wrong with training data, before any training.
//!
//! Fatal findings make training refuse the data:
//! - no pairs at all;
//! - an empty or whitespace-only query, positive or negative;
//! - one text used both as a positive and as a negative for the same query (a contradiction the
//!   loss would be asked to learn);
//! - a training query that also appears in the test data (leakage: the evaluation would measure
//!   memory).
//!
//! Warnings: exact duplicate pairs, a query identical to its positive, rows skipped while loading
//! (unknown ids), and the share of texts longer than the maximum sequence length (they are
//! truncated in training).

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::data::{Location, TrainingData};
use crate::error::Result;

/// How findings are reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSettings {
    /// Locations listed per finding. Default 5.
    pub samples: usize,
    /// Report leakage into the test data as a warning instead of a fatal problem (for data
    /// sets whose splits share queries by design). Default false.
    pub allow_leakage: bool,
}

impl Default for CheckSettings {
    fn default() -> Self {
        Self {
            samples: 5,
            allow_leakage: false,
        }
    }
}

/// Whether a finding stops training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Training refuses the data.
    Fatal,
    /// Reported; training goes on.
    Warning,
}

/// One kind of problem, with how often it occurs and where.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Stable identifier (`empty_text`, `leakage`, ...).
    pub code: &'static str,
    /// Whether it is fatal.
    pub severity: Severity,
    /// How many pairs (or texts) it concerns.
    pub count: usize,
    /// What it is, in a sentence.
    pub message: String,
    /// Up to [`CheckSettings::samples`] places, as `file:line`.
    pub samples: Vec<String>,
}

/// Counts of the data.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DataCounts {
    /// Pairs.
    pub pairs: usize,
    /// Distinct query texts.
    pub queries: usize,
    /// Distinct positive texts.
    pub positives: usize,
    /// Hard negatives, over all pairs.
    pub negatives: usize,
    /// Pairs in the test data, when given.
    pub test_pairs: Option<usize>,
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// Counts.
    pub counts: DataCounts,
    /// Findings, fatal first.
    pub findings: Vec<Finding>,
    /// Share of distinct texts longer than the maximum sequence length, when measured.
    pub long_text_share: Option<f64>,
}

impl CheckReport {
    /// Whether any finding is fatal.
    pub fn is_fatal(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Fatal)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "pairs {}, distinct queries {}, distinct positives {}, hard negatives {}{}",
            c.pairs,
            c.queries,
            c.positives,
            c.negatives,
            c.test_pairs
                .map(|n| format!(", test pairs {n}"))
                .unwrap_or_default()
        )?;
        if let Some(share) = self.long_text_share {
            writeln!(
                f,
                "texts longer than the maximum sequence length: {:.1}%",
                100.0 * share
            )?;
        }
        for finding in &self.findings {
            writeln!(
                f,
                "[{}] {}",
                match finding.severity {
                    Severity::Fatal => "fatal",
                    Severity::Warning => "warning",
                },
                finding.message
            )?;
            for sample in &finding.samples {
                writeln!(f, "    at {sample}")?;
            }
        }
        let fatal = self
            .findings
            .iter()
            .filter(|x| x.severity == Severity::Fatal)
            .count();
        if fatal == 0 {
            writeln!(f, "ok: no fatal problem")
        } else {
            writeln!(
                f,
                "refused: {fatal} fatal problem{}; training would not start",
                if fatal == 1 { "" } else { "s" }
            )
        }
    }
}

/// Collects locations of one kind of problem.
struct Collector {
    code: &'static str,
    severity: Severity,
    count: usize,
    samples: Vec<String>,
    limit: usize,
}

impl Collector {
    fn new(code: &'static str, severity: Severity, limit: usize) -> Self {
        Self {
            code,
            severity,
            count: 0,
            samples: Vec::new(),
            limit,
        }
    }

    fn hit(&mut self, location: &Location, detail: impl FnOnce() -> String) {
        self.count += 1;
        if self.samples.len() < self.limit {
            self.samples.push(format!("{location} ({})", detail()));
        }
    }

    fn finish(self, message: impl FnOnce(usize) -> String) -> Option<Finding> {
        (self.count > 0).then(|| Finding {
            code: self.code,
            severity: self.severity,
            count: self.count,
            message: message(self.count),
            samples: self.samples,
        })
    }
}

fn preview(text: &str) -> String {
    let trimmed: String = text.trim().chars().take(60).collect();
    if trimmed.len() < text.trim().len() {
        format!("{trimmed:?}…")
    } else {
        format!("{trimmed:?}")
    }
}

/// Says for each text whether it is longer than the maximum sequence length.
pub type TruncationProbe<'a> = &'a dyn Fn(&[&str]) -> Result<Vec<bool>>;

/// Checks `train` (and its leakage into `test`). `truncated`, when given, measures the share of
/// distinct texts longer than the maximum sequence length.
pub fn check(
    train: &TrainingData,
    test: Option<&TrainingData>,
    truncated: Option<TruncationProbe<'_>>,
    settings: &CheckSettings,
) -> Result<CheckReport> {
    let limit = settings.samples;
    let mut findings = Vec::new();
    let pairs = &train.pairs;

    if pairs.is_empty() {
        findings.push(Finding {
            code: "empty_dataset",
            severity: Severity::Fatal,
            count: 0,
            message: format!("{}: no training pairs", train.source.display()),
            samples: Vec::new(),
        });
    }

    let mut empty = Collector::new("empty_text", Severity::Fatal, limit);
    let mut duplicate = Collector::new("duplicate_pair", Severity::Warning, limit);
    let mut same = Collector::new("query_equals_positive", Severity::Warning, limit);
    let mut contradiction = Collector::new("positive_is_negative", Severity::Fatal, limit);
    let mut seen_pairs: HashMap<(&str, &str), &Location> = HashMap::new();
    let mut positives_of: HashMap<&str, HashSet<&str>> = HashMap::new();
    for pair in pairs {
        positives_of
            .entry(pair.query.trim())
            .or_default()
            .insert(pair.positive.trim());
    }
    for pair in pairs {
        let (query, positive) = (pair.query.trim(), pair.positive.trim());
        if query.is_empty() {
            empty.hit(&pair.location, || "query".into());
        } else if positive.is_empty() {
            empty.hit(&pair.location, || "positive".into());
        } else if let Some(i) = pair.negatives.iter().position(|n| n.trim().is_empty()) {
            empty.hit(&pair.location, || format!("negatives[{i}]"));
        }
        if let Some(first) = seen_pairs.insert((query, positive), &pair.location) {
            let first = first.clone();
            duplicate.hit(&pair.location, || format!("first at line {}", first.line));
        }
        if !query.is_empty() && query == positive {
            same.hit(&pair.location, || preview(query));
        }
        let positives = &positives_of[query];
        if let Some(n) = pair
            .negatives
            .iter()
            .find(|n| !n.trim().is_empty() && positives.contains(n.trim()))
        {
            contradiction.hit(&pair.location, || preview(n));
        }
    }
    findings.extend(empty.finish(|n| {
        format!("{n} pairs have an empty or whitespace-only query, positive or negative")
    }));
    findings.extend(contradiction.finish(|n| {
        format!("{n} pairs list as a negative a text that is a positive of the same query")
    }));

    if let Some(test) = test {
        let test_queries: HashSet<&str> = test.pairs.iter().map(|p| p.query.trim()).collect();
        let severity = if settings.allow_leakage {
            Severity::Warning
        } else {
            Severity::Fatal
        };
        let mut leak = Collector::new("leakage", severity, limit);
        let mut leaked: HashSet<&str> = HashSet::new();
        for pair in pairs {
            let query = pair.query.trim();
            if !query.is_empty() && test_queries.contains(query) && leaked.insert(query) {
                leak.hit(&pair.location, || preview(query));
            }
        }
        findings.extend(leak.finish(|n| {
            format!(
                "{n} training queries also appear in the test data {} (leakage)",
                test.source.display()
            )
        }));
    }

    findings.extend(duplicate.finish(|n| format!("{n} exact duplicate (query, positive) pairs")));
    findings.extend(same.finish(|n| format!("{n} pairs have a query identical to its positive")));
    let mut skipped = Collector::new("skipped_rows", Severity::Warning, limit);
    for s in &train.skipped {
        skipped.hit(&s.location, || s.reason.clone());
    }
    findings.extend(skipped.finish(|n| format!("{n} qrels rows could not become pairs")));

    let long_text_share = match truncated {
        Some(probe) if !pairs.is_empty() => {
            let mut texts: Vec<&str> = pairs
                .iter()
                .flat_map(|p| {
                    std::iter::once(p.query.as_str())
                        .chain(std::iter::once(p.positive.as_str()))
                        .chain(p.negatives.iter().map(String::as_str))
                })
                .collect();
            texts.sort_unstable();
            texts.dedup();
            let flags = probe(&texts)?;
            Some(flags.iter().filter(|t| **t).count() as f64 / texts.len() as f64)
        }
        _ => None,
    };

    let distinct = |f: fn(&crate::data::TrainingPair) -> &str| {
        pairs.iter().map(f).collect::<HashSet<&str>>().len()
    };
    Ok(CheckReport {
        counts: DataCounts {
            pairs: pairs.len(),
            queries: distinct(|p| p.query.as_str()),
            positives: distinct(|p| p.positive.as_str()),
            negatives: pairs.iter().map(|p| p.negatives.len()).sum(),
            test_pairs: test.map(|t| t.pairs.len()),
        },
        findings,
        long_text_share,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TrainingPair;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn data(rows: &[(&str, &str, &[&str])]) -> TrainingData {
        let path = Arc::new(PathBuf::from("pairs.jsonl"));
        TrainingData {
            source: PathBuf::from("pairs.jsonl"),
            pairs: rows
                .iter()
                .enumerate()
                .map(|(i, (q, p, n))| TrainingPair {
                    source: None,
                    query: q.to_string(),
                    positive: p.to_string(),
                    negatives: n.iter().map(|s| s.to_string()).collect(),
                    grade: 1,
                    weight: 1.0,
                    location: Location {
                        path: path.clone(),
                        line: i + 1,
                    },
                })
                .collect(),
            skipped: Vec::new(),
        }
    }

    fn codes(report: &CheckReport) -> Vec<&'static str> {
        report.findings.iter().map(|f| f.code).collect()
    }

    #[test]
    fn clean_data_passes() {
        let train = data(&[
            ("red shoes", "Red running shoes", &["Blue boots"]),
            ("usb hub", "USB-C hub", &[]),
        ]);
        let report = check(&train, None, None, &Default::default()).unwrap();
        assert!(report.findings.is_empty(), "{report}");
        assert!(!report.is_fatal());
        assert_eq!(report.counts.pairs, 2);
        assert_eq!(report.counts.negatives, 1);
        assert!(report.to_string().contains("ok: no fatal problem"));
    }

    #[test]
    fn every_problem_is_found_with_its_line() {
        let train = data(&[
            ("red shoes", "Red running shoes", &[]),
            ("  ", "something", &[]),
            ("red shoes", "Red running shoes", &[]),
            ("same text", "same text", &[]),
            ("red shoes", "Leather boots", &["Red running shoes"]),
            ("hub", "USB hub", &[" "]),
            ("leaked query", "doc", &[]),
        ]);
        let test = data(&[("leaked query", "other doc", &[])]);
        let report = check(&train, Some(&test), None, &Default::default()).unwrap();
        assert_eq!(
            codes(&report),
            vec![
                "empty_text",
                "positive_is_negative",
                "leakage",
                "duplicate_pair",
                "query_equals_positive"
            ]
        );
        let find = |code| report.findings.iter().find(|f| f.code == code).unwrap();
        assert_eq!(find("empty_text").count, 2);
        assert!(find("empty_text").samples[0].starts_with("pairs.jsonl:2 (query)"));
        assert!(find("empty_text").samples[1].starts_with("pairs.jsonl:6 (negatives[0])"));
        assert!(find("duplicate_pair").samples[0].contains("pairs.jsonl:3 (first at line 1)"));
        assert!(find("positive_is_negative").samples[0].starts_with("pairs.jsonl:5"));
        assert!(find("leakage").samples[0].starts_with("pairs.jsonl:7"));
        assert!(report.is_fatal());
        assert!(report.to_string().contains("refused: 3 fatal problems"));
        // Allowed leakage is still reported, as a warning.
        let clean = data(&[("leaked query", "doc", &[]), ("other", "text", &[])]);
        let settings = CheckSettings {
            allow_leakage: true,
            ..Default::default()
        };
        let report = check(&clean, Some(&test), None, &settings).unwrap();
        assert_eq!(codes(&report), vec!["leakage"]);
        assert_eq!(report.findings[0].severity, Severity::Warning);
        assert!(!report.is_fatal());
        let report = check(&clean, Some(&test), None, &Default::default()).unwrap();
        assert!(report.is_fatal());
    }

    #[test]
    fn an_empty_dataset_is_fatal() {
        let report = check(&data(&[]), None, None, &Default::default()).unwrap();
        assert_eq!(codes(&report), vec!["empty_dataset"]);
        assert!(report.is_fatal());
    }

    #[test]
    fn long_texts_are_measured_over_distinct_texts() {
        let train = data(&[
            ("q", "a long document", &[]),
            ("q2", "a long document", &["short"]),
        ]);
        let probe = |texts: &[&str]| -> Result<Vec<bool>> {
            Ok(texts.iter().map(|t| t.len() > 5).collect())
        };
        let report = check(&train, None, Some(&probe), &Default::default()).unwrap();
        // Distinct texts: q, q2, "a long document", "short": one of four is long.
        assert_eq!(report.long_text_share, Some(0.25));
    }
}
