//! Spaces as requests name them: a dense space (`base`, `tuned`, ...), the lexical space
//! (`lexical`) or a fusion of the lexical space with a dense one (`hybrid:tuned`); and the one
//! function that answers any of them over a [`ServedCollection`], fusing where asked.
//!
//! **Fusion.** Each part retrieves its best `max(k, FUSION_DEPTH)` documents under the filter;
//! the dense part then scores the lexical candidates it did not retrieve from their stored
//! vectors, so it ranks the whole union (at most twice the depth).
//! Reciprocal rank fusion (`rrf`, the default) scores a document `Σ 1 / (k_rrf + rank)` over the
//! parts it appears in (rank from 1; `k_rrf` default 60). Weighted fusion scales each part's
//! scores to 0..1 over its candidates (dense: min-max; lexical: BM25 over the best BM25, a
//! non-match being 0) and scores `weight · dense + (1 − weight) ·
//! lexical` (a part a document is absent from gives 0; `weight` default 0.5). Ties go to the
//! document both parts found (their agreement is evidence: under weighted fusion a lexical-only
//! match such as an identifier otherwise ties with the vector space's favourite), then to the
//! smaller id.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::filter::Filter;
use crate::identity::ModelIdentity;
use crate::lexical::LEXICAL_SPACE;
use crate::store::{SearchHit, SearchRequest};
use crate::vector_store::ServedCollection;

/// The prefix of a fused space's name: `hybrid:<dense space>`.
pub const HYBRID_PREFIX: &str = "hybrid:";

/// Candidates each part of a fusion contributes, at least (`k` when larger).
pub const FUSION_DEPTH: usize = 100;

/// A space as a request names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Retrieval {
    /// A dense space of the collection.
    Dense(String),
    /// The collection's lexical (BM25) space.
    Lexical,
    /// The lexical space fused with the named dense space.
    Hybrid(String),
}

impl Retrieval {
    /// Reads a space name: `lexical`, `hybrid:<dense>`, or a dense space's name.
    pub fn parse(name: &str) -> Self {
        if name == LEXICAL_SPACE {
            Self::Lexical
        } else if let Some(dense) = name.strip_prefix(HYBRID_PREFIX) {
            Self::Hybrid(dense.to_string())
        } else {
            Self::Dense(name.to_string())
        }
    }

    /// The name, as [`Retrieval::parse`] reads it.
    pub fn name(&self) -> String {
        match self {
            Self::Dense(space) => space.clone(),
            Self::Lexical => LEXICAL_SPACE.to_string(),
            Self::Hybrid(space) => format!("{HYBRID_PREFIX}{space}"),
        }
    }

    /// The dense space it searches, if any (whose model embeds the query).
    pub fn dense_space(&self) -> Option<&str> {
        match self {
            Self::Dense(space) | Self::Hybrid(space) => Some(space),
            Self::Lexical => None,
        }
    }

    /// True when it searches the lexical space.
    pub fn uses_lexical(&self) -> bool {
        !matches!(self, Self::Dense(_))
    }

    /// The retrievals a collection with these dense spaces (and a lexical space or not) serves:
    /// each dense space, then `lexical` and `hybrid:<each dense>`.
    pub fn all(dense: impl IntoIterator<Item = String>, lexical: bool) -> Vec<Self> {
        let dense: Vec<String> = dense.into_iter().collect();
        let mut out: Vec<Self> = dense.iter().cloned().map(Self::Dense).collect();
        if lexical {
            out.push(Self::Lexical);
            out.extend(dense.into_iter().map(Self::Hybrid));
        }
        out
    }

