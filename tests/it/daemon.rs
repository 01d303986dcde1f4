//! The daemon as operators run it: the real binary, the real simulator, SIGTERM.

use crate::common::*;
use jobsync::db::Db;
use jobsync::db::repo::runs;
use jobsync::sim::{Hold, SimConfig};
use serde_json::Value;
use std::time::{Duration, Instant};

#[test]
fn the_daemon_syncs_on_schedule_reports_health_and_stops_cleanly_on_sigterm() {
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 300,
        ..SimConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let daemon = Daemon::start(&rt, &sim.base_url(), &db_path, &[]);

    assert_eq!(daemon.get("/healthz").0, 200);
    daemon.wait_until("/readyz", |status, body| {
        status == 200 && body.contains("\"ready\"")
    });
    let (_, metrics) = daemon.wait_until("/metrics", |_, body| {
        metric(body, "jobsync_runs_total{status=\"ok\"}") >= 3.0
    });
    assert!(
        metric(
            &metrics,
            "jobsync_api_requests_total{endpoint=\"GET /j/jobs\",status=\"200\"}"
        ) >= 3.0
    );
    assert_eq!(
        metric(&metrics, "jobsync_outbox_rows{status=\"pending\"}"),
        0.0
    );
    assert!(metric(&metrics, "jobsync_last_success_timestamp_seconds") > 0.0);
    let (status, body) = daemon.get("/status");
    assert_eq!(status, 200);
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["mirror"]["jobs"], 300);
    assert!(
        !body.contains("dev-token") && !body.contains("@example"),
        "no secrets, no personal data"
    );

    let exit = daemon.terminate();
    assert!(exit.success(), "exit 0 on SIGTERM: {exit:?}");
    let db = Db::open(&format!("sqlite://{}", db_path.display())).unwrap();
    let recent = runs::recent(&mut db.conn().unwrap(), 100).unwrap();
    assert!(recent.len() >= 3);
    // Ticks come every second: the SIGTERM may land in a cycle, which then stops and says so.
    // Only the newest run may be that one; every earlier run finished ok.
    let (newest, earlier) = recent.split_first().unwrap();
    assert!(
        earlier
            .iter()
            .all(|r| r.status == "ok" && r.trigger == "schedule"),
        "{recent:?}"
    );
    assert!(
        newest.status == "ok" || newest.error.as_deref() == Some("stopped by a shutdown signal"),
        "{newest:?}"
    );
}

#[test]
fn a_refused_token_fails_readiness_without_a_retry_loop() {
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 10,
        ..SimConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let mut daemon = Daemon::start(
        &rt,
        &sim.base_url(),
        &db_path,
        &[("JOBSYNC_API__TOKEN", "wrong")],
    );
    // 503 from the start (the first cycle running), then saying why once it failed.
    let (status, body) = daemon.wait_until("/readyz", |status, body| {
        status == 503 && body.contains("token")
    });
    assert_eq!(status, 503, "{body}");
    daemon.wait_for_log("cycle failed");
    daemon.wait_for_log("cycle failed");
    // Each failed cycle made exactly one request: no loop of retries against a refused token.
    let log = rt.block_on(requests(&sim.base_url()));
    let (_, metrics) = daemon.get("/metrics");
    let failed = metric(&metrics, "jobsync_runs_total{status=\"failed\"}");
    assert!(failed >= 2.0);
    assert!(
        log.len() as f64 <= failed + 1.0,
        "{} requests for {failed} failed cycles",
        log.len()
    );
    assert!(daemon.terminate().success());
}

#[test]
fn a_second_daemon_on_the_same_sqlite_file_never_syncs_concurrently() {
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 50,
        ..SimConfig::default()
    }));
    // The first cycle's listing is held at the simulator: that cycle stays in flight while the
    // one-second ticks fire, and every tick collides with it — in its own daemon (running) or in
    // the other one (follower, the lock taken).
    hold(&sim, Hold::new(Some("GET"), "/j/jobs"));
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let first = Daemon::start(&rt, &sim.base_url(), &db_path, &[]);
    let second = Daemon::start(&rt, &sim.base_url(), &db_path, &[]);
    rt.block_on(wait_held(&sim, 1));
    let skipped = |a: &str, b: &str| {
        let sum = |series: &str| metric(a, series) + metric(b, series);
        sum("jobsync_ticks_skipped_total{reason=\"running\"}")
            + sum("jobsync_ticks_skipped_total{reason=\"follower\"}")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, a) = first.get("/metrics");
        let (_, b) = second.get("/metrics");
        if skipped(&a, &b) >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no skipped ticks:\n{a}\n{b}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still one cycle running: the other daemon's ticks were skipped, not run beside it. (The
    // follower's own readiness check, one listing of the last minute, may be held too.)
    let db = Db::open(&format!("sqlite://{}", db_path.display())).unwrap();
    let running = runs::recent(&mut db.conn().unwrap(), 100)
        .unwrap()
        .into_iter()
        .filter(|r| r.status == "running")
        .count();
    assert_eq!(running, 1, "two cycles at once");
    assert!(sim.release() >= 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, a) = first.get("/metrics");
        let (_, b) = second.get("/metrics");
        let ok = metric(&a, "jobsync_runs_total{status=\"ok\"}")
            + metric(&b, "jobsync_runs_total{status=\"ok\"}");
        if ok >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no second run:\n{a}\n{b}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(first.terminate().success());
    assert!(second.terminate().success());
    // Runs never overlapped in time.
    let mut recent = runs::recent(&mut db.conn().unwrap(), 1000).unwrap();
    recent.sort_by_key(|r| r.started_at);
    assert!(recent.len() >= 2);
    for pair in recent.windows(2) {
        assert!(
            pair[0].finished_at.unwrap() <= pair[1].started_at,
            "overlapping runs: {pair:?}"
        );
    }
}

