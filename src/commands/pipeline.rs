//! `attune pipeline --config pipeline.toml`: from data to a promoted model in one command.
//!
//! The stages, their markers and the report are `attune_app::pipeline`'s; this command parses
//! its arguments, opens the store, shows each stage's progress and prints the report. A failed
//! gate exits with status 3 saying which generation keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use attune_app::mine_job::MineOutcome;
use attune_app::{
    run_pipeline, CheckOutcome, EvalEvent, MineSettings, PipelineConfig, PipelineObserver, Stage,
};
use attune_eval::report::Report;
use attune_index::{BuildEvent, BuildReport, VectorStore};
use attune_trainer::train::{Event, TrainSummary};
use clap::Args;

use super::GateFailed;

/// Arguments of `attune pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline's settings (TOML; relative paths in it are relative to this file).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Rerun from this stage even when it finished before (later stages rerun too).
    #[arg(long, value_enum)]
    pub from: Option<Stage>,
}

/// Prints a training run's events (progress bars and step lines).
type TrainPrinter = Box<dyn FnMut(Event<'_>)>;
/// Prints an evaluation's events.
type EvalPrinter = Box<dyn FnMut(EvalEvent<'_>)>;

/// Shows a run on the terminal, as the stages' own commands do.
#[derive(Default)]
struct Printer {
    train: Option<TrainPrinter>,
    eval: Option<EvalPrinter>,
    mining: Option<(indicatif::ProgressBar, Instant)>,
}

impl PipelineObserver for Printer {
    fn stage_skipped(&mut self, stage: Stage, seconds: f64) {
        eprintln!("pipeline: {stage}: done before ({seconds:.1} s), skipped");
    }
    fn stage_started(&mut self, stage: Stage) {
        eprintln!("pipeline: {stage}: running");
    }
    fn stage_finished(&mut self, stage: Stage, seconds: f64) {
        eprintln!("pipeline: {stage}: done in {seconds:.1} s");
    }
    fn index_skipped(&mut self, reasons: &str) {
        eprintln!("pipeline: index: skipped, the gate failed ({reasons})");
    }
    fn checked(&mut self, data: &Path, outcome: &CheckOutcome) {
        super::data::print_check_outcome(data, outcome);
    }
    fn mine_warning(&mut self, warning: &str) {
        eprintln!("attune: warning: {warning}");
    }
    fn feedback_exported(&mut self, report: &attune_app::feedback::ExportReport) {
        eprintln!(
            "pipeline: check: {} feedback pairs for {} queries from {} logged searches ({} \
             events, {} shopper sessions); position bias: {}",
            report.pairs,
            report.queries,
            report.requests,
            report.events,
            report.sessions,
            report
                .propensities
                .as_ref()
                .map_or("not corrected", |p| p.method.as_str())
        );
    }
    fn report_warning(&mut self, warning: &str) {
        eprintln!("attune: warning: {warning}");
    }
    fn mining(&mut self, done: usize, total: usize) {
        let (bar, _) = self.mining.get_or_insert_with(|| {
            (
                super::progress_bar(Some(total as u64), "texts"),
                Instant::now(),
            )
        });
        bar.set_position(done as u64);
    }
    fn mined(&mut self, outcome: &MineOutcome, settings: &MineSettings) {
        let started = match self.mining.take() {
            Some((bar, started)) => {
                bar.finish_and_clear();
                started
            }
            None => Instant::now(),
        };
        super::mine::print_mined(outcome, settings, started.elapsed().as_secs_f64());
    }
    fn train_started(&mut self, batch_size: usize) {
        self.train = Some(Box::new(super::train::print_events(batch_size)));
    }
    fn train_event(&mut self, event: Event<'_>) {
        if let Some(print) = &mut self.train {
            print(event);
        }
    }
    fn trained(&mut self, summary: &TrainSummary) {
        self.train = None;
        super::train::print_summary(summary);
    }
    fn eval_event(&mut self, event: EvalEvent<'_>) {
        self.eval
            .get_or_insert_with(|| Box::new(super::eval::print_events()))(event);
    }
    fn evaluated(&mut self, report: &Report, dir: &Path) {
        self.eval = None;
        print!("{}", report.summary_table());
        eprintln!(
            "wrote {}/{{metrics.json, per_query.csv, report.md, report.html}}",
            dir.display()
        );
    }
    fn index_event(&mut self, event: BuildEvent) {
        if let BuildEvent::Graph { space, points } = event {
            eprintln!("attune: building the HNSW graph of {space:?} ({points} points)");
        }
    }
    fn indexed(&mut self, report: &BuildReport) {
        eprintln!(
            "attune: collection {:?} generation {}: {} documents, embedded {:?}",
            report.collection, report.generation, report.documents, report.embedded
        );
        super::index::warn_cleanup_errors(report);
    }
}

/// Runs `attune pipeline`.
pub fn run(args: PipelineArgs) -> Result<()> {
    // The train stage allocates as `attune train` does.
    super::keep_freed_memory();
    let config = PipelineConfig::read(&args.config)?;
    let started = Instant::now();
    let store_dir = config.index.store.clone();
    let store_settings = config.store.clone();
    let open_store = move || -> Result<Arc<dyn VectorStore>, attune_index::IndexError> {
        store_settings.open(Some(&store_dir), true)
    };
    let outcome = run_pipeline(&config, args.from, &open_store, &mut Printer::default())?;
    eprintln!(
        "pipeline: finished in {:.1} s; report: {}",
        started.elapsed().as_secs_f64(),
        outcome.report_markdown.display()
    );
    print!("{}", outcome.report.markdown());
    match outcome.gate_failure {
        Some(reasons) => Err(GateFailed(format!(
            "gate failed, the tuned model was not promoted: {reasons}; {}",
            match outcome.report.serving_generation {
                Some(g) => format!(
                    "generation {g} of collection {:?} keeps serving",
                    config.index.collection
                ),
                None => format!("collection {:?} was not built", config.index.collection),
            }
        ))
        .into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::fs;

    use attune_app::{IndexSettings, TrainSettings};
    use clap::FromArgMatches;
    use serde::Serialize;
    use serde_json::{json, Value};

    use super::*;

    fn config(text: &str) -> Result<PipelineConfig, attune_app::PipelineError> {
        let dir = tempfile::tempdir().unwrap();
        config_in(dir.path(), text)
    }

    /// Reads `text` as `dir/pipeline.toml` (relative paths resolve against `dir`).
    fn config_in(dir: &Path, text: &str) -> Result<PipelineConfig, attune_app::PipelineError> {
        let path = dir.join("pipeline.toml");
        fs::write(&path, text).unwrap();
        PipelineConfig::read(&path)
    }

    const MINIMAL: &str = "work_dir = \"work\"\nbase_model = \"/models/base\"\n[data]\npath = \"data\"\n[index]\nstore = \"store\"\ncollection = \"shop\"\n";

    #[test]
    fn relative_paths_are_relative_to_the_file_and_defaults_apply() {
        let c = config(MINIMAL).unwrap();
        assert!(c.work_dir.is_absolute() && c.work_dir.ends_with("work"));
        assert_eq!(c.base_model, PathBuf::from("/models/base"));
        assert_eq!(c.data.train_split, "train");
        assert_eq!(c.data.test_split, "test");
        assert_eq!(c.index.base_space, "base");
        assert!(c.gate.require_gain);
        assert_eq!(
            c.stages(),
            vec![
                Stage::Check,
                Stage::Train,
                Stage::Eval,
                Stage::Index,
                Stage::Report
            ]
        );
        let mined = config(&format!("{MINIMAL}[mine]\nper_query = 3\n")).unwrap();
        assert_eq!(mined.stages().len(), 6);
    }

    #[test]
    fn unknown_keys_and_bad_names_are_errors_naming_them() {
        let err = format!(
            "{:#}",
            config(&format!("{MINIMAL}[train]\nepoch = 3\n")).unwrap_err()
        );
        assert!(
            err.contains("epoch") && err.contains("pipeline.toml"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            config(&MINIMAL.replace("\"shop\"", "\"../x\"")).unwrap_err()
        );
        assert!(err.contains("index.collection"), "{err}");
        let err = format!(
            "{:#}",
            config(&format!("{MINIMAL}[gate]\nrequire_gain = false\n")).unwrap_err()
        );
        assert!(err.contains("checks nothing"), "{err}");
    }

    /// A value for `field` that differs from its default `default` (JSON): numbers are moved,
    /// booleans flipped, unset options set.
    fn other_value(field: &str, default: &Value) -> Value {
        match default {
            Value::Bool(b) => Value::Bool(!b),
            Value::Number(n) if n.is_u64() => json!(n.as_u64().unwrap() + 3),
            // Exact in f32 and f64, so the value read back is the value written.
            Value::Number(n) if n.as_f64() == Some(0.25) => json!(0.5),
            Value::Number(_) => json!(0.25),
            Value::Null if field.ends_with("_model") => json!("guide-model"),
            Value::Null => json!(24),
            Value::Array(items) if items.is_empty() && field.ends_with("_fields") => {
                json!(["brand", "sku"])
            }
            Value::Array(items) if items.is_empty() => json!([16, 8]),
            // String settings: another value of the same kind.
            Value::String(s) => json!(match s.as_str() {
                "refuse" => "drop".to_string(),
                "merge" => "replace".to_string(),
                "auto" => "f32".to_string(),
                "uniform" => "linear".to_string(),
                "english" => "german".to_string(),
                s if s.starts_with("Represent") => "search the catalog".to_string(),
                s if s.contains(':') => "3:17".to_string(),
                s if s.contains(',') => s.split(',').take(2).collect::<Vec<_>>().join(","),
                other => panic!("field {field}: no probe value for {other:?}"),
            }),
            other => panic!("field {field}: no probe value for {other}"),
        }
    }

    /// Walks every field of the settings struct `S` (the list comes from serializing its
    /// `Default`, not from a hand-kept list): the `pipeline.toml` key under `table` and the
    /// command-line flag of the same name (`--` + the key with `-` for `_`) set the same field
    /// to the same value, and to a value other than the default.
    fn toml_keys_and_flags_set_the_same_fields<S>(
        table: &str,
        from_config: impl Fn(PipelineConfig) -> S,
    ) where
        S: Serialize + Default + PartialEq + fmt::Debug + Args + FromArgMatches,
    {
        let defaults = serde_json::to_value(S::default()).unwrap();
        let fields = defaults.as_object().expect("settings serialize as a table");
        assert!(!fields.is_empty());
        for (field, default) in fields {
            let value = other_value(field, default);
            let toml_value = toml::Value::try_from(&value).unwrap();
            let from_toml = from_config(
                config(&format!("{MINIMAL}[{table}]\n{field} = {toml_value}\n"))
                    .unwrap_or_else(|e| panic!("[{table}] {field}: {e:#}")),
            );
            let flag = format!("--{}", field.replace('_', "-"));
            let mut argv = vec![flag.clone()];
            if value == Value::Bool(false) {
                // A setting that defaults to true takes its value (`--flag false`).
                argv.push("false".into());
            } else if let Some(items) = value.as_array() {
                let items: Vec<String> = items
                    .iter()
                    .map(|item| item.as_str().map_or(item.to_string(), str::to_string))
                    .collect();
                argv.push(items.join(","));
            } else if !value.is_boolean() {
                argv.push(
                    value
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or(value.to_string()),
                );
            }
            let command = S::augment_args(clap::Command::new("settings").no_binary_name(true));
            let matches = command
                .try_get_matches_from(&argv)
                .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let from_flags = S::from_arg_matches(&matches).unwrap();
            assert_eq!(from_toml, from_flags, "[{table}] {field} vs {flag}");
            assert_ne!(from_toml, S::default(), "[{table}] {field} changed nothing");
            let set = serde_json::to_value(&from_flags).unwrap();
            for (other, default) in fields {
                let changed = set[other] != *default;
                assert_eq!(changed, other == field, "{flag} changed {other}");
            }
        }
    }

    #[test]
    fn index_settings_are_one_declaration_for_the_toml_and_the_flags() {
        toml_keys_and_flags_set_the_same_fields("index.build", |c| c.index.build);
    }

    #[test]
    fn a_changed_setting_changes_its_stage_key_and_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = config_in(dir.path(), MINIMAL).unwrap();
        let b = config_in(dir.path(), &format!("{MINIMAL}[train]\nepochs = 2\n")).unwrap();
        let (ka, kb) = (a.stage_keys(), b.stage_keys());
        let changed: Vec<bool> = ka.iter().zip(&kb).map(|(x, y)| x.1 != y.1).collect();
        // check unchanged; train, eval, index, report changed.
        assert_eq!(changed, vec![false, true, true, true, true]);
        assert_eq!(a.stage_keys(), ka, "keys are deterministic");
    }

    #[test]
    fn train_and_mine_settings_are_one_declaration_for_the_toml_and_the_flags() {
        toml_keys_and_flags_set_the_same_fields("train", |c| c.train);
        toml_keys_and_flags_set_the_same_fields("mine", |c| c.mine.expect("[mine] given"));
    }

    #[test]
    fn the_commands_embed_the_settings_structs_whole() {
        // `attune train`, `attune mine` and `attune index build` flatten the same structs the
        // pipeline reads, so a flag added to one is a key of the other.
        use clap::CommandFactory;
        let cli = crate::Cli::command();
        for (path, defaults) in [
            (
                vec!["train"],
                serde_json::to_value(TrainSettings::default()).unwrap(),
            ),
            (
                vec!["mine"],
                serde_json::to_value(MineSettings::default()).unwrap(),
            ),
            (
                vec!["index", "build"],
                serde_json::to_value(IndexSettings::default()).unwrap(),
            ),
        ] {
            let mut command = &cli;
            for name in &path {
                command = command.find_subcommand(name).unwrap();
            }
            for field in defaults.as_object().unwrap().keys() {
                assert!(
                    command
                        .get_arguments()
                        .any(|a| a.get_id() == field.as_str()),
                    "attune {} has no --{}",
                    path.join(" "),
                    field.replace('_', "-")
                );
            }
        }
    }
}
