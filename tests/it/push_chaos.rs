//! The push under chaos (issue 23): a real daemon pushing a CRM's creates and patches to an API
//! that fails in every way the gateway faults allow (applied then 502, applied then dropped,
//! dropped, 500, 429, slow), and no uniqueness check of references; the daemon is SIGKILLed or
//! SIGTERMed at random points every few seconds and started again. After the faults stop, no row
//! may stay open past the first cycle that begins after it is due (its lookup delay, its backoff,
//! the settle time), every reference must exist once upstream, and every job carry the CRM's last
//! patch.
//!
//! `JOBSYNC_TEST_CHAOS_SECS` sets how long the chaos lasts (default 45 s).

use crate::common::*;
use jobsync::db::models::OutboxStatus;
use jobsync::sim::SimConfig;
use rand::Rng;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

on_both_backends!(a_push_killed_and_stopped_at_random_under_every_fault_settles_every_row);

const CAMPAIGN: i64 = 28;
/// The API's timeout: a create in doubt is looked up this long plus 10 s after it was sent (its
/// `next_attempt_at`).
const TIMEOUT_SECS: u64 = 2;
/// `push.settle_secs`: a create looked up absent is sent again once a lookup this long after its
/// first send agrees.
const SETTLE: Duration = Duration::from_secs(5);

fn chaos_duration() -> Duration {
    let secs = std::env::var("JOBSYNC_TEST_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    Duration::from_secs(secs)
}

fn a_push_killed_and_stopped_at_random_under_every_fault_settles_every_row(t: &TestDb) {
    let rt = runtime();
    let sim = rt.block_on(async {
        let sim = start_sim(SimConfig {
            campaigns: vec![CAMPAIGN],
            jobs_per_campaign: 10,
            allow_duplicate_references: true,
            ..SimConfig::default()
        })
        .await;
        set_faults(
            &sim,
            json!({
                "latency_ms": 300,
                "applied_fail_rate": 0.1,
                "applied_drop_rate": 0.05,
                "drop_rate": 0.05,
                "fail_rate": 0.05,
                "throttle_rate": 0.05,
                "retry_after_secs": 0,
            }),
        )
        .await;
        sim
    });
    let timeout = TIMEOUT_SECS.to_string();
    let settle = SETTLE.as_secs().to_string();
    let env = [
        ("JOBSYNC_API__BULK_SIZE", "20"),
        ("JOBSYNC_API__CONCURRENCY", "2"),
        ("JOBSYNC_API__REQUESTS_PER_SECOND", "1000"),
        ("JOBSYNC_API__MAX_ATTEMPTS", "2"),
        ("JOBSYNC_API__TIMEOUT_SECS", timeout.as_str()),
        ("JOBSYNC_PUSH__SETTLE_SECS", settle.as_str()),
        // Rows fail only when something is wrong, not because the chaos lasted.
        ("JOBSYNC_PUSH__MAX_ROW_ATTEMPTS", "1000"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let mut last_label: BTreeMap<String, String> = BTreeMap::new();
    let mut n = 0usize;
    let (mut kills, mut stops) = (0, 0);
    let chaos = chaos_duration();
    let began = Instant::now();
    while began.elapsed() < chaos {
        // The CRM writes: 100 creates, and patches of earlier references, each a new label — a
        // push of a few seconds at 300 ms a call, so that most signals land in the middle of it.
        let mut rows = Vec::new();
        for _ in 0..100 {
            let reference = format!("c-{n}");
            rows.push(create(
                CAMPAIGN,
                &reference,
                json!({"name": "Chaos", "numbers": ["+33612345678"]}),
            ));
            if n > 0 {
                let earlier = format!("c-{}", rng.gen_range(0..n));
                let label = format!("p-{n}");
                rows.push(patch_ref(CAMPAIGN, &earlier, json!({"label": label})));
                last_label.insert(earlier, label);
            }
            n += 1;
        }
        insert(&t.db, &rows);
        let mut daemon = Daemon::start_with_url(&rt, &sim.base_url(), &t.url, dir.path(), &env);
        // A random point of its work: the fault injected, not a synchronisation.
        std::thread::sleep(Duration::from_millis(rng.gen_range(500..4_000)));
        if rng.gen_bool(0.5) {
            daemon.signal(libc::SIGKILL);
            kills += 1;
        } else {
            daemon.signal(libc::SIGTERM);
            let status = daemon.wait_exit(Duration::from_secs(25));
            let log = daemon.whole_log().join("\n");
            let status = status.unwrap_or_else(|| panic!("no exit 25 s after SIGTERM:\n{log}"));
            assert!(status.success(), "exit 0 on SIGTERM ({status}):\n{log}");
            stops += 1;
        }
        drop(daemon);
    }

    // The faults stop; one daemon runs on. Each open row is due by its `next_attempt_at` (a
    // create in doubt: its lookup; a row backing off: its retry), a create sent before once the
    // settle time after its first send has passed too; the first cycle that begins after the
    // last is due must leave none open (however long that cycle takes to push the backlog the
    // chaos left).
    rt.block_on(set_faults(
        &sim,
        json!({"latency_ms": 0, "applied_fail_rate": 0.0, "applied_drop_rate": 0.0,
               "drop_rate": 0.0, "fail_rate": 0.0, "throttle_rate": 0.0}),
    ));
    let due = last_due(&t.db, SETTLE);
    let open_at_calm = open_rows(&t.db);
    let daemon = Daemon::start_with_url(&rt, &sim.base_url(), &t.url, dir.path(), &env);
    let settled_in = settled_one_cycle_after(&t.db, due, Duration::from_secs(900));
    let status = daemon.terminate();
    assert!(status.success());

    let rows = all_rows(&t.db);
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r.status == OutboxStatus::Failed)
        .take(5)
        .collect();
    let problems = rt.block_on(upstream_problems(&sim, CAMPAIGN, n, &last_label));
    assert!(
        problems.is_empty() && failed.is_empty(),
        "{} problems after {n} creates, {kills} SIGKILLs and {stops} SIGTERMs: {:?}; failed rows: \
         {failed:?}",
        problems.len(),
        problems.iter().take(10).collect::<Vec<_>>()
    );
    assert!(kills + stops >= 5, "only {kills} kills and {stops} stops");
    eprintln!(
        "{n} creates, {kills} SIGKILLs, {stops} SIGTERMs; {open_at_calm} rows open when the \
         faults stopped, all settled {settled_in:?} later (the last due at {due})"
    );
}
