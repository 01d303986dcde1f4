//! Traces (issue 25, contract §8 `telemetry.otlp_endpoint`): one `jobsync --once` exports its
//! spans over OTLP/HTTP with the JSON encoding; the test is the collector — a plain HTTP server
//! on loopback that keeps what is POSTed to `/v1/traces` — and finds the run's `cycle` span and a
//! `bulk_call` span under it, in the same trace.

use crate::common::*;
use axum::body::Bytes;
use jobsync::db::Db;
use jobsync::sim::SimConfig;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Every span received: (trace id, span id, parent span id, name, attributes).
type Spans = Arc<Mutex<Vec<(String, String, String, String, Value)>>>;

async fn collector() -> (String, Spans, Arc<Mutex<Vec<String>>>) {
    let spans: Spans = Arc::default();
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let (kept, seen) = (spans.clone(), paths.clone());
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (kept, seen) = (kept.clone(), seen.clone());
        async move {
            let path = request.uri().path().to_string();
            let content_type = request
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            seen.lock().unwrap().push(format!("{path} {content_type}"));
            let body: Bytes = axum::body::to_bytes(request.into_body(), usize::MAX)
                .await
                .unwrap();
            let export: Value = serde_json::from_slice(&body).unwrap_or_default();
            for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        let text = |k: &str| span[k].as_str().unwrap_or_default().to_string();
                        kept.lock().unwrap().push((
                            text("traceId"),
                            text("spanId"),
                            text("parentSpanId"),
                            text("name"),
                            span["attributes"].clone(),
                        ));
                    }
                }
            }
            "{}"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans, paths)
}

#[test]
fn one_run_exports_its_cycle_span_with_a_bulk_call_under_it() {
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 5,
        ..SimConfig::default()
    }));
    let (endpoint, spans, paths) = rt.block_on(collector());
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let db = Db::open(&format!("sqlite://{}", db_path.display())).unwrap();
    insert(
        &db,
        &[create(
            28,
            "crm-traced",
            serde_json::json!({"name": "Traced"}),
        )],
    );
    let out = once(
        &sim.base_url(),
        &db_path,
        &[("JOBSYNC_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Flushed before the process exited: nothing to wait for.
    let spans = spans.lock().unwrap().clone();
    let paths = paths.lock().unwrap().clone();
    assert!(
        !paths.is_empty() && paths.iter().all(|p| p == "/v1/traces application/json"),
        "OTLP/HTTP with the JSON encoding: {paths:?}"
    );
    let by_id: HashMap<&str, &(String, String, String, String, Value)> =
        spans.iter().map(|s| (s.1.as_str(), s)).collect();
    let cycle = spans
        .iter()
        .find(|s| s.3 == "cycle")
        .unwrap_or_else(|| panic!("a cycle span: {spans:?}"));
    let attributes = cycle.4.to_string();
    assert!(
        attributes.contains("run_id") && attributes.contains("trigger"),
        "{attributes}"
    );
    let bulk = spans
        .iter()
        .find(|s| s.3 == "bulk_call")
        .unwrap_or_else(|| panic!("a bulk_call span: {spans:?}"));
    assert_eq!(bulk.0, cycle.0, "the same trace");
    // Its ancestors lead to the cycle (bulk_call → push → cycle).
    let mut parent = bulk.2.as_str();
    let mut chain = vec![bulk.3.as_str()];
    while let Some(span) = by_id.get(parent) {
        chain.push(span.3.as_str());
        parent = span.2.as_str();
    }
    assert_eq!(chain, ["bulk_call", "push", "cycle"], "{spans:?}");
    assert!(
        spans.iter().any(|s| s.3 == "listing" && s.0 == cycle.0),
        "the pull's listings are in the trace too: {spans:?}"
    );
}
