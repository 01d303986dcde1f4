//! Control routes under `/_sim/` for tests and demos (no token, never faulted): look at every
//! job, seed or delete jobs, move the clock, change faults, make the dialer or a person act now,
//! read the request log, see how many slow commits are still to land, hold and release requests,
//! count the requests served and the faults injected since the start (`GET /_sim/stats`).
//!
//! Each control is one method of `Sim` below; the routes and `SimHandle` (for a simulator in the
//! same process) both call them, so that the two never differ.

use super::body::{bad_request, error, job, job_array};
use super::clock::MAX_OFFSET_HOURS;
use super::faults::{FaultSettings, FaultUpdate, RequestRecord, SimStats, fault_ranges};
use super::gate::{Hold, HoldStatus};
use super::{Sim, dialer, lock};
use crate::job::Job;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A control refused: the route answers it as a 400 with this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The simulated clock (`GET /_sim/clock`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockReading {
    pub offset_hours: f64,
    pub now: DateTime<Utc>,
}

/// Work started and not yet done (`GET /_sim/pending`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Slow commits (`late_apply_rate`) started and not yet applied: a test waits for 0 before
    /// it counts jobs, since a commit may land after its client gave up.
    pub late_applies: usize,
}

impl Sim {
    /// Every job, each as the API answers it.
    pub(super) fn all_jobs(&self) -> Vec<Bytes> {
        self.store().list(None, None)
    }

    /// Inserts jobs as given, without the API's validation. `id` is optional (the next free
    /// id), `state` defaults to queued, `created_at` to now; an extra `modified_at` sets when
    /// the job counts as last modified (default now). Jobs before a refused one stay inserted.
    pub(super) fn insert_jobs(
        &self,
        raw_jobs: Vec<Map<String, Value>>,
    ) -> Result<Vec<Bytes>, Refused> {
        let now = self.clock.now();
        let mut store = self.store();
        let mut inserted = Vec::with_capacity(raw_jobs.len());
        for (index, mut raw) in raw_jobs.into_iter().enumerate() {
            let refused = |why: String| Refused(format!("job #{index}: {why}"));
            let modified_at = match raw
                .remove("modified_at")
                .map(serde_json::from_value::<DateTime<Utc>>)
            {
                None => now,
                Some(Ok(at)) => at,
                Some(Err(e)) => return Err(refused(format!("modified_at: {e}"))),
            };
            raw.entry("id").or_insert_with(|| json!(store.next_id()));
            raw.entry("state").or_insert(json!(0));
            raw.entry("created_at")
                .or_insert_with(|| json!(now.trunc_subsecs(3)));
            let parsed: Job =
                serde_json::from_value(Value::Object(raw)).map_err(|e| refused(e.to_string()))?;
            inserted.push(store.insert_raw(&parsed, modified_at).map_err(refused)?);
        }
        Ok(inserted)
    }

    pub(super) fn delete_job(&self, id: i64) -> Option<Bytes> {
        self.store().delete(id)
    }

    pub(super) fn clock_reading(&self) -> ClockReading {
        ClockReading {
            offset_hours: self.clock.offset_hours(),
            now: self.clock.now(),
        }
    }

    pub(super) fn set_clock(&self, offset_hours: f64) -> Result<ClockReading, Refused> {
        self.clock
            .set_offset_hours(offset_hours)
            .map_err(|reason| Refused(format!("offset_hours: {reason}")))?;
        tracing::info!(offset_hours, "simulated clock moved");
        Ok(self.clock_reading())
    }

    pub(super) fn fault_settings(&self) -> FaultSettings {
        lock(&self.faults).clone()
    }

    /// Applies the update whole or not at all; a `hold` given releases the requests held.
    pub(super) fn set_faults(&self, update: &FaultUpdate) -> Result<FaultSettings, Refused> {
        let mut settings = lock(&self.faults);
        settings.update(update).map_err(Refused)?;
        // The store enforces (or not) unique references itself; it follows the setting here.
        self.store()
            .set_allow_duplicate_references(settings.allow_duplicate_references);
        if update.hold.is_some() {
            self.gate.reopen();
        }
        tracing::info!(faults = ?*settings, "faults changed");
        Ok(settings.clone())
    }

    pub(super) fn hold_status(&self) -> HoldStatus {
        // Under the lock, so that the count goes with the rule.
        let settings = lock(&self.faults);
        HoldStatus {
            hold: settings.hold.clone(),
            held: self.gate.held(),
        }
    }

    /// Sets the gate (or opens it with `None`), releasing what it held; answers how many were.
    pub(super) fn set_hold(&self, hold: Option<Hold>) -> Result<usize, Refused> {
        let update = FaultUpdate {
            hold: Some(hold),
            ..FaultUpdate::default()
        };
        let held = self.gate.held();
        self.set_faults(&update)?;
        Ok(held)
    }

