//! Fencing (contract §8): a syncer that lost its lock while pushing is refused by the database
//! itself, stops sending, and records its run `failed` ("lost the sync lock"), while the process
//! that took the lock over finishes the push — every reference exactly once upstream, counted in
//! a simulator that accepts a reference twice (the damage a duplicate would do is real there).
//!
//! The lock is lost the ways a real deployment loses it: on PostgreSQL the lock's session is
//! ended by the server (`pg_terminate_backend`, as a DBA, a failover or an idle timeout would);
//! on SQLite the lock file is removed, so that a second process locks a new one.

use crate::common::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use jobsync::db::repo::runs;
use jobsync::sim::{SimConfig, SimHandle};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

on_both_backends!(a_syncer_that_lost_its_lock_stops_and_nothing_is_sent_twice);

const CAMPAIGN: i64 = 28;
/// Creates the CRM writes: 40 bulk calls of 50, two at a time, a second each: a push of 20 s.
const ROWS: usize = 2_000;

fn once(t: &TestDb, sim: &SimHandle, logs: &Path, name: &str, env: &[(&str, &str)]) -> Child {
    once_at(&t.url, sim, logs, name, env)
}

/// [`once`] on any database URL.
fn once_at(url: &str, sim: &SimHandle, logs: &Path, name: &str, env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(logs.join(name)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_jobsync"))
        .args(["--once", "--database-url", url])
        .env("JOBSYNC_API__TOKEN", "dev-token")
        .env("JOBSYNC_API__BASE_URL", sim.base_url())
        .env("JOBSYNC_SERVER__LISTEN", "")
        .env("JOBSYNC_SYNC__CAMPAIGNS", CAMPAIGN.to_string())
        .env("JOBSYNC_API__BULK_SIZE", "50")
        .env("JOBSYNC_API__CONCURRENCY", "2")
        .env("JOBSYNC_API__REQUESTS_PER_SECOND", "1000")
        // Creates left in doubt are looked up this long plus 10 s after they were sent, and may
        // be sent again once a lookup 15 s after their first send finds them absent (the chunks
        // the first syncer marked and could not send).
        .env("JOBSYNC_API__TIMEOUT_SECS", "3")
        .env("JOBSYNC_PUSH__SETTLE_SECS", "15")
        .env("JOBSYNC_LOG__FORMAT", "json")
        .envs(env.iter().copied())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("jobsync starts")
}

/// How many jobs upstream carry each reference starting with `prefix`.
async fn references_upstream(sim: &SimHandle, prefix: &str) -> BTreeMap<String, usize> {
    let mut upstream: BTreeMap<String, usize> = BTreeMap::new();
    for job in sim_jobs(sim).await {
        if let Some(reference) = job.reference.filter(|r| r.starts_with(prefix)) {
            *upstream.entry(reference).or_default() += 1;
        }
    }
    upstream
}

fn log_of(logs: &Path, name: &str) -> String {
    std::fs::read_to_string(logs.join(name)).unwrap_or_default()
}

/// A simulator of campaign 28 with `jobs` jobs, no duplicate check, and `latency_ms` per answer.
async fn slow_sim(jobs: usize, latency_ms: u64) -> SimHandle {
    let sim = start_sim(SimConfig {
        campaigns: vec![CAMPAIGN],
        jobs_per_campaign: jobs,
        allow_duplicate_references: true,
        ..SimConfig::default()
    })
    .await;
    set_faults(&sim, json!({"latency_ms": latency_ms})).await;
    sim
}

/// Runs `--once` until no outbox row is open (within 120 s), each run succeeding.
fn run_until_settled(t: &TestDb, sim: &SimHandle, logs: &Path) {
    run_until_settled_at(t, &t.url, sim, logs)
}

/// [`run_until_settled`], the processes on `url` (`t`'s database, with other settings).
fn run_until_settled_at(t: &TestDb, url: &str, sim: &SimHandle, logs: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for run in 1.. {
        let name = format!("run-{run}.log");
        let status = once_at(url, sim, logs, &name, &[]).wait().unwrap();
        assert!(status.success(), "{}", log_of(logs, &name));
        let open = open_rows(&t.db);
        if open == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} rows still open after 120 s"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Sends SIGTERM and waits for the exit within the default grace (25 s), killing the process if
/// it is still there; then `release` (the CRM ends its lock) returns the process's log. Asserts
/// an exit 0; returns how long it took.
fn terminate_within_the_grace(child: &mut Child, release: impl FnOnce() -> String) -> Duration {
    let signalled = Instant::now();
    send_signal(child.id(), libc::SIGTERM);
    let status = wait_exit(child, Duration::from_secs(25));
    let took = signalled.elapsed();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = release();
    let status = status.unwrap_or_else(|| panic!("still running 25 s after SIGTERM:\n{log}"));
    assert!(status.success(), "exit 0 on a stop ({status}):\n{log}");
    took
}

/// Ends the lock the running syncer holds, as the world would: its PostgreSQL session is
/// terminated, or its SQLite lock file removed.
fn take_the_lock_away(t: &TestDb) {
    if t.url.starts_with("sqlite://") {
        let path = format!("{}.lock", t.url.trim_start_matches("sqlite://"));
        std::fs::remove_file(&path).expect("the lock file exists while a cycle runs");
        return;
    }
    assert_eq!(
        end_lock_sessions(&t.url),
        1,
        "one session held the sync lock"
    );
}

/// Terminates the PostgreSQL sessions holding the sync lock of `url`'s database and schema (as a
/// DBA, a failover or an idle timeout would); returns how many there were.
fn end_lock_sessions(url: &str) -> usize {
    let mut pg = PgConnection::establish(url).unwrap();
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
         AND l.classid = {}::oid AND l.objid = hashtext(current_schema())::oid \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        jobsync::db::lock::PgLock::Sync as i32
    ))
    .execute(&mut pg)
    .unwrap()
}

