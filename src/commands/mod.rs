//! One module per subcommand; each exposes its clap `Args` and a `run` function.

pub mod data;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod feedback;
pub mod index;
pub mod merge;
pub mod mine;
pub mod pipeline;
pub mod serve;
pub mod train;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr counting `unit`s (hidden for fewer than 1,000, where it would only
/// flicker); `None` is an unknown total.
pub fn progress_bar(total: Option<u64>, unit: &str) -> ProgressBar {
    let bar = match total {
        Some(n) if n < 1000 => ProgressBar::hidden(),
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{prefix}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}"
        ))
        .expect("valid template"),
    );
    bar
}

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps memory freed by this process for reuse instead of returning it to the kernel (batch
/// commands: train, pipeline, embed, eval, index, mine; not the long-running server).
///
/// A training step frees and reallocates gigabytes of activations and gradients. Returned to the
/// kernel, every reuse faults in freshly zeroed pages: in a profile of `attune train` that was
/// 28% of the CPU time and 2.9 million page faults for 3 steps (6,000 with this setting).
/// Encoding is alike at base-model sizes: `attune embed` with all-mpnet-base-v2 spent 18% of its
/// time zeroing pages, and ran 15% faster with this setting. Peak memory is unchanged; the
/// process just does not shrink until it exits.
pub fn keep_freed_memory() {
    // SAFETY: sets one allocator option to a documented value (-1 = never purge); options may be
    // changed at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// A gate that did not pass: `main` exits with [`GateFailed::EXIT_CODE`] and the message.
#[derive(Debug)]
pub struct GateFailed(pub String);

impl GateFailed {
    /// Exit status of a failed gate (1 is any other error, 2 a command-line error).
    pub const EXIT_CODE: u8 = 3;
}

impl std::fmt::Display for GateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GateFailed {}

/// Where a command finds the collections: the embedded store's directory, or another backend.
/// Each flag also reads the environment variable named in its help.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Store directory of the embedded backend.
    #[arg(long, value_name = "DIR", env = "ATTUNE_STORE")]
    pub store: Option<std::path::PathBuf>,
    /// Where collections live: embedded (hnsw_rs + sled in --store) or qdrant (the Qdrant at
    /// --qdrant-url) [default: embedded, or the settings file's `[store] backend`].
    #[arg(long, value_name = "BACKEND", env = "ATTUNE_BACKEND")]
    pub backend: Option<attune_index::StoreBackend>,
    /// Qdrant's REST URL, for --backend qdrant [default: http://127.0.0.1:6333, or the
    /// settings file's `[store.qdrant] url`].
    #[arg(long, value_name = "URL", env = "ATTUNE_QDRANT_URL")]
    pub qdrant_url: Option<String>,
    /// Shards of each new generation's Qdrant collection [default: 1, or `[store.qdrant]
    /// shard_number`].
    #[arg(long, value_name = "N", env = "ATTUNE_QDRANT_SHARDS")]
    pub qdrant_shards: Option<u32>,
    /// Copies of each shard on a Qdrant cluster [default: 1, or `[store.qdrant]
    /// replication_factor`]; 2 or more survive the loss of a node.
    #[arg(long, value_name = "N", env = "ATTUNE_QDRANT_REPLICATION")]
    pub qdrant_replication: Option<u32>,
}

impl StoreArgs {
    /// `base` (a settings file's `[store]`) with the flags applied over it.
    pub fn settings(&self, base: &attune_index::StoreSettings) -> attune_index::StoreSettings {
        let mut settings = base.clone();
        if let Some(backend) = self.backend {
            settings.backend = backend;
        }
        if let Some(url) = &self.qdrant_url {
            settings.qdrant.url = url.trim_end_matches('/').to_string();
        }
        if let Some(shards) = self.qdrant_shards {
            settings.qdrant.shard_number = shards;
        }
        if let Some(copies) = self.qdrant_replication {
            settings.qdrant.replication_factor = copies;
        }
        settings
    }

    /// Opens the store the flags name (creating an embedded one when `create`).
    pub fn open(
        &self,
        create: bool,
    ) -> anyhow::Result<std::sync::Arc<dyn attune_index::VectorStore>> {
        let settings = self.settings(&attune_index::StoreSettings::default());
        Ok(settings.open(self.store.as_deref(), create)?)
    }

    /// The store for messages: its directory or its URL.
    pub fn describe(&self, settings: &attune_index::StoreSettings) -> String {
        match settings.backend {
            attune_index::StoreBackend::Qdrant => format!("qdrant {}", settings.qdrant.url),
            attune_index::StoreBackend::Embedded => self
                .store
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(no --store)".into()),
        }
    }
}
