//! Live A/B tests: deterministic assignment of users to variants, and the report over served
//! requests and their feedback (click-through rate and mean reciprocal rank of clicks, with 95%
//! confidence intervals).

use std::collections::{BTreeMap, HashMap};

use attune_index::{FeedbackRecord, ServedRequest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::settings::AbSettings;

/// 97.5th percentile of the standard normal: two-sided 95% intervals.
const Z95: f64 = 1.959_963_984_540_054;

/// What a shopper did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackEvent {
    /// Opened the result.
    Click,
    /// Put it in the cart.
    AddToCart,
    /// Bought it.
    Purchase,
}

impl FeedbackEvent {
    /// The name stored in the event log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Click => "click",
            Self::AddToCart => "add_to_cart",
            Self::Purchase => "purchase",
        }
    }
}

/// The variant (space) that serves `user` in `collection`: a hash of the test's salt (the
/// configured one, else the collection's own random salt `test_salt`), collection and user,
/// read as a number in [0, 1), below the treatment share gets the treatment. The same user
/// always gets the same variant while the test runs; without the salt, nobody can predict it.
pub fn assign_variant<'a>(
    settings: &'a AbSettings,
    test_salt: &str,
    collection: &str,
    user: &str,
) -> &'a str {
    let salt = settings.salt.as_deref().unwrap_or(test_salt);
    let mut hasher = Sha256::new();
    for part in [salt, collection, user] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
    if unit < settings.treatment_share {
        &settings.treatment
    } else {
        &settings.control
    }
}

/// A proportion with its 95% Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Rate {
    /// Successes over trials (0 when there are no trials).
    pub value: f64,
    /// Lower bound of the 95% interval.
    pub low: f64,
    /// Upper bound of the 95% interval.
    pub high: f64,
}

/// A mean with its 95% normal-approximation interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Mean {
    /// The mean (0 when there are no samples).
    pub value: f64,
    /// Lower bound of the 95% interval.
    pub low: f64,
    /// Upper bound of the 95% interval.
    pub high: f64,
}

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VariantReport {
    /// The space that served this variant.
    pub variant: String,
    /// Requests served.
    pub requests: usize,
    /// Requests with at least one click.
    pub clicked_requests: usize,
    /// Click events.
    pub clicks: usize,
    /// Add-to-cart events.
    pub add_to_cart: usize,
    /// Purchase events.
    pub purchases: usize,
    /// Share of requests with at least one click.
    pub click_through_rate: Rate,
    /// Mean over requests of 1/rank of the best-ranked click (0 without a click).
    pub mean_reciprocal_rank: Mean,
    /// Share of requests with a purchase.
    pub purchase_rate: Rate,
}

/// Treatment minus control, with 95% intervals (normal approximation, unpooled).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Difference {
    /// Treatment CTR minus control CTR.
    pub click_through_rate: Mean,
    /// Treatment MRR minus control MRR.
    pub mean_reciprocal_rank: Mean,
}

/// The A/B report of a collection.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AbReport {
    /// Control space.
    pub control: String,
    /// Treatment space.
    pub treatment: String,
    /// Configured share of users served by the treatment.
    pub treatment_share: f64,
    /// Control first, then treatment, then any other variant found in the log.
    pub variants: Vec<VariantReport>,
    /// Treatment minus control; absent until both have requests.
    pub difference: Option<Difference>,
    /// A/B requests whose results had an adjacent pair swapped to estimate position bias
    /// (`[feedback] explore_share`): left out of the figures above, which compare the variants'
    /// own rankings.
    pub explored_requests: usize,
}

/// Wilson score interval of `successes` out of `trials`.
pub fn wilson(successes: usize, trials: usize) -> Rate {
    if trials == 0 {
        return Rate {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        };
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    Rate {
        value: p,
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    }
}

/// Mean of `samples` and its variance of the mean.
fn mean_and_variance(samples: &[f64]) -> (f64, f64) {
    let n = samples.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = samples.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let variance = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, variance / n as f64)
}

/// The 95% interval of a mean, clamped to the values it can take (`bounds`: [0, 1] for a rate
/// or a reciprocal rank, [-1, 1] for a difference of two).
fn interval(mean: f64, variance_of_mean: f64, bounds: (f64, f64)) -> Mean {
    let half = Z95 * variance_of_mean.sqrt();
    Mean {
        value: mean,
        low: (mean - half).max(bounds.0),
        high: (mean + half).min(bounds.1),
    }
}

const UNIT: (f64, f64) = (0.0, 1.0);
const SIGNED_UNIT: (f64, f64) = (-1.0, 1.0);

