//! Evaluation orchestration: a candidate model (and optionally a baseline) scored on a domain
//! BEIR set and a general-capability set, compared per query and gated; and the alpha sweep
//! that merges base and tuned weights to bound forgetting. `attune eval` and the pipeline's eval
//! stage both call [`evaluate_models`], which returns the typed [`Report`] the pipeline reads.

use std::path::{Path, PathBuf};

use attune_eval::cache::EmbeddingCache;
use attune_eval::compare::{compare, ComparisonSettings};
use attune_eval::evaluator::{evaluate_model, query_texts, EvalSettings};
use attune_eval::gate::{check_gate, GateInput, GateOutcome, GateSettings};
use attune_eval::report::{DatasetResult, ModelResult, Report};
use attune_eval::{BeirDataset, Definitions, EvalError, MetricName, MetricsSettings};
use attune_model::{Device, Encoder, EncoderSettings, ModelDir, ModelError, Precision};
use serde::{Deserialize, Serialize};

/// What a user tunes in an evaluation. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationSettings {
    /// Rank cutoffs; the deepest is the retrieval depth (10 is always added: it drives the
    /// comparison and the gate). Default 1, 3, 5, 10, 100.
    pub k: Vec<usize>,
    /// Metric definitions. Default trec_eval's.
    pub definitions: Definitions,
    /// Texts per forward pass. Default 32.
    pub batch_size: usize,
    /// Truncate texts to this many tokens (default: each model's max_seq_length, as served).
    pub max_seq_len: Option<usize>,
    /// Matryoshka: evaluate every model at its first N dimensions, re-normalised (default: the
    /// whole vector), as a space built with `--dimension N` serves them.
    pub dimension: Option<usize>,
    /// Precision of the models' products (default auto: f32 on the CPU, bf16 on CUDA), as a
    /// space built with `--precision` serves them.
    pub precision: Precision,
    /// Resamples of the bootstrap interval and of the randomization test. Default 10,000.
    pub resamples: usize,
    /// Seed of the resampling.
    pub seed: u64,
    /// Largest allowed nDCG@10 drop on the general set (absolute). Default 0.01.
    pub max_general_drop: f64,
    /// Fail the gate unless the candidate's domain nDCG@10 beats the baseline's. Default false.
    pub require_gain: bool,
}

impl Default for EvaluationSettings {
    fn default() -> Self {
        let comparison = ComparisonSettings::default();
        Self {
            k: vec![1, 3, 5, 10, 100],
            definitions: Definitions::default(),
            batch_size: EncoderSettings::default().batch_size,
            max_seq_len: None,
            dimension: None,
            precision: Precision::Auto,
            resamples: comparison.resamples,
            seed: comparison.seed,
            max_general_drop: GateSettings::default().max_general_drop,
            require_gain: false,
        }
    }
}

impl EvaluationSettings {
    /// The metrics computed (nDCG@10 always among them).
    pub fn metrics(&self) -> Result<MetricsSettings, EvalJobError> {
        if self.k.is_empty() || self.k.contains(&0) {
            return Err(EvalJobError::invalid(
                "k",
                format!("cutoffs must be ≥ 1, got {:?}", self.k),
            ));
        }
        let mut cutoffs = self.k.clone();
        if !cutoffs.contains(&10) {
            cutoffs.push(10);
        }
        Ok(MetricsSettings {
            definitions: self.definitions,
            cutoffs,
        })
    }

    fn gate(&self) -> GateSettings {
        GateSettings {
            max_general_drop: self.max_general_drop,
            require_gain: self.require_gain,
        }
    }

    fn comparison(&self) -> ComparisonSettings {
        ComparisonSettings {
            resamples: self.resamples,
            seed: self.seed,
            ..ComparisonSettings::default()
        }
    }
}

/// A model to evaluate and its name in reports.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// Model directory.
    pub path: PathBuf,
    /// Name in reports (`tuned`, `base`, ...).
    pub label: String,
}

/// A BEIR directory and the qrels split evaluated.
#[derive(Debug, Clone)]
pub struct DataInput {
    /// BEIR directory.
    pub path: PathBuf,
    /// Qrels split.
    pub split: String,
}

