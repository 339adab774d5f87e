//! Batches without duplicate texts: with in-batch negatives, a text that appears twice in a
//! batch is its own false negative, so no batch holds the same query, positive or negative text
//! twice (sentence-transformers' `NoDuplicatesBatchSampler`).

use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};

use crate::data::TrainingPair;

/// The texts of a pair that must be unique within a batch (trimmed).
fn texts(pair: &TrainingPair) -> impl Iterator<Item = &str> {
    std::iter::once(pair.query.trim())
        .chain(std::iter::once(pair.positive.trim()))
        .chain(pair.negatives.iter().map(|n| n.trim()))
}

/// One epoch's batches of pair indices, deterministic in `(seed, epoch)`.
///
/// Pairs are shuffled, then each batch takes, in shuffled order, every pair whose texts are not
/// yet in it until it holds `batch_size` pairs; pairs that clash wait for a later batch. Every
/// index appears exactly once; only the last batches may be smaller than `batch_size` (a pair
/// clashing with all others ends up alone rather than being dropped).
pub fn no_duplicate_batches(
    pairs: &[TrainingPair],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut remaining: Vec<usize> = (0..pairs.len()).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    remaining.shuffle(&mut rng);
    let mut batches = Vec::new();
    while !remaining.is_empty() {
        let mut batch = Vec::with_capacity(batch_size);
        let mut seen: HashSet<&str> = HashSet::new();
        let mut deferred = Vec::new();
        for &index in &remaining {
            let pair = &pairs[index];
            // A pair repeating a text of its own (e.g. a query equal to its positive) can only
            // be checked against the batch, not against itself.
            if batch.len() < batch_size && texts(pair).all(|t| !seen.contains(t)) {
                seen.extend(texts(pair));
                batch.push(index);
            } else {
                deferred.push(index);
            }
        }
        batches.push(batch);
        remaining = deferred;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Location;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn pairs(rows: &[(&str, &str)]) -> Vec<TrainingPair> {
        let path = Arc::new(PathBuf::from("p.jsonl"));
        rows.iter()
            .enumerate()
            .map(|(i, (q, p))| TrainingPair {
                query: q.to_string(),
                positive: p.to_string(),
                negatives: if i % 3 == 0 {
                    vec![format!("neg {}", i % 4)]
                } else {
                    vec![]
                },
                grade: 1,
                weight: 1.0,
                location: Location {
                    path: path.clone(),
                    line: i + 1,
                },
            })
            .collect()
    }

    #[test]
    fn every_pair_once_and_no_text_twice_in_a_batch() {
        // 100 pairs over 30 distinct queries and 45 distinct documents: many clashes.
        let rows: Vec<(String, String)> = (0..100)
            .map(|i| (format!("query {}", i % 30), format!("doc {}", (i * 7) % 45)))
            .collect();
        let refs: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let data = pairs(&refs);
        let batches = no_duplicate_batches(&data, 8, 42, 0);
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        for batch in &batches {
            assert!(!batch.is_empty() && batch.len() <= 8);
            let mut seen = HashSet::new();
            for &i in batch {
                for t in texts(&data[i]) {
                    assert!(seen.insert(t), "`{t}` twice in {batch:?}");
                }
            }
        }
        // Full batches first: only the tail may be short.
        let first_short = batches
            .iter()
            .position(|b| b.len() < 8)
            .unwrap_or(batches.len());
        assert!(
            first_short >= batches.len() - 6,
            "{:?}",
            batches.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn deterministic_per_seed_and_epoch() {
        let rows: Vec<(String, String)> = (0..50)
            .map(|i| (format!("q{i}"), format!("d{i}")))
            .collect();
        let refs: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let data = pairs(&refs);
        let a = no_duplicate_batches(&data, 16, 7, 0);
        assert_eq!(a, no_duplicate_batches(&data, 16, 7, 0));
        assert_ne!(a, no_duplicate_batches(&data, 16, 7, 1));
        assert_ne!(a, no_duplicate_batches(&data, 16, 8, 0));
        // Distinct queries and documents; only the shared negatives (`neg 0` … `neg 3`, on every
        // third pair) clash, so the first batches are full and every pair is placed.
        assert_eq!(a.iter().map(Vec::len).sum::<usize>(), 50);
        assert!(a[0].len() == 16 && a[1].len() == 16, "{a:?}");
    }
}
