//! `jobsync run`: the daemon, and the health server alongside it. This face owns both: the
//! daemon records its cycles in a [`RunState`], the server reads it; neither imports the other.

use super::{CliError, CliResult, context};
use crate::config::Config;
use crate::daemon::{self, DaemonSettings};
use crate::server::{self, ServerContext};
use crate::shutdown::StopFlag;
use crate::telemetry::RunState;
use std::sync::Arc;

pub async fn run(config: &Config) -> CliResult {
    // A sink that could not sign is refused before anything starts, naming the file.
    if !config.webhook.url.trim().is_empty() {
        crate::webhook::check(&config.webhook).map_err(CliError::usage)?;
    }
    let engine = super::unless_stopped(
        "while connecting and migrating",
        context::engine(config, "run", StopFlag::new()),
    )
    .await?;
    let settings = DaemonSettings {
        schedule: config.sync.schedule.clone(),
        retention: config.retention.clone(),
        drain: config.server.drain_deadline(),
        grace: std::time::Duration::from_secs(config.server.shutdown_grace_secs),
        verify_schedule: config.verify.schedule.clone(),
        verify: crate::verify::Options {
            stuck_after_cycles: config.push.max_row_attempts,
            ..crate::verify::Options::default()
        },
    };
    let run_state = Arc::new(RunState::default());
    let (db, api) = (engine.db.clone(), engine.client.clone());
    let daemon = daemon::start(engine, settings, run_state.clone())
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    // The webhook sink: a task of its own beside the cycles, never in their way.
    let sink_stop = tokio_util::sync::CancellationToken::new();
    let sink = if config.webhook.url.trim().is_empty() {
        None
    } else {
        Some(
            crate::webhook::start(&db, &config.webhook, run_state.clone(), sink_stop.clone())
                .map_err(CliError::usage)?,
        )
    };
    // The server starts after the scheduler, so its first answer to /healthz is already true.
    let listen = &config.server.listen;
    let server = if listen.is_empty() {
        None
    } else {
        let context = ServerContext {
            db,
            run: run_state.clone(),
            api,
            max_staleness_secs: config.sync.max_staleness_secs,
            stall_secs: config.sync.stall_secs,
        };
        Some(server::start(listen, context).await.map_err(|reason| {
            CliError::failed(format!(
                "cannot serve health and metrics on {listen}: {reason}; change server.listen, or set it to \"\" to disable the server"
            ))
        })?)
    };
    let signal = async {
        super::shutdown_signal().await;
        // A POST in flight is abandoned: its batch is delivered again, same id, at the next start.
        sink_stop.cancel();
    };
    daemon.run(listen, signal).await;
    if let Some(sink) = sink {
        let _ = sink.await;
    }
    if let Some(server) = server {
        server.stop().await;
    }
    // Under the daemon's target, as before this face started the server: log filters such as
    // `RUST_LOG=jobsync::daemon=info` still show it.
    tracing::info!(target: "jobsync::daemon", "jobsync daemon stopped");
    Ok(())
}