async fn a_syncer_that_lost_its_lock_stops_and_nothing_is_sent_twice(t: &TestDb) {
    let sim = slow_sim(5, 1000).await;
    let rows: Vec<_> = (0..ROWS)
        .map(|n| {
            let payload = json!({"name": format!("Fenced {n}"), "numbers": ["+33612345678"]});
            create(CAMPAIGN, &format!("f-{n}"), payload)
        })
        .collect();
    insert(&t.db, &rows);
    let logs = tempfile::tempdir().unwrap();

    // The first syncer is pushing: some rows done, most still to send.
    let mut first = once(t, &sim, logs.path(), "first.log", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = all_rows(&t.db);
        if count_status(&rows, "done") >= 200 && count_status(&rows, "pending") >= ROWS / 2 {
            break;
        }
        if let Some(status) = first.try_wait().unwrap() {
            panic!(
                "the first syncer ended ({status}) before it lost its lock:\n{}",
                log_of(logs.path(), "first.log")
            );
        }
        assert!(Instant::now() < deadline, "no push under way within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Its lock is taken away, and a second syncer takes it while the first still pushes.
    take_the_lock_away(t);
    let second = once(t, &sim, logs.path(), "second.log", &[]);
    let first_status = wait_exit(&mut first, Duration::from_secs(60)).expect("the first ends");
    let first_log = log_of(logs.path(), "first.log");
    let mut second = second;
    let second_status = wait_exit(&mut second, Duration::from_secs(120)).expect("second ends");
    assert!(
        second_status.success(),
        "the syncer that took the lock over succeeds:\n{}",
        log_of(logs.path(), "second.log")
    );

    // Later cycles settle the creates left in doubt (looked up after their timeout).
    run_until_settled(t, &sim, logs.path());

    // Upstream, where a duplicate does its damage: every reference exactly once.
    let upstream = references_upstream(&sim, "f-").await;
    let twice: Vec<_> = upstream.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} references created more than once upstream, e.g. {:?}",
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(upstream.len(), ROWS, "every reference created upstream");
    let rows = all_rows(&t.db);
    assert_eq!(count_status(&rows, "done"), ROWS, "every row done");

    // The first syncer says what happened to it: its exit code, its log, its run.
    assert!(
        !first_status.success(),
        "the syncer that lost its lock says so with its exit code:\n{first_log}"
    );
    assert!(
        first_log.contains("lost the sync lock"),
        "the syncer that lost its lock logs it:\n{first_log}"
    );

    let recent = runs::recent(&mut t.db.conn().unwrap(), 100).unwrap();
    let first_run = recent.iter().min_by_key(|r| r.id).unwrap();
    assert_eq!(first_run.status, "failed", "{first_run:?}");
    assert!(
        first_run
            .error
            .as_deref()
            .is_some_and(|e| e.contains("lost the sync lock")),
        "{first_run:?}"
    );
}

/// The reproduction: every session of the syncers ended by the server after 8 s idle
/// (`idle_session_timeout = '8s'`, here set through the URL's `options`, as `ALTER DATABASE … SET`
/// would), 10,000 creates at 2 s of API latency, and a second `--once` 15 s after the first. The
/// lock's session used to idle for the whole push and die at 8 s, and the second syncer pushed
/// the same rows (17,750 jobs for 10,000 references). The lock's session now sets its own idle
/// limit and is checked every 2 s, so it never idles out: the first syncer keeps its lock and
/// finishes, the second is refused, and every reference exists once upstream.
#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn sessions_ending_after_8_s_idle_do_not_split_the_brain() {
    const CREATES: usize = 10_000;
    let Some(t) = TestDb::postgres() else {
        return;
    };
    let rt = runtime();
    let sim = rt.block_on(slow_sim(5, 2000));
    let url = format!("{}%20-cidle_session_timeout%3D8000", t.url);
    let mut check = PgConnection::establish(&url).unwrap();
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        idle_session_timeout: String,
    }
    let setting: Setting = diesel::sql_query("SHOW idle_session_timeout")
        .get_result(&mut check)
        .unwrap();
    assert_eq!(setting.idle_session_timeout, "8s");
    drop(check);
    let rows: Vec<_> = (0..CREATES)
        .map(|n| {
            create(
                CAMPAIGN,
                &format!("i-{n}"),
                json!({"name": format!("Idle {n}")}),
            )
        })
        .collect();
    insert(&t.db, &rows);
    let logs = tempfile::tempdir().unwrap();
    // 40 calls of 250, four at a time, 2 s each: a push of about 20 s.
    let env = [
        ("JOBSYNC_API__BULK_SIZE", "250"),
        ("JOBSYNC_API__CONCURRENCY", "4"),
    ];
    let began = Instant::now();
    let mut first = once_at(&url, &sim, logs.path(), "first.log", &env);
    std::thread::sleep(Duration::from_secs(15));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first syncer was still to be pushing at +15 s:\n{}",
        log_of(logs.path(), "first.log")
    );
    let second = once_at(&url, &sim, logs.path(), "second.log", &env)
        .wait()
        .unwrap();
    let second_log = log_of(logs.path(), "second.log");
    assert_eq!(second.code(), Some(1), "{second_log}");
    assert!(
        second_log.contains("is the active syncer"),
        "the second syncer is refused: the first still holds the lock:\n{second_log}"
    );
    let first_status = wait_exit(&mut first, Duration::from_secs(120)).expect("the first ends");
    let first_log = log_of(logs.path(), "first.log");
    assert!(
        first_status.success() && !first_log.contains("lost the sync lock"),
        "the first syncer kept its lock through 8 s idle limits ({first_status}, {:?}):\n{first_log}",
        began.elapsed()
    );
    run_until_settled_at(&t, &url, &sim, logs.path());
    let upstream = rt.block_on(references_upstream(&sim, "i-"));
    let twice = upstream.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "references created more than once upstream");
    assert_eq!(upstream.len(), CREATES, "every reference created upstream");
}

