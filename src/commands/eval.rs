//! `attune eval`: score a model (optionally against a baseline, optionally on a general set with
//! a promotion gate) on a BEIR dataset, or score a TREC-style run file against qrels.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use attune_app::eval_job::dataset_name;
use attune_app::{evaluate_collection, CollectionEvalInputs};
use attune_app::{
    evaluate_models, sweep_alphas, DataInput, EvalEvent, EvalJobError, EvaluationInputs,
    EvaluationSettings, ModelInput,
};
use attune_eval::cache::EmbeddingCache;
use attune_eval::compare::ComparisonSettings;
use attune_eval::data::{read_qrels, read_run};
use attune_eval::evaluator::Timings;
use attune_eval::gate::GateSettings;
use attune_eval::report::{DatasetResult, ModelResult, Report};
use attune_eval::{evaluate, Definitions};
use attune_index::{Fusion, FusionMethod, Retrieval};
use attune_model::{DeviceRequest, EncoderSettings, ModelDir, Precision};
use clap::{Args, ValueEnum};

use super::{progress_bar, GateFailed, StoreArgs};

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
    #[arg(long, value_name = "DIR", required_unless_present_any = ["run", "collection"])]
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
    /// Matryoshka: evaluate at each model's first N dimensions, re-normalised (as a space built
    /// with `attune index build --dimension N` serves them).
    #[arg(long, value_name = "N")]
    pub dimension: Option<usize>,
    /// Precision of the models' products: auto (f32 on the CPU, bf16 on CUDA), f32, bf16, f16,
    /// int8 (CPU) (as a space built with `attune index build --precision` serves them).
    #[arg(long, default_value_t = EvaluationSettings::default().precision)]
    pub precision: Precision,
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
    /// Evaluate by searching this built collection (of --store, or of the Qdrant store
    /// --backend qdrant names) instead of embedding the corpus: its vector spaces as served
    /// (HNSW), `lexical` (BM25) and `hybrid:<space>`. Queries from --queries (default
    /// DATA/queries.jsonl), judgments from DATA/qrels/SPLIT.tsv; one evaluation per cutoff of
    /// -k (each at that depth).
    #[arg(long, requires = "data", conflicts_with_all = ["model", "baseline", "run"])]
    pub collection: Option<String>,
    /// Where --collection lives.
    #[command(flatten)]
    pub store: StoreArgs,
    /// With --collection: spaces, baseline first (default: every space it serves).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "SPACE,...",
        requires = "collection"
    )]
    pub spaces: Vec<String>,
    /// With --collection: the queries file (default DATA/queries.jsonl).
    #[arg(long, value_name = "FILE", requires = "collection")]
    pub queries: Option<PathBuf>,
    /// With --collection: how hybrid spaces fuse (rrf or weighted).
    #[arg(long, default_value = "rrf", value_parser = super::index::parse_fusion_method)]
    pub fusion: FusionMethod,
    /// With --collection: print JSON instead of a table.
    #[arg(long, requires = "collection")]
    pub json: bool,
    /// With --collection: rank constant of rrf.
    #[arg(long, default_value_t = Fusion::default().k, value_name = "K")]
    pub fusion_k: f32,
    /// With --collection: share of the vector space in weighted fusion (0 to 1).
    #[arg(long, default_value_t = Fusion::default().weight, value_name = "W")]
    pub fusion_weight: f32,
}

impl EvalArgs {
    fn settings(&self) -> EvaluationSettings {
        EvaluationSettings {
            k: self.k.clone(),
            definitions: self.definitions.into(),
            batch_size: self.batch_size,
            max_seq_len: self.max_seq_len,
            dimension: self.dimension,
            precision: self.precision,
            resamples: self.resamples,
            seed: self.seed,
            max_general_drop: self.max_general_drop,
            require_gain: self.require_gain,
        }
    }

    fn inputs(&self, model: &Path, data: &Path) -> Result<EvaluationInputs> {
        let label = self.label.clone().unwrap_or_else(|| {
            if self.baseline.is_some() {
                "tuned"
            } else {
                "model"
            }
            .to_string()
        });
        Ok(EvaluationInputs {
            candidate: ModelInput {
                path: model.to_path_buf(),
                label,
            },
            baseline: self.baseline.clone().map(|path| ModelInput {
                path,
                label: self.baseline_label.clone(),
            }),
            domain: DataInput {
                path: data.to_path_buf(),
                split: self.split.clone(),
            },
            general: self.general_data.clone().map(|path| DataInput {
                path,
                split: self.general_split.clone(),
            }),
            cache_dir: (!self.no_cache).then(|| {
                self.cache_dir
                    .clone()
                    .unwrap_or_else(EmbeddingCache::default_dir)
            }),
            device: self.device.open()?,
        })
    }
}

