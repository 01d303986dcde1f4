//! `jobsync run`: the daemon.

use super::{CliError, CliResult, context};
use crate::config::Config;
use crate::daemon::{self, DaemonSettings};
use crate::sync::StopFlag;

pub async fn run(config: &Config) -> CliResult {
    let engine = context::engine(config, "run", StopFlag::new()).await?;
    let settings = DaemonSettings {
        schedule: config.sync.schedule.clone(),
        retention: config.retention.clone(),
        listen: config.server.listen.clone(),
        max_staleness_secs: config.sync.max_staleness_secs,
        stall_secs: config.sync.stall_secs,
        drain: config.server.drain_deadline(),
    };
    daemon::run(engine, settings, super::shutdown_signal())
        .await
        .map_err(|e| CliError::failed(e.to_string()))
}
