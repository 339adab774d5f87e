//! `attune serve`: the HTTP API over a store. Settings are layered: defaults, then the TOML file
//! given by `--config`, then `ATTUNE_*` environment variables, then flags.

use std::path::PathBuf;

use anyhow::{Context, Result};
use attune_api::{serve, AppState, ServeSettings};
use clap::Args;

/// Arguments of `attune serve`. Each flag also reads the environment variable named in its help;
/// a flag or variable overrides the settings file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The store (built by `attune index build`).
    #[command(flatten)]
    pub store: super::StoreArgs,
    /// Settings file (TOML; keys as in `ServeSettings`, e.g. `bind`, `api_key`,
    /// `[inference] dynamic_batching`, `[ab] treatment_share`, `[models] tuned = "DIR"`).
    #[arg(long, value_name = "FILE", env = "ATTUNE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR", env = "ATTUNE_BIND")]
    pub bind: Option<String>,
    /// API key required for writes (and reads with --require-key-for-reads).
    #[arg(long, env = "ATTUNE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Require the API key for reads too.
    #[arg(long, env = "ATTUNE_REQUIRE_KEY_FOR_READS")]
    pub require_key_for_reads: bool,
    /// actix worker threads [default: 2].
    #[arg(long, env = "ATTUNE_WORKERS")]
    pub workers: Option<usize>,
    /// Turn dynamic batching of query embeddings off or on [default: on].
    #[arg(long, value_name = "BOOL", env = "ATTUNE_DYNAMIC_BATCHING")]
    pub dynamic_batching: Option<bool>,
    /// Queries are truncated to this many tokens [default: 128].
    #[arg(long, value_name = "N", env = "ATTUNE_MAX_QUERY_TOKENS")]
    pub max_query_tokens: Option<usize>,
    /// Device for the models: auto, cpu, cuda, cuda:N [default: auto].
    #[arg(long, env = "ATTUNE_DEVICE")]
    pub device: Option<String>,
}

impl ServeArgs {
    /// The settings: file, then environment and flags (clap reads both).
    pub fn settings(&self) -> Result<ServeSettings> {
        let mut settings = match &self.config {
            Some(path) => ServeSettings::from_file(path)?,
            None => ServeSettings::default(),
        };
        if let Some(bind) = &self.bind {
            settings.bind = bind.clone();
        }
        if let Some(key) = &self.api_key {
            settings.api_key = Some(key.clone());
        }
        if self.require_key_for_reads {
            settings.require_key_for_reads = true;
        }
        if let Some(workers) = self.workers {
            settings.workers = workers;
        }
        if let Some(on) = self.dynamic_batching {
            settings.inference.dynamic_batching = on;
        }
        if let Some(tokens) = self.max_query_tokens {
            settings.max_query_tokens = tokens;
        }
        if let Some(device) = &self.device {
            settings.device = device.clone();
        }
        settings.store = self.store.settings(&settings.store);
        settings.validate()?;
        Ok(settings)
    }
}

/// Runs `attune serve` until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    let settings = args.settings()?;
    let location = args.store.describe(&settings.store);
    let state = AppState::connect(args.store.store.as_deref(), settings)
        .with_context(|| format!("cannot serve store {location}"))?;
    for (name, problem) in state.problems() {
        tracing::warn!("collection {name:?} is not served: {problem}");
        eprintln!("attune: warning: collection {name:?} is not served: {problem}");
    }
    eprintln!(
        "attune: serving {} collection(s) from {} on http://{} (press Ctrl-C to stop)",
        state.collection_names().len(),
        location,
        state.settings.bind
    );
    actix_web::rt::System::new().block_on(serve(state))?;
    Ok(())
}