/// SIGTERM while a CRM holds a SHARE lock on `job_changes` (what a `CREATE INDEX` on it takes):
/// the cycle's writes to the changefeed wait for the lock, and used to keep the process alive
/// until the statement timeout (81 s seen, past Kubernetes' SIGKILL). The stop deadline now
/// cancels the statements still waiting: the process exits 0 within the grace (25 s) and the run
/// is recorded.
#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn sigterm_while_a_crm_locks_the_changefeed_exits_within_the_grace() {
    let Some(t) = TestDb::postgres() else {
        return;
    };
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![CAMPAIGN],
        jobs_per_campaign: 50,
        ..SimConfig::default()
    }));
    let logs = tempfile::tempdir().unwrap();
    let mut crm = PgConnection::establish(&t.url).unwrap();
    crm.batch_execute("BEGIN; LOCK TABLE job_changes IN SHARE MODE")
        .unwrap();
    let mut child = once(&t, &sim, logs.path(), "once.log", &[]);
    // Waiting for the CRM's lock: a session of this database blocked on a lock, on the changefeed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        #[derive(QueryableByName)]
        struct Waiting {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let waiting: Waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' \
             AND query ILIKE '%job_changes%'",
        )
        .get_result(&mut PgConnection::establish(&t.url).unwrap())
        .unwrap();
        if waiting.n > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before it waited"
        );
        assert!(
            Instant::now() < deadline,
            "jobsync never waited for the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = terminate_within_the_grace(&mut child, || {
        crm.batch_execute("ROLLBACK").unwrap();
        log_of(logs.path(), "once.log")
    });
    assert!(took < Duration::from_secs(25), "{took:?}");
    let runs = runs::recent(&mut t.db.conn().unwrap(), 10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].status, "failed",
        "the run is recorded: {:?}",
        runs[0]
    );
}

