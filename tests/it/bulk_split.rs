//! The halving of a bulk request refused as a whole (400/413/422). The simulator answers a bad
//! item with a per-item 400, as the real API does, so it never refuses a whole request of valid
//! JSON; this tiny server does, to exercise the split.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jobsync::api::{ApiClient, ClientOptions, ItemOutcome, TokenSource};
use jobsync::secret::Secret;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Refuses any request holding an item with `"reference": "bad"` as a whole; else creates all.
async fn strict_create(calls: Arc<AtomicUsize>, Json(items): Json<Vec<Value>>) -> Response {
    calls.fetch_add(1, Ordering::SeqCst);
    if items.iter().any(|i| i["reference"] == "bad") {
        let body = json!({"message": "item has an invalid reference"});
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    let results: Vec<Value> = items
        .iter()
        .map(|item| {
            let id: i64 = item["reference"].as_str().unwrap().parse().unwrap();
            json!({"data": {"id": id, "campaign": 28, "state": 0, "reference": item["reference"]},
                   "status_code": 201})
        })
        .collect();
    Json(results).into_response()
}

#[tokio::test]
async fn a_whole_request_refusal_is_split_until_the_bad_item_is_isolated() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/j/jobs/bulk/create",
        post(move |body| strict_create(counter.clone(), body)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut opts = ClientOptions::new(
        format!("http://{addr}").parse().unwrap(),
        TokenSource::Static(Secret::new("t")),
    );
    opts.requests_per_second = 1000.0;
    opts.min_backoff = Duration::from_millis(1);
    let client = ApiClient::new(opts).unwrap();

    let items: Vec<_> = (0..16)
        .map(|i| {
            let reference = if i == 11 { "bad".into() } else { i.to_string() };
            json!({"campaign": 28, "reference": reference})
                .as_object()
                .unwrap()
                .clone()
        })
        .collect();
    let outcomes = client.bulk_create(items).await;

    assert_eq!(outcomes.len(), 16);
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            ItemOutcome::Ok { job, .. } => assert_eq!(job.id, i as i64, "aligned"),
            ItemOutcome::Rejected { status, message } => {
                assert_eq!(i, 11);
                assert_eq!(*status, 422);
                assert!(message.contains("invalid reference"), "{message}");
                assert!(message.contains("POST /j/jobs/bulk/create"), "{message}");
            }
            other => panic!("item {i}: {other:?}"),
        }
    }
    // 16 → 8+8 → 4+4 → 2+2 → 1+1: one refused call per level plus the good halves.
    assert_eq!(calls.load(Ordering::SeqCst), 9);
    assert_eq!(client.stats().count("POST /j/jobs/bulk/create", "422"), 5);
    assert_eq!(client.stats().retries(), 0, "a 422 is never retried");
}
