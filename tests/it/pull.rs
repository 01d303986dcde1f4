//! Pull scenarios against the real simulator, on SQLite and PostgreSQL.

use crate::common::*;
use chrono::{DateTime, Duration, Utc};
use jobsync::db::models::ChangeRow;
use jobsync::db::repo::{changes, jobs, runs, state};
use jobsync::job::Job;
use jobsync::sim::{SimConfig, SimHandle};
use jobsync::sync::cycle::Trigger;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The simulator's jobs by id.
async fn sim_jobs_by_id(sim: &SimHandle) -> BTreeMap<i64, Job> {
    sim_jobs(sim).await.into_iter().map(|j| (j.id, j)).collect()
}

fn mirror(t: &TestDb) -> BTreeMap<i64, Job> {
    jobs::all(&mut t.db.conn().unwrap())
        .unwrap()
        .into_iter()
        .filter(|r| r.remote_deleted_at.is_none())
        .map(|r| (r.content.id, r.to_job()))
        .collect()
}

fn changes_after(t: &TestDb, seq: i64) -> Vec<ChangeRow> {
    changes::since(&mut t.db.conn().unwrap(), seq, 1_000_000).unwrap()
}

fn last_seq(t: &TestDb) -> i64 {
    changes_after(t, 0).last().map_or(0, |c| c.seq)
}

fn ids_of(answer: &Value) -> BTreeSet<i64> {
    answer
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect()
}

fn seeded(campaigns: Vec<i64>, per_campaign: usize) -> SimConfig {
    SimConfig {
        campaigns,
        jobs_per_campaign: per_campaign,
        ..SimConfig::default()
    }
}

on_both_backends!(
    a_backfill_equals_the_simulator_field_for_field,
    one_cycle_brings_exactly_the_upstream_changes,
    a_cycle_with_no_upstream_change_writes_nothing,
    a_job_modified_at_the_watermark_boundary_is_not_missed,
    concurrent_modifications_during_pulls_are_never_missed,
    a_watermark_beyond_48_hours_falls_back_to_full_listings,
    an_old_watermark_lists_in_full_without_asking_beyond_the_window,
    a_full_cycle_still_discovers_untracked_campaigns,
    a_complete_listing_marks_exactly_the_removed_jobs_deleted,
    a_failed_listing_marks_nothing_deleted_and_keeps_the_watermark,
);

mod sqlite_only {
    #[test]
    fn a_backfill_keeps_the_write_ahead_log_bounded() {
        crate::common::run_on(
            super::a_backfill_keeps_the_write_ahead_log_bounded,
            &crate::common::TestDb::sqlite(),
        );
    }
}

/// The pull's commits leave checkpoints to another thread; the log must still restart, or a
/// backfill would grow the `-wal` file to the size of everything it wrote (a disk full on a
/// small volume, and slower reads for the CRM meanwhile).
async fn a_backfill_keeps_the_write_ahead_log_bounded(t: &TestDb) {
    const JOBS: usize = 100_000;
    let sim = start_sim(seeded(vec![28], JOBS)).await;
    let e = engine(t, &sim, &[28], 300);
    let summary = cycle(&e).await;
    assert_eq!(summary.pull.jobs_pulled, JOBS as i64);
    let path = t.url.strip_prefix("sqlite://").unwrap();
    let size = |p: &str| std::fs::metadata(p).map_or(0, |m| m.len());
    let (db, wal) = (size(path), size(&format!("{path}-wal")));
    // The limit, plus a few batches written while the last checkpoint ran.
    let bound = (jobsync::db::WAL_LIMIT_FRAMES as u64 + 3_000) * (4096 + 24);
    eprintln!("database {db} bytes, log {wal} bytes, bound {bound}");
    assert!(
        db > bound,
        "the backfill must write more than the bound: {db}"
    );
    assert!(wal <= bound, "the log grew to {wal} bytes");
}

