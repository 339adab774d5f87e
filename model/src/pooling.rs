//! Pooling token embeddings into one sentence embedding, as sentence-transformers' `Pooling`
//! and `Normalize` modules do.

use candle_core::{Result, Tensor, D};

use crate::config::PoolingMode;

/// Pools `hidden` `(batch, seq, dim)` over the real tokens marked by `mask` `(batch, seq)` (f32,
/// 1 for a token, 0 for padding). Several modes are concatenated in the given order, giving
/// `(batch, dim × modes)`. Differentiable.
pub fn pool(hidden: &Tensor, mask: &Tensor, modes: &[PoolingMode]) -> Result<Tensor> {
    let counts = || mask.sum_keepdim(1); // (batch, 1)

    // Σ over real tokens as one batched product (batch, 1, seq) · (batch, seq, dim): candle's
    // sum over the middle axis of a masked copy took a pass and a copy more, on one thread.
    let summed = || mask.unsqueeze(1)?.matmul(&hidden.contiguous()?)?.squeeze(1); // (batch, dim)
    let parts = modes
        .iter()
        .map(|mode| match mode {
            PoolingMode::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
            PoolingMode::Mean => summed()?.broadcast_div(&counts()?.clamp(1e-9, f64::MAX)?),
            PoolingMode::MeanSqrtLen => {
                summed()?.broadcast_div(&counts()?.clamp(1e-9, f64::MAX)?.sqrt()?)
            }
            PoolingMode::Max => {
                // Padding is pushed to -1e9 (sentence-transformers' value) so it never wins.
                let mask3 = mask.unsqueeze(2)?; // (batch, seq, 1)
                let pad_penalty = ((mask3.ones_like()? - &mask3)? * -1e9)?;
                hidden.broadcast_add(&pad_penalty)?.max(1)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if parts.len() == 1 {
        Ok(parts.into_iter().next().expect("one part"))
    } else {
        Tensor::cat(&parts, 1)
    }
}

/// Scales each row of `xs` `(batch, dim)` to unit L2 norm (norms below 1e-12 are taken as 1e-12,
/// as `torch.nn.functional.normalize`). Differentiable.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norms = xs
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn fixture() -> (Tensor, Tensor) {
        // Two texts: the first has 2 real tokens, the second 3; seq = 3, dim = 2.
        let hidden = Tensor::new(
            &[
                [[1f32, 2.0], [3.0, -4.0], [100.0, 100.0]],
                [[-1.0, 0.0], [0.5, 6.0], [2.0, -3.0]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1f32, 1.0, 0.0], [1.0, 1.0, 1.0]], &Device::Cpu).unwrap();
        (hidden, mask)
    }

    fn rows(t: Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().unwrap()
    }

    #[test]
    fn each_mode_ignores_padding() {
        let (h, m) = fixture();
        assert_eq!(
            rows(pool(&h, &m, &[PoolingMode::Cls]).unwrap()),
            vec![vec![1.0, 2.0], vec![-1.0, 0.0]]
        );
        assert_eq!(
            rows(pool(&h, &m, &[PoolingMode::Mean]).unwrap()),
            vec![vec![2.0, -1.0], vec![0.5, 1.0]]
        );
        assert_eq!(
            rows(pool(&h, &m, &[PoolingMode::Max]).unwrap()),
            vec![vec![3.0, 2.0], vec![2.0, 6.0]]
        );
        let sqrt = rows(pool(&h, &m, &[PoolingMode::MeanSqrtLen]).unwrap());
        assert!((sqrt[0][0] - 4.0 / 2f32.sqrt()).abs() < 1e-6);
        assert!((sqrt[1][1] - 3.0 / 3f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn several_modes_concatenate_in_order() {
        let (h, m) = fixture();
        let both = rows(pool(&h, &m, &[PoolingMode::Cls, PoolingMode::Mean]).unwrap());
        assert_eq!(both[0], vec![1.0, 2.0, 2.0, -1.0]);
    }

    #[test]
    fn normalize_gives_unit_rows_and_keeps_zero_rows_finite() {
        let xs = Tensor::new(&[[3f32, 4.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        let n = rows(l2_normalize(&xs).unwrap());
        assert_eq!(n[0], vec![0.6, 0.8]);
        assert_eq!(n[1], vec![0.0, 0.0]);
    }
}
