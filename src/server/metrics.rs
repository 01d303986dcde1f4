//! `/metrics` in the OpenMetrics text format (which Prometheus reads), encoded by
//! `prometheus-client`: counters from the daemon's run state and the client's request
//! statistics, histograms of request and cycle durations, `process_*` series, and gauges read
//! from the database at scrape time — those are left out, and `jobsync_database_up` is 0, when the
//! database does not answer: the rest is always served.

use super::ServerContext;
use crate::db::DbError;
use crate::db::repo::{outbox, state};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use std::sync::atomic::AtomicU64;

/// The longest a scrape waits for the database's series.
const DATABASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub(super) async fn handler(State(ctx): State<ServerContext>) -> Response {
    // The database's series are left out when it does not answer; the process's own are served
    // whatever happens, with `jobsync_database_up 0`, so that alerts on them can still fire.
    let from_db = ctx.db.run(|c| {
        Ok::<_, DbError>((
            outbox::counts(c)?,
            outbox::oldest_pending(c)?,
            state::get_time(c, state::LAST_PULL_OK)?,
            (
                state::refused_campaigns(c)?.len(),
                state::held_deletes(c)?.len(),
                crate::db::repo::quarantine::count(c)?,
            ),
            crate::db::repo::consumers::all_with_lag(c)?,
        ))
    });
    // Bounded well within a scrape's timeout (Prometheus: 10 s): a database that hangs rather
    // than refuses reads as down too, and the rest is still served.
    let from_db = match tokio::time::timeout(DATABASE_WAIT, from_db).await {
        Ok(read) => read.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {}s", DATABASE_WAIT.as_secs_f64())),
    };
    let mut out = Exposition::default();
    out.gauge(
        "jobsync_build_info",
        "Always 1; the version of this build in the label.",
        [(vec![("version", env!("CARGO_PKG_VERSION"))], 1.0)],
    );
    out.gauge(
        "jobsync_database_up",
        "1 when the database answered this scrape, 0 when it did not (its series are then absent).",
        [(vec![], if from_db.is_ok() { 1.0 } else { 0.0 })],
    );
    if let Err(e) = &from_db {
        tracing::debug!(error = %e, "/metrics: the database does not answer");
    }
    process_metrics(&mut out);
    out.histogram(
        "jobsync_api_request_duration_seconds",
        "Jobs API requests by endpoint: time until the answer's headers (or the failure).",
        ctx.api.stats().durations(),
    );
    out.histogram(
        "jobsync_cycle_duration_seconds",
        "Durations of this process's finished cycles.",
        ctx.run.durations(),
    );
    let s = ctx.run.snapshot();
    out.counter(
        "jobsync_runs_total",
        "Sync cycles by outcome.",
        [
            (vec![("status", "ok")], s.runs_ok as f64),
            (vec![("status", "failed")], s.runs_failed as f64),
        ],
    );
    out.counter(
        "jobsync_ticks_skipped_total",
        "Scheduler ticks skipped: `running` when this process's previous cycle was still running \
         (a schedule too tight for the work), `follower` when another process is the active \
         syncer (normal for PostgreSQL replicas).",
        [
            (vec![("reason", "running")], s.ticks_skipped as f64),
            (vec![("reason", "follower")], s.ticks_as_follower as f64),
        ],
    );
    out.counter(
        "jobsync_jobs_nul_replaced_total",
        "Jobs the API sent with a NUL character in a text field, stored with U+FFFD in its place.",
        [(vec![], crate::telemetry::nul_replaced_jobs() as f64)],
    );
    out.gauge(
        "jobsync_active_syncer",
        "1 when this process runs or ran the last cycle, 0 when another process holds the sync lock.",
        [(
            vec![],
            if s.active_syncer == Some(true) {
                1.0
            } else {
                0.0
            },
        )],
    );
    out.gauge(
        "jobsync_last_run_duration_seconds",
        "Duration of the last finished cycle.",
        [(vec![], s.last_run_seconds)],
    );
    out.counter(
        "jobsync_jobs_pulled_total",
        "Jobs received from the API by pulls.",
        [(vec![], s.jobs_pulled as f64)],
    );
    out.counter(
        "jobsync_jobs_changed_total",
        "Changefeed rows written by pulls.",
        [(vec![], s.jobs_changed as f64)],
    );
    out.counter(
        "jobsync_pushed_total",
        "Outbox rows pushed, by outcome.",
        [
            (vec![("status", "done")], s.pushed_ok as f64),
            (vec![("status", "failed")], s.pushed_failed as f64),
        ],
    );
    out.gauge(
        "jobsync_verify_findings",
        "Findings of this process's last scheduled verify (verify.schedule) by kind; none before the first. in_motion is not drift.",
        s.verify_counts
            .iter()
            .map(|(kind, n)| (vec![("kind", kind.as_str())], *n as f64)),
    );
    out.gauge(
        "jobsync_verify_last_timestamp_seconds",
        "When this process's last scheduled verify finished (Unix time; 0 never).",
        [(
            vec![],
            s.verify_last_at
                .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0),
        )],
    );
    out.gauge(
        "jobsync_token_refused",
        "1 while this process's last cycle failed because the Jobs API refused the token (401/403), else 0: unlike a counter's first increase, it shows a pod's first refusal.",
        [(vec![], if s.auth_failed { 1.0 } else { 0.0 })],
    );
    let requests = ctx.api.stats().snapshot();
    out.counter(
        "jobsync_api_requests_total",
        "Jobs API requests by endpoint and status (\"error\" when no answer came).",
        requests.iter().map(|(endpoint, status, n)| {
            (
                vec![("endpoint", endpoint.as_str()), ("status", status.as_str())],
                *n as f64,
            )
        }),
    );
    out.counter(
        "jobsync_api_retries_total",
        "Jobs API requests retried after a retryable failure.",
        [(vec![], ctx.api.stats().retries() as f64)],
    );
    out.counter(
        "jobsync_api_implausible_dates_total",
        "Jobs API answers whose Date header was further than api.max_date_skew_secs from both the local clock and the API's last good Date, and so not used for any stamp.",
        [(vec![], ctx.api.stats().implausible_dates() as f64)],
    );
    let snapshot = ctx.run.snapshot();
    out.counter(
        "jobsync_changefeed_pruned_unread_total",
        "Changefeed rows the daily prune deleted (retention.changes_days) before a consumer had read them.",
        snapshot
            .pruned_unread
            .iter()
            .map(|(c, n)| (vec![("consumer", c.as_str())], *n as f64)),
    );
    let webhook = snapshot.webhook;
    out.counter(
        "jobsync_webhook_changes_delivered_total",
        "Changefeed rows this process's webhook sink delivered (acknowledged with a 2xx).",
        [(vec![], webhook.changes_delivered as f64)],
    );
    out.counter(
        "jobsync_webhook_batches_delivered_total",
        "Webhook batches this process's sink delivered.",
        [(vec![], webhook.batches_delivered as f64)],
    );
    out.counter(
        "jobsync_webhook_failed_attempts_total",
        "Webhook POSTs that failed (retried, or ending in a pause).",
        [(vec![], webhook.failed_attempts as f64)],
    );
    if let Ok((counts, oldest, last_pull, (set_aside, deletes_held, quarantined), consumers)) =
        from_db
    {
        out.gauge(
            "jobsync_changefeed_consumer_lag",
            "Changefeed rows after a consumer's committed position (changes --consumer, the webhook sink).",
            consumers
                .iter()
                .map(|c| (vec![("consumer", c.name.as_str())], c.lag as f64)),
        );
        let now = crate::db::Ts::now().to_string();
        let paused = consumers.iter().any(|c| {
            c.name == crate::db::repo::consumers::WEBHOOK
                && c.paused_until
                    .as_deref()
                    .is_some_and(|until| until > now.as_str())
        });
        out.gauge(
            "jobsync_webhook_paused",
            "1 while the webhook sink is paused (a refusal, or tries exhausted): see /status for the receiver's answer.",
            [(vec![], if paused { 1.0 } else { 0.0 })],
        );
        out.gauge(
            "jobsync_campaigns_set_aside",
            "Tracked campaigns whose listing the API refused (404, 403, 400, ...): not listed in full, tried again hourly.",
            [(vec![], set_aside as f64)],
        );
        out.gauge(
            "jobsync_jobs_quarantined",
            "Jobs of the API's answers that could not be decoded, set aside in the quarantine table.",
            [(vec![], quarantined as f64)],
        );
        out.gauge(
            "jobsync_deletes_held",
            "Campaigns whose last full listing would have marked more than sync.mass_delete_ratio of their jobs deleted: held until a second listing agrees.",
            [(vec![], deletes_held as f64)],
        );
        out.gauge(
            "jobsync_outbox_rows",
            "Outbox rows by status.",
            counts
                .iter()
                .map(|(status, n)| (vec![("status", status.as_str())], *n as f64)),
        );
        let age = oldest.map_or(0.0, |t| {
            (Utc::now() - t.as_utc()).num_milliseconds() as f64 / 1000.0
        });
        out.gauge(
            "jobsync_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending or in-flight outbox row (0 when none).",
            [(vec![], age.max(0.0))],
        );
        let last_success = last_pull.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        out.gauge(
            "jobsync_last_success_timestamp_seconds",
            "When the last successful pull finished (Unix time; 0 never).",
            [(vec![], last_success)],
        );
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &out.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("# {e}\n")).into_response();
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// One scrape's registry: the series read now (run state, database) as families of their own,
/// and the live histograms, cloned in (clones share their buckets).
#[derive(Default)]
struct Exposition {
    registry: Registry,
}

