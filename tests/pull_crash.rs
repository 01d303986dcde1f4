//! A backfill killed with SIGKILL resumes without listing completed campaigns again, the
//! watermark is never ahead of the data, the abandoned run is marked failed, and the mirror
//! converges to the simulator.

mod common;

use common::*;
use jobsync::db::Db;
use jobsync::db::repo::{jobs, runs, state};
use jobsync::sim::SimConfig;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_from_its_checkpoints() {
    let campaigns: Vec<i64> = (1..=6).collect();
    let sim = start_sim(SimConfig {
        campaigns: campaigns.clone(),
        jobs_per_campaign: 2000,
        ..SimConfig::default()
    })
    .await;
    // Each listing waits, so the backfill is slow enough to be killed in the middle.
    set_faults(&sim, json!({"latency_ms": 400})).await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let campaign_list = "1,2,3,4,5,6";
    let mut child = jobsync_command(&sim.base_url(), &db_path)
        .arg("--once")
        .env("JOBSYNC_SYNC__CAMPAIGNS", campaign_list)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Wait (with a deadline) until two campaigns are listed completely, then kill for real.
    let deadline = Instant::now() + Duration::from_secs(60);
    let db = loop {
        assert!(
            Instant::now() < deadline,
            "the backfill never got two campaigns done"
        );
        if let Ok(db) = Db::connect(&format!("sqlite://{}", db_path.display()))
            && let Ok(mut c) = db.conn()
            && let Ok(tracked) = state::tracked_campaigns(&mut c)
            && tracked.iter().filter(|t| t.1.is_some()).count() >= 2
        {
            break db;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let mut c = db.conn().unwrap();
    let done_before: Vec<i64> = state::tracked_campaigns(&mut c)
        .unwrap()
        .into_iter()
        .filter(|t| t.1.is_some())
        .map(|t| t.0)
        .collect();
    assert!(
        done_before.len() >= 2 && done_before.len() < 6,
        "{done_before:?}"
    );
    assert_eq!(
        state::get(&mut c, state::WATERMARK).unwrap(),
        None,
        "no watermark ahead of the data"
    );
    assert_eq!(runs::recent(&mut c, 1).unwrap()[0].status, "running");
    drop(c);

    set_faults(&sim, json!({"latency_ms": 0})).await;
    reset_log(&sim).await;
    let base = sim.base_url();
    let path = db_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        once(&base, &path, &[("JOBSYNC_SYNC__CAMPAIGNS", campaign_list)])
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log = requests(&sim.base_url()).await;
    let listed: Vec<i64> = log
        .iter()
        .filter_map(|r| r["query"].as_str()?.strip_prefix("campaign=")?.parse().ok())
        .collect();
    for done in &done_before {
        assert!(
            !listed.contains(done),
            "campaign {done} was listed again: {listed:?}"
        );
    }
    let mut c = db.conn().unwrap();
    let recent = runs::recent(&mut c, 2).unwrap();
    assert_eq!(recent[0].status, "ok");
    assert_eq!(
        recent[1].status, "failed",
        "the killed run is marked failed"
    );
    let upstream: BTreeMap<i64, _> = sim_state(&sim)
        .await
        .into_iter()
        .map(|v| {
            serde_json::from_value::<jobsync::api::models::Job>(v)
                .unwrap()
                .truncated_to_micros()
        })
        .map(|j| (j.id, j))
        .collect();
    let mirror: BTreeMap<i64, _> = jobs::all(&mut c)
        .unwrap()
        .into_iter()
        .map(|r| (r.content.id, r.to_job()))
        .collect();
    assert_eq!(mirror, upstream);
}