    /// Checks that `collection` serves it: the dense space exists, and the lexical space where
    /// one is used. The error names what the collection has.
    pub fn check(&self, collection: &dyn ServedCollection) -> Result<()> {
        let spaces = collection.spaces();
        let lexical = collection.lexical().is_some();
        let unknown = |space: &str| IndexError::UnknownSpace {
            collection: collection.name().to_string(),
            space: space.to_string(),
            available: Self::all(spaces.keys().cloned(), lexical)
                .iter()
                .map(Self::name)
                .collect::<Vec<_>>()
                .join(", "),
        };
        if let Some(dense) = self.dense_space() {
            if !spaces.contains_key(dense) {
                return Err(unknown(&self.name()));
            }
        }
        if self.uses_lexical() && !lexical {
            return Err(unknown(&self.name()));
        }
        Ok(())
    }
}

impl std::fmt::Display for Retrieval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// How a hybrid space combines its parts (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    /// Reciprocal rank fusion.
    #[default]
    Rrf,
    /// Min-max normalised scores, weighted.
    Weighted,
}

impl FusionMethod {
    /// The name (`rrf`, `weighted`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rrf => "rrf",
            Self::Weighted => "weighted",
        }
    }
}

/// Fusion parameters of a hybrid space (see the module docs for the formulas).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fusion {
    /// `rrf` (default) or `weighted`.
    pub method: FusionMethod,
    /// Rank constant of `rrf`, > 0. Default 60.
    pub k: f32,
    /// Share of the dense part in `weighted`, 0 to 1. Default 0.5.
    pub weight: f32,
}

impl Default for Fusion {
    fn default() -> Self {
        Self {
            method: FusionMethod::Rrf,
            k: 60.0,
            weight: 0.5,
        }
    }
}

impl Fusion {
    /// Checks the ranges; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.k.is_finite() && self.k > 0.0) {
            return Err(IndexError::InvalidSetting(format!(
                "fusion.k must be a positive number, got {}",
                self.k
            )));
        }
        if !(0.0..=1.0).contains(&self.weight) {
            return Err(IndexError::InvalidSetting(format!(
                "fusion.weight must be between 0 and 1, got {}",
                self.weight
            )));
        }
        Ok(())
    }
}

/// A query vector of a dense space and the model that embedded it.
#[derive(Debug, Clone, Copy)]
pub struct DenseQuery<'a> {
    /// The vector.
    pub vector: &'a [f32],
    /// The model that embedded it (the space's).
    pub model: &'a ModelIdentity,
}

/// A search in any kind of space.
#[derive(Debug, Clone)]
pub struct RetrievalRequest<'a> {
    /// What to search.
    pub retrieval: &'a Retrieval,
    /// The query text (the lexical part searches it).
    pub text: &'a str,
    /// The query embedded by the dense space's model; needed when `retrieval` has a dense part.
    pub dense: Option<DenseQuery<'a>>,
    /// Results wanted.
    pub k: usize,
    /// HNSW candidate list size of the dense part.
    pub ef: Option<usize>,
    /// Metadata filter (both parts).
    pub filter: &'a Filter,
    /// How a hybrid space fuses.
    pub fusion: &'a Fusion,
}

/// A search of the lexical space.
#[derive(Debug, Clone)]
pub struct LexicalRequest<'a> {
    /// The query text.
    pub text: &'a str,
    /// Results wanted.
    pub k: usize,
    /// Metadata filter.
    pub filter: &'a Filter,
}

