//! `attune`: adapt sentence-embedding models to a domain and serve semantic search with them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// mimalloc instead of the system allocator: tensor buffers of 1–50 MB are allocated and freed
/// thousands of times per training step, and mimalloc can be told to keep freed memory (see
/// [`commands::keep_freed_memory`]) where glibc returns it to the kernel and pays for zeroed pages
/// again on the next allocation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// attune: adapt sentence-embedding models to a domain and serve semantic search with them.
#[derive(Parser)]
#[command(name = "attune", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts with a sentence-transformers model directory (JSONL out, one line per input).
    Embed(commands::embed::EmbedArgs),
    /// Evaluate retrieval on a BEIR dataset (tuned vs base, reports, promotion gate), or score a
    /// run file against qrels.
    Eval(Box<commands::eval::EvalArgs>),
    /// Fine-tune a model on query–document pairs (InfoNCE with in-batch and hard negatives)
    /// and write the tuned model directory.
    Train(Box<commands::train::TrainArgs>),
    /// Mine hard negatives for training pairs with a (base) model: high-ranked documents that
    /// are neither judged positives nor suspiciously close to them.
    Mine(Box<commands::mine::MineArgs>),
    /// Interpolate a tuned model's weights with its base (alpha 1: tuned, 0: base) to trade
    /// domain gain for general capability.
    Merge(Box<commands::merge::MergeArgs>),
    /// Learn from shoppers: export training pairs from the feedback log; simulate shoppers.
    #[command(subcommand)]
    Feedback(commands::feedback::FeedbackCommand),
    /// Inspect training data.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Vector index: build collections from a corpus (base and tuned spaces side by side),
    /// search them, inspect and drop them.
    #[command(subcommand)]
    Index(commands::index::IndexCommand),
    /// Serve a store over HTTP: search, compare, evaluate, visibility, document upserts,
    /// OpenAI-compatible embeddings, live A/B tests, health and metrics.
    Serve(Box<commands::serve::ServeArgs>),
    /// Run a whole pipeline from a TOML file: data check, (mining), training, evaluation with
    /// the gate, re-index into a new generation (only when the gate passed), report. Resumable.
    Pipeline(commands::pipeline::PipelineArgs),
    /// Write the demo data set: a generated shoe and apparel store (products with metadata,
    /// shopper queries, train and test judgments) in BEIR layout.
    DemoData(commands::demo::DemoArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ATTUNE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => commands::embed::run(args),
        Command::Eval(args) => commands::eval::run(*args),
        Command::Train(args) => commands::train::run(*args),
        Command::Data(command) => commands::data::run(command),
        Command::Feedback(command) => commands::feedback::run(command),
        Command::Mine(args) => commands::mine::run(*args),
        Command::Merge(args) => commands::merge::run(*args),
        Command::Index(command) => commands::index::run(command),
        Command::Serve(args) => commands::serve::run(*args),
        Command::Pipeline(args) => commands::pipeline::run(args),
        Command::DemoData(args) => commands::demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => match err.downcast_ref::<commands::GateFailed>() {
            Some(gate) => {
                eprintln!("attune: {gate}");
                ExitCode::from(commands::GateFailed::EXIT_CODE)
            }
            None => {
                eprintln!("attune: error: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}
