//! `/metrics` in the Prometheus text format. The few series are written directly: process
//! counters from the daemon's run state and the client's request statistics, gauges read from the
//! database at scrape time.

use super::ServerContext;
use crate::db::DbError;
use crate::db::repo::{outbox, state};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use std::fmt::Write;

pub(super) async fn handler(State(ctx): State<ServerContext>) -> Response {
    let from_db = ctx
        .db
        .run(|c| {
            Ok::<_, DbError>((
                outbox::counts(c)?,
                outbox::oldest_pending(c)?,
                state::get_time(c, state::LAST_PULL_OK)?,
                (
                    state::refused_campaigns(c)?.len(),
                    state::held_deletes(c)?.len(),
                    crate::db::repo::quarantine::count(c)?,
                ),
            ))
        })
        .await;
    let (counts, oldest, last_pull, (set_aside, deletes_held, quarantined)) = match from_db {
        Ok(values) => values,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("# database unavailable: {e}\n"),
            )
                .into_response();
        }
    };
    let s = ctx.run.snapshot();
    let mut out = Text::default();
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
        [(
            vec![],
            crate::db::models::NUL_REPLACED_JOBS.load(std::sync::atomic::Ordering::Relaxed) as f64,
        )],
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
    out.counter(
        "jobsync_run_duration_seconds_sum",
        "Total time spent in finished cycles.",
        [(vec![], s.run_seconds_sum)],
    );
    out.counter(
        "jobsync_run_duration_seconds_count",
        "Finished cycles.",
        [(vec![], s.cycles_finished as f64)],
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
    let last_success = last_pull.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
    out.gauge(
        "jobsync_last_success_timestamp_seconds",
        "When the last successful pull finished (Unix time; 0 never).",
        [(vec![], last_success)],
    );
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.0,
    )
        .into_response()
}

#[derive(Default)]
struct Text(String);

/// One sample: its labels and its value.
type Sample<'a> = (Vec<(&'a str, &'a str)>, f64);

impl Text {
    fn counter<'a>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = Sample<'a>>,
    ) {
        self.family(name, help, "counter", samples);
    }

    fn gauge<'a>(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = Sample<'a>>) {
        self.family(name, help, "gauge", samples);
    }

    fn family<'a>(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        samples: impl IntoIterator<Item = Sample<'a>>,
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
