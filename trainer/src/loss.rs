//! The contrastive loss: InfoNCE (sentence-transformers' MultipleNegativesRankingLoss) with
//! in-batch negatives, explicit hard negatives, and an optional symmetric term.
//!
//! For a batch of `B` queries `q_i` with positives `p_i` and `N` hard negatives `n_j` (from any
//! pair of the batch), the candidates of every query are `[p_1 … p_B, n_1 … n_N]` and
//!
//! `loss = mean_i −log softmax_k(cos(q_i, c_k) / τ)[i]`
//!
//! so every other query's positive and every hard negative is a negative of `q_i`. With
//! [`LossSettings::symmetric`], the document → query direction (`p_i` against all queries) is
//! averaged in. Every op is differentiable (no fused kernels).

use attune_model::pooling::l2_normalize;
use candle_core::{DType, Result, Tensor, D};

/// Loss settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LossSettings {
    /// Temperature τ of the cosine similarities. Default 0.05 (sentence-transformers' scale 20).
    pub temperature: f64,
    /// Whether to add the document → query term. Default false.
    pub symmetric: bool,
}

impl Default for LossSettings {
    fn default() -> Self {
        Self {
            temperature: 0.05,
            symmetric: false,
        }
    }
}

/// Mean cross-entropy of each row of `scores` (`[B, C]`, C ≥ B) against the diagonal target
/// (row i's answer is column i).
fn diagonal_cross_entropy(scores: &Tensor) -> Result<Tensor> {
    let (rows, cols) = scores.dims2()?;
    let log_probs = candle_nn::ops::log_softmax(scores, D::Minus1)?;
    let mut target = vec![0f32; rows * cols];
    for i in 0..rows {
        target[i * cols + i] = 1.0;
    }
    let target =
        Tensor::from_vec(target, (rows, cols), scores.device())?.to_dtype(scores.dtype())?;
    (log_probs * target)?.sum_all()?.neg()? / rows as f64
}

/// InfoNCE over query embeddings `[B, H]` and candidate embeddings `[B + N, H]` whose first `B`
/// rows are the positives (in query order) and the rest hard negatives. Embeddings need not be
/// normalized: cosine similarity is used. Returns a scalar.
pub fn info_nce(queries: &Tensor, candidates: &Tensor, settings: &LossSettings) -> Result<Tensor> {
    let (batch, _) = queries.dims2()?;
    let (count, _) = candidates.dims2()?;
    if count < batch {
        candle_core::bail!("info_nce: {count} candidates for {batch} queries; the first {batch} must be the positives");
    }
    let q = l2_normalize(queries)?;
    let c = l2_normalize(candidates)?;
    let scale = 1.0 / settings.temperature;
    let forward = diagonal_cross_entropy(&(q.matmul(&c.t()?)? * scale)?)?;
    if !settings.symmetric {
        return Ok(forward);
    }
    let positives = c.narrow(0, 0, batch)?;
    let backward = diagonal_cross_entropy(&(positives.matmul(&q.t()?)? * scale)?)?;
    (forward + backward)? / 2.0
}

/// The loss as an f64 (for logs).
pub fn scalar(loss: &Tensor) -> Result<f64> {
    loss.to_dtype(DType::F64)?.to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn matrix(rows: &[&[f32]]) -> Tensor {
        let cols = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), cols), &Device::Cpu).unwrap()
    }

    /// The loss written out with plain floats.
    fn reference(q: &[&[f32]], c: &[&[f32]], tau: f64) -> f64 {
        let cos = |a: &[f32], b: &[f32]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            dot / (na * nb)
        };
        let mut total = 0.0;
        for (i, qi) in q.iter().enumerate() {
            let logits: Vec<f64> = c.iter().map(|cj| cos(qi, cj) / tau).collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            total += lse - logits[i];
        }
        total / q.len() as f64
    }

    #[test]
    fn matches_the_written_out_formula() {
        let q: [&[f32]; 2] = [&[1.0, 0.2, 0.0], &[0.1, 1.0, 0.3]];
        let c: [&[f32]; 3] = [&[0.9, 0.1, 0.1], &[0.0, 2.0, 0.5], &[0.5, 0.5, -1.0]];
        let settings = LossSettings::default();
        let got = scalar(&info_nce(&matrix(&q), &matrix(&c), &settings).unwrap()).unwrap();
        let want = reference(&q, &c, 0.05);
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");

        // Symmetric: the average with documents-as-queries over the positives.
        let sym = LossSettings {
            symmetric: true,
            ..Default::default()
        };
        let got = scalar(&info_nce(&matrix(&q), &matrix(&c), &sym).unwrap()).unwrap();
        let want = (reference(&q, &c, 0.05) + reference(&c[..2], &q, 0.05)) / 2.0;
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
    }

    #[test]
    fn a_perfect_match_costs_almost_nothing_and_a_swap_costs_a_lot() {
        let q = matrix(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let good = scalar(&info_nce(&q, &q, &Default::default()).unwrap()).unwrap();
        let swapped = matrix(&[&[0.0, 1.0], &[1.0, 0.0]]);
        let bad = scalar(&info_nce(&q, &swapped, &Default::default()).unwrap()).unwrap();
        assert!(good < 1e-6, "{good}");
        assert!((bad - 20.0).abs() < 1e-4, "{bad}");
    }

    #[test]
    fn too_few_candidates_is_an_error() {
        let q = matrix(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let c = matrix(&[&[1.0, 0.0]]);
        assert!(info_nce(&q, &c, &Default::default()).is_err());
    }
}
