//! One module per subcommand; each exposes its clap `Args` and a `run` function.

pub mod data;
pub mod embed;
pub mod eval;
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