/// A TCP proxy to PostgreSQL that can freeze: from then on it forwards nothing, either way, and
/// closes nothing — as a network partition looks to both ends (no FIN, no RST reaches the
/// server). What either end sends is read and dropped, so that the server is never left blocked
/// writing to a full socket (a real partition ends that by the server's TCP timeouts, which a
/// proxy on loopback cannot show): what remains is the server's own view of a silent client.
struct FreezingProxy {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FreezingProxy {
    async fn start(target: &str) -> FreezingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = std::sync::Arc::new(AtomicBool::new(false));
        let (target, flag) = (target.to_string(), frozen.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&target).await.unwrap();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let flag = flag.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // Partitioned: hold both sockets open, forward nothing.
                            if !flag.load(Ordering::SeqCst)
                                && to.write_all(&buf[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                        if flag.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                    });
                }
            }
        });
        FreezingProxy { port, frozen }
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The active replica is cut off from PostgreSQL (its packets dropped, as a partition would)
/// and then dies: no FIN reaches the server, so its orphaned session kept the sync lock until
/// TCP keepalive gave up (two hours by default), and the other replica stayed a follower. The
/// lock's session now idles out on the server (its holder checks it every 2 s), and every
/// jobsync session is ended when it idles in a transaction: another replica is active within
/// 60 s.
#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn a_replica_cut_off_from_postgres_and_killed_is_replaced_within_a_minute() {
    let Some(t) = TestDb::postgres() else {
        return;
    };
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![CAMPAIGN],
        jobs_per_campaign: 20,
        ..SimConfig::default()
    }));
    let proxy = rt.block_on(FreezingProxy::start("127.0.0.1:5432"));
    assert!(
        t.url.contains("@127.0.0.1/"),
        "the test database is on 127.0.0.1:5432"
    );
    let cut_url = t
        .url
        .replacen("@127.0.0.1/", &format!("@127.0.0.1:{}/", proxy.port), 1);
    let dir = tempfile::tempdir().unwrap();
    let active_role = |status: u16, body: &str| {
        let report: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        status == 200 && report["role"] == "active"
    };
    let cut = Daemon::start_with_url(&rt, &sim.base_url(), &cut_url, dir.path(), &[]);
    cut.wait_until("/status", active_role);
    let other = Daemon::start_with_url(&rt, &sim.base_url(), &t.url, dir.path(), &[]);
    other.wait_until("/status", |status, body| {
        let report: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        status == 200 && report["role"] == "follower"
    });

    proxy.freeze();
    send_signal(cut.pid(), libc::SIGKILL);
    let cut_off = Instant::now();
    let deadline = cut_off + Duration::from_secs(60);
    loop {
        let (status, body) = other.get("/status");
        if active_role(status, &body) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other replica is still not active 60 s after the active one was cut off: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("took over {:?} after the cut", cut_off.elapsed());
    drop(cut);
}

