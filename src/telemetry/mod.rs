//! Observation: logging, the daemon's run state ([`RunState`]), the API request counters
//! ([`ApiStats`]) and progress events ([`progress`]). The engine and the daemon record here; the
//! faces render (the CLI's progress bar, log lines, the health server's `/metrics` and `/status`).
//! Logs go to stderr: stdout belongs to command output (`changes` NDJSON, summaries, the
//! simulator's `listening on` line).

mod api_stats;
pub mod progress;
mod run_state;

pub use api_stats::ApiStats;
pub use run_state::{CycleOutcome, RunState, Snapshot};

use crate::config::{LogConfig, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; `RUST_LOG` sets levels (default `default_level`).
pub fn init_logging(config: &LogConfig, default_level: &str) {
    let format = config.format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    progress::allow_bars(format == LogFormat::Pretty && std::io::stderr().is_terminal());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
