//! The pipeline: from data to a promoted model in one run.
//!
//! Stages, in order: `check` (training data) → `mine` (hard negatives, when `[mine]` is given)
//! → `train` → `eval` (tuned vs base with the gate) → `index` (re-embed the corpus with base and
//! tuned into a new generation and switch to it; skipped when the gate failed) → `report`
//! (written under the work directory and published in the store for the server).
//!
//! Each stage is a typed job of this crate called with typed settings: no argument lists, no
//! results read back from files. Each finished stage leaves a marker ([`work`]) holding a key
//! derived from its settings and from the key of the stage before it, and its typed outcome. A
//! rerun skips every stage whose marker holds the key it would compute now, and runs the rest:
//! after a crash it resumes after the last finished stage (training resumes from its newest
//! checkpoint), and after a change of settings it reruns from the first stage they affect.
//!
//! Since the gate is decided before the re-index, a failed gate leaves the store exactly as it
//! was: the serving generation keeps serving, and [`PipelineOutcome::gate_failure`] says why.

pub mod config;
pub mod report;
pub mod work;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use attune_eval::report::Report;
use attune_index::{BuildEvent, BuildReport, Fusion, IndexError, Retrieval, VectorStore};
use attune_trainer::check::CheckSettings;
use attune_trainer::train::{Event, LeakagePolicy, Recipe, TrainSummary};
use attune_trainer::TrainError;
use serde::{Deserialize, Serialize};

pub use config::{DataConfig, GateConfig, IndexConfig, PipelineConfig, Stage};
pub use report::{
    CollectionSearch, ComparisonSummary, DatasetSummary, EvalSummary, GateCheckSummary,
    GateSummary, IndexSummary, PipelineReport, StageTiming,
};
pub use work::{Marker, Work};

use crate::check_job::{run_check, CheckInputs, CheckOutcome};
use crate::collection_eval::{evaluate_collection, CollectionEvalInputs};
use crate::eval_job::{
    evaluate_models, DataInput, EvalEvent, EvalJobError, EvaluationInputs, EvaluationSettings,
    ModelInput,
};
use crate::feedback::{
    export_from, write_pairs, ExportReport, ExportSettings, FeedbackError, FeedbackPair,
};
use crate::index_job::{IndexInputs, IndexJob, IndexJobError, SpaceModel};
use crate::mine_job::{MineJob, MineJobInputs, MineOutcome, MineSettings};
use crate::train_job::{TrainJob, TrainJobInputs};

/// Why a pipeline run stopped (a failed gate is not an error: see [`PipelineOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// `pipeline.toml` is unreadable or refused.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A file of the work directory could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The check stage found fatal problems in the training data.
    #[error("{}: fatal data problems (see the check's report)", .0.display())]
    DataRefused(PathBuf),
    /// A stage's job failed.
    #[error("stage {stage}: {message}")]
    Stage {
        /// The stage.
        stage: Stage,
        /// The job's error.
        message: String,
        /// The job's error, typed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl PipelineError {
    fn stage(stage: Stage, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Stage {
            stage,
            message: error.to_string(),
            source: Box::new(error),
        }
    }
}