/// A listing that never ends — ever-new jobs, streamed as fast as they are read — used to keep a
/// cycle running for ever: every tick was skipped as "running", the push never ran, `/healthz`
/// stayed 200. Each listing now ends at `sync.listing_deadline_secs`, the cycle pushes and ends,
/// and the next tick runs.
#[test]
fn a_listing_that_never_ends_does_not_hold_the_daemon() {
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 20,
        ..SimConfig::default()
    }));
    let gateway = rt.block_on(endless_gateway(sim.base_url()));
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let daemon = Daemon::start(
        &rt,
        &gateway,
        &db_path,
        &[
            ("JOBSYNC_API__TIMEOUT_SECS", "2"),
            ("JOBSYNC_SYNC__LISTING_DEADLINE_SECS", "3"),
        ],
    );
    let db = Db::open(&format!("sqlite://{}", db_path.display())).unwrap();
    insert(
        &db,
        &[create(
            28,
            "crm-endless",
            serde_json::json!({"name": "Endless"}),
        )],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let failed: Vec<_> = runs::recent(&mut db.conn().unwrap(), 100)
            .unwrap()
            .into_iter()
            .filter(|r| r.status == "failed")
            .collect();
        let done = count_status(&all_rows(&db), "done");
        if failed.len() >= 2 && done == 1 {
            assert!(
                failed.iter().all(|r| r
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains("sync.listing_deadline_secs"))),
                "{failed:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cycles ended {} time(s), the create is done {done} time(s)",
            failed.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(daemon.get("/healthz").0, 200);
    let created = sim
        .state()
        .into_iter()
        .filter(|j| j.reference.as_deref() == Some("crm-endless"));
    assert_eq!(created.count(), 1, "the CRM's create reached the API once");
    assert!(daemon.terminate().success());
}

/// A gateway in front of the simulator whose every successful `GET /j/jobs` answers ever-new
/// jobs of campaign 28 without end (the simulator's own headers kept).
async fn endless_gateway(sim: String) -> String {
    use axum::extract::Request;
    use axum::response::{IntoResponse, Response};
    async fn forward(
        axum::extract::State(sim): axum::extract::State<String>,
        request: Request,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let answer = reqwest::Client::new()
            .request(parts.method.clone(), format!("{sim}{}", parts.uri))
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, mut headers) = (answer.status(), answer.headers().clone());
        headers.remove("content-length");
        if parts.uri.path() != "/j/jobs" || status != 200 {
            let bytes = answer.bytes().await.unwrap();
            return (status, headers, bytes).into_response();
        }
        let head = futures_util::stream::once(async { "[".to_string() });
        let items = futures_util::stream::iter((10_000_000i64..).map(|id| {
            format!(r#"{{"id": {id}, "campaign": 28, "state": 0, "name": "new {id}"}},"#)
        }));
        let stream = futures_util::StreamExt::map(
            futures_util::StreamExt::chain(head, items),
            Ok::<_, std::convert::Infallible>,
        );
        (status, headers, axum::body::Body::from_stream(stream)).into_response()
    }
    let app = axum::Router::new().fallback(forward).with_state(sim);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A release with a wrong token, rolled out over a database whose last good pull (by the pods
/// before it) is recent: `/readyz` used to say 200 from the start — the shared last pull was
/// recent — so the rollout went on. Readiness now needs this process's own proof: 503 while its
/// first cycle runs, 503 once it failed, never 200.
#[test]
fn a_release_with_a_wrong_token_is_never_ready_over_a_recent_good_pull() {
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 10,
        ..SimConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let previous = Daemon::start(&rt, &sim.base_url(), &db_path, &[]);
    previous.wait_until("/readyz", |status, _| status == 200);
    assert!(previous.terminate().success());

    // The new release's first cycle is held at the API: readiness is asked meanwhile.
    hold(&sim, Hold::new(Some("GET"), "/j/jobs"));
    let mut release = Daemon::start(
        &rt,
        &sim.base_url(),
        &db_path,
        &[("JOBSYNC_API__TOKEN", "wrong")],
    );
    rt.block_on(wait_held(&sim, 1));
    let (status, body) = release.get("/readyz");
    assert_eq!(status, 503, "not ready while its first cycle runs: {body}");
    assert!(body.contains("first cycle is running"), "{body}");
    sim.release();
    release.wait_for_log("cycle failed");
    release.wait_for_log("cycle failed");
    for _ in 0..20 {
        let (status, body) = release.get("/readyz");
        assert_eq!(status, 503, "never ready: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(release.terminate().success());
}

/// SIGTERM while the daemon connects to its database (or migrates it): the handler used to be
/// installed only once the daemon ran, so the signal's default action applied — and as PID 1 in
/// a container, which ignores a SIGTERM nobody handles, the pod waited out its grace and was
/// SIGKILLed. Now it exits 0 at once, by its own hand (not killed by the signal).
#[test]
fn sigterm_while_connecting_to_the_database_exits_at_once() {
    // A "database" that accepts the connection and never answers: the daemon waits in its
    // start-up, before any cycle.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, connection) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((socket, _)) = listener.accept() {
            let _ = accepted.send(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://jobsync:jobsync@127.0.0.1:{port}/jobsync");
    let mut child = jobsync_command_with_url("http://127.0.0.1:9", &url, dir.path())
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _held = connection
        .recv_timeout(Duration::from_secs(30))
        .expect("the daemon connects to the database");
    send_signal(child.id(), libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(2));
    let _ = child.kill();
    let status = status.expect("exits within 2 s of SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "a clean exit, not the signal's default action: {status:?}"
    );
}
