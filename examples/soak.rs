//! The product's own chaos soak: the real daemon against the built-in simulator with every fault
//! class at once, killed and restarted, while a CRM and the platform both change things; then
//! calm, convergence, `jobsync resync`, `jobsync --once`, `jobsync verify` and an exactly-once
//! count. Run it through `scripts/soak` (which builds what it needs):
//!
//! ```text
//! scripts/soak [--minutes 3] [--backend sqlite|postgres] [--seed 1]
//! ```
//!
//! Other flags: `--kill-every MIN-MAX` (seconds, default 30-90), `--postgres-url URL`, `--keep`,
//! `--jobsync PATH`, and `--late-apply-ms` / `--settle-secs` (3000 / 10), whose defaults keep the
//! slowest commit within the bound docs/crm-integration.md gives for exactly-once creation: `--late-apply-ms
//! 15000 --settle-secs 0` breaks it, and the soak reports the duplicates that follow.
//!
//! During the chaos (`--minutes`):
//! - the simulator (in this process, `jobsync::sim`, no uniqueness check of references) injects
//!   500s, 429s and dropped connections before applying, dropped connections and 502 after
//!   applying a POST, slow commits that land after the client's timeout, a latency that changes
//!   every few seconds, and small steps of its clock (±5 s at a time, within ±20 s);
//! - the daemon (`jobsync run`, the binary built beside this example, a cycle every 2 s, its
//!   health server on a free port, JSON logs in `daemon.log` of the work directory) is sent
//!   SIGKILL or SIGTERM every 30–90 s (`--kill-every`), three times in four aimed at a cycle at
//!   work, and started again; each SIGTERM must end the process with exit 0 within
//!   `server.shutdown_grace_secs`; any other exit is a violation;
//! - a CRM writes creates, patches (of `email` and `value`, by reference or by the job id it
//!   learnt) and unqueues into `outbox`, a few rows per transaction of its own, as
//!   docs/crm-integration.md's "Writing to the outbox" says;
//! - the platform moves jobs through their states (the dialer), edits them in its UI (name,
//!   label, city, numbers: never a field the CRM writes), deletes some (at most a fifth of a
//!   campaign, below `sync.mass_delete_ratio`) and creates jobs in campaigns nobody configured.
//!
//! Then: the faults stop (the clock back to 0), the CRM and the platform stop, and the daemon
//! must settle every open row by the first cycle that begins after the row was due (as
//! `tests/it/push_chaos.rs` checks); it is stopped with SIGTERM; `jobsync resync` and `jobsync
//! --once` list every tracked campaign in full; `jobsync verify --json` must find nothing but
//! `lost` creates of jobs the platform deleted; and upstream every reference the CRM created
//! exists exactly once (at most once if the platform deleted it; zero or once if the CRM
//! unqueued it before it was sent) carrying the CRM's last `email` and `value`, every unqueued
//! job is finished, and no outbox row is open or `failed` (but those aimed at a job the platform
//! deleted).
//!
//! The last line on stdout is one line of figures; every violation is a `VIOLATION:` line on
//! stderr before it. Exit 0 when there is none, 1 when there is, 2 when the soak itself could
//! not run. The work directory (logs, the SQLite file) is kept when something was found, or with
//! `--keep`; so is the PostgreSQL schema.

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, NaiveDateTime, Utc};
use clap::{Parser, ValueEnum};
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel::{QueryableByName, RunQueryDsl};
use jobsync::db::{Conn, Db, DbError};
use jobsync::job::Job;
use jobsync::sim::{FaultUpdate, SimConfig, SimHandle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[path = "common/rss.rs"]
mod rss;

/// The campaigns the daemon is configured with (`sync.campaigns`), where the CRM writes.
const CAMPAIGNS: [i64; 2] = [28, 29];
/// Campaigns nobody configured: only the platform creates jobs there.
const UNCONFIGURED: [i64; 3] = [901, 902, 903];
const SEEDED_PER_CAMPAIGN: usize = 50;
/// `api.timeout_secs`.
const TIMEOUT_SECS: u64 = 2;
/// `server.shutdown_grace_secs`: a SIGTERM must end the daemon within this.
const GRACE_SECS: u64 = 10;
const SCHEDULE: &str = "*/2 * * * * *";
const MAX_CLOCK_STEP_SECS: i64 = 5;
const MAX_CLOCK_OFFSET_SECS: i64 = 20;
/// The platform deletes at most this share of a campaign's jobs over the whole soak.
const DELETE_SHARE: f64 = 0.2;
/// How long the daemon may take after the calm to settle what is due, at most.
const CONVERGE_LIMIT: Duration = Duration::from_secs(15 * 60);

#[derive(Parser, Debug)]
#[command(about = "jobsync's chaos soak against its own simulator")]
struct Args {
    /// Minutes of chaos (decimals allowed), before the calm and the checks.
    #[arg(long, default_value_t = 3.0)]
    minutes: f64,
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Seeds the simulator (faults, dialer, edits) and every choice of the soak: the CRM's rows,
    /// the platform's actions, when and how the daemon is killed. Timing still varies.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// PostgreSQL server to use with `--backend postgres` (a fresh schema is created in it):
    /// default `$JOBSYNC_SOAK_POSTGRES_URL`, else `$JOBSYNC_TEST_POSTGRES_URL`, else
    /// postgres://jobsync:jobsync@127.0.0.1/jobsync_test.
    #[arg(long)]
    postgres_url: Option<String>,
    /// The jobsync binary (default: `jobsync` in the target directory this example was built
    /// into, e.g. target/release/jobsync).
    #[arg(long)]
    jobsync: Option<PathBuf>,
    /// Seconds between two kills of the daemon, `MIN-MAX`.
    #[arg(long, default_value = "30-90", value_parser = seconds_range)]
    kill_every: (u64, u64),
    /// Keep the work directory and the PostgreSQL schema even when all is well.
    #[arg(long)]
    keep: bool,
    /// A slow commit lands this long after its request arrived (past `api.timeout_secs`, 2 s).
    #[arg(long, default_value_t = 3_000)]
    late_apply_ms: u64,
    /// `push.settle_secs`: longer than the slowest commit, so that an API without a uniqueness
    /// check can never be made to hold a reference twice (docs/crm-integration.md, "Exactly once"). To see the
    /// soak catch duplicates, break that bound: `--late-apply-ms 15000 --settle-secs 0`.
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

fn seconds_range(raw: &str) -> Result<(u64, u64), String> {
    let (min, max) = raw
        .split_once('-')
        .ok_or_else(|| format!("`{raw}` is not MIN-MAX, e.g. 30-90"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{s}` is not a whole number of seconds"))
    };
    let (min, max) = (parse(min)?, parse(max)?);
    if min == 0 || min > max {
        return Err(format!("need 0 < MIN <= MAX, not {min}-{max}"));
    }
    Ok((min, max))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start a runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(soak(args)) {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: could not run: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What was done and what was found.

/// Everything the soak counts, for the line of figures.
#[derive(Default)]
struct Figures {
    sigkills: u64,
    sigterms: u64,
    /// Kills sent while a cycle was running.
    mid_cycle_kills: u64,
    slowest_sigterm: Duration,
    unexpected_exits: u64,
    daemon_starts: u64,
    peak_rss_kib: u64,
    clock_steps: u64,
    latency_changes: u64,
    converged_in: Option<Duration>,
    open_at_calm: usize,
}

/// Violations, each one line.
#[derive(Default, Clone)]
struct Findings(Arc<Mutex<Vec<String>>>);

impl Findings {
    fn add(&self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("VIOLATION: {what}");
        self.0.lock().unwrap().push(what);
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// The platform's actions.
#[derive(Default)]
struct PlatformCounts {
    moved: u64,
    edited: u64,
    deleted_crm: u64,
    deleted_other: u64,
    unconfigured_created: u64,
}

// ---------------------------------------------------------------------------------------------
// The CRM's ledger: what it wrote, hence what must hold upstream at the end.

#[derive(Debug, Clone)]
struct CrmRef {
    campaign: i64,
    reference: String,
    /// The last `email` and `value` the CRM wrote for it (the create's, or its last patch's).
    email: String,
    value: Option<f64>,
    unqueued: bool,
    deleted_by_platform: bool,
}

#[derive(Default)]
struct Ledger {
    refs: Vec<CrmRef>,
    /// Indexes of the refs the CRM may still write for: neither unqueued nor deleted.
    live: Vec<usize>,
    by_ref: HashMap<(i64, String), usize>,
    /// Job id → ref, learnt from the outbox's `result_job_id` (what lets a CRM patch by id).
    job_ids: HashMap<i64, usize>,
    ids_of: HashMap<usize, i64>,
    transactions: u64,
    failed_transactions: u64,
}

impl Ledger {
    fn mark_deleted(&mut self, idx: usize) {
        self.refs[idx].deleted_by_platform = true;
        self.live.retain(|i| *i != idx);
    }
}

/// One row as the CRM writes it.
#[derive(Debug, Clone)]
struct CrmRow {
    op: &'static str,
    campaign: Option<i64>,
    reference: Option<String>,
    job_id: Option<i64>,
    payload: String,
}

enum Effect {
    Created(CrmRef),
    Email(usize, String),
    Value(usize, f64),
    Unqueued(usize),
}

// ---------------------------------------------------------------------------------------------
// The database, through the contract's tables only (plain SQL, as a CRM or an operator would).

#[derive(QueryableByName, Debug, Clone)]
struct RowView {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    op: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    campaign: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    reference: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    job_id: Option<i64>,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    result_job_id: Option<i64>,
    #[diesel(sql_type = Text)]
    next_attempt_at: String,
    #[diesel(sql_type = Nullable<Text>)]
    first_sent_at: Option<String>,
}

impl RowView {
    fn is_open(&self) -> bool {
        self.status == "pending" || self.status == "in_flight"
    }
}

#[derive(QueryableByName, Debug, Clone)]
struct RunView {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    started_at: String,
    #[diesel(sql_type = Nullable<Text>)]
    finished_at: Option<String>,
    #[diesel(sql_type = Text)]
    status: String,
}

const ROWS_SQL: &str = "SELECT id, op, campaign, reference, job_id, payload, status, attempts, \
     last_error, result_job_id, CAST(next_attempt_at AS TEXT) AS next_attempt_at, \
     CAST(first_sent_at AS TEXT) AS first_sent_at FROM outbox ORDER BY id";
const RUNS_SQL: &str = "SELECT id, CAST(started_at AS TEXT) AS started_at, \
     CAST(finished_at AS TEXT) AS finished_at, status FROM sync_runs ORDER BY id DESC LIMIT 50";

async fn all_rows(db: &Db) -> Result<Vec<RowView>> {
    load(db, ROWS_SQL).await
}

async fn recent_runs(db: &Db) -> Result<Vec<RunView>> {
    load(db, RUNS_SQL).await
}

/// The rows `sql` selects, on either backend.
async fn load<T>(db: &Db, sql: &'static str) -> Result<Vec<T>>
where
    T: diesel::QueryableByName<diesel::sqlite::Sqlite>
        + diesel::QueryableByName<diesel::pg::Pg>
        + Send
        + 'static,
{
    Ok(db
        .run(move |c| {
            jobsync::with_conn!(c, |c| diesel::sql_query(sql).load::<T>(c)).map_err(DbError::from)
        })
        .await?)
}

/// Inserts the rows in one transaction of the CRM's own (`BEGIN IMMEDIATE` on SQLite, waiting
/// for jobsync's writes under the busy timeout).
async fn write_rows(db: &Db, rows: Vec<CrmRow>) -> Result<(), DbError> {
    db.write(move |c| {
        for r in &rows {
            match c {
                Conn::Sqlite(p) => diesel::sql_query(
                    "INSERT INTO outbox (op, campaign, reference, job_id, payload) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind::<Text, _>(r.op)
                .bind::<Nullable<BigInt>, _>(r.campaign)
                .bind::<Nullable<Text>, _>(r.reference.as_deref())
                .bind::<Nullable<BigInt>, _>(r.job_id)
                .bind::<Text, _>(&r.payload)
                .execute(&mut **p)?,
                Conn::Pg(p) => diesel::sql_query(
                    "INSERT INTO outbox (op, campaign, reference, job_id, payload) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind::<Text, _>(r.op)
                .bind::<Nullable<BigInt>, _>(r.campaign)
                .bind::<Nullable<Text>, _>(r.reference.as_deref())
                .bind::<Nullable<BigInt>, _>(r.job_id)
                .bind::<Text, _>(&r.payload)
                .execute(&mut **p)?,
            };
        }
        Ok(())
    })
    .await
}

/// A timestamp as either backend writes it as text (`YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC).
fn parse_ts(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(raw, f).ok())
    .map(|t| t.and_utc())
}

// ---------------------------------------------------------------------------------------------
// The database to soak on.

struct Database {
    url: String,
    /// PostgreSQL: the server URL and the schema to drop at the end.
    schema: Option<(String, String)>,
}

fn prepare_database(args: &Args, work: &Path) -> Result<Database> {
    match args.backend {
        Backend::Sqlite => Ok(Database {
            url: format!("sqlite://{}", work.join("soak.db").display()),
            schema: None,
        }),
        Backend::Postgres => {
            let admin = args
                .postgres_url
                .clone()
                .or_else(|| std::env::var("JOBSYNC_SOAK_POSTGRES_URL").ok())
                .or_else(|| std::env::var("JOBSYNC_TEST_POSTGRES_URL").ok())
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "postgres://jobsync:jobsync@127.0.0.1/jobsync_test".into());
            let schema = format!("soak_{}_{}", args.seed, std::process::id());
            pg_exec(&admin, &format!("CREATE SCHEMA {schema}"))?;
            let sep = if admin.contains('?') { '&' } else { '?' };
            Ok(Database {
                url: format!("{admin}{sep}options=-csearch_path%3D{schema}"),
                schema: Some((admin, schema)),
            })
        }
    }
}

fn pg_exec(url: &str, sql: &str) -> Result<()> {
    use diesel::Connection;
    let mut conn = diesel::PgConnection::establish(url).map_err(|e| {
        anyhow!(
            "cannot connect to PostgreSQL ({}): {e}",
            jobsync::db::redact(url)
        )
    })?;
    diesel::sql_query(sql)
        .execute(&mut conn)
        .with_context(|| sql.to_string())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The jobsync binary.

#[derive(Clone)]
struct Jobsync {
    bin: PathBuf,
    base_url: String,
    database_url: String,
    work: PathBuf,
    settle_secs: u64,
}

impl Jobsync {
    /// A command with a clean environment: the API, the database and the soak's tuning only.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
            cmd.env_remove(key);
        }
        let timeout = TIMEOUT_SECS.to_string();
        let settle = self.settle_secs.to_string();
        let grace = GRACE_SECS.to_string();
        let campaigns: Vec<String> = CAMPAIGNS.iter().map(i64::to_string).collect();
        cmd.env("JOBSYNC_API__BASE_URL", &self.base_url)
            .env("JOBSYNC_API__TOKEN", "dev-token")
            .env("JOBSYNC_DATABASE__URL", &self.database_url)
            .env("JOBSYNC_LOG__FORMAT", "json")
            .env("JOBSYNC_SERVER__LISTEN", "")
            .env("JOBSYNC_SYNC__SCHEDULE", SCHEDULE)
            .env("JOBSYNC_SYNC__CAMPAIGNS", campaigns.join(","))
            .env("JOBSYNC_API__TIMEOUT_SECS", &timeout)
            .env("JOBSYNC_API__MAX_ATTEMPTS", "3")
            .env("JOBSYNC_API__REQUESTS_PER_SECOND", "200")
            .env("JOBSYNC_API__CONCURRENCY", "2")
            // Small bulk calls: a push takes several, so that kills land in the middle of one.
            .env("JOBSYNC_API__BULK_SIZE", "10")
            .env("JOBSYNC_PUSH__SETTLE_SECS", &settle)
            // Rows fail only when something is wrong, not because the chaos lasted.
            .env("JOBSYNC_PUSH__MAX_ROW_ATTEMPTS", "1000")
            .env("JOBSYNC_SERVER__SHUTDOWN_GRACE_SECS", &grace)
            .env("RUST_LOG", "info")
            .current_dir(&self.work)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a one-shot command to completion; answers its status, stdout and stderr, and appends
    /// its stderr to `commands.log`.
    async fn run(&self, args: &[&str]) -> Result<(ExitStatus, String, String)> {
        let mut cmd = self.command();
        cmd.args(args);
        let label = args.join(" ");
        let log = self.work.join("commands.log");
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .with_context(|| format!("cannot run jobsync {label}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        writeln!(
            file,
            "# jobsync {} → {}\n{stderr}",
            args.join(" "),
            output.status
        )?;
        Ok((output.status, stdout, stderr))
    }
}

/// A running `jobsync run`.
struct Daemon {
    child: Child,
    generation: u64,
    started: Instant,
    /// The last lines of its log, for an excerpt when something goes wrong.
    tail: Arc<Mutex<VecDeque<String>>>,
}

const TAIL_LINES: usize = 40;

impl Daemon {
    async fn start(jobsync: &Jobsync, generation: u64, findings: &Findings) -> Result<Daemon> {
        let mut cmd = jobsync.command();
        cmd.arg("run")
            .env("JOBSYNC_SERVER__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot start jobsync run")?;
        let stderr = child.stderr.take().expect("piped");
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<String>();
        let log_path = jobsync.work.join("daemon.log");
        let pid = child.id();
        {
            let tail = tail.clone();
            let findings = findings.clone();
            std::thread::spawn(move || {
                let mut addr_tx = Some(addr_tx);
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log_path)
                    .ok();
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(
                        log,
                        "# daemon #{generation} pid {pid} started {}",
                        Utc::now()
                    );
                }
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(log) = log.as_mut() {
                        let _ = writeln!(log, "{line}");
                    }
                    if line.contains("panicked") {
                        findings.add(format!("daemon #{generation} (pid {pid}) panicked: {line}"));
                    }
                    if line.contains("health server listening")
                        && let Some(tx) = addr_tx.take()
                    {
                        let addr = serde_json::from_str::<Value>(&line)
                            .ok()
                            .and_then(|v| v["addr"].as_str().map(str::to_string))
                            .unwrap_or_default();
                        let _ = tx.send(addr);
                    }
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        let mut daemon = Daemon {
            child,
            generation,
            started: Instant::now(),
            tail,
        };
        let addr = match tokio::time::timeout(Duration::from_secs(60), addr_rx).await {
            Ok(Ok(addr)) if !addr.is_empty() => addr,
            _ => {
                let status = daemon.child.try_wait().ok().flatten();
                bail!(
                    "daemon #{generation} did not start its health server within 60 s \
                     (exit: {status:?}); its log:\n{}",
                    daemon.excerpt()
                );
            }
        };
        // The health server answers: the process and its scheduler are alive.
        let healthz = format!("http://{addr}/healthz");
        match reqwest::get(&healthz).await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => findings.add(format!(
                "daemon #{generation}: GET /healthz answered {} right after start",
                r.status()
            )),
            Err(e) => findings.add(format!("daemon #{generation}: GET /healthz failed: {e}")),
        }
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn excerpt(&self) -> String {
        self.tail
            .lock()
            .unwrap()
            .iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// VmHWM of the process, in KiB (0 once it is gone).
    fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped yet.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, signal);
        }
    }

    /// Waits up to `limit` for the process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The soak.

struct Shared {
    sim: SimHandle,
    db: Db,
    ledger: Mutex<Ledger>,
    findings: Findings,
    figures: Mutex<Figures>,
    platform: Mutex<PlatformCounts>,
    began: Instant,
}

async fn soak(args: Args) -> Result<usize> {
    let work = std::env::temp_dir().join(format!(
        "jobsync-soak-{}-{}-{}",
        match args.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        },
        args.seed,
        std::process::id()
    ));
    std::fs::create_dir_all(&work)?;
    let bin = match &args.jobsync {
        Some(bin) => bin.clone(),
        None => {
            // target/<profile>/examples/soak → target/<profile>/jobsync
            let exe = std::env::current_exe()?;
            exe.parent()
                .and_then(Path::parent)
                .map(|dir| dir.join("jobsync"))
                .ok_or_else(|| anyhow!("cannot tell where jobsync is; pass --jobsync"))?
        }
    };
    if !bin.exists() {
        bail!(
            "{} does not exist: build it (cargo build --release) or pass --jobsync",
            bin.display()
        );
    }
    let database = prepare_database(&args, &work)?;
    eprintln!(
        "soak: {} minutes on {:?}, seed {}, work directory {}, jobsync {}",
        args.minutes,
        args.backend,
        args.seed,
        work.display(),
        bin.display()
    );

    let db = {
        let url = database.url.clone();
        tokio::task::spawn_blocking(move || Db::open(&url))
            .await?
            .map_err(|e| anyhow!("cannot open the database: {e}"))?
    };
    let sim = jobsync::sim::spawn(
        "127.0.0.1:0".parse()?,
        SimConfig {
            token: "dev-token".into(),
            campaigns: CAMPAIGNS.to_vec(),
            jobs_per_campaign: SEEDED_PER_CAMPAIGN,
            seed: args.seed,
            allow_duplicate_references: true,
            ..SimConfig::default()
        },
    )
    .await?;
    sim.set_faults(&chaos_faults(100, args.late_apply_ms))
        .map_err(|e| anyhow!("the simulator refused the faults: {e}"))?;
    let jobsync = Jobsync {
        bin,
        base_url: sim.base_url(),
        database_url: database.url.clone(),
        work: work.clone(),
        settle_secs: args.settle_secs,
    };
    let shared = Arc::new(Shared {
        sim,
        db,
        ledger: Mutex::new(Ledger::default()),
        findings: Findings::default(),
        figures: Mutex::new(Figures::default()),
        platform: Mutex::new(PlatformCounts::default()),
        began: Instant::now(),
    });

    // The chaos.
    let stop = CancellationToken::new();
    let mut seeds = StdRng::seed_from_u64(args.seed);
    let crm = tokio::spawn(crm_writer(
        shared.clone(),
        StdRng::seed_from_u64(seeds.r#gen()),
        stop.clone(),
    ));
    let platform = tokio::spawn(platform_actions(
        shared.clone(),
        StdRng::seed_from_u64(seeds.r#gen()),
        stop.clone(),
    ));
    let weather = tokio::spawn(weather(
        shared.clone(),
        StdRng::seed_from_u64(seeds.r#gen()),
        stop.clone(),
    ));
    let supervisor = tokio::spawn(supervise(
        shared.clone(),
        jobsync.clone(),
        StdRng::seed_from_u64(seeds.r#gen()),
        args.kill_every,
        stop.clone(),
    ));
    let progress = tokio::spawn(progress(shared.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs_f64(args.minutes.max(0.0) * 60.0)).await;
    stop.cancel();
    crm.await??;
    platform.await??;
    weather.await??;
    progress.await?;
    let mut daemon = supervisor.await??;

    // The calm: no fault, the clock back, nobody writes; the daemon must settle what is due.
    eprintln!(
        "soak: {:.0}s: calm — faults off, the CRM and the platform stopped",
        shared.began.elapsed().as_secs_f64()
    );
    shared
        .sim
        .set_faults(&calm_faults())
        .map_err(|e| anyhow!("{e}"))?;
    shared.sim.set_clock(0.0).map_err(|e| anyhow!("{e}"))?;
    converge(&shared, &jobsync, &mut daemon).await?;
    stop_daemon(&shared, &mut daemon).await;
    drop(daemon);

    // Delete detection on demand, one cycle, then the product's own verification.
    let (status, out, err) = jobsync.run(&["resync"]).await?;
    if !status.success() {
        shared.findings.add(format!(
            "jobsync resync exited {status}: {}{}",
            out.trim(),
            err.trim()
        ));
    }
    let (status, _, err) = jobsync.run(&["--once"]).await?;
    if !status.success() {
        shared.findings.add(format!(
            "jobsync --once after the resync exited {status}: {}",
            last_lines(&err, 5)
        ));
    }
    let rows = all_rows(&shared.db).await?;
    refresh_job_ids(&shared, &rows);
    let verify = verify(&shared, &jobsync).await?;
    let upstream = exactly_once(&shared, &rows);

    let line = figures_line(&args, &shared, &rows, &verify, &upstream);
    let violations = shared.findings.count();
    let keep = args.keep || violations > 0;
    if keep {
        eprintln!("soak: work directory kept: {}", work.display());
        if let Some((_, schema)) = &database.schema {
            eprintln!("soak: PostgreSQL schema kept: {schema}");
        }
    } else {
        let _ = std::fs::remove_dir_all(&work);
        if let Some((admin, schema)) = &database.schema {
            let _ = pg_exec(admin, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
    println!("{line}");
    Ok(violations)
}

fn chaos_faults(latency_ms: u64, late_apply_ms: u64) -> FaultUpdate {
    FaultUpdate {
        fail_rate: Some(0.05),
        throttle_rate: Some(0.05),
        retry_after_secs: Some(1),
        drop_rate: Some(0.04),
        applied_drop_rate: Some(0.05),
        applied_fail_rate: Some(0.08),
        late_apply_rate: Some(0.08),
        late_apply_ms: Some(late_apply_ms),
        latency_ms: Some(latency_ms),
        allow_duplicate_references: Some(true),
        ..FaultUpdate::default()
    }
}

/// Every fault off; still no uniqueness check, so that a duplicate would show.
fn calm_faults() -> FaultUpdate {
    FaultUpdate {
        fail_rate: Some(0.0),
        throttle_rate: Some(0.0),
        drop_rate: Some(0.0),
        applied_drop_rate: Some(0.0),
        applied_fail_rate: Some(0.0),
        late_apply_rate: Some(0.0),
        latency_ms: Some(0),
        ..FaultUpdate::default()
    }
}

/// Sleeps `d`, or less when the soak stops; answers whether it stopped.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = stop.cancelled() => true,
    }
}

// ---------------------------------------------------------------------------------------------
// The CRM.

async fn crm_writer(shared: Arc<Shared>, mut rng: StdRng, stop: CancellationToken) -> Result<()> {
    let mut patch_seq: u64 = 0;
    let mut last_refresh = Instant::now();
    loop {
        if pause(Duration::from_millis(rng.gen_range(100..500)), &stop).await {
            return Ok(());
        }
        if last_refresh.elapsed() > Duration::from_secs(5) {
            last_refresh = Instant::now();
            if let Ok(rows) = all_rows(&shared.db).await {
                refresh_job_ids(&shared, &rows);
            }
        }
        let (rows, effects) = {
            let ledger = shared.ledger.lock().unwrap();
            plan_transaction(&ledger, &mut rng, &mut patch_seq)
        };
        match write_rows(&shared.db, rows).await {
            Ok(()) => {
                let mut ledger = shared.ledger.lock().unwrap();
                ledger.transactions += 1;
                apply(&mut ledger, effects);
            }
            Err(e) => {
                // Rolled back: the ledger is left as it was. A CRM retries; this one moves on.
                eprintln!("soak: a CRM transaction failed (rolled back): {e}");
                shared.ledger.lock().unwrap().failed_transactions += 1;
            }
        }
    }
}

/// One transaction of 1–6 rows: creates of new references, patches of `email` and/or `value`
/// (by reference, or by the job id the CRM learnt), unqueues (after which the CRM writes nothing
/// more for that reference).
fn plan_transaction(
    ledger: &Ledger,
    rng: &mut StdRng,
    patch_seq: &mut u64,
) -> (Vec<CrmRow>, Vec<Effect>) {
    let base = ledger.refs.len();
    let mut live = ledger.live.clone();
    let mut created: Vec<CrmRef> = Vec::new();
    let mut rows = Vec::new();
    let mut effects = Vec::new();
    let key = |idx: usize, created: &[CrmRef]| -> (i64, String) {
        let r = if idx >= base {
            &created[idx - base]
        } else {
            &ledger.refs[idx]
        };
        (r.campaign, r.reference.clone())
    };
    for _ in 0..rng.gen_range(1..=6) {
        let roll: f64 = rng.r#gen();
        if roll < 0.45 || live.is_empty() {
            let n = base + created.len();
            let campaign = CAMPAIGNS[rng.gen_range(0..CAMPAIGNS.len())];
            let reference = format!("crm-{n}");
            let email = format!("c{n}@soak.example");
            rows.push(CrmRow {
                op: "create",
                campaign: Some(campaign),
                reference: Some(reference.clone()),
                job_id: None,
                payload: json!({"name": format!("Soak {n}"), "numbers": ["+33612345678"],
                                "email": email})
                .to_string(),
            });
            let r = CrmRef {
                campaign,
                reference,
                email,
                value: None,
                unqueued: false,
                deleted_by_platform: false,
            };
            effects.push(Effect::Created(r.clone()));
            created.push(r);
            live.push(n);
            continue;
        }
        let pick = rng.gen_range(0..live.len());
        let idx = live[pick];
        let (campaign, reference) = key(idx, &created);
        // By id when the CRM knows it (a third of the time), else by its own key.
        let (campaign, reference, job_id) = match ledger.ids_of.get(&idx) {
            Some(id) if rng.gen_bool(0.33) => (None, None, Some(*id)),
            _ => (Some(campaign), Some(reference), None),
        };
        if roll < 0.87 {
            *patch_seq += 1;
            let mut payload = serde_json::Map::new();
            let which = rng.gen_range(0..3);
            if which != 1 {
                let email = format!("p{}-{idx}@soak.example", *patch_seq);
                payload.insert("email".into(), json!(email));
                effects.push(Effect::Email(idx, email));
            }
            if which != 0 {
                let value = *patch_seq as f64;
                payload.insert("value".into(), json!(value));
                effects.push(Effect::Value(idx, value));
            }
            rows.push(CrmRow {
                op: "patch",
                campaign,
                reference,
                job_id,
                payload: Value::Object(payload).to_string(),
            });
        } else {
            rows.push(CrmRow {
                op: "unqueue",
                campaign,
                reference,
                job_id,
                payload: "{}".into(),
            });
            effects.push(Effect::Unqueued(idx));
            live.swap_remove(pick);
        }
    }
    (rows, effects)
}

fn apply(ledger: &mut Ledger, effects: Vec<Effect>) {
    for effect in effects {
        match effect {
            Effect::Created(r) => {
                let idx = ledger.refs.len();
                ledger.by_ref.insert((r.campaign, r.reference.clone()), idx);
                ledger.refs.push(r);
                ledger.live.push(idx);
            }
            Effect::Email(idx, email) => ledger.refs[idx].email = email,
            Effect::Value(idx, value) => ledger.refs[idx].value = Some(value),
            Effect::Unqueued(idx) => {
                ledger.refs[idx].unqueued = true;
                ledger.live.retain(|i| *i != idx);
            }
        }
    }
}

/// Learns the job ids of the CRM's references from the outbox (`result_job_id` of done rows).
fn refresh_job_ids(shared: &Shared, rows: &[RowView]) {
    let mut ledger = shared.ledger.lock().unwrap();
    for row in rows {
        let (Some(campaign), Some(reference), Some(id)) =
            (row.campaign, row.reference.as_ref(), row.result_job_id)
        else {
            continue;
        };
        if row.status != "done" {
            continue;
        }
        if let Some(&idx) = ledger.by_ref.get(&(campaign, reference.clone())) {
            ledger.job_ids.insert(id, idx);
            ledger.ids_of.insert(idx, id);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The platform: the dialer, people editing and deleting, jobs in campaigns nobody configured.

async fn platform_actions(
    shared: Arc<Shared>,
    mut rng: StdRng,
    stop: CancellationToken,
) -> Result<()> {
    let mut deleted_in: HashMap<i64, usize> = HashMap::new();
    let mut next_platform_ref = 0u64;
    loop {
        if pause(Duration::from_millis(rng.gen_range(200..1200)), &stop).await {
            return Ok(());
        }
        let roll: f64 = rng.r#gen();
        if roll < 0.45 {
            let moved = shared.sim.dial(rng.gen_range(1..=8));
            shared.platform.lock().unwrap().moved += moved as u64;
        } else if roll < 0.65 {
            let edited = shared.sim.edit(rng.gen_range(1..=3));
            shared.platform.lock().unwrap().edited += edited as u64;
        } else if roll < 0.85 {
            delete_one(&shared, &mut rng, &mut deleted_in);
        } else {
            let campaign = UNCONFIGURED[rng.gen_range(0..UNCONFIGURED.len())];
            let jobs: Vec<serde_json::Map<String, Value>> = (0..rng.gen_range(1..=4))
                .map(|_| {
                    next_platform_ref += 1;
                    let n = next_platform_ref;
                    let Value::Object(job) = json!({
                        "campaign": campaign,
                        "reference": format!("plat-{n}"),
                        "name": format!("Platform {n}"),
                        "numbers": ["+33698765432"],
                        "city": "Lyon",
                    }) else {
                        unreachable!("an object")
                    };
                    job
                })
                .collect();
            match shared.sim.insert_jobs(jobs) {
                Ok(inserted) => {
                    shared.platform.lock().unwrap().unconfigured_created += inserted.len() as u64;
                }
                Err(e) => bail!("the simulator refused the platform's jobs: {e}"),
            }
        }
    }
}

/// Deletes one random job, keeping each campaign's deletions within [`DELETE_SHARE`] of its
/// jobs; a CRM job is marked deleted in the ledger (its later rows may fail, its create may be
/// sent again). A reference held twice is left alone, so that the duplicate stays visible.
fn delete_one(shared: &Shared, rng: &mut StdRng, deleted_in: &mut HashMap<i64, usize>) {
    let jobs = shared.sim.state();
    let mut live_in: HashMap<i64, usize> = HashMap::new();
    let mut holders: HashMap<(i64, String), usize> = HashMap::new();
    for job in &jobs {
        *live_in.entry(job.campaign).or_default() += 1;
        if let Some(r) = &job.reference {
            *holders.entry((job.campaign, r.clone())).or_default() += 1;
        }
    }
    let Some(job) = jobs.choose(rng) else { return };
    let deleted = deleted_in.get(&job.campaign).copied().unwrap_or(0);
    let live = live_in.get(&job.campaign).copied().unwrap_or(0);
    if (deleted + 1) as f64 > DELETE_SHARE * (live + deleted) as f64 {
        return;
    }
    let key = job.reference.clone().map(|r| (job.campaign, r));
    if key
        .as_ref()
        .and_then(|k| holders.get(k))
        .copied()
        .unwrap_or(0)
        > 1
    {
        return;
    }
    // Under the ledger's lock, so that the CRM does not pick the reference meanwhile.
    let mut ledger = shared.ledger.lock().unwrap();
    if shared.sim.delete_job(job.id).is_none() {
        return;
    }
    *deleted_in.entry(job.campaign).or_default() += 1;
    let crm_idx = key.and_then(|k| ledger.by_ref.get(&k).copied());
    let mut counts = shared.platform.lock().unwrap();
    match crm_idx {
        Some(idx) => {
            ledger.mark_deleted(idx);
            counts.deleted_crm += 1;
        }
        None => counts.deleted_other += 1,
    }
}

/// The weather: the simulated clock steps a few seconds at a time, the latency changes.
async fn weather(shared: Arc<Shared>, mut rng: StdRng, stop: CancellationToken) -> Result<()> {
    let mut offset_secs: i64 = 0;
    loop {
        if pause(Duration::from_millis(rng.gen_range(2_000..8_000)), &stop).await {
            return Ok(());
        }
        let mut step = rng.gen_range(-MAX_CLOCK_STEP_SECS..=MAX_CLOCK_STEP_SECS);
        if step == 0 {
            step = 1;
        }
        offset_secs = (offset_secs + step).clamp(-MAX_CLOCK_OFFSET_SECS, MAX_CLOCK_OFFSET_SECS);
        shared
            .sim
            .set_clock(offset_secs as f64 / 3600.0)
            .map_err(|e| anyhow!("{e}"))?;
        let latency = rng.gen_range(0..=300);
        shared
            .sim
            .set_faults(&FaultUpdate {
                latency_ms: Some(latency),
                ..FaultUpdate::default()
            })
            .map_err(|e| anyhow!("{e}"))?;
        let mut figures = shared.figures.lock().unwrap();
        figures.clock_steps += 1;
        figures.latency_changes += 1;
    }
}

async fn progress(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        if pause(Duration::from_secs(30), &stop).await {
            return;
        }
        let open = all_rows(&shared.db)
            .await
            .map(|rows| rows.iter().filter(|r| r.is_open()).count())
            .unwrap_or(0);
        let stats = shared.sim.stats();
        let faults: u64 = stats.faults.values().sum();
        let (refs, tx) = {
            let l = shared.ledger.lock().unwrap();
            (l.refs.len(), l.transactions)
        };
        let (kills, starts) = {
            let f = shared.figures.lock().unwrap();
            (f.sigkills + f.sigterms, f.daemon_starts)
        };
        eprintln!(
            "soak: {:.0}s: daemon started {starts}×, {kills} kills; CRM {tx} transactions, {refs} \
             references, {open} rows open; {} requests, {faults} faults injected; {} findings",
            shared.began.elapsed().as_secs_f64(),
            stats.requests,
            shared.findings.count()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's life: started, killed every 30–90 s, started again.

async fn supervise(
    shared: Arc<Shared>,
    jobsync: Jobsync,
    mut rng: StdRng,
    (min_secs, max_secs): (u64, u64),
    stop: CancellationToken,
) -> Result<Daemon> {
    let mut generation = 1;
    let mut daemon = start(&shared, &jobsync, &mut generation).await?;
    loop {
        let next_kill = Instant::now() + Duration::from_secs(rng.gen_range(min_secs..=max_secs));
        let sigkill = rng.gen_bool(0.5);
        let restart_after = Duration::from_millis(rng.gen_range(0..2_000));
        // Most kills are aimed at a cycle at work (pulling, pushing, looking up), the rest land
        // wherever the daemon is.
        let aimed = rng.gen_bool(0.75);
        let into_cycle = Duration::from_millis(rng.gen_range(0..1_500));
        // Watch it until the kill is due (or the chaos ends).
        loop {
            if watch(&shared, &mut daemon) {
                generation += 1;
                daemon = start(&shared, &jobsync, &mut generation).await?;
            }
            if stop.is_cancelled() {
                return Ok(daemon);
            }
            if Instant::now() >= next_kill {
                break;
            }
            pause(Duration::from_millis(250), &stop).await;
        }
        if aimed {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !cycle_running(&shared.db).await && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(into_cycle).await;
        }
        let mid_cycle = cycle_running(&shared.db).await;
        if mid_cycle {
            shared.figures.lock().unwrap().mid_cycle_kills += 1;
        }
        if sigkill {
            daemon.signal(libc::SIGKILL);
            let _ = daemon.wait_exit(Duration::from_secs(10)).await;
            shared.figures.lock().unwrap().sigkills += 1;
        } else {
            terminate(&shared, &mut daemon, true).await;
        }
        eprintln!(
            "soak: {:.0}s: daemon #{} {} after {:.0}s{}",
            shared.began.elapsed().as_secs_f64(),
            daemon.generation,
            if sigkill { "SIGKILLed" } else { "SIGTERMed" },
            daemon.started.elapsed().as_secs_f64(),
            if mid_cycle {
                ", in the middle of a cycle"
            } else {
                ""
            }
        );
        drop(daemon);
        tokio::time::sleep(restart_after).await;
        generation += 1;
        daemon = start(&shared, &jobsync, &mut generation).await?;
    }
}

/// Starts daemon #`generation`; a start that fails is a violation, tried again up to three
/// times (each under a new number) before the soak gives up.
async fn start(shared: &Shared, jobsync: &Jobsync, generation: &mut u64) -> Result<Daemon> {
    let mut tries = 0;
    loop {
        match Daemon::start(jobsync, *generation, &shared.findings).await {
            Ok(daemon) => {
                shared.figures.lock().unwrap().daemon_starts += 1;
                return Ok(daemon);
            }
            Err(e) if tries < 3 => {
                shared
                    .findings
                    .add(format!("daemon #{generation} failed to start: {e:#}"));
                tries += 1;
                *generation += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the latest run in `sync_runs` is still `running`: a cycle is at work.
async fn cycle_running(db: &Db) -> bool {
    recent_runs(db)
        .await
        .ok()
        .and_then(|runs| runs.first().map(|r| r.status == "running"))
        .unwrap_or(false)
}

/// Samples the daemon's peak RSS; answers whether it exited on its own (a violation).
fn watch(shared: &Shared, daemon: &mut Daemon) -> bool {
    let rss = daemon.peak_rss_kib();
    {
        let mut figures = shared.figures.lock().unwrap();
        figures.peak_rss_kib = figures.peak_rss_kib.max(rss);
    }
    match daemon.child.try_wait() {
        Ok(Some(status)) => {
            shared.figures.lock().unwrap().unexpected_exits += 1;
            shared.findings.add(format!(
                "daemon #{} (pid {}) exited on its own ({status}) after {:.0}s; its log ends:\n{}",
                daemon.generation,
                daemon.pid(),
                daemon.started.elapsed().as_secs_f64(),
                daemon.excerpt()
            ));
            true
        }
        _ => false,
    }
}

/// SIGTERM: the daemon must exit 0 within `server.shutdown_grace_secs`. `kill`: one of the
/// chaos's kills (else the stop after the calm, timed all the same).
async fn terminate(shared: &Shared, daemon: &mut Daemon, kill: bool) {
    let rss = daemon.peak_rss_kib();
    let sent = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(GRACE_SECS + 20)).await;
    let took = sent.elapsed();
    {
        let mut figures = shared.figures.lock().unwrap();
        figures.sigterms += u64::from(kill);
        figures.slowest_sigterm = figures.slowest_sigterm.max(took);
        figures.peak_rss_kib = figures.peak_rss_kib.max(rss);
    }
    match status {
        Some(status) if status.success() && took <= Duration::from_secs(GRACE_SECS) => {}
        Some(status) => shared.findings.add(format!(
            "daemon #{} exited {status} {:.1}s after SIGTERM (must be exit 0 within \
             server.shutdown_grace_secs = {GRACE_SECS}s); its log ends:\n{}",
            daemon.generation,
            took.as_secs_f64(),
            daemon.excerpt()
        )),
        None => shared.findings.add(format!(
            "daemon #{} still running {:.0}s after SIGTERM (server.shutdown_grace_secs = \
             {GRACE_SECS}s); its log ends:\n{}",
            daemon.generation,
            took.as_secs_f64(),
            daemon.excerpt()
        )),
    }
}

async fn stop_daemon(shared: &Shared, daemon: &mut Daemon) {
    if let Ok(None) = daemon.child.try_wait() {
        terminate(shared, daemon, false).await;
    }
}

// ---------------------------------------------------------------------------------------------
// After the chaos.

/// Waits, after the calm, until no outbox row is open. Each open row is due by its
/// `next_attempt_at` (a create in doubt: its lookup; a row backing off: its retry), a create
/// sent before also `push.settle_secs` after its first send: the first cycle that begins after
/// the last of them is due must leave none open.
async fn converge(shared: &Shared, jobsync: &Jobsync, daemon: &mut Daemon) -> Result<()> {
    let calm = Instant::now();
    // Slow commits still on their way land first (the simulator applies them even so).
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.sim.pending().late_applies > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = all_rows(&shared.db).await?;
    let settle = chrono::Duration::seconds(jobsync.settle_secs as i64);
    // The clock was up to MAX_CLOCK_OFFSET_SECS off while those times were taken.
    let margin = chrono::Duration::seconds(MAX_CLOCK_OFFSET_SECS + 2);
    let open: Vec<&RowView> = rows.iter().filter(|r| r.is_open()).collect();
    let due = open
        .iter()
        .filter_map(|r| {
            let next = parse_ts(&r.next_attempt_at)?;
            let settled = r
                .first_sent_at
                .as_deref()
                .and_then(parse_ts)
                .map(|sent| sent + settle);
            Some(settled.map_or(next, |s| s.max(next)))
        })
        .max()
        .unwrap_or_else(Utc::now)
        .max(Utc::now())
        + margin;
    shared.figures.lock().unwrap().open_at_calm = open.len();
    eprintln!(
        "soak: {} rows open at the calm, the last due at {due} ({:.0}s from now)",
        open.len(),
        (due - Utc::now()).num_milliseconds() as f64 / 1000.0
    );
    let mut reported_late = false;
    loop {
        if watch(shared, daemon) {
            let mut generation = daemon.generation + 1;
            *daemon = start(shared, jobsync, &mut generation).await?;
        }
        let rows = all_rows(&shared.db).await?;
        let open: Vec<&RowView> = rows.iter().filter(|r| r.is_open()).collect();
        if open.is_empty() {
            shared.figures.lock().unwrap().converged_in = Some(calm.elapsed());
            return Ok(());
        }
        if !reported_late {
            let runs = recent_runs(&shared.db).await?;
            let after = runs.iter().find(|r| {
                r.finished_at.is_some() && parse_ts(&r.started_at).is_some_and(|s| s > due)
            });
            if let Some(run) = after {
                reported_late = true;
                shared.findings.add(format!(
                    "{} rows still open after run {} ({}, started {}), the first cycle that \
                     began after they were all due ({due}); e.g. {}",
                    open.len(),
                    run.id,
                    run.status,
                    run.started_at,
                    describe_rows(&open, 3)
                ));
            }
        }
        if calm.elapsed() > CONVERGE_LIMIT {
            shared.findings.add(format!(
                "{} rows still open {:.0}s after the calm; e.g. {}",
                open.len(),
                calm.elapsed().as_secs_f64(),
                describe_rows(&open, 5)
            ));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn describe_rows(rows: &[&RowView], n: usize) -> String {
    rows.iter()
        .take(n)
        .map(|r| {
            format!(
                "[row {} {} {}{} status {} attempts {} next_attempt_at {} first_sent_at {} \
                 last_error {:?}]",
                r.id,
                r.op,
                r.campaign
                    .zip(r.reference.as_ref())
                    .map_or(String::new(), |(c, re)| format!("{c}/{re}")),
                r.job_id.map_or(String::new(), |id| format!(" job {id}")),
                r.status,
                r.attempts,
                r.next_attempt_at,
                r.first_sent_at.as_deref().unwrap_or("-"),
                r.last_error.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `jobsync verify --json`: findings by kind, the explained ones apart.
#[derive(Default)]
struct VerifyOutcome {
    exit: Option<i32>,
    by_kind: BTreeMap<String, u64>,
    explained: u64,
}

async fn verify(shared: &Shared, jobsync: &Jobsync) -> Result<VerifyOutcome> {
    let (status, out, err) = jobsync.run(&["verify", "--json"]).await?;
    let mut outcome = VerifyOutcome {
        exit: status.code(),
        ..VerifyOutcome::default()
    };
    if !matches!(status.code(), Some(0 | 3)) {
        shared.findings.add(format!(
            "jobsync verify could not complete ({status}): {}",
            last_lines(&err, 5)
        ));
        return Ok(outcome);
    }
    let ledger = shared.ledger.lock().unwrap();
    let mut unexplained = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let finding: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                shared.findings.add(format!(
                    "jobsync verify printed a line that is not JSON ({e}): {line}"
                ));
                continue;
            }
        };
        let kind = finding["kind"].as_str().unwrap_or("?").to_string();
        *outcome.by_kind.entry(kind.clone()).or_default() += 1;
        let crm_ref = finding["campaign"]
            .as_i64()
            .zip(finding["reference"].as_str())
            .and_then(|(c, r)| ledger.by_ref.get(&(c, r.to_string())))
            .map(|idx| &ledger.refs[*idx]);
        let explained = match kind.as_str() {
            // Upstream changes since the last pull: not a difference.
            "in_motion" => true,
            // A done create whose job the platform deleted afterwards.
            "lost" => crm_ref.is_some_and(|r| r.deleted_by_platform),
            _ => false,
        };
        if explained {
            outcome.explained += 1;
        } else {
            unexplained.push(line.to_string());
        }
    }
    drop(ledger);
    if !unexplained.is_empty() {
        shared.findings.add(format!(
            "jobsync verify ({status}) found {} differences the soak cannot explain: {}",
            unexplained.len(),
            unexplained
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        ));
    } else if status.code() == Some(3) && outcome.explained == 0 {
        shared.findings.add(format!(
            "jobsync verify exited 3 with no finding listed: {}",
            last_lines(&err, 3)
        ));
    }
    Ok(outcome)
}

/// The exactly-once count against the simulator's own state.
#[derive(Default)]
struct Upstream {
    jobs: usize,
    crm_jobs: usize,
    duplicates: usize,
    lost: usize,
    wrong_value: usize,
    not_unqueued: usize,
    open_rows: usize,
    failed_rows: usize,
    failed_explained: usize,
}

fn exactly_once(shared: &Shared, rows: &[RowView]) -> Upstream {
    let jobs = shared.sim.state();
    let mut holders: HashMap<(i64, String), Vec<&Job>> = HashMap::new();
    for job in &jobs {
        if let Some(r) = &job.reference {
            holders
                .entry((job.campaign, r.clone()))
                .or_default()
                .push(job);
        }
    }
    let ledger = shared.ledger.lock().unwrap();
    let mut up = Upstream {
        jobs: jobs.len(),
        ..Upstream::default()
    };
    // Rows per reference, for what a missing job means.
    let mut linked: HashMap<usize, bool> = HashMap::new();
    for row in rows {
        if let Some(idx) = ref_of_row(&ledger, row)
            && row.status == "done"
            && row.result_job_id.is_some()
        {
            linked.insert(idx, true);
        }
    }
    let mut examples: Vec<String> = Vec::new();
    for (idx, r) in ledger.refs.iter().enumerate() {
        let held = holders
            .get(&(r.campaign, r.reference.clone()))
            .map_or(&[][..], Vec::as_slice);
        up.crm_jobs += held.len();
        if held.len() > 1 {
            up.duplicates += 1;
            let ids: Vec<String> = held.iter().map(|j| j.id.to_string()).collect();
            note(
                &mut examples,
                format!(
                    "{}/{} is held by {} jobs upstream (ids {}){}",
                    r.campaign,
                    r.reference,
                    held.len(),
                    ids.join(", "),
                    rows_of(&ledger, rows, idx)
                ),
            );
            continue;
        }
        if r.deleted_by_platform {
            continue;
        }
        let Some(job) = held.first() else {
            if !r.unqueued || linked.get(&idx).copied().unwrap_or(false) {
                up.lost += 1;
                note(
                    &mut examples,
                    format!(
                        "{}/{} is not upstream{}",
                        r.campaign,
                        r.reference,
                        rows_of(&ledger, rows, idx)
                    ),
                );
            }
            continue;
        };
        let email_ok = job.email.as_deref() == Some(r.email.as_str());
        let value_ok = job.value == r.value;
        if !email_ok || !value_ok {
            up.wrong_value += 1;
            note(
                &mut examples,
                format!(
                    "{}/{} (job {}) has email {:?} value {:?} upstream; the CRM's last are \
                     {:?} {:?}{}",
                    r.campaign,
                    r.reference,
                    job.id,
                    job.email,
                    job.value,
                    r.email,
                    r.value,
                    rows_of(&ledger, rows, idx)
                ),
            );
        }
        if r.unqueued && !jobsync::job::state::is_finished(job.state) {
            up.not_unqueued += 1;
            note(
                &mut examples,
                format!(
                    "{}/{} (job {}) was unqueued by the CRM but is in state {} upstream{}",
                    r.campaign,
                    r.reference,
                    job.id,
                    job.state,
                    rows_of(&ledger, rows, idx)
                ),
            );
        }
    }
    for row in rows {
        if row.is_open() {
            up.open_rows += 1;
        } else if row.status == "failed" {
            up.failed_rows += 1;
            let explained =
                ref_of_row(&ledger, row).is_some_and(|i| ledger.refs[i].deleted_by_platform);
            if explained {
                up.failed_explained += 1;
            } else {
                note(
                    &mut examples,
                    format!(
                        "outbox row {} ({} {}) failed: {}",
                        row.id,
                        row.op,
                        row.payload,
                        row.last_error.as_deref().unwrap_or("")
                    ),
                );
            }
        }
    }
    drop(ledger);
    let failed = up.failed_rows - up.failed_explained;
    let bad = up.duplicates + up.lost + up.wrong_value + up.not_unqueued + up.open_rows + failed;
    if bad > 0 {
        shared.findings.add(format!(
            "exactly-once count: {} duplicated, {} lost, {} without the CRM's last value, {} \
             unqueued but not finished, {} rows open, {failed} rows failed; e.g.\n    {}",
            up.duplicates,
            up.lost,
            up.wrong_value,
            up.not_unqueued,
            up.open_rows,
            examples.join("\n    ")
        ));
    }
    up
}

/// Keeps the first ten examples of what went wrong.
fn note(examples: &mut Vec<String>, what: String) {
    if examples.len() < 10 {
        examples.push(what);
    }
}

fn ref_of_row(ledger: &Ledger, row: &RowView) -> Option<usize> {
    match (row.campaign, row.reference.as_ref()) {
        (Some(c), Some(r)) => ledger.by_ref.get(&(c, r.clone())).copied(),
        _ => row.job_id.and_then(|id| ledger.job_ids.get(&id).copied()),
    }
}

/// The outbox rows of a reference, for a violation's message.
fn rows_of(ledger: &Ledger, rows: &[RowView], idx: usize) -> String {
    let mine: Vec<&RowView> = rows
        .iter()
        .filter(|r| ref_of_row(ledger, r) == Some(idx))
        .collect();
    let list: Vec<String> = mine
        .iter()
        .map(|r| {
            format!(
                "{}:{}:{}{}{}",
                r.id,
                r.op,
                r.status,
                r.result_job_id.map_or(String::new(), |id| format!("→{id}")),
                if r.op == "patch" {
                    format!(" {}", r.payload)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    format!("; its rows: {}", list.join(", "))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn figures_line(
    args: &Args,
    shared: &Shared,
    rows: &[RowView],
    verify: &VerifyOutcome,
    up: &Upstream,
) -> String {
    let f = shared.figures.lock().unwrap();
    let p = shared.platform.lock().unwrap();
    let stats = shared.sim.stats();
    let injected: u64 = stats.faults.values().sum();
    let kinds = [
        "fail",
        "throttle",
        "drop",
        "applied_drop",
        "applied_fail",
        "late_apply",
    ];
    let by_kind: Vec<String> = kinds
        .iter()
        .map(|k| format!("{k} {}", stats.faults.get(*k).copied().unwrap_or(0)))
        .collect();
    let count = |pred: &dyn Fn(&RowView) -> bool| rows.iter().filter(|r| pred(r)).count();
    let ops: Vec<String> = ["create", "patch", "unqueue"]
        .iter()
        .map(|op| format!("{op} {}", count(&|r: &RowView| r.op == *op)))
        .collect();
    let statuses: Vec<String> = ["done", "superseded", "failed"]
        .iter()
        .map(|s| format!("{s} {}", count(&|r: &RowView| r.status == *s)))
        .collect();
    let differences: u64 = verify.by_kind.values().sum::<u64>() - verify.explained;
    let verify_kinds = if verify.by_kind.is_empty() {
        "none".to_string()
    } else {
        verify
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ledger = shared.ledger.lock().unwrap();
    let violations = shared.findings.count();
    format!(
        "soak {result}: backend={backend} seed={seed} minutes={minutes} | kills {kills} \
         (SIGKILL {sigkill}, SIGTERM {sigterm}, {mid} mid-cycle, slowest SIGTERM exit {slowest:.1}s of {GRACE_SECS}s, \
         unexpected exits {unexpected}) | faults injected {faults} ({by_kind}; clock steps {steps}, \
         latency changes {latency}) of {requests} requests | rows {nrows} ({ops}; {statuses}, \
         open {open}; {open_at_calm} open at the calm, settled in {converged}) from {tx} CRM \
         transactions | upstream {jobs} jobs, {crm_jobs} of the CRM's {refs} references \
         ({deleted_crm} deleted by the platform) | platform moved {moved}, edited {edited}, \
         deleted {deleted}, created {unconfigured} in unconfigured campaigns | verify exit \
         {vexit}: {verify_kinds} ({differences} unexplained) | duplicates {dups}, lost {lost}, \
         last value wrong {wrong}, unqueue not applied {unq}, failed rows {failed} \
         ({failed_ok} at deleted jobs) | peak RSS {rss:.1} MiB (daemon), {own:.1} MiB (soak) | \
         violations {violations}",
        result = if violations == 0 { "PASS" } else { "FAIL" },
        backend = match args.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        },
        seed = args.seed,
        minutes = args.minutes,
        kills = f.sigkills + f.sigterms,
        sigkill = f.sigkills,
        sigterm = f.sigterms,
        mid = f.mid_cycle_kills,
        slowest = f.slowest_sigterm.as_secs_f64(),
        unexpected = f.unexpected_exits,
        faults = injected,
        by_kind = by_kind.join(", "),
        steps = f.clock_steps,
        latency = f.latency_changes,
        requests = stats.requests,
        nrows = rows.len(),
        ops = ops.join(", "),
        statuses = statuses.join(", "),
        open = up.open_rows,
        open_at_calm = f.open_at_calm,
        converged = f
            .converged_in
            .map_or("never".to_string(), |d| format!("{:.1}s", d.as_secs_f64())),
        tx = ledger.transactions,
        jobs = up.jobs,
        crm_jobs = up.crm_jobs,
        refs = ledger.refs.len(),
        deleted_crm = p.deleted_crm,
        moved = p.moved,
        edited = p.edited,
        deleted = p.deleted_crm + p.deleted_other,
        unconfigured = p.unconfigured_created,
        vexit = verify.exit.map_or("signal".to_string(), |c| c.to_string()),
        dups = up.duplicates,
        lost = up.lost,
        wrong = up.wrong_value,
        unq = up.not_unqueued,
        failed = up.failed_rows,
        failed_ok = up.failed_explained,
        rss = f.peak_rss_kib as f64 / 1024.0,
        own = rss::peak_rss_kib() as f64 / 1024.0,
    )
}
