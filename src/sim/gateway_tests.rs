//! The faults of a real API behind a gateway, seen from a client over HTTP: a POST applied then
//! answered 502, a slow commit that lands after its client gave up, duplicate references when
//! uniqueness is not enforced, the references of creates in the request log, and the bounds the
//! control routes hold to.

use super::{SimConfig, SimHandle, spawn};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn start(cfg: SimConfig) -> SimHandle {
    spawn("127.0.0.1:0".parse().unwrap(), cfg).await.unwrap()
}

fn api(sim: &SimHandle, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .bearer_auth("dev-token")
}

async fn control(sim: &SimHandle, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/_sim{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn get(sim: &SimHandle, path: &str) -> Value {
    reqwest::get(format!("{}/_sim{path}", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn jobs_with(sim: &SimHandle, reference: &str) -> Vec<Value> {
    let state = get(sim, "/state").await;
    let jobs = state.as_array().unwrap();
    jobs.iter()
        .filter(|j| j["reference"] == reference)
        .cloned()
        .collect()
}

/// Polls until no slow commit is pending (a few seconds at most).
async fn late_applies_landed(sim: &SimHandle) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(sim, "/pending").await["late_applies"] != 0 {
        assert!(Instant::now() < deadline, "slow commits never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_applied_fail_is_applied_and_answered_by_the_gateway() {
    let sim = start(SimConfig::default()).await;
    let set = control(&sim, "/faults", json!({"applied_fail_rate": 1.0})).await;
    assert_eq!(set.status(), 200);
    let answer = api(&sim, "/j/jobs/bulk/create")
        .json(&json!([{"campaign": 28, "reference": "g-1"}, {"campaign": 28, "reference": "g-2"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 502);
    assert_eq!(answer.headers()["content-type"], "text/html");
    let page = answer.text().await.unwrap();
    assert!(
        page.contains("502 Bad Gateway") && !page.contains('{'),
        "{page}"
    );
    assert_eq!(
        jobs_with(&sim, "g-1").await.len(),
        1,
        "applied all the same"
    );
    let single = api(&sim, "/j/jobs")
        .json(&json!({"campaign": 28, "reference": "g-3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(single.status(), 502);
    // A GET is never applied-then-failed.
    let listing = reqwest::Client::new()
        .get(format!("{}/j/jobs?campaign=28", sim.base_url()))
        .bearer_auth("dev-token")
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), 200);
    let log = get(&sim, "/requests").await;
    let log = log.as_array().unwrap();
    assert_eq!(log[0]["fault"], "applied_fail");
    assert_eq!(log[0]["status"], 502);
    assert_eq!(log[0]["references"], json!(["g-1", "g-2"]));
    assert_eq!(log[1]["references"], json!(["g-3"]));
    assert_eq!(log[2]["references"], json!([]));
    assert_eq!(log[2]["fault"], Value::Null);
}

#[tokio::test]
async fn a_slow_commit_lands_after_its_client_gave_up() {
    let sim = start(SimConfig::default()).await;
    control(
        &sim,
        "/faults",
        json!({"late_apply_rate": 1.0, "late_apply_ms": 400}),
    )
    .await;
    let sent_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(get(&sim, "/clock").await["now"].clone()).unwrap();
    let impatient = api(&sim, "/j/jobs/bulk/create")
        .timeout(Duration::from_millis(100))
        .json(&json!([{"campaign": 28, "reference": "late"}]))
        .send()
        .await;
    assert!(impatient.unwrap_err().is_timeout());
    assert!(jobs_with(&sim, "late").await.is_empty(), "not applied yet");
    assert_eq!(get(&sim, "/pending").await["late_applies"], 1);
    late_applies_landed(&sim).await;
    let job = &jobs_with(&sim, "late").await[0];
    let created: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(job["created_at"].clone()).unwrap();
    assert!(
        // `created_at` keeps milliseconds.
        created >= sent_at + chrono::Duration::milliseconds(399),
        "stamped when applied: {created} vs sent {sent_at}"
    );
    let log = get(&sim, "/requests").await;
    assert_eq!(log[0]["fault"], "late_apply");
    assert_eq!(log[0]["status"], 200);

    // A patient client gets the answer after the delay, the job applied.
    let started = Instant::now();
    let answer = api(&sim, "/j/jobs/bulk/patch")
        .json(&json!([{"id": job["id"], "city": "Lyon"}]))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer[0]["data"]["city"], "Lyon");
}

#[tokio::test]
async fn duplicate_references_are_kept_only_while_allowed() {
    let sim = start(SimConfig {
        allow_duplicate_references: true,
        ..SimConfig::default()
    })
    .await;
    let create = |reference: &str| {
        api(&sim, "/j/jobs/bulk/create").json(&json!([{"campaign": 28, "reference": reference}]))
    };
    for _ in 0..2 {
        let answer: Value = create("d").send().await.unwrap().json().await.unwrap();
        assert_eq!(answer[0]["status_code"], 201, "{answer}");
    }
    assert_eq!(jobs_with(&sim, "d").await.len(), 2);
    assert_eq!(
        get(&sim, "/faults").await["allow_duplicate_references"],
        true
    );
    control(
        &sim,
        "/faults",
        json!({"allow_duplicate_references": false}),
    )
    .await;
    let refused: Value = create("d").send().await.unwrap().json().await.unwrap();
    assert_eq!(refused[0]["status_code"], 400, "{refused}");
    assert_eq!(refused[0]["data"], Value::Null);
}

#[tokio::test]
async fn out_of_range_settings_are_refused_and_change_nothing() {
    let sim = start(SimConfig::default()).await;
    for body in [
        json!({"offset_hours": 1e308}),
        json!({"offset_hours": -100001}),
    ] {
        let refused = control(&sim, "/clock", body).await;
        assert_eq!(refused.status(), 400);
        let message: Value = refused.json().await.unwrap();
        let text = message["message"].as_str().unwrap();
        assert!(text.contains("between -100000 and 100000"), "{text}");
    }
    for body in [
        json!({"late_apply_ms": 600_001}),
        json!({"latency_ms": 600_001}),
        json!({"applied_fail_rate": 1.5}),
    ] {
        let refused = control(&sim, "/faults", body).await;
        assert_eq!(refused.status(), 400);
        let message: Value = refused.json().await.unwrap();
        assert!(message["message"].is_string());
    }
    assert_eq!(get(&sim, "/clock").await["offset_hours"], 0.0);
    let still_serving = reqwest::Client::new()
        .get(format!("{}/j/jobs?campaign=28", sim.base_url()))
        .bearer_auth("dev-token")
        .send()
        .await
        .unwrap();
    assert_eq!(still_serving.status(), 200);
    let bad = spawn(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            clock_offset_hours: 1e308,
            ..SimConfig::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(bad.kind(), std::io::ErrorKind::InvalidInput);
}
