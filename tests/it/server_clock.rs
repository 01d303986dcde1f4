//! Schedules follow the API's clock, not ours: `jobsync --once` run under `faketime` (libfaketime,
//! the local clock 47 hours ahead) against the simulator on the true time neither re-lists a
//! campaign early nor asks for a `modified_since` the API refuses — and still re-lists on schedule
//! once the API's own clock has moved past `sync.full_resync_after_hours`.

use crate::common::*;
use jobsync::db::Db;
use jobsync::db::repo::runs;
use jobsync::sim::SimConfig;
use std::path::Path;
use std::process::{Command, Output};

/// `jobsync --once` with the local clock shifted by `offset` (e.g. `+47h`), or not at all.
fn once_at(base_url: &str, db_path: &Path, offset: Option<&str>) -> Output {
    let base = jobsync_command(base_url, db_path);
    let mut cmd = match offset {
        None => base,
        Some(offset) => {
            let mut cmd = Command::new("faketime");
            cmd.args(["-f", offset, base.get_program().to_str().unwrap()]);
            for (key, value) in base.get_envs() {
                match value {
                    Some(value) => cmd.env(key, value),
                    None => cmd.env_remove(key),
                };
            }
            cmd.current_dir(db_path.parent().unwrap())
                // Timers and timeouts keep real time; only the wall clock is shifted.
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            cmd
        }
    };
    cmd.arg("--once")
        .env("JOBSYNC_SYNC__CAMPAIGNS", "28")
        .output()
        .expect("run jobsync (is faketime installed? apt-get install faketime)")
}

fn last_run(db_path: &Path) -> jobsync::db::models::RunRow {
    let db = Db::open(&format!("sqlite://{}", db_path.display())).unwrap();
    runs::recent(&mut db.conn().unwrap(), 1).unwrap().remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_47_hours_ahead_schedules_by_the_apis_clock() {
    let sim = start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 50,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let url = sim.base_url();
    let run = |offset: Option<&'static str>| {
        let (url, db_path) = (url.clone(), db_path.clone());
        tokio::task::spawn_blocking(move || once_at(&url, &db_path, offset))
    };

    let first = run(None).await.unwrap();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(last_run(&db_path).mode, "full");

    // Ahead by 47 hours locally, seconds later for the API: nothing is due.
    reset_log(&sim).await;
    let ahead = run(Some("+47h")).await.unwrap();
    let stderr = String::from_utf8_lossy(&ahead.stderr);
    assert_eq!(ahead.status.code(), Some(0), "{stderr}");
    let second = last_run(&db_path);
    assert_eq!(
        (second.status.as_str(), second.mode.as_str()),
        ("ok", "incremental"),
        "no early re-listing: {stderr}"
    );
    // A fresh process first asks the API's time with a one-minute listing by its own clock,
    // which this API refuses (a refusal carries the `Date` too); the pull's own requests are
    // then by the API's clock and never refused.
    let log = requests(&url).await;
    assert!(log.len() >= 2, "{log:?}");
    assert!(
        log[1..].iter().all(|r| r["status"] == 200),
        "no modified_since the API refuses: {log:?}"
    );

    // The API's clock moves 25 hours on: the re-listing is due by its clock, and happens.
    sim_post(&sim, "/_sim/clock", serde_json::json!({"offset_hours": 25})).await;
    let due = run(Some("+47h")).await.unwrap();
    assert_eq!(due.status.code(), Some(0), "{due:?}");
    let third = last_run(&db_path);
    assert_eq!((third.status.as_str(), third.mode.as_str()), ("ok", "full"));
}
