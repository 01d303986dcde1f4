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
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Installs the global subscriber once; `RUST_LOG` sets levels (default `default_level`).
pub fn init_logging(config: &LogConfig, default_level: &str) {
    let format = config.format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    progress::allow_bars(format == LogFormat::Pretty && std::io::stderr().is_terminal());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(log_filter(default_level));
    let _ = match format {
        LogFormat::Pretty => registry.with(layer.compact()).try_init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
    };
}

/// The levels `RUST_LOG` asks for — a default level and `target=level` pairs, comma-separated
/// (`warn,jobsync=debug`) — or `default_level` when it is unset, empty or unreadable. This is
/// `tracing-subscriber`'s `Targets` syntax: `EnvFilter`'s span and field directives are not
/// supported, and leaving them out spares the first build compiling a regex engine.
fn log_filter(default_level: &str) -> Targets {
    levels(std::env::var("RUST_LOG").ok().as_deref(), default_level)
}

fn levels(rust_log: Option<&str>, default_level: &str) -> Targets {
    rust_log
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| directives.parse().ok())
        .unwrap_or_else(|| default_level.parse().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::levels;
    use tracing::Level;

    #[test]
    fn rust_log_sets_a_default_level_and_levels_per_target() {
        let targets = levels(Some("warn,jobsync::sync=debug"), "info");
        assert!(targets.would_enable("jobsync::sync::pull", &Level::DEBUG));
        assert!(!targets.would_enable("jobsync::db", &Level::INFO));
        assert!(targets.would_enable("hyper", &Level::WARN));
    }

    #[test]
    fn unset_empty_or_unreadable_rust_log_means_the_default_level() {
        for rust_log in [None, Some(""), Some("  "), Some("jobsync=loud")] {
            let targets = levels(rust_log, "info");
            assert!(
                targets.would_enable("jobsync", &Level::INFO),
                "{rust_log:?}"
            );
            assert!(
                !targets.would_enable("jobsync", &Level::DEBUG),
                "{rust_log:?}"
            );
        }
    }
}
