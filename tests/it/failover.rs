//! Replicas that fail over (issue 14): three real daemons (`jobsync run`) on one PostgreSQL
//! database; the active syncer is killed with SIGKILL in the middle of a push. Another replica
//! must take over within about a tick, look up the creates the dead one left in doubt, and end
//! where an uninterrupted push ends: every reference exactly once upstream (counted in the
//! simulator, where a duplicate would do its damage), every outbox row settled, the mirror equal
//! to the simulator — while a changefeed reader polling `seq > last` across the failover misses
//! no row.
//!
//! The simulator applies every create 2 s after it arrives, even when its client has gone (a
//! slow commit: `late_apply_rate` 1), and accepts a reference twice
//! (`allow_duplicate_references`): the creates the dead process had in flight land upstream with
//! no answer recorded, after the successor's first pull, and sending them again blindly would
//! make real duplicates, which the test counts in the simulator.

use crate::common::*;
use diesel::prelude::*;
use jobsync::db::Db;
use jobsync::db::lock::sync_lock_holder_name;
use jobsync::db::models::OutboxRow;
use jobsync::db::repo::{changes, outbox, runs};
use jobsync::sim::{SimConfig, SimHandle};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CAMPAIGN: i64 = 28;
/// Jobs the simulator starts with (pulled into the mirror before the outbox is written).
const SEEDED: usize = 50;
/// Creates the CRM writes: 12 bulk calls of 250, two at a time, 2 s each: a push of about 12 s.
const ROWS: usize = 3_000;
/// How soon after the kill a surviving replica must report itself the active syncer: the next
/// tick (one a second) takes the lock the dead session left.
const TAKEOVER: Duration = Duration::from_secs(3);
/// How long after it arrives the simulator applies a create.
const SLOW_COMMIT_MS: u64 = 2_000;

