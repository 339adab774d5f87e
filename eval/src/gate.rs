//! The promotion gate: may a candidate model replace its baseline?
//!
//! Two checks, both on nDCG@10 means:
//! - general capability: on the general set, `baseline - candidate` (an absolute drop in nDCG
//!   points, 0.01 = one point) must not exceed [`GateSettings::max_general_drop`];
//! - domain gain (only with [`GateSettings::require_gain`]): on the domain set, the candidate
//!   must be strictly better than the baseline.

use serde::Serialize;

use crate::error::{EvalError, Result};

/// What the gate demands.
#[derive(Debug, Clone, PartialEq)]
pub struct GateSettings {
    /// Largest allowed absolute drop of nDCG@10 on the general set. Default 0.01.
    pub max_general_drop: f64,
    /// Whether the domain nDCG@10 must improve. Default false.
    pub require_gain: bool,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            max_general_drop: 0.01,
            require_gain: false,
        }
    }
}

impl GateSettings {
    /// Checks the settings themselves.
    pub fn validate(&self) -> Result<()> {
        if !(self.max_general_drop.is_finite() && self.max_general_drop >= 0.0) {
            return Err(EvalError::InvalidSetting {
                name: "max-general-drop",
                problem: format!("must be a number ≥ 0, got {}", self.max_general_drop),
            });
        }
        Ok(())
    }
}

/// nDCG@10 of both models on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateInput {
    /// Dataset name, for messages.
    pub dataset: String,
    /// The baseline's nDCG@10.
    pub baseline: f64,
    /// The candidate's nDCG@10.
    pub candidate: f64,
}

/// One check of the gate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateCheck {
    /// `general_drop` or `domain_gain`.
    pub check: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// A sentence stating each number.
    pub message: String,
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateOutcome {
    /// Whether every check passed (true when there was nothing to check).
    pub passed: bool,
    /// The checks that ran.
    pub checks: Vec<GateCheck>,
}

/// Runs the checks for which inputs are given.
pub fn check_gate(
    settings: &GateSettings,
    domain: &GateInput,
    general: Option<&GateInput>,
) -> GateOutcome {
    let mut checks = Vec::new();
    if let Some(general) = general {
        let drop = general.baseline - general.candidate;
        let passed = drop <= settings.max_general_drop + 1e-12;
        checks.push(GateCheck {
            check: "general_drop",
            passed,
            message: format!(
                "general capability on {}: nDCG@10 {:.4} (candidate) vs {:.4} (baseline), drop {:.4} {} allowed {:.4}",
                general.dataset,
                general.candidate,
                general.baseline,
                drop,
                if passed { "≤" } else { ">" },
                settings.max_general_drop
            ),
        });
    }
    if settings.require_gain {
        let gain = domain.candidate - domain.baseline;
        let passed = gain > 0.0;
        checks.push(GateCheck {
            check: "domain_gain",
            passed,
            message: format!(
                "domain gain on {}: nDCG@10 {:.4} (candidate) vs {:.4} (baseline), gain {:+.4} {}",
                domain.dataset,
                domain.candidate,
                domain.baseline,
                gain,
                if passed { "> 0" } else { "is not > 0" }
            ),
        });
    }
    GateOutcome {
        passed: checks.iter().all(|c| c.passed),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, baseline: f64, candidate: f64) -> GateInput {
        GateInput {
            dataset: name.into(),
            baseline,
            candidate,
        }
    }

    #[test]
    fn general_drop_is_bounded() {
        let settings = GateSettings::default();
        let domain = input("scifact", 0.64, 0.67);
        let ok = check_gate(&settings, &domain, Some(&input("cranfield", 0.30, 0.291)));
        assert!(ok.passed, "{ok:?}");
        let exact = check_gate(&settings, &domain, Some(&input("cranfield", 0.30, 0.29)));
        assert!(exact.passed, "a drop equal to the limit passes");
        let bad = check_gate(&settings, &domain, Some(&input("cranfield", 0.30, 0.2849)));
        assert!(!bad.passed);
        let msg = &bad.checks[0].message;
        for number in ["0.2849", "0.3000", "0.0151", "0.0100", "cranfield"] {
            assert!(msg.contains(number), "{msg}");
        }
    }

    #[test]
    fn gain_is_required_only_when_asked() {
        let flat = input("scifact", 0.64, 0.64);
        assert!(check_gate(&GateSettings::default(), &flat, None).passed);
        let strict = GateSettings {
            require_gain: true,
            ..Default::default()
        };
        let outcome = check_gate(&strict, &flat, None);
        assert!(!outcome.passed);
        assert!(outcome.checks[0].message.contains("+0.0000 is not > 0"));
        assert!(check_gate(&strict, &input("scifact", 0.64, 0.65), None).passed);
    }

    #[test]
    fn negative_or_nan_allowances_are_refused() {
        for bad in [-0.1, f64::NAN] {
            let settings = GateSettings {
                max_general_drop: bad,
                ..Default::default()
            };
            assert!(settings.validate().is_err());
        }
    }
}