/// The `k` best documents of `request`'s space, best first. Scores: cosine similarity (dense),
/// BM25 (lexical), the fused score (hybrid). A space the collection lacks is the error of the
/// part that lacks it; [`Retrieval::check`] names everything the collection serves, for
/// callers that check a request once before searching.
pub fn retrieve<'a>(
    collection: &dyn ServedCollection,
    request: &RetrievalRequest<'a>,
) -> Result<Vec<SearchHit>> {
    let dense_query = match request.retrieval.dense_space() {
        Some(space) => Some((
            space,
            request.dense.ok_or_else(|| {
                IndexError::InvalidSetting(format!(
                    "searching {} needs the query embedded by its model",
                    request.retrieval
                ))
            })?,
        )),
        None => None,
    };
    let dense_request = |space, query: DenseQuery<'a>, k| SearchRequest {
        space,
        vector: query.vector,
        model: query.model,
        k,
        ef: request.ef,
        filter: request.filter,
    };
    let lexical_request = |k| LexicalRequest {
        text: request.text,
        k,
        filter: request.filter,
    };
    match (request.retrieval, dense_query) {
        (Retrieval::Dense(_), Some((space, query))) => {
            collection.search(&dense_request(space, query, request.k))
        }
        (Retrieval::Lexical, _) => collection.lexical_search(&lexical_request(request.k)),
        (Retrieval::Hybrid(_), Some((space, query))) => {
            request.fusion.validate()?;
            let depth = request.k.max(FUSION_DEPTH);
            let dense = collection.search_ids(&dense_request(space, query, depth))?;
            let lexical = collection.lexical_search_ids(&lexical_request(depth))?;
            let dense = with_lexical_candidates(collection, space, query, dense, &lexical)?;
            let fused = fuse(&dense, &lexical, request.fusion, request.k);
            let mut hits = Vec::with_capacity(fused.len());
            for (id, score) in fused {
                // A document deleted since it was ranked is left out.
                if let Some(document) = collection.document(&id)? {
                    hits.push(SearchHit {
                        id,
                        score,
                        title: document.title,
                        metadata: document.metadata,
                    });
                }
            }
            Ok(hits)
        }
        (_, None) => unreachable!("a dense part has its query (checked above)"),
    }
}

/// (id, score) pairs, best first.
pub type Ranking = Vec<(String, f32)>;

/// The dense ranking extended to every lexical candidate it lacks, scored exactly from the
/// candidate's stored vector, best first: so the dense part ranks the whole candidate union,
/// and a document only the lexical part found (an identifier the model cannot read) is not
/// outranked by one only the dense part found.
fn with_lexical_candidates(
    collection: &dyn ServedCollection,
    space: &str,
    query: DenseQuery<'_>,
    mut dense: Ranking,
    lexical: &[(String, f32)],
) -> Result<Ranking> {
    let mut unit = query.vector.to_vec();
    if !crate::distance::normalize(&mut unit) {
        return Err(IndexError::InvalidVector {
            what: "the query vector".into(),
        });
    }
    let known: HashSet<&str> = dense.iter().map(|(id, _)| id.as_str()).collect();
    let missing: Vec<&str> = lexical
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !known.contains(id))
        .collect();
    let scored = collection.score_ids(space, &unit, &missing)?;
    dense.extend(scored);
    dense.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(dense)
}

