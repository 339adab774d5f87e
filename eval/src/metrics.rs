//! Retrieval metrics, per query and averaged, under two sets of definitions.
//!
//! [`Definitions::TrecEval`] (the default) follows trec_eval as pytrec_eval computes it:
//! - a document is relevant when its grade is ≥ 1; nDCG uses the grades as gains (grades ≤ 0
//!   give 0), discount `log2(rank + 1)`, and the ideal ranking of *all* judged documents;
//! - the ranking is sorted by score, descending, ties by document id descending (trec_eval's
//!   order);
//! - `map@k` divides by the number of relevant documents; `map` and `mrr` (trec_eval's
//!   `recip_rank`) use the whole ranking.
//!
//! [`Definitions::SentenceTransformers`] follows `InformationRetrievalEvaluator.compute_metrics`:
//! binary relevance (grade > 0), nDCG with gains of 1 and an ideal of `min(k, #relevant)` ones,
//! `map@k` divided by `min(k, #relevant)`, ties by document id ascending, and no uncut metrics.
//!
//! Under both, `precision@k` divides by k, `recall@k` by the number of relevant documents,
//! `mrr@k` is the reciprocal rank of the first relevant document within k (else 0), and `hit@k`
//! (sentence-transformers' `accuracy@k`) is 1 when any relevant document is within k.
//!
//! Evaluated queries: those with at least one relevant judgment and a ranking (possibly empty).
//! The mean of each metric is over those queries (trec_eval without `-c`).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::data::{Qrels, Run, ScoredDoc};
use crate::error::{EvalError, Result};

/// Which tool's metric definitions to follow (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Definitions {
    /// trec_eval / pytrec_eval: graded nDCG, MAP over all relevant, ties by id descending.
    #[default]
    TrecEval,
    /// sentence-transformers' InformationRetrievalEvaluator: binary relevance, MAP@k over
    /// min(k, #relevant), ties by id ascending.
    SentenceTransformers,
}

impl fmt::Display for Definitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TrecEval => "trec_eval",
            Self::SentenceTransformers => "sentence_transformers",
        })
    }
}

/// A kind of metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricKind {
    /// Normalized discounted cumulative gain.
    Ndcg,
    /// Mean average precision.
    Map,
    /// Share of the relevant documents retrieved.
    Recall,
    /// Share of the retrieved documents that are relevant.
    Precision,
    /// Reciprocal rank of the first relevant document.
    Mrr,
    /// Whether any relevant document is retrieved (sentence-transformers' accuracy).
    Hit,
}

impl MetricKind {
    /// Every kind, in report order.
    pub const ALL: [MetricKind; 6] = [
        MetricKind::Ndcg,
        MetricKind::Map,
        MetricKind::Recall,
        MetricKind::Precision,
        MetricKind::Mrr,
        MetricKind::Hit,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ndcg => "ndcg",
            Self::Map => "map",
            Self::Recall => "recall",
            Self::Precision => "precision",
            Self::Mrr => "mrr",
            Self::Hit => "hit",
        }
    }
}

/// A metric at a cutoff (`ndcg@10`), or over the whole ranking (`map`, `mrr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricName {
    /// The kind.
    pub kind: MetricKind,
    /// The rank cutoff; `None` means the whole ranking.
    pub cutoff: Option<usize>,
}

impl MetricName {
    /// `kind@k`.
    pub const fn at(kind: MetricKind, k: usize) -> Self {
        Self {
            kind,
            cutoff: Some(k),
        }
    }

    /// nDCG@10, the headline metric of reports and of the gate.
    pub const NDCG_10: Self = Self::at(MetricKind::Ndcg, 10);
}

impl fmt::Display for MetricName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cutoff {
            Some(k) => write!(f, "{}@{k}", self.kind.label()),
            None => f.write_str(self.kind.label()),
        }
    }
}

impl Serialize for MetricName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// Which definitions to follow. Default: trec_eval's.
    pub definitions: Definitions,
    /// Rank cutoffs, each ≥ 1. Default: 1, 3, 5, 10, 100.
    pub cutoffs: Vec<usize>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            definitions: Definitions::TrecEval,
            cutoffs: vec![1, 3, 5, 10, 100],
        }
    }
}

