//! Builds the engine's parts from the configuration: the API client and the sync engine.

use super::{CliError, open_db};
use crate::api::{ApiClient, ClientOptions, TokenSource};
use crate::config::Config;
use crate::shutdown::StopFlag;
use crate::sync::cycle::Engine;
use std::time::Duration;

/// `jobsync check` answers in seconds, not after a cycle's patience: an API that is down
/// fails the check after this many tries of at most [`CHECK_TIMEOUT`] each.
pub const CHECK_MAX_ATTEMPTS: u32 = 2;
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The API client for `jobsync check`: `api.*`, with at most [`CHECK_MAX_ATTEMPTS`] tries of
/// at most [`CHECK_TIMEOUT`].
pub fn check_client(config: &Config) -> Result<ApiClient, CliError> {
    build_client(config, "check", StopFlag::new(), |options| {
        options.max_attempts = options.max_attempts.min(CHECK_MAX_ATTEMPTS);
        options.timeout = options.timeout.min(CHECK_TIMEOUT);
    })
}

/// The API client as `api.*` configures it (validated at load), its retries and requests
/// ended by `stop`.
fn api_client_stopped_by(
    config: &Config,
    command: &str,
    stop: StopFlag,
) -> Result<ApiClient, CliError> {
    build_client(config, command, stop, |_| {})
}

fn build_client(
    config: &Config,
    command: &str,
    stop: StopFlag,
    adjust: impl FnOnce(&mut ClientOptions),
) -> Result<ApiClient, CliError> {
    config.require_token(command)?;
    let api = &config.api;
    let base_url = api
        .base_url
        .parse()
        .map_err(|e| CliError::usage(format!("api.base_url: {e}")))?;
    let token = match (&api.token, &api.token_file) {
        (Some(token), _) => TokenSource::Static(token.clone()),
        (None, Some(path)) => TokenSource::File(path.clone()),
        (None, None) => unreachable!("require_token checked a token is configured"),
    };
    let mut options = ClientOptions::new(base_url, token);
    options.timeout = Duration::from_secs(api.timeout_secs);
    options.max_attempts = api.max_attempts;
    options.requests_per_second = api.requests_per_second;
    options.concurrency = api.concurrency;
    options.bulk_size = api.bulk_size;
    options.max_date_skew = Duration::from_secs(api.max_date_skew_secs);
    options.listing_deadline = Duration::from_secs(config.sync.listing_deadline_secs);
    options.stop = stop;
    adjust(&mut options);
    ApiClient::new(options).map_err(|e| CliError::usage(e.to_string()))
}

/// The database (migrated) and the client, ready to run cycles.
pub async fn engine(config: &Config, command: &str, stop: StopFlag) -> Result<Engine, CliError> {
    let client = api_client_stopped_by(config, command, stop.clone())?;
    let db = open_db(config).await?;
    Ok(Engine {
        db,
        client,
        sync: config.sync.clone(),
        push: config.push.clone(),
        stop,
    })
}
