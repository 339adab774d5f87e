//! The contrastive loss: InfoNCE (sentence-transformers' MultipleNegativesRankingLoss) with
//! in-batch negatives, explicit hard negatives, and an optional symmetric term.
//!
//! For a batch of `B` queries `q_i` with positives `p_i` and `N` hard negatives `n_j` (from any
//! pair of the batch), the candidates of every query are `[p_1 … p_B, n_1 … n_N]` and
//!
//! `loss = mean_i −log softmax_k(cos(q_i, c_k) / τ)[i]`
//!
//! so every other query's positive and every hard negative is a negative of `q_i`, except the
//! cells [`BatchTargets::excluded`] names (candidates judged relevant to `q_i`, see
//! [`crate::targets`]): their scores leave the softmax, so they are neither pushed away nor
//! count as negatives. With [`BatchTargets::weights`], the mean over queries becomes
//! `Σ wᵢ·ℓᵢ / Σ wᵢ`. With [`LossSettings::symmetric`], the document → query direction (`p_i`
//! against all queries, with the same exclusions transposed and the same weights) is averaged
//! in. Every op is differentiable (no fused kernels).

use attune_model::pooling::l2_normalize;
use candle_core::{DType, Result, Tensor, D};

/// Loss settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LossSettings {
    /// Temperature τ of the cosine similarities. Default 0.05 (sentence-transformers' scale 20).
    pub temperature: f64,
    /// Whether to add the document → query term. Default false.
    pub symmetric: bool,
    /// Matryoshka: the loss is the sum of the loss over each of these leading dimensions of
    /// the embeddings (each prefix re-normalised), so that truncated vectors stay useful
    /// (sentence-transformers' `MatryoshkaLoss`, weights 1). Empty (default): the full vector.
    pub matryoshka_dims: Vec<usize>,
}

impl Default for LossSettings {
    fn default() -> Self {
        Self {
            temperature: 0.05,
            symmetric: false,
            matryoshka_dims: Vec::new(),
        }
    }
}

/// What the loss knows about a batch besides its embeddings. `Default`: every other candidate
/// is a negative and every query weighs 1 (sentence-transformers' MNRL).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchTargets {
    /// Loss weight of each query row, all > 0 (empty: every row weighs 1).
    pub weights: Vec<f32>,
    /// `(query row, candidate column)` cells that are not negatives. A cell on the diagonal
    /// (the query's own positive) is ignored.
    pub excluded: Vec<(usize, usize)>,
}

/// Added to an excluded cell's scaled score: `exp` of it is exactly 0 in f32, so the cell
/// carries no probability and no gradient.
const EXCLUDED_SCORE: f32 = -1.0e4;

/// Weighted mean cross-entropy of each row of `scores` (`[B, C]`, C ≥ B) against the diagonal
/// target (row i's answer is column i), with the `excluded` cells out of the softmax.
fn diagonal_cross_entropy(
    scores: &Tensor,
    excluded: &[(usize, usize)],
    weights: &[f32],
) -> Result<Tensor> {
    let (rows, cols) = scores.dims2()?;
    let device = scores.device();
    let scores = if excluded.iter().any(|&(r, c)| r != c) {
        let mut bias = vec![0f32; rows * cols];
        for &(r, c) in excluded.iter().filter(|&&(r, c)| r != c) {
            if r >= rows || c >= cols {
                candle_core::bail!("info_nce: excluded cell ({r}, {c}) outside {rows}×{cols}");
            }
            bias[r * cols + c] = EXCLUDED_SCORE;
        }
        let bias = Tensor::from_vec(bias, (rows, cols), device)?.to_dtype(scores.dtype())?;
        (scores + bias)?
    } else {
        scores.clone()
    };
    let log_probs = candle_nn::ops::log_softmax(&scores, D::Minus1)?;
    let mut target = vec![0f32; rows * cols];
    for i in 0..rows {
        target[i * cols + i] = 1.0;
    }
    let target = Tensor::from_vec(target, (rows, cols), device)?.to_dtype(scores.dtype())?;
    let row_losses = (log_probs * target)?.sum(D::Minus1)?.neg()?;
    if weights.is_empty() {
        return row_losses.sum_all()? / rows as f64;
    }
    if weights.len() != rows {
        candle_core::bail!("info_nce: {} weights for {rows} queries", weights.len());
    }
    let total: f64 = weights.iter().map(|&w| w as f64).sum();
    if !(total > 0.0 && total.is_finite()) {
        candle_core::bail!("info_nce: the query weights must be positive");
    }
    let weights = Tensor::from_vec(weights.to_vec(), rows, device)?.to_dtype(scores.dtype())?;
    (row_losses * weights)?.sum_all()? / total
}

