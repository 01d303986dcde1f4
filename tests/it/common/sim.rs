//! Shared helpers for tests against the real simulator: start one, build a fast-retrying client,
//! and control it — through its handle when it runs in the test's process, through the `/_sim/`
//! routes (`requests`, `sim_post`) when it may not.

use jobsync::api::{ApiClient, ClientOptions, TokenSource};
use jobsync::secret::Secret;
use jobsync::sim::{FaultUpdate, Hold, RequestRecord, SimConfig, SimHandle};
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

/// Changes the faults given as `POST /_sim/faults` takes them; panics when refused.
pub async fn set_faults(sim: &SimHandle, faults: Value) {
    let update: FaultUpdate = serde_json::from_value(faults.clone())
        .unwrap_or_else(|e| panic!("not a fault setting: {faults}: {e}"));
    if let Err(refused) = sim.set_faults(&update) {
        panic!("{faults}: {refused}");
    }
}

pub async fn clear_faults(sim: &SimHandle) {
    set_faults(
        sim,
        json!({"fail_rate": 0.0, "throttle_rate": 0.0, "drop_rate": 0.0,
               "applied_drop_rate": 0.0, "latency_ms": 0}),
    )
    .await;
}

/// Holds the simulator's matching requests until `release` (the `hold` fault).
pub fn hold(sim: &SimHandle, rule: Hold) {
    sim.hold(rule).expect("a valid hold rule");
}

/// Lets every held request go on; answers how many were held.
pub fn release(sim: &SimHandle) -> usize {
    sim.release()
}

/// Waits until at least `n` requests are held at the simulator — they reached it and wait
/// there. The deadline only keeps a broken test from hanging.
pub async fn wait_held(sim: &SimHandle, n: usize) -> usize {
    tokio::time::timeout(Duration::from_secs(60), sim.wait_held(|held| held >= n))
        .await
        .unwrap_or_else(|_| panic!("{n} requests never held at the simulator within 60 s"))
}

/// Waits until no request is held or still being answered after a release.
pub async fn wait_none_held(sim: &SimHandle) {
    tokio::time::timeout(Duration::from_secs(60), sim.wait_held(|held| held == 0))
        .await
        .expect("the released requests were answered within 60 s");
}

/// The request log of a simulator in this process.
pub fn sim_requests(sim: &SimHandle) -> Vec<RequestRecord> {
    sim.requests()
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

/// Every job the simulator holds, as the API answers it.
pub async fn sim_state(sim: &SimHandle) -> Vec<Value> {
    sim.state_json()
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
    sim.reset_log();
}