impl MetricsSettings {
    /// The metric columns these settings produce, in report order: each kind at each cutoff,
    /// then (trec_eval only) the uncut `map` and `mrr`.
    pub fn metric_names(&self) -> Vec<MetricName> {
        let mut cutoffs = self.cutoffs.clone();
        cutoffs.sort_unstable();
        cutoffs.dedup();
        let mut names: Vec<MetricName> = MetricKind::ALL
            .iter()
            .flat_map(|kind| cutoffs.iter().map(|k| MetricName::at(*kind, *k)))
            .collect();
        if self.definitions == Definitions::TrecEval {
            names.push(MetricName {
                kind: MetricKind::Map,
                cutoff: None,
            });
            names.push(MetricName {
                kind: MetricKind::Mrr,
                cutoff: None,
            });
        }
        names
    }

    /// The deepest cutoff: how many documents a retriever must return per query.
    pub fn depth(&self) -> usize {
        self.cutoffs.iter().copied().max().unwrap_or(0)
    }

    fn validate(&self) -> Result<()> {
        if self.cutoffs.is_empty() || self.cutoffs.contains(&0) {
            return Err(EvalError::InvalidSetting {
                name: "k",
                problem: format!("cutoffs must be ≥ 1 and not empty, got {:?}", self.cutoffs),
            });
        }
        Ok(())
    }
}

/// One query's metric values, aligned with [`Evaluation::metrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueryMetrics {
    /// Query id.
    pub query_id: String,
    /// Number of relevant documents judged for it.
    pub relevant: usize,
    /// Values, one per metric column.
    pub values: Vec<f64>,
}

/// The result of scoring a run against qrels.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Definitions used.
    pub definitions: Definitions,
    /// Metric columns.
    pub metrics: Vec<MetricName>,
    /// Per evaluated query, in query-id order.
    pub per_query: Vec<QueryMetrics>,
    /// Mean over the evaluated queries, one per metric column.
    pub mean: Vec<f64>,
    /// Judged queries (with a relevant document) that have no ranking in the run: left out.
    pub judged_without_ranking: usize,
    /// Ranked queries without any relevant judgment: left out.
    pub ranked_without_judgment: usize,
}

impl Evaluation {
    /// Column index of a metric.
    pub fn column(&self, name: MetricName) -> Option<usize> {
        self.metrics.iter().position(|m| *m == name)
    }

    /// The mean of a metric, if it was computed.
    pub fn mean_of(&self, name: MetricName) -> Option<f64> {
        self.column(name).map(|c| self.mean[c])
    }

    /// Warnings about left-out queries, naming `source`.
    pub fn warnings(&self, source: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.judged_without_ranking > 0 {
            out.push(format!(
                "{source}: {} judged queries have no ranking in the run and are left out",
                self.judged_without_ranking
            ));
        }
        if self.ranked_without_judgment > 0 {
            out.push(format!(
                "{source}: {} ranked queries have no relevant judgment and are left out",
                self.ranked_without_judgment
            ));
        }
        out
    }
}

/// Scores `run` against `qrels`.
pub fn evaluate(run: &Run, qrels: &Qrels, settings: &MetricsSettings) -> Result<Evaluation> {
    settings.validate()?;
    let metrics = settings.metric_names();
    let mut per_query = Vec::new();
    let mut judged_without_ranking = 0;
    for (query_id, judgments) in qrels.iter() {
        if !judgments.values().any(|g| *g > 0) {
            continue;
        }
        let Some(ranking) = run.get(query_id) else {
            judged_without_ranking += 1;
            continue;
        };
        let values = score_query(ranking, judgments, &metrics, settings.definitions);
        per_query.push(QueryMetrics {
            query_id: query_id.to_string(),
            relevant: judgments.values().filter(|g| **g > 0).count(),
            values,
        });
    }
    let ranked_without_judgment = run.keys().filter(|q| qrels.relevant_count(q) == 0).count();
    if per_query.is_empty() {
        return Err(EvalError::Empty(format!(
            "no query has both a relevant judgment and a ranking ({} judged, {} ranked)",
            qrels.len(),
            run.len()
        )));
    }
    let mean = (0..metrics.len())
        .map(|c| per_query.iter().map(|q| q.values[c]).sum::<f64>() / per_query.len() as f64)
        .collect();
    Ok(Evaluation {
        definitions: settings.definitions,
        metrics,
        per_query,
        mean,
        judged_without_ranking,
        ranked_without_judgment,
    })
}