/// What an evaluation is wired with.
#[derive(Debug, Clone)]
pub struct EvaluationInputs {
    /// The model evaluated.
    pub candidate: ModelInput,
    /// The model compared with; needed by the gate.
    pub baseline: Option<ModelInput>,
    /// The domain set.
    pub domain: DataInput,
    /// The general-capability set, whose nDCG@10 drop the gate bounds.
    pub general: Option<DataInput>,
    /// Where corpus embeddings are cached; `None` embeds every time.
    pub cache_dir: Option<PathBuf>,
    /// Device the models run on.
    pub device: Device,
}

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalJobError {
    /// A setting or a combination of inputs is refused.
    #[error("setting `{name}`: {problem}")]
    InvalidSetting {
        /// The setting, as the command line and pipeline.toml name it.
        name: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// Data could not be read or scored.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// A model could not be loaded or run.
    #[error("{}: {source}", path.display())]
    Model {
        /// The model directory.
        path: PathBuf,
        /// Why.
        source: Box<ModelError>,
    },
}

impl EvalJobError {
    fn invalid(name: &'static str, problem: impl Into<String>) -> Self {
        Self::InvalidSetting {
            name,
            problem: problem.into(),
        }
    }
}

/// Progress of an evaluation, for display.
#[derive(Debug)]
pub enum EvalEvent<'a> {
    /// Something about the data worth a warning (duplicates, dangling qrels, ...).
    Warning(&'a str),
    /// A model starts on a data set of this many documents.
    Started {
        /// The model's label.
        model: &'a str,
        /// The data set's name.
        dataset: &'a str,
        /// Documents to embed.
        documents: usize,
    },
    /// Documents embedded so far in the current model's run.
    Embedded(usize),
    /// A model finished a data set.
    Finished {
        /// The result (with timings).
        result: &'a ModelResult,
        /// The data set's name.
        dataset: &'a str,
        /// Documents in the corpus.
        documents: usize,
        /// Documents that were cut to `max_seq_length` tokens.
        truncated: usize,
        /// The model's truncation length.
        max_seq_length: usize,
    },
}

/// A loaded model: its encoder and identity.
struct LoadedModel {
    label: String,
    source: String,
    fingerprint: String,
    encoder: Encoder,
}

impl LoadedModel {
    fn load(
        input: &ModelInput,
        settings: &EvaluationSettings,
        device: &Device,
    ) -> Result<Self, EvalJobError> {
        let model_error = |source| EvalJobError::Model {
            path: input.path.clone(),
            source: Box::new(source),
        };
        let dir = ModelDir::open(&input.path).map_err(model_error)?;
        let encoder_settings = EncoderSettings {
            batch_size: settings.batch_size,
            max_seq_length: settings.max_seq_len,
            truncate_dim: settings.dimension,
            precision: settings.precision,
            ..EncoderSettings::default()
        };
        Ok(Self {
            label: input.label.clone(),
            source: input.path.display().to_string(),
            fingerprint: dir.fingerprint().map_err(model_error)?,
            encoder: Encoder::load(&dir, device, encoder_settings).map_err(model_error)?,
        })
    }
}

/// A data set's name in reports: its directory's name.
pub fn dataset_name(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// One evaluation run: engine settings shared by every model and data set.
struct Run<'a> {
    engine: EvalSettings,
    comparison: ComparisonSettings,
    on_event: &'a mut dyn FnMut(EvalEvent<'_>),
}

