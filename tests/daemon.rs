//! The daemon as operators run it: the real binary, the real simulator, SIGTERM.

mod common;

use common::*;
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
    let (status, body) = daemon.wait_until("/readyz", |status, _| status == 503);
    assert_eq!(status, 503);
    assert!(
        body.contains("refused the API token") || body.contains("token"),
        "{body}"
    );
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
    // Still one cycle at the API: the other daemon's ticks were skipped, not run beside it.
    assert_eq!(sim.held(), 1, "two cycles at once");
    assert_eq!(sim.release(), 1);
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
    let db = Db::open(&format!("sqlite://{}", db_path.display())).unwrap();
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