/// SIGTERM in the middle of a push while a CRM holds SQLite's write lock (a long import, say):
/// every write of the cycle waited the busy timeout, then the run's record waited again, and the
/// process outlived Kubernetes' 30 s. Now it exits 0 within the grace (25 s); the next run
/// records the unfinished one failed and settles its rows, each reference once upstream.
#[test]
fn sigterm_while_a_crm_holds_the_sqlite_write_lock_exits_within_the_grace() {
    let t = TestDb::sqlite();
    let rt = runtime();
    let sim = rt.block_on(slow_sim(5, 1000));
    let rows: Vec<_> = (0..ROWS)
        .map(|n| {
            create(
                CAMPAIGN,
                &format!("w-{n}"),
                json!({"name": "W", "numbers": ["+33612345678"]}),
            )
        })
        .collect();
    insert(&t.db, &rows);
    let logs = tempfile::tempdir().unwrap();
    let mut child = once(&t, &sim, logs.path(), "first.log", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_status(&all_rows(&t.db), "done") < 200 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            log_of(logs.path(), "first.log")
        );
        assert!(Instant::now() < deadline, "no push under way within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let path = t.url.trim_start_matches("sqlite://").to_string();
    let mut crm = diesel::SqliteConnection::establish(&path).unwrap();
    crm.batch_execute("PRAGMA busy_timeout = 10000; BEGIN IMMEDIATE")
        .unwrap();
    let took = terminate_within_the_grace(&mut child, || {
        crm.batch_execute("ROLLBACK").unwrap();
        log_of(logs.path(), "first.log")
    });
    eprintln!("exited {took:?} after SIGTERM");
    run_until_settled(&t, &sim, logs.path());
    let upstream = rt.block_on(sim_by_ref(&sim));
    assert!(
        upstream.values().all(|jobs| jobs.len() == 1),
        "no reference twice"
    );
    let first = runs::recent(&mut t.db.conn().unwrap(), 100)
        .unwrap()
        .into_iter()
        .min_by_key(|r| r.id)
        .unwrap();
    assert_eq!(first.status, "failed", "{first:?}");
}

/// Three daemons on one PostgreSQL database while the CRM writes creates and patches, and the
/// active replica's lock session is ended every 2 s (as an idle timeout, a pooler or a DBA
/// would): syncers lose the lock mid-push again and again, and every reference must still exist
/// once upstream, with the last patch the CRM wrote for it (a lock lost between two syncers once
/// left an older patch upstream while the newer one was recorded `done`).
#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn three_replicas_whose_lock_keeps_being_taken_away_push_each_change_once_and_in_order() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(t) = TestDb::postgres() else {
        return;
    };
    let rt = runtime();
    let sim = rt.block_on(slow_sim(10, 800));
    let env = [
        ("JOBSYNC_API__BULK_SIZE", "20"),
        ("JOBSYNC_API__CONCURRENCY", "2"),
        ("JOBSYNC_API__REQUESTS_PER_SECOND", "1000"),
        ("JOBSYNC_API__TIMEOUT_SECS", "3"),
        ("JOBSYNC_PUSH__SETTLE_SECS", "10"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<Daemon> = (0..3)
        .map(|_| Daemon::start_with_url(&rt, &sim.base_url(), &t.url, dir.path(), &env))
        .collect();

    // Ten minutes is the figure (`JOBSYNC_TEST_CHURN_SECS=600`); the suite runs 40 s.
    let writing = Duration::from_secs(
        std::env::var("JOBSYNC_TEST_CHURN_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (url, stop) = (t.url.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ended = 0;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(2));
                ended += end_lock_sessions(&url);
            }
            ended
        })
    };
    // The CRM: 200 creates every 5 s, each with a patch of an earlier reference: a backlog the
    // replicas push for seconds at a time (4 chunks of 20 leave at once, 0.8 s each), so that the
    // lock is lost in the middle of pushes.
    let began = Instant::now();
    let mut last_label: BTreeMap<String, String> = BTreeMap::new();
    let mut n = 0usize;
    while began.elapsed() < writing {
        let mut rows = Vec::new();
        for _ in 0..200 {
            let reference = format!("c-{n}");
            rows.push(create(
                CAMPAIGN,
                &reference,
                json!({"name": "Churn", "numbers": ["+33612345678"]}),
            ));
            if n > 0 {
                let earlier = format!("c-{}", (n * 7919) % n);
                let label = format!("p-{n}");
                rows.push(patch_ref(CAMPAIGN, &earlier, json!({"label": label})));
                last_label.insert(earlier, label);
            }
            n += 1;
        }
        insert(&t.db, &rows);
        std::thread::sleep(Duration::from_secs(5));
    }
    stop.store(true, Ordering::SeqCst);
    let ended = killer.join().unwrap();
    assert!(ended >= 5, "the lock was taken away only {ended} times");

    // No row stays open past the first cycle that begins after it is due (a long run leaves a
    // backlog: the lock lost every 2 s costs the replicas most of their pushing time).
    let due = last_due(&t.db, Duration::from_secs(10));
    let open_at_stop = open_rows(&t.db);
    let settled_in = settled_one_cycle_after(&t.db, due, Duration::from_secs(1800));
    eprintln!(
        "{n} creates and patches over {writing:?}, the lock taken away {ended} times; \
         {open_at_stop} rows open when the writes stopped, settled {settled_in:?} later"
    );
    let failed = count_status(&all_rows(&t.db), "failed");
    let problems = rt.block_on(upstream_problems(&sim, CAMPAIGN, n, &last_label));
    assert!(
        problems.is_empty() && failed == 0,
        "{} problems ({failed} rows failed) after {n} creates and {ended} lock losses: {:?}",
        problems.len(),
        problems.iter().take(10).collect::<Vec<_>>()
    );
    drop(replicas);
}

