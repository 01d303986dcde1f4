//! Observation: logging, the daemon's run state ([`RunState`]), the API request counters
//! ([`ApiStats`]) and progress events ([`progress`]). The engine and the daemon record here; the
//! faces render (the CLI's progress bar, log lines, the health server's `/metrics` and `/status`).
//! Logs go to stderr: stdout belongs to command output (`changes` NDJSON, summaries, the
//! simulator's `listening on` line).

mod api_stats;
mod counters;
mod heartbeat;
pub mod progress;
mod run_state;
pub mod traces;

pub use api_stats::ApiStats;
pub use counters::{count_nul_replaced_job, nul_replaced_jobs};
pub use heartbeat::Heartbeat;
pub use run_state::{CycleOutcome, RunState, Snapshot, WebhookSnapshot};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};
use std::io::{IsTerminal, Write};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// Installs the global subscriber once; `RUST_LOG` sets levels (default `default_level`). With
/// `telemetry.otlp_endpoint` set, spans are exported too (see [`traces`]): keep the returned
/// guard until the command ends, so the last spans are flushed. A failure to set up the export
/// is a warning, never a reason not to sync.
pub fn init_logging(
    config: &LogConfig,
    telemetry: &TelemetryConfig,
    default_level: &str,
) -> Option<traces::TraceGuard> {
    let format = config.format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    progress::allow_bars(format == LogFormat::Pretty && std::io::stderr().is_terminal());
    let endpoint = telemetry.otlp_endpoint.trim();
    let (otel, guard, otel_error) = if endpoint.is_empty() {
        (None, None, None)
    } else {
        match traces::provider(endpoint) {
            Ok((provider, guard)) => (Some(traces::layer(&provider)), Some(guard), None),
            Err(e) => (None, None, Some(e)),
        }
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(Scrubbed(std::io::stderr));
    let registry = tracing_subscriber::registry()
        .with(otel)
        .with(log_filter(default_level));
    let _ = match format {
        LogFormat::Pretty => registry.with(layer.compact()).try_init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
    };
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "traces are not exported: the OTLP exporter could not be set up");
    }
    guard
}

/// Where log lines are written: every formatted line, whatever its format and whoever logged it
/// (jobsync, reqwest, hyper, a field recorded with `?`), has each registered secret masked
/// ([`crate::secret::mask_known`]) before it reaches the inner writer. Call sites still scrub
/// what they log; this is the net under them, so one that forgets cannot leak.
pub struct Scrubbed<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Scrubbed<M> {
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter(self.0.make_writer())
    }
}

/// One log line's writer (see [`Scrubbed`]). The formatter hands each whole line to one
/// `write_all`, so a secret never straddles two calls; a partial write of a line that holds no
/// secret leaves a remainder that holds none either.
pub struct ScrubbingWriter<W>(W);

impl<W: Write> Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        match crate::secret::mask_known(&text) {
            None => self.0.write(buf),
            Some(masked) => {
                self.0.write_all(masked.as_bytes())?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
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
        .unwrap_or_else(|| {
            // The scheduler's own lines (each job added, each tick) are chatter at INFO: only
            // its warnings by default; `RUST_LOG=tokio_cron_scheduler=debug` shows them.
            format!("{default_level},tokio_cron_scheduler=warn")
                .parse()
                .unwrap_or_default()
        })
}

#[cfg(test)]
mod tests {
    use super::{Scrubbed, levels};
    use std::sync::{Arc, Mutex};
    use tracing::Level;
    use tracing_subscriber::prelude::*;

    /// Log lines captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the fmt layer writes through [`Scrubbed`] for two events, in the plain or JSON
    /// format.
    fn logged(json: bool) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(Scrubbed(move || sink.clone()));
        let events = || {
            let url = "http://u:sink-token-4711@h/?k=sink-token-4711";
            tracing::warn!(url, debugged = ?url, "token sink-token-4711 in the message");
            tracing::info!("nothing secret here");
        };
        if json {
            let subscriber = tracing_subscriber::registry().with(layer.json().flatten_event(true));
            tracing::subscriber::with_default(subscriber, events);
        } else {
            let subscriber = tracing_subscriber::registry().with(layer.compact());
            tracing::subscriber::with_default(subscriber, events);
        }
        let text = captured.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn the_sink_masks_registered_secrets_in_both_formats() {
        crate::secret::register("sink-token-4711");
        for json in [false, true] {
            let text = logged(json);
            assert!(!text.contains("sink-token-4711"), "json {json}: {text}");
            assert!(
                text.contains("token *** in the message"),
                "json {json}: {text}"
            );
            assert!(text.contains("nothing secret here"), "json {json}: {text}");
        }
    }

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