/// InfoNCE over query embeddings `[B, H]` and candidate embeddings `[B + N, H]` whose first `B`
/// rows are the positives (in query order) and the rest hard negatives. Embeddings need not be
/// normalized: cosine similarity is used. With [`LossSettings::matryoshka_dims`], the sum of
/// the loss over each leading prefix. Returns a scalar.
pub fn info_nce(
    queries: &Tensor,
    candidates: &Tensor,
    targets: &BatchTargets,
    settings: &LossSettings,
) -> Result<Tensor> {
    if settings.matryoshka_dims.is_empty() {
        return info_nce_full(queries, candidates, targets, settings);
    }
    let width = queries.dim(D::Minus1)?;
    let mut total: Option<Tensor> = None;
    for &dim in &settings.matryoshka_dims {
        if dim == 0 || dim > width {
            candle_core::bail!("info_nce: Matryoshka dimension {dim} outside 1..={width}");
        }
        let loss = info_nce_full(
            &queries.narrow(D::Minus1, 0, dim)?,
            &candidates.narrow(D::Minus1, 0, dim)?,
            targets,
            settings,
        )?;
        total = Some(match total {
            None => loss,
            Some(sum) => (sum + loss)?,
        });
    }
    Ok(total.expect("at least one dimension"))
}

/// [`info_nce`] over the whole vectors.
fn info_nce_full(
    queries: &Tensor,
    candidates: &Tensor,
    targets: &BatchTargets,
    settings: &LossSettings,
) -> Result<Tensor> {
    let (batch, _) = queries.dims2()?;
    let (count, _) = candidates.dims2()?;
    if count < batch {
        candle_core::bail!("info_nce: {count} candidates for {batch} queries; the first {batch} must be the positives");
    }
    let q = l2_normalize(queries)?;
    let c = l2_normalize(candidates)?;
    let scale = 1.0 / settings.temperature;
    let forward = diagonal_cross_entropy(
        &(q.matmul(&c.t()?)? * scale)?,
        &targets.excluded,
        &targets.weights,
    )?;
    if !settings.symmetric {
        return Ok(forward);
    }
    // Positive i against query j is excluded when candidate i is judged relevant to query j.
    let transposed: Vec<(usize, usize)> = targets
        .excluded
        .iter()
        .filter(|&&(_, col)| col < batch)
        .map(|&(row, col)| (col, row))
        .collect();
    let positives = c.narrow(0, 0, batch)?;
    let backward = diagonal_cross_entropy(
        &(positives.matmul(&q.t()?)? * scale)?,
        &transposed,
        &targets.weights,
    )?;
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
        let got = scalar(
            &info_nce(
                &matrix(&q),
                &matrix(&c),
                &BatchTargets::default(),
                &settings,
            )
            .unwrap(),
        )
        .unwrap();
        let want = reference(&q, &c, 0.05);
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");

        // Symmetric: the average with documents-as-queries over the positives.
        let sym = LossSettings {
            symmetric: true,
            ..Default::default()
        };
        let got =
            scalar(&info_nce(&matrix(&q), &matrix(&c), &BatchTargets::default(), &sym).unwrap())
                .unwrap();
        let want = (reference(&q, &c, 0.05) + reference(&c[..2], &q, 0.05)) / 2.0;
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
    }

    #[test]
    fn a_perfect_match_costs_almost_nothing_and_a_swap_costs_a_lot() {
        let q = matrix(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let good =
            scalar(&info_nce(&q, &q, &Default::default(), &Default::default()).unwrap()).unwrap();
        let swapped = matrix(&[&[0.0, 1.0], &[1.0, 0.0]]);
        let bad =
            scalar(&info_nce(&q, &swapped, &Default::default(), &Default::default()).unwrap())
                .unwrap();
        assert!(good < 1e-6, "{good}");
        assert!((bad - 20.0).abs() < 1e-4, "{bad}");
    }

    #[test]
    fn too_few_candidates_is_an_error() {
        let q = matrix(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let c = matrix(&[&[1.0, 0.0]]);
        assert!(info_nce(&q, &c, &Default::default(), &Default::default()).is_err());
    }

    /// The loss with `excluded` and `weights`, written out with plain floats: excluded cells
    /// leave the log-sum-exp, rows are averaged with the weights.
    fn reference_targets(
        q: &[&[f32]],
        c: &[&[f32]],
        excluded: &[(usize, usize)],
        weights: &[f64],
    ) -> f64 {
        let cos = |a: &[f32], b: &[f32]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            dot / (na * nb)
        };
        let (mut total, mut weight) = (0.0, 0.0);
        for (i, qi) in q.iter().enumerate() {
            let logits: Vec<f64> = c
                .iter()
                .enumerate()
                .filter(|&(j, _)| j == i || !excluded.contains(&(i, j)))
                .map(|(_, cj)| cos(qi, cj) / 0.05)
                .collect();
            let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
            total += weights[i] * (lse - cos(qi, c[i]) / 0.05);
            weight += weights[i];
        }
        total / weight
    }

    #[test]
    fn excluded_cells_leave_the_softmax_and_weights_average_the_rows() {
        let q: [&[f32]; 2] = [&[1.0, 0.2, 0.0], &[0.1, 1.0, 0.3]];
        let c: [&[f32]; 3] = [&[0.9, 0.1, 0.1], &[0.0, 2.0, 0.5], &[0.5, 0.5, -1.0]];
        let targets = BatchTargets {
            weights: vec![2.0, 0.5],
            excluded: vec![(0, 1), (1, 2), (1, 1)],
        };
        let got = info_nce(&matrix(&q), &matrix(&c), &targets, &LossSettings::default()).unwrap();
        let want = reference_targets(&q, &c, &[(0, 1), (1, 2)], &[2.0, 0.5]);
        let got = scalar(&got).unwrap();
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");

        // Symmetric: positive 1 against query 0 is excluded too.
        let sym = LossSettings {
            symmetric: true,
            ..Default::default()
        };
        let got = scalar(&info_nce(&matrix(&q), &matrix(&c), &targets, &sym).unwrap()).unwrap();
        let backward = reference_targets(&c[..2], &q, &[(1, 0)], &[2.0, 0.5]);
        let want = (want + backward) / 2.0;
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
    }

    #[test]
    fn an_excluded_candidate_gets_no_gradient() {
        use candle_core::Var;
        let q = matrix(&[&[1.0, 0.2], &[0.1, 1.0]]);
        let c = Var::from_tensor(&matrix(&[&[0.9, 0.4], &[0.5, 1.0], &[0.5, -1.0]])).unwrap();
        let targets = BatchTargets {
            weights: vec![],
            excluded: vec![(0, 2), (1, 2)],
        };
        let loss = info_nce(&q, c.as_tensor(), &targets, &LossSettings::default()).unwrap();
        let grads = loss.backward().unwrap();
        let grad = grads.get(c.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(grad[2], vec![0.0, 0.0]);
        assert!(grad[1].iter().any(|g| g.abs() > 1e-6));
    }

    #[test]
    fn bad_targets_are_errors() {
        let q = matrix(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let settings = LossSettings::default();
        let outside = BatchTargets {
            weights: vec![],
            excluded: vec![(0, 5)],
        };
        assert!(info_nce(&q, &q, &outside, &settings).is_err());
        let short = BatchTargets {
            weights: vec![1.0],
            excluded: vec![],
        };
        assert!(info_nce(&q, &q, &short, &settings).is_err());
    }

    #[test]
    fn matryoshka_sums_the_loss_of_each_prefix() {
        let q: [&[f32]; 2] = [&[1.0, 0.2, 0.0, 0.4], &[0.1, 1.0, 0.3, -0.2]];
        let c: [&[f32]; 3] = [
            &[0.9, 0.1, 0.1, 0.0],
            &[0.0, 2.0, 0.5, 0.3],
            &[0.5, 0.5, -1.0, 0.1],
        ];
        let settings = LossSettings {
            matryoshka_dims: vec![4, 2],
            ..Default::default()
        };
        let targets = BatchTargets::default();
        let got =
            scalar(&info_nce(&matrix(&q), &matrix(&c), &targets, &settings).unwrap()).unwrap();
        let prefix = |rows: &[&[f32]], d: usize| -> Vec<Vec<f32>> {
            rows.iter().map(|r| r[..d].to_vec()).collect()
        };
        let (q2, c2) = (prefix(&q, 2), prefix(&c, 2));
        let q2: Vec<&[f32]> = q2.iter().map(Vec::as_slice).collect();
        let c2: Vec<&[f32]> = c2.iter().map(Vec::as_slice).collect();
        let want = reference(&q, &c, 0.05) + reference(&q2, &c2, 0.05);
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
        let too_wide = LossSettings {
            matryoshka_dims: vec![5],
            ..Default::default()
        };
        assert!(info_nce(&matrix(&q), &matrix(&c), &targets, &too_wide).is_err());
    }
}
