//! A backfill killed with SIGKILL resumes without listing completed campaigns again, the
//! watermark is never ahead of the data, the abandoned run is marked failed, and the mirror
//! converges to the simulator.

use crate::common::*;
use jobsync::db::Db;
use jobsync::db::repo::{jobs, runs, state};
use jobsync::sim::{Hold, SimConfig};
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_from_its_checkpoints() {
    let campaigns: Vec<i64> = (1..=6).collect();
    let sim = start_sim(SimConfig {
        campaigns: campaigns.clone(),
        jobs_per_campaign: 2000,
        ..SimConfig::default()
    })
    .await;
    // Campaigns are listed in order, one at a time on SQLite: the listing of campaign 3 is
    // held at the simulator, so the backfill stops there with campaigns 1 and 2 complete.
    hold(&sim, Hold::new(Some("GET"), "/j/jobs?campaign=3"));
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

    // The listing of campaign 3 reached the simulator: kill for real while it waits there.
    wait_held(&sim, 1).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The held listing is answered to nobody, and logged before the log is reset below.
    release(&sim);
    wait_none_held(&sim).await;

    let db = Db::connect(&format!("sqlite://{}", db_path.display())).unwrap();
    let mut c = db.conn().unwrap();
    let done_before: Vec<i64> = state::tracked_campaigns(&mut c)
        .unwrap()
        .into_iter()
        .filter(|t| t.1.is_some())
        .map(|t| t.0)
        .collect();
    assert_eq!(
        done_before,
        [1, 2],
        "the campaigns listed before the held one"
    );
    assert_eq!(
        state::get(&mut c, state::WATERMARK).unwrap(),
        None,
        "no watermark ahead of the data"
    );
    assert_eq!(runs::recent(&mut c, 1).unwrap()[0].status, "running");
    drop(c);

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

    let listed: Vec<i64> = sim_requests(&sim)
        .iter()
        .filter_map(|r| r.query.as_deref()?.strip_prefix("campaign=")?.parse().ok())
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
            serde_json::from_value::<jobsync::job::Job>(v)
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
