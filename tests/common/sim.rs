//! Shared helpers for tests against the real simulator: start one, build a fast-retrying client,
//! and drive the control routes.

use jobsync::api::{ApiClient, ClientOptions, TokenSource};
use jobsync::secret::Secret;
use jobsync::sim::{SimConfig, SimHandle};
use serde_json::{Value, json};
use std::time::Duration;

pub async fn start_sim(cfg: SimConfig) -> SimHandle {
    jobsync::sim::spawn("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .expect("the simulator starts")
}

/// Options for tests: no rate limit to speak of, short backoff, many attempts.
pub fn options(sim: &SimHandle, token: &str) -> ClientOptions {
    let mut opts = ClientOptions::new(
        sim.base_url().parse().unwrap(),
        TokenSource::Static(Secret::new(token)),
    );
    opts.requests_per_second = 10_000.0;
    opts.max_attempts = 30;
    opts.min_backoff = Duration::from_millis(1);
    opts.max_backoff = Duration::from_millis(20);
    opts.timeout = Duration::from_secs(10);
    opts
}

pub fn client(sim: &SimHandle) -> ApiClient {
    ApiClient::new(options(sim, "dev-token")).unwrap()
}

pub async fn set_faults(sim: &SimHandle, faults: Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/_sim/faults", sim.base_url()))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

pub async fn clear_faults(sim: &SimHandle) {
    set_faults(
        sim,
        json!({"fail_rate": 0.0, "throttle_rate": 0.0, "drop_rate": 0.0,
               "applied_drop_rate": 0.0, "latency_ms": 0}),
    )
    .await;
}

/// The simulator's request log: one object per `/j/` request with `method`, `path`, `status`,
/// `dropped` and `fault`.
pub async fn requests(base_url: &str) -> Vec<Value> {
    reqwest::get(format!("{base_url}/_sim/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Requests of the log whose method and path match.
pub fn matching<'a>(log: &'a [Value], method: &str, path: &str) -> Vec<&'a Value> {
    log.iter()
        .filter(|r| r["method"] == method && r["path"] == path)
        .collect()
}

/// Every job the simulator holds.
pub async fn sim_state(sim: &SimHandle) -> Vec<Value> {
    let state: Value = reqwest::get(format!("{}/_sim/state", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    match state {
        Value::Array(jobs) => jobs,
        other => other["jobs"].as_array().cloned().unwrap_or_default(),
    }
}

pub fn fields(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

/// POSTs a JSON body to a simulator route and returns its JSON answer.
pub async fn sim_post(sim: &SimHandle, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Empties the simulator's request log.
pub async fn reset_log(sim: &SimHandle) {
    sim_post(sim, "/_sim/reset-log", json!({})).await;
}
