//! Exact retrieval for evaluation: every query against every document by dot product (cosine on
//! unit vectors), blocked matrix products on the encoder's device, and a top-k selection per
//! query that never sorts the whole corpus.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{EvalError, Result};

/// Row-major `rows × dim` vectors (embeddings of queries or documents).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingMatrix {
    /// Number of vectors.
    pub rows: usize,
    /// Dimension of each vector.
    pub dim: usize,
    /// `rows * dim` values, vector after vector.
    pub data: Vec<f32>,
}

impl EmbeddingMatrix {
    /// Packs equal-length vectors into one matrix. `dim` is used when `vectors` is empty.
    pub fn from_rows(vectors: &[Vec<f32>], dim: usize) -> Result<Self> {
        let dim = vectors.first().map_or(dim, Vec::len);
        let mut data = Vec::with_capacity(vectors.len() * dim);
        for (i, v) in vectors.iter().enumerate() {
            if v.len() != dim {
                return Err(EvalError::InvalidSetting {
                    name: "embeddings",
                    problem: format!("vector {i} has {} values, expected {dim}", v.len()),
                });
            }
            data.extend_from_slice(v);
        }
        Ok(Self {
            rows: vectors.len(),
            dim,
            data,
        })
    }

    /// Vector `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    fn block(&self, start: usize, end: usize, device: &Device) -> Result<Tensor> {
        let slice = &self.data[start * self.dim..end * self.dim];
        Ok(Tensor::from_slice(slice, (end - start, self.dim), device)?)
    }
}

/// Block sizes of [`exact_top_k`]; they bound memory (`query_block × corpus_block` scores), not
/// results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactSearchSettings {
    /// Queries per matrix product. Default 512.
    pub query_block: usize,
    /// Documents per matrix product. Default 32,768 (a 64 MiB score block with 512 queries).
    pub corpus_block: usize,
}

impl Default for ExactSearchSettings {
    fn default() -> Self {
        Self {
            query_block: 512,
            corpus_block: 32_768,
        }
    }
}

/// A heap entry ordered so that *worse* is greater: lower score, then higher tie rank.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    rank: u32,
    doc: u32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.rank.cmp(&other.rank))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// One retrieved document: its corpus row and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Row in the corpus matrix.
    pub doc: u32,
    /// Dot product with the query.
    pub score: f32,
}

/// The `k` best documents of every query, best first: score descending, equal scores by
/// `tie_rank` ascending (pass each document's position in id order to break ties by id, as
/// sentence-transformers does). `tie_rank` has one entry per corpus row.
pub fn exact_top_k(
    queries: &EmbeddingMatrix,
    corpus: &EmbeddingMatrix,
    k: usize,
    tie_rank: &[u32],
    device: &Device,
    settings: &ExactSearchSettings,
) -> Result<Vec<Vec<Hit>>> {
    if queries.dim != corpus.dim && queries.rows > 0 && corpus.rows > 0 {
        return Err(EvalError::InvalidSetting {
            name: "embeddings",
            problem: format!(
                "queries have dimension {} but documents {}",
                queries.dim, corpus.dim
            ),
        });
    }
    if tie_rank.len() != corpus.rows {
        return Err(EvalError::InvalidSetting {
            name: "tie_rank",
            problem: format!("{} entries for {} documents", tie_rank.len(), corpus.rows),
        });
    }
    let query_block = settings.query_block.max(1);
    let corpus_block = settings.corpus_block.max(1);
    if k == 0 || corpus.rows == 0 {
        return Ok(vec![Vec::new(); queries.rows]);
    }
    let better = |a: &Hit, b: &Hit| -> Ordering {
        b.score
            .total_cmp(&a.score)
            .then_with(|| tie_rank[a.doc as usize].cmp(&tie_rank[b.doc as usize]))
    };
    // Per query, a heap of the k best so far whose top is the worst of them: a score enters
    // only when it beats that, so most of a row costs one comparison and nothing is allocated.
    let mut heaps: Vec<BinaryHeap<Candidate>> = (0..queries.rows)
        .map(|_| BinaryHeap::with_capacity(k.min(corpus.rows) + 1))
        .collect();
    for c_start in (0..corpus.rows).step_by(corpus_block) {
        let c_end = (c_start + corpus_block).min(corpus.rows);
        let docs_t = corpus.block(c_start, c_end, device)?.t()?;
        for q_start in (0..queries.rows).step_by(query_block) {
            let q_end = (q_start + query_block).min(queries.rows);
            let scores = queries
                .block(q_start, q_end, device)?
                .matmul(&docs_t)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let width = c_end - c_start;
            heaps[q_start..q_end]
                .par_iter_mut()
                .zip(scores.par_chunks(width))
                .for_each(|(heap, row)| {
                    for (j, &score) in row.iter().enumerate() {
                        let doc = (c_start + j) as u32;
                        let candidate = Candidate {
                            score,
                            rank: tie_rank[doc as usize],
                            doc,
                        };
                        if heap.len() < k {
                            heap.push(candidate);
                        } else if let Some(mut worst) = heap.peek_mut() {
                            if candidate < *worst {
                                *worst = candidate;
                            }
                        }
                    }
                });
        }
    }
    let mut best: Vec<Vec<Hit>> = heaps
        .into_iter()
        .map(|heap| {
            heap.into_iter()
                .map(|c| Hit {
                    doc: c.doc,
                    score: c.score,
                })
                .collect()
        })
        .collect();
    best.par_iter_mut().for_each(|hits| hits.sort_by(better));
    Ok(best)
}

