//! Control routes under `/_sim/` for tests and demos (no token, never faulted): look at every
//! job, seed or delete jobs, move the clock, change faults, make the dialer or a person act now,
//! read the request log, and see how many slow commits are still to land.

use super::body::{bad_request, error, job, job_array};
use super::clock::MAX_OFFSET_HOURS;
use super::faults::{FaultUpdate, fault_ranges};
use super::{Sim, dialer, lock};
use crate::api::models::Job;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub fn control_router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/state", get(all_jobs))
        .route("/jobs", post(insert_jobs))
        .route("/jobs/{id}", delete(delete_job))
        .route("/clock", get(clock).post(set_clock))
        .route("/faults", get(faults).post(set_faults))
        .route("/dial", post(dial_now))
        .route("/edit", post(edit_now))
        .route("/requests", get(requests))
        .route("/reset-log", post(reset_log))
        .route("/pending", get(pending))
        .layer(DefaultBodyLimit::disable())
        .with_state(sim)
}

async fn all_jobs(State(sim): State<Arc<Sim>>) -> Response {
    let jobs = sim.store().list(None, None);
    job_array(jobs)
}

/// Inserts jobs as given, without the API's validation. `id` is optional (the next free id),
/// `state` defaults to queued, `created_at` to now; an extra `modified_at` sets when the job
/// counts as last modified (default now).
async fn insert_jobs(
    State(sim): State<Arc<Sim>>,
    body: Result<Json<Vec<Map<String, Value>>>, JsonRejection>,
) -> Response {
    let Ok(Json(raw_jobs)) = body else {
        return bad_request("the body must be a JSON array of job objects");
    };
    let now = sim.clock.now();
    let mut store = sim.store();
    let mut inserted = Vec::with_capacity(raw_jobs.len());
    for (index, mut raw) in raw_jobs.into_iter().enumerate() {
        let modified_at = match raw
            .remove("modified_at")
            .map(serde_json::from_value::<DateTime<Utc>>)
        {
            None => now,
            Some(Ok(at)) => at,
            Some(Err(e)) => return bad_request(format!("job #{index}: modified_at: {e}")),
        };
        raw.entry("id").or_insert_with(|| json!(store.next_id()));
        raw.entry("state").or_insert(json!(0));
        raw.entry("created_at")
            .or_insert_with(|| json!(now.trunc_subsecs(3)));
        let parsed: Job = match serde_json::from_value(Value::Object(raw)) {
            Ok(parsed) => parsed,
            Err(e) => return bad_request(format!("job #{index}: {e}")),
        };
        match store.insert_raw(&parsed, modified_at) {
            Ok(json) => inserted.push(json),
            Err(reason) => return bad_request(format!("job #{index}: {reason}")),
        }
    }
    drop(store);
    job_array(inserted)
}

async fn delete_job(State(sim): State<Arc<Sim>>, Path(id): Path<i64>) -> Response {
    match sim.store().delete(id) {
        Some(json) => job(StatusCode::OK, json),
        None => error(StatusCode::NOT_FOUND, format!("job {id} not found")),
    }
}

#[derive(Deserialize)]
struct ClockUpdate {
    offset_hours: f64,
}

async fn clock(State(sim): State<Arc<Sim>>) -> Response {
    Json(json!({"offset_hours": sim.clock.offset_hours(), "now": sim.clock.now()})).into_response()
}

async fn set_clock(
    State(sim): State<Arc<Sim>>,
    body: Result<Json<ClockUpdate>, JsonRejection>,
) -> Response {
    let update = match body {
        Ok(Json(update)) => update,
        Err(rejection) => {
            return bad_request(format!(
                "{}; expected {{\"offset_hours\": <number of hours between -{MAX_OFFSET_HOURS} \
                 and {MAX_OFFSET_HOURS}>}}",
                rejection.body_text()
            ));
        }
    };
    if let Err(reason) = sim.clock.set_offset_hours(update.offset_hours) {
        return bad_request(format!("offset_hours: {reason}"));
    }
    tracing::info!(offset_hours = update.offset_hours, "simulated clock moved");
    clock(State(sim)).await
}

async fn faults(State(sim): State<Arc<Sim>>) -> Response {
    Json(*lock(&sim.faults)).into_response()
}

async fn set_faults(
    State(sim): State<Arc<Sim>>,
    body: Result<Json<FaultUpdate>, JsonRejection>,
) -> Response {
    let update = match body {
        Ok(Json(update)) => update,
        Err(rejection) => {
            return bad_request(format!(
                "{}; expected any of {}",
                rejection.body_text(),
                fault_ranges()
            ));
        }
    };
    let mut settings = lock(&sim.faults);
    if let Err(reason) = settings.update(&update) {
        return bad_request(reason);
    }
    // The store enforces (or not) unique references itself; it follows the setting here.
    sim.store()
        .set_allow_duplicate_references(settings.allow_duplicate_references);
    tracing::info!(faults = ?*settings, "faults changed");
    Json(*settings).into_response()
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
    let entries = lock(&sim.log).entries();
    Json(entries).into_response()
}

async fn reset_log(State(sim): State<Arc<Sim>>) -> Response {
    let cleared = lock(&sim.log).clear();
    Json(json!({ "cleared": cleared })).into_response()
}

/// Slow commits (`late_apply_rate`) started and not yet applied: a test waits for 0 before it
/// counts jobs, since a commit may land after its client gave up.
async fn pending(State(sim): State<Arc<Sim>>) -> Response {
    let late_applies = sim.late_applies.load(Ordering::SeqCst);
    Json(json!({ "late_applies": late_applies })).into_response()
}