async fn a_backfill_equals_the_simulator_field_for_field(t: &TestDb) {
    let sim = start_sim(seeded(vec![28, 29, 30], 400)).await;
    let e = engine(t, &sim, &[28, 29, 30], 300);
    let summary = cycle(&e).await;
    assert_eq!(summary.mode, "full");
    assert_eq!(summary.pull.campaigns_listed, [28, 29, 30]);
    let upstream = sim_jobs_by_id(&sim).await;
    assert_eq!(upstream.len(), 1200);
    assert_eq!(mirror(t), upstream);
    // Each job pulled once: the incremental pass that follows the listings receives the recently
    // modified jobs of the same campaigns again, and must skip them uncounted.
    assert_eq!(summary.pull.jobs_pulled, 1200);
    let run = &runs::recent(&mut t.db.conn().unwrap(), 1).unwrap()[0];
    assert_eq!(
        (run.status.as_str(), run.mode.as_str(), run.trigger.as_str()),
        ("ok", "full", "once")
    );
    assert_eq!(run.jobs_changed, 1200);
    // PostgreSQL stores two listings at once: still one `created` change per job.
    let changes = changes_after(t, 0);
    assert_eq!(changes.len(), 1200);
    let changed: BTreeSet<i64> = changes.iter().map(|c| c.job_id).collect();
    assert_eq!(changed, upstream.keys().copied().collect());
    assert!(
        run.api_calls >= 4,
        "one incremental + three listings: {}",
        run.api_calls
    );
}

async fn one_cycle_brings_exactly_the_upstream_changes(t: &TestDb) {
    let sim = start_sim(seeded(vec![28, 29], 200)).await;
    let e = engine(t, &sim, &[28, 29], 300);
    cycle(&e).await;
    let before = last_seq(t);
    let dialed = ids_of(&sim_post(&sim, "/_sim/dial", json!({"n": 6})).await);
    let edited = ids_of(&sim_post(&sim, "/_sim/edit", json!({"n": 4})).await);
    let created = client(&sim)
        .create_job(&fields(
            json!({"campaign": 29, "reference": "new-1", "name": "New", "numbers": ["0612345678"]}),
        ))
        .await
        .unwrap();
    let summary = cycle(&e).await;
    assert_eq!(summary.mode, "incremental");
    let new = changes_after(t, before);
    let touched: BTreeSet<i64> = new.iter().map(|c| c.job_id).collect();
    let expected: BTreeSet<i64> = dialed
        .iter()
        .chain(&edited)
        .copied()
        .chain([created.id])
        .collect();
    assert_eq!(
        touched, expected,
        "a change row for exactly the jobs that changed upstream"
    );
    let created_row = new.iter().find(|c| c.job_id == created.id).unwrap();
    assert_eq!(
        (created_row.kind.as_str(), created_row.old_state),
        ("created", None)
    );
    for change in new
        .iter()
        .filter(|c| dialed.contains(&c.job_id) && !edited.contains(&c.job_id))
    {
        assert_eq!(change.kind, "updated");
        assert_eq!(change.changed_fields, r#"["state"]"#);
        assert_ne!(change.old_state, change.new_state);
        assert_eq!(change.source, "pull");
    }
    assert_eq!(mirror(t), sim_jobs_by_id(&sim).await);
}

async fn a_cycle_with_no_upstream_change_writes_nothing(t: &TestDb) {
    let sim = start_sim(seeded(vec![28], 300)).await;
    let e = engine(t, &sim, &[28], 300);
    cycle(&e).await;
    let before = (last_seq(t), jobs::all(&mut t.db.conn().unwrap()).unwrap());
    let summary = cycle(&e).await;
    assert_eq!(
        (summary.mode, summary.api_calls, summary.pull.jobs_changed),
        ("incremental", 1, 0)
    );
    let after = (last_seq(t), jobs::all(&mut t.db.conn().unwrap()).unwrap());
    assert_eq!(before, after, "no row of jobs or job_changes was written");
}

async fn a_job_modified_at_the_watermark_boundary_is_not_missed(t: &TestDb) {
    let sim = start_sim(seeded(vec![28], 50)).await;
    // No overlap: the watermark alone must be safe.
    let e = engine(t, &sim, &[28], 0);
    reset_log(&sim).await;
    cycle(&e).await;
    let log = requests(&sim.base_url()).await;
    let first = log.iter().find(|r| r["path"] == "/j/jobs").unwrap();
    let sent_at: DateTime<Utc> = serde_json::from_value(first["at"].clone()).unwrap();
    let watermark = state::get_time(&mut t.db.conn().unwrap(), state::WATERMARK)
        .unwrap()
        .unwrap();
    assert!(
        watermark <= sent_at,
        "the watermark {watermark} is not after the pull started {sent_at}"
    );
    // Jobs changed upstream exactly at the watermark, and just after the pull's request left
    // (after the server's snapshot, so the pull could not see them).
    sim_post(
        &sim,
        "/_sim/jobs",
        json!([
            {"campaign": 28, "reference": "at-watermark", "modified_at": watermark},
            {"campaign": 28, "reference": "during-pull", "modified_at": sent_at},
        ]),
    )
    .await;
    cycle(&e).await;
    let refs: BTreeSet<String> = mirror(t)
        .values()
        .filter_map(|j| j.reference.clone())
        .collect();
    assert!(
        refs.contains("at-watermark") && refs.contains("during-pull"),
        "{refs:?}"
    );
}

async fn concurrent_modifications_during_pulls_are_never_missed(t: &TestDb) {
    let sim = start_sim(seeded(vec![28, 29], 200)).await;
    let e = engine(t, &sim, &[28, 29], 0);
    cycle(&e).await;
    set_faults(&sim, json!({"latency_ms": 30})).await;
    let editor_sim = sim.base_url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let editor_stop = stop.clone();
    let editor = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut edits = 0;
        while !editor_stop.load(std::sync::atomic::Ordering::SeqCst) {
            for route in ["/_sim/edit", "/_sim/dial"] {
                http.post(format!("{editor_sim}{route}"))
                    .json(&json!({"n": 2}))
                    .send()
                    .await
                    .unwrap();
                edits += 1;
            }
        }
        edits
    });
    for _ in 0..5 {
        cycle(&e).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let edits = editor.await.unwrap();
    assert!(edits > 0);
    // One quiet cycle with no overlap: anything a racing pull missed would still differ.
    cycle(&e).await;
    assert_eq!(mirror(t), sim_jobs_by_id(&sim).await);
}

