//! `attune eval`: score a model (optionally against a baseline, optionally on a general set with
//! a promotion gate) on a BEIR dataset, or score a TREC-style run file against qrels.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use attune_eval::cache::EmbeddingCache;
use attune_eval::compare::{compare, ComparisonSettings};
use attune_eval::data::{read_qrels, read_run};
use attune_eval::evaluator::{evaluate_model, query_texts, EvalSettings, Timings};
use attune_eval::gate::{check_gate, GateInput, GateSettings};
use attune_eval::report::{DatasetResult, ModelResult, Report};
use attune_eval::{evaluate, BeirDataset, Definitions, MetricName, MetricsSettings};
use attune_model::{DeviceRequest, Encoder, EncoderSettings, ModelDir};
use clap::{Args, ValueEnum};

use super::{progress_bar, GateFailed};

/// Which metric definitions to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DefinitionsArg {
    /// trec_eval / pytrec_eval: graded nDCG, MAP over all relevant documents, ties by id
    /// descending.
    TrecEval,
    /// sentence-transformers' InformationRetrievalEvaluator: binary relevance, MAP@k over
    /// min(k, #relevant), ties by id ascending.
    SentenceTransformers,
}

impl From<DefinitionsArg> for Definitions {
    fn from(arg: DefinitionsArg) -> Self {
        match arg {
            DefinitionsArg::TrecEval => Definitions::TrecEval,
            DefinitionsArg::SentenceTransformers => Definitions::SentenceTransformers,
        }
    }
}

/// Arguments of `attune eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model to evaluate (the candidate, e.g. a tuned model directory).
    #[arg(long, value_name = "DIR", required_unless_present = "run")]
    pub model: Option<PathBuf>,
    /// BEIR directory: corpus.jsonl, queries.jsonl, qrels/<split>.tsv. Documents are embedded
    /// as `title + " " + text`.
    #[arg(long, value_name = "BEIR_DIR", required_unless_present = "run")]
    pub data: Option<PathBuf>,
    /// Qrels split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// A model to compare with (e.g. the base model): adds deltas, wins/ties/losses, a
    /// significance test and the gate.
    #[arg(long, value_name = "DIR")]
    pub baseline: Option<PathBuf>,
    /// Rank cutoffs; the deepest is the retrieval depth.
    #[arg(long, value_delimiter = ',', default_value = "1,3,5,10,100")]
    pub k: Vec<usize>,
    /// Directory for metrics.json, per_query.csv, report.md and report.html.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A general-capability BEIR set: both models are evaluated on it and the gate bounds the
    /// candidate's nDCG@10 drop.
    #[arg(long, value_name = "BEIR_DIR")]
    pub general_data: Option<PathBuf>,
    /// Qrels split of the general set.
    #[arg(long, default_value = "test")]
    pub general_split: String,
    /// Largest allowed drop of nDCG@10 on the general set (absolute: 0.01 = one point).
    #[arg(long, default_value_t = GateSettings::default().max_general_drop, value_name = "F")]
    pub max_general_drop: f64,
    /// Fail unless the candidate's domain nDCG@10 beats the baseline's.
    #[arg(long)]
    pub require_gain: bool,
    /// Metric definitions.
    #[arg(long, value_enum, default_value_t = DefinitionsArg::TrecEval)]
    pub definitions: DefinitionsArg,
    /// Score this run file instead of a model (TSV `query-id corpus-id score`, or TREC
    /// `qid Q0 docno rank score tag`); needs --qrels.
    #[arg(long, value_name = "FILE", requires = "qrels", conflicts_with_all = ["model", "data", "baseline", "general_data"])]
    pub run: Option<PathBuf>,
    /// Qrels for --run (BEIR TSV with header, or TREC `qid iter docno rel`).
    #[arg(long, value_name = "FILE", requires = "run")]
    pub qrels: Option<PathBuf>,
    /// Name of the candidate in reports (default: `tuned` with a baseline, else `model`).
    #[arg(long)]
    pub label: Option<String>,
    /// Name of the baseline in reports.
    #[arg(long, default_value = "base")]
    pub baseline_label: String,
    /// Where corpus embeddings are cached (default: $ATTUNE_CACHE_DIR/embeddings, else
    /// $XDG_CACHE_HOME/attune/embeddings, else ~/.cache/attune/embeddings).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Embed the corpus even when a cached copy exists (and do not store one).
    #[arg(long)]
    pub no_cache: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = EncoderSettings::default().batch_size)]
    pub batch_size: usize,
    /// Truncate texts to this many tokens (default: each model's max_seq_length).
    #[arg(long, value_name = "N")]
    pub max_seq_len: Option<usize>,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// Resamples of the bootstrap interval and of the randomization test.
    #[arg(long, default_value_t = ComparisonSettings::default().resamples)]
    pub resamples: usize,
    /// Seed of the resampling.
    #[arg(long, default_value_t = ComparisonSettings::default().seed)]
    pub seed: u64,
    /// Forgetting control: evaluate `baseline + alpha · (model − baseline)` at each alpha
    /// (e.g. 0.25,0.5,0.75,1) on the domain and general sets, and pick the alpha with the best
    /// domain nDCG@10 whose general drop passes the gate. Needs --baseline and --general-data.
    #[arg(long, value_delimiter = ',', value_name = "ALPHAS", requires_all = ["baseline", "general_data"])]
    pub sweep_alphas: Vec<f64>,
    /// With --sweep-alphas: write the picked merged model here.
    #[arg(long, value_name = "DIR", requires = "sweep_alphas")]
    pub sweep_out: Option<PathBuf>,
}