    pub(super) fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.log).entries()
    }

    /// Forgets the request log; answers how many entries it held.
    pub(super) fn reset_log(&self) -> usize {
        lock(&self.log).clear()
    }

    pub(super) fn pending(&self) -> Pending {
        Pending {
            late_applies: self.late_applies.load(Ordering::SeqCst),
        }
    }

    /// Requests served and faults injected since the start (cumulative; see [`SimStats`]).
    pub(super) fn stats(&self) -> SimStats {
        lock(&self.log).stats()
    }
}

fn refused(Refused(message): Refused) -> Response {
    bad_request(message)
}

pub fn control_router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/state", get(all_jobs))
        .route("/jobs", post(insert_jobs))
        .route("/jobs/{id}", delete(delete_job))
        .route("/clock", get(clock).post(set_clock))
        .route("/faults", get(faults).post(set_faults))
        .route("/hold", get(hold).post(set_hold))
        .route("/release", post(release))
        .route("/dial", post(dial_now))
        .route("/edit", post(edit_now))
        .route("/requests", get(requests))
        .route("/reset-log", post(reset_log))
        .route("/pending", get(pending))
        .route("/stats", get(stats))
        .layer(DefaultBodyLimit::disable())
        .with_state(sim)
}

async fn all_jobs(State(sim): State<Arc<Sim>>) -> Response {
    job_array(sim.all_jobs())
}

async fn insert_jobs(
    State(sim): State<Arc<Sim>>,
    body: Result<Json<Vec<Map<String, Value>>>, JsonRejection>,
) -> Response {
    let Ok(Json(raw_jobs)) = body else {
        return bad_request("the body must be a JSON array of job objects");
    };
    sim.insert_jobs(raw_jobs).map_or_else(refused, job_array)
}

async fn delete_job(State(sim): State<Arc<Sim>>, Path(id): Path<i64>) -> Response {
    match sim.delete_job(id) {
        Some(json) => job(StatusCode::OK, json),
        None => error(StatusCode::NOT_FOUND, format!("job {id} not found")),
    }
}

#[derive(Deserialize)]
struct ClockUpdate {
    offset_hours: f64,
}

async fn clock(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.clock_reading()).into_response()
}

async fn set_clock(
    State(sim): State<Arc<Sim>>,
    body: Result<Json<ClockUpdate>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(update)) => sim
            .set_clock(update.offset_hours)
            .map_or_else(refused, |reading| Json(reading).into_response()),
        Err(rejection) => bad_request(format!(
            "{}; expected {{\"offset_hours\": <number of hours between -{MAX_OFFSET_HOURS} \
             and {MAX_OFFSET_HOURS}>}}",
            rejection.body_text()
        )),
    }
}

async fn faults(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.fault_settings()).into_response()
}

async fn set_faults(
    State(sim): State<Arc<Sim>>,
    body: Result<Json<FaultUpdate>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(update)) => sim
            .set_faults(&update)
            .map_or_else(refused, |settings| Json(settings).into_response()),
        Err(rejection) => bad_request(format!(
            "{}; expected any of {}",
            rejection.body_text(),
            fault_ranges()
        )),
    }
}

async fn hold(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.hold_status()).into_response()
}

/// The body is the rule (`{"method", "prefix", "after"}`), or `null` to open the gate.
async fn set_hold(
    State(sim): State<Arc<Sim>>,
    body: Result<Json<Option<Hold>>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(rule)) => sim.set_hold(rule).map_or_else(refused, |released| {
            Json(json!({ "released": released })).into_response()
        }),
        Err(rejection) => bad_request(format!(
            "{}; expected null or {{\"method\": <GET, POST…, optional>, \"prefix\": \"/j/…\", \
             \"after\": <count, optional>}}",
            rejection.body_text()
        )),
    }
}

/// Opens the gate: every held request goes on.
async fn release(State(sim): State<Arc<Sim>>) -> Response {
    sim.set_hold(None).map_or_else(refused, |released| {
        Json(json!({ "released": released })).into_response()
    })
}

#[derive(Deserialize)]
struct Count {
    n: usize,
}

async fn dial_now(
    State(sim): State<Arc<Sim>>,
    body: Result<Json<Count>, JsonRejection>,
) -> Response {
    let Ok(Json(Count { n })) = body else {
        return bad_request("expected {\"n\": <count>}");
    };
    Json(dialer::dial(&sim, n)).into_response()
}

async fn edit_now(
    State(sim): State<Arc<Sim>>,
    body: Result<Json<Count>, JsonRejection>,
) -> Response {
    let Ok(Json(Count { n })) = body else {
        return bad_request("expected {\"n\": <count>}");
    };
    Json(dialer::edit(&sim, n)).into_response()
}

async fn requests(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.requests()).into_response()
}

async fn reset_log(State(sim): State<Arc<Sim>>) -> Response {
    Json(json!({ "cleared": sim.reset_log() })).into_response()
}

async fn pending(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.pending()).into_response()
}

async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.stats()).into_response()
}
