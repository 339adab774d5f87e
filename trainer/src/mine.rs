//! Hard-negative mining: for each training query, documents the base model ranks high that are
//! not judged relevant. They make the contrastive task harder than random in-batch negatives.
//!
//! Retrieval is exact and blocked ([`attune_eval::retrieval::exact_top_k`]), so memory is the
//! corpus embeddings plus one block of scores, never a full query × corpus matrix. For each
//! (query, positive) pair, candidates are taken from the ranks in [`MineSettings::ranks`], every
//! judged positive of the query is skipped, and so is every candidate scoring within
//! [`MineSettings::margin`] of that positive: a document the model finds as close as a judged
//! answer is more likely an unjudged answer than a negative.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use attune_eval::retrieval::{exact_top_k, id_order_ranks, EmbeddingMatrix, ExactSearchSettings};
use attune_eval::BeirDataset;
use attune_model::{Encoder, TextKind};
use serde::Serialize;

use crate::data::TrainingData;
use crate::error::{Result, TrainError};

/// What to mine. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct MineSettings {
    /// 0-based rank window candidates are drawn from, end exclusive (default 10..50: below the
    /// top ten, where unjudged answers crowd, and above the easy tail).
    pub ranks: Range<usize>,
    /// Negatives kept per pair, best-ranked first (default 5).
    pub per_query: usize,
    /// A candidate is dropped when its cosine is above the positive's minus this (default 0.05).
    pub margin: f32,
    /// Block sizes of the exact search (bound memory).
    pub search: ExactSearchSettings,
}

impl Default for MineSettings {
    fn default() -> Self {
        Self {
            ranks: 10..50,
            per_query: 5,
            margin: 0.05,
            search: ExactSearchSettings::default(),
        }
    }
}

impl MineSettings {
    fn validate(&self) -> Result<()> {
        if self.ranks.start >= self.ranks.end {
            return Err(TrainError::InvalidSetting {
                name: "range",
                problem: format!(
                    "START:END with START < END, got {}:{}",
                    self.ranks.start, self.ranks.end
                ),
            });
        }
        if self.per_query == 0 {
            return Err(TrainError::InvalidSetting {
                name: "per-query",
                problem: "at least 1".into(),
            });
        }
        if !self.margin.is_finite() {
            return Err(TrainError::InvalidSetting {
                name: "margin",
                problem: format!("a finite number, got {}", self.margin),
            });
        }
        Ok(())
    }
}

/// The mining problem: a corpus and queries with the corpus rows judged relevant to each.
#[derive(Debug, Clone, Default)]
pub struct MiningInput {
    /// Document texts as they are embedded.
    pub corpus: Vec<String>,
    /// Document ids (break score ties by id, as evaluation does).
    pub corpus_ids: Vec<String>,
    /// Query texts.
    pub queries: Vec<String>,
    /// Corpus rows judged relevant, per query; one output pair per entry.
    pub positives: Vec<Vec<usize>>,
    /// Per query, parallel to `positives`: what each pair carries to its mined pair.
    pub labels: Vec<Vec<PairLabel>>,
}

/// Whether a document's embedding text has anything to embed (training skips those without).
fn has_text(text: &str) -> bool {
    !text.trim().is_empty()
}

/// What a mined pair keeps of its input pair: the grade, the loss weight and the source.
#[derive(Debug, Clone, PartialEq)]
pub struct PairLabel {
    /// Relevance grade (≥ 1).
    pub grade: u32,
    /// Loss weight (> 0).
    pub weight: f32,
    /// The source the input pair named, if any.
    pub source: Option<String>,
}

