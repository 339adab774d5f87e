//! AdamW as PyTorch's `torch.optim.AdamW` computes it, with weight decay skipped for biases and
//! LayerNorm weights (as Hugging Face's Trainer groups parameters), the linear warmup-then-decay
//! schedule of `get_linear_schedule_with_warmup`, and global gradient-norm clipping as
//! `torch.nn.utils.clip_grad_norm_`. Device-generic: state lives in tensors beside the weights.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use rayon::prelude::*;

/// AdamW hyperparameters. Defaults: lr 2e-5, betas (0.9, 0.999), eps 1e-8 (PyTorch's), weight
/// decay 0.01.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWSettings {
    /// Peak learning rate (the schedule scales it).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay, applied to decayed parameters only.
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            lr: 2e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Whether a parameter gets weight decay: not biases, not LayerNorm weights.
pub fn decays(name: &str) -> bool {
    !(name.ends_with("bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

/// Linear warmup from 0 to 1 over `warmup_steps`, then linear decay to 0 at `total_steps`
/// (`get_linear_schedule_with_warmup`); `step` is 0-based, so the first step's factor is 0.
pub fn linear_schedule(step: usize, warmup_steps: usize, total_steps: usize) -> f64 {
    if step < warmup_steps {
        return step as f64 / warmup_steps.max(1) as f64;
    }
    let remaining = total_steps.saturating_sub(step) as f64;
    (remaining / total_steps.saturating_sub(warmup_steps).max(1) as f64).max(0.0)
}

/// The AdamW moments of one parameter.
enum Moments {
    /// On the parameter's device, updated with tensor operations (any device).
    Tensors { first: Tensor, second: Tensor },
    /// On the CPU in f32, updated by one fused pass over all cores: no temporary tensors, which
    /// on the CPU cost more than the arithmetic.
    Host { first: Vec<f32>, second: Vec<f32> },
}

impl Moments {
    fn zeros(var: &Var, host: bool) -> Result<Self> {
        Ok(if host {
            let n = var.elem_count();
            Moments::Host {
                first: vec![0.0; n],
                second: vec![0.0; n],
            }
        } else {
            let zeros = var.as_tensor().zeros_like()?;
            Moments::Tensors {
                first: zeros.clone(),
                second: zeros,
            }
        })
    }

    fn from_tensors(var: &Var, first: Tensor, second: Tensor, host: bool) -> Result<Self> {
        Ok(if host {
            let flat = |t: Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
            Moments::Host {
                first: flat(first)?,
                second: flat(second)?,
            }
        } else {
            Moments::Tensors {
                first: first.to_device(var.device())?.to_dtype(var.dtype())?,
                second: second.to_device(var.device())?.to_dtype(var.dtype())?,
            }
        })
    }

    fn to_tensors(&self, var: &Var) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Moments::Tensors { first, second } => (first.clone(), second.clone()),
            Moments::Host { first, second } => (
                Tensor::from_slice(first, var.shape(), &Device::Cpu)?,
                Tensor::from_slice(second, var.shape(), &Device::Cpu)?,
            ),
        })
    }
}

/// One parameter with its AdamW state.
struct Parameter {
    name: String,
    var: Var,
    moments: Moments,
    decay: bool,
}

/// Whether a variable's moments live on the host: f32 variables on the CPU.
fn on_host(var: &Var) -> bool {
    var.device().is_cpu() && var.dtype() == DType::F32
}

/// Scalars of one AdamW update, in f32 as the tensors are.
#[derive(Clone, Copy)]
struct UpdateScalars {
    /// `1 - lr·weight_decay`, or 1 without decay.
    keep: f32,
    /// Gradient scale from clipping.
    clip: f32,
    beta1: f32,
    beta2: f32,
    /// `lr / (1 - β1ᵗ)`.
    step_size: f32,
    /// `sqrt(1 - β2ᵗ)`.
    bias2_sqrt: f32,
    eps: f32,
}

/// The fused host update: the same formula as the tensor path, element by element.
fn update_host(theta: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], u: UpdateScalars) {
    const CHUNK: usize = 1 << 14;
    theta
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((theta, grad), m), v)| {
            for i in 0..theta.len() {
                let g = grad[i] * u.clip;
                m[i] = u.beta1 * m[i] + (1.0 - u.beta1) * g;
                v[i] = u.beta2 * v[i] + (1.0 - u.beta2) * g * g;
                let denominator = v[i].sqrt() / u.bias2_sqrt + u.eps;
                theta[i] = theta[i] * u.keep - u.step_size * (m[i] / denominator);
            }
        });
}

