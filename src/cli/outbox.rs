//! `jobsync outbox list|retry`. (Being built: see issue 5.)

use super::{CliResult, OutboxCommand, not_implemented};
use crate::config::Config;

pub async fn run(_config: &Config, _cmd: OutboxCommand) -> CliResult {
    not_implemented("outbox")
}
