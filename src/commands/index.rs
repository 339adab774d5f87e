//! `attune index`: build, search, inspect and drop collections of a store.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use attune_app::{IndexInputs, IndexJob, IndexSettings, ModelEmbedder, SpaceModel};
use attune_index::{
    retrieve, BuildEvent, BuildReport, Corpus, DenseQuery, Filter, Fusion, FusionMethod, Retrieval,
    RetrievalRequest, Store,
};
use attune_model::DeviceRequest;
use clap::{Args, Subcommand};

/// `attune index` subcommands.
#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Embed a corpus into a new generation of a collection (one vector space per --space),
    /// build its HNSW graphs and switch to it atomically. Resumable and incremental.
    Build(BuildArgs),
    /// Search one space of a collection with a text query.
    Search(SearchArgs),
    /// Collections, generations, spaces, models, sizes on disk.
    Stats(StatsArgs),
    /// Delete a collection and all its generations.
    Drop(DropArgs),
}

/// Arguments of `attune index build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The store (created if missing).
    #[command(flatten)]
    pub store: super::StoreArgs,
    /// Collection name (letters, digits, '_', '-', '.').
    #[arg(long)]
    pub collection: String,
    /// Corpus: JSONL ({"_id"|"id", "title"?, "text", "metadata"?} per line) or a BEIR directory.
    /// Without it, the collection's own documents are re-embedded (e.g. with a new model).
    #[arg(long, value_name = "PATH")]
    pub corpus: Option<PathBuf>,
    /// A vector space and the model directory that embeds it: NAME=MODEL_DIR (repeatable, e.g.
    /// --space base=models/all-MiniLM-L6-v2 --space tuned=out/tuned).
    #[arg(long = "space", value_name = "NAME=MODEL_DIR", required = true)]
    pub spaces: Vec<String>,
    /// What a user tunes (batch size, HNSW parameters, truncation length).
    #[command(flatten)]
    pub settings: IndexSettings,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `attune index search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The store.
    #[command(flatten)]
    pub store: super::StoreArgs,
    /// Collection name.
    #[arg(long)]
    pub collection: String,
    /// Space to search: a vector space (`base`, `tuned`, ...), `lexical` (BM25), or
    /// `hybrid:<space>` (lexical fused with that vector space).
    #[arg(long, default_value = "tuned")]
    pub space: String,
    /// How a hybrid space fuses: rrf (reciprocal rank fusion) or weighted (normalised scores).
    #[arg(long, default_value = "rrf", value_parser = parse_fusion_method)]
    pub fusion: FusionMethod,
    /// Rank constant of rrf.
    #[arg(long, default_value_t = Fusion::default().k, value_name = "K")]
    pub fusion_k: f32,
    /// Share of the vector space in weighted fusion (0 to 1).
    #[arg(long, default_value_t = Fusion::default().weight, value_name = "W")]
    pub fusion_weight: f32,
    /// The query text.
    #[arg(long)]
    pub query: String,
    /// Results wanted (1 to 1000).
    #[arg(short = 'k', long, default_value_t = 10)]
    pub k: usize,
    /// Metadata filter field=value (value read as JSON when it parses; a JSON list means "one
    /// of"). Repeatable; all must hold.
    #[arg(long = "filter", value_name = "FIELD=VALUE")]
    pub filters: Vec<String>,
    /// HNSW candidate list size (default: the collection's ef_search).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Model directory for the query (default: the one the space was built with). Its
    /// fingerprint must match the space's.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `attune index stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The store.
    #[command(flatten)]
    pub store: super::StoreArgs,
    /// Only this collection.
    #[arg(long)]
    pub collection: Option<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `attune index drop`.
#[derive(Debug, Args)]
pub struct DropArgs {
    /// The store.
    #[command(flatten)]
    pub store: super::StoreArgs,
    /// Collection to delete.
    #[arg(long)]
    pub collection: String,
}