/// What [`AdamW`] carries from step to step.
#[derive(Debug, Clone)]
pub struct AdamWState {
    /// Optimizer steps taken (the bias corrections depend on it).
    pub steps: usize,
    /// Parameter name → (first moment, second moment).
    pub moments: std::collections::HashMap<String, (Tensor, Tensor)>,
}

/// AdamW over named variables.
pub struct AdamW {
    parameters: Vec<Parameter>,
    settings: AdamWSettings,
    /// Optimizer steps taken.
    steps: usize,
}

impl AdamW {
    /// An optimizer over `vars` (name, variable), in the given order; decay follows [`decays`].
    pub fn new(vars: Vec<(String, Var)>, settings: AdamWSettings) -> Result<Self> {
        Self::with_placement(vars, settings, on_host)
    }

    /// [`AdamW::new`] with the choice of host or tensor moments made by `host`.
    fn with_placement(
        vars: Vec<(String, Var)>,
        settings: AdamWSettings,
        host: fn(&Var) -> bool,
    ) -> Result<Self> {
        let parameters = vars
            .into_iter()
            .map(|(name, var)| {
                Ok(Parameter {
                    decay: decays(&name),
                    moments: Moments::zeros(&var, host(&var))?,
                    name,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            parameters,
            settings,
            steps: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The state a checkpoint needs to continue exactly: steps taken and, per parameter name, the
    /// first and second moments.
    pub fn state(&self) -> Result<AdamWState> {
        Ok(AdamWState {
            steps: self.steps,
            moments: self
                .parameters
                .iter()
                .map(|p| Ok((p.name.clone(), p.moments.to_tensors(&p.var)?)))
                .collect::<Result<_>>()?,
        })
    }

    /// Restores a [`AdamW::state`]: every parameter must have both moments, shaped like it.
    pub fn restore(&mut self, mut state: AdamWState) -> Result<()> {
        for p in &mut self.parameters {
            let Some((first, second)) = state.moments.remove(&p.name) else {
                candle_core::bail!("optimizer state has no moments for `{}`", p.name);
            };
            for moment in [&first, &second] {
                if moment.shape() != p.var.shape() {
                    candle_core::bail!(
                        "optimizer state for `{}` has shape {:?}, the parameter {:?}",
                        p.name,
                        moment.shape(),
                        p.var.shape()
                    );
                }
            }
            let host = matches!(p.moments, Moments::Host { .. });
            p.moments = Moments::from_tensors(&p.var, first, second, host)?;
        }
        if let Some(name) = state.moments.keys().next() {
            candle_core::bail!("optimizer state has moments for unknown parameter `{name}`");
        }
        self.steps = state.steps;
        Ok(())
    }

    /// Names of the parameters, and whether each decays.
    pub fn parameter_names(&self) -> impl Iterator<Item = (&str, bool)> {
        self.parameters.iter().map(|p| (p.name.as_str(), p.decay))
    }

    /// The L2 norm of all gradients together (0 for parameters without one).
    pub fn gradient_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0.0;
        for p in &self.parameters {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`, after scaling gradients so their total norm is at
    /// most `max_grad_norm` (as `clip_grad_norm_`: coefficient `max / (norm + 1e-6)`, capped at
    /// 1). Returns the gradient norm before clipping.
    pub fn step(&mut self, grads: &GradStore, lr: f64, max_grad_norm: Option<f64>) -> Result<f64> {
        let norm = self.gradient_norm(grads)?;
        let clip = match max_grad_norm {
            Some(max) => (max / (norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.steps += 1;
        let s = &self.settings;
        let t = self.steps as i32;
        let bias1 = 1.0 - s.beta1.powi(t);
        let bias2 = 1.0 - s.beta2.powi(t);
        for p in &mut self.parameters {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let keep = if p.decay && s.weight_decay != 0.0 {
                1.0 - lr * s.weight_decay
            } else {
                1.0
            };
            match &mut p.moments {
                Moments::Host { first, second } => {
                    let mut theta = p.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                    let grad = grad.flatten_all()?.to_vec1::<f32>()?;
                    let scalars = UpdateScalars {
                        keep: keep as f32,
                        clip: clip as f32,
                        beta1: s.beta1 as f32,
                        beta2: s.beta2 as f32,
                        step_size: (lr / bias1) as f32,
                        bias2_sqrt: bias2.sqrt() as f32,
                        eps: s.eps as f32,
                    };
                    update_host(&mut theta, &grad, first, second, scalars);
                    p.var
                        .set(&Tensor::from_vec(theta, p.var.shape(), p.var.device())?)?;
                }
                Moments::Tensors { first, second } => {
                    let grad = if clip < 1.0 {
                        (grad * clip)?
                    } else {
                        grad.clone()
                    };
                    let theta = (p.var.as_tensor() * keep)?;
                    *first = ((&*first * s.beta1)? + (&grad * (1.0 - s.beta1))?)?;
                    *second = ((&*second * s.beta2)? + (grad.sqr()? * (1.0 - s.beta2))?)?;
                    let denominator = ((second.sqrt()? / bias2.sqrt())? + s.eps)?;
                    let update = ((&*first / &denominator)? * (lr / bias1))?;
                    p.var.set(&(theta - update)?)?;
                }
            }
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(values: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }

    /// PyTorch's AdamW on one scalar, written out.
    fn reference(mut theta: f64, grads: &[f64], lr: f64, s: &AdamWSettings, decay: bool) -> f64 {
        let (mut m, mut v) = (0.0, 0.0);
        for (i, g) in grads.iter().enumerate() {
            let t = (i + 1) as i32;
            if decay {
                theta *= 1.0 - lr * s.weight_decay;
            }
            m = s.beta1 * m + (1.0 - s.beta1) * g;
            v = s.beta2 * v + (1.0 - s.beta2) * g * g;
            let denom = v.sqrt() / (1.0 - s.beta2.powi(t)).sqrt() + s.eps;
            theta -= lr / (1.0 - s.beta1.powi(t)) * m / denom;
        }
        theta
    }

    #[test]
    fn the_fused_host_update_equals_the_tensor_update() {
        let settings = AdamWSettings {
            lr: 0.05,
            weight_decay: 0.1,
            ..Default::default()
        };
        let run = |host: fn(&Var) -> bool| -> Vec<f32> {
            let initial: Vec<f32> = (0..50_000)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let w =
                Var::from_tensor(&Tensor::new(initial.as_slice(), &Device::Cpu).unwrap()).unwrap();
            let mut opt =
                AdamW::with_placement(vec![("w".into(), w.clone())], settings.clone(), host)
                    .unwrap();
            for step in 0..3 {
                let loss = (w.as_tensor().sqr().unwrap().sqr().unwrap() * (step + 1) as f64)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                opt.step(&loss.backward().unwrap(), 0.05, Some(1.0))
                    .unwrap();
            }
            values(&w)
        };
        let host = run(|_| true);
        let tensors = run(|_| false);
        let worst = host
            .iter()
            .zip(&tensors)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // Weights are up to 2 in size: a few f32 ulps (the scalar products round differently).
        assert!(worst <= 4e-6, "max |host - tensor| = {worst}");
    }

    #[test]
    fn a_restored_optimizer_continues_exactly() {
        let settings = AdamWSettings {
            lr: 0.1,
            ..Default::default()
        };
        let run = |restore_after: Option<usize>| -> Vec<f32> {
            let w = var(&[1.0, -2.0, 0.5]);
            let mut opt = AdamW::new(vec![("w".into(), w.clone())], settings.clone()).unwrap();
            for step in 0..4 {
                if restore_after == Some(step) {
                    let state = opt.state().unwrap();
                    let mut fresh =
                        AdamW::new(vec![("w".into(), w.clone())], settings.clone()).unwrap();
                    fresh.restore(state).unwrap();
                    opt = fresh;
                }
                let loss = (w.as_tensor().sqr().unwrap() * (step + 1) as f64)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                opt.step(&loss.backward().unwrap(), 0.1, Some(1.0)).unwrap();
            }
            values(&w)
        };
        assert_eq!(run(None), run(Some(2)));
        // A fresh optimizer (zero moments, step 0) takes a different path.
        let w = var(&[1.0]);
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], settings.clone()).unwrap();
        let mut state = opt.state().unwrap();
        state
            .moments
            .insert("other".into(), state.moments["w"].clone());
        assert!(opt
            .restore(state)
            .unwrap_err()
            .to_string()
            .contains("`other`"));
    }

    #[test]
    fn updates_match_pytorch_adamw_with_and_without_decay() {
        let settings = AdamWSettings {
            lr: 0.1,
            weight_decay: 0.1,
            ..Default::default()
        };
        let weight = var(&[1.0, -2.0]);
        let bias = var(&[0.5, 0.25]);
        let mut opt = AdamW::new(
            vec![
                ("layer.dense.weight".into(), weight.clone()),
                ("layer.dense.bias".into(), bias.clone()),
            ],
            settings.clone(),
        )
        .unwrap();
        // Loss = sum(w² ⋅ c) + sum(b ⋅ c) with c = [1, 3]: gradients 2wc and c.
        let c = Tensor::new(&[1f32, 3.0], &Device::Cpu).unwrap();
        let mut w_grads = [Vec::new(), Vec::new()];
        for _ in 0..3 {
            let w_now = values(&weight);
            for (j, g) in w_grads.iter_mut().enumerate() {
                g.push(2.0 * w_now[j] as f64 * [1.0, 3.0][j]);
            }
            let loss = ((weight.as_tensor().sqr().unwrap() * &c)
                .unwrap()
                .sum_all()
                .unwrap()
                + (bias.as_tensor() * &c).unwrap().sum_all().unwrap())
            .unwrap();
            opt.step(&loss.backward().unwrap(), 0.1, None).unwrap();
        }
        let w = values(&weight);
        for j in 0..2 {
            let want = reference([1.0, -2.0][j], &w_grads[j], 0.1, &settings, true);
            assert!(
                (w[j] as f64 - want).abs() < 1e-5,
                "w[{j}] {} vs {want}",
                w[j]
            );
        }
        let b = values(&bias);
        for j in 0..2 {
            let g = [1.0, 3.0][j];
            let want = reference([0.5, 0.25][j], &[g, g, g], 0.1, &settings, false);
            assert!(
                (b[j] as f64 - want).abs() < 1e-5,
                "b[{j}] {} vs {want}",
                b[j]
            );
        }
        assert_eq!(opt.steps(), 3);
    }

    #[test]
    fn decay_skips_biases_and_layer_norms() {
        assert!(decays("encoder.layer.0.attention.self.query.weight"));
        assert!(decays("embeddings.word_embeddings.weight"));
        assert!(!decays("encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("encoder.layer.0.output.LayerNorm.weight"));
        assert!(!decays("embeddings.LayerNorm.bias"));
    }

    #[test]
    fn schedule_warms_up_then_decays_linearly() {
        // 87 steps with 9 warmup steps (the scifact recipe).
        assert_eq!(linear_schedule(0, 9, 87), 0.0);
        assert!((linear_schedule(3, 9, 87) - 3.0 / 9.0).abs() < 1e-12);
        assert_eq!(linear_schedule(9, 9, 87), 1.0);
        assert!((linear_schedule(48, 9, 87) - 39.0 / 78.0).abs() < 1e-12);
        assert_eq!(linear_schedule(87, 9, 87), 0.0);
        assert_eq!(linear_schedule(100, 9, 87), 0.0);
        assert_eq!(linear_schedule(0, 0, 10), 1.0);
    }

    #[test]
    fn clipping_bounds_the_update_by_the_global_norm() {
        // With one step, Adam's update is lr·sign(g) whatever the scale, so check the returned
        // norm and that clipping changes the moments' scale (second step differs).
        let a = var(&[3.0]);
        let b = var(&[4.0]);
        let mut opt = AdamW::new(
            vec![
                ("a.weight".into(), a.clone()),
                ("b.weight".into(), b.clone()),
            ],
            AdamWSettings {
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let loss = (a.as_tensor() * 3.0).unwrap().sum_all().unwrap();
        let loss = (loss + (b.as_tensor() * 4.0).unwrap().sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        assert!((opt.gradient_norm(&grads).unwrap() - 5.0).abs() < 1e-6);
        let before = opt.step(&grads, 0.1, Some(1.0)).unwrap();
        assert!((before - 5.0).abs() < 1e-6);
        // First moment after one clipped step: (1 - β1)·g·(1/5).
        let state = opt.state().unwrap();
        let m = state.moments[&opt.parameters[0].name]
            .0
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!((m - 0.1 * 3.0 / 5.0).abs() < 1e-6, "{m}");
    }
}
