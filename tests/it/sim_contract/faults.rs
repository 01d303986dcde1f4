//! `/_sim/faults` and configured faults: 500s, 429s, dropped connections and latency.

use super::*;

#[tokio::test]
async fn fail_and_throttle_faults_answer_500_and_429() {
    let api = Api::new().await;
    api.control("/_sim/faults", json!({"fail_rate": 1.0})).await;
    api.expect(
        api.get("/j/jobs?campaign=28"),
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    api.http
        .get(api.url("/_sim/state"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    api.control(
        "/_sim/faults",
        json!({"fail_rate": 0.0, "throttle_rate": 1.0, "retry_after_secs": 3}),
    )
    .await;
    let throttled = api
        .post("/j/jobs/bulk/create", &documented_bulk_create())
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "3");
    assert!(
        api.state().await.is_empty(),
        "a throttled request must not apply"
    );

    api.control("/_sim/faults", json!({"throttle_rate": 0.0}))
        .await;
    api.expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;
}

#[tokio::test]
async fn dropped_connections_give_no_answer() {
    let api = Api::new().await;
    api.control("/_sim/faults", json!({"drop_rate": 1.0})).await;
    let error = api.get("/j/jobs?campaign=28").send().await.unwrap_err();
    assert!(error.status().is_none(), "{error:?}");
    let error = api
        .post("/j/jobs", &documented_create())
        .send()
        .await
        .unwrap_err();
    assert!(error.status().is_none(), "{error:?}");
    assert!(
        api.state().await.is_empty(),
        "a request dropped before handling must not apply"
    );

    api.control(
        "/_sim/faults",
        json!({"drop_rate": 0.0, "applied_drop_rate": 1.0}),
    )
    .await;
    let error = api
        .post("/j/jobs/bulk/create", &documented_bulk_create())
        .send()
        .await
        .unwrap_err();
    assert!(error.status().is_none(), "{error:?}");
    let state = api.state().await;
    let references: Vec<&str> = state
        .iter()
        .map(|j| j["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        references,
        ["1234567", "2345678"],
        "an applied drop applies the request"
    );
    api.expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;

    api.control("/_sim/faults", json!({"applied_drop_rate": 0.0}))
        .await;
    api.expect(
        api.post("/j/jobs/bulk/unqueue", &json!([{"id": 1}])),
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn configured_faults_and_latency_apply_from_the_start() {
    let cfg = SimConfig {
        faults: Faults {
            throttle_rate: 1.0,
            retry_after_secs: 9,
            ..Faults::default()
        },
        latency_ms: 150,
        ..SimConfig::default()
    };
    let api = Api::start(cfg).await;
    let started = std::time::Instant::now();
    let response = api.get("/j/jobs?campaign=28").send().await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "9");
    let faults = api
        .http
        .get(api.url("/_sim/faults"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        (
            faults["latency_ms"].clone(),
            faults["throttle_rate"].clone()
        ),
        (json!(150), json!(1.0))
    );
    let refused = api
        .http
        .post(api.url("/_sim/faults"))
        .json(&json!({"fail_rate": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
}
