//! `jobsync demo`: the one-command tour. Starts the simulator in-process, syncs into a local
//! SQLite file (`jobsync-demo.db`, or `--database-url`), lets the simulated dialer call some
//! jobs, syncs again, and prints what happened — mirror, changefeed, runs.
//!
//! Pointed at a database with `--database-url`, it first makes sure that database is its own (a
//! marker it writes when it starts on an empty one) or empty: it would otherwise write its demo
//! jobs and outbox rows among real ones, and push them. `--force` overrides.
//!
//! **One tour of `./jobsync-demo.db` at a time.** A tour of the demo's own file starts by
//! deleting it (and its WAL and lock files), so a second `jobsync demo` in the same directory
//! used to delete the first one's database under it. Each such tour holds a kernel file lock on
//! `./jobsync-demo.lock` from before that deletion until after its last step; a second tour
//! that finds it held refuses at once (exit 1) naming the lock file and its holder: wait for
//! the first, or give the second a database of its own with `--database-url`. The lock file is
//! removed when the tour ends; one left by a tour that was killed is free (the kernel released
//! its lock) and taken over. A tour given `--database-url` takes no such lock: its database is
//! not deleted, and its cycles take the sync lock as every syncer does.

use super::{CliError, CliResult, context, once};
use crate::config::Config;
use crate::db::models::NewOutboxRow;
use crate::db::repo::report::{self, DEMO_MARKER, Holdings};
use crate::db::repo::{changes, jobs, outbox, state};
use crate::db::{Db, redact};
use crate::secret::Secret;
use crate::shutdown::StopFlag;
use crate::sim::SimConfig;
use crate::sync::cycle::{Engine, Trigger};
use serde_json::json;
use std::path::Path;

const DEMO_DB: &str = "sqlite://jobsync-demo.db";
const CAMPAIGNS: [i64; 2] = [28, 29];

/// The demo's own file, and the lock files beside it that the tour removes when it ends.
const DEMO_FILE: &str = "jobsync-demo.db";
const DEMO_LOCKS: [&str; 2] = [".lock", ".migrate.lock"];
/// Held by the one tour of [`DEMO_FILE`] running in this directory (see the module's doc).
const TOUR_LOCK: &str = "jobsync-demo.lock";

pub async fn run(config: &Config, database_url_given: bool, force: bool) -> CliResult {
    if database_url_given {
        return tour(config, config.database.url.clone(), true, force).await;
    }
    // Before anything is deleted: the file may be another tour's, in use.
    let _tour = TourLock::acquire()?;
    // The demo's own file: every tour starts from an empty mirror.
    for suffix in ["", "-wal", "-shm", ".lock", ".migrate.lock"] {
        let _ = std::fs::remove_file(format!("{DEMO_FILE}{suffix}"));
    }
    let toured = tour(config, DEMO_DB.to_string(), false, force).await;
    // Every handle on the database is gone with the tour: its lock files (kept by a daemon for
    // the next cycle) would only be litter in the directory.
    for suffix in DEMO_LOCKS {
        let _ = std::fs::remove_file(format!("{DEMO_FILE}{suffix}"));
    }
    toured
}

/// The kernel lock on [`TOUR_LOCK`]; the file is removed (then the lock released) on drop.
struct TourLock {
    file: std::fs::File,
}

impl TourLock {
    /// Takes the lock, or refuses at once naming the tour that holds it.
    fn acquire() -> Result<TourLock, CliError> {
        use std::io::Write;
        let shown = std::env::current_dir()
            .map(|dir| dir.join(TOUR_LOCK))
            .unwrap_or_else(|_| TOUR_LOCK.into());
        let cannot = |e: std::io::Error| {
            CliError::failed(format!(
                "cannot lock {}: {e}; the demo writes its files into the current directory: run \
                 it from a writable one, or pass --database-url",
                shown.display()
            ))
        };
        // A tour that ends removes the file while it holds the lock: one locked here after that
        // is no longer the file at the path, and the path is tried again.
        loop {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(TOUR_LOCK)
                .map_err(cannot)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = std::fs::read_to_string(TOUR_LOCK)
                        .ok()
                        .map(|text| text.trim().to_string())
                        .filter(|text| !text.is_empty())
                        .unwrap_or_else(|| "a tour that has not written its pid yet".into());
                    return Err(CliError::failed(format!(
                        "another demo is running here (its lock file {} is held by {holder}); \
                         wait for it to end, or pass --database-url sqlite://OTHER.db to give \
                         this one a database of its own",
                        shown.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(cannot(e)),
            }
            if !Self::still_at_path(&file) {
                continue;
            }
            let _ = file.set_len(0);
            let _ = writeln!(file, "{}", crate::db::lock::holder_description());
            return Ok(TourLock { file });
        }
    }

    fn still_at_path(file: &std::fs::File) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(TOUR_LOCK)) {
            (Ok(mine), Ok(now)) => mine.dev() == now.dev() && mine.ino() == now.ino(),
            _ => false,
        }
    }
}