impl Run<'_> {
    fn new<'a>(
        inputs: &EvaluationInputs,
        settings: &EvaluationSettings,
        on_event: &'a mut dyn FnMut(EvalEvent<'_>),
    ) -> Result<Run<'a>, EvalJobError> {
        Ok(Run {
            engine: EvalSettings {
                metrics: settings.metrics()?,
                search: Default::default(),
                cache: inputs.cache_dir.clone().map(EmbeddingCache::new),
            },
            comparison: settings.comparison(),
            on_event,
        })
    }

    fn one(
        &mut self,
        model: &LoadedModel,
        data: &BeirDataset,
        name: &str,
    ) -> Result<ModelResult, EvalJobError> {
        (self.on_event)(EvalEvent::Started {
            model: &model.label,
            dataset: name,
            documents: data.corpus.len(),
        });
        let on_event = &mut self.on_event;
        let result = evaluate_model(
            &model.encoder,
            &model.fingerprint,
            data,
            &self.engine,
            &mut |n| on_event(EvalEvent::Embedded(n)),
        )?;
        for warning in result.evaluation.warnings(name) {
            (self.on_event)(EvalEvent::Warning(&warning));
        }
        let model_result = ModelResult {
            label: model.label.clone(),
            source: model.source.clone(),
            fingerprint: model.fingerprint.clone(),
            evaluation: result.evaluation,
            timings: result.timings,
        };
        (self.on_event)(EvalEvent::Finished {
            result: &model_result,
            dataset: name,
            documents: data.corpus.len(),
            truncated: result.truncated_documents,
            max_seq_length: model.encoder.max_seq_length(),
        });
        Ok(model_result)
    }

    fn dataset(
        &mut self,
        input: &DataInput,
        candidate: &LoadedModel,
        baseline: Option<&LoadedModel>,
    ) -> Result<DatasetResult, EvalJobError> {
        let data = BeirDataset::load(&input.path, &input.split)?;
        let name = dataset_name(&input.path);
        let warnings = data.report.warnings(&input.path.display().to_string());
        for warning in &warnings {
            (self.on_event)(EvalEvent::Warning(warning));
        }
        let baseline = baseline.map(|b| self.one(b, &data, &name)).transpose()?;
        let candidate = self.one(candidate, &data, &name)?;
        let comparison = baseline
            .as_ref()
            .map(|b| {
                compare(
                    &b.evaluation,
                    &candidate.evaluation,
                    MetricName::NDCG_10,
                    &self.comparison,
                )
            })
            .transpose()?;
        Ok(DatasetResult {
            name,
            source: input.path.display().to_string(),
            split: input.split.clone(),
            documents: data.corpus.len(),
            warnings,
            candidate,
            baseline,
            comparison,
            query_texts: query_texts(&data),
        })
    }
}

/// Baseline and candidate nDCG@10 of a data set, when both were evaluated.
fn gate_input(d: &DatasetResult) -> Option<GateInput> {
    Some(GateInput {
        dataset: d.name.clone(),
        baseline: d
            .baseline
            .as_ref()?
            .evaluation
            .mean_of(MetricName::NDCG_10)?,
        candidate: d.candidate.evaluation.mean_of(MetricName::NDCG_10)?,
    })
}

fn check_inputs(
    inputs: &EvaluationInputs,
    settings: &EvaluationSettings,
) -> Result<bool, EvalJobError> {
    settings.gate().validate()?;
    let gate_requested = inputs.general.is_some() || settings.require_gain;
    match &inputs.baseline {
        None if gate_requested => Err(EvalJobError::invalid(
            "baseline",
            "the general set and require_gain compare with a baseline: give one",
        )),
        Some(b) if b.label == inputs.candidate.label => Err(EvalJobError::invalid(
            "label",
            format!(
                "the candidate and baseline labels must differ (both are `{}`)",
                b.label
            ),
        )),
        _ => Ok(gate_requested),
    }
}

/// Evaluates the candidate (and the baseline) on the domain set (and the general set), compares
/// them per query and decides the gate when a general set is given or a gain is required.
pub fn evaluate_models(
    inputs: &EvaluationInputs,
    settings: &EvaluationSettings,
    on_event: &mut dyn FnMut(EvalEvent<'_>),
) -> Result<Report, EvalJobError> {
    let gate_requested = check_inputs(inputs, settings)?;
    let mut run = Run::new(inputs, settings, on_event)?;
    let candidate = LoadedModel::load(&inputs.candidate, settings, &inputs.device)?;
    let baseline = inputs
        .baseline
        .as_ref()
        .map(|b| LoadedModel::load(b, settings, &inputs.device))
        .transpose()?;
    let domain = run.dataset(&inputs.domain, &candidate, baseline.as_ref())?;
    let general = inputs
        .general
        .as_ref()
        .map(|g| run.dataset(g, &candidate, baseline.as_ref()))
        .transpose()?;
    let gate = if gate_requested {
        let domain_input = gate_input(&domain).ok_or_else(|| {
            EvalJobError::invalid("baseline", "the domain nDCG@10 of both models is missing")
        })?;
        let general_input = general.as_ref().and_then(gate_input);
        Some(check_gate(
            &settings.gate(),
            &domain_input,
            general_input.as_ref(),
        ))
    } else {
        None
    };
    Ok(Report {
        definitions: settings.definitions,
        domain,
        general,
        gate,
    })
}

/// One alpha of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// Share of the tuned weights: `baseline + alpha · (tuned − baseline)`.
    pub alpha: f64,
    /// The domain set's name.
    pub domain: String,
    /// The general set's name.
    pub general: String,
    /// Domain nDCG@10 of the merged model.
    pub domain_ndcg_at_10: f64,
    /// Domain nDCG@10 of the baseline.
    pub domain_baseline: f64,
    /// General nDCG@10 of the merged model.
    pub general_ndcg_at_10: f64,
    /// General nDCG@10 of the baseline.
    pub general_baseline: f64,
    /// `general_baseline − general_ndcg_at_10`.
    pub general_drop: f64,
    /// Whether this alpha passes the gate.
    pub passed: bool,
}

