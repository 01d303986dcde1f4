//! The runtime tells the truth (issue 10): commands never wait for a sync, a second syncer is
//! refused naming the holder, readiness reports a failed first cycle, liveness sees a stalled
//! cycle, SIGTERM abandons a stuck request within the grace and records the run, and an
//! interrupted run records what it committed. The real binary, the real simulator, real SQLite
//! files and a real PostgreSQL.
//!
//! The tests of this file run one at a time (`serial`): several of them hold the binary to
//! wall-clock limits (2 s, the grace plus 2 s) that a machine busy with the others would blur.

use crate::common::{self, *};
use diesel::prelude::*;
use jobsync::db::models::RunRow;
use jobsync::db::repo::{outbox, runs};
use jobsync::db::schema::{job_changes, jobs};
use jobsync::db::{Conn, Db};
use jobsync::sim::SimConfig;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

on_both_backends!(
    an_interrupted_backfill_records_what_it_committed,
    an_interrupted_push_records_what_it_committed,
);

/// The figure: a command answers within this while a sync runs.
const COMMAND_LIMIT: Duration = Duration::from_secs(2);
/// How long a command may take before the test stops waiting for it (and kills it): long enough
/// to tell "slow" from "waiting for the sync", short enough to fail in bounded time.
const COMMAND_CAP: Duration = Duration::from_secs(4);
/// The message of a run stopped by SIGTERM/SIGINT, exactly.
const STOPPED: &str = "stopped by a shutdown signal";

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Harness: processes with their output in files, killed when dropped; polling with deadlines.

