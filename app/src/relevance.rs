//! Relevance over a served collection, the product logic behind the server's compare,
//! visibility and evaluate endpoints: how results move between two spaces, how visible one
//! document is across queries, and judged queries evaluated by searching the index. Queries
//! arrive embedded (the server embeds them on its inference threads); everything here blocks.

use std::collections::{BTreeMap, HashMap, HashSet};

use attune_eval::compare::{compare, ComparisonSettings};
use attune_eval::{
    evaluate as score, EvalError, Evaluation, MetricKind, MetricName, MetricsSettings, Qrels, Run,
    ScoredDoc,
};
use attune_index::{
    retrieve, DenseQuery, Filter, Fusion, IndexError, ModelIdentity, Retrieval, RetrievalRequest,
    SearchHit, ServedCollection,
};
use serde::Serialize;

/// Why a relevance measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum RelevanceError {
    /// The collection refused a search or a read.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The metrics could not be computed.
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// How a document moved between two ranked lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Ranked higher in the second list.
    Up,
    /// Ranked lower in the second list.
    Down,
    /// Same rank.
    Same,
    /// Only in the second list.
    Entered,
    /// Only in the first list.
    Left,
}

/// A document's ranks in both lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Movement {
    /// Document id.
    pub id: String,
    /// Title.
    pub title: String,
    /// 1-based rank in the first list, if there.
    pub from_rank: Option<usize>,
    /// 1-based rank in the second list, if there.
    pub to_rank: Option<usize>,
    /// `from_rank - to_rank` when in both (positive: moved up).
    pub moved: Option<i64>,
    /// The kind of move.
    pub change: Change,
}

/// The movements from list `from` to list `to` (each `(id, title)`, best first): every
/// document of `to` in its order, then those that left; and the overlap, shared documents over
/// the longer list's length (1 for two empty lists).
pub fn movements(from: &[(&str, &str)], to: &[(&str, &str)]) -> (Vec<Movement>, f64) {
    let from_rank: HashMap<&str, usize> =
        from.iter().enumerate().map(|(i, h)| (h.0, i + 1)).collect();
    let in_to: HashSet<&str> = to.iter().map(|h| h.0).collect();
    let mut out = Vec::new();
    let mut shared = 0;
    for (i, (id, title)) in to.iter().enumerate() {
        let to_rank = i + 1;
        let previous = from_rank.get(id).copied();
        let (moved, change) = match previous {
            Some(rank) => {
                shared += 1;
                let moved = rank as i64 - to_rank as i64;
                let change = match moved.cmp(&0) {
                    std::cmp::Ordering::Greater => Change::Up,
                    std::cmp::Ordering::Less => Change::Down,
                    std::cmp::Ordering::Equal => Change::Same,
                };
                (Some(moved), change)
            }
            None => (None, Change::Entered),
        };
        out.push(Movement {
            id: id.to_string(),
            title: title.to_string(),
            from_rank: previous,
            to_rank: Some(to_rank),
            moved,
            change,
        });
    }
    for (i, (id, title)) in from.iter().enumerate() {
        if !in_to.contains(id) {
            out.push(Movement {
                id: id.to_string(),
                title: title.to_string(),
                from_rank: Some(i + 1),
                to_rank: None,
                moved: None,
                change: Change::Left,
            });
        }
    }
    let longest = from.len().max(to.len());
    let overlap = if longest == 0 {
        1.0
    } else {
        shared as f64 / longest as f64
    };
    (out, overlap)
}

/// Queries for one space of a collection (dense, lexical or hybrid), embedded by the dense
/// part's model where there is one.
#[derive(Debug, Clone)]
pub struct SpaceQueries<'a> {
    /// The space.
    pub retrieval: &'a Retrieval,
    /// The query texts (the lexical part searches them).
    pub texts: &'a [String],
    /// The dense part's model and one vector per query, in query order; `None` for `lexical`.
    pub embedded: Option<(&'a ModelIdentity, &'a [Vec<f32>])>,
    /// How a hybrid space fuses.
    pub fusion: &'a Fusion,
}

impl SpaceQueries<'_> {
    /// The top `k` of query `i`, unfiltered.
    fn search(
        &self,
        collection: &dyn ServedCollection,
        i: usize,
        k: usize,
    ) -> Result<Vec<SearchHit>, RelevanceError> {
        Ok(retrieve(
            collection,
            &RetrievalRequest {
                retrieval: self.retrieval,
                text: &self.texts[i],
                dense: self.embedded.map(|(model, vectors)| DenseQuery {
                    vector: &vectors[i],
                    model,
                }),
                k,
                ef: None,
                filter: &Filter::default(),
                fusion: self.fusion,
            },
        )?)
    }
}