/// What a sweep found.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    /// Every alpha, in the order given.
    pub points: Vec<SweepPoint>,
    /// The passing alpha with the best domain nDCG@10, if any passes.
    pub picked: Option<f64>,
}

/// Merges `baseline + alpha · (candidate − baseline)` at each alpha (each in 0..=1), evaluates
/// and gates it on the domain and general sets, and picks the passing alpha with the best domain
/// nDCG@10. Needs a baseline and a general set. `on_point` sees each alpha as it finishes.
pub fn sweep_alphas(
    inputs: &EvaluationInputs,
    settings: &EvaluationSettings,
    alphas: &[f64],
    on_event: &mut dyn FnMut(EvalEvent<'_>),
    on_point: &mut dyn FnMut(&SweepPoint),
) -> Result<Sweep, EvalJobError> {
    let (Some(baseline_input), Some(general)) = (&inputs.baseline, &inputs.general) else {
        return Err(EvalJobError::invalid(
            "sweep-alphas",
            "needs a baseline and a general set",
        ));
    };
    if let Some(bad) = alphas.iter().find(|a| !(0.0..=1.0).contains(*a)) {
        return Err(EvalJobError::invalid(
            "sweep-alphas",
            format!("{bad} is not between 0 and 1"),
        ));
    }
    check_inputs(inputs, settings)?;
    let model_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EvalJobError::Model {
            path,
            source: Box::new(source),
        }
    };
    let base_dir =
        ModelDir::open(&baseline_input.path).map_err(model_error(&baseline_input.path))?;
    let tuned_dir =
        ModelDir::open(&inputs.candidate.path).map_err(model_error(&inputs.candidate.path))?;
    ModelDir::check_interpolable(&base_dir, &tuned_dir)
        .map_err(model_error(&inputs.candidate.path))?;
    let baseline = LoadedModel::load(baseline_input, settings, &inputs.device)?;
    let mut run = Run::new(inputs, settings, on_event)?;
    let work = std::env::temp_dir().join(format!("attune-sweep-{}", std::process::id()));
    let mut points = Vec::new();
    for &alpha in alphas {
        let merged = work.join(format!("alpha-{alpha}"));
        ModelDir::interpolate(&base_dir, &tuned_dir, alpha, &merged, &[])
            .map_err(model_error(&merged))?;
        let candidate = LoadedModel::load(
            &ModelInput {
                path: merged.clone(),
                label: format!("alpha {alpha}"),
            },
            settings,
            &inputs.device,
        )?;
        let domain = run.dataset(&inputs.domain, &candidate, Some(&baseline))?;
        let general = run.dataset(general, &candidate, Some(&baseline))?;
        let missing = || EvalJobError::invalid("k", "nDCG@10 missing");
        let (d, g) = (
            gate_input(&domain).ok_or_else(missing)?,
            gate_input(&general).ok_or_else(missing)?,
        );
        let gate: GateOutcome = check_gate(&settings.gate(), &d, Some(&g));
        let point = SweepPoint {
            alpha,
            domain: domain.name.clone(),
            general: general.name.clone(),
            domain_ndcg_at_10: d.candidate,
            domain_baseline: d.baseline,
            general_ndcg_at_10: g.candidate,
            general_baseline: g.baseline,
            general_drop: g.baseline - g.candidate,
            passed: gate.passed,
        };
        on_point(&point);
        points.push(point);
        std::fs::remove_dir_all(&merged).ok();
    }
    std::fs::remove_dir_all(&work).ok();
    let picked = points
        .iter()
        .filter(|p| p.passed)
        .max_by(|a, b| a.domain_ndcg_at_10.total_cmp(&b.domain_ndcg_at_10))
        .map(|p| p.alpha);
    Ok(Sweep { points, picked })
}