async fn a_watermark_beyond_48_hours_falls_back_to_full_listings(t: &TestDb) {
    let sim = start_sim(seeded(vec![28], 100)).await;
    // The API's clock jumps 49 hours ahead of ours and of its last answer: as if jobsync had been
    // stopped that long. A jump beyond `api.max_date_skew_secs` (24 h) would not be believed.
    let mut opts = options(&sim, "dev-token");
    opts.max_date_skew = std::time::Duration::from_secs(72 * 3600);
    let mut e = engine(t, &sim, &[28], 300);
    e.client = jobsync::api::ApiClient::new(opts).unwrap();
    cycle(&e).await;
    sim_post(&sim, "/_sim/clock", json!({"offset_hours": 49})).await;
    sim_post(&sim, "/_sim/dial", json!({"n": 5})).await;
    reset_log(&sim).await;
    let summary = cycle(&e).await;
    assert!(
        summary.pull.incremental_refused,
        "the simulator refused modified_since"
    );
    assert_eq!((summary.ok, summary.mode), (true, "full"));
    let log = requests(&sim.base_url()).await;
    assert!(log.iter().any(|r| r["status"] == 400));
    assert!(
        log.iter()
            .any(|r| r["query"].as_str().is_some_and(|q| q == "campaign=28"))
    );
    assert_eq!(mirror(t), sim_jobs_by_id(&sim).await);
    // The new watermark is the server's clock: the next cycle is incremental again.
    let next = cycle(&e).await;
    assert_eq!(
        (next.mode, next.pull.incremental_refused),
        ("incremental", false)
    );
}

async fn an_old_watermark_lists_in_full_without_asking_beyond_the_window(t: &TestDb) {
    let sim = start_sim(seeded(vec![28], 100)).await;
    let e = engine(t, &sim, &[28], 300);
    cycle(&e).await;
    let old = Utc::now() - Duration::hours(47);
    state::set_time(&mut t.db.conn().unwrap(), state::WATERMARK, old).unwrap();
    reset_log(&sim).await;
    let summary = cycle(&e).await;
    assert_eq!(summary.mode, "full");
    assert!(
        !summary.pull.incremental_refused,
        "jobsync stayed inside the API's window"
    );
    assert!(
        requests(&sim.base_url())
            .await
            .iter()
            .all(|r| r["status"] == 200)
    );
}