/// Runs `attune index ...`.
pub fn run(command: IndexCommand) -> Result<()> {
    super::keep_freed_memory();
    match command {
        IndexCommand::Build(args) => build(args),
        IndexCommand::Search(args) => search(args),
        IndexCommand::Stats(args) => stats(args),
        IndexCommand::Drop(args) => drop_collection(args),
    }
}

fn parse_space(spec: &str) -> Result<SpaceModel> {
    match spec.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok(SpaceModel {
            space: name.to_string(),
            model: PathBuf::from(dir),
        }),
        _ => bail!("--space {spec:?}: expected NAME=MODEL_DIR, e.g. base=models/all-MiniLM-L6-v2"),
    }
}

/// Names the documents a replace build deleted (the first 20, then a count; `--json` has all).
fn print_removed(removed: &[String]) {
    const SHOWN: usize = 20;
    if removed.is_empty() {
        return;
    }
    let mut names: Vec<String> = removed
        .iter()
        .take(SHOWN)
        .map(|id| format!("{id:?}"))
        .collect();
    if removed.len() > SHOWN {
        names.push(format!(
            "and {} more (--json lists all)",
            removed.len() - SHOWN
        ));
    }
    println!("deleted (not in the corpus): {}", names.join(", "));
}

fn build(args: BuildArgs) -> Result<()> {
    let started = Instant::now();
    let inputs = IndexInputs {
        collection: args.collection.clone(),
        corpus: args.corpus.clone(),
        spaces: args
            .spaces
            .iter()
            .map(|spec| parse_space(spec))
            .collect::<Result<_>>()?,
        device: args.device.open()?,
    };
    let job = IndexJob::prepare(inputs, args.settings.clone())?;
    if let Some(corpus) = job.corpus() {
        report_corpus_findings(corpus);
    }
    let bar = super::progress_bar(None, "docs");
    bar.set_prefix("embedding");
    let mut progress = |event: BuildEvent| match event {
        BuildEvent::Planned {
            documents,
            to_embed,
            resumed,
            generation,
        } => {
            eprintln!(
                "attune: {} generation {generation} of {:?}: {documents} documents, {to_embed} to embed",
                if resumed { "resuming" } else { "building" },
                args.collection
            );
            bar.set_length(to_embed as u64);
            if to_embed < 1000 {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
        }
        BuildEvent::Embedded { done } => bar.set_position(done as u64),
        BuildEvent::Graph { space, points } => {
            bar.finish_and_clear();
            eprintln!("attune: building the HNSW graph of {space:?} ({points} points)");
        }
        BuildEvent::Lexical { documents } => {
            eprintln!("attune: building the lexical space ({documents} documents)");
        }
    };
    let store = args.store.open(true)?;
    let report = job.run(store.as_ref(), &mut progress)?;
    bar.finish_and_clear();
    warn_cleanup_errors(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let embedded: Vec<String> = report
            .embedded
            .iter()
            .map(|(space, n)| format!("{space} {n}"))
            .collect();
        println!(
            "collection {:?} generation {} ({} documents): added {}, updated {}, unchanged {}, kept {}, deleted {}, written during the build {}; embedded {}; {:.1} s (embedding {:.1} s, graphs {:.1} s, lexical {:.1} s)",
            report.collection,
            report.generation,
            report.documents,
            report.added,
            report.updated,
            report.unchanged,
            report.kept,
            report.deleted,
            report.replayed,
            embedded.join(", "),
            started.elapsed().as_secs_f64(),
            report.embed_seconds,
            report.graph_seconds,
            report.lexical_seconds,
        );
        print_removed(&report.removed);
    }
    Ok(())
}

/// Warns about clean-up after a switch that failed (shared with the pipeline's index stage).
pub(crate) fn warn_cleanup_errors(report: &BuildReport) {
    for error in &report.cleanup_errors {
        eprintln!(
            "attune: warning: generation {} of {:?} is served, but clean-up after the switch failed (the next build retries): {error}",
            report.generation, report.collection
        );
    }
}

/// Warns about duplicate ids and empty documents (shared with the pipeline's index stage).
pub(crate) fn report_corpus_findings(corpus: &Corpus) {
    if !corpus.duplicates.is_empty() {
        let examples: Vec<String> = corpus
            .duplicates
            .iter()
            .take(5)
            .map(|(id, lines)| {
                let lines: Vec<String> = lines.iter().map(usize::to_string).collect();
                format!("{id:?} (lines {})", lines.join(", "))
            })
            .collect();
        eprintln!(
            "attune: warning: {}: {} ids appear more than once; the last line of each wins: {}{}",
            corpus.path.display(),
            corpus.duplicates.len(),
            examples.join("; "),
            if corpus.duplicates.len() > 5 {
                "; ..."
            } else {
                ""
            }
        );
    }
    if !corpus.empty.is_empty() {
        let lines: Vec<String> = corpus.empty.iter().take(10).map(usize::to_string).collect();
        eprintln!(
            "attune: warning: {}: {} documents have an empty title and text (lines {}{}); they are indexed but match nothing well",
            corpus.path.display(),
            corpus.empty.len(),
            lines.join(", "),
            if corpus.empty.len() > 10 { ", ..." } else { "" }
        );
    }
}

fn search(args: SearchArgs) -> Result<()> {
    if !(1..=1000).contains(&args.k) {
        bail!("-k must be between 1 and 1000, got {}", args.k);
    }
    let filter = Filter::parse_clauses(&args.filters)?;
    let fusion = Fusion {
        method: args.fusion,
        k: args.fusion_k,
        weight: args.fusion_weight,
    };
    fusion.validate()?;
    let store = args.store.open(false)?;
    let collection = store.open_collection(&args.collection)?;
    let collection = collection.as_ref();
    let retrieval = Retrieval::parse(&args.space);
    retrieval.check(collection)?;
    let embedder = match retrieval.dense_space() {
        Some(space) => {
            let identity = &collection.spaces()[space];
            let model_path = args
                .model
                .clone()
                .unwrap_or_else(|| PathBuf::from(&identity.source));
            let embedder = ModelEmbedder::for_identity(&model_path, &args.device.open()?, identity)
                .with_context(|| format!("cannot load the query model {}", model_path.display()))?;
            Some(embedder)
        }
        None => None,
    };
    let started = Instant::now();
    let vector = match &embedder {
        Some(embedder) => Some(embedder.embed_query(&args.query)?),
        None => None,
    };
    let hits = retrieve(
        collection,
        &RetrievalRequest {
            retrieval: &retrieval,
            text: &args.query,
            dense: embedder
                .as_ref()
                .zip(vector.as_deref())
                .map(|(e, vector)| DenseQuery {
                    vector,
                    model: e.identity(),
                }),
            k: args.k,
            ef: args.ef,
            filter: &filter,
            fusion: &fusion,
        },
    )?;
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"results": hits, "space": args.space, "took_ms": took_ms,
                "generation": collection.generation()})
        );
    } else {
        for (rank, hit) in hits.iter().enumerate() {
            let title: String = hit.title.chars().take(80).collect();
            println!("{:>3}  {:.4}  {}  {}", rank + 1, hit.score, hit.id, title);
        }
        eprintln!(
            "attune: {} results from space {:?} of {:?} (generation {}) in {took_ms:.1} ms",
            hits.len(),
            args.space,
            args.collection,
            collection.generation()
        );
    }
    Ok(())
}