impl MiningInput {
    /// A BEIR directory: its corpus, and the queries of `split` with their relevant documents.
    /// Documents without title and text are left out (neither a positive nor a negative, as
    /// training skips them); [`MiningInput::empty_documents`] counts them. Documents with the
    /// same text share one row (the first one's id), so a copy of a judged answer is judged too
    /// and never mined as its query's negative; a query judging several copies keeps the
    /// highest grade.
    pub fn from_beir(dataset: &BeirDataset) -> Self {
        let mut input = MiningInput::default();
        let mut row_of_text: HashMap<String, usize> = HashMap::new();
        let mut row: HashMap<&str, usize> = HashMap::new();
        for (document, text) in dataset.corpus.iter().zip(dataset.document_texts()) {
            if !has_text(&text) {
                continue;
            }
            let next = input.corpus.len();
            let r = *row_of_text.entry(text.clone()).or_insert(next);
            if r == next {
                input.corpus.push(text);
                input.corpus_ids.push(document.id.clone());
            }
            row.insert(document.id.as_str(), r);
        }
        for query in &dataset.queries {
            let Some(judged) = dataset.qrels.get(&query.id) else {
                continue;
            };
            let mut graded: BTreeMap<usize, u32> = BTreeMap::new();
            for (doc, grade) in judged.iter().filter(|(_, grade)| **grade > 0) {
                if let Some(&r) = row.get(doc.as_str()) {
                    let best = graded.entry(r).or_insert(0);
                    *best = (*best).max(*grade as u32);
                }
            }
            let positives: Vec<(usize, u32)> = graded.into_iter().collect();
            if !positives.is_empty() {
                input.queries.push(query.text.clone());
                input.labels.push(
                    positives
                        .iter()
                        .map(|&(_, grade)| PairLabel {
                            grade,
                            weight: 1.0,
                            source: None,
                        })
                        .collect(),
                );
                input
                    .positives
                    .push(positives.into_iter().map(|(r, _)| r).collect());
            }
        }
        input
    }

    /// Documents of `dataset` left out of mining because they have no title and text.
    pub fn empty_documents(dataset: &BeirDataset) -> usize {
        dataset
            .document_texts()
            .iter()
            .filter(|text| !has_text(text))
            .count()
    }

    /// A pairs file: the corpus is every distinct positive and negative text; a query's
    /// positives are all the texts paired with it as positive.
    pub fn from_pairs(data: &TrainingData) -> Self {
        let mut input = MiningInput::default();
        let mut row: HashMap<String, usize> = HashMap::new();
        let mut query_row: HashMap<String, usize> = HashMap::new();
        let mut add = |text: &str, input: &mut MiningInput| -> usize {
            *row.entry(text.to_string()).or_insert_with(|| {
                input.corpus.push(text.to_string());
                input
                    .corpus_ids
                    .push(format!("{:09}", input.corpus.len() - 1));
                input.corpus.len() - 1
            })
        };
        for pair in &data.pairs {
            let positive = add(&pair.positive, &mut input);
            for negative in &pair.negatives {
                add(negative, &mut input);
            }
            let q = *query_row.entry(pair.query.clone()).or_insert_with(|| {
                input.queries.push(pair.query.clone());
                input.positives.push(Vec::new());
                input.labels.push(Vec::new());
                input.queries.len() - 1
            });
            // A repeated (query, positive) keeps the first pair's label.
            if !input.positives[q].contains(&positive) {
                input.positives[q].push(positive);
                input.labels[q].push(PairLabel {
                    grade: pair.grade,
                    weight: pair.weight,
                    source: pair.source.clone(),
                });
            }
        }
        input
    }
}

/// One mined training example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinedPair {
    /// The query.
    pub query: String,
    /// A judged positive.
    pub positive: String,
    /// Mined negatives, best-ranked first.
    pub negatives: Vec<String>,
    /// The input pair's grade (the qrels score for a BEIR directory).
    pub grade: u32,
    /// The input pair's loss weight.
    pub weight: f32,
    /// The input pair's source, when it named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What mining did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MineReport {
    /// Queries mined.
    pub queries: usize,
    /// Pairs written (one per query and positive).
    pub pairs: usize,
    /// Negatives written, over all pairs.
    pub negatives: usize,
    /// Candidates in the rank window skipped because they are judged positives.
    pub skipped_judged: usize,
    /// Candidates skipped because they scored within the margin of the positive.
    pub skipped_margin: usize,
    /// Pairs left with fewer negatives than asked.
    pub short_pairs: usize,
}

