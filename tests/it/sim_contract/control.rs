//! The control routes tests rely on: seeded jobs, `/_sim/dial` and `/_sim/edit`, the dialer,
//! the request log, and shutdown.

use super::*;

#[tokio::test]
async fn dial_and_edit_change_jobs_and_show_in_modified_since() {
    let api = Api::new().await;
    let now = api.sim_now().await;
    let old = rfc3339(now - Duration::hours(2));
    let jobs: Vec<Value> = (1..=6)
        .map(|id| json!({"id": id, "campaign": 28, "name": "Simon Dupont", "modified_at": old}))
        .collect();
    api.control("/_sim/jobs", json!(jobs)).await;
    let t = rfc3339(now - Duration::hours(1));
    let changed_since = || api.get("/j/jobs").query(&[("modified_since", t.as_str())]);
    assert_eq!(api.expect(changed_since(), StatusCode::OK).await, json!([]));

    let dialed = api.control("/_sim/dial", json!({"n": 2})).await;
    let dialed_ids = ids(&dialed);
    assert_eq!(dialed_ids.len(), 2);
    assert!(dialed.as_array().unwrap().iter().all(|j| j["state"] == 1));
    assert_eq!(
        ids(&api.expect(changed_since(), StatusCode::OK).await),
        dialed_ids
    );

    let edited = api.control("/_sim/edit", json!({"n": 1})).await;
    let edited_id = ids(&edited)[0];
    let mut expected = dialed_ids.clone();
    if !expected.contains(&edited_id) {
        expected.push(edited_id);
        expected.sort();
    }
    assert_eq!(
        ids(&api.expect(changed_since(), StatusCode::OK).await),
        expected
    );

    // Two more steps finish every dialed job one way or the other.
    for _ in 0..12 {
        api.control("/_sim/dial", json!({"n": 6})).await;
    }
    let states: Vec<i64> = api
        .state()
        .await
        .iter()
        .map(|j| j["state"].as_i64().unwrap())
        .collect();
    assert!(states.iter().all(|s| *s == 2 || *s == 3), "{states:?}");
    assert_eq!(api.control("/_sim/dial", json!({"n": 3})).await, json!([]));
}

#[tokio::test]
async fn the_dialer_runs_on_its_own() {
    let api = Api::start(SimConfig {
        jobs_per_campaign: 20,
        dial_interval_ms: 5,
        ..SimConfig::default()
    })
    .await;
    let initial = api.state().await;
    assert_eq!(initial.len(), 40);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = api.state().await;
        if now
            .iter()
            .zip(&initial)
            .any(|(a, b)| a["state"] != b["state"])
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dialer never moved a job"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn seeded_jobs_are_deterministic() {
    let cfg = || SimConfig {
        jobs_per_campaign: 30,
        seed: 42,
        ..SimConfig::default()
    };
    let a = Api::start(cfg()).await;
    let b = Api::start(cfg()).await;
    let strip = |jobs: Vec<Value>| -> Vec<Value> {
        jobs.into_iter()
            .map(|mut j| {
                j.as_object_mut().unwrap().remove("created_at");
                j
            })
            .collect()
    };
    let (ja, jb) = (strip(a.state().await), strip(b.state().await));
    assert_eq!(ja.len(), 60);
    assert_eq!(ja, jb);
    assert_eq!(ja[0]["reference"], "seed-28-1");
    let listed = a.expect(a.get("/j/jobs?campaign=29"), StatusCode::OK).await;
    assert_eq!(listed.as_array().unwrap().len(), 30);
    let decoded: Vec<jobsync::job::Job> = serde_json::from_value(listed).unwrap();
    assert!(decoded.iter().all(|j| {
        j.numbers
            .as_ref()
            .unwrap()
            .iter()
            .all(|n| n.starts_with("+33"))
    }));
}

#[tokio::test]
async fn the_request_log_records_every_api_request() {
    let api = Api::new().await;
    api.expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;
    api.expect(api.http.get(api.url("/j/jobs/1")), StatusCode::FORBIDDEN)
        .await;
    api.control("/_sim/faults", json!({"drop_rate": 1.0})).await;
    api.post("/j/jobs/bulk/create", &json!([]))
        .send()
        .await
        .unwrap_err();
    let log: Vec<Value> = api
        .http
        .get(api.url("/_sim/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen: Vec<(&str, &str, Value, i64, bool)> = log
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap(),
                e["path"].as_str().unwrap(),
                e["query"].clone(),
                e["status"].as_i64().unwrap(),
                e["dropped"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("GET", "/j/jobs", json!("campaign=28"), 200, false),
            ("GET", "/j/jobs/1", json!(null), 403, false),
            ("POST", "/j/jobs/bulk/create", json!(null), 0, true),
        ]
    );
    assert_eq!(log[2]["fault"], "drop");
    assert_eq!(
        api.control("/_sim/reset-log", json!(null)).await,
        json!({"cleared": 3})
    );
    let log: Vec<Value> = api
        .http
        .get(api.url("/_sim/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(log.is_empty());
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let api = Api::new().await;
    api.expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;
    let url = api.url("/j/jobs?campaign=28");
    api.sim.shutdown().await;
    let error = Client::new()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect() || error.is_request(), "{error:?}");
}