/// A loaded model: its encoder and identity.
struct LoadedModel {
    label: String,
    source: String,
    fingerprint: String,
    encoder: Encoder,
}

fn load_model(path: &Path, label: &str, args: &EvalArgs) -> Result<LoadedModel> {
    let dir = ModelDir::open(path)?;
    let fingerprint = dir.fingerprint()?;
    let device = args.device.open()?;
    let settings = EncoderSettings {
        batch_size: args.batch_size,
        max_seq_length: args.max_seq_len,
        ..Default::default()
    };
    Ok(LoadedModel {
        label: label.to_string(),
        source: path.display().to_string(),
        fingerprint,
        encoder: Encoder::load(&dir, &device, settings)?,
    })
}

fn dataset_name(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn evaluate_one(
    model: &LoadedModel,
    data: &BeirDataset,
    name: &str,
    settings: &EvalSettings,
) -> Result<ModelResult> {
    let bar = progress_bar(Some(data.corpus.len() as u64), "docs");
    bar.set_prefix(format!("{} on {name}", model.label));
    let result = evaluate_model(
        &model.encoder,
        &model.fingerprint,
        data,
        settings,
        &mut |n| bar.inc(n as u64),
    )
    .with_context(|| format!("evaluating {} on {name}", model.source))?;
    bar.finish_and_clear();
    let t = &result.timings;
    let embedding = t.corpus_embedding_s + t.query_embedding_s;
    eprintln!(
        "{} on {name}: corpus {:.1} s{}, queries {:.2} s, scoring {:.4} s ({})",
        model.label,
        t.corpus_embedding_s,
        if t.corpus_from_cache {
            " (from cache)"
        } else {
            ""
        },
        t.query_embedding_s,
        t.scoring_s(),
        if t.corpus_from_cache {
            "corpus from cache".to_string()
        } else {
            format!(
                "{:.3}% of embedding time",
                100.0 * t.scoring_s() / embedding
            )
        }
    );
    if result.truncated_documents > 0 {
        eprintln!(
            "{} on {name}: {} of {} documents were truncated to {} tokens",
            model.label,
            result.truncated_documents,
            data.corpus.len(),
            model.encoder.max_seq_length()
        );
    }
    for warning in result.evaluation.warnings(name) {
        eprintln!("attune: warning: {warning}");
    }
    Ok(ModelResult {
        label: model.label.clone(),
        source: model.source.clone(),
        fingerprint: model.fingerprint.clone(),
        evaluation: result.evaluation,
        timings: result.timings,
    })
}

fn evaluate_dataset(
    path: &Path,
    split: &str,
    candidate: &LoadedModel,
    baseline: Option<&LoadedModel>,
    settings: &EvalSettings,
    comparison: &ComparisonSettings,
) -> Result<DatasetResult> {
    let data = BeirDataset::load(path, split)?;
    let name = dataset_name(path);
    let warnings = data.report.warnings(&path.display().to_string());
    for warning in &warnings {
        eprintln!("attune: warning: {warning}");
    }
    let baseline = baseline
        .map(|b| evaluate_one(b, &data, &name, settings))
        .transpose()?;
    let candidate = evaluate_one(candidate, &data, &name, settings)?;
    let comparison = baseline
        .as_ref()
        .map(|b| {
            compare(
                &b.evaluation,
                &candidate.evaluation,
                MetricName::NDCG_10,
                comparison,
            )
        })
        .transpose()?;
    Ok(DatasetResult {
        name,
        source: path.display().to_string(),
        split: split.to_string(),
        documents: data.corpus.len(),
        warnings,
        candidate,
        baseline,
        comparison,
        query_texts: query_texts(&data),
    })
}

fn metrics_settings(args: &EvalArgs) -> MetricsSettings {
    let mut cutoffs = args.k.clone();
    // nDCG@10 drives comparisons and the gate, so it is always computed.
    if !cutoffs.contains(&10) {
        cutoffs.push(10);
    }
    MetricsSettings {
        definitions: args.definitions.into(),
        cutoffs,
    }
}

fn finish(report: &Report, out: Option<&Path>) -> Result<()> {
    print!("{}", report.summary_table());
    if let Some(out) = out {
        report.write(out)?;
        eprintln!(
            "wrote {}/{{metrics.json, per_query.csv, report.md, report.html}}",
            out.display()
        );
    }
    if let Some(gate) = &report.gate {
        if !gate.passed {
            let failed: Vec<&str> = gate
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.message.as_str())
                .collect();
            return Err(GateFailed(format!("gate failed: {}", failed.join("; "))).into());
        }
    }
    Ok(())
}