/// Each document's position when ids are sorted ascending: the tie-break of [`exact_top_k`].
pub fn id_order_ranks<S: AsRef<str>>(ids: &[S]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by(|a, b| ids[*a].as_ref().cmp(ids[*b].as_ref()));
    let mut ranks = vec![0u32; ids.len()];
    for (rank, i) in order.into_iter().enumerate() {
        ranks[i] = rank as u32;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random_matrix(rows: usize, dim: usize, seed: u64) -> EmbeddingMatrix {
        let mut rng = StdRng::seed_from_u64(seed);
        let data = (0..rows * dim)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        EmbeddingMatrix { rows, dim, data }
    }

    fn brute_force(q: &EmbeddingMatrix, c: &EmbeddingMatrix, k: usize) -> Vec<Vec<u32>> {
        (0..q.rows)
            .map(|i| {
                let mut scored: Vec<(f32, u32)> = (0..c.rows)
                    .map(|j| {
                        let s = q.row(i).iter().zip(c.row(j)).map(|(a, b)| a * b).sum();
                        (s, j as u32)
                    })
                    .collect();
                scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                scored.into_iter().take(k).map(|(_, j)| j).collect()
            })
            .collect()
    }

    #[test]
    fn blocked_top_k_equals_a_full_sort() {
        let q = random_matrix(37, 16, 1);
        let c = random_matrix(501, 16, 2);
        let ranks: Vec<u32> = (0..501).collect();
        let want = brute_force(&q, &c, 10);
        for settings in [
            ExactSearchSettings::default(),
            ExactSearchSettings {
                query_block: 5,
                corpus_block: 64,
            },
        ] {
            let got = exact_top_k(&q, &c, 10, &ranks, &Device::Cpu, &settings).unwrap();
            for (g, w) in got.iter().zip(&want) {
                let g: Vec<u32> = g.iter().map(|h| h.doc).collect();
                assert_eq!(&g, w);
            }
        }
        // k larger than the corpus returns everything, sorted.
        let all = exact_top_k(&q, &c, 1000, &ranks, &Device::Cpu, &Default::default()).unwrap();
        assert_eq!(all[0].len(), 501);
        assert!(all[0].windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn equal_scores_break_by_id_order() {
        let c = EmbeddingMatrix::from_rows(&[vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0]], 2)
            .unwrap();
        let q = EmbeddingMatrix::from_rows(&[vec![1.0, 0.0]], 2).unwrap();
        let ranks = id_order_ranks(&["b", "a", "c"]);
        assert_eq!(ranks, vec![1, 0, 2]);
        let hits = exact_top_k(&q, &c, 1, &ranks, &Device::Cpu, &Default::default()).unwrap();
        assert_eq!(hits[0][0].doc, 1, "id `a` wins the tie");
    }

    #[test]
    fn mismatched_dimensions_are_refused() {
        assert!(EmbeddingMatrix::from_rows(&[vec![1.0], vec![1.0, 2.0]], 1).is_err());
        let q = random_matrix(2, 3, 1);
        let c = random_matrix(2, 4, 1);
        assert!(exact_top_k(&q, &c, 1, &[0, 1], &Device::Cpu, &Default::default()).is_err());
    }
}