/// Per-request outcomes of one variant.
#[derive(Default)]
struct Outcomes {
    clicked: Vec<f64>,
    reciprocal_ranks: Vec<f64>,
    purchased: usize,
    clicks: usize,
    add_to_cart: usize,
    purchases: usize,
}

/// The report over every served request and feedback record.
pub fn report(
    settings: &AbSettings,
    served: &[ServedRequest],
    feedback: &[FeedbackRecord],
) -> AbReport {
    let mut by_request: HashMap<&str, Vec<&FeedbackRecord>> = HashMap::new();
    for record in feedback {
        by_request
            .entry(record.request_id.as_str())
            .or_default()
            .push(record);
    }
    let mut variants: BTreeMap<&str, Outcomes> = BTreeMap::new();
    let mut explored_requests = 0;
    // Searches logged only for feedback are no A/B traffic.
    for request in served.iter().filter(|r| r.ab) {
        if request.swapped.is_some() {
            explored_requests += 1;
            continue;
        }
        let outcomes = variants.entry(request.variant.as_str()).or_default();
        let events = by_request
            .get(request.request_id.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let best_click = events
            .iter()
            .filter(|e| e.event == FeedbackEvent::Click.as_str())
            .map(|e| e.rank)
            .min();
        outcomes
            .clicked
            .push(f64::from(u8::from(best_click.is_some())));
        outcomes
            .reciprocal_ranks
            .push(best_click.map_or(0.0, |rank| 1.0 / rank as f64));
        let count =
            |event: FeedbackEvent| events.iter().filter(|e| e.event == event.as_str()).count();
        outcomes.clicks += count(FeedbackEvent::Click);
        outcomes.add_to_cart += count(FeedbackEvent::AddToCart);
        let purchases = count(FeedbackEvent::Purchase);
        outcomes.purchases += purchases;
        outcomes.purchased += usize::from(purchases > 0);
    }
    let summarize = |name: &str, outcomes: Option<&Outcomes>| {
        let empty = Outcomes::default();
        let o = outcomes.unwrap_or(&empty);
        let requests = o.clicked.len();
        let clicked = o.clicked.iter().filter(|&&c| c > 0.0).count();
        let (mrr, mrr_var) = mean_and_variance(&o.reciprocal_ranks);
        VariantReport {
            variant: name.to_string(),
            requests,
            clicked_requests: clicked,
            clicks: o.clicks,
            add_to_cart: o.add_to_cart,
            purchases: o.purchases,
            click_through_rate: wilson(clicked, requests),
            mean_reciprocal_rank: interval(mrr, mrr_var, UNIT),
            purchase_rate: wilson(o.purchased, requests),
        }
    };
    let mut reports = vec![
        summarize(&settings.control, variants.get(settings.control.as_str())),
        summarize(
            &settings.treatment,
            variants.get(settings.treatment.as_str()),
        ),
    ];
    for (name, outcomes) in &variants {
        if *name != settings.control && *name != settings.treatment {
            reports.push(summarize(name, Some(outcomes)));
        }
    }
    let difference = match (
        variants.get(settings.control.as_str()),
        variants.get(settings.treatment.as_str()),
    ) {
        (Some(control), Some(treatment)) => {
            let (c_ctr, c_ctr_var) = mean_and_variance(&control.clicked);
            let (t_ctr, t_ctr_var) = mean_and_variance(&treatment.clicked);
            let (c_mrr, c_mrr_var) = mean_and_variance(&control.reciprocal_ranks);
            let (t_mrr, t_mrr_var) = mean_and_variance(&treatment.reciprocal_ranks);
            Some(Difference {
                click_through_rate: interval(t_ctr - c_ctr, c_ctr_var + t_ctr_var, SIGNED_UNIT),
                mean_reciprocal_rank: interval(t_mrr - c_mrr, c_mrr_var + t_mrr_var, SIGNED_UNIT),
            })
        }
        _ => None,
    };
    AbReport {
        control: settings.control.clone(),
        treatment: settings.treatment.clone(),
        treatment_share: settings.treatment_share,
        variants: reports,
        difference,
        explored_requests,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_deterministic_and_follows_the_share() {
        let settings = AbSettings {
            treatment_share: 0.3,
            ..AbSettings::default()
        };
        let treated = (0..10_000)
            .filter(|u| assign_variant(&settings, "s1", "shop", &format!("user-{u}")) == "tuned")
            .count();
        assert!((2_800..3_200).contains(&treated), "{treated}");
        for u in 0..100 {
            let user = format!("user-{u}");
            assert_eq!(
                assign_variant(&settings, "s1", "shop", &user),
                assign_variant(&settings, "s1", "shop", &user)
            );
        }
        // Another test's salt assigns other users: from outside, a user's arm is a coin flip.
        let moved = (0..1_000)
            .filter(|u| {
                let user = format!("user-{u}");
                assign_variant(&settings, "s1", "shop", &user)
                    != assign_variant(&settings, "s2", "shop", &user)
            })
            .count();
        assert!((300..540).contains(&moved), "{moved}");
        // A configured salt wins over the test's own.
        let pinned = AbSettings {
            salt: Some("pinned".into()),
            ..settings.clone()
        };
        assert_eq!(
            assign_variant(&pinned, "s1", "shop", "user-1"),
            assign_variant(&pinned, "s2", "shop", "user-1")
        );
        let all = AbSettings {
            treatment_share: 1.0,
            ..AbSettings::default()
        };
        assert_eq!(assign_variant(&all, "s1", "shop", "anyone"), "tuned");
    }

    #[test]
    fn intervals_never_leave_the_range_of_their_measure() {
        // One clicked request at rank 1 among many without: the normal interval of the MRR
        // would dip below 0.
        let served: Vec<ServedRequest> = (0..6).map(|i| served(&format!("r{i}"), "base")).collect();
        let feedback = [event("r0", "a", "click", 1)];
        let report = report(&AbSettings::default(), &served, &feedback);
        let mrr = report.variants[0].mean_reciprocal_rank;
        assert!(mrr.low >= 0.0 && mrr.high <= 1.0, "{mrr:?}");
        assert_eq!(mrr.low, 0.0);
        let diff = interval(0.9, 0.5, SIGNED_UNIT);
        assert_eq!(diff.high, 1.0);
        assert!(diff.low > -1.0 && diff.low < 0.0, "{diff:?}");
        assert_eq!(interval(-0.9, 0.5, SIGNED_UNIT).low, -1.0);
    }

    #[test]
    fn wilson_interval_matches_reference_values() {
        // 8 of 10: the Wilson 95% interval is [0.4902, 0.9433] (textbook value).
        let rate = wilson(8, 10);
        assert!((rate.value - 0.8).abs() < 1e-12);
        assert!((rate.low - 0.4902).abs() < 1e-4, "{rate:?}");
        assert!((rate.high - 0.9433).abs() < 1e-4, "{rate:?}");
        assert_eq!(wilson(0, 0).value, 0.0);
    }

    fn served(id: &str, variant: &str) -> ServedRequest {
        ServedRequest::new(
            id.into(),
            variant.into(),
            "salt",
            "user",
            "q",
            vec!["a".into(), "b".into(), "c".into()],
            0,
        )
    }

    fn event(id: &str, doc: &str, event: &str, rank: usize) -> FeedbackRecord {
        FeedbackRecord {
            request_id: id.into(),
            doc_id: doc.into(),
            event: event.into(),
            rank,
            unix_ms: 0,
        }
    }

    #[test]
    fn explored_and_feedback_only_requests_stay_out_of_the_variants() {
        let mut explored = served("2", "tuned");
        explored.swapped = Some(1);
        let mut logged_only = served("3", "tuned");
        logged_only.ab = false;
        let served = vec![served("1", "tuned"), explored, logged_only];
        let feedback = vec![event("2", "b", "click", 1), event("3", "a", "click", 1)];
        let report = report(&AbSettings::default(), &served, &feedback);
        assert_eq!(report.explored_requests, 1);
        let tuned = &report.variants[1];
        assert_eq!((tuned.requests, tuned.clicks), (1, 0));
    }

    #[test]
    fn report_counts_ctr_and_mrr_of_the_best_click() {
        let settings = AbSettings::default();
        let served = vec![
            served("1", "base"),
            served("2", "base"),
            served("3", "tuned"),
            served("4", "tuned"),
        ];
        let feedback = vec![
            event("1", "c", "click", 3),
            event("3", "b", "click", 2),
            event("3", "a", "click", 1),
            event("3", "a", "purchase", 1),
            event("4", "b", "click", 2),
        ];
        let report = report(&settings, &served, &feedback);
        let base = &report.variants[0];
        let tuned = &report.variants[1];
        assert_eq!((base.variant.as_str(), base.requests), ("base", 2));
        assert_eq!(base.click_through_rate.value, 0.5);
        assert!((base.mean_reciprocal_rank.value - (1.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(tuned.click_through_rate.value, 1.0);
        assert!((tuned.mean_reciprocal_rank.value - (1.0 + 0.5) / 2.0).abs() < 1e-12);
        assert_eq!((tuned.clicks, tuned.purchases), (3, 1));
        assert_eq!(tuned.purchase_rate.value, 0.5);
        let diff = report.difference.unwrap();
        assert!((diff.click_through_rate.value - 0.5).abs() < 1e-12);
        assert!(diff.click_through_rate.low < 0.5 && diff.click_through_rate.high > 0.5);
    }
}