fn stats(args: StatsArgs) -> Result<()> {
    if args.store.settings(&Default::default()).backend != attune_index::StoreBackend::Embedded {
        return remote_stats(&args);
    }
    let Some(dir) = args.store.store.clone() else {
        bail!("--store DIR is required with the embedded backend");
    };
    let store = Store::open(&dir)?;
    let names = match &args.collection {
        Some(name) => vec![name.clone()],
        None => store.collection_names()?,
    };
    let mut all = Vec::new();
    for name in &names {
        let manifest = store.manifest(name)?;
        let disk = store.disk_bytes(name)?;
        let stats = match manifest.current {
            Some(_) => Some(store.open_collection(name)?.stats()?),
            None => None,
        };
        all.push(serde_json::json!({
            "name": name,
            "manifest": manifest,
            "stats": stats,
            "disk_bytes_all_generations": disk,
        }));
        if !args.json {
            match &stats {
                None => println!(
                    "{name}: no finished build yet (building generation {:?})",
                    manifest.building
                ),
                Some(s) => {
                    let per_doc = if s.documents > 0 {
                        s.disk_bytes as f64 / s.documents as f64
                    } else {
                        0.0
                    };
                    println!(
                        "{name}: generation {}, {} documents, {:.1} MiB on disk ({:.0} bytes per document; sled {:.1} MiB), all generations {:.1} MiB{}",
                        s.generation,
                        s.documents,
                        s.disk_bytes as f64 / 1048576.0,
                        per_doc,
                        s.database_bytes as f64 / 1048576.0,
                        disk as f64 / 1048576.0,
                        manifest
                            .building
                            .map(|b| format!(", generation {b} being built"))
                            .unwrap_or_default()
                    );
                    println!(
                        "  hnsw: m {}, ef_construction {}, ef_search {}",
                        s.hnsw.m, s.hnsw.ef_construction, s.hnsw.ef_search
                    );
                    for space in &s.spaces {
                        println!(
                            "  space {}: dim {}, model {} ({}), graph {} points, {} tombstones, {} outside the graph",
                            space.name,
                            space.model.dim,
                            space.model.fingerprint,
                            space.model.source,
                            space.graph_points,
                            space.tombstones,
                            space.delta
                        );
                    }
                    match &s.lexical {
                        Some(lexical) => println!(
                            "  lexical: BM25 over title, text{}; stemmer {}, lowercase {}, \
                             ascii folding {}",
                            lexical
                                .fields
                                .iter()
                                .map(|f| format!(", {f}"))
                                .collect::<String>(),
                            lexical.stemmer,
                            lexical.lowercase,
                            lexical.ascii_folding
                        ),
                        None => println!("  lexical: none (built without one; a build adds it)"),
                    }
                }
            }
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(all));
    } else if names.is_empty() {
        println!("no collections in {}", dir.display());
    }
    Ok(())
}