/// The document's place for one query in one space.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Placement {
    /// 1-based rank within the top k; absent (null) when it is not in the top k.
    pub rank: Option<usize>,
    /// Dense spaces: the cosine similarity of the query and the document, whether ranked or
    /// not. Lexical and hybrid spaces: the space's score (BM25, fused) when ranked, else null.
    pub score: Option<f32>,
}

/// A space's summary over the queries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpaceVisibility {
    /// The space.
    pub space: String,
    /// Queries for which the document is in the top k.
    pub visible: usize,
    /// `visible` over the number of queries.
    pub visible_share: f64,
    /// Mean reciprocal rank (0 when absent).
    pub mean_reciprocal_rank: f64,
    /// Mean of the placements' scores (over those that have one; null when none has).
    pub mean_score: Option<f64>,
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Where document `doc_id` ranks in the top `k` of each query, with its score (for a dense
/// space, the cosine with `doc_vector`, its stored vector there, whether ranked or not); and the
/// space's summary.
pub fn visibility(
    collection: &dyn ServedCollection,
    queries: &SpaceQueries<'_>,
    doc_id: &str,
    doc_vector: Option<&[f32]>,
    k: usize,
) -> Result<(Vec<Placement>, SpaceVisibility), RelevanceError> {
    let mut placements = Vec::with_capacity(queries.texts.len());
    for i in 0..queries.texts.len() {
        let hits = queries.search(collection, i, k)?;
        let hit = hits.iter().position(|h| h.id == doc_id);
        let score = match (queries.retrieval, queries.embedded, doc_vector) {
            (Retrieval::Dense(_), Some((_, vectors)), Some(doc)) => Some(cosine(&vectors[i], doc)),
            _ => hit.map(|rank| hits[rank].score),
        };
        placements.push(Placement {
            rank: hit.map(|i| i + 1),
            score,
        });
    }
    let n = placements.len().max(1) as f64;
    let visible = placements.iter().filter(|p| p.rank.is_some()).count();
    let scores: Vec<f64> = placements
        .iter()
        .filter_map(|p| p.score.map(f64::from))
        .collect();
    let summary = SpaceVisibility {
        space: queries.retrieval.name(),
        visible,
        visible_share: visible as f64 / n,
        mean_reciprocal_rank: placements
            .iter()
            .map(|p| p.rank.map_or(0.0, |r| 1.0 / r as f64))
            .sum::<f64>()
            / n,
        mean_score: (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64),
    };
    Ok((placements, summary))
}

/// Metrics of one space, means over the evaluated queries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpaceMetrics {
    /// The space.
    pub space: String,
    /// Metric name (`ndcg@10`, `recall@10`, `mrr@10`, `map@10`) → mean.
    pub metrics: BTreeMap<String, f64>,
}

/// One metric, a candidate space against the baseline space.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricComparison {
    /// Metric name.
    pub metric: String,
    /// Baseline space.
    pub baseline: String,
    /// Candidate space.
    pub candidate: String,
    /// Baseline mean.
    pub baseline_mean: f64,
    /// Candidate mean.
    pub candidate_mean: f64,
    /// Candidate minus baseline.
    pub mean_delta: f64,
    /// Bootstrap 95% interval of the mean delta, low.
    pub ci95_low: f64,
    /// Bootstrap 95% interval of the mean delta, high.
    pub ci95_high: f64,
    /// Paired randomization test p-value.
    pub p_value: f64,
    /// Queries where the candidate is better.
    pub wins: usize,
    /// Queries where they are equal.
    pub ties: usize,
    /// Queries where the candidate is worse.
    pub losses: usize,
}

/// One query's nDCG@k per space and the candidate-minus-baseline delta.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueryResult {
    /// Query id.
    pub query_id: String,
    /// nDCG@k per space.
    pub ndcg: BTreeMap<String, f64>,
    /// Second space minus first (0 with one space).
    pub delta: f64,
}

/// Judged queries evaluated over the index, per space.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexEvaluation {
    /// Queries with at least one relevant judgment, evaluated.
    pub evaluated_queries: usize,
    /// Metrics per space, baseline (the first) first.
    pub spaces: Vec<SpaceMetrics>,
    /// Each later space against the first, per metric.
    pub comparisons: Vec<MetricComparison>,
    /// Per query, largest |delta| first.
    pub per_query: Vec<QueryResult>,
    /// Judged documents the collection does not hold (they count as never retrieved).
    pub unknown_documents: usize,
}

