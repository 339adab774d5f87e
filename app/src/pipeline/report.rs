//! The pipeline's report, `pipeline.json` (and its rendering, `pipeline.md`): the one typed
//! definition that the pipeline writes, the server reads back from a published report and
//! serves, and the web page shows.

use std::collections::BTreeMap;
use std::path::PathBuf;

use attune_eval::gate::GateOutcome;
use attune_eval::report::{DatasetResult, Report};
use attune_trainer::train::Recipe;
use serde::{Deserialize, Serialize};

/// The paired comparison of tuned vs base on one data set (nDCG@10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonSummary {
    /// The compared metric (`ndcg@10`).
    pub metric: String,
    /// Queries evaluated by both models.
    pub queries: usize,
    /// The base model's mean.
    pub baseline_mean: f64,
    /// The tuned model's mean.
    pub candidate_mean: f64,
    /// `candidate_mean − baseline_mean`.
    pub mean_delta: f64,
    /// 95% bootstrap interval of the delta.
    pub ci95: [f64; 2],
    /// Two-sided p-value of the paired randomization test.
    pub p_value: f64,
    /// Queries the tuned model wins, ties and loses.
    pub wins: usize,
    /// See `wins`.
    pub ties: usize,
    /// See `wins`.
    pub losses: usize,
}

/// Base and tuned on one data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    /// The data set's name.
    pub name: String,
    /// `domain` or `general`.
    pub role: String,
    /// The qrels split.
    pub split: String,
    /// Queries evaluated.
    pub queries: usize,
    /// The base model's metric means, by metric name (`ndcg@10`, …).
    pub base: BTreeMap<String, f64>,
    /// The tuned model's metric means.
    pub tuned: BTreeMap<String, f64>,
    /// Tuned vs base, per query.
    pub comparison: Option<ComparisonSummary>,
}

impl DatasetSummary {
    /// The summary of `data` (evaluated with a baseline) under `role`.
    pub fn of(data: &DatasetResult, role: &str) -> Self {
        let means = |m: &attune_eval::report::ModelResult| {
            m.evaluation
                .metrics
                .iter()
                .zip(&m.evaluation.mean)
                .map(|(name, v)| (name.to_string(), *v))
                .collect()
        };
        Self {
            name: data.name.clone(),
            role: role.to_string(),
            split: data.split.clone(),
            queries: data.candidate.evaluation.per_query.len(),
            base: data.baseline.as_ref().map(means).unwrap_or_default(),
            tuned: means(&data.candidate),
            comparison: data.comparison.as_ref().map(|c| ComparisonSummary {
                metric: c.metric.to_string(),
                queries: c.queries,
                baseline_mean: c.baseline_mean,
                candidate_mean: c.candidate_mean,
                mean_delta: c.mean_delta,
                ci95: [c.ci95.0, c.ci95.1],
                p_value: c.p_value,
                wins: c.wins,
                ties: c.ties,
                losses: c.losses,
            }),
        }
    }
}

/// One check of the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateCheckSummary {
    /// `general_drop` or `domain_gain`.
    pub check: String,
    /// Whether it passed.
    pub passed: bool,
    /// A sentence stating each number.
    pub message: String,
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSummary {
    /// Whether every check passed.
    pub passed: bool,
    /// The checks that ran.
    pub checks: Vec<GateCheckSummary>,
}

impl GateSummary {
    /// The verdict of `gate`.
    pub fn of(gate: &GateOutcome) -> Self {
        Self {
            passed: gate.passed,
            checks: gate
                .checks
                .iter()
                .map(|c| GateCheckSummary {
                    check: c.check.to_string(),
                    passed: c.passed,
                    message: c.message.clone(),
                })
                .collect(),
        }
    }

    /// The failed checks' messages, joined (empty when it passed).
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What the eval stage found: kept in its marker, so a rerun that skips the stage still
/// reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// The gate's verdict.
    pub gate: GateSummary,
    /// Base and tuned on the domain set.
    pub domain: DatasetSummary,
    /// Base and tuned on the general set, when one is configured.
    pub general: Option<DatasetSummary>,
}

impl EvalSummary {
    /// The summary of an evaluation report with its gate.
    pub fn of(report: &Report) -> Self {
        Self {
            gate: report
                .gate
                .as_ref()
                .map(GateSummary::of)
                .unwrap_or(GateSummary {
                    passed: false,
                    checks: Vec::new(),
                }),
            domain: DatasetSummary::of(&report.domain, "domain"),
            general: report
                .general
                .as_ref()
                .map(|g| DatasetSummary::of(g, "general")),
        }
    }
}

/// What the index stage did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSummary {
    /// The generation served before.
    pub generation_before: Option<u64>,
    /// The generation served after.
    pub generation_after: Option<u64>,
}

/// One stage's time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    /// The stage (`check`, `mine`, `train`, `eval`, `index`, `report`).
    pub stage: String,
    /// Seconds it took when it ran.
    pub seconds: f64,
    /// True when it had finished in an earlier run and was skipped.
    pub reused: bool,
}