/// One sample: its labels and its value.
type Sample<'a> = (Vec<(&'a str, &'a str)>, f64);

type Labels = Vec<(String, String)>;

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Exposition {
    /// A counter family; `name` ends in `_total`, which the encoding adds back to the samples.
    fn counter<'a>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = Sample<'a>>,
    ) {
        let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&owned(&labels)).inc_by(value);
        }
        let name = name.strip_suffix("_total").unwrap_or(name);
        self.registry
            .register(name, help.trim_end_matches('.'), family);
    }

    fn gauge<'a>(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = Sample<'a>>) {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&owned(&labels)).set(value);
        }
        self.registry
            .register(name, help.trim_end_matches('.'), family);
    }

    fn histogram(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .register(name, help.trim_end_matches('.'), metric);
    }
}

/// The standard `process_*` series, read from `/proc/self` (Linux; absent elsewhere): CPU time,
/// resident and virtual memory, open and maximum file descriptors, start time.
fn process_metrics(out: &mut Exposition) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may hold spaces), counted from field 3 (`state`).
    let Some(fields) = stat.rsplit_once(')').map(|(_, rest)| {
        rest.split_whitespace()
            .map(|f| f.parse::<f64>().unwrap_or(0.0))
            .collect::<Vec<_>>()
    }) else {
        return;
    };
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    out.counter(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        [(vec![], (field(14) + field(15)) / ticks)],
    );
    out.gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        [(vec![], field(24) * page)],
    );
    out.gauge(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        [(vec![], field(23))],
    );
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let Some(boot) = boot {
        out.gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            [(vec![], boot + field(22) / ticks)],
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            [(vec![], fds.count() as f64)],
        );
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        out.gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            [(vec![], limit.rlim_cur as f64)],
        );
    }
}