/// Orders a ranking as the definitions' tool does: score descending, then document id
/// descending (trec_eval) or ascending (sentence-transformers).
fn ranked_order(ranking: &[ScoredDoc], definitions: Definitions) -> Vec<&ScoredDoc> {
    let mut order: Vec<&ScoredDoc> = ranking.iter().collect();
    order.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| match definitions {
                Definitions::TrecEval => b.doc_id.cmp(&a.doc_id),
                Definitions::SentenceTransformers => a.doc_id.cmp(&b.doc_id),
            })
    });
    order
}

/// Discount of 1-based rank `rank`: `1 / log2(rank + 1)`.
fn discount(rank: usize) -> f64 {
    1.0 / ((rank + 1) as f64).log2()
}

fn score_query(
    ranking: &[ScoredDoc],
    judgments: &HashMap<String, i32>,
    metrics: &[MetricName],
    definitions: Definitions,
) -> Vec<f64> {
    let binary = definitions == Definitions::SentenceTransformers;
    // Gains in rank order; relevant means gain > 0 under both definitions.
    let gains: Vec<f64> = ranked_order(ranking, definitions)
        .iter()
        .map(|d| {
            let grade = judgments.get(&d.doc_id).copied().unwrap_or(0).max(0) as f64;
            if binary {
                grade.min(1.0)
            } else {
                grade
            }
        })
        .collect();
    let mut ideal: Vec<f64> = judgments
        .values()
        .filter(|g| **g > 0)
        .map(|g| if binary { 1.0 } else { *g as f64 })
        .collect();
    ideal.sort_by(|a, b| b.partial_cmp(a).unwrap_or(Ordering::Equal));
    let num_relevant = ideal.len();

    // Running sums over the ranking, read off at each cutoff.
    let relevant_within = |k: usize| gains.iter().take(k).filter(|g| **g > 0.0).count();
    let first_relevant = gains.iter().position(|g| *g > 0.0).map(|i| i + 1);
    let precision_sum_within = |k: usize| {
        let mut hits = 0usize;
        let mut sum = 0.0;
        for (i, g) in gains.iter().take(k).enumerate() {
            if *g > 0.0 {
                hits += 1;
                sum += hits as f64 / (i + 1) as f64;
            }
        }
        sum
    };
    let dcg = |gains: &[f64], k: usize| {
        gains
            .iter()
            .take(k)
            .enumerate()
            .map(|(i, g)| g * discount(i + 1))
            .sum::<f64>()
    };

    metrics
        .iter()
        .map(|metric| {
            let k = metric.cutoff.unwrap_or(usize::MAX);
            match metric.kind {
                MetricKind::Ndcg => {
                    let ideal_dcg = dcg(&ideal, k);
                    if ideal_dcg > 0.0 {
                        dcg(&gains, k) / ideal_dcg
                    } else {
                        0.0
                    }
                }
                MetricKind::Map => {
                    let denominator = if binary {
                        num_relevant.min(k)
                    } else {
                        num_relevant
                    };
                    precision_sum_within(k) / denominator as f64
                }
                MetricKind::Recall => relevant_within(k) as f64 / num_relevant as f64,
                MetricKind::Precision => relevant_within(k) as f64 / k as f64,
                MetricKind::Mrr => match first_relevant {
                    Some(rank) if rank <= k => 1.0 / rank as f64,
                    _ => 0.0,
                },
                MetricKind::Hit => f64::from(u8::from(relevant_within(k) > 0)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(query: &str, docs: &[(&str, f64)]) -> Run {
        let mut run = Run::new();
        run.insert(
            query.to_string(),
            docs.iter()
                .map(|(d, s)| ScoredDoc {
                    doc_id: d.to_string(),
                    score: *s,
                })
                .collect(),
        );
        run
    }

    fn qrels_of(query: &str, judged: &[(&str, i32)]) -> Qrels {
        let mut qrels = Qrels::default();
        for (d, g) in judged {
            qrels.insert(query, d, *g);
        }
        qrels
    }

    fn value(e: &Evaluation, name: &str) -> f64 {
        let c = e
            .metrics
            .iter()
            .position(|m| m.to_string() == name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        e.mean[c]
    }

    #[test]
    fn hand_computed_values() {
        // Ranking: a(rel 2), b(0), c(rel 1), d(unjudged); relevant: a, c, e (e never retrieved).
        let run = run_of("q", &[("b", 0.9), ("a", 1.0), ("c", 0.8), ("d", 0.7)]);
        let qrels = qrels_of("q", &[("a", 2), ("b", 0), ("c", 1), ("e", 3)]);
        let settings = MetricsSettings {
            definitions: Definitions::TrecEval,
            cutoffs: vec![1, 3],
        };
        let e = evaluate(&run, &qrels, &settings).unwrap();
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        close(value(&e, "precision@3"), 2.0 / 3.0);
        close(value(&e, "recall@3"), 2.0 / 3.0);
        close(value(&e, "hit@1"), 1.0);
        close(value(&e, "mrr@1"), 1.0);
        // AP@3 = (1/1 + 2/3) / 3 relevant.
        close(value(&e, "map@3"), (1.0 + 2.0 / 3.0) / 3.0);
        // DCG@3 = 2/log2(2) + 1/log2(4); ideal: 3, 2, 1.
        let dcg = 2.0 + 1.0 / 2.0;
        let idcg = 3.0 + 2.0 / 3f64.log2() + 1.0 / 2.0;
        close(value(&e, "ndcg@3"), dcg / idcg);
        close(value(&e, "ndcg@1"), 2.0 / 3.0);

        let st = evaluate(
            &run,
            &qrels,
            &MetricsSettings {
                definitions: Definitions::SentenceTransformers,
                cutoffs: vec![1, 3],
            },
        )
        .unwrap();
        // Binary: DCG@3 = 1 + 1/2; ideal = 3 ones.
        close(value(&st, "ndcg@3"), 1.5 / (1.0 + 1.0 / 3f64.log2() + 0.5));
        // MAP@1 divides by min(1, 3) = 1.
        close(value(&st, "map@1"), 1.0);
        assert!(st.metrics.iter().all(|m| m.cutoff.is_some()));
    }

    #[test]
    fn ties_follow_each_tools_order() {
        let run = run_of("q", &[("a", 1.0), ("b", 1.0)]);
        let qrels = qrels_of("q", &[("a", 1)]);
        let settings = |definitions| MetricsSettings {
            definitions,
            cutoffs: vec![1],
        };
        let trec = evaluate(&run, &qrels, &settings(Definitions::TrecEval)).unwrap();
        let st = evaluate(&run, &qrels, &settings(Definitions::SentenceTransformers)).unwrap();
        assert_eq!(value(&trec, "hit@1"), 0.0, "trec_eval puts b before a");
        assert_eq!(
            value(&st, "hit@1"),
            1.0,
            "sentence-transformers puts a before b"
        );
    }

    #[test]
    fn left_out_queries_are_counted() {
        let mut run = run_of("q1", &[("a", 1.0)]);
        run.insert("unjudged".into(), vec![]);
        let mut qrels = qrels_of("q1", &[("a", 1)]);
        qrels.insert("q2", "a", 1);
        qrels.insert("q3", "a", 0);
        let e = evaluate(&run, &qrels, &MetricsSettings::default()).unwrap();
        assert_eq!(e.per_query.len(), 1);
        assert_eq!(e.judged_without_ranking, 1);
        assert_eq!(e.ranked_without_judgment, 1);
        assert_eq!(e.warnings("r").len(), 2);
    }

    #[test]
    fn empty_and_invalid_inputs_are_errors() {
        let qrels = qrels_of("q", &[("a", 1)]);
        assert!(matches!(
            evaluate(&Run::new(), &qrels, &MetricsSettings::default()),
            Err(EvalError::Empty(_))
        ));
        let bad = MetricsSettings {
            cutoffs: vec![0],
            ..Default::default()
        };
        assert!(evaluate(&run_of("q", &[]), &qrels, &bad).is_err());
    }

    #[test]
    fn names_print_like_the_cli_spells_them() {
        let names = MetricsSettings::default().metric_names();
        assert_eq!(names[0].to_string(), "ndcg@1");
        assert!(names.contains(&MetricName::NDCG_10));
        assert_eq!(names.last().unwrap().to_string(), "mrr");
    }
}