/// The replicas' settings besides the harness's (one tick a second, campaign 28).
const REPLICA_ENV: &[(&str, &str)] = &[
    ("JOBSYNC_API__BULK_SIZE", "250"),
    ("JOBSYNC_API__CONCURRENCY", "2"),
    ("JOBSYNC_API__REQUESTS_PER_SECOND", "1000"),
    // Above the simulator's slow commits (no request of the survivors times out). Creates left
    // in doubt are looked up this long plus 10 s after they were sent.
    ("JOBSYNC_API__TIMEOUT_SECS", "5"),
    // Creates the dead replica marked but never sent are found absent by their lookup; they are
    // sent again once a lookup this long after their first send agrees (300 s by default).
    ("JOBSYNC_PUSH__SETTLE_SECS", "15"),
];

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn a_replica_takes_over_when_the_active_syncer_is_killed_mid_push() {
    let Some(t) = TestDb::postgres() else {
        return;
    };
    let began = Instant::now();
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![CAMPAIGN],
        jobs_per_campaign: SEEDED,
        allow_duplicate_references: true,
        ..SimConfig::default()
    }));
    rt.block_on(set_faults(
        &sim,
        json!({"late_apply_rate": 1.0, "late_apply_ms": SLOW_COMMIT_MS}),
    ));
    let faults: Value = rt.block_on(sim_get(&sim, "/_sim/faults"));
    assert_eq!(faults["allow_duplicate_references"], true, "{faults}");
    assert_eq!(faults["late_apply_rate"], 1.0, "{faults}");

    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<Daemon> = (0..3)
        .map(|_| Daemon::start_with_url(&rt, &sim.base_url(), &t.url, dir.path(), REPLICA_ENV))
        .collect();
    // Every replica has ticked (it knows its role) and the seeded jobs are mirrored.
    for replica in &replicas {
        replica.wait_until("/status", |status, body| {
            let report: Value = serde_json::from_str(body).unwrap_or_default();
            status == 200 && report["role"] != "unknown" && report["mirror"]["jobs"] == SEEDED
        });
    }

    let reader = ChangefeedReader::start(&t.url);
    let workload: Vec<_> = (0..ROWS)
        .map(|n| {
            let payload = json!({"name": format!("Failover {n}"), "numbers": ["+33612345678"]});
            create(CAMPAIGN, &reference(n), payload)
        })
        .collect();
    insert(&t.db, &workload);

    // The push is under way: some rows done, some in flight, not all done.
    let mut pg = PgConnection::establish(&t.url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = outbox_counts(&t.db);
        assert!(
            counts.get("done").copied().unwrap_or(0) < ROWS as i64,
            "the push ended before it could be interrupted: {counts:?}"
        );
        if counts.get("done").copied().unwrap_or(0) >= (ROWS / 6) as i64
            && counts.get("in_flight").copied().unwrap_or(0) > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no push under way: {counts:?}");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The active syncer: the session holding the sync lock names its process, and only that
    // replica says it is active; the others are followers, in /status and in the metrics.
    let holder = sync_lock_holder(&mut pg).expect("a replica holds the sync lock mid-push");
    let active = replicas
        .iter()
        .position(|r| r.pid() == holder)
        .unwrap_or_else(|| panic!("the sync lock is held by pid {holder}, no replica"));
    for (i, replica) in replicas.iter().enumerate() {
        let (role, gauge, follower_ticks) = role_of(replica);
        if i == active {
            assert_eq!(role, "active", "the replica pushing says it is active");
            assert_eq!(gauge, 1.0, "jobsync_active_syncer of the active replica");
        } else {
            assert_eq!(role, "follower", "replica {i} while {active} pushes");
            assert_eq!(gauge, 0.0, "jobsync_active_syncer of a follower");
            assert!(follower_ticks >= 1.0, "a follower counts its skipped ticks");
        }
    }

    // SIGKILL while a create request is in flight upstream (the simulator applies it all the
    // same, and no answer is recorded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.block_on(late_applies(&sim)) == 0 {
        assert!(Instant::now() < deadline, "no create request in flight");
    }
    let mut dead = replicas.remove(active);
    let kill_time = chrono::Utc::now();
    dead.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    let exit = dead.child.wait().unwrap();
    let dead_at = jobsync::db::Ts::now();
    assert_eq!(exit.signal(), Some(libc::SIGKILL), "{exit:?}");

    // What the dead replica left: the rows it had marked in flight (a survivor may already be
    // marking rows of its own: those are newer), creates in doubt.
    let at_kill = all_rows(&t.db);
    let done_at_kill = count_status(&at_kill, "done");
    let left: Vec<OutboxRow> = at_kill
        .into_iter()
        .filter(|r| r.status == "in_flight" && r.updated_at < dead_at)
        .collect();
    assert!(done_at_kill < ROWS, "killed mid-push");
    assert!(!left.is_empty(), "killed with rows in flight");
    assert!(
        left.iter().all(|r| r.in_doubt),
        "creates in flight are in doubt"
    );

    // Another replica takes over within about a tick.
    let took_over = loop {
        if let Some(i) = replicas.iter().position(|r| role_of(r).0 == "active") {
            break i;
        }
        assert!(
            killed_at.elapsed() < TAKEOVER,
            "no surviving replica became the active syncer within {TAKEOVER:?} of the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let takeover = killed_at.elapsed();

    // ... and converges: nothing open once the creates in doubt have been looked up.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let counts = outbox_counts(&t.db);
        let open = counts.get("pending").copied().unwrap_or(0)
            + counts.get("in_flight").copied().unwrap_or(0);
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows still open 45 s after the kill: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let converged = killed_at.elapsed();

    // The survivors still know their roles, consistently in /status and in the metric.
    let mut roles = Vec::new();
    for replica in &replicas {
        let (role, gauge, _) = role_of(replica);
        assert!(role == "active" || role == "follower", "{role}");
        assert_eq!(gauge, if role == "active" { 1.0 } else { 0.0 }, "{role}");
        roles.push(role);
    }
    let survivors: Vec<Daemon> = replicas;
    let mut logs = Vec::new();
    for mut replica in survivors {
        replica.signal(libc::SIGTERM);
        let exit = replica
            .wait_exit(Duration::from_secs(20))
            .expect("a replica stops within 20 s of SIGTERM");
        assert!(exit.success(), "exit 0 on SIGTERM: {exit:?}");
        logs.extend(replica.whole_log());
    }

    // The changefeed reader missed nothing: the seqs it saw are the table's.
    let seen = reader.finish();
    let mut c = t.db.conn().unwrap();
    let table: Vec<i64> = changes::since(&mut c, 0, i64::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        seen.len(),
        table.len(),
        "rows a reader polling `seq > last` skipped: {:?}",
        table
            .iter()
            .filter(|s| !seen.contains(s))
            .take(20)
            .collect::<Vec<_>>()
    );
    assert_eq!(seen, table, "the reader saw the table's seqs, in order");

    // The end state of an uninterrupted push, counted upstream first (once the simulator's
    // last slow commits have landed).
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.block_on(late_applies(&sim)) > 0 {
        assert!(
            Instant::now() < deadline,
            "the simulator's slow commits never ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let upstream = upstream_by_reference(&rt, &sim);
    let copies: Vec<_> = upstream.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        copies.is_empty(),
        "{} references exist more than once upstream, e.g. {:?}",
        copies.len(),
        copies.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(upstream.len(), SEEDED + ROWS, "jobs upstream");
    // Each create went out once, as in an uninterrupted push: those the dead replica had sent
    // (applied upstream after it died, no answer recorded) were looked up, never sent again;
    // those it had only marked were sent by a survivor.
    let sends = create_requests(&rt, &sim);
    for n in 0..ROWS {
        let times = sends.get(&reference(n)).map_or(0, Vec::len);
        assert_eq!(times, 1, "create requests carrying {}", reference(n));
    }
    let applied_by_the_dead = left
        .iter()
        .filter(|r| sends[r.reference.as_deref().unwrap()][0] < kill_time)
        .count();
    assert!(
        applied_by_the_dead > 0,
        "some creates in flight at the kill had reached the simulator: a blind re-send of those \
         would be a duplicate"
    );
    let rows = all_rows(&t.db);
    assert_eq!(rows.len(), ROWS);
    for row in &rows {
        assert_eq!(row.status, "done", "{row:?}");
        let reference = row.reference.as_deref().unwrap();
        assert_eq!(
            upstream.get(reference).map(|ids| ids[0]),
            row.result_job_id,
            "row {} is linked to its job upstream",
            row.id
        );
    }
    rt.block_on(assert_mirror_equals_sim(&t.db, &sim));
    // Every job upstream is announced once in the changefeed.
    let mut created: HashMap<i64, usize> = HashMap::new();
    for change in changes::since(&mut c, 0, i64::MAX).unwrap() {
        if change.kind == "created" {
            *created.entry(change.job_id).or_default() += 1;
        }
    }
    for ids in upstream.values() {
        assert_eq!(
            created.get(&ids[0]),
            Some(&1),
            "created changes of job {}",
            ids[0]
        );
    }
    assert_eq!(created.len(), upstream.len());

    // The survivors found those creates with a lookup (a survivor's own create whose answer
    // came too late would be looked up too).
    let linked = logs
        .iter()
        .filter(|l| l.contains("a create in doubt had been applied: linked to its job"))
        .count();
    assert!(
        linked >= applied_by_the_dead,
        "{linked} creates in doubt found upstream by a lookup, {applied_by_the_dead} expected"
    );
    // The dead replica's run was closed by its successor; none is left running.
    let recent = runs::recent(&mut c, 1000).unwrap();
    assert!(recent.iter().all(|r| r.status != "running"), "{recent:?}");
    assert!(
        recent.iter().any(|r| r
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("abandoned"))),
        "the killed replica's run is recorded as abandoned: {recent:?}"
    );

    eprintln!(
        "killed the active replica (pid {holder}) with {done_at_kill} rows done and {} in flight \
         ({applied_by_the_dead} of them sent); replica {took_over} of the survivors \
         active after {takeover:?}, converged {converged:?} after the kill; roles at the end \
         {roles:?}; {} changefeed rows read; wall time {:?}",
        left.len(),
        seen.len(),
        began.elapsed()
    );
}

fn reference(n: usize) -> String {
    format!("failover-{n}")
}

/// Outbox rows per status.
fn outbox_counts(db: &Db) -> BTreeMap<String, i64> {
    outbox::counts(&mut db.conn().unwrap())
        .unwrap()
        .into_iter()
        .collect()
}

/// The simulator's jobs of the campaign, their ids by reference.
fn upstream_by_reference(
    rt: &tokio::runtime::Runtime,
    sim: &SimHandle,
) -> HashMap<String, Vec<i64>> {
    let mut by_ref: HashMap<String, Vec<i64>> = HashMap::new();
    for job in rt.block_on(sim_jobs(sim)) {
        assert_eq!(job.campaign, CAMPAIGN);
        by_ref
            .entry(job.reference.clone().unwrap_or_default())
            .or_default()
            .push(job.id);
    }
    for ids in by_ref.values_mut() {
        ids.sort_unstable();
    }
    by_ref
}

async fn sim_get(sim: &SimHandle, path: &str) -> Value {
    reqwest::get(format!("{}{path}", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The arrival times of the create requests that carried each reference.
fn create_requests(
    rt: &tokio::runtime::Runtime,
    sim: &SimHandle,
) -> HashMap<String, Vec<chrono::DateTime<chrono::Utc>>> {
    let log = rt.block_on(requests(&sim.base_url()));
    let mut sends: HashMap<String, Vec<_>> = HashMap::new();
    for request in matching(&log, "POST", "/j/jobs/bulk/create") {
        let at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(request["at"].clone()).unwrap();
        for reference in request["references"].as_array().unwrap() {
            let reference = reference.as_str().unwrap().to_string();
            sends.entry(reference).or_default().push(at);
        }
    }
    for times in sends.values_mut() {
        times.sort_unstable();
    }
    sends
}

/// Creates the simulator has started to apply and not applied yet (its slow commits).
async fn late_applies(sim: &SimHandle) -> u64 {
    sim_get(sim, "/_sim/pending").await["late_applies"]
        .as_u64()
        .unwrap()
}

/// A replica's role in `/status`, its `jobsync_active_syncer` gauge and its follower ticks, read
/// so that they agree (the role is read again after the metrics: a tick may change it between
/// the two requests).
fn role_of(replica: &Daemon) -> (String, f64, f64) {
    let role = || -> String {
        let (status, body) = replica.get("/status");
        assert_eq!(status, 200, "{body}");
        let report: Value = serde_json::from_str(&body).unwrap();
        report["role"].as_str().unwrap().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = role();
        let (_, metrics) = replica.get("/metrics");
        if role() == before {
            return (
                before,
                metric(&metrics, "jobsync_active_syncer"),
                metric(&metrics, "jobsync_ticks_skipped_total{reason=\"follower\"}"),
            );
        }
        assert!(Instant::now() < deadline, "the role never held still");
    }
}

/// The pid of the process whose session holds the sync lock, as it names itself in
/// `pg_stat_activity` ("pid N on HOST, since T").
fn sync_lock_holder(pg: &mut PgConnection) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let holder = sync_lock_holder_name(pg).unwrap();
        // The name is set just after the lock is granted.
        let pid = holder.and_then(|name| {
            name.strip_prefix("pid ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        if pid.is_some() || Instant::now() >= deadline {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A CRM reading the changefeed as documented: `seq > last`, in `seq` order, polling, on its
/// own connection, remembering every seq it saw.
struct ChangefeedReader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<i64>>>,
}

impl ChangefeedReader {
    fn start(url: &str) -> ChangefeedReader {
        let stop = Arc::new(AtomicBool::new(false));
        let db = Db::connect(url).unwrap();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut c = db.conn().unwrap();
            let (mut last, mut seen) = (0_i64, Vec::new());
            loop {
                // A last read after the stop: whatever was committed before it is seen.
                let finishing = stopping.load(Ordering::SeqCst);
                loop {
                    let batch = changes::since(&mut c, last, 10_000).unwrap();
                    let Some(end) = batch.last().map(|r| r.seq) else {
                        break;
                    };
                    seen.extend(batch.iter().map(|r| r.seq));
                    last = end;
                }
                if finishing {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        ChangefeedReader {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops polling (after one last read) and returns the seqs seen, in the order read.
    fn finish(mut self) -> Vec<i64> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.thread.take().unwrap().join();
        seen.unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for ChangefeedReader {
    /// A test that fails midway leaves no reader polling.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
