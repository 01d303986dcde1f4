//! Checks that cannot be expressed in types: ranges, URLs, the cron schedule, the listen address.
//! Each failure names the key (the caller adds its value and source) and says what would be valid.

use super::types::{Config, DatabaseUrl};
use std::net::SocketAddr;
use std::str::FromStr;

type Failure = (&'static str, String);

pub(super) fn validate(c: &Config) -> Result<(), Failure> {
    check_api(c)?;
    let parsed = DatabaseUrl::parse(&c.database.url).map_err(|r| ("database.url", r))?;
    let schema = &c.database.schema;
    let plain = schema.len() <= 63
        && schema.starts_with(|ch: char| ch.is_ascii_lowercase() || ch == '_')
        && schema
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
    if !plain {
        return Err((
            "database.schema",
            "must be a plain PostgreSQL name: lower-case letters, digits and `_`, not starting \
             with a digit, at most 63 characters (e.g. `jobsync`)"
                .into(),
        ));
    }
    if schema != "public" {
        if matches!(parsed, DatabaseUrl::Sqlite(_)) {
            return Err((
                "database.schema",
                "applies to PostgreSQL only: a SQLite database file is jobsync's alone; remove \
                 the setting or use a postgres:// URL"
                    .into(),
            ));
        }
        if c.database.url.contains("search_path") {
            return Err((
                "database.schema",
                "the database URL already sets a search_path (`options=-csearch_path…`): set the \
                 schema in one place, preferably database.schema"
                    .into(),
            ));
        }
    }
    check_schedule("sync.schedule", &c.sync.schedule)?;
    if !c.verify.schedule.trim().is_empty() {
        check_schedule("verify.schedule", &c.verify.schedule)?;
    }
    if let Some(bad) = c.sync.campaigns.iter().find(|&&n| n <= 0) {
        return Err((
            "sync.campaigns",
            format!("campaign ids are positive integers, {bad} is not"),
        ));
    }
    at_least(
        "sync.full_resync_after_hours",
        c.sync.full_resync_after_hours,
        1,
    )?;
    at_least("sync.max_staleness_secs", c.sync.max_staleness_secs, 1)?;
    // Below the API timeout, one slow but healthy request would count as a stall, and a listing
    // could be cut off before its first job may arrive.
    above_api_timeout(
        "sync.stall_secs",
        c.sync.stall_secs,
        c.api.timeout_secs,
        "a request may take that long and still be progress",
    )?;
    above_api_timeout(
        "sync.listing_deadline_secs",
        c.sync.listing_deadline_secs,
        c.api.timeout_secs,
        "a listing's first job may take that long",
    )?;
    if c.sync.overlap_secs > 24 * 3600 {
        return Err((
            "sync.overlap_secs",
            "must be at most 86400 (one day); the API only accepts `modified_since` within 48 hours".into(),
        ));
    }
    // The push compares it with a row's `attempts`, an `i32` column: beyond that a value wraps
    // negative and every row would give up at once. A thousand cycles is already weeks.
    if !(1..=1000).contains(&c.push.max_row_attempts) {
        return Err((
            "push.max_row_attempts",
            "must be between 1 and 1000 (cycles in which a row's request failed retryably before the row becomes `failed`)".into(),
        ));
    }
    if c.push.settle_secs > 86_400 {
        return Err((
            "push.settle_secs",
            "must be between 0 and 86400 (seconds after a create's first send before a lookup that does not find it lets it be sent again)".into(),
        ));
    }
    if !(1000..=1_000_000).contains(&c.push.window_rows) {
        return Err((
            "push.window_rows",
            "must be between 1000 and 1000000 (outbox rows a push reads and plans at once)".into(),
        ));
    }
    at_least("retention.changes_days", c.retention.changes_days.into(), 1)?;
    at_least("retention.outbox_days", c.retention.outbox_days.into(), 1)?;
    at_least("retention.runs_days", c.retention.runs_days.into(), 1)?;
    at_least(
        "retention.deleted_jobs_days",
        c.retention.deleted_jobs_days.into(),
        1,
    )?;
    if !c.server.listen.is_empty() && SocketAddr::from_str(&c.server.listen).is_err() {
        return Err((
            "server.listen",
            "expected an address such as 0.0.0.0:9090, or \"\" to disable the server".into(),
        ));
    }
    Ok(())
}

fn check_api(c: &Config) -> Result<(), Failure> {
    let url = reqwest::Url::parse(&c.api.base_url).map_err(|e| {
        (
            "api.base_url",
            format!("not a URL ({e}); write e.g. https://api.example.com"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err((
            "api.base_url",
            "must be an http:// or https:// URL with a host".into(),
        ));
    }
    at_least("api.timeout_secs", c.api.timeout_secs, 1)?;
    at_least("api.max_attempts", c.api.max_attempts.into(), 1)?;
    at_least("api.concurrency", c.api.concurrency as u64, 1)?;
    at_least("api.max_date_skew_secs", c.api.max_date_skew_secs, 60)?;
    let otlp = c.telemetry.otlp_endpoint.trim();
    if !otlp.is_empty() {
        let ok = reqwest::Url::parse(otlp)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err((
                "telemetry.otlp_endpoint",
                "must be the collector's OTLP/HTTP URL, e.g. http://otel-collector:4318 (spans go \
                 to its /v1/traces), or empty to export no traces"
                    .into(),
            ));
        }
    }
    check_webhook(&c.webhook)?;
    let ratio = c.sync.mass_delete_ratio;
    if !(ratio.is_finite() && ratio > 0.0 && ratio <= 1.0) {
        return Err((
            "sync.mass_delete_ratio",
            "must be a number greater than 0 and at most 1 (the share of a campaign's live jobs \
             one listing may mark deleted before a second listing must agree; 1 holds only \
             listings of no jobs)"
                .into(),
        ));
    }
    if !(1..=1000).contains(&c.api.bulk_size) {
        return Err((
            "api.bulk_size",
            "must be between 1 and 1000 (the API takes at most 1000 items per bulk call)".into(),
        ));
    }
    let rps = c.api.requests_per_second;
    if !(rps.is_finite() && rps > 0.0) {
        return Err((
            "api.requests_per_second",
            "must be a number greater than 0".into(),
        ));
    }
    Ok(())
}

/// The schedule as tokio-cron-scheduler will read it: croner, with a seconds field, in UTC.
fn check_schedule(key: &'static str, expr: &str) -> Result<(), Failure> {
    let fields = expr.split_whitespace().count();
    if fields < 6 {
        return Err((
            key,
            format!(
                "a cron expression needs 6 fields (sec min hour day month weekday), this one has {fields}; e.g. \"0 */5 * * * *\" for every 5 minutes"
            ),
        ));
    }
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .map_err(|e| (key, format!("not a valid cron expression: {e}")))?;
    // croner searches up to the year 5000: an expression it finds no time for never fires, and
    // the scheduler would take it and wait for ever.
    if cron
        .find_next_occurrence(&chrono::Utc::now(), false)
        .is_err()
    {
        let what = match key {
            "verify.schedule" => "no verify would ever run",
            _ => "the daemon would never sync",
        };
        return Err((
            key,
            format!(
                "never fires (no time from now on matches it: a day its months do not have, such \
                 as 30 February or 31 April, or a year that has passed); {what}: name days that \
                 exist, e.g. \"0 0 3 28 2 *\" for 28 February at 03:00 UTC"
            ),
        ));
    }
    Ok(())
}

/// `value` must exceed `api.timeout_secs` (`timeout`), for the reason `why`.
fn above_api_timeout(
    key: &'static str,
    value: u64,
    timeout: u64,
    why: &str,
) -> Result<(), Failure> {
    if value <= timeout {
        return Err((
            key,
            format!("must be greater than api.timeout_secs ({timeout}): {why}"),
        ));
    }
    Ok(())
}

fn at_least(key: &'static str, value: u64, min: u64) -> Result<(), Failure> {
    if value < min {
        Err((key, format!("must be at least {min}")))
    } else {
        Ok(())
    }
}

/// `webhook.*`: a URL the sink can POST to, and a secret file when it is set.
fn check_webhook(w: &super::types::WebhookConfig) -> Result<(), Failure> {
    let url = w.url.trim();
    if url.is_empty() {
        return Ok(());
    }
    let ok = reqwest::Url::parse(url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !ok {
        return Err((
            "webhook.url",
            "must be the receiver's http:// or https:// URL, e.g. https://crm.example.com/hooks/jobsync, or empty for no webhook".into(),
        ));
    }
    if w.secret_file.is_none() {
        return Err((
            "webhook.url",
            "is set but webhook.secret_file is not: every delivery is signed; write the \
             receiver's `whsec_…` secret into a file and set webhook.secret_file to its path"
                .into(),
        ));
    }
    if !(1..=10_000).contains(&w.batch_size) {
        return Err((
            "webhook.batch_size",
            "must be from 1 to 10000 changefeed rows per POST".into(),
        ));
    }
    at_least("webhook.timeout_secs", w.timeout_secs, 1)?;
    at_least("webhook.max_attempts", w.max_attempts.into(), 1)?;
    at_least("webhook.pause_secs", w.pause_secs, 1)?;
    Ok(())
}
