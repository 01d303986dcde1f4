//! The eight documented endpoints under `/j/`, behind bearer-token auth.

use super::body::{bad_request, error, job, job_array};
use super::clock::parse_modified_since;
use super::state::{ItemFailure, Store};
use super::validate::{parse_create, parse_patch, parse_unqueue};
use super::{Sim, faults};
use crate::api::models::BulkItemResult;
use crate::job::Job;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Items a bulk call may carry (`jobs-api.md`: "up to 1000 jobs per call").
pub const MAX_BULK_ITEMS: usize = 1000;

/// Large enough for 1000 items with generous `data`; beyond it the request is refused whole.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

pub fn api_router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/jobs", get(list_jobs).post(create_job))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/unqueue", post(unqueue_job))
        .route("/jobs/bulk/create", post(bulk_create))
        .route("/jobs/bulk/patch", post(bulk_patch))
        .route("/jobs/bulk/unqueue", post(bulk_unqueue))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(sim.clone(), require_token))
        .layer(middleware::from_fn_with_state(sim.clone(), faults::inject))
        .with_state(sim)
}

async fn require_token(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if token == sim.token => next.run(request).await,
        Some(_) => error(StatusCode::FORBIDDEN, "invalid token"),
        None => error(
            StatusCode::FORBIDDEN,
            "missing `Authorization: Bearer <token>` header",
        ),
    }
}

async fn list_jobs(
    State(sim): State<Arc<Sim>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_request("the query string cannot be read");
    };
    let campaign = match query.get("campaign").map(|c| c.parse::<i64>()) {
        None => None,
        Some(Ok(campaign)) => Some(campaign),
        Some(Err(_)) => return bad_request("`campaign` must be an integer"),
    };
    let since = match query.get("modified_since") {
        None => None,
        Some(raw) => match parse_modified_since(raw, sim.clock.now()) {
            Ok(since) => Some(since),
            Err(reason) => return bad_request(reason),
        },
    };
    if campaign.is_none() && since.is_none() {
        return bad_request("`campaign` is required unless `modified_since` is given");
    }
    let jobs = sim.store().list(campaign, since);
    job_array(jobs)
}

async fn get_job(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    let found = id.parse().ok().and_then(|id| sim.store().get_json(id));
    match found {
        Some(json) => job(StatusCode::OK, json),
        None => error(StatusCode::NOT_FOUND, format!("job {id} not found")),
    }
}

async fn create_job(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let item = match parse_json(&body) {
        Ok(item) => item,
        Err(reason) => return bad_request(reason),
    };
    let created = parse_create(&item)
        .map_err(ItemFailure::Invalid)
        .and_then(|item| sim.store().create(item, sim.clock.now()));
    match created {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(failure) => failure_response(&failure),
    }
}

async fn unqueue_job(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse() else {
        return error(StatusCode::NOT_FOUND, format!("job {id} not found"));
    };
    let unqueued = sim.store().unqueue(id, sim.clock.now());
    match unqueued {
        Ok(unqueued) => Json(unqueued).into_response(),
        Err(failure) => failure_response(&failure),
    }
}

async fn bulk_create(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    bulk(&body, StatusCode::CREATED, |item| {
        let item = parse_create(item).map_err(ItemFailure::Invalid)?;
        stored(&sim, |store, now| store.create(item, now))
    })
}

async fn bulk_patch(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    bulk(&body, StatusCode::OK, |item| {
        let item = parse_patch(item).map_err(ItemFailure::Invalid)?;
        stored(&sim, |store, now| store.patch(item, now))
    })
}

async fn bulk_unqueue(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    bulk(&body, StatusCode::OK, |item| {
        let id = parse_unqueue(item).map_err(ItemFailure::Invalid)?;
        stored(&sim, |store, now| store.unqueue(id, now))
    })
}

/// Applies one item to the store and answers the JSON the store now keeps for its job.
fn stored(
    sim: &Sim,
    apply: impl FnOnce(&mut Store, DateTime<Utc>) -> Result<Job, ItemFailure>,
) -> Result<Bytes, ItemFailure> {
    let mut store = sim.store();
    let job = apply(&mut store, sim.clock.now())?;
    Ok(store.get_json(job.id).expect("the job was just stored"))
}

/// Runs `apply` on each item of a bulk body, in order, and answers one result per item. A job's
/// result embeds the JSON the store keeps for it: serialising each job again through serde was
/// a third of the simulator's work in a large push.
fn bulk(
    body: &[u8],
    success: StatusCode,
    mut apply: impl FnMut(&Value) -> Result<Bytes, ItemFailure>,
) -> Response {
    let items = match parse_json(body) {
        Ok(Value::Array(items)) => items,
        Ok(_) => return bad_request("the body must be a JSON array of items"),
        Err(reason) => return bad_request(reason),
    };
    if items.len() > MAX_BULK_ITEMS {
        return bad_request(format!(
            "{} items given; a bulk call takes at most {MAX_BULK_ITEMS}",
            items.len()
        ));
    }
    let mut out = Vec::with_capacity(items.len() * 320 + 2);
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match apply(item) {
            Ok(job) => {
                out.extend_from_slice(b"{\"data\":");
                out.extend_from_slice(&job);
                out.extend_from_slice(b",\"status_code\":");
                out.extend_from_slice(success.as_str().as_bytes());
                out.push(b'}');
            }
            Err(failure) => {
                let result = BulkItemResult {
                    data: None,
                    status_code: failure.status(),
                    message: Some(failure.message()),
                };
                serde_json::to_writer(&mut out, &result).expect("a result serialises");
            }
        }
    }
    out.push(b']');
    job(StatusCode::OK, Bytes::from(out))
}

fn parse_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))
}

fn failure_response(failure: &ItemFailure) -> Response {
    let status = StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, failure.message())
}