impl Drop for TourLock {
    fn drop(&mut self) {
        // Removed while still held, so no other tour can hold the file at the path meanwhile.
        if Self::still_at_path(&self.file) {
            let _ = std::fs::remove_file(TOUR_LOCK);
        }
    }
}

async fn tour(config: &Config, url: String, database_url_given: bool, force: bool) -> CliResult {
    let shown = redact(&url);
    let found = inspect(config, &url).await?;
    let ours = found.is_empty() || found.demo_marker.is_some();
    if !ours && !force {
        return Err(CliError::usage(format!(
            "{shown} holds data the demo did not write ({}); the demo would write its demo jobs and outbox rows into it and push them: run `jobsync demo` without --database-url (a fresh ./jobsync-demo.db) or give it a new file, or add --force to write into this database anyway",
            describe(&found)
        )));
    }
    outln!("jobsync demo: a simulated Jobs API on loopback, mirrored into {shown}\n");
    let sim = crate::sim::spawn(
        "127.0.0.1:0".parse().expect("a socket address"),
        SimConfig {
            campaigns: CAMPAIGNS.to_vec(),
            jobs_per_campaign: 500,
            ..SimConfig::default()
        },
    )
    .await
    .map_err(|e| CliError::failed(format!("cannot start the simulator: {e}")))?;
    outln!(
        "1. simulator listening on {} with campaigns 28 and 29, 500 jobs each",
        sim.base_url()
    );

    // The tour is an ordinary configuration pointed at the in-process simulator.
    let mut demo = config.clone();
    demo.database.url = url;
    demo.api.base_url = sim.base_url();
    demo.api.token = Some(Secret::new(SimConfig::default().token));
    demo.api.token_file = None;
    demo.sync.campaigns = CAMPAIGNS.to_vec();
    let engine = context::engine(&demo, "demo", StopFlag::new()).await?;
    let db = engine.db.clone();
    if found.is_empty() && found.demo_marker.is_none() {
        // Later tours on this database know it is the demo's.
        let now = crate::db::Ts::now().to_string();
        db.run(move |c| state::set(c, DEMO_MARKER, &format!("created by jobsync demo at {now}")))
            .await?;
    }
    let seq_before = last_seq(&db).await?;
    cycle(
        &engine,
        "2. first cycle (a backfill: each campaign is listed in full; every job is new, so each is a change)",
    )
    .await?;

    // The simulator runs in this process: its handle acts on it directly, no HTTP needed.
    let dialled = sim.dial(25) + sim.edit(5);
    outln!(
        "\n3. the simulated dialer called jobs and an agent edited some: {dialled} jobs changed upstream"
    );
    let rows = crm_changes();
    let written = rows.len();
    db.run(move |c| outbox::insert(c, &rows)).await?;
    outln!(
        "   meanwhile the CRM wrote {written} outbox rows: two new contacts, a label for one of them, an edit, a cancellation"
    );
    let seq_mid = last_seq(&db).await?;
    cycle(
        &engine,
        "4. second cycle (incremental pull, then the push of the outbox)",
    )
    .await?;
    let pushed = db.run(|c| outbox::list(c, None, 10)).await?;
    outln!("\n   the outbox after the push (`jobsync outbox list`):");
    for row in pushed.iter().rev() {
        outln!(
            "   #{} {:7} {:10} job {:>5}  {}",
            row.id,
            row.op,
            row.status,
            row.result_job_id.map_or("-".into(), |id| id.to_string()),
            row.last_error.as_deref().unwrap_or("")
        );
    }

    let new = db.run(move |c| changes::since(c, seq_mid, 5)).await?;
    outln!("\n5. the changefeed the CRM reads (`jobsync changes --since {seq_mid}`), first rows:");
    for row in &new {
        outln!("   {}", crate::db::repo::changes::to_json(row));
    }
    let (live, deleted) = db.run(jobs::counts).await?;
    let total = last_seq(&db).await? - seq_before;
    outln!(
        "\nmirror: {live} jobs ({deleted} deleted upstream); {total} changefeed rows written by this demo"
    );
    // Commands to paste, as written: the binary by its own path (`jobsync` need not be on the
    // PATH), the database as given (a URL with a password is not printed).
    let exe = std::env::current_exe()
        .ok()
        .zip(std::env::current_dir().ok())
        .map_or_else(
            || "jobsync".to_string(),
            |(exe, cwd)| command_path(&exe, &cwd),
        );
    let database = if !database_url_given {
        DEMO_DB.to_string()
    } else if redact(&demo.database.url) == demo.database.url {
        shell_word(&demo.database.url)
    } else {
        "URL".to_string()
    };
    outln!(
        "
next, from this directory:"
    );
    outln!("   {exe} --database-url {database} status");
    outln!("   {exe} --database-url {database} changes --since {seq_mid}");
    outln!(
        "next steps: README.md § Quick start (the simulator and jobsync as separate processes, a CSV import)"
    );
    sim.shutdown().await;
    Ok(())
}