/// Searches each space for every query (`query_ids[i]` is query `i` of each space's queries),
/// scores the top `k` against `qrels` (nDCG, recall, MRR and MAP at `k`), and compares each
/// later space with the first per query.
pub fn evaluate_over_index(
    collection: &dyn ServedCollection,
    spaces: &[SpaceQueries<'_>],
    query_ids: &[String],
    qrels: &Qrels,
    k: usize,
) -> Result<IndexEvaluation, RelevanceError> {
    let settings = MetricsSettings {
        cutoffs: vec![k],
        ..MetricsSettings::default()
    };
    let mut evaluations: Vec<Evaluation> = Vec::new();
    for space in spaces {
        let mut run = Run::new();
        for (i, query_id) in query_ids.iter().enumerate() {
            let hits = space.search(collection, i, k)?;
            let ranked = hits
                .into_iter()
                .map(|h| ScoredDoc {
                    doc_id: h.id,
                    score: f64::from(h.score),
                })
                .collect();
            run.insert(query_id.clone(), ranked);
        }
        evaluations.push(score(&run, qrels, &settings)?);
    }
    let mut unknown = 0;
    let judged: HashSet<&str> = qrels
        .iter()
        .flat_map(|(_, docs)| docs.keys().map(String::as_str))
        .collect();
    for doc in judged {
        if collection.document(doc)?.is_none() {
            unknown += 1;
        }
    }
    let names: Vec<String> = spaces.iter().map(|s| s.retrieval.name()).collect();
    Ok(IndexEvaluation {
        evaluated_queries: evaluations.first().map_or(0, |e| e.per_query.len()),
        spaces: space_metrics(&names, &evaluations, k),
        comparisons: comparisons(&names, &evaluations, k)?,
        per_query: per_query(&names, &evaluations, k),
        unknown_documents: unknown,
    })
}

fn headline(k: usize) -> [MetricName; 4] {
    [
        MetricName::at(MetricKind::Ndcg, k),
        MetricName::at(MetricKind::Recall, k),
        MetricName::at(MetricKind::Mrr, k),
        MetricName::at(MetricKind::Map, k),
    ]
}

fn space_metrics(names: &[String], evaluations: &[Evaluation], k: usize) -> Vec<SpaceMetrics> {
    names
        .iter()
        .zip(evaluations)
        .map(|(space, evaluation)| SpaceMetrics {
            space: space.clone(),
            metrics: headline(k)
                .iter()
                .filter_map(|m| Some((m.to_string(), evaluation.mean_of(*m)?)))
                .collect(),
        })
        .collect()
}

fn comparisons(
    names: &[String],
    evaluations: &[Evaluation],
    k: usize,
) -> Result<Vec<MetricComparison>, RelevanceError> {
    let mut out = Vec::new();
    let settings = ComparisonSettings::default();
    for (space, evaluation) in names.iter().zip(evaluations).skip(1) {
        for metric in headline(k) {
            let c = compare(&evaluations[0], evaluation, metric, &settings)?;
            out.push(MetricComparison {
                metric: metric.to_string(),
                baseline: names[0].clone(),
                candidate: space.clone(),
                baseline_mean: c.baseline_mean,
                candidate_mean: c.candidate_mean,
                mean_delta: c.mean_delta,
                ci95_low: c.ci95.0,
                ci95_high: c.ci95.1,
                p_value: c.p_value,
                wins: c.wins,
                ties: c.ties,
                losses: c.losses,
            });
        }
    }
    Ok(out)
}

fn per_query(names: &[String], evaluations: &[Evaluation], k: usize) -> Vec<QueryResult> {
    let Some(first) = evaluations.first() else {
        return Vec::new();
    };
    let ndcg = MetricName::at(MetricKind::Ndcg, k);
    let mut rows: Vec<QueryResult> = first
        .per_query
        .iter()
        .map(|q| QueryResult {
            query_id: q.query_id.clone(),
            ndcg: BTreeMap::new(),
            delta: 0.0,
        })
        .collect();
    for (space, evaluation) in names.iter().zip(evaluations) {
        let column = evaluation.column(ndcg).expect("ndcg@k computed");
        for (row, q) in rows.iter_mut().zip(&evaluation.per_query) {
            row.ndcg.insert(space.clone(), q.values[column]);
        }
    }
    if names.len() > 1 {
        for row in &mut rows {
            row.delta = row.ndcg[&names[1]] - row.ndcg[&names[0]];
        }
    }
    rows.sort_by(|a, b| b.delta.abs().total_cmp(&a.delta.abs()));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movements_name_every_kind_of_move_and_the_overlap() {
        let from = [("a", "A"), ("b", "B"), ("c", "C")];
        let to = [("b", "B"), ("a", "A"), ("d", "D")];
        let (moves, overlap) = movements(&from, &to);
        let kinds: Vec<(&str, Change)> = moves.iter().map(|m| (m.id.as_str(), m.change)).collect();
        assert_eq!(
            kinds,
            [
                ("b", Change::Up),
                ("a", Change::Down),
                ("d", Change::Entered),
                ("c", Change::Left)
            ]
        );
        assert_eq!(moves[0].moved, Some(1));
        assert!((overlap - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(movements(&[], &[]).1, 1.0);
    }
}
