//! Injected faults on the `/j/` routes (500, 429, connections dropped before or after the request
//! is applied, added latency) and the log of every `/j/` request with what it was answered.

use super::{Sim, lock};
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Fault rates, each between 0 and 1, drawn independently for every `/j/` request.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Answer 500.
    pub fail_rate: f64,
    /// Answer 429 with `Retry-After: retry_after_secs`.
    pub throttle_rate: f64,
    pub retry_after_secs: u64,
    /// Close the connection without answering, before doing anything.
    pub drop_rate: f64,
    /// For a POST: apply it, then close the connection without answering.
    pub applied_drop_rate: f64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FaultSettings {
    #[serde(flatten)]
    pub faults: Faults,
    pub latency_ms: u64,
    /// No uniqueness check of `reference` within a campaign, so that a create sent twice
    /// becomes two jobs, as on an API that does not enforce it (the documented API refuses the
    /// second one). Not a random fault: it holds for every request while set.
    pub allow_duplicate_references: bool,
}

/// `POST /_sim/faults`: the settings given replace the current ones, the others stay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    fail_rate: Option<f64>,
    throttle_rate: Option<f64>,
    retry_after_secs: Option<u64>,
    drop_rate: Option<f64>,
    applied_drop_rate: Option<f64>,
    latency_ms: Option<u64>,
    allow_duplicate_references: Option<bool>,
}

impl FaultSettings {
    pub fn update(&mut self, update: &FaultUpdate) -> Result<(), String> {
        let rates = [
            ("fail_rate", update.fail_rate),
            ("throttle_rate", update.throttle_rate),
            ("drop_rate", update.drop_rate),
            ("applied_drop_rate", update.applied_drop_rate),
        ];
        for (name, rate) in rates {
            if let Some(rate) = rate {
                check_rate(name, rate)?;
            }
        }
        let f = &mut self.faults;
        f.fail_rate = update.fail_rate.unwrap_or(f.fail_rate);
        f.throttle_rate = update.throttle_rate.unwrap_or(f.throttle_rate);
        f.retry_after_secs = update.retry_after_secs.unwrap_or(f.retry_after_secs);
        f.drop_rate = update.drop_rate.unwrap_or(f.drop_rate);
        f.applied_drop_rate = update.applied_drop_rate.unwrap_or(f.applied_drop_rate);
        self.latency_ms = update.latency_ms.unwrap_or(self.latency_ms);
        self.allow_duplicate_references = update
            .allow_duplicate_references
            .unwrap_or(self.allow_duplicate_references);
        Ok(())
    }
}

pub fn check_rate(name: &str, rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("{name} must be between 0 and 1, not {rate}"))
    }
}

/// Marks a response that must never reach the client: the connection is closed instead.
#[derive(Clone, Copy, Debug)]
pub struct DropConnection;

/// One `/j/` request as the simulator saw it.
#[derive(Clone, Debug, Serialize)]
pub struct LoggedRequest {
    pub seq: u64,
    /// Simulated time the request arrived.
    pub at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The status answered; 0 when the connection was dropped instead.
    pub status: u16,
    pub dropped: bool,
    /// The fault injected, if any: `fail`, `throttle`, `drop` or `applied_drop`.
    pub fault: Option<&'static str>,
}

/// The most recent requests (bounded, so a long demo does not grow without end).
#[derive(Debug, Default)]
pub struct RequestLog {
    entries: VecDeque<LoggedRequest>,
    next_seq: u64,
}

const LOG_CAPACITY: usize = 100_000;