/// How to write `exe` in a command run from `cwd`: relative when it is under it
/// (`target/release/jobsync`, `./jobsync`), else its absolute path; quoted for a shell if need be.
fn command_path(exe: &Path, cwd: &Path) -> String {
    let shown = match exe.strip_prefix(cwd) {
        Ok(relative) if relative.components().count() == 1 => Path::new(".").join(relative),
        Ok(relative) => relative.to_path_buf(),
        Err(_) => exe.to_path_buf(),
    };
    shell_word(&shown.to_string_lossy())
}

/// `word` as one shell word: as it is when it holds only safe characters, else single-quoted.
fn shell_word(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%=,".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

async fn cycle(engine: &Engine, title: &str) -> CliResult {
    outln!("\n{title}");
    let summary = engine
        .cycle(Trigger::Once)
        .run()
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    outln!("   {}", once::describe(&summary));
    match summary.error {
        None => Ok(()),
        Some(e) => Err(CliError::failed(e)),
    }
}

/// What a CRM writes: only `op`, `campaign`, `reference`, `job_id` and `payload`.
fn crm_changes() -> Vec<NewOutboxRow> {
    let row =
        |op: &str, reference: Option<&str>, job_id: Option<i64>, payload: serde_json::Value| {
            NewOutboxRow {
                op: op.into(),
                campaign: reference.map(|_| 28),
                reference: reference.map(str::to_string),
                job_id,
                payload: payload.to_string(),
            }
        };
    vec![
        row(
            "create",
            Some("crm-1001"),
            None,
            json!({"name": "Ada Lovelace", "numbers": ["0612345678"], "city": "Paris"}),
        ),
        row(
            "create",
            Some("crm-1002"),
            None,
            json!({"name": "Alan Turing", "numbers": ["0698765432"]}),
        ),
        row("patch", Some("crm-1001"), None, json!({"label": "vip"})),
        row("patch", None, Some(3), json!({"city": "Lyon"})),
        row("unqueue", None, Some(4), json!({})),
    ]
}

/// What the database holds, read before anything (the simulator, migrations) starts.
async fn inspect(config: &Config, url: &str) -> Result<Holdings, CliError> {
    let url = url.to_string();
    let options = super::db_options(config);
    crate::db::blocking(move || {
        let db = Db::connect_with(&url, options)?;
        let mut conn = db.conn()?;
        report::holdings(&mut conn)
    })
    .await
    .map_err(CliError::from)
}

fn describe(found: &Holdings) -> String {
    let plural = |n: i64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    [
        (found.jobs, "job"),
        (found.outbox_rows, "outbox row"),
        (found.sync_runs, "sync run"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| plural(n, what))
    .collect::<Vec<_>>()
    .join(", ")
}

async fn last_seq(db: &Db) -> Result<i64, CliError> {
    Ok(db.run(changes::last_seq).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_shown_as_a_command_that_runs_from_here() {
        let cwd = Path::new("/home/ada/jobsync");
        let shown = |exe: &str| command_path(Path::new(exe), cwd);
        assert_eq!(
            shown("/home/ada/jobsync/target/release/jobsync"),
            "target/release/jobsync"
        );
        assert_eq!(shown("/home/ada/jobsync/jobsync"), "./jobsync");
        assert_eq!(shown("/usr/local/bin/jobsync"), "/usr/local/bin/jobsync");
        assert_eq!(
            shown("/home/ada/my tools/jobsync"),
            "'/home/ada/my tools/jobsync'"
        );
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