fn drop_collection(args: DropArgs) -> Result<()> {
    let store = args.store.open(false)?;
    // Unknown names are an error (with the list of collections), not a silent no-op.
    store.current_generation(&args.collection)?;
    store.drop_collection(&args.collection)?;
    println!("dropped collection {:?}", args.collection);
    Ok(())
}

/// `attune index stats` over a store that is not a directory (Qdrant): each collection's
/// generation, documents and spaces.
fn remote_stats(args: &StatsArgs) -> Result<()> {
    let store = args.store.open(false)?;
    let names = match &args.collection {
        Some(name) => vec![name.clone()],
        None => store.collection_names()?,
    };
    let mut all = Vec::new();
    for name in &names {
        let stats = match store.current_generation(name)? {
            Some(_) => Some(store.open_collection(name)?.stats()?),
            None => None,
        };
        if !args.json {
            match &stats {
                None => println!("{name}: no finished build yet"),
                Some(s) => {
                    println!(
                        "{name}: generation {}, {} documents",
                        s.generation, s.documents
                    );
                    for space in &s.spaces {
                        println!(
                            "  space {}: dim {}, model {} ({})",
                            space.name,
                            space.model.dim,
                            space.model.fingerprint,
                            space.model.source
                        );
                    }
                }
            }
        }
        all.push(serde_json::json!({"name": name, "stats": stats}));
    }
    if args.json {
        println!("{}", serde_json::Value::Array(all));
    } else if names.is_empty() {
        println!("no collections in {}", store.location());
    }
    Ok(())
}

/// Reads `rrf` or `weighted`.
pub(crate) fn parse_fusion_method(text: &str) -> Result<FusionMethod, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("{text:?}: use rrf or weighted"))
}
