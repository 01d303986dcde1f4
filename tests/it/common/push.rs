//! Helpers for the push tests: outbox rows in, push runs, and what the simulator and the mirror
//! hold afterwards.

use super::{matching, requests, sim_state};
use jobsync::api::ApiClient;
use jobsync::config::{PushConfig, SyncConfig};
use jobsync::db::Db;
use jobsync::db::models::{NewOutboxRow, OutboxRow};
use jobsync::db::repo::{jobs, outbox};
use jobsync::job::Job;
use jobsync::shutdown::StopFlag;
use jobsync::sim::SimHandle;
use jobsync::sync::SyncError;
use jobsync::sync::pull;
use jobsync::sync::pull::{Pull, PullStats};
use jobsync::sync::push::{Push, PushStats, PushTuning};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

pub fn create(campaign: i64, reference: &str, payload: Value) -> NewOutboxRow {
    row("create", Some(campaign), Some(reference), None, payload)
}

pub fn patch_ref(campaign: i64, reference: &str, payload: Value) -> NewOutboxRow {
    row("patch", Some(campaign), Some(reference), None, payload)
}

pub fn patch_id(job_id: i64, payload: Value) -> NewOutboxRow {
    row("patch", None, None, Some(job_id), payload)
}

pub fn unqueue_ref(campaign: i64, reference: &str) -> NewOutboxRow {
    row(
        "unqueue",
        Some(campaign),
        Some(reference),
        None,
        serde_json::json!({}),
    )
}

pub fn unqueue_id(job_id: i64) -> NewOutboxRow {
    row("unqueue", None, None, Some(job_id), serde_json::json!({}))
}

pub fn row(
    op: &str,
    campaign: Option<i64>,
    reference: Option<&str>,
    job_id: Option<i64>,
    payload: Value,
) -> NewOutboxRow {
    NewOutboxRow {
        op: op.into(),
        campaign,
        reference: reference.map(str::to_string),
        job_id,
        payload: payload.to_string(),
    }
}

pub fn insert(db: &Db, rows: &[NewOutboxRow]) {
    let mut c = db.conn().unwrap();
    outbox::insert(&mut c, rows).unwrap();
}

/// Every outbox row, in id order.
pub fn all_rows(db: &Db) -> Vec<OutboxRow> {
    let mut c = db.conn().unwrap();
    let mut rows = outbox::list(&mut c, None, i64::MAX).unwrap();
    rows.reverse();
    rows
}

pub fn by_id(db: &Db) -> HashMap<i64, OutboxRow> {
    all_rows(db).into_iter().map(|r| (r.id, r)).collect()
}

/// One push with no wait between cycles (rows deferred in a run are still skipped in that run).
pub async fn push(db: &Db, client: &ApiClient) -> PushStats {
    push_with(db, client, quick_tuning()).await
}

/// Zero row backoff, and an in-doubt create looked up one second after its request's timeout.
pub fn quick_tuning() -> PushTuning {
    PushTuning {
        backoff_base: Duration::ZERO,
        backoff_cap: Duration::ZERO,
        lookup_margin: Duration::from_secs(1),
        ..PushTuning::default()
    }
}

/// One push with the given knobs, and a create in doubt taken as never applied when a lookup 2 s
/// after its first send does not find it (`push.settle_secs`, 300 s by default: the tests of a
/// slow commit set their own).
pub async fn push_with(db: &Db, client: &ApiClient, tuning: PushTuning) -> PushStats {
    let config = PushConfig {
        settle_secs: 2,
        ..PushConfig::default()
    };
    push_alone(db, client, &config, tuning, &StopFlag::new())
        .await
        .expect("push runs")
}

/// One push on its own, counted as `jobsync --once` counts it: calls that could not reach the
/// API are an outcome (their rows are recorded and wait), not the push's failure.
pub async fn push_alone(
    db: &Db,
    client: &ApiClient,
    config: &PushConfig,
    tuning: PushTuning,
    stop: &StopFlag,
) -> Result<PushStats, SyncError> {
    let mut stats = PushStats::default();
    match Push::new(db, client, config, stop)
        .tuning(tuning)
        .run(&mut stats)
        .await
    {
        Ok(()) | Err(SyncError::PushUnreachable { .. }) => Ok(stats),
        Err(e) => Err(e),
    }
}

/// One pull on its own; progress to the log.
pub async fn pull_alone(
    db: &Db,
    client: &ApiClient,
    config: &SyncConfig,
    stop: &StopFlag,
) -> Result<PullStats, SyncError> {
    let mut stats = PullStats::default();
    Pull::new(db, client, config, stop).run(&mut stats).await?;
    Ok(stats)
}

/// A pull of campaigns 28 and 29, so that the mirror knows the simulator's seeded jobs.
pub async fn pull(db: &Db, client: &ApiClient) {
    let config = SyncConfig {
        campaigns: vec![28, 29],
        ..SyncConfig::default()
    };
    pull_alone(db, client, &config, &StopFlag::new())
        .await
        .expect("pull runs");
}

/// The simulator's jobs as the API's type.
pub async fn sim_jobs(sim: &SimHandle) -> Vec<Job> {
    sim_state(sim)
        .await
        .into_iter()
        .map(|j| {
            serde_json::from_value::<Job>(j)
                .unwrap()
                .truncated_to_micros()
        })
        .collect()
}

