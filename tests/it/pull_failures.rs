//! Undecodable answers from upstream, through the real binary: the run fails clearly (exit 1, a
//! `failed` row in `sync_runs`), nothing is marked deleted, the watermark does not move, and the
//! next good cycle converges.
//!
//! The simulator only answers well-formed JSON, so a small proxy in front of it plays a broken
//! upstream: it passes requests through, or corrupts campaign listings in one of several ways.

use crate::common::*;
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use jobsync::db::Db;
use jobsync::db::repo::{jobs, runs, state};
use jobsync::sim::SimConfig;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Corruption {
    None,
    Malformed,
    WrongTypes,
    Html,
    Truncated,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    mode: Arc<Mutex<Corruption>>,
}

async fn list_jobs(
    State(p): State<Proxy>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let mut request = reqwest::Client::new().get(format!("{}/j/jobs?{query}", p.upstream));
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, auth.to_str().unwrap());
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    let date = answer.headers().get(header::DATE).cloned();
    let body = answer.bytes().await.unwrap().to_vec();
    let mode = *p.mode.lock().unwrap();
    let is_listing = query.contains("campaign=");
    let (content_type, body) = match mode {
        _ if !is_listing || !status.is_success() => ("application/json", body),
        Corruption::None => ("application/json", body),
        Corruption::Malformed => (
            "application/json",
            b"[{\"id\": 1, \"campaign\": 28,, }]".to_vec(),
        ),
        Corruption::WrongTypes => (
            "application/json",
            String::from_utf8(body)
                .unwrap()
                .replacen("\"state\":", "\"state\":\"zero\",\"x\":", 7)
                .into_bytes(),
        ),
        Corruption::Html => (
            "text/html",
            b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
        ),
        Corruption::Truncated => ("application/json", body[..body.len() * 2 / 3].to_vec()),
    };
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status.as_u16()).unwrap())
        .header(header::CONTENT_TYPE, content_type);
    if let Some(date) = date {
        response = response.header(header::DATE, date);
    }
    response.body(Body::from(body)).unwrap()
}

async fn start_proxy(upstream: String) -> (String, Arc<Mutex<Corruption>>) {
    let mode = Arc::new(Mutex::new(Corruption::None));
    let app = Router::new()
        .route("/j/jobs", get(list_jobs))
        .with_state(Proxy {
            upstream,
            mode: mode.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), mode)
}

async fn once_async(base_url: String, db_path: &Path) -> std::process::Output {
    let db_path = db_path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        once(
            &base_url,
            &db_path,
            &[
                ("JOBSYNC_SYNC__CAMPAIGNS", "28"),
                ("JOBSYNC_API__MAX_ATTEMPTS", "2"),
            ],
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_answers_fail_the_run_clearly_and_change_nothing_unsafe() {
    let sim = start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 6000,
        ..SimConfig::default()
    })
    .await;
    let (proxy_url, mode) = start_proxy(sim.base_url()).await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let good = once_async(proxy_url.clone(), &db_path).await;
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let db = Db::open(&format!("sqlite://{}", db_path.display())).unwrap();
    // A job removed upstream: only a complete listing may mark it deleted.
    reqwest::Client::new()
        .delete(format!("{}/_sim/jobs/5", sim.base_url()))
        .send()
        .await
        .unwrap();

    // Answers that are not a listing as a whole fail the run.
    for corruption in [Corruption::Html, Corruption::Truncated] {
        let watermark = state::get_time(&mut db.conn().unwrap(), state::WATERMARK).unwrap();
        force_full_listing(&db);
        *mode.lock().unwrap() = corruption;
        let out = once_async(proxy_url.clone(), &db_path).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let error_line = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert_eq!(out.status.code(), Some(1), "{corruption:?}: {stderr}");
        assert!(
            error_line.contains("GET /j/jobs"),
            "{corruption:?}: names the endpoint: {error_line}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let mut c = db.conn().unwrap();
        let run = &runs::recent(&mut c, 1).unwrap()[0];
        assert_eq!(run.status, "failed", "{corruption:?}");
        assert!(run.error.as_deref().unwrap().contains("GET /j/jobs"));
        assert_eq!(
            jobs::counts(&mut c).unwrap(),
            (6000, 0),
            "{corruption:?}: nothing marked deleted"
        );
        assert_eq!(
            state::get_time(&mut c, state::WATERMARK).unwrap(),
            watermark,
            "{corruption:?}"
        );
        let stored = jobs::all(&mut c).unwrap();
        assert!(
            stored.iter().all(|r| (0..=4).contains(&r.content.state)),
            "committed rows stay valid"
        );
    }

    // Items that cannot be decoded inside a well-formed array are quarantined (issue 24): the
    // run completes. An item whose id cannot be read makes the listing delete nothing; jobs
    // quarantined by id are not deleted, and the listing's other deletes go in (job 5).
    for (corruption, counts) in [
        (Corruption::Malformed, (6000, 0)),
        (Corruption::WrongTypes, (5999, 1)),
    ] {
        force_full_listing(&db);
        *mode.lock().unwrap() = corruption;
        let out = once_async(proxy_url.clone(), &db_path).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{corruption:?}: {stderr}");
        assert!(
            stderr.contains("cannot be decoded"),
            "{corruption:?}: {stderr}"
        );
        let mut c = db.conn().unwrap();
        assert!(jobsync::db::repo::quarantine::count(&mut c).unwrap() > 0);
        assert_eq!(jobs::counts(&mut c).unwrap(), counts, "{corruption:?}");
        let stored = jobs::all(&mut c).unwrap();
        assert!(
            stored.iter().all(|r| (0..=4).contains(&r.content.state)),
            "committed rows stay valid"
        );
    }

    *mode.lock().unwrap() = Corruption::None;
    let out = once_async(proxy_url, &db_path).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = db.conn().unwrap();
    assert_eq!(jobs::counts(&mut c).unwrap(), (5999, 1));
    assert!(
        jobs::get(&mut c, 5)
            .unwrap()
            .unwrap()
            .remote_deleted_at
            .is_some()
    );
}
