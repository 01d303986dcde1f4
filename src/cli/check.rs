//! `jobsync check`: configuration, database, API (and the webhook's secret when `webhook.url`
//! is set) — one line per check with what to fix; exit 0
//! only when all pass, 2 when the configuration is wrong (no token, both token settings, an
//! invalid key: the contract's exit-code table), 1 when only the database or the API failed.
//! For operators, init containers and CI.

use super::{CliError, CliResult, context};
use crate::config::{self, Overrides};
use crate::db::Db;

pub async fn run(overrides: &Overrides) -> CliResult {
    let config = match config::load(overrides) {
        Ok(config) => config,
        Err(e) => {
            outln!(
                "FAIL configuration: {}",
                crate::secret::scrub(&e.to_string())
            );
            return Err(CliError::usage("configuration check failed"));
        }
    };
    let mut failed = 0;
    // Still checks the database: one run tells everything there is to fix.
    let mut configuration_failed = false;
    let client = match context::check_client(&config) {
        Ok(client) => {
            outln!("ok   configuration");
            Some(client)
        }
        Err(e) => {
            outln!("FAIL configuration: {}", e.message);
            configuration_failed = true;
            None
        }
    };
    let url = config.database.url.clone();
    let shown = crate::db::redact(&url);
    let options = super::db_options(&config);
    let db =
        crate::db::blocking(move || Db::connect_with(&url, options).and_then(|db| db.ping())).await;
    match db {
        Ok(()) => outln!("ok   database {shown}"),
        Err(e) => {
            outln!("FAIL database: {e}");
            failed += 1;
        }
    }
    match client {
        Some(client) => match client.check().await {
            Ok(()) => outln!(
                "ok   api {} (token accepted)",
                crate::secret::api_url::redact(&config.api.base_url)
            ),
            Err(e) => {
                match e.unreachable_cause() {
                    Some(cause) => outln!(
                        "FAIL api: unreachable: {cause} (tried {}); check api.base_url and \
                         the network",
                        match config.api.max_attempts.min(context::CHECK_MAX_ATTEMPTS) {
                            1 => "once".to_string(),
                            n => format!("{n} times"),
                        }
                    ),
                    None => outln!("FAIL api: {e}"),
                }
                failed += 1;
            }
        },
        None => outln!("skip api: no usable token (see the configuration line above)"),
    }
    // The webhook's secret (no request is sent: a POST to the receiver would be a delivery).
    if !config.webhook.url.trim().is_empty() {
        match crate::webhook::check(&config.webhook) {
            Ok(()) => outln!(
                "ok   webhook {} (secret file readable; no request sent)",
                crate::secret::api_url::redact(&config.webhook.url)
            ),
            Err(e) => {
                outln!("FAIL webhook: {e}");
                configuration_failed = true;
            }
        }
    }
    if configuration_failed {
        Err(CliError::usage(
            "configuration check failed: fix the configuration line above",
        ))
    } else if failed == 0 {
        Ok(())
    } else {
        Err(CliError::failed(format!("{failed} check(s) failed")))
    }
}