fn run_file(args: &EvalArgs, run_path: &Path) -> Result<()> {
    let qrels_path = args
        .qrels
        .as_deref()
        .expect("clap requires --qrels with --run");
    let run = read_run(run_path)?;
    let qrels = read_qrels(qrels_path)?;
    let evaluation = evaluate(&run, &qrels, &metrics_settings(args))?;
    let source = run_path.display().to_string();
    let warnings = evaluation.warnings(&source);
    for warning in &warnings {
        eprintln!("attune: warning: {warning}");
    }
    let report = Report {
        definitions: args.definitions.into(),
        domain: DatasetResult {
            name: dataset_name(qrels_path),
            source: qrels_path.display().to_string(),
            split: "qrels".to_string(),
            documents: 0,
            warnings,
            candidate: ModelResult {
                label: "run".to_string(),
                source,
                fingerprint: String::new(),
                evaluation,
                timings: Timings::default(),
            },
            baseline: None,
            comparison: None,
            query_texts: Default::default(),
        },
        general: None,
        gate: None,
    };
    finish(&report, args.out.as_deref())
}

/// Runs `attune eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    if args.k.is_empty() || args.k.contains(&0) {
        bail!("--k: cutoffs must be ≥ 1, got {:?}", args.k);
    }
    if let Some(run_path) = &args.run {
        return run_file(&args, run_path);
    }
    let (Some(model_path), Some(data_path)) = (&args.model, &args.data) else {
        bail!("--model and --data are required (or --run with --qrels)");
    };
    let gate_settings = GateSettings {
        max_general_drop: args.max_general_drop,
        require_gain: args.require_gain,
    };
    gate_settings.validate()?;
    let gate_requested = args.general_data.is_some() || args.require_gain;
    if gate_requested && args.baseline.is_none() {
        bail!("--general-data and --require-gain compare with a baseline: pass --baseline DIR");
    }
    let label = args.label.clone().unwrap_or_else(|| {
        if args.baseline.is_some() {
            "tuned"
        } else {
            "model"
        }
        .to_string()
    });
    if args.baseline.is_some() && label == args.baseline_label {
        bail!("--label and --baseline-label must differ (both are `{label}`)");
    }

    let settings = EvalSettings {
        metrics: metrics_settings(&args),
        search: Default::default(),
        cache: (!args.no_cache).then(|| {
            EmbeddingCache::new(
                args.cache_dir
                    .clone()
                    .unwrap_or_else(EmbeddingCache::default_dir),
            )
        }),
    };
    let comparison = ComparisonSettings {
        resamples: args.resamples,
        seed: args.seed,
        ..Default::default()
    };
    if !args.sweep_alphas.is_empty() {
        return sweep(
            &args,
            model_path,
            data_path,
            &settings,
            &comparison,
            &gate_settings,
        );
    }
    let candidate = load_model(model_path, &label, &args)?;
    let baseline = args
        .baseline
        .as_deref()
        .map(|p| load_model(p, &args.baseline_label, &args))
        .transpose()?;

    let domain = evaluate_dataset(
        data_path,
        &args.split,
        &candidate,
        baseline.as_ref(),
        &settings,
        &comparison,
    )?;
    let general = args
        .general_data
        .as_deref()
        .map(|p| {
            evaluate_dataset(
                p,
                &args.general_split,
                &candidate,
                baseline.as_ref(),
                &settings,
                &comparison,
            )
        })
        .transpose()?;

    let ndcg = |d: &DatasetResult| -> Option<GateInput> {
        Some(GateInput {
            dataset: d.name.clone(),
            baseline: d
                .baseline
                .as_ref()?
                .evaluation
                .mean_of(MetricName::NDCG_10)?,
            candidate: d.candidate.evaluation.mean_of(MetricName::NDCG_10)?,
        })
    };
    let gate = if gate_requested {
        let domain_input = ndcg(&domain).context("domain nDCG@10 missing")?;
        let general_input = general.as_ref().and_then(ndcg);
        Some(check_gate(
            &gate_settings,
            &domain_input,
            general_input.as_ref(),
        ))
    } else {
        None
    };
    let report = Report {
        definitions: args.definitions.into(),
        domain,
        general,
        gate,
    };
    finish(&report, args.out.as_deref())
}