/// A `jobsync` process whose stdout and stderr go to files (no pipe to fill), killed on drop.
struct Proc {
    child: Child,
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Proc {
    fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Proc {
        let file = name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let stdout = dir.join(format!("{file}.out"));
        let stderr = dir.join(format!("{file}.err"));
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("the jobsync binary starts");
        Proc {
            child,
            name: name.into(),
            stdout,
            stderr,
            started,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits up to `limit` for the exit; `None` (and the process killed) if it did not come.
    fn finish(&mut self, limit: Duration) -> Finished {
        let status = wait_exit(&mut self.child, limit);
        let elapsed = self.started.elapsed();
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        Finished {
            name: self.name.clone(),
            status,
            elapsed,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a process ended, or that it had not after the limit it was given.
struct Finished {
    name: String,
    status: Option<ExitStatus>,
    elapsed: Duration,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    fn describe(&self) -> String {
        let ended = match self.status {
            Some(status) => format!("exited {status} after {:.2}s", self.elapsed.as_secs_f64()),
            None => format!(
                "had not exited after {:.2}s (killed)",
                self.elapsed.as_secs_f64()
            ),
        };
        format!(
            "`jobsync {}` {ended}\n  stdout: {}\n  stderr: {}",
            self.name,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// `jobsync ARGS` on the database `url`, with the simulator at `base_url`, run in `cwd`.
fn jobsync(url: &str, base_url: &str, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = jobsync_command(base_url, &cwd.join("unused.db"));
    cmd.env("JOBSYNC_DATABASE__URL", url).args(args);
    cmd
}

/// Polls `probe` every 20 ms until it answers, or panics after `limit` naming `what`.
fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sync_runs`, newest first (empty while the tables do not exist yet).
fn run_rows(db: &Db) -> Vec<RunRow> {
    db.conn()
        .and_then(|mut c| runs::recent(&mut c, 1000))
        .unwrap_or_default()
}

fn run_row(db: &Db, id: i64) -> RunRow {
    run_rows(db)
        .into_iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no sync_runs row {id}"))
}

fn count_jobs(c: &mut Conn) -> i64 {
    jobsync::with_conn!(c, |c| jobs::table.count().get_result(c)).unwrap_or(0)
}

fn count_changes(c: &mut Conn) -> i64 {
    jobsync::with_conn!(c, |c| job_changes::table.count().get_result(c)).unwrap_or(0)
}

fn outbox_count(db: &Db, status: &str) -> i64 {
    let mut c = db.conn().unwrap();
    outbox::counts(&mut c)
        .unwrap_or_default()
        .into_iter()
        .find(|(s, _)| s == status)
        .map_or(0, |(_, n)| n)
}

/// A log line at ERROR level (JSON logs), or a top-level `error:` message.
fn is_error_line(line: &str) -> bool {
    match serde_json::from_str::<Value>(line) {
        Ok(v) => v["level"] == "ERROR",
        Err(_) => line.trim_start().starts_with("error"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Commands never wait for a sync; a second syncer is refused, naming the holder.

/// A `--once` whose every API request takes a minute: it holds the sync lock for the whole test.
fn start_holder(url: &str, sim_url: &str, dir: &Path) -> Proc {
    let mut cmd = jobsync(url, sim_url, dir, &["--once"]);
    cmd.env("JOBSYNC_API__TIMEOUT_SECS", "90")
        .env("JOBSYNC_API__MAX_ATTEMPTS", "1")
        .env("JOBSYNC_SYNC__CAMPAIGNS", "28");
    Proc::spawn(cmd, dir, "holder --once")
}

/// Waits until the holder's run is recorded `running`; answers its id.
fn wait_for_running_run(db: &Db, holder: &mut Proc) -> i64 {
    wait_for(
        "a `running` row in sync_runs",
        Duration::from_secs(30),
        || {
            assert!(
                holder.running(),
                "the holder --once ended before its run was seen running:\n{}",
                holder.stderr()
            );
            run_rows(db)
                .into_iter()
                .find(|r| r.status == "running")
                .map(|r| r.id)
        },
    )
}

fn import_file(dir: &Path) -> PathBuf {
    let path = dir.join("changes.ndjson");
    let rows: Vec<String> = (0..10)
        .map(|n| {
            json!({"op": "create", "campaign": 28, "reference": format!("imp-{n}"),
                   "payload": {"name": format!("Imported {n}"), "numbers": ["0612345678"]}})
            .to_string()
        })
        .collect();
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();
    path
}

#[test]
fn commands_answer_while_a_sync_runs_and_a_second_once_is_refused_naming_the_holder() {
    let _serial = serial();
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 10,
        ..SimConfig::default()
    }));
    // Every request takes a minute: the holder's cycle outlasts everything below.
    rt.block_on(set_faults(&sim, json!({"latency_ms": 60_000})));
    let t = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let mut holder = start_holder(&t.url, &sim.base_url(), dir.path());
    let run_id = wait_for_running_run(&t.db, &mut holder);
    let holder_pid = holder.pid();
    eprintln!("holder --once pid {holder_pid} is syncing (run {run_id})");

    let file = import_file(dir.path());
    let file = file.to_str().unwrap();
    let commands: [(&str, Vec<&str>); 5] = [
        ("status", vec!["status"]),
        ("changes --since 0", vec!["changes", "--since", "0"]),
        ("outbox list", vec!["outbox", "list"]),
        ("import", vec!["import", file]),
        ("prune", vec!["prune"]),
    ];
    let mut problems = Vec::new();
    for (name, args) in &commands {
        let cmd = jobsync(&t.url, &sim.base_url(), dir.path(), args);
        let done = Proc::spawn(cmd, dir.path(), name).finish(COMMAND_CAP);
        eprintln!(
            "`jobsync {name}` while a sync runs: exit {:?} in {:.2}s",
            done.code(),
            done.elapsed.as_secs_f64()
        );
        if done.code() != Some(0) || done.elapsed >= COMMAND_LIMIT {
            problems.push(format!(
                "must exit 0 within {COMMAND_LIMIT:?} while a sync runs: {}",
                done.describe()
            ));
        }
        if !holder.running() {
            problems.push(format!(
                "the holder --once was no longer running when `jobsync {name}` returned"
            ));
        }
    }
    if outbox_count(&t.db, "pending") != 10 {
        problems.push(format!(
            "import: expected 10 pending outbox rows, found {}",
            outbox_count(&t.db, "pending")
        ));
    }

    let cmd = jobsync(&t.url, &sim.base_url(), dir.path(), &["--once"]);
    let second = Proc::spawn(cmd, dir.path(), "--once (second)").finish(COMMAND_CAP);
    eprintln!(
        "a second `jobsync --once`: exit {:?} in {:.2}s; stderr: {}",
        second.code(),
        second.elapsed.as_secs_f64(),
        second.stderr.trim()
    );
    let named =
        second.stderr.contains("lock") && second.stderr.contains(&format!("pid {holder_pid}"));
    if second.code() != Some(1) || second.elapsed >= COMMAND_LIMIT || !named {
        problems.push(format!(
            "a second --once must exit 1 within {COMMAND_LIMIT:?}, its stderr naming the lock \
             and `pid {holder_pid}`: {}",
            second.describe()
        ));
    }
    if !holder.running() {
        problems.push("the holder --once was no longer running after the second --once".into());
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn a_second_once_on_postgres_is_refused_naming_the_active_syncer() {
    let _serial = serial();
    let Some(t) = TestDb::postgres() else { return };
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 10,
        ..SimConfig::default()
    }));
    rt.block_on(set_faults(&sim, json!({"latency_ms": 60_000})));
    let dir = tempfile::tempdir().unwrap();
    let mut holder = start_holder(&t.url, &sim.base_url(), dir.path());
    let run_id = wait_for_running_run(&t.db, &mut holder);
    let holder_pid = holder.pid();
    eprintln!("holder --once pid {holder_pid} is syncing (run {run_id})");

    let cmd = jobsync(&t.url, &sim.base_url(), dir.path(), &["--once"]);
    let second = Proc::spawn(cmd, dir.path(), "--once (second)").finish(COMMAND_CAP);
    eprintln!(
        "a second `jobsync --once`: exit {:?} in {:.2}s; stderr: {}",
        second.code(),
        second.elapsed.as_secs_f64(),
        second.stderr.trim()
    );
    assert!(holder.running(), "the holder --once is still syncing");
    assert!(
        second.code() == Some(1)
            && second.elapsed < COMMAND_LIMIT
            && second.stderr.contains(&format!("pid {holder_pid}"))
            && second.stderr.contains("active syncer"),
        "a second --once must exit 1 within {COMMAND_LIMIT:?}, its stderr naming the \
         `active syncer` and `pid {holder_pid}`: {}",
        second.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Readiness after a failed first cycle.

#[test]
fn readiness_reports_a_failed_first_cycle() {
    let _serial = serial();
    let rt = runtime();
    // A port nobody listens on: every request is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base_url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let mut daemon = Daemon::start(
        &rt,
        &base_url,
        &db_path,
        &[
            ("JOBSYNC_API__MAX_ATTEMPTS", "1"),
            ("JOBSYNC_API__TIMEOUT_SECS", "1"),
        ],
    );
    let ended = daemon.wait_for_log_where("the first cycle's end", |line| {
        line.contains("cycle failed") || line.contains("cycle finished")
    });
    eprintln!("first cycle: {ended}");
    assert!(
        ended.contains("cycle failed"),
        "the first cycle against a closed port fails"
    );
    // The outcome reaches readiness a moment after the log line; before it, readiness is 503
    // too ("the first cycle is running"), never 200.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (status, body) = loop {
        let (status, body) = daemon.get("/readyz");
        assert_ne!(status, 200, "{body}");
        if body.contains("first cycle failed") {
            break (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz does not say the first cycle failed {body} 3 s after it did"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 503, "{body}");
    let reason = serde_json::from_str::<Value>(&body).unwrap()["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON reason in {body}"))
        .to_string();
    assert!(reason.contains("the first cycle failed"), "{reason}");
    assert!(
        reason.contains(&port.to_string()) || reason.to_lowercase().contains("connect"),
        "the reason names the failure: {reason}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. SIGTERM while a request is stuck.

#[test]
fn sigterm_abandons_a_stuck_request_within_the_grace_and_records_the_run() {
    let _serial = serial();
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 50,
        ..SimConfig::default()
    }));
    let proxy = rt.block_on(start_proxy(sim.addr));
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let mut daemon = Daemon::start(
        &rt,
        &proxy.base_url(),
        &db_path,
        &[
            ("JOBSYNC_SERVER__SHUTDOWN_GRACE_SECS", "5"),
            // Well beyond the grace: only the stop can end the stuck request in time.
            ("JOBSYNC_API__TIMEOUT_SECS", "30"),
        ],
    );
    let db = Db::connect(&format!("sqlite://{}", db_path.display())).unwrap();
    wait_for("a first `ok` run", Duration::from_secs(30), || {
        run_rows(&db).iter().any(|r| r.status == "ok").then_some(())
    });
    rt.block_on(set_faults(&sim, json!({"latency_ms": 60_000})));
    // Runs after this one started with the latency in place.
    let before = run_rows(&db).first().map_or(0, |r| r.id);
    let stuck = wait_for(
        "a cycle started after the latency was set",
        Duration::from_secs(10),
        || {
            run_rows(&db)
                .into_iter()
                .find(|r| r.id > before && r.status == "running")
                .map(|r| r.id)
        },
    );
    wait_for(
        "a request of that cycle in flight",
        Duration::from_secs(10),
        || (proxy.requests_in_flight() > 0).then_some(()),
    );
    eprintln!("run {stuck} is stuck in a request; SIGTERM");

    daemon.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let exit = daemon.wait_exit(Duration::from_secs(7));
    let waited = signalled.elapsed();
    let log = daemon.whole_log();
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "the daemon did not exit within 7 s of SIGTERM (grace 5 s) with a request stuck; \
             run {stuck}: {:?}\nlog:\n{}",
            run_row(&db, stuck),
            log.join("\n")
        )
    });
    eprintln!("exited {exit} {:.2}s after SIGTERM", waited.as_secs_f64());
    assert_eq!(
        exit.code(),
        Some(0),
        "exit 0 on SIGTERM\n{}",
        log.join("\n")
    );
    let row = run_row(&db, stuck);
    assert_eq!(
        (row.status.as_str(), row.error.as_deref()),
        ("failed", Some(STOPPED)),
        "{row:?}"
    );
    assert!(row.finished_at.is_some(), "{row:?}");
    let errors: Vec<&String> = log.iter().filter(|l| is_error_line(l)).collect();
    assert!(
        errors.is_empty(),
        "a requested stop is not an error, yet the log has: {errors:#?}"
    );
}

/// The harness's own check: the proxy counts a request while it waits, and not after.
#[test]
fn harness_the_proxy_sees_a_request_in_flight() {
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig::default()));
    rt.block_on(set_faults(&sim, json!({"latency_ms": 1000})));
    let proxy = rt.block_on(start_proxy(sim.addr));
    assert_eq!(proxy.requests_in_flight(), 0);
    let url = format!("{}/j/jobs?campaign=28", proxy.base_url());
    let request = rt.spawn(async move {
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth("dev-token")
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    wait_for("the request in flight", Duration::from_secs(5), || {
        (proxy.requests_in_flight() == 1).then_some(())
    });
    let (status, body) = rt.block_on(request).unwrap();
    assert_eq!((status, body.as_str()), (200, "[]"));
    assert_eq!(
        proxy.requests_in_flight(),
        0,
        "answered: no longer in flight"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Liveness sees a stall.

#[test]
fn liveness_fails_when_a_cycle_makes_no_progress() {
    let _serial = serial();
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 10,
        latency_ms: 60_000,
        ..SimConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let daemon = Daemon::start(
        &rt,
        &sim.base_url(),
        &db_path,
        &[
            ("JOBSYNC_SYNC__STALL_SECS", "3"),
            ("JOBSYNC_API__TIMEOUT_SECS", "2"),
            ("JOBSYNC_API__MAX_ATTEMPTS", "8"),
        ],
    );
    let (status, body) = daemon.get("/healthz");
    assert_eq!(status, 200, "alive at start: {body}");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let (status, body) = loop {
        let (status, body) = daemon.get("/healthz");
        if status != 200 {
            break (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still answers 200 {body} after 30 s of a cycle with no answer \
             (sync.stall_secs = 3)"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "/healthz {status} after {:.1}s: {body}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status, 503, "{body}");
    let reason = serde_json::from_str::<Value>(&body).unwrap()["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON reason in {body}"))
        .to_string();
    assert!(reason.contains("no progress"), "{reason}");
}

// ---------------------------------------------------------------------------------------------
// 5. Interrupted runs record what was committed.

/// `--once` on `t`, its log in `dir`.
fn start_once(t: &TestDb, sim_url: &str, dir: &Path, extra: &[(&str, &str)]) -> Proc {
    let mut cmd = jobsync(&t.url, sim_url, dir, &["--once"]);
    cmd.envs(extra.iter().copied());
    Proc::spawn(cmd, dir, "--once")
}

/// SIGINT, then the exit within 30 s (the default grace is 25 s), and the one run recorded.
fn interrupt(once: &mut Proc, db: &Db) -> RunRow {
    send_signal(once.pid(), libc::SIGINT);
    let done = once.finish(Duration::from_secs(30));
    assert_eq!(
        done.code(),
        Some(0),
        "exit 0 after SIGINT: {}",
        done.describe()
    );
    let recent = run_rows(db);
    assert_eq!(recent.len(), 1, "{recent:?}");
    recent.into_iter().next().unwrap()
}

fn an_interrupted_backfill_records_what_it_committed(t: &TestDb) {
    let _serial = serial();
    let rt = runtime();
    // Ten campaigns of 2000 jobs, each listing waiting 300 ms: several batches, several seconds.
    let campaigns: Vec<i64> = (1..=10).collect();
    let total = campaigns.len() as i64 * 2000;
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: campaigns.clone(),
        jobs_per_campaign: 2000,
        ..SimConfig::default()
    }));
    rt.block_on(set_faults(&sim, json!({"latency_ms": 300})));
    let dir = tempfile::tempdir().unwrap();
    let list = campaigns
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut once = start_once(
        t,
        &sim.base_url(),
        dir.path(),
        &[("JOBSYNC_SYNC__CAMPAIGNS", &list)],
    );
    let mut c = t.db.conn().unwrap();
    let seen = wait_for(
        "jobs committed by the backfill",
        Duration::from_secs(60),
        || {
            assert!(
                once.running(),
                "--once finished before it could be interrupted:\n{}",
                once.stderr()
            );
            Some(count_jobs(&mut c)).filter(|&n| n > 0)
        },
    );
    eprintln!("{seen} jobs committed; SIGINT");
    let row = interrupt(&mut once, &t.db);
    let mirrored = count_jobs(&mut c);
    let changes = count_changes(&mut c);
    eprintln!("run {row:?}; {mirrored} jobs and {changes} changes in the database");
    assert!(
        mirrored < total,
        "the backfill was interrupted before it was complete ({mirrored} of {total} jobs)"
    );
    assert_eq!(
        (
            row.status.as_str(),
            row.error.as_deref(),
            row.mode.as_str(),
            row.jobs_pulled,
            row.jobs_changed
        ),
        ("failed", Some(STOPPED), "full", mirrored, changes),
        "the run records every job committed (jobs_pulled = rows in jobs, jobs_changed = rows \
         in job_changes): {row:?}"
    );
    assert!(row.jobs_pulled > 0, "{row:?}");
}

fn an_interrupted_push_records_what_it_committed(t: &TestDb) {
    let _serial = serial();
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig::default()));
    rt.block_on(set_faults(&sim, json!({"latency_ms": 300})));
    let rows: Vec<_> = (0..3000)
        .map(|n| {
            common::push::create(
                28,
                &format!("r-{n}"),
                json!({"name": format!("R {n}"), "numbers": ["+33612345678"]}),
            )
        })
        .collect();
    common::push::insert(&t.db, &rows);
    let dir = tempfile::tempdir().unwrap();
    let mut once = start_once(
        t,
        &sim.base_url(),
        dir.path(),
        &[
            ("JOBSYNC_API__BULK_SIZE", "100"),
            ("JOBSYNC_API__CONCURRENCY", "2"),
        ],
    );
    let seen = wait_for("outbox rows pushed `done`", Duration::from_secs(60), || {
        assert!(
            once.running(),
            "--once finished before it could be interrupted:\n{}",
            once.stderr()
        );
        Some(outbox_count(&t.db, "done")).filter(|&n| n > 0)
    });
    eprintln!("{seen} rows done; SIGINT");
    let row = interrupt(&mut once, &t.db);
    let done = outbox_count(&t.db, "done");
    eprintln!("run {row:?}; {done} outbox rows done");
    assert!(
        done < 3000,
        "the push was interrupted before it was complete ({done} of 3000 rows done)"
    );
    assert_eq!(
        (row.status.as_str(), row.error.as_deref(), row.pushed_ok),
        ("failed", Some(STOPPED), done),
        "the run records every row pushed (pushed_ok = outbox rows done): {row:?}"
    );
    assert!(row.pushed_ok > 0, "{row:?}");
}
