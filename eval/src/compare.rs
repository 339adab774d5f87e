//! Paired comparison of two models on the same queries: wins, ties and losses, a bootstrap 95%
//! confidence interval for the mean per-query delta, and a two-sided paired randomization
//! (sign-flip) test. Both resampling procedures are seeded, so a report is reproducible.

use std::collections::HashMap;

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::metrics::{Evaluation, MetricName};

/// How the comparison resamples.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonSettings {
    /// Bootstrap resamples and random sign flips, each. Default 10,000.
    pub resamples: usize,
    /// Seed of both procedures. Default 42.
    pub seed: u64,
    /// A per-query |delta| at most this large is a tie. Default 1e-9.
    pub tie_tolerance: f64,
}

impl Default for ComparisonSettings {
    fn default() -> Self {
        Self {
            resamples: 10_000,
            seed: 42,
            tie_tolerance: 1e-9,
        }
    }
}

/// One query's values under both models.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryDelta {
    /// Query id.
    pub query_id: String,
    /// The baseline's value.
    pub baseline: f64,
    /// The candidate's value.
    pub candidate: f64,
    /// `candidate - baseline`.
    pub delta: f64,
}

/// The result of [`compare`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedComparison {
    /// The compared metric.
    pub metric: MetricName,
    /// Queries evaluated by both models.
    pub queries: usize,
    /// The baseline's mean over those queries.
    pub baseline_mean: f64,
    /// The candidate's mean over those queries.
    pub candidate_mean: f64,
    /// `candidate_mean - baseline_mean`.
    pub mean_delta: f64,
    /// Bootstrap 95% percentile interval of the mean delta: (2.5th, 97.5th percentile).
    pub ci95: (f64, f64),
    /// Two-sided p-value of the paired randomization test (null: the delta's sign is random).
    pub p_value: f64,
    /// Queries where the candidate is better by more than the tie tolerance.
    pub wins: usize,
    /// Queries within the tie tolerance.
    pub ties: usize,
    /// Queries where the candidate is worse by more than the tie tolerance.
    pub losses: usize,
    /// Resamples used by each procedure.
    pub resamples: usize,
    /// Per-query values, in query-id order.
    pub per_query: Vec<QueryDelta>,
}