/// Prints an evaluation's progress: a bar per model and data set, then where the time went;
/// shared with the pipeline's eval stage.
pub(crate) fn print_events() -> impl FnMut(EvalEvent<'_>) {
    let mut bar: Option<indicatif::ProgressBar> = None;
    move |event| match event {
        EvalEvent::Warning(warning) => eprintln!("attune: warning: {warning}"),
        EvalEvent::Started {
            model,
            dataset,
            documents,
        } => {
            let b = progress_bar(Some(documents as u64), "docs");
            b.set_prefix(format!("{model} on {dataset}"));
            bar = Some(b);
        }
        EvalEvent::Embedded(n) => {
            if let Some(b) = &bar {
                b.inc(n as u64);
            }
        }
        EvalEvent::Finished {
            result,
            dataset,
            documents,
            truncated,
            max_seq_length,
        } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            print_timings(result, dataset);
            if truncated > 0 {
                eprintln!(
                    "{} on {dataset}: {truncated} of {documents} documents were truncated to \
                     {max_seq_length} tokens",
                    result.label
                );
            }
        }
    }
}

fn print_timings(result: &ModelResult, dataset: &str) {
    let t = &result.timings;
    let embedding = t.corpus_embedding_s + t.query_embedding_s;
    eprintln!(
        "{} on {dataset}: corpus {:.1} s{}, queries {:.2} s, scoring {:.4} s ({})",
        result.label,
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
}

/// Prints the summary table, writes the report files to `out`, and turns a failed gate into
/// [`GateFailed`].
pub(crate) fn finish(report: &Report, out: Option<&Path>) -> Result<()> {
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
    let evaluation = evaluate(&run, &qrels, &args.settings().metrics().map_err(as_flags)?)?;
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
    super::keep_freed_memory();
    if let Some(run_path) = &args.run {
        return run_file(&args, run_path);
    }
    if let Some(collection) = &args.collection {
        return eval_collection(&args, collection);
    }
    let (Some(model_path), Some(data_path)) = (&args.model, &args.data) else {
        bail!("--model and --data are required (or --run with --qrels)");
    };
    let inputs = args.inputs(model_path, data_path)?;
    if !args.sweep_alphas.is_empty() {
        return sweep(&args, &inputs);
    }
    let report =
        evaluate_models(&inputs, &args.settings(), &mut print_events()).map_err(as_flags)?;
    finish(&report, args.out.as_deref())
}

/// A refused setting, named by its command-line flag.
fn as_flags(error: EvalJobError) -> anyhow::Error {
    match error {
        EvalJobError::InvalidSetting {
            name: "baseline", ..
        } => anyhow::anyhow!(
            "--general-data and --require-gain compare with a baseline: pass --baseline DIR"
        ),
        EvalJobError::InvalidSetting {
            name: "label",
            problem,
        } => {
            anyhow::anyhow!("--label and --baseline-label: {problem}")
        }
        EvalJobError::InvalidSetting { name, problem } => {
            anyhow::anyhow!("--{}: {problem}", name.replace('_', "-"))
        }
        other => other.into(),
    }
}

/// `--sweep-alphas`: merges, evaluates and gates each alpha; writes the best passing one.
fn sweep(args: &EvalArgs, inputs: &EvaluationInputs) -> Result<()> {
    let sweep = sweep_alphas(
        inputs,
        &args.settings(),
        &args.sweep_alphas,
        &mut print_events(),
        &mut |point| {
            eprintln!(
                "alpha {}: {} nDCG@10 {:.4} (base {:.4}), {} nDCG@10 {:.4} (base {:.4}, drop {:+.4}): {}",
                point.alpha,
                point.domain,
                point.domain_ndcg_at_10,
                point.domain_baseline,
                point.general,
                point.general_ndcg_at_10,
                point.general_baseline,
                point.general_drop,
                if point.passed { "passes" } else { "fails the gate" }
            )
        },
    )
    .map_err(as_flags)?;
    println!("| alpha | domain nDCG@10 | general nDCG@10 | general drop | gate |");
    println!("|---:|---:|---:|---:|---|");
    for p in &sweep.points {
        println!(
            "| {} | {:.4} | {:.4} | {:+.4} | {} |",
            p.alpha,
            p.domain_ndcg_at_10,
            p.general_ndcg_at_10,
            p.general_drop,
            if p.passed { "pass" } else { "fail" }
        );
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("sweep.json"), serde_json::to_vec_pretty(&sweep)?)?;
    }
    let Some(picked) = sweep.picked else {
        return Err(GateFailed(format!(
            "no alpha of {:?} keeps the general nDCG@10 drop within {}",
            args.sweep_alphas, args.max_general_drop
        ))
        .into());
    };
    let best = sweep
        .points
        .iter()
        .find(|p| p.alpha == picked)
        .expect("the picked alpha is a point");
    println!(
        "picked alpha {} (domain nDCG@10 {:.4})",
        best.alpha, best.domain_ndcg_at_10
    );
    if let Some(dest) = &args.sweep_out {
        let base = ModelDir::open(&inputs.baseline.as_ref().expect("sweep has a baseline").path)?;
        let tuned = ModelDir::open(&inputs.candidate.path)?;
        ModelDir::interpolate(&base, &tuned, best.alpha, dest, &[])?;
        println!("merged model: {}", dest.display());
    }
    Ok(())
}