/// The simulator's jobs by (campaign, reference), with how many jobs share each key.
pub async fn sim_by_ref(sim: &SimHandle) -> HashMap<(i64, String), Vec<Job>> {
    let mut map: HashMap<(i64, String), Vec<Job>> = HashMap::new();
    for job in sim_jobs(sim).await {
        if let Some(r) = job.reference.clone() {
            map.entry((job.campaign, r)).or_default().push(job);
        }
    }
    map
}

/// Asserts that the mirror holds exactly what the simulator holds.
pub async fn assert_mirror_equals_sim(db: &Db, sim: &SimHandle) {
    let mut upstream = sim_jobs(sim).await;
    upstream.sort_by_key(|j| j.id);
    let mut c = db.conn().unwrap();
    let mirror: Vec<Job> = jobs::all(&mut c)
        .unwrap()
        .iter()
        .map(|r| r.to_job())
        .collect();
    assert_eq!(mirror.len(), upstream.len(), "mirror and simulator sizes");
    for (m, u) in mirror.iter().zip(&upstream) {
        assert_eq!(m, u, "job {} differs between mirror and simulator", u.id);
    }
}

/// Bulk POSTs in the simulator's log, by endpoint suffix (`create`, `patch`, `unqueue`).
pub async fn bulk_calls(sim: &SimHandle, kind: &str) -> usize {
    let log = requests(&sim.base_url()).await;
    matching(&log, "POST", &format!("/j/jobs/bulk/{kind}")).len()
}

pub fn count_status(rows: &[OutboxRow], status: &str) -> usize {
    rows.iter().filter(|r| r.status == status).count()
}

/// Outbox rows still to push: `pending` or `in_flight`.
pub fn open_rows(db: &Db) -> usize {
    let rows = all_rows(db);
    count_status(&rows, "pending") + count_status(&rows, "in_flight")
}

/// When every open row is due at the latest: its `next_attempt_at` (a create in doubt: its
/// lookup; a row backing off: its retry), and for a create sent before, `settle` after its first
/// send (a create a lookup finds absent is sent again only then).
#[allow(dead_code)]
pub fn last_due(db: &Db, settle: Duration) -> chrono::DateTime<chrono::Utc> {
    let settle = chrono::Duration::from_std(settle).unwrap();
    all_rows(db)
        .iter()
        .filter(|r| r.status == "pending" || r.status == "in_flight")
        .map(|r| {
            let due = r.next_attempt_at.as_utc();
            r.first_sent_at
                .map_or(due, |sent| due.max(sent.as_utc() + settle))
        })
        .max()
        .unwrap_or_else(chrono::Utc::now)
        .max(chrono::Utc::now())
}

/// "No row stays open beyond its due time plus one cycle": waits (within `limit`) until a cycle
/// that began after `due` has finished, or until no row is open; then asserts none is. Answers
/// how long it waited.
#[allow(dead_code)]
pub fn settled_one_cycle_after(
    db: &Db,
    due: chrono::DateTime<chrono::Utc>,
    limit: Duration,
) -> Duration {
    let began = std::time::Instant::now();
    loop {
        if open_rows(db) == 0 {
            return began.elapsed();
        }
        let runs = jobsync::db::repo::runs::recent(&mut db.conn().unwrap(), 20).unwrap();
        let after = runs
            .iter()
            .find(|r| r.started_at.as_utc() > due && r.finished_at.is_some());
        if let Some(run) = after {
            let open: Vec<_> = all_rows(db)
                .into_iter()
                .filter(|r| r.status == "pending" || r.status == "in_flight")
                .collect();
            assert!(
                open.is_empty(),
                "{} rows still open after the cycle that began after they were all due ({due}): \
                 {run:?}; e.g. {:?}",
                open.len(),
                open.iter().take(3).collect::<Vec<_>>()
            );
            return began.elapsed();
        }
        assert!(
            began.elapsed() < limit,
            "no cycle began after {due} and finished within {limit:?}; {} rows open",
            open_rows(db)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What is wrong upstream with the creates `c-0` … `c-{n-1}` of `campaign` a CRM wrote, each
/// with the label of its last patch in `last_label`: a reference missing, there more than once,
/// or carrying another label than the CRM's last. Empty when all is well.
#[allow(dead_code)]
pub async fn upstream_problems(
    sim: &SimHandle,
    campaign: i64,
    n: usize,
    last_label: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let upstream = sim_by_ref(sim).await;
    let mut problems = Vec::new();
    for i in 0..n {
        let reference = format!("c-{i}");
        match upstream
            .get(&(campaign, reference.clone()))
            .map(Vec::as_slice)
        {
            None | Some([]) => problems.push(format!("{reference} missing upstream")),
            Some([job]) => {
                let want = last_label.get(&reference).map(String::as_str);
                if job.label.as_deref() != want {
                    problems.push(format!(
                        "{reference}: label {:?} upstream, the CRM's last is {want:?}",
                        job.label
                    ));
                }
            }
            Some(jobs) => problems.push(format!("{reference} {} times upstream", jobs.len())),
        }
    }
    problems
}
