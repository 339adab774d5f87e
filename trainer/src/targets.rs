//! Who is a negative of whom, and how much each pair weighs.
//!
//! With in-batch negatives, every other pair's positive is a negative of a query. On data where
//! one query has several judged positives and one document is judged relevant to several
//! queries (cranfield, product search), that pushes judged answers away from their queries. The
//! [`Judgments`] of the training data (every positive paired with each query, whatever the pair)
//! name, per batch, the candidates that must not be negatives of a query
//! ([`BatchTargets::excluded`]): in-batch positives, explicit and mined negatives alike. Masking
//! is a hash lookup per (query, candidate) cell, so it costs nothing next to the forward pass, and
//! the batch sampler stays as it is (no batch holds one query twice).
//!
//! Grades: a pair's loss weight is its own weight (from the pairs file; feedback-derived pairs
//! carry their evidence there) times its grade's factor under [`GradeWeighting`].
//!
//! Unjudged false negatives: with a [`GuideSettings`], a guide model (the base model by default)
//! embeds each batch once more, without gradients, and a candidate it scores above the query's
//! own positive minus a margin is masked too ([`GuideFilter`]; GISTEmbed, Solatorio 2024). That
//! costs one inference pass over the batch's texts per step.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use attune_model::{Encoder, Mode, TextKind};

use serde::{Deserialize, Serialize};

use crate::data::TrainingPair;
use crate::error::{Result, TrainError};
use crate::loss::BatchTargets;

/// How a positive's relevance grade weighs its pair in the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradeWeighting {
    /// Every judged positive weighs the same (sentence-transformers' MNRL; default).
    #[default]
    Uniform,
    /// A pair weighs `grade / highest grade in the training data`: on a 1–3 scale, a grade-1
    /// positive counts a third of a grade-3 one. Binary data (all grade 1) is unaffected.
    Linear,
}

impl std::str::FromStr for GradeWeighting {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "uniform" => Ok(Self::Uniform),
            "linear" => Ok(Self::Linear),
            _ => Err(TrainError::InvalidSetting {
                name: "grade-weighting",
                problem: format!("`{s}`: expected uniform or linear"),
            }),
        }
    }
}

impl std::fmt::Display for GradeWeighting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Uniform => "uniform",
            Self::Linear => "linear",
        })
    }
}

/// Settings of the batch targets. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSettings {
    /// Keep every text judged relevant to a query out of its negatives (default true). Off, the
    /// loss is sentence-transformers' MNRL, false negatives included.
    pub mask_judged_positives: bool,
    /// How grades weigh pairs (default [`GradeWeighting::Uniform`]).
    pub grade_weighting: GradeWeighting,
    /// Mask unjudged false negatives with a guide model (default `None`: off).
    pub guide: Option<GuideSettings>,
}

impl Default for TargetSettings {
    fn default() -> Self {
        Self {
            mask_judged_positives: true,
            grade_weighting: GradeWeighting::Uniform,
            guide: None,
        }
    }
}

/// The guide of [`GuideFilter`].
#[derive(Debug, Clone, PartialEq)]
pub struct GuideSettings {
    /// The guide model directory (`None`: the base model being trained, as loaded).
    pub model: Option<PathBuf>,
    /// A candidate is masked when the guide's cosine to the query exceeds the positive's
    /// minus this (default 0: anything the guide ranks above the positive).
    pub margin: f64,
}

/// A frozen guide model that masks the candidates it finds at least as relevant as a query's
/// own positive.
pub struct GuideFilter {
    encoder: Encoder,
    margin: f32,
}

impl GuideFilter {
    /// A filter with `encoder` (inference mode; its weights are never trained).
    pub fn new(encoder: Encoder, margin: f64) -> Self {
        Self {
            encoder,
            margin: margin as f32,
        }
    }

