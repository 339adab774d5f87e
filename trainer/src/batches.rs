//! Batches without duplicate texts: with in-batch negatives, a text that appears twice in a
//! batch is its own false negative, so no batch holds the same query, positive or negative text
//! twice (sentence-transformers' `NoDuplicatesBatchSampler`).

use std::collections::{HashMap, HashSet};

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
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut epoch_rng(seed, epoch));
    pack(
        pairs,
        order.into_iter().map(|i| vec![i]).collect(),
        batch_size,
    )
}

/// The generator of an epoch's batch order.
fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Packs `groups` of pair indices, in order, into batches of at most `batch_size` pairs: each
/// batch takes every group that fits and shares no text with it; the rest wait for a later
/// batch (a group clashing with all others ends up alone rather than being dropped). A group
/// repeating a text of its own (its query, or a query equal to its positive) is checked
/// against the batch only.
fn pack(pairs: &[TrainingPair], mut groups: Vec<Vec<usize>>, batch_size: usize) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut batches = Vec::new();
    while !groups.is_empty() {
        let mut batch: Vec<usize> = Vec::with_capacity(batch_size);
        let mut seen: HashSet<&str> = HashSet::new();
        let mut deferred = Vec::new();
        for group in groups {
            let own: HashSet<&str> = group.iter().flat_map(|&i| texts(&pairs[i])).collect();
            let fits = batch.is_empty() || batch.len() + group.len() <= batch_size;
            if fits && own.iter().all(|t| !seen.contains(t)) {
                seen.extend(own);
                batch.extend(group);
            } else {
                deferred.push(group);
            }
        }
        batches.push(batch);
        groups = deferred;
    }
    batches
}

/// One epoch's batches in which each query brings up to `per_query` of its pairs together, so
/// that its judged answers meet in one batch: masked out of each other's negatives (the
/// trainer's default), each still has to outscore every other query's candidates. Apart from a
/// group's own query, no text appears twice in a batch. `per_query` 1 is
/// [`no_duplicate_batches`].
///
/// A query's pairs are shuffled and cut into groups of at most `per_query` with distinct
/// texts; groups are shuffled and packed into batches as [`no_duplicate_batches`] packs pairs
/// (a group that clashes or does not fit waits for a later batch). Every index appears
/// exactly once; deterministic in `(seed, epoch)`.
pub fn query_grouped_batches(
    pairs: &[TrainingPair],
    batch_size: usize,
    per_query: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    if per_query <= 1 {
        return no_duplicate_batches(pairs, batch_size, seed, epoch);
    }
    let mut rng = epoch_rng(seed, epoch);
    let mut by_query: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (index, pair) in pairs.iter().enumerate() {
        let query = pair.query.trim();
        by_query.entry(query).or_insert_with(|| {
            order.push(query);
            Vec::new()
        });
        by_query.get_mut(query).expect("inserted").push(index);
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for query in order {
        let mut members = by_query.remove(query).expect("grouped");
        members.shuffle(&mut rng);
        groups.extend(groups_of_distinct_texts(
            pairs,
            &members,
            per_query.min(batch_size),
        ));
    }
    groups.shuffle(&mut rng);
    pack(pairs, groups, batch_size)
}

/// `members` (pairs of one query) cut into groups of at most `size` whose positives and
/// negatives are all distinct, in order.
fn groups_of_distinct_texts(
    pairs: &[TrainingPair],
    members: &[usize],
    size: usize,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Vec<usize>, HashSet<&str>)> = Vec::new();
    for &index in members {
        let own: Vec<&str> = texts(&pairs[index]).skip(1).collect();
        let slot = groups
            .iter()
            .position(|(g, seen)| g.len() < size && own.iter().all(|t| !seen.contains(t)));
        let (group, seen) = match slot {
            Some(slot) => &mut groups[slot],
            None => {
                groups.push((Vec::new(), HashSet::new()));
                groups.last_mut().expect("pushed")
            }
        };
        group.push(index);
        seen.extend(own);
    }
    groups.into_iter().map(|(g, _)| g).collect()
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
                source: None,
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
    fn grouped_batches_bring_a_querys_answers_together_and_nothing_else_twice() {
        // 30 queries with 1 to 6 answers each; documents shared between some queries.
        let rows: Vec<(String, String)> = (0..30)
            .flat_map(|q| {
                (0..1 + q % 6).map(move |a| {
                    (
                        format!("query {q}"),
                        format!("doc {}", (q * 5 + a * 11) % 97),
                    )
                })
            })
            .collect();
        let refs: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let data = pairs(&refs);
        let batches = query_grouped_batches(&data, 8, 4, 42, 0);
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..data.len()).collect::<Vec<_>>());
        let mut together = 0;
        for batch in &batches {
            assert!(!batch.is_empty() && batch.len() <= 8);
            let mut per_query: HashMap<&str, usize> = HashMap::new();
            let mut seen = HashSet::new();
            for &i in batch {
                *per_query.entry(data[i].query.as_str()).or_default() += 1;
                for t in texts(&data[i]).skip(1) {
                    assert!(seen.insert(t), "`{t}` twice in {batch:?}");
                }
            }
            for (query, n) in per_query {
                assert!(n <= 4, "{query}: {n} pairs in one batch");
                assert!(!seen.contains(query), "{query} is also a candidate");
                together += usize::from(n > 1);
            }
        }
        assert!(
            together > 10,
            "queries with several answers met in {together} batches"
        );
        assert_eq!(batches, query_grouped_batches(&data, 8, 4, 42, 0));
        assert_eq!(
            query_grouped_batches(&data, 8, 1, 42, 0),
            no_duplicate_batches(&data, 8, 42, 0)
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
