//! LoRA (Hu et al., 2021): low-rank adapters on chosen linear layers of every transformer layer,
//! trained while the model's own weights stay frozen. On save the adapters are merged into the
//! weights, so the output is a plain model directory; the adapters are also written on their own.

use std::collections::HashMap;

use attune_model::{LinearTarget, LoraAdapter, TransformerModel};
use candle_core::{DType, Device, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Result, TrainError};

/// LoRA settings (`--lora-rank`, `--lora-alpha`, `--lora-targets`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraSettings {
    /// Rank `r` of each adapter.
    pub rank: usize,
    /// Scale numerator: the adapter's output is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Layers adapted in every transformer layer.
    #[serde(serialize_with = "target_names")]
    pub targets: Vec<LinearTarget>,
}

fn target_names<S: serde::Serializer>(
    targets: &[LinearTarget],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(targets.iter().map(|t| target_flag(*t)))
}

/// The `--lora-targets` spelling of a target.
pub fn target_flag(target: LinearTarget) -> &'static str {
    match target {
        LinearTarget::Query => "q",
        LinearTarget::Key => "k",
        LinearTarget::Value => "v",
        LinearTarget::AttentionOutput => "o",
        LinearTarget::Intermediate => "ffn_in",
        LinearTarget::Output => "ffn_out",
    }
}

/// Parses `q,k,v,o[,ffn]` (`ffn` is both feed-forward projections).
pub fn parse_targets(spec: &str) -> Result<Vec<LinearTarget>> {
    let mut targets = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let add: &[LinearTarget] = match part {
            "q" => &[LinearTarget::Query],
            "k" => &[LinearTarget::Key],
            "v" => &[LinearTarget::Value],
            "o" => &[LinearTarget::AttentionOutput],
            "ffn" => &[LinearTarget::Intermediate, LinearTarget::Output],
            "ffn_in" => &[LinearTarget::Intermediate],
            "ffn_out" => &[LinearTarget::Output],
            other => {
                return Err(TrainError::InvalidSetting {
                    name: "lora-targets",
                    problem: format!("unknown target {other:?}; use q, k, v, o, ffn"),
                })
            }
        };
        for t in add {
            if !targets.contains(t) {
                targets.push(*t);
            }
        }
    }
    if targets.is_empty() {
        return Err(TrainError::InvalidSetting {
            name: "lora-targets",
            problem: "name at least one of q, k, v, o, ffn".into(),
        });
    }
    Ok(targets)
}

impl LoraSettings {
    /// Checks ranges; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(TrainError::InvalidSetting {
                name: "lora-rank",
                problem: "at least 1".into(),
            });
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(TrainError::InvalidSetting {
                name: "lora-alpha",
                problem: format!("a positive number, got {}", self.alpha),
            });
        }
        if self.targets.is_empty() {
            return Err(TrainError::InvalidSetting {
                name: "lora-targets",
                problem: "name at least one layer".into(),
            });
        }
        Ok(())
    }
}

/// The checkpoint name of layer `layer`'s `target` linear (`encoder.layer.3.attention.self.query`
/// in BERT), or an error naming the target when the model's family has no such layer.
fn linear_name(model: &dyn TransformerModel, layer: usize, target: LinearTarget) -> Result<String> {
    model
        .linear_name(layer, target)
        .ok_or_else(|| TrainError::InvalidSetting {
            name: "lora-targets",
            problem: format!(
                "`{}`: this model's family has no such linear layer",
                target_flag(target)
            ),
        })
}

/// Attaches fresh adapters to `model` and returns their variables by name (`….lora_A`, `….lora_B`).
/// `A` is uniform in ±1/√in (PEFT's Kaiming initialisation), `B` is zero, so training starts at
/// the base model exactly.
pub fn attach(
    model: &mut dyn TransformerModel,
    settings: &LoraSettings,
    seed: u64,
    device: &Device,
) -> Result<Vec<(String, Var)>> {
    settings.validate()?;
    let layers = model.num_layers();
    let scale = settings.alpha / settings.rank as f64;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4C6F_5241);
    let mut vars = Vec::new();
    for layer in 0..layers {
        for &target in &settings.targets {
            let name = linear_name(model, layer, target)?;
            let linear = model
                .linear_mut(layer, target)
                .expect("a named linear layer exists");
            let (out_dim, in_dim) = linear.weight().dims2()?;
            let bound = 1.0 / (in_dim as f32).sqrt();
            let values: Vec<f32> = (0..settings.rank * in_dim)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(values, (settings.rank, in_dim), device)?)?;
            let b = Var::from_tensor(&Tensor::zeros(
                (out_dim, settings.rank),
                DType::F32,
                device,
            )?)?;
            linear.set_lora(Some(LoraAdapter {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale,
            }));
            vars.push((format!("{name}.lora_A"), a));
            vars.push((format!("{name}.lora_B"), b));
        }
    }
    vars.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(vars)
}

/// The merged weights `W + B·A·alpha/rank` of every adapted linear, by checkpoint tensor name
/// (`….weight`), from the adapter tensors in `adapters` (named as [`attach`] names them) and
/// the frozen weights of `model`.
pub fn merged_weights(
    model: &mut dyn TransformerModel,
    settings: &LoraSettings,
    adapters: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let layers = model.num_layers();
    let scale = settings.alpha / settings.rank as f64;
    let mut out = HashMap::new();
    for layer in 0..layers {
        for &target in &settings.targets {
            let name = linear_name(model, layer, target)?;
            let get = |suffix: &str| {
                adapters.get(&format!("{name}.{suffix}")).ok_or_else(|| {
                    TrainError::Candle(candle_core::Error::Msg(format!(
                        "no adapter tensor {name}.{suffix}"
                    )))
                })
            };
            let (a, b) = (get("lora_A")?, get("lora_B")?);
            let linear = model
                .linear_mut(layer, target)
                .expect("a named linear layer exists");
            let delta = (b.matmul(a)? * scale)?;
            out.insert(format!("{name}.weight"), (linear.weight() + delta)?);
        }
    }
    Ok(out)
}

/// The adapters as a safetensors file's bytes, and a PEFT-style `adapter_config.json`.
pub fn adapter_files(
    settings: &LoraSettings,
    adapters: &HashMap<String, Tensor>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let tmp = std::env::temp_dir().join(format!(
        "attune-adapter-{}-{}.safetensors",
        std::process::id(),
        adapters.len()
    ));
    candle_core::safetensors::save(adapters, &tmp)?;
    let bytes = std::fs::read(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let _ = std::fs::remove_file(&tmp);
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "target_modules": settings.targets.iter().map(|t| t.checkpoint_name()).collect::<Vec<_>>(),
        "merged_into_weights": true,
        "tensor_names": "encoder.layer.N.<module>.lora_A (r × in), lora_B (out × r)",
    });
    Ok(vec![
        ("adapter_model.safetensors".to_string(), bytes),
        (
            "adapter_config.json".to_string(),
            serde_json::to_vec_pretty(&config).expect("config serializes"),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_name_the_flag() {
        assert_eq!(
            parse_targets("q,v").unwrap(),
            vec![LinearTarget::Query, LinearTarget::Value]
        );
        assert_eq!(parse_targets("q,k,v,o,ffn").unwrap().len(), 6);
        assert!(parse_targets("q,x")
            .unwrap_err()
            .to_string()
            .contains("lora-targets"));
        assert!(parse_targets("").is_err());
    }
}