/// One alpha of a sweep.
#[derive(Debug, serde::Serialize)]
struct SweepPoint {
    alpha: f64,
    domain_ndcg_at_10: f64,
    general_ndcg_at_10: f64,
    general_drop: f64,
    passed: bool,
}

/// `--sweep-alphas`: merges, evaluates and gates each alpha; writes the best passing one.
fn sweep(
    args: &EvalArgs,
    model_path: &Path,
    data_path: &Path,
    settings: &EvalSettings,
    comparison: &ComparisonSettings,
    gate_settings: &GateSettings,
) -> Result<()> {
    let (Some(baseline_path), Some(general_path)) = (&args.baseline, &args.general_data) else {
        bail!("--sweep-alphas needs --baseline and --general-data");
    };
    if let Some(bad) = args.sweep_alphas.iter().find(|a| !(0.0..=1.0).contains(*a)) {
        bail!("--sweep-alphas: {bad} is not between 0 and 1");
    }
    let base_dir = ModelDir::open(baseline_path)?;
    let tuned_dir = ModelDir::open(model_path)?;
    let baseline = load_model(baseline_path, &args.baseline_label, args)?;
    let work = std::env::temp_dir().join(format!("attune-sweep-{}", std::process::id()));
    let mut points = Vec::new();
    for &alpha in &args.sweep_alphas {
        let merged = work.join(format!("alpha-{alpha}"));
        ModelDir::interpolate(&base_dir, &tuned_dir, alpha, &merged, &[])?;
        let candidate = load_model(&merged, &format!("alpha {alpha}"), args)?;
        let domain = evaluate_dataset(
            data_path,
            &args.split,
            &candidate,
            Some(&baseline),
            settings,
            comparison,
        )?;
        let general = evaluate_dataset(
            general_path,
            &args.general_split,
            &candidate,
            Some(&baseline),
            settings,
            comparison,
        )?;
        let ndcg = |d: &DatasetResult, base: bool| -> Result<f64> {
            let result = if base {
                d.baseline.as_ref().context("baseline result")?
            } else {
                &d.candidate
            };
            result
                .evaluation
                .mean_of(MetricName::NDCG_10)
                .context("nDCG@10 missing")
        };
        let input = |d: &DatasetResult| -> Result<GateInput> {
            Ok(GateInput {
                dataset: d.name.clone(),
                baseline: ndcg(d, true)?,
                candidate: ndcg(d, false)?,
            })
        };
        let (domain_input, general_input) = (input(&domain)?, input(&general)?);
        let gate = check_gate(gate_settings, &domain_input, Some(&general_input));
        let point = SweepPoint {
            alpha,
            domain_ndcg_at_10: domain_input.candidate,
            general_ndcg_at_10: general_input.candidate,
            general_drop: general_input.baseline - general_input.candidate,
            passed: gate.passed,
        };
        eprintln!(
            "alpha {alpha}: {} nDCG@10 {:.4} (base {:.4}), {} nDCG@10 {:.4} (base {:.4}, drop {:+.4}): {}",
            domain.name,
            domain_input.candidate,
            domain_input.baseline,
            general.name,
            general_input.candidate,
            general_input.baseline,
            point.general_drop,
            if gate.passed { "passes" } else { "fails the gate" }
        );
        points.push(point);
        std::fs::remove_dir_all(&merged).ok();
    }
    std::fs::remove_dir_all(&work).ok();
    println!("| alpha | domain nDCG@10 | general nDCG@10 | general drop | gate |");
    println!("|---:|---:|---:|---:|---|");
    for p in &points {
        println!(
            "| {} | {:.4} | {:.4} | {:+.4} | {} |",
            p.alpha,
            p.domain_ndcg_at_10,
            p.general_ndcg_at_10,
            p.general_drop,
            if p.passed { "pass" } else { "fail" }
        );
    }
    let best = points
        .iter()
        .filter(|p| p.passed)
        .max_by(|a, b| a.domain_ndcg_at_10.total_cmp(&b.domain_ndcg_at_10));
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        let body = serde_json::json!({"points": points, "picked": best.map(|b| b.alpha)});
        std::fs::write(out.join("sweep.json"), serde_json::to_vec_pretty(&body)?)?;
    }
    let Some(best) = best else {
        return Err(GateFailed(format!(
            "no alpha of {:?} keeps the general nDCG@10 drop within {}",
            args.sweep_alphas, gate_settings.max_general_drop
        ))
        .into());
    };
    println!(
        "picked alpha {} (domain nDCG@10 {:.4})",
        best.alpha, best.domain_ndcg_at_10
    );
    if let Some(dest) = &args.sweep_out {
        ModelDir::interpolate(&base_dir, &tuned_dir, best.alpha, dest, &[])?;
        println!("merged model: {}", dest.display());
    }
    Ok(())
}
