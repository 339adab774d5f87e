//! `attune merge`: linear interpolation of a tuned model's weights with its base, the simplest
//! control on forgetting (alpha 1 is the tuned model, 0 the base).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use attune_model::ModelDir;
use clap::Args;

/// Arguments of `attune merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The base model directory.
    #[arg(long, value_name = "DIR")]
    pub base: PathBuf,
    /// The tuned model directory (same architecture and tokenizer).
    #[arg(long, value_name = "DIR")]
    pub tuned: PathBuf,
    /// Weight of the tuned model: merged = base + alpha · (tuned − base), 0 to 1.
    #[arg(long, value_name = "F")]
    pub alpha: f64,
    /// Output model directory (written whole, then moved into place).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs `attune merge`.
pub fn run(args: MergeArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.alpha) {
        bail!("--alpha {}: expected a number from 0 to 1", args.alpha);
    }
    let base = ModelDir::open(&args.base)
        .with_context(|| format!("base model {}", args.base.display()))?;
    let tuned = ModelDir::open(&args.tuned)
        .with_context(|| format!("tuned model {}", args.tuned.display()))?;
    let card = serde_json::json!({
        "merged_by": "attune merge",
        "base": args.base.display().to_string(),
        "tuned": args.tuned.display().to_string(),
        "alpha": args.alpha,
    });
    ModelDir::interpolate(
        &base,
        &tuned,
        args.alpha,
        &args.out,
        &[(
            "merge_card.json".to_string(),
            serde_json::to_vec_pretty(&card)?,
        )],
    )?;
    eprintln!(
        "merged {} and {} at alpha {} → {}",
        args.base.display(),
        args.tuned.display(),
        args.alpha,
        args.out.display()
    );
    Ok(())
}
