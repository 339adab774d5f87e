//! sentence-transformers' `Dense` module: a linear projection of the pooled embedding with an
//! activation (`activation(x · Wᵀ + b)`), as many models add after pooling to change the
//! dimension. Its weights stay frozen while attune trains the transformer; a tuned directory
//! carries them over unchanged.

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

/// `N_Dense/config.json`. sentence-transformers 6.x adds `module_input_name` and
/// `module_output_name`, which are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseConfig {
    /// Width of the input (the pooled embedding, or the previous Dense module's output).
    pub in_features: usize,
    /// Width of the output.
    pub out_features: usize,
    /// Whether the projection has a bias (default true).
    #[serde(default = "default_bias")]
    pub bias: bool,
    /// The activation's PyTorch class path (default `torch.nn.modules.activation.Tanh`,
    /// sentence-transformers' default).
    #[serde(default = "default_activation")]
    pub activation_function: String,
}

fn default_bias() -> bool {
    true
}

fn default_activation() -> String {
    DenseActivation::Tanh.torch_path().to_string()
}

/// The activations attune implements for the Dense module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseActivation {
    /// `torch.nn.Tanh`.
    Tanh,
    /// `torch.nn.Identity` (a plain projection).
    Identity,
    /// `torch.nn.ReLU`.
    Relu,
    /// `torch.nn.GELU` (exact, with erf).
    Gelu,
    /// `torch.nn.Sigmoid`.
    Sigmoid,
}

impl DenseActivation {
    /// Every activation, for error messages.
    pub const ALL: [DenseActivation; 5] = [
        DenseActivation::Tanh,
        DenseActivation::Identity,
        DenseActivation::Relu,
        DenseActivation::Gelu,
        DenseActivation::Sigmoid,
    ];

    /// The PyTorch class path sentence-transformers writes.
    pub fn torch_path(self) -> &'static str {
        match self {
            DenseActivation::Tanh => "torch.nn.modules.activation.Tanh",
            DenseActivation::Identity => "torch.nn.modules.linear.Identity",
            DenseActivation::Relu => "torch.nn.modules.activation.ReLU",
            DenseActivation::Gelu => "torch.nn.modules.activation.GELU",
            DenseActivation::Sigmoid => "torch.nn.modules.activation.Sigmoid",
        }
    }

    /// Parses a class path (`torch.nn.modules.activation.Tanh`, or the short
    /// `torch.nn.Tanh`).
    pub fn from_torch_path(path: &str) -> Option<Self> {
        let class = path.rsplit('.').next()?;
        Self::ALL
            .into_iter()
            .find(|a| a.torch_path().rsplit('.').next() == Some(class))
    }

    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            DenseActivation::Tanh => xs.tanh(),
            DenseActivation::Identity => Ok(xs.clone()),
            DenseActivation::Relu => xs.relu(),
            DenseActivation::Gelu => xs.gelu_erf(),
            DenseActivation::Sigmoid => candle_nn::ops::sigmoid(xs),
        }
    }
}

/// A loaded Dense module.
#[derive(Debug, Clone)]
pub struct DenseLayer {
    weight: Tensor,
    bias: Option<Tensor>,
    activation: DenseActivation,
}

impl DenseLayer {
    /// Builds the layer from its `linear.weight` `(out, in)` and optional `linear.bias`, moved
    /// to `device` as f32.
    pub fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        activation: DenseActivation,
        device: &Device,
    ) -> Result<Self> {
        let load = |t: &Tensor| t.to_dtype(DType::F32)?.to_device(device);
        Ok(DenseLayer {
            weight: load(weight)?,
            bias: bias.map(load).transpose()?,
            activation,
        })
    }

    /// `activation(xs · Wᵀ + b)` for `xs` `(batch, in)`; differentiable in `xs`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut ys = xs.matmul(&self.weight.t()?)?;
        if let Some(bias) = &self.bias {
            ys = ys.broadcast_add(bias)?;
        }
        self.activation.apply(&ys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_parse_from_long_and_short_class_paths() {
        for a in DenseActivation::ALL {
            assert_eq!(DenseActivation::from_torch_path(a.torch_path()), Some(a));
        }
        assert_eq!(
            DenseActivation::from_torch_path("torch.nn.Tanh"),
            Some(DenseActivation::Tanh)
        );
        assert_eq!(DenseActivation::from_torch_path("torch.nn.Softsign"), None);
    }

    #[test]
    fn forward_projects_then_activates() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0], [0.0, -1.0], [0.5, 0.5]], &dev).unwrap();
        let b = Tensor::new(&[0f32, 1.0, -1.0], &dev).unwrap();
        let layer = DenseLayer::new(&w, Some(&b), DenseActivation::Tanh, &dev).unwrap();
        let x = Tensor::new(&[[1f32, 1.0]], &dev).unwrap();
        let got = layer.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let want = [3f32.tanh(), 0f32.tanh(), 0f32.tanh()];
        for (g, w) in got[0].iter().zip(want) {
            assert!((g - w).abs() < 1e-6);
        }
    }
}