impl RequestLog {
    fn push(&mut self, mut entry: LoggedRequest) {
        self.next_seq += 1;
        entry.seq = self.next_seq;
        if self.entries.len() == LOG_CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    pub fn entries(&self) -> Vec<LoggedRequest> {
        self.entries.iter().cloned().collect()
    }

    /// Forgets every entry; answers how many there were.
    pub fn clear(&mut self) -> usize {
        let cleared = self.entries.len();
        self.entries.clear();
        cleared
    }
}

/// Middleware of the `/j/` routes: latency, then faults, then the route itself, then logging.
pub async fn inject(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    // Under `nest("/j")` the request's own URI has lost its prefix; log the path as sent.
    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().clone(), |original| original.0.clone());
    let mut entry = LoggedRequest {
        seq: 0,
        at: sim.clock.now(),
        method: request.method().to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        status: 0,
        dropped: false,
        fault: None,
    };
    let is_post = request.method() == Method::POST;
    let settings = *lock(&sim.faults);
    if settings.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
    }
    let draw = |rate: f64| rate > 0.0 && sim.rng().gen_bool(rate.min(1.0));
    let faults = settings.faults;
    let response = if draw(faults.drop_rate) {
        entry.fault = Some("drop");
        dropped()
    } else if draw(faults.fail_rate) {
        entry.fault = Some("fail");
        fault_answer(StatusCode::INTERNAL_SERVER_ERROR, "simulated server error")
    } else if draw(faults.throttle_rate) {
        entry.fault = Some("throttle");
        let mut response = fault_answer(StatusCode::TOO_MANY_REQUESTS, "simulated throttling");
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(faults.retry_after_secs),
        );
        response
    } else {
        let response = next.run(request).await;
        if is_post && draw(faults.applied_drop_rate) {
            entry.fault = Some("applied_drop");
            dropped()
        } else {
            response
        }
    };
    entry.dropped = response.extensions().get::<DropConnection>().is_some();
    entry.status = if entry.dropped {
        0
    } else {
        response.status().as_u16()
    };
    tracing::debug!(
        method = %entry.method,
        path = %entry.path,
        status = entry.status,
        fault = entry.fault,
        "api request"
    );
    lock(&sim.log).push(entry);
    response
}

fn dropped() -> Response {
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(DropConnection);
    response
}

fn fault_answer(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_replaces_only_what_it_gives() {
        let mut settings = FaultSettings {
            faults: Faults {
                fail_rate: 0.5,
                retry_after_secs: 1,
                ..Faults::default()
            },
            latency_ms: 20,
            ..FaultSettings::default()
        };
        let update: FaultUpdate =
            serde_json::from_str(r#"{"throttle_rate": 1.0, "retry_after_secs": 7}"#).unwrap();
        settings.update(&update).unwrap();
        assert_eq!(settings.faults.fail_rate, 0.5);
        assert_eq!(settings.faults.throttle_rate, 1.0);
        assert_eq!(settings.faults.retry_after_secs, 7);
        assert_eq!(settings.latency_ms, 20);
        let bad: FaultUpdate = serde_json::from_str(r#"{"drop_rate": 1.5}"#).unwrap();
        assert!(settings.update(&bad).unwrap_err().contains("drop_rate"));
        assert_eq!(settings.faults.drop_rate, 0.0);
        assert!(serde_json::from_str::<FaultUpdate>(r#"{"fail": 1}"#).is_err());
        let allow: FaultUpdate =
            serde_json::from_str(r#"{"allow_duplicate_references": true}"#).unwrap();
        settings.update(&allow).unwrap();
        assert!(settings.allow_duplicate_references);
        assert_eq!(settings.faults.throttle_rate, 1.0);
    }

    #[test]
    fn the_log_is_bounded_and_numbered() {
        let mut log = RequestLog::default();
        let entry = LoggedRequest {
            seq: 0,
            at: Utc::now(),
            method: "GET".into(),
            path: "/j/jobs".into(),
            query: None,
            status: 200,
            dropped: false,
            fault: None,
        };
        for _ in 0..LOG_CAPACITY + 3 {
            log.push(entry.clone());
        }
        let entries = log.entries();
        assert_eq!(entries.len(), LOG_CAPACITY);
        assert_eq!(entries[0].seq, 4);
        assert_eq!(entries.last().unwrap().seq, LOG_CAPACITY as u64 + 3);
    }
}