/// Picks a pair's negatives from a query's ranked candidates (`(row, score)`, best first, already
/// cut to the rank window): not a judged positive, not within `margin` of `positive_score`, at
/// most `per_query`, in rank order. Returns the rows and the (judged, margin) skip counts.
pub fn select_negatives(
    candidates: &[(usize, f32)],
    judged: &HashSet<usize>,
    positive_score: f32,
    settings: &MineSettings,
) -> (Vec<usize>, usize, usize) {
    let (mut skipped_judged, mut skipped_margin) = (0, 0);
    let mut out = Vec::new();
    for &(row, score) in candidates {
        if out.len() == settings.per_query {
            break;
        }
        if judged.contains(&row) {
            skipped_judged += 1;
        } else if score > positive_score - settings.margin {
            skipped_margin += 1;
        } else {
            out.push(row);
        }
    }
    (out, skipped_judged, skipped_margin)
}

/// Mines negatives for every (query, positive) of `input` with `encoder`; `on_progress` gets
/// the number of texts embedded so far.
pub fn mine(
    encoder: &Encoder,
    input: &MiningInput,
    settings: &MineSettings,
    on_progress: &mut dyn FnMut(usize),
) -> Result<(Vec<MinedPair>, MineReport)> {
    settings.validate()?;
    if input.queries.is_empty() || input.corpus.is_empty() {
        return Err(TrainError::InvalidSetting {
            name: "data",
            problem: "no query with a judged positive, or an empty corpus".into(),
        });
    }
    let mut embedded = 0;
    let mut progress = |n: usize| {
        embedded += n;
        on_progress(embedded);
    };
    let corpus = encoder.embed_with_progress(&input.corpus, TextKind::Document, &mut progress)?;
    let queries = encoder.embed_with_progress(&input.queries, TextKind::Query, &mut progress)?;
    let dim = encoder.dimension();
    let corpus = EmbeddingMatrix::from_rows(&corpus.embeddings, dim)?;
    let queries = EmbeddingMatrix::from_rows(&queries.embeddings, dim)?;
    let depth = settings.ranks.end.min(input.corpus.len());
    let ties = id_order_ranks(&input.corpus_ids);
    let hits = exact_top_k(
        &queries,
        &corpus,
        depth,
        &ties,
        encoder.device(),
        &settings.search,
    )?;
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let mut pairs = Vec::new();
    let mut report = MineReport {
        queries: input.queries.len(),
        ..MineReport::default()
    };
    for (q, ranked) in hits.iter().enumerate() {
        let judged: HashSet<usize> = input.positives[q].iter().copied().collect();
        let window: Vec<(usize, f32)> = ranked
            .iter()
            .skip(settings.ranks.start)
            .map(|h| (h.doc as usize, h.score))
            .collect();
        for (&positive, label) in input.positives[q].iter().zip(&input.labels[q]) {
            let positive_score = dot(queries.row(q), corpus.row(positive));
            let (rows, judged_skips, margin_skips) =
                select_negatives(&window, &judged, positive_score, settings);
            report.skipped_judged += judged_skips;
            report.skipped_margin += margin_skips;
            report.short_pairs += usize::from(rows.len() < settings.per_query);
            report.negatives += rows.len();
            pairs.push(MinedPair {
                query: input.queries[q].clone(),
                positive: input.corpus[positive].clone(),
                negatives: rows.iter().map(|&r| input.corpus[r].clone()).collect(),
                grade: label.grade,
                weight: label.weight,
                source: label.source.clone(),
            });
        }
    }
    report.pairs = pairs.len();
    Ok((pairs, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_skips_judged_and_near_positive_candidates_in_rank_order() {
        let settings = MineSettings {
            per_query: 2,
            margin: 0.1,
            ..MineSettings::default()
        };
        let candidates = [(7, 0.85), (3, 0.80), (9, 0.75), (4, 0.60), (5, 0.50)];
        let judged: HashSet<usize> = [3].into_iter().collect();
        // Positive at 0.9: 0.85 is within 0.1 of it (an unjudged answer, probably).
        let (rows, judged_skips, margin_skips) =
            select_negatives(&candidates, &judged, 0.9, &settings);
        assert_eq!(rows, vec![9, 4]);
        assert_eq!((judged_skips, margin_skips), (1, 1));
        // A negative margin keeps candidates even above the positive; judged ones never pass.
        let loose = MineSettings {
            margin: -1.0,
            per_query: 10,
            ..settings
        };
        let (rows, _, _) = select_negatives(&candidates, &judged, 0.9, &loose);
        assert_eq!(rows, vec![7, 9, 4, 5]);
    }

    #[test]
    fn pairs_keep_their_grade_weight_and_source_through_mining() {
        use crate::data::TrainingPair;
        let location = crate::data::Location {
            path: std::sync::Arc::new(std::path::PathBuf::from("pairs.jsonl")),
            line: 1,
        };
        let mut bought = TrainingPair::new("red boots", "boot A", location.clone());
        (bought.grade, bought.weight) = (3, 2.5);
        bought.source = Some("feedback:shop".into());
        let data = TrainingData {
            source: "pairs.jsonl".into(),
            pairs: vec![
                bought,
                TrainingPair::new("red boots", "boot B", location.clone()),
                // A repeat keeps the first pair's label.
                TrainingPair::new("red boots", "boot A", location),
            ],
            skipped: Vec::new(),
        };
        let input = MiningInput::from_pairs(&data);
        assert_eq!(input.positives, vec![vec![0, 1]]);
        let labels = &input.labels[0];
        assert_eq!(
            (
                labels[0].grade,
                labels[0].weight,
                labels[0].source.as_deref()
            ),
            (3, 2.5, Some("feedback:shop"))
        );
        assert_eq!(
            (
                labels[1].grade,
                labels[1].weight,
                labels[1].source.as_deref()
            ),
            (1, 1.0, None)
        );
    }

    #[test]
    fn empty_documents_are_left_out_and_copies_share_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("qrels")).unwrap();
        std::fs::write(
            root.join("corpus.jsonl"),
            "{\"_id\":\"d1\",\"title\":\"wings\",\"text\":\"lift\"}\n\
             {\"_id\":\"d2\",\"title\":\"\",\"text\":\" \"}\n\
             {\"_id\":\"d3\",\"title\":\"flaps\",\"text\":\"drag\"}\n\
             {\"_id\":\"d4\",\"title\":\"wings\",\"text\":\"lift\"}\n",
        )
        .unwrap();
        std::fs::write(
            root.join("queries.jsonl"),
            "{\"_id\":\"q1\",\"text\":\"lift of wings\"}\n",
        )
        .unwrap();
        std::fs::write(
            root.join("qrels/train.tsv"),
            "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq1\td4\t3\n",
        )
        .unwrap();
        let dataset = BeirDataset::load(root, "train").unwrap();
        let input = MiningInput::from_beir(&dataset);
        // d2 has no text; d4 is a copy of d1, so it is judged with it and never a candidate.
        assert_eq!(input.corpus_ids, vec!["d1", "d3"]);
        assert_eq!(input.positives, vec![vec![0]]);
        assert_eq!(input.labels[0][0].grade, 3);
        assert_eq!(MiningInput::empty_documents(&dataset), 1);
    }

    #[test]
    fn invalid_settings_name_the_flag() {
        let bad = MineSettings {
            ranks: 5..5,
            ..MineSettings::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("range"));
        let bad = MineSettings {
            per_query: 0,
            ..MineSettings::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("per-query"));
    }
}