/// What a front end shows of a run; every method has a no-op default.
#[allow(unused_variables)]
pub trait PipelineObserver {
    /// A stage finished in an earlier run and is skipped.
    fn stage_skipped(&mut self, stage: Stage, seconds: f64) {}
    /// A stage starts.
    fn stage_started(&mut self, stage: Stage) {}
    /// A stage finished.
    fn stage_finished(&mut self, stage: Stage, seconds: f64) {}
    /// The index stage is skipped because the gate failed.
    fn index_skipped(&mut self, reasons: &str) {}
    /// The data check's findings.
    fn checked(&mut self, data: &Path, outcome: &CheckOutcome) {}
    /// A warning about the data mined.
    fn mine_warning(&mut self, warning: &str) {}
    /// Training pairs were exported from the feedback log.
    fn feedback_exported(&mut self, report: &ExportReport) {}
    /// The report could not search the served collection (a running server holds it).
    fn report_warning(&mut self, warning: &str) {}
    /// Texts embedded so far of `total` while mining.
    fn mining(&mut self, done: usize, total: usize) {}
    /// Mining finished.
    fn mined(&mut self, outcome: &MineOutcome, settings: &MineSettings) {}
    /// Training starts with `batch_size` pairs per batch.
    fn train_started(&mut self, batch_size: usize) {}
    /// Something happened while training.
    fn train_event(&mut self, event: Event<'_>) {}
    /// Training finished.
    fn trained(&mut self, summary: &TrainSummary) {}
    /// Something happened while evaluating.
    fn eval_event(&mut self, event: EvalEvent<'_>) {}
    /// The evaluation's report (written to `dir`).
    fn evaluated(&mut self, report: &Report, dir: &Path) {}
    /// Something happened while re-indexing.
    fn index_event(&mut self, event: BuildEvent) {}
    /// The re-index finished.
    fn indexed(&mut self, report: &BuildReport) {}
}

/// Opens the store a pipeline indexes into, on first need (a run stopped by its data check
/// creates nothing).
pub type StoreOpener<'a> = &'a dyn Fn() -> Result<Arc<dyn VectorStore>, IndexError>;

/// What a finished run found.
#[derive(Debug, Clone)]
pub struct PipelineOutcome {
    /// The report (also written to the work directory and published in the store).
    pub report: PipelineReport,
    /// `pipeline.md` in the work directory.
    pub report_markdown: PathBuf,
    /// Why the gate failed, when it did: the tuned model was not promoted.
    pub gate_failure: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckRecord {
    data: PathBuf,
    /// What the feedback export found, when the pipeline trains on feedback.
    #[serde(default)]
    feedback: Option<ExportReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MineRecord {
    pairs: PathBuf,
    mined: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainRecord {
    model: PathBuf,
    steps: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReportRecord {
    promoted: bool,
    verdict: String,
}

/// One run: the configuration, the store (opened on first need) and what the stages found.
struct Run<'a> {
    config: &'a PipelineConfig,
    work: Work,
    open_store: StoreOpener<'a>,
    store: Option<Arc<dyn VectorStore>>,
    observer: &'a mut dyn PipelineObserver,
    timings: Vec<StageTiming>,
    eval: Option<EvalSummary>,
    index: Option<IndexSummary>,
    /// The report this run wrote.
    written: Option<PipelineReport>,
}

/// Runs `config`'s stages, skipping those finished before with the same settings (all from
/// `from` on rerun). The index stage builds into the store `open_store` opens.
pub fn run_pipeline(
    config: &PipelineConfig,
    from: Option<Stage>,
    open_store: StoreOpener<'_>,
    observer: &mut dyn PipelineObserver,
) -> Result<PipelineOutcome, PipelineError> {
    let work = Work::new(&config.work_dir);
    std::fs::create_dir_all(work.dir()).map_err(|e| PipelineError::Io {
        path: work.dir().to_path_buf(),
        source: e,
    })?;
    let mut run = Run {
        config,
        work,
        open_store,
        store: None,
        observer,
        timings: Vec::new(),
        eval: None,
        index: None,
        written: None,
    };
    let mut rerun_rest = false;
    for (stage, key) in config.stage_keys() {
        if from.is_some_and(|from| stage >= from) {
            rerun_rest = true;
        }
        if !rerun_rest {
            if let Some(seconds) = run.reuse(stage, &key) {
                run.observer.stage_skipped(stage, seconds);
                run.timings.push(StageTiming {
                    stage: stage.name().into(),
                    seconds,
                    reused: true,
                });
                continue;
            }
        }
        // From here on every stage runs: later markers describe outputs about to change.
        rerun_rest = true;
        run.work.forget(stage);
        if stage == Stage::Index {
            if let Some(reasons) = run.gate_failure() {
                run.observer.index_skipped(&reasons);
                continue;
            }
        }
        run.observer.stage_started(stage);
        let started = Instant::now();
        let seconds = run.stage(stage, &key, started)?;
        run.observer.stage_finished(stage, seconds);
        run.timings.push(StageTiming {
            stage: stage.name().into(),
            seconds,
            reused: false,
        });
    }
    let report = match run.written.take() {
        Some(report) => report,
        // Every stage had finished before: the report is the one written then.
        None => run.work.read_report()?,
    };
    Ok(PipelineOutcome {
        report_markdown: run.work.report().join("pipeline.md"),
        gate_failure: run.gate_failure(),
        report,
    })
}

impl Run<'_> {
    fn store(&mut self) -> Result<Arc<dyn VectorStore>, PipelineError> {
        if self.store.is_none() {
            let store = (self.open_store)().map_err(|e| PipelineError::stage(Stage::Index, e))?;
            self.store = Some(store);
        }
        Ok(self.store.clone().expect("just opened"))
    }

    /// The generation the collection serves now (`None` before its first build).
    fn serving(&mut self) -> Result<Option<u64>, PipelineError> {
        let store = self.store()?;
        match store.current_generation(&self.config.index.collection) {
            Ok(generation) => Ok(generation),
            Err(IndexError::UnknownCollection { .. }) => Ok(None),
            Err(e) => Err(PipelineError::stage(Stage::Index, e)),
        }
    }

    fn gate_failure(&self) -> Option<String> {
        let eval = self.eval.as_ref()?;
        (!eval.gate.passed).then(|| {
            let failures = eval.gate.failures();
            if failures.is_empty() {
                "no gate verdict".into()
            } else {
                failures
            }
        })
    }

    /// The seconds of `stage`'s marker when it finished before with `key` (and its outcome,
    /// for the stages the report reads).
    fn reuse(&mut self, stage: Stage, key: &str) -> Option<f64> {
        let work = &self.work;
        match stage {
            Stage::Check => work.marker::<CheckRecord>(stage, key).map(|m| m.seconds),
            Stage::Mine => work.marker::<MineRecord>(stage, key).map(|m| m.seconds),
            Stage::Train => work.marker::<TrainRecord>(stage, key).map(|m| m.seconds),
            Stage::Eval => work.marker::<EvalSummary>(stage, key).map(|m| {
                self.eval = Some(m.outcome);
                m.seconds
            }),
            Stage::Index => work.marker::<IndexSummary>(stage, key).map(|m| {
                self.index = Some(m.outcome);
                m.seconds
            }),
            Stage::Report => work.marker::<ReportRecord>(stage, key).map(|m| m.seconds),
        }
    }

    /// Runs `stage` and writes its marker; returns its seconds.
    fn stage(&mut self, stage: Stage, key: &str, started: Instant) -> Result<f64, PipelineError> {
        match stage {
            Stage::Check => {
                let record = self.check()?;
                self.finish(stage, key, started, &record)
            }
            Stage::Mine => {
                let record = self.mine()?;
                self.finish(stage, key, started, &record)
            }
            Stage::Train => {
                let record = self.train()?;
                self.finish(stage, key, started, &record)
            }
            Stage::Eval => {
                let summary = self.evaluate()?;
                let seconds = self.finish(stage, key, started, &summary)?;
                self.eval = Some(summary);
                Ok(seconds)
            }
            Stage::Index => {
                let summary = self.reindex()?;
                let seconds = self.finish(stage, key, started, &summary)?;
                self.index = Some(summary);
                Ok(seconds)
            }
            Stage::Report => {
                let report = self.report()?;
                self.publish(&report)?;
                let record = ReportRecord {
                    promoted: report.promoted,
                    verdict: report.verdict.clone(),
                };
                self.written = Some(report);
                self.finish(stage, key, started, &record)
            }
        }
    }

    /// Writes `stage`'s marker with `outcome`; returns the seconds since `started`.
    fn finish<T: Serialize>(
        &self,
        stage: Stage,
        key: &str,
        started: Instant,
        outcome: &T,
    ) -> Result<f64, PipelineError> {
        let seconds = started.elapsed().as_secs_f64();
        self.work.write_marker(stage, key, seconds, outcome)?;
        Ok(seconds)
    }

    /// The training data: mined pairs when mining ran, else the configured pairs or qrels.
    fn training_data(&self, after_mining: bool) -> (PathBuf, String) {
        let config = self.config;
        let split = config.data.train_split.clone();
        if after_mining && config.mine.is_some() {
            return (self.work.mined(), split);
        }
        if config.data.feedback.is_some() {
            return (self.work.feedback_pairs(), split);
        }
        match &config.data.train_pairs {
            Some(pairs) => (pairs.clone(), split),
            None => (config.data.path.clone(), split),
        }
    }

    /// Exports the feedback pairs into the work directory (with the judged train pairs when
    /// `mix_judged`).
    fn export_feedback(
        &mut self,
        settings: &ExportSettings,
    ) -> Result<ExportReport, PipelineError> {
        let config = self.config;
        let failed = |e: FeedbackError| PipelineError::stage(Stage::Check, e);
        let store = (self.open_store)().map_err(|e| PipelineError::stage(Stage::Check, e))?;
        let export = export_from(store.as_ref(), settings).map_err(failed)?;
        drop(store);
        let mut pairs = export.pairs;
        if config.data.mix_judged {
            let split = &config.data.train_split;
            let judged = attune_trainer::data::TrainingData::load_beir(&config.data.path, split)
                .map_err(|e| PipelineError::stage(Stage::Check, e))?;
            let source = format!("judged:{split}");
            pairs.extend(judged.pairs.into_iter().map(|p| FeedbackPair {
                query: p.query,
                positive: p.positive,
                negatives: p.negatives,
                grade: p.grade,
                weight: f64::from(p.weight),
                source: source.clone(),
            }));
        }
        write_pairs(&self.work.feedback_pairs(), &pairs).map_err(failed)?;
        self.observer.feedback_exported(&export.report);
        Ok(export.report)
    }

    fn check(&mut self) -> Result<CheckRecord, PipelineError> {
        let config = self.config;
        let feedback = match &config.data.feedback {
            Some(settings) => Some(self.export_feedback(settings)?),
            None => None,
        };
        let (data, split) = self.training_data(false);
        let inputs = CheckInputs {
            data,
            split,
            test: Some((config.data.path.clone(), config.data.test_split.clone())),
            model: Some((config.base_model.clone(), config.train.max_seq_len)),
        };
        let settings = CheckSettings {
            // Leakage is the train stage's to handle when [train] leakage drops or allows it.
            allow_leakage: config.data.allow_leakage
                || config.train.leakage != LeakagePolicy::Refuse,
            ..CheckSettings::default()
        };
        let outcome =
            run_check(&inputs, &settings).map_err(|e| PipelineError::stage(Stage::Check, e))?;
        self.observer.checked(&inputs.data, &outcome);
        if outcome.report.is_fatal() {
            return Err(PipelineError::DataRefused(inputs.data));
        }
        Ok(CheckRecord {
            data: config.data.path.clone(),
            feedback,
        })
    }

    fn device(&self, stage: Stage) -> Result<attune_model::Device, PipelineError> {
        self.config
            .device
            .open()
            .map_err(|e| PipelineError::stage(stage, e))
    }

    fn mine(&mut self) -> Result<MineRecord, PipelineError> {
        let config = self.config;
        // Mined at the model's own length unless [mine] max_seq_len says otherwise, not at
        // [train] max_seq_len: the base model ranks whole texts better than truncated ones
        // (scifact, 128-token training: 0.7045 mined at 256 tokens, 0.6984 at 128).
        let settings = config.mine.clone().unwrap_or_default();
        let (data, split) = self.training_data(false);
        let inputs = MineJobInputs {
            model: config.base_model.clone(),
            data,
            split,
            out: self.work.mined(),
            device: self.device(Stage::Mine)?,
        };
        let failed = |e: TrainError| PipelineError::stage(Stage::Mine, e);
        let job = MineJob::prepare(inputs, settings.clone()).map_err(failed)?;
        for warning in job.warnings() {
            self.observer.mine_warning(warning);
        }
        let total = job.texts();
        let observer = &mut self.observer;
        let outcome = job
            .run(&mut |done| observer.mining(done, total))
            .map_err(failed)?;
        self.observer.mined(&outcome, &settings);
        Ok(MineRecord {
            pairs: outcome.out,
            mined: outcome.report.pairs,
        })
    }

    fn train(&mut self) -> Result<TrainRecord, PipelineError> {
        let config = self.config;
        let (data, split) = self.training_data(true);
        let held_out = (config.train.leakage != LeakagePolicy::Refuse)
            .then(|| (config.data.path.clone(), config.data.test_split.clone()));
        let inputs = TrainJobInputs {
            model: config.base_model.clone(),
            data,
            split,
            out: self.work.tuned(),
            eval_data: None,
            eval_split: None,
            held_out,
            checkpoint_dir: Some(self.work.checkpoints()),
            keep_checkpoints: false,
            resume: true,
            device: self.device(Stage::Train)?,
        };
        let failed = |e: TrainError| PipelineError::stage(Stage::Train, e);
        let job = TrainJob::prepare(inputs, &config.train).map_err(failed)?;
        self.observer.train_started(job.settings().batch_size);
        let observer = &mut self.observer;
        let summary = job
            .run(&mut |event| observer.train_event(event))
            .map_err(failed)?;
        self.observer.trained(&summary);
        Ok(TrainRecord {
            model: self.work.tuned(),
            steps: summary.steps,
        })
    }

    fn evaluate(&mut self) -> Result<EvalSummary, PipelineError> {
        let config = self.config;
        let gate = &config.gate;
        let inputs = EvaluationInputs {
            candidate: ModelInput {
                path: self.work.tuned(),
                label: "tuned".into(),
            },
            baseline: Some(ModelInput {
                path: config.base_model.clone(),
                label: "base".into(),
            }),
            domain: DataInput {
                path: config.data.path.clone(),
                split: config.data.test_split.clone(),
            },
            general: gate.general_data.clone().map(|path| DataInput {
                path,
                split: gate.general_split.clone(),
            }),
            cache_dir: Some(attune_eval::cache::EmbeddingCache::default_dir()),
            device: self.device(Stage::Eval)?,
        };
        // Evaluated as served: at each model's own max_seq_length (train.max_seq_len is a
        // training setting) and at the index's Matryoshka dimension, if any.
        let defaults = EvaluationSettings::default();
        let settings = EvaluationSettings {
            dimension: config.index.build.dimension,
            precision: config.index.build.precision,
            require_gain: gate.require_gain,
            max_general_drop: gate.max_general_drop.unwrap_or(defaults.max_general_drop),
            ..defaults
        };
        let failed = |e: EvalJobError| PipelineError::stage(Stage::Eval, e);
        let observer = &mut self.observer;
        let report = evaluate_models(&inputs, &settings, &mut |event| observer.eval_event(event))
            .map_err(failed)?;
        let dir = self.work.eval();
        report
            .write(&dir)
            .map_err(|e| PipelineError::stage(Stage::Eval, e))?;
        self.observer.evaluated(&report, &dir);
        Ok(EvalSummary::of(&report))
    }

    fn reindex(&mut self) -> Result<IndexSummary, PipelineError> {
        let config = self.config;
        let before = self.serving()?;
        let inputs = IndexInputs {
            collection: config.index.collection.clone(),
            // A collection that exists already is re-embedded from its own documents (those
            // written through the API included); a new one is built from the corpus.
            corpus: before.is_none().then(|| config.corpus().to_path_buf()),
            spaces: vec![
                SpaceModel {
                    space: config.index.base_space.clone(),
                    model: config.base_model.clone(),
                },
                SpaceModel {
                    space: config.index.tuned_space.clone(),
                    model: self.work.tuned(),
                },
            ],
            device: self.device(Stage::Index)?,
        };
        let failed = |e: IndexJobError| PipelineError::stage(Stage::Index, e);
        let job = IndexJob::prepare(inputs, config.index.build.clone()).map_err(failed)?;
        let store = self.store()?;
        let observer = &mut self.observer;
        let report = job
            .run(store.as_ref(), &mut |event| observer.index_event(event))
            .map_err(failed)?;
        self.observer.indexed(&report);
        Ok(IndexSummary {
            generation_before: before,
            generation_after: self.serving()?,
        })
    }

    /// The report of the stages' outcomes so far.
    fn report(&mut self) -> Result<PipelineReport, PipelineError> {
        let config = self.config;
        let serving = self.serving()?;
        let gate_failure = self.gate_failure();
        let verdict = match &gate_failure {
            None => format!(
                "promoted: generation {} of collection {:?} serves the tuned model in space {:?} beside the base in {:?}",
                serving.map_or("?".into(), |g| g.to_string()),
                config.index.collection,
                config.index.tuned_space,
                config.index.base_space
            ),
            Some(reasons) => format!(
                "not promoted: {reasons}; {}",
                match serving {
                    Some(g) => format!("generation {g} keeps serving"),
                    None => "the collection was not built".into(),
                }
            ),
        };
        let report = PipelineReport {
            collection: config.index.collection.clone(),
            base_model: config.base_model.clone(),
            tuned_model: self.work.tuned(),
            data: config.data.path.clone(),
            base_space: config.index.base_space.clone(),
            tuned_space: config.index.tuned_space.clone(),
            domain: self.eval.as_ref().map(|e| e.domain.clone()),
            general: self.eval.as_ref().and_then(|e| e.general.clone()),
            gate: self.eval.as_ref().map(|e| e.gate.clone()),
            recipe: Recipe::read(&self.work.tuned())
                .map_err(|e| PipelineError::stage(Stage::Report, e))?,
            promoted: gate_failure.is_none() && self.index.is_some(),
            serving_generation: serving,
            index: self.index.clone(),
            collection_search: self.collection_search(serving)?,
            verdict,
            stages: self.timings.clone(),
            finished_unix: work::now_unix(),
        };
        Ok(report)
    }

    /// The test split searched in the served generation's vector, lexical and hybrid spaces;
    /// `None` when nothing is served, the collection has no lexical space, or a running server
    /// holds it (its `/evaluate` endpoint measures the same).
    fn collection_search(
        &mut self,
        serving: Option<u64>,
    ) -> Result<Option<CollectionSearch>, PipelineError> {
        let config = self.config;
        if serving.is_none() {
            return Ok(None);
        }
        let failed =
            |e: crate::collection_eval::CollectionEvalError| PipelineError::stage(Stage::Report, e);
        let collection = match self.store()?.open_collection(&config.index.collection) {
            Ok(collection) => collection,
            // A running server holds the served generation: its `/evaluate` measures it.
            Err(e @ IndexError::InUse { .. }) => {
                let warning = format!("the report does not search the served collection: {e}");
                self.observer.report_warning(&warning);
                return Ok(None);
            }
            Err(e) => return Err(PipelineError::stage(Stage::Report, e)),
        };
        if collection.lexical().is_none() {
            return Ok(None);
        }
        let (base, tuned) = (&config.index.base_space, &config.index.tuned_space);
        let spaces = vec![
            Retrieval::Dense(base.clone()),
            Retrieval::Dense(tuned.clone()),
            Retrieval::Lexical,
            Retrieval::Hybrid(base.clone()),
            Retrieval::Hybrid(tuned.clone()),
        ];
        let inputs = CollectionEvalInputs {
            queries: config.data.path.join("queries.jsonl"),
            qrels: config
                .data
                .path
                .join("qrels")
                .join(format!("{}.tsv", config.data.test_split)),
            spaces,
            fusion: Fusion::default(),
            k: 10,
            device: self.device(Stage::Report)?,
        };
        let evaluation = evaluate_collection(collection.as_ref(), &inputs).map_err(failed)?;
        Ok(Some(CollectionSearch {
            generation: collection.generation(),
            queries: evaluation.evaluated_queries,
            fusion: inputs.fusion.method.name().into(),
            spaces: evaluation
                .spaces
                .into_iter()
                .map(|s| (s.space, s.metrics))
                .collect(),
        }))
    }

    /// Writes `report` to the work directory and publishes it with the evaluation's files as
    /// the collection's latest report.
    fn publish(&mut self, report: &PipelineReport) -> Result<(), PipelineError> {
        let dir = self.work.report();
        let markdown = report.markdown();
        work::write_json(&dir.join("pipeline.json"), report)?;
        let md_path = dir.join("pipeline.md");
        std::fs::write(&md_path, &markdown).map_err(|e| PipelineError::Io {
            path: md_path.clone(),
            source: e,
        })?;
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "pipeline.json".into(),
                serde_json::to_vec_pretty(report).expect("the report serializes"),
            ),
            ("pipeline.md".into(), markdown.into_bytes()),
        ];
        for name in ["report.html", "report.md", "metrics.json", "per_query.csv"] {
            let path = self.work.eval().join(name);
            let body = std::fs::read(&path).map_err(|e| PipelineError::Io {
                path: path.clone(),
                source: e,
            })?;
            files.push((name.into(), body));
        }
        let borrowed: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        self.store()?
            .publish_report(&self.config.index.collection, &borrowed)
            .map_err(|e| PipelineError::stage(Stage::Report, e))
    }
}