/// `attune eval --collection`: judged queries searched in a built collection, per space and
/// cutoff; prints a markdown table (or JSON) and writes `collection-metrics.json` to --out.
fn eval_collection(args: &EvalArgs, name: &str) -> Result<()> {
    let Some(data) = &args.data else {
        bail!("--collection needs --data");
    };
    let fusion = Fusion {
        method: args.fusion,
        k: args.fusion_k,
        weight: args.fusion_weight,
    };
    fusion.validate()?;
    let store = args.store.open(false)?;
    let collection = store.open_collection(name)?;
    let spaces: Vec<Retrieval> = if args.spaces.is_empty() {
        Retrieval::all(
            collection.spaces().into_keys(),
            collection.lexical().is_some(),
        )
    } else {
        args.spaces.iter().map(|s| Retrieval::parse(s)).collect()
    };
    let mut inputs = CollectionEvalInputs {
        queries: args
            .queries
            .clone()
            .unwrap_or_else(|| data.join("queries.jsonl")),
        qrels: data.join("qrels").join(format!("{}.tsv", args.split)),
        spaces,
        fusion,
        k: 10,
        device: args.device.open()?,
    };
    let mut evaluations = Vec::new();
    for &k in &args.k {
        inputs.k = k;
        evaluations.push(evaluate_collection(collection.as_ref(), &inputs)?);
    }
    let body = serde_json::json!({
        "collection": name,
        "generation": collection.generation(),
        "store": store.location(),
        "searched": "the built collection: vector spaces through their HNSW graphs, lexical by \
                     BM25 (tantivy), hybrid fused",
        "fusion": fusion,
        "evaluations": evaluations,
    });
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(
            out.join("collection-metrics.json"),
            serde_json::to_vec_pretty(&body)?,
        )?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&body)?);
        return Ok(());
    }
    println!(
        "Searched in collection {name:?} (generation {}) of {}: vector spaces through their \
         HNSW graphs, lexical by BM25, hybrid fused by {} ({} judged queries).\n",
        collection.generation(),
        store.location(),
        fusion.method.name(),
        evaluations.first().map_or(0, |e| e.evaluated_queries)
    );
    let mut header = vec!["space".to_string()];
    for evaluation in &evaluations {
        for metric in evaluation
            .spaces
            .first()
            .into_iter()
            .flat_map(|s| s.metrics.keys())
        {
            header.push(metric.clone());
        }
    }
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for (i, space) in inputs.spaces.iter().enumerate() {
        let mut row = vec![space.name()];
        for evaluation in &evaluations {
            row.extend(
                evaluation.spaces[i]
                    .metrics
                    .values()
                    .map(|v| format!("{v:.4}")),
            );
        }
        println!("| {} |", row.join(" | "));
    }
    Ok(())
}
