//! The handle and the control routes are two doors to the same controls, and the `hold` fault
//! seen from a client over HTTP: held requests are neither answered nor applied until released,
//! then applied even when their client has gone.

use super::{FaultUpdate, Hold, SimConfig, SimHandle, spawn};
use serde_json::{Value, json};
use std::time::Duration;

async fn start(cfg: SimConfig) -> SimHandle {
    spawn("127.0.0.1:0".parse().unwrap(), cfg).await.unwrap()
}

async fn get(sim: &SimHandle, path: &str) -> Value {
    reqwest::get(format!("{}/_sim{path}", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post(sim: &SimHandle, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/_sim{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn create(sim: &SimHandle, reference: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/j/jobs/bulk/create", sim.base_url()))
        .bearer_auth("dev-token")
        .json(
            &json!([{"campaign": 28, "reference": reference, "name": "Held",
                       "numbers": ["+33612345678"]}]),
        )
}

/// A deadline for waits that only stops a broken test from hanging.
async fn within<T>(wait: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("within 30 s")
}

#[tokio::test]
async fn the_handle_and_the_routes_show_the_same_controls() {
    let sim = start(SimConfig {
        jobs_per_campaign: 3,
        ..SimConfig::default()
    })
    .await;
    let state = get(&sim, "/state").await;
    assert_eq!(state, json!(sim.state_json()));
    let typed: Vec<i64> = sim.state().iter().map(|j| j.id).collect();
    assert_eq!(typed.len(), 6);
    assert_eq!(
        serde_json::to_value(sim.faults()).unwrap(),
        get(&sim, "/faults").await
    );
    assert!(
        get(&sim, "/faults").await.get("hold").is_none(),
        "no hold by default, and the faults' JSON as before"
    );
    let update: FaultUpdate = serde_json::from_value(json!({"latency_ms": 5})).unwrap();
    assert_eq!(sim.set_faults(&update).unwrap().latency_ms, 5);
    assert_eq!(get(&sim, "/faults").await["latency_ms"], 5);
    let refused = FaultUpdate {
        fail_rate: Some(2.0),
        ..FaultUpdate::default()
    };
    assert!(
        sim.set_faults(&refused)
            .unwrap_err()
            .0
            .contains("fail_rate")
    );
    let (status, body) = post(&sim, "/faults", json!({"fail_rate": 2.0})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        sim.set_faults(&refused).unwrap_err().0,
        "the same refusal"
    );

    let reading = sim.set_clock(2.5).unwrap();
    assert_eq!(reading.offset_hours, 2.5);
    assert_eq!(get(&sim, "/clock").await["offset_hours"], 2.5);
    assert!(sim.set_clock(f64::INFINITY).is_err());
    let (status, _) = post(&sim, "/clock", json!({"offset_hours": 1e9})).await;
    assert_eq!(status, 400);
    assert_eq!(sim.clock().offset_hours, 2.5);

    let raw = json!({"id": 100, "campaign": 28, "name": "Raw"});
    let inserted = sim
        .insert_jobs(vec![raw.as_object().unwrap().clone()])
        .unwrap();
    assert_eq!((inserted[0].id, inserted[0].campaign), (100, 28));
    let bad = json!({"campaign": 28, "modified_at": "yesterday"});
    let err = sim
        .insert_jobs(vec![bad.as_object().unwrap().clone()])
        .unwrap_err();
    let (status, body) = post(&sim, "/jobs", json!([bad])).await;
    assert_eq!((status, body["message"].as_str()), (400, Some(&*err.0)));
    assert_eq!(sim.delete_job(100).map(|j| j.id), Some(100));
    assert!(sim.delete_job(100).is_none());

    assert_eq!(sim.dial(2), 2);
    assert_eq!(sim.edit(1), 1);
    let listed = reqwest::Client::new()
        .get(format!("{}/j/jobs?campaign=28", sim.base_url()))
        .bearer_auth("dev-token")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let log = sim.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str(), log[0].status),
        ("GET", "/j/jobs", 200)
    );
    assert_eq!(
        serde_json::to_value(&log).unwrap(),
        get(&sim, "/requests").await
    );
    assert_eq!(sim.pending().late_applies, 0);
    assert_eq!(get(&sim, "/pending").await, json!({"late_applies": 0}));
    assert_eq!(sim.reset_log(), 1);
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn a_held_request_is_answered_and_applied_only_once_released() {
    let sim = start(SimConfig::default()).await;
    let (status, body) = post(
        &sim,
        "/hold",
        json!({"method": "POST", "prefix": "/j/jobs/bulk/create", "after": 1}),
    )
    .await;
    assert_eq!((status, &body), (200, &json!({"released": 0})));
    assert_eq!(
        get(&sim, "/faults").await["hold"],
        json!({"method": "POST", "prefix": "/j/jobs/bulk/create", "after": 1})
    );
    // The first create goes through (`after`), the second is held.
    assert_eq!(create(&sim, "first").send().await.unwrap().status(), 200);
    let held = tokio::spawn(create(&sim, "second").send());
    assert_eq!(within(sim.wait_held(|n| n == 1)).await, 1);
    assert_eq!(get(&sim, "/hold").await["held"], 1);
    // Other requests are not held meanwhile.
    let other = reqwest::Client::new()
        .get(format!("{}/j/jobs?campaign=28", sim.base_url()))
        .bearer_auth("dev-token")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(!held.is_finished(), "a held request is not answered");
    let references = |sim: &SimHandle| -> Vec<String> {
        sim.state()
            .into_iter()
            .filter_map(|j| j.reference)
            .collect()
    };
    assert_eq!(references(&sim), ["first"], "nor applied");

    let (status, body) = post(&sim, "/release", json!({})).await;
    assert_eq!((status, body), (200, json!({"released": 1})));
    let answer = within(held).await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    within(sim.wait_held(|n| n == 0)).await;
    assert_eq!(references(&sim), ["first", "second"]);
    assert_eq!(get(&sim, "/hold").await, json!({"hold": null, "held": 0}));
    assert!(get(&sim, "/faults").await.get("hold").is_none());
    // The gate is open: the next create is not held.
    assert_eq!(create(&sim, "third").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_held_request_is_applied_even_when_its_client_has_gone() {
    let sim = start(SimConfig::default()).await;
    sim.hold(Hold::new(None, "/j/jobs/bulk/")).unwrap();
    let client = create(&sim, "orphan").send();
    let gone = tokio::spawn(client);
    within(sim.wait_held(|n| n == 1)).await;
    gone.abort(); // the client stops waiting and its connection closes
    let _ = gone.await;
    assert!(sim.state().is_empty());
    assert_eq!(sim.release(), 1);
    within(sim.wait_held(|n| n == 0)).await;
    let state = sim.state();
    assert_eq!(state.len(), 1);
    assert_eq!(state[0].reference.as_deref(), Some("orphan"));
    let log = sim.requests();
    assert_eq!((log.len(), log[0].status), (1, 200));
}

#[tokio::test]
async fn a_hold_rule_is_checked_and_set_through_the_faults_too() {
    let sim = start(SimConfig::default()).await;
    for bad in [
        json!({"prefix": "/_sim/state"}),
        json!({"method": "get", "prefix": "/j/jobs"}),
        json!({"prefix": "/j/jobs", "after": -1}),
        json!({"path": "/j/jobs"}),
    ] {
        let (status, body) = post(&sim, "/hold", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let (status, body) = post(&sim, "/faults", json!({ "hold": bad })).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["message"].as_str().unwrap().contains("hold"), "{body}");
    }
    assert_eq!(get(&sim, "/hold").await, json!({"hold": null, "held": 0}));
    let (status, body) = post(&sim, "/faults", json!({"hold": {"prefix": "/j/jobs"}})).await;
    assert_eq!(
        (status, &body["hold"]),
        (200, &json!({"prefix": "/j/jobs", "after": 0}))
    );
    assert_eq!(sim.hold_status().hold, Some(Hold::new(None, "/j/jobs")));
    let (status, body) = post(&sim, "/faults", json!({"hold": null})).await;
    assert_eq!(status, 200);
    assert!(body.get("hold").is_none());
    assert_eq!(sim.hold_status().hold, None);
}
