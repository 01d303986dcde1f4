//! `jobsync --once`: exactly one cycle, a short summary, and the contract's exit code.

use super::progress::TerminalProgress;
use super::{CliError, CliResult, context};
use crate::config::Config;
use crate::shutdown::StopFlag;
use crate::sync::cycle::{CycleError, CycleSummary, Trigger, stop_within};

pub async fn run(config: &Config) -> CliResult {
    let engine = super::unless_stopped(
        "while connecting and migrating",
        context::engine(config, "--once", StopFlag::new()),
    )
    .await?;
    // SIGINT/SIGTERM: no new request leaves, those in flight get until the drain deadline, and
    // the run is still recorded; nothing outlasts the grace.
    let drain = config.server.drain_deadline();
    let grace = std::time::Duration::from_secs(config.server.shutdown_grace_secs);
    let stopping = engine.clone();
    tokio::spawn(async move {
        crate::cli::shutdown_signal().await;
        tracing::info!(
            drain_secs = drain.as_secs(),
            "stopping: no new request leaves; requests in flight get until the deadline"
        );
        stop_within(&stopping, drain, grace);
    });
    // A backfill's listings draw bars on a terminal with human logs (log lines otherwise).
    let progress = TerminalProgress::default();
    let summary = engine
        .cycle(Trigger::Once)
        .progress(&progress)
        .run()
        .await
        .map_err(|e| match e {
            CycleError::Busy(msg) => CliError::failed(msg),
            CycleError::Db(e) => CliError::from(e),
        })?;
    outln!("{}", describe(&summary));
    match summary.error {
        None => Ok(()),
        // A deliberate stop: the run is recorded with what it did, and the process exits 0.
        Some(_) if summary.stopped => Ok(()),
        Some(error) => Err(CliError::failed(format!(
            "run #{} failed: {error}",
            summary.run_id
        ))),
    }
}

/// One human line per cycle.
pub fn describe(s: &CycleSummary) -> String {
    let status = if s.ok { "ok" } else { "failed" };
    let mut line = format!(
        "run #{} {status} ({}): pulled {} jobs, {} changes",
        s.run_id, s.mode, s.pull.jobs_pulled, s.pull.jobs_changed
    );
    if s.pull.marked_deleted > 0 {
        line += &format!(" ({} deleted upstream)", s.pull.marked_deleted);
    }
    if !s.pull.campaigns_listed.is_empty() {
        let listed: Vec<String> = s.pull.campaigns_listed.iter().map(i64::to_string).collect();
        line += &format!("; listed in full: campaigns {}", listed.join(", "));
    }
    line += &format!(
        "; pushed {} ok, {} failed, {} superseded, {} waiting for retry; {} API calls in {:.1}s",
        s.push.ok,
        s.push.failed,
        s.push.superseded,
        s.push.deferred,
        s.api_calls,
        s.duration.as_secs_f64()
    );
    line
}
