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
            ))
        })
        .await;
    let (counts, oldest, last_pull) = match from_db {
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
        &[
            (&[("status", "ok")], s.runs_ok as f64),
            (&[("status", "failed")], s.runs_failed as f64),
        ],
    );
    out.counter(
        "jobsync_ticks_skipped_total",
        "Scheduler ticks skipped (a cycle still running, or another syncer holds the lock).",
        &[(&[], s.ticks_skipped as f64)],
    );
    out.counter(
        "jobsync_run_duration_seconds_sum",
        "Total time spent in finished cycles.",
        &[(&[], s.run_seconds_sum)],
    );
    out.counter(
        "jobsync_run_duration_seconds_count",
        "Finished cycles.",
        &[(&[], s.cycles_finished as f64)],
    );
    out.gauge(
        "jobsync_last_run_duration_seconds",
        "Duration of the last finished cycle.",
        &[(&[], s.last_run_seconds)],
    );
    out.counter(
        "jobsync_jobs_pulled_total",
        "Jobs received from the API by pulls.",
        &[(&[], s.jobs_pulled as f64)],
    );
    out.counter(
        "jobsync_jobs_changed_total",
        "Changefeed rows written by pulls.",
        &[(&[], s.jobs_changed as f64)],
    );
    out.counter(
        "jobsync_pushed_total",
        "Outbox rows pushed, by outcome.",
        &[
            (&[("status", "done")], s.pushed_ok as f64),
            (&[("status", "failed")], s.pushed_failed as f64),
        ],
    );
    let by_status: Vec<(String, f64)> = counts.into_iter().map(|(st, n)| (st, n as f64)).collect();
    let rows: Vec<([(&str, &str); 1], f64)> = by_status
        .iter()
        .map(|(st, n)| ([("status", st.as_str())], *n))
        .collect();
    let rows: Vec<(&[(&str, &str)], f64)> = rows.iter().map(|(l, n)| (&l[..], *n)).collect();
    out.gauge("jobsync_outbox_rows", "Outbox rows by status.", &rows);
    let age = oldest.map_or(0.0, |t| {
        (Utc::now() - t.as_utc()).num_milliseconds() as f64 / 1000.0
    });
    out.gauge(
        "jobsync_outbox_oldest_pending_age_seconds",
        "Age of the oldest pending or in-flight outbox row (0 when none).",
        &[(&[], age.max(0.0))],
    );
    let requests = ctx.api.stats().snapshot();
    let labels: Vec<[(&str, &str); 2]> = requests
        .iter()
        .map(|(endpoint, status, _)| [("endpoint", endpoint.as_str()), ("status", status.as_str())])
        .collect();
    let rows: Vec<(&[(&str, &str)], f64)> = labels
        .iter()
        .zip(&requests)
        .map(|(l, r)| (&l[..], r.2 as f64))
        .collect();
    out.counter(
        "jobsync_api_requests_total",
        "Jobs API requests by endpoint and status (\"error\" when no answer came).",
        &rows,
    );
    out.counter(
        "jobsync_api_retries_total",
        "Jobs API requests retried after a retryable failure.",
        &[(&[], ctx.api.stats().retries() as f64)],
    );
    let last_success = last_pull.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
    out.gauge(
        "jobsync_last_success_timestamp_seconds",
        "When the last successful pull finished (Unix time; 0 never).",
        &[(&[], last_success)],
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

impl Text {
    fn counter(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.family(name, help, "counter", samples);
    }

    fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.family(name, help, "gauge", samples);
    }

    fn family(&mut self, name: &str, help: &str, kind: &str, samples: &[(&[(&str, &str)], f64)]) {
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