async fn a_full_cycle_still_discovers_untracked_campaigns(t: &TestDb) {
    let sim = start_sim(seeded(vec![28, 31], 100)).await;
    client(&sim)
        .create_job(&fields(json!({"campaign": 31, "reference": "fresh"})))
        .await
        .unwrap();
    let e = engine(t, &sim, &[28], 300);
    let summary = cycle(&e).await;
    assert_eq!(
        summary.pull.campaigns_listed,
        [28, 31],
        "31 was discovered and listed in the same cycle"
    );
    assert_eq!(mirror(t), sim_jobs_by_id(&sim).await);
    let tracked: Vec<i64> = state::tracked_campaigns(&mut t.db.conn().unwrap())
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(tracked, [28, 31]);
}

async fn a_complete_listing_marks_exactly_the_removed_jobs_deleted(t: &TestDb) {
    let sim = start_sim(seeded(vec![28, 29], 50)).await;
    let mut e = engine(t, &sim, &[28, 29], 300);
    cycle(&e).await;
    let before = last_seq(t);
    let removed: BTreeSet<i64> = [3, 17, 60].into();
    for id in &removed {
        reqwest::Client::new()
            .delete(format!("{}/_sim/jobs/{id}", sim.base_url()))
            .send()
            .await
            .unwrap();
    }
    e.sync.full_resync_after_hours = 1;
    force_full_listing(&t.db);
    let summary = cycle(&e).await;
    assert_eq!(summary.pull.marked_deleted, 3);
    let rows = jobs::all(&mut t.db.conn().unwrap()).unwrap();
    let deleted: BTreeSet<i64> = rows
        .iter()
        .filter(|r| r.remote_deleted_at.is_some())
        .map(|r| r.content.id)
        .collect();
    assert_eq!(deleted, removed);
    let new = changes_after(t, before);
    assert!(
        new.iter()
            .all(|c| c.kind == "deleted" && removed.contains(&c.job_id)),
        "{new:?}"
    );
    assert_eq!(new.len(), 3);
    assert_eq!(mirror(t), sim_jobs_by_id(&sim).await);
}

async fn a_failed_listing_marks_nothing_deleted_and_keeps_the_watermark(t: &TestDb) {
    // Two campaigns: on PostgreSQL their listings run at once, and both fail.
    let sim = start_sim(seeded(vec![28, 29], 50)).await;
    let mut e = engine(t, &sim, &[28, 29], 300);
    cycle(&e).await;
    let watermark = state::get_time(&mut t.db.conn().unwrap(), state::WATERMARK).unwrap();
    reqwest::Client::new()
        .delete(format!("{}/_sim/jobs/5", sim.base_url()))
        .send()
        .await
        .unwrap();
    force_full_listing(&t.db);
    set_faults(&sim, json!({"fail_rate": 1.0})).await;
    e.client = {
        let mut options = options(&sim, "dev-token");
        options.max_attempts = 2;
        jobsync::api::ApiClient::new(options).unwrap()
    };
    let summary = e.cycle(Trigger::Once).run().await.unwrap();
    assert!(!summary.ok);
    assert!(
        summary.error.as_deref().unwrap().contains("500"),
        "{:?}",
        summary.error
    );
    let mut c = t.db.conn().unwrap();
    assert_eq!(
        jobs::counts(&mut c).unwrap(),
        (100, 0),
        "nothing marked deleted"
    );
    assert_eq!(
        state::get_time(&mut c, state::WATERMARK).unwrap(),
        watermark
    );
    let run = &runs::recent(&mut c, 1).unwrap()[0];
    assert_eq!(run.status, "failed");
    assert!(run.error.as_deref().unwrap().contains("500"));
    // The next good cycle converges.
    clear_faults(&sim).await;
    cycle(&e).await;
    assert_eq!(jobs::counts(&mut t.db.conn().unwrap()).unwrap(), (99, 1));
}
