//! A real `jobsync --once` killed with SIGKILL in the middle of a push, then restarted, ends in
//! the same state as an uninterrupted push: every reference exactly once upstream, every row
//! settled.

use crate::common::*;
use jobsync::db::models::NewOutboxRow;
use jobsync::job::Job;
use jobsync::sim::{Hold, SimConfig, SimHandle};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

on_both_backends!(a_push_killed_midway_and_restarted_ends_like_an_uninterrupted_one);

fn workload() -> Vec<NewOutboxRow> {
    let mut rows = Vec::new();
    for n in 0..600 {
        let payload = json!({"name": format!("K {n}"), "numbers": ["+33612345678"]});
        rows.push(create(28 + n % 2, &format!("k-{n}"), payload));
    }
    for n in (0..600).step_by(7) {
        rows.push(patch_ref(
            28 + n % 2,
            &format!("k-{n}"),
            json!({"city": "Lyon"}),
        ));
    }
    rows
}

fn once(t: &TestDb, sim: &SimHandle, logs: &std::path::Path, name: &str) -> Child {
    let log = std::fs::File::create(logs.join(name)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_jobsync"))
        .args(["--once", "--database-url", &t.url])
        .env("JOBSYNC_API__TOKEN", "dev-token")
        .env("JOBSYNC_API__BASE_URL", sim.base_url())
        .env("JOBSYNC_SERVER__LISTEN", "")
        .env("JOBSYNC_API__BULK_SIZE", "20")
        .env("JOBSYNC_API__CONCURRENCY", "2")
        .env("JOBSYNC_API__REQUESTS_PER_SECOND", "1000")
        // Creates left in doubt by the kill are looked up this long (plus a margin) after they
        // were sent.
        .env("JOBSYNC_API__TIMEOUT_SECS", "2")
        // The chunks the killed process marked but never sent are not found by their lookup;
        // they are sent again once a lookup this long after their first send agrees.
        .env("JOBSYNC_PUSH__SETTLE_SECS", "5")
        .env("JOBSYNC_LOG__FORMAT", "json")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("jobsync starts")
}

/// What a CRM cares about upstream, by reference.
fn by_reference(jobs: Vec<Job>) -> BTreeMap<(i64, String), Vec<String>> {
    let mut map: BTreeMap<(i64, String), Vec<String>> = BTreeMap::new();
    for job in jobs {
        let key = (job.campaign, job.reference.clone().unwrap_or_default());
        let seen = format!(
            "{:?} {:?} {:?} {}",
            job.name, job.city, job.numbers, job.state
        );
        map.entry(key).or_default().push(seen);
    }
    map
}

fn a_push_killed_midway_and_restarted_ends_like_an_uninterrupted_one(t: &TestDb) {
    block_on(async {
        let logs = tempfile::tempdir().unwrap();
        // The uninterrupted run, for comparison.
        let calm = start_sim(SimConfig::default()).await;
        let baseline_db = if t.url.starts_with("sqlite") {
            TestDb::sqlite()
        } else {
            TestDb::postgres().unwrap()
        };
        insert(&baseline_db.db, &workload());
        push(&baseline_db.db, &client(&calm)).await;
        let expected = by_reference(sim_jobs(&calm).await);

        let sim = start_sim(SimConfig::default()).await;
        // Ten bulk creates go through (200 rows); every later one is held at the simulator,
        // unanswered and not yet applied, so the push stops there with rows in flight for as
        // long as the test wants, however fast or slow the machine.
        hold(
            &sim,
            Hold::new(Some("POST"), "/j/jobs/bulk/create").after(10),
        );
        insert(&t.db, &workload());
        let mut child = once(t, &sim, logs.path(), "first.log");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // A create held at the simulator: its rows are in flight until it is answered,
            // which it is not before the kill. The rows of the creates answered are done once
            // recorded.
            let rows = all_rows(&t.db);
            if sim.held() > 0
                && count_status(&rows, "in_flight") > 0
                && count_status(&rows, "done") >= 200
            {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(logs.path().join("first.log")).unwrap();
                panic!("jobsync finished ({status}) before it could be killed:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "no create held with rows in flight within 60 s ({} held)",
                sim.held()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        let left = all_rows(&t.db);
        let in_flight = count_status(&left, "in_flight");
        let unsettled = in_flight + count_status(&left, "pending");
        assert!(in_flight > 0, "killed mid-push");
        // The creates held are applied now that their client is gone: the restart finds jobs
        // upstream that it never got an answer for, and must look them up, not send them again.
        let released = release(&sim);
        wait_none_held(&sim).await;
        assert!(released > 0);

        // Restarted: each run settles what it can; the creates in doubt are looked up once
        // their wait has passed.
        let deadline = Instant::now() + Duration::from_secs(90);
        for run in 1.. {
            let name = format!("run-{run}.log");
            let status = once(t, &sim, logs.path(), &name).wait().unwrap();
            let log = std::fs::read_to_string(logs.path().join(&name)).unwrap();
            assert!(status.success(), "the restarted run succeeds:\n{log}");
            let open = open_rows(&t.db);
            if open == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{open} rows still open after {run} runs"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        let rows = all_rows(&t.db);
        for row in &rows {
            assert!(
                row.status == "done" || row.status == "superseded",
                "row left {}: {row:?}",
                row.status
            );
            assert!(row.result_job_id.is_some(), "{row:?}");
        }
        let got = by_reference(sim_jobs(&sim).await);
        assert!(
            got.values().all(|copies| copies.len() == 1),
            "no duplicate upstream"
        );
        assert_eq!(got, expected, "same end state as the uninterrupted run");
        eprintln!(
            "killed with {in_flight} rows in flight and {unsettled} unsettled, {released} \
             creates applied after the kill; converged"
        );
    })
}