    /// `(query row, candidate column)` cells to mask: candidate `k ≠ i` whose guide cosine to
    /// query `i` is above that of candidate `i` (the query's positive) minus the margin.
    pub fn exclusions(&self, queries: &[&str], candidates: &[&str]) -> Result<Vec<(usize, usize)>> {
        let embed = |texts: &[&str], kind| -> Result<Vec<Vec<f32>>> {
            let tokenized = self.encoder.tokenize(texts, kind)?;
            let items: Vec<_> = tokenized.iter().collect();
            let rows = attune_model::pooling::l2_normalize(
                &self.encoder.forward_batch(&items, Mode::Inference)?,
            )?;
            Ok(rows.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
        };
        let q = embed(queries, TextKind::Query)?;
        let c = embed(candidates, TextKind::Document)?;
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let mut excluded = Vec::new();
        for (i, query) in q.iter().enumerate() {
            let threshold = dot(query, &c[i]) - self.margin;
            for (k, candidate) in c.iter().enumerate() {
                if k != i && dot(query, candidate) > threshold {
                    excluded.push((i, k));
                }
            }
        }
        Ok(excluded)
    }
}

/// A batch's candidates as the loss lays them out: the positives in batch order, then every
/// pair's negatives in batch order (candidate `i < batch.len()` is query `i`'s positive).
pub fn candidate_texts<'a>(pairs: &'a [TrainingPair], batch: &[usize]) -> Vec<&'a str> {
    batch
        .iter()
        .map(|&i| pairs[i].positive.as_str())
        .chain(
            batch
                .iter()
                .flat_map(|&i| pairs[i].negatives.iter().map(String::as_str)),
        )
        .collect()
}

/// Every text judged relevant to each query of the training data (trimmed texts).
#[derive(Debug, Clone, Default)]
pub struct Judgments {
    positives: HashMap<String, HashSet<String>>,
    highest_grade: u32,
}

impl Judgments {
    /// The judgments of `pairs`: each pair's positive is relevant to its query.
    pub fn from_pairs(pairs: &[TrainingPair]) -> Self {
        let mut positives: HashMap<String, HashSet<String>> = HashMap::new();
        for pair in pairs {
            positives
                .entry(pair.query.trim().to_string())
                .or_default()
                .insert(pair.positive.trim().to_string());
        }
        let highest_grade = pairs.iter().map(|p| p.grade).max().unwrap_or(1).max(1);
        Self {
            positives,
            highest_grade,
        }
    }

    /// Whether `text` is judged relevant to `query`.
    pub fn is_relevant(&self, query: &str, text: &str) -> bool {
        self.positives
            .get(query.trim())
            .is_some_and(|set| set.contains(text.trim()))
    }

    /// Queries with more than one judged positive.
    pub fn queries_with_several_positives(&self) -> usize {
        self.positives.values().filter(|s| s.len() > 1).count()
    }

    /// The targets of `batch` (indices into `pairs`), whose candidates are laid out by
    /// [`candidate_texts`].
    pub fn batch_targets(
        &self,
        pairs: &[TrainingPair],
        batch: &[usize],
        settings: &TargetSettings,
    ) -> BatchTargets {
        let candidates = candidate_texts(pairs, batch);
        let mut excluded = Vec::new();
        if settings.mask_judged_positives {
            for (row, &i) in batch.iter().enumerate() {
                let query = &pairs[i].query;
                for (col, text) in candidates.iter().enumerate() {
                    if col != row && self.is_relevant(query, text) {
                        excluded.push((row, col));
                    }
                }
            }
        }
        let unweighted = settings.grade_weighting == GradeWeighting::Uniform
            && batch.iter().all(|&i| pairs[i].weight == 1.0);
        let weights = if unweighted {
            Vec::new()
        } else {
            batch
                .iter()
                .map(|&i| pairs[i].weight * self.grade_factor(pairs[i].grade, settings))
                .collect()
        };
        BatchTargets { weights, excluded }
    }