/// `pipeline.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineReport {
    /// The collection indexed.
    pub collection: String,
    /// The base model directory.
    pub base_model: PathBuf,
    /// The tuned model directory.
    pub tuned_model: PathBuf,
    /// The BEIR data set trained and evaluated on.
    pub data: PathBuf,
    /// The base model's space.
    pub base_space: String,
    /// The tuned model's space.
    pub tuned_space: String,
    /// Base and tuned on the domain set.
    pub domain: Option<DatasetSummary>,
    /// Base and tuned on the general set.
    pub general: Option<DatasetSummary>,
    /// The gate's verdict.
    pub gate: Option<GateSummary>,
    /// How the tuned model was trained (from its training card).
    #[serde(default)]
    pub recipe: Option<Recipe>,
    /// True when the tuned model was indexed and is served.
    pub promoted: bool,
    /// The generation served when the report was written.
    pub serving_generation: Option<u64>,
    /// What the index stage did (absent when the gate failed).
    pub index: Option<IndexSummary>,
    /// One sentence: promoted or not, and what serves.
    pub verdict: String,
    /// The test split searched in the served collection, in its vector, lexical and hybrid
    /// spaces (absent when nothing is served or it has no lexical space).
    #[serde(default)]
    pub collection_search: Option<CollectionSearch>,
    /// Each stage's time.
    pub stages: Vec<StageTiming>,
    /// When the report was written (seconds since the Unix epoch).
    pub finished_unix: u64,
}

/// The domain set's judged queries searched in the served collection (see
/// [`crate::collection_eval`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionSearch {
    /// The generation searched.
    pub generation: u64,
    /// Queries evaluated.
    pub queries: usize,
    /// How hybrid spaces fused (`rrf`, `weighted`).
    pub fusion: String,
    /// Per space (`base`, `tuned`, `lexical`, `hybrid:base`, `hybrid:tuned`): metric → mean.
    pub spaces: Vec<(String, BTreeMap<String, f64>)>,
}

const HEADLINE: [&str; 5] = ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"];

impl PipelineReport {
    /// `pipeline.md`: the verdict, base vs tuned on each data set, the gate and the stages.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# Pipeline report: collection `{}`\n\n**{}**\n\n",
            self.collection, self.verdict
        );
        for summary in [&self.domain, &self.general].into_iter().flatten() {
            md.push_str(&format!(
                "## {} set: {} (split {}, {} queries)\n\n| metric | base | tuned |\n|---|---|---|\n",
                summary.role, summary.name, summary.split, summary.queries
            ));
            let value = |m: &BTreeMap<String, f64>, name: &str| {
                m.get(name).map_or("–".into(), |v| format!("{v:.4}"))
            };
            for name in HEADLINE {
                md.push_str(&format!(
                    "| {name} | {} | {} |\n",
                    value(&summary.base, name),
                    value(&summary.tuned, name)
                ));
            }
            if let Some(c) = &summary.comparison {
                md.push_str(&format!(
                    "\nnDCG@10 delta {:+.4} (95% CI {:+.4}…{:+.4}, p = {:.4}; wins/ties/losses {}/{}/{})\n",
                    c.mean_delta, c.ci95[0], c.ci95[1], c.p_value, c.wins, c.ties, c.losses
                ));
            }
            md.push('\n');
        }
        if let Some(search) = &self.collection_search {
            md.push_str(&format!(
                "## Searched in the served collection (generation {}, {} queries)\n\n\
                 Lexical and hybrid spaces can only be measured by searching the built \
                 collection: vector spaces through their HNSW graphs, `lexical` by BM25, \
                 `hybrid:<space>` fused by {} (the tables above embed the corpus and search it \
                 exactly).\n\n| space | nDCG@10 | recall@10 |\n|---|---|---|\n",
                search.generation, search.queries, search.fusion
            ));
            for (space, metrics) in &search.spaces {
                let value =
                    |name: &str| metrics.get(name).map_or("–".into(), |v| format!("{v:.4}"));
                md.push_str(&format!(
                    "| {space} | {} | {} |\n",
                    value("ndcg@10"),
                    value("recall@10")
                ));
            }
            md.push('\n');
        }
        if let Some(recipe) = &self.recipe {
            md.push_str(&format!(
                "## Training recipe\n\n{}; {} steps; {} (query, candidate) cells kept out of \
                 the negatives as judged relevant.\n\n| setting | value |\n|---|---|\n",
                recipe.loss, recipe.steps, recipe.judged_negatives_masked
            ));
            for (name, value) in &recipe.hyperparameters {
                md.push_str(&format!("| {name} | {value} |\n"));
            }
            md.push('\n');
        }
        md.push_str("## Gate\n\n");
        for check in self.gate.iter().flat_map(|g| &g.checks) {
            md.push_str(&format!(
                "- {} {}\n",
                if check.passed { "PASS" } else { "FAIL" },
                check.message
            ));
        }
        md.push_str("\n## Stages\n\n| stage | seconds | |\n|---|---|---|\n");
        for stage in &self.stages {
            md.push_str(&format!(
                "| {} | {:.1} | {} |\n",
                stage.stage,
                stage.seconds,
                if stage.reused { "done before" } else { "" }
            ));
        }
        md
    }
}