/// A replica whose first cycle ends because its lock was lost (its session ended mid-push) is a
/// follower like any other once another replica took over: ready while the active one keeps the
/// shared pull fresh, not 503 "the first cycle failed" until it wins a tick again (which, while
/// the other pushes a long backlog, it cannot).
#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn a_replica_whose_first_cycle_lost_its_lock_is_a_ready_follower() {
    let Some(t) = TestDb::postgres() else {
        return;
    };
    let rt = runtime();
    let sim = rt.block_on(slow_sim(5, 800));
    let rows: Vec<_> = (0..ROWS)
        .map(|n| {
            create(
                CAMPAIGN,
                &format!("r-{n}"),
                json!({"name": format!("R {n}")}),
            )
        })
        .collect();
    insert(&t.db, &rows);
    // 100 calls of 20, two at a time, 0.8 s each: a push of 40 s.
    let env = [
        ("JOBSYNC_API__BULK_SIZE", "20"),
        ("JOBSYNC_API__CONCURRENCY", "2"),
        ("JOBSYNC_API__REQUESTS_PER_SECOND", "1000"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut first = Daemon::start_with_url(&rt, &sim.base_url(), &t.url, dir.path(), &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_status(&all_rows(&t.db), "done") < 100 {
        assert!(Instant::now() < deadline, "no push under way within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = Daemon::start_with_url(&rt, &sim.base_url(), &t.url, dir.path(), &env);
    assert_eq!(
        end_lock_sessions(&t.url),
        1,
        "one session held the sync lock"
    );
    first.wait_for_log("lost the sync lock");
    // The second replica takes the lock at its next tick and pushes the rest for half a minute.
    let (_, status) = second.wait_until("/status", |_, body| body.contains("\"role\":\"active\""));
    let (code, ready) = first.wait_until("/readyz", |code, body| {
        code == 200 && body.contains("\"role\":\"follower\"")
    });
    assert!(
        open_rows(&t.db) > 0,
        "the first replica is ready as a follower while the second pushes ({code}): {ready}; \
         second: {status}"
    );
}