    fn grade_factor(&self, grade: u32, settings: &TargetSettings) -> f32 {
        match settings.grade_weighting {
            GradeWeighting::Uniform => 1.0,
            GradeWeighting::Linear => grade.max(1) as f32 / self.highest_grade as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batches::{no_duplicate_batches, query_grouped_batches};
    use crate::data::Location;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn pair(query: &str, positive: &str, grade: u32, negatives: &[&str]) -> TrainingPair {
        let location = Location {
            path: Arc::new(PathBuf::from("p.jsonl")),
            line: 1,
        };
        TrainingPair {
            negatives: negatives.iter().map(|n| n.to_string()).collect(),
            grade,
            ..TrainingPair::new(query, positive, location)
        }
    }

    /// Overlapping judgments: 12 queries, 20 documents, each query relevant to 2–5 documents
    /// that other queries share, some hard negatives that are another query's positive.
    fn overlapping() -> Vec<TrainingPair> {
        let mut pairs = Vec::new();
        for q in 0..12 {
            for k in 0..(2 + q % 4) {
                let doc = (q * 3 + k * 7) % 20;
                let negative = format!("d{}", (doc + 1) % 20);
                let negatives: &[&str] = if k == 0 { &[] } else { &[negative.as_str()] };
                pairs.push(pair(
                    &format!("q{q}"),
                    &format!("d{doc}"),
                    1 + (k as u32 % 3),
                    negatives,
                ));
            }
        }
        pairs
    }

    #[test]
    fn no_judged_positive_of_an_anchor_is_ever_among_its_negatives() {
        let pairs = overlapping();
        let judgments = Judgments::from_pairs(&pairs);
        assert!(judgments.queries_with_several_positives() >= 10);
        let settings = TargetSettings::default();
        let mut masked = 0;
        // One pair of a query per batch, and up to 3 (its answers meet: the mask fires most).
        for (epoch, per_query) in (0..5).flat_map(|e| [(e, 1), (e, 3)]) {
            for batch in query_grouped_batches(&pairs, 6, per_query, 7, epoch) {
                let targets = judgments.batch_targets(&pairs, &batch, &settings);
                let candidates = candidate_texts(&pairs, &batch);
                for (row, &i) in batch.iter().enumerate() {
                    for (col, text) in candidates.iter().enumerate() {
                        let negative = col != row && !targets.excluded.contains(&(row, col));
                        // Judged by the data itself, not by the Judgments under test.
                        let judged = pairs
                            .iter()
                            .any(|p| p.query == pairs[i].query && p.positive == *text);
                        assert!(
                            !(negative && judged),
                            "{text} is judged relevant to {} but is one of its negatives",
                            pairs[i].query
                        );
                    }
                }
                masked += targets.excluded.len();
            }
        }
        assert!(masked > 0, "the data must exercise the mask");
    }

    #[test]
    fn without_the_mask_only_the_diagonal_is_special() {
        let pairs = overlapping();
        let judgments = Judgments::from_pairs(&pairs);
        let settings = TargetSettings {
            mask_judged_positives: false,
            ..Default::default()
        };
        for batch in no_duplicate_batches(&pairs, 6, 7, 0) {
            assert_eq!(
                judgments.batch_targets(&pairs, &batch, &settings),
                BatchTargets::default()
            );
        }
    }

    #[test]
    fn grades_and_pair_weights_multiply() {
        let mut pairs = vec![
            pair("q1", "d1", 3, &[]),
            pair("q2", "d2", 1, &[]),
            pair("q3", "d3", 2, &[]),
        ];
        pairs[1].weight = 0.5;
        let judgments = Judgments::from_pairs(&pairs);
        let linear = TargetSettings {
            grade_weighting: GradeWeighting::Linear,
            ..Default::default()
        };
        let targets = judgments.batch_targets(&pairs, &[0, 1, 2], &linear);
        let want = [1.0, 0.5 / 3.0, 2.0 / 3.0];
        for (got, want) in targets.weights.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{:?}", targets.weights);
        }
        let uniform = judgments.batch_targets(&pairs, &[0, 1, 2], &TargetSettings::default());
        assert_eq!(uniform.weights, vec![1.0, 0.5, 1.0]);
        assert!(judgments
            .batch_targets(&pairs, &[0, 2], &TargetSettings::default())
            .weights
            .is_empty());
        assert_eq!(
            "linear".parse::<GradeWeighting>().unwrap(),
            GradeWeighting::Linear
        );
        assert!("graded".parse::<GradeWeighting>().is_err());
    }
}