/// The fusion of a dense and a lexical ranking (see the module docs), `k` best.
pub fn fuse(
    dense: &[(String, f32)],
    lexical: &[(String, f32)],
    fusion: &Fusion,
    k: usize,
) -> Ranking {
    // Fused score and the number of parts that found the document.
    let mut scores: HashMap<&str, (f32, u8)> = HashMap::new();
    // BM25 is 0 for a document that does not match: the lexical scale starts there.
    let parts = [
        (dense, fusion.weight, None),
        (lexical, 1.0 - fusion.weight, Some(0.0)),
    ];
    for (ranking, weight, floor) in parts {
        let (low, high) = ranking
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), (_, score)| {
                (l.min(*score), h.max(*score))
            });
        let low = floor.unwrap_or(low);
        for (rank, (id, score)) in ranking.iter().enumerate() {
            let part = match fusion.method {
                FusionMethod::Rrf => 1.0 / (fusion.k + rank as f32 + 1.0),
                FusionMethod::Weighted if high > low => weight * (score - low) / (high - low),
                FusionMethod::Weighted => weight,
            };
            let entry = scores.entry(id).or_insert((0.0, 0));
            entry.0 += part;
            entry.1 += 1;
        }
    }
    let mut fused: Vec<(&str, (f32, u8))> = scores.into_iter().collect();
    fused.sort_by(|(a, (sa, pa)), (b, (sb, pb))| {
        sb.total_cmp(sa).then(pb.cmp(pa)).then_with(|| a.cmp(b))
    });
    fused
        .into_iter()
        .take(k)
        .map(|(id, (score, _))| (id.to_string(), score))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(ids: &[(&str, f32)]) -> Ranking {
        ids.iter()
            .map(|(id, score)| (id.to_string(), *score))
            .collect()
    }

    fn ids(ranking: &[(String, f32)]) -> Vec<&str> {
        ranking.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn names_round_trip() {
        for name in ["tuned", "lexical", "hybrid:tuned", "hybrid:base"] {
            assert_eq!(Retrieval::parse(name).name(), name);
        }
        assert_eq!(Retrieval::parse("hybrid:x").dense_space(), Some("x"));
        assert!(!Retrieval::parse("base").uses_lexical());
        let all: Vec<String> = Retrieval::all(["base".into(), "tuned".into()], true)
            .iter()
            .map(Retrieval::name)
            .collect();
        assert_eq!(
            all,
            ["base", "tuned", "lexical", "hybrid:base", "hybrid:tuned"]
        );
    }

    #[test]
    fn rrf_adds_reciprocal_ranks() {
        let dense = hits(&[("a", 0.9), ("b", 0.8), ("c", 0.7)]);
        let lexical = hits(&[("c", 12.0), ("d", 9.0), ("a", 3.0)]);
        let fused = fuse(&dense, &lexical, &Fusion::default(), 10);
        // a: 1/61 + 1/63, c: 1/63 + 1/61 (tie, id order), b: 1/62, d: 1/62.
        assert_eq!(ids(&fused), ["a", "c", "b", "d"]);
        let expected = 1.0 / 61.0 + 1.0 / 63.0;
        assert!((fused[0].1 - expected).abs() < 1e-7);
        assert_eq!(fuse(&dense, &lexical, &Fusion::default(), 2).len(), 2);
    }

    #[test]
    fn weighted_fusion_normalises_each_part() {
        let dense = hits(&[("a", 0.9), ("b", 0.5)]);
        let lexical = hits(&[("b", 20.0), ("c", 10.0)]);
        let lexical_heavy = Fusion {
            method: FusionMethod::Weighted,
            weight: 0.2,
            ..Fusion::default()
        };
        let fused = fuse(&dense, &lexical, &lexical_heavy, 10);
        // a: 0.2·1, b: 0.2·0 + 0.8·1, c: 0.8·(10/20).
        assert_eq!(ids(&fused), ["b", "c", "a"]);
        assert!((fused[0].1 - 0.8).abs() < 1e-6);
        assert!((fused[1].1 - 0.4).abs() < 1e-6);
        // A tie goes to the document both parts found (b: 0.5·0 + 0.5·1; a: 0.5·1).
        let even = Fusion {
            weight: 0.5,
            ..lexical_heavy
        };
        let dense_pair = hits(&[("a", 0.9), ("b", 0.1)]);
        let tied = fuse(&dense_pair, &hits(&[("b", 5.0)]), &even, 2);
        assert_eq!(ids(&tied), ["b", "a"]);
        assert_eq!(tied[0].1, tied[1].1);
        // One lexical match alone gets the whole lexical share.
        let only = fuse(&dense, &hits(&[("c", 3.0)]), &lexical_heavy, 10);
        assert_eq!(ids(&only), ["c", "a", "b"]);
        let dense_only = Fusion {
            weight: 1.0,
            ..lexical_heavy
        };
        assert_eq!(ids(&fuse(&dense, &lexical, &dense_only, 1)), ["a"]);
    }

    #[test]
    fn fusion_settings_are_checked() {
        assert!(Fusion::default().validate().is_ok());
        let bad = Fusion {
            weight: 1.5,
            ..Fusion::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("fusion.weight"));
        let bad = Fusion {
            k: 0.0,
            ..Fusion::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("fusion.k"));
    }
}