/// Compares `candidate` with `baseline` on `metric` over the queries both evaluated.
pub fn compare(
    baseline: &Evaluation,
    candidate: &Evaluation,
    metric: MetricName,
    settings: &ComparisonSettings,
) -> Result<PairedComparison> {
    let column = |e: &Evaluation| {
        e.column(metric).ok_or_else(|| EvalError::InvalidSetting {
            name: "k",
            problem: format!("{metric} was not computed; include its cutoff"),
        })
    };
    let (base_col, cand_col) = (column(baseline)?, column(candidate)?);
    let base_by_query: HashMap<&str, f64> = baseline
        .per_query
        .iter()
        .map(|q| (q.query_id.as_str(), q.values[base_col]))
        .collect();
    let per_query: Vec<QueryDelta> = candidate
        .per_query
        .iter()
        .filter_map(|q| {
            let base = *base_by_query.get(q.query_id.as_str())?;
            let cand = q.values[cand_col];
            Some(QueryDelta {
                query_id: q.query_id.clone(),
                baseline: base,
                candidate: cand,
                delta: cand - base,
            })
        })
        .collect();
    if per_query.is_empty() {
        return Err(EvalError::Empty(
            "the two evaluations share no query".to_string(),
        ));
    }
    let n = per_query.len();
    let deltas: Vec<f64> = per_query.iter().map(|q| q.delta).collect();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let mean_delta = mean(&deltas);

    let tol = settings.tie_tolerance;
    let wins = deltas.iter().filter(|d| **d > tol).count();
    let losses = deltas.iter().filter(|d| **d < -tol).count();

    let resamples = settings.resamples.max(1);
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut boot: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| deltas[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    boot.sort_by(f64::total_cmp);
    let percentile =
        |p: f64| boot[((p * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    let ci95 = (percentile(0.025), percentile(0.975));

    let observed = mean_delta.abs();
    let mut extreme = 0usize;
    for _ in 0..resamples {
        let flipped: f64 = deltas
            .iter()
            .map(|d| if rng.random::<bool>() { *d } else { -*d })
            .sum::<f64>()
            / n as f64;
        if flipped.abs() >= observed - 1e-12 {
            extreme += 1;
        }
    }
    let p_value = (extreme + 1) as f64 / (resamples + 1) as f64;

    Ok(PairedComparison {
        metric,
        queries: n,
        baseline_mean: mean(&per_query.iter().map(|q| q.baseline).collect::<Vec<_>>()),
        candidate_mean: mean(&per_query.iter().map(|q| q.candidate).collect::<Vec<_>>()),
        mean_delta,
        ci95,
        p_value,
        wins,
        ties: n - wins - losses,
        losses,
        resamples,
        per_query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Definitions, QueryMetrics};

    fn evaluation(values: &[f64]) -> Evaluation {
        Evaluation {
            definitions: Definitions::TrecEval,
            metrics: vec![MetricName::NDCG_10],
            per_query: values
                .iter()
                .enumerate()
                .map(|(i, v)| QueryMetrics {
                    query_id: format!("q{i:03}"),
                    relevant: 1,
                    values: vec![*v],
                })
                .collect(),
            mean: vec![values.iter().sum::<f64>() / values.len() as f64],
            judged_without_ranking: 0,
            ranked_without_judgment: 0,
        }
    }

    fn compare_ndcg(base: &[f64], cand: &[f64]) -> PairedComparison {
        compare(
            &evaluation(base),
            &evaluation(cand),
            MetricName::NDCG_10,
            &Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn identical_models_tie_everywhere() {
        let e = evaluation(&[0.1, 0.5, 0.9, 0.3]);
        let c = compare(&e, &e, MetricName::NDCG_10, &Default::default()).unwrap();
        assert_eq!((c.wins, c.ties, c.losses), (0, 4, 0));
        assert_eq!(c.mean_delta, 0.0);
        assert_eq!(c.ci95, (0.0, 0.0));
        assert_eq!(c.p_value, 1.0);
    }

    #[test]
    fn a_consistent_gain_is_significant_and_inside_its_interval() {
        let base: Vec<f64> = (0..60).map(|i| (i % 10) as f64 / 20.0).collect();
        let cand: Vec<f64> = base
            .iter()
            .enumerate()
            .map(|(i, b)| b + if i % 6 == 0 { -0.05 } else { 0.1 })
            .collect();
        let c = compare_ndcg(&base, &cand);
        assert_eq!((c.wins, c.ties, c.losses), (50, 0, 10));
        let expected = (50.0 * 0.1 - 10.0 * 0.05) / 60.0;
        assert!((c.mean_delta - expected).abs() < 1e-12);
        assert!(
            c.ci95.0 < c.mean_delta && c.mean_delta < c.ci95.1,
            "{:?}",
            c.ci95
        );
        assert!(c.ci95.0 > 0.0);
        assert!(c.p_value < 0.001, "p = {}", c.p_value);
        // Reproducible.
        let again = compare_ndcg(&base, &cand);
        assert_eq!(again, c);
    }

    #[test]
    fn noise_is_not_significant() {
        let base = vec![0.5; 40];
        let cand: Vec<f64> = (0..40)
            .map(|i| 0.5 + if i % 2 == 0 { 0.1 } else { -0.1 })
            .collect();
        let c = compare_ndcg(&base, &cand);
        assert!(c.p_value > 0.5, "p = {}", c.p_value);
        assert!(c.ci95.0 < 0.0 && c.ci95.1 > 0.0);
    }

    #[test]
    fn a_missing_metric_is_an_error() {
        let e = evaluation(&[0.5]);
        let other = MetricName::at(crate::metrics::MetricKind::Recall, 5);
        assert!(compare(&e, &e, other, &Default::default()).is_err());
    }
}
