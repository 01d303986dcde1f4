//! `jobsync import`: append CRM changes to the outbox. (Being built: see issue 5.)

use super::{CliResult, ImportArgs, not_implemented};
use crate::config::Config;

pub async fn run(_config: &Config, _args: ImportArgs) -> CliResult {
    not_implemented("import")
}
