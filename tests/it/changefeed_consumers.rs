//! Changefeed consumers (issue 29): `changes --consumer`, NOTIFY wake-ups, retention.
//!
//! The real binary against the in-process simulator and a real database. Damage is counted where
//! a CRM sees it: the NDJSON lines a consumer printed, each compared with its row in
//! `job_changes`, and the rows no run printed.
//!
//! - one reader across runs prints every row once; `--limit`, `--campaign` and `--since` keep
//!   the position right;
//! - a follower SIGKILLed at random points while changes keep arriving resumes without a gap,
//!   and never commits a row it did not print;
//! - two followers of one name: nothing is skipped by both, the one refused exits 1 saying so;
//! - PostgreSQL: a CRM's own `LISTEN jobsync_changes` gets the commit's `last_seq`, and a
//!   follower prints a commit well before its 5 s fallback poll;
//! - a prune that deletes rows a consumer has not read says so, with the count;
//! - `jobsync status` shows each consumer's lag.

use crate::common::*;
use jobsync::db::models::ChangeRow;
use jobsync::db::repo::{changes, consumers};
use jobsync::sim::{SimConfig, SimHandle};
use rand::Rng;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

on_both_backends!(
    a_consumer_prints_every_row_once_across_runs,
    limit_prints_that_many_and_the_next_run_goes_on_from_the_next_row,
    a_campaign_consumer_prints_only_its_rows_and_its_position_passes_the_others,
    since_starts_a_new_consumer_and_is_refused_for_one_elsewhere,
    a_follower_killed_at_random_points_resumes_without_a_gap,
    two_followers_of_one_name_skip_nothing_and_the_refused_one_says_so,
    prune_names_a_consumer_behind_and_counts_its_unread_rows,
    prune_of_rows_every_consumer_read_warns_nothing,
    status_shows_each_consumers_lag,
);

/// The longest any wait of these tests lasts: only a broken test reaches it.
const DEADLINE: Duration = Duration::from_secs(60);

/// A simulator, a database synced from it, and a scratch directory for the commands.
struct Feed<'a> {
    t: &'a TestDb,
    // Declared before the runtime it runs on, so it is dropped first.
    sim: SimHandle,
    _rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    /// New jobs inserted so far, for unique references.
    added: AtomicUsize,
}

impl<'a> Feed<'a> {
    /// `jobs_per_campaign` jobs in campaigns 28 and 29, pulled by one `--once`: a changefeed
    /// row each.
    fn new(t: &'a TestDb, jobs_per_campaign: usize) -> Feed<'a> {
        let rt = runtime();
        let sim = rt.block_on(start_sim(SimConfig {
            campaigns: vec![28, 29],
            jobs_per_campaign,
            ..SimConfig::default()
        }));
        let feed = Feed {
            t,
            sim,
            _rt: rt,
            dir: tempfile::tempdir().unwrap(),
            added: AtomicUsize::new(0),
        };
        feed.once();
        assert_eq!(
            feed.rows().len(),
            2 * jobs_per_campaign,
            "the first cycle writes a row per job"
        );
        feed
    }

    /// `jobsync ARGS` on this database and simulator, with a clean environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = jobsync_command_with_url(&self.sim.base_url(), &self.t.url, self.dir.path());
        cmd.env("JOBSYNC_SYNC__CAMPAIGNS", "28,29").args(args);
        cmd
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args)
            .envs(env.iter().copied())
            .output()
            .expect("jobsync runs")
    }

    /// One sync cycle (`jobsync --once`), which must succeed.
    fn once(&self) {
        let out = self.run(&["--once"], &[]);
        assert_eq!(out.status.code(), Some(0), "--once: {}", stderr_of(&out));
    }

    /// New jobs upstream (`in_28` in campaign 28, `in_29` in 29), pulled by a cycle: that many
    /// new changefeed rows, in those campaigns.
    fn add(&self, in_28: usize, in_29: usize) -> Vec<ChangeRow> {
        let before = self.last_seq();
        let jobs: Vec<_> = std::iter::repeat_n(28, in_28)
            .chain(std::iter::repeat_n(29, in_29))
            .map(|campaign| {
                let n = self.added.fetch_add(1, Ordering::SeqCst);
                fields(json!({
                    "campaign": campaign, "reference": format!("added-{n}"),
                    "name": format!("Added {n}"), "numbers": ["+33612345678"],
                }))
            })
            .collect();
        let references: BTreeSet<String> = jobs
            .iter()
            .map(|j| j["reference"].as_str().unwrap().to_string())
            .collect();
        self.sim.insert_jobs(jobs).expect("jobs inserted");
        self.once();
        let new = rows_after(self.t, before);
        let created: Vec<&ChangeRow> = new
            .iter()
            .filter(|r| r.reference.as_ref().is_some_and(|r| references.contains(r)))
            .collect();
        let in_campaign = |c| created.iter().filter(|r| r.campaign == c).count();
        assert_eq!(
            (in_campaign(28), in_campaign(29)),
            (in_28, in_29),
            "the cycle pulled the new jobs, one row each: {new:?}"
        );
        new
    }

    /// Every changefeed row, in `seq` order.
    fn rows(&self) -> Vec<ChangeRow> {
        rows_after(self.t, 0)
    }

    fn last_seq(&self) -> i64 {
        changes::last_seq(&mut self.t.db.conn().unwrap()).unwrap()
    }

    /// `name`'s committed position, if it exists.
    fn position(&self, name: &str) -> Option<i64> {
        consumers::get(&mut self.t.db.conn().unwrap(), name)
            .unwrap()
            .map(|c| c.last_seq)
    }

    /// `jobsync changes ARGS` to its end, exit 0 required; the rows it printed.
    fn changes_ok(&self, args: &[&str]) -> Vec<Printed> {
        let out = self.run(&[&["changes"], args].concat(), &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "changes {args:?}: {}",
            stderr_of(&out)
        );
        printed(&stdout_of(&out), self)
    }

    /// `jobsync changes ARGS` started with its stdout read line by line.
    fn follow(&self, args: &[&str]) -> Follower {
        Follower::start(
            self.command(&[&["changes"], args].concat()),
            self.dir.path(),
        )
    }
}

/// Changefeed rows with `seq > after`, in `seq` order.
fn rows_after(t: &TestDb, after: i64) -> Vec<ChangeRow> {
    changes::since(&mut t.db.conn().unwrap(), after, i64::MAX).unwrap()
}

/// A line a consumer printed, as the row it is.
#[derive(Debug, Clone, PartialEq)]
struct Printed {
    seq: i64,
    campaign: i64,
}

/// Parses NDJSON lines printed by `changes`, each required to be exactly its row of
/// `job_changes` as `changes::to_json` writes it: a line that is not is damage.
fn printed(stdout: &str, feed: &Feed) -> Vec<Printed> {
    let rows: BTreeMap<i64, String> = feed
        .rows()
        .iter()
        .map(|r| (r.seq, changes::to_json(r)))
        .collect();
    stdout.lines().map(|line| check_line(line, &rows)).collect()
}

fn check_line(line: &str, rows: &BTreeMap<i64, String>) -> Printed {
    let value: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
    let seq = value["seq"].as_i64().expect("a seq");
    let row = rows
        .get(&seq)
        .unwrap_or_else(|| panic!("printed seq {seq} is not in job_changes: {line}"));
    assert_eq!(line, row, "the printed line is not its row");
    Printed {
        seq,
        campaign: value["campaign"].as_i64().unwrap(),
    }
}

fn seqs(lines: &[Printed]) -> Vec<i64> {
    lines.iter().map(|p| p.seq).collect()
}

fn seqs_of(rows: &[ChangeRow]) -> Vec<i64> {
    rows.iter().map(|r| r.seq).collect()
}

/// A running `jobsync changes …`: complete lines as they arrive (a line cut by a kill is not a
/// line a consumer could apply, and is not counted), stderr to a file.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// While held (see [`Follower::start_stalled`]), the reader reads nothing after the first
    /// line; dropped, it reads on.
    gate: Option<mpsc::Sender<()>>,
    stderr: PathBuf,
    /// Every complete line received so far.
    seen: Vec<(Instant, String)>,
}

impl Follower {
    fn start(cmd: Command, dir: &Path) -> Follower {
        Follower::spawn(cmd, dir, false)
    }

    /// A follower whose reader stops reading after the first line until it is killed: the
    /// process can write no more than the pipe holds (64 KiB, a couple of hundred lines).
    fn start_stalled(cmd: Command, dir: &Path) -> Follower {
        Follower::spawn(cmd, dir, true)
    }

    fn spawn(mut cmd: Command, dir: &Path, stalled: bool) -> Follower {
        static N: AtomicUsize = AtomicUsize::new(0);
        let stderr = dir.join(format!("follower-{}.log", N.fetch_add(1, Ordering::SeqCst)));
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("jobsync changes starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let (gate, gated) = mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = Vec::new();
            let mut first = true;
            loop {
                if stalled && !first {
                    // Until the gate's sender is dropped.
                    let _ = gated.recv();
                }
                first = false;
                line.clear();
                match stdout.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line.last() != Some(&b'\n') => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                        if tx.send((Instant::now(), text)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Follower {
            child,
            lines,
            reader: Some(reader),
            gate: Some(gate),
            stderr,
            seen: Vec::new(),
        }
    }

    /// Waits for lines until `done` takes the lines seen so far, or `until` passes; whether
    /// `done` was met.
    fn wait_until(&mut self, until: Instant, done: impl Fn(&[(Instant, String)]) -> bool) -> bool {
        loop {
            if done(&self.seen) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
                Err(mpsc::RecvTimeoutError::Disconnected) => return done(&self.seen),
            }
        }
    }

    /// Waits (within [`DEADLINE`]) for a line of `seq` at least `seq`; panics naming `what`.
    fn wait_for_seq(&mut self, seq: i64, what: &str) {
        let reached = self.wait_until(Instant::now() + DEADLINE, |seen| {
            seen.iter().any(|(_, l)| line_seq(l) >= seq)
        });
        if !reached {
            let _ = self.child.kill();
            panic!(
                "{what}: no line of seq {seq} within {DEADLINE:?}; printed {:?}; stderr: {}",
                self.seen
                    .iter()
                    .map(|(_, l)| line_seq(l))
                    .collect::<Vec<_>>(),
                self.stderr_text()
            );
        }
    }

    /// SIGKILL, then every complete line it wrote.
    fn kill(mut self) -> Vec<(Instant, String)> {
        self.child.kill().expect("kill");
        self.child.wait().unwrap();
        self.drain()
    }

    /// SIGTERM (a graceful stop), its exit code, and every complete line it wrote.
    fn terminate(mut self) -> (Option<i32>, Vec<(Instant, String)>) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: a plain signal to our own child, which has not been waited for yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let code = self.wait_exit().code();
        (code, self.drain())
    }

    /// Waits (within [`DEADLINE`]) for the process to end on its own.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                panic!(
                    "jobsync changes did not end within {DEADLINE:?}: {}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn drain(&mut self) -> Vec<(Instant, String)> {
        self.gate.take();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.seen.extend(self.lines.try_iter());
        std::mem::take(&mut self.seen)
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn line_seq(line: &str) -> i64 {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v["seq"].as_i64())
        .unwrap_or_else(|| panic!("not a changefeed line: {line:?}"))
}

/// The seqs of `job_changes` that none of the printed sets holds.
fn unprinted<'s>(feed: &[ChangeRow], printed: impl IntoIterator<Item = &'s i64>) -> Vec<i64> {
    let printed: BTreeSet<i64> = printed.into_iter().copied().collect();
    feed.iter()
        .map(|r| r.seq)
        .filter(|s| !printed.contains(s))
        .collect()
}

// 1. One reader across runs.

fn a_consumer_prints_every_row_once_across_runs(t: &TestDb) {
    let feed = Feed::new(t, 5);
    let first = feed.changes_ok(&["--consumer", "crm"]);
    assert_eq!(
        seqs(&first),
        seqs_of(&feed.rows()),
        "the first run prints all"
    );
    assert_eq!(feed.position("crm"), Some(feed.last_seq()));

    let nothing = feed.changes_ok(&["--consumer", "crm"]);
    assert_eq!(
        seqs(&nothing),
        Vec::<i64>::new(),
        "nothing new, nothing printed"
    );

    let new = feed.add(2, 3);
    let second = feed.changes_ok(&["--consumer", "crm"]);
    assert_eq!(
        seqs(&second),
        seqs_of(&new),
        "the second run prints only the rows added since"
    );
    assert_eq!(feed.position("crm"), Some(feed.last_seq()));

    // A reader without --consumer is not one: it reads from 0 and moves no position.
    let all = feed.changes_ok(&["--since", "0"]);
    assert_eq!(seqs(&all), seqs_of(&feed.rows()));
    let mut twice = seqs(&first);
    twice.extend(seqs(&second));
    assert_eq!(twice, seqs_of(&feed.rows()), "across runs, each row once");
}

fn limit_prints_that_many_and_the_next_run_goes_on_from_the_next_row(t: &TestDb) {
    let feed = Feed::new(t, 4);
    let rows = seqs_of(&feed.rows());
    let first = feed.changes_ok(&["--consumer", "crm", "--limit", "3"]);
    assert_eq!(seqs(&first), rows[..3], "--limit 3 prints 3");
    assert_eq!(feed.position("crm"), Some(rows[2]), "committed at the 3rd");
    let second = feed.changes_ok(&["--consumer", "crm", "--limit", "3"]);
    assert_eq!(seqs(&second), rows[3..6], "the next run starts at the 4th");
    let rest = feed.changes_ok(&["--consumer", "crm"]);
    assert_eq!(seqs(&rest), rows[6..]);
    assert_eq!(feed.position("crm"), Some(feed.last_seq()));

    let out = feed.run(&["changes", "--consumer", "crm", "--limit", "0"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert_eq!(feed.position("crm"), Some(feed.last_seq()));
}

fn a_campaign_consumer_prints_only_its_rows_and_its_position_passes_the_others(t: &TestDb) {
    let feed = Feed::new(t, 4);
    let of_29: Vec<i64> = feed
        .rows()
        .iter()
        .filter(|r| r.campaign == 29)
        .map(|r| r.seq)
        .collect();
    let first = feed.changes_ok(&["--consumer", "crm29", "--campaign", "29"]);
    assert!(first.iter().all(|p| p.campaign == 29), "{first:?}");
    assert_eq!(seqs(&first), of_29);
    assert_eq!(
        feed.position("crm29"),
        Some(feed.last_seq()),
        "the position passes the other campaign's rows"
    );

    // Rows of 28 after the last of 29: the position still moves past them.
    feed.add(3, 0);
    let none = feed.changes_ok(&["--consumer", "crm29", "--campaign", "29"]);
    assert_eq!(seqs(&none), Vec::<i64>::new());
    assert_eq!(feed.position("crm29"), Some(feed.last_seq()));

    let new = feed.add(2, 2);
    let second = feed.changes_ok(&["--consumer", "crm29", "--campaign", "29"]);
    let new_29: Vec<i64> = new
        .iter()
        .filter(|r| r.campaign == 29)
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs(&second), new_29, "only the new rows of campaign 29");
    assert_eq!(feed.position("crm29"), Some(feed.last_seq()));

    // With --limit: one row of 29 printed, the position at that row, not past the next ones.
    let more = feed.add(1, 2);
    let limited = feed.changes_ok(&["--consumer", "crm29", "--campaign", "29", "--limit", "1"]);
    let more_29: Vec<i64> = more
        .iter()
        .filter(|r| r.campaign == 29)
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs(&limited), more_29[..1]);
    assert_eq!(feed.position("crm29"), Some(more_29[0]));
    let rest = feed.changes_ok(&["--consumer", "crm29", "--campaign", "29"]);
    assert_eq!(seqs(&rest), more_29[1..]);
}

fn since_starts_a_new_consumer_and_is_refused_for_one_elsewhere(t: &TestDb) {
    let feed = Feed::new(t, 4);
    let rows = seqs_of(&feed.rows());
    let since = rows[4].to_string();
    let late = feed.changes_ok(&["--consumer", "late", "--since", &since]);
    assert_eq!(
        seqs(&late),
        rows[5..],
        "a new consumer starts after --since"
    );
    assert_eq!(feed.position("late"), Some(feed.last_seq()));

    // An existing consumer elsewhere: refused, position unchanged, nothing printed.
    let out = feed.run(
        &[
            "changes",
            "--consumer",
            "late",
            "--since",
            &rows[0].to_string(),
        ],
        &[],
    );
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stdout_of(&out), "", "nothing printed");
    assert!(
        stderr.contains("consumer late") && stderr.contains("drop --since"),
        "the message names the consumer and the fix: {stderr}"
    );
    assert_eq!(feed.position("late"), Some(feed.last_seq()));

    // At its own position, --since says nothing new: accepted.
    let at = feed.position("late").unwrap().to_string();
    let new = feed.add(1, 1);
    let same = feed.changes_ok(&["--consumer", "late", "--since", &at]);
    assert_eq!(seqs(&same), seqs_of(&new));

    // A name a shell would mangle is refused before anything is created.
    let out = feed.run(&["changes", "--consumer", "crm one"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert_eq!(feed.position("crm one"), None);
}

// 2. A follower killed at random points.

/// Rounds of `changes --consumer crm --follow`, each SIGKILLed at a random point while cycles
/// keep adding rows, then one last run to the end. The first round is killed at the first line
/// of a 1000-row page, its reader reading nothing more (the pipe holds a couple of hundred
/// lines): the page cannot be printed whole, so it must not be committed. The others at a random line, at once or a few random milliseconds after (often between a page's
/// print and its commit), or at a random time (sometimes before the first line).
fn a_follower_killed_at_random_points_resumes_without_a_gap(t: &TestDb) {
    const ROUNDS: usize = 10;
    let feed = Feed::new(t, 600);
    let stop = AtomicBool::new(false);
    let mut rng = rand::thread_rng();
    // Per run: the position it started from, the seqs it printed, the position it left.
    let mut runs: Vec<(i64, Vec<i64>, i64)> = Vec::new();
    std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let mut cycles = 0;
            while !stop.load(Ordering::SeqCst) {
                feed.sim.edit(10);
                feed.add(3, 3);
                cycles += 1;
            }
            cycles
        });
        // Also when a round's assertion fails: the scope waits for the producer.
        let stop_producer = SetOnDrop(&stop);
        for round in 0..ROUNDS {
            let before = feed.position("crm").unwrap_or(0);
            let args = ["changes", "--consumer", "crm", "--follow"];
            let mut follower = if round == 0 {
                Follower::start_stalled(feed.command(&args), feed.dir.path())
            } else {
                Follower::start(feed.command(&args), feed.dir.path())
            };
            // (lines, then milliseconds, or this many milliseconds at most)
            let (lines, extra, within) = match (round, rng.gen_range(0..5)) {
                (0, _) => (1, 0, 3000),
                (_, 0) => (usize::MAX, 0, rng.gen_range(0..400)),
                (_, 1) => (rng.gen_range(1..60), rng.gen_range(0..20), 3000),
                // Often past the backlog's first page.
                (_, 2) => (rng.gen_range(1..1500), 0, 3000),
                _ => (rng.gen_range(1..60), 0, 3000),
            };
            // Lines or time, whichever first.
            follower.wait_until(Instant::now() + Duration::from_millis(within), |seen| {
                seen.len() >= lines
            });
            if extra > 0 {
                std::thread::sleep(Duration::from_millis(extra));
            }
            let printed = follower.kill();
            let after = feed.position("crm").unwrap_or(0);
            if round == 0 {
                assert_eq!(
                    after, before,
                    "killed at the first line of a 1000-row page, yet its position moved"
                );
            }
            runs.push((
                before,
                printed.iter().map(|(_, l)| line_seq(l)).collect(),
                after,
            ));
        }
        drop(stop_producer);
        let cycles = producer.join().unwrap();
        assert!(cycles >= 2, "changes kept arriving: {cycles} cycles");
    });
    // The last run, after the changes stopped: to the end of the feed, then a graceful stop. Two
    // rows more, so that it has something to print even when the last round had caught up.
    feed.add(1, 1);
    let before = feed.position("crm").unwrap_or(0);
    let end = feed.last_seq();
    assert!(before < end, "{before} {end}");
    let mut last = feed.follow(&["--consumer", "crm", "--follow"]);
    last.wait_for_seq(end, "the last run");
    let (code, printed) = last.terminate();
    assert_eq!(code, Some(0), "SIGTERM ends a follower with exit 0");
    runs.push((
        before,
        printed.iter().map(|(_, l)| line_seq(l)).collect(),
        feed.position("crm").unwrap(),
    ));

    let rows = feed.rows();
    let all: BTreeMap<i64, String> = rows.iter().map(|r| (r.seq, changes::to_json(r))).collect();
    let mut repeats = 0;
    let mut seen = BTreeSet::new();
    let mut max_printed = 0;
    for (i, (before, printed, after)) in runs.iter().enumerate() {
        eprintln!(
            "run {i}: from seq {before}, printed {} rows ({:?}..{:?}), committed {after}",
            printed.len(),
            printed.first(),
            printed.last()
        );
        // Each run resumes after the committed position, with no gap after what was printed
        // before. (Not exactly at `before`: on PostgreSQL the commit a killed follower had sent
        // can still land after the test read the position, so the next run may rightly start
        // further on — never beyond the next row nobody printed.)
        if let Some(first) = printed.first() {
            let after_committed = all.range(before + 1..).next().map(|(s, _)| *s);
            let after_printed = all.range(max_printed + 1..).next().map(|(s, _)| *s);
            assert!(
                Some(*first) >= after_committed && Some(*first) <= after_printed,
                "run {i} started at seq {first}: before the row after its committed {before} \
                 ({after_committed:?}), or past the first row no run printed yet \
                 ({after_printed:?}): a gap"
            );
        }
        // No gap within a run.
        let within: Vec<i64> = match (printed.first(), printed.last()) {
            (Some(&first), Some(&last)) if first <= last => {
                all.range(first..=last).map(|(s, _)| *s).collect()
            }
            _ => printed.clone(),
        };
        assert_eq!(
            printed, &within,
            "run {i} printed with a gap or out of order"
        );
        // Never a commit past what the run printed (a kill after the commit is fine).
        assert!(
            after == before || printed.contains(after),
            "run {i} committed seq {after}, which it never printed (it printed {printed:?})"
        );
        repeats += printed.iter().filter(|s| !seen.insert(**s)).count();
        max_printed = max_printed.max(printed.last().copied().unwrap_or(0));
    }
    let missing = unprinted(&rows, &seen);
    assert_eq!(missing, Vec::<i64>::new(), "rows no run printed");
    assert_eq!(feed.position("crm"), Some(feed.last_seq()));
    eprintln!(
        "{} rows, {} runs, {repeats} rows printed again after a kill",
        rows.len(),
        runs.len()
    );
}

/// Sets its flag when dropped, unwinding included.
struct SetOnDrop<'f>(&'f AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// 3. Two followers of one name.

fn two_followers_of_one_name_skip_nothing_and_the_refused_one_says_so(t: &TestDb) {
    let feed = Feed::new(t, 10);
    let mut a = feed.follow(&["--consumer", "same", "--follow"]);
    let mut b = feed.follow(&["--consumer", "same", "--follow"]);
    // Both read the same rows at some point and commit them: one of the two commits is refused.
    // Rows keep coming until then.
    let until = Instant::now() + DEADLINE;
    let (loser, winner) = loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            break ((a, status), b);
        }
        if let Some(status) = b.child.try_wait().unwrap() {
            break ((b, status), a);
        }
        assert!(
            Instant::now() < until,
            "neither reader was refused within {DEADLINE:?}"
        );
        feed.add(1, 1);
    };
    let (mut loser, status) = loser;
    let mut winner = winner;
    let stderr = loser.stderr_text();
    assert_eq!(
        status.code(),
        Some(1),
        "the refused reader exits 1: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(
        errors[0].contains("consumer same") && errors[0].contains("one reader per consumer name"),
        "the message names the consumer and the fix: {}",
        errors[0]
    );
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(errors[0]),
        "the error is the last word"
    );
    let lost = loser.drain();

    // The other goes on; rows added after the refusal reach it.
    feed.add(2, 2);
    let end = feed.last_seq();
    winner.wait_for_seq(end, "the reader that was not refused");
    assert!(
        winner.child.try_wait().unwrap().is_none(),
        "the reader that was not refused still follows: {}",
        winner.stderr_text()
    );
    let (code, won) = winner.terminate();
    assert_eq!(code, Some(0));

    let rows = feed.rows();
    let all: BTreeMap<i64, String> = rows.iter().map(|r| (r.seq, changes::to_json(r))).collect();
    for (_, line) in lost.iter().chain(&won) {
        check_line(line, &all);
    }
    let union: Vec<i64> = lost.iter().chain(&won).map(|(_, l)| line_seq(l)).collect();
    assert_eq!(
        unprinted(&rows, &union),
        Vec::<i64>::new(),
        "rows skipped by both readers"
    );
    assert_eq!(feed.position("same"), Some(end));
    eprintln!(
        "refused reader printed {}, the other {} of {} rows",
        lost.len(),
        won.len(),
        rows.len()
    );
}

// 4. PostgreSQL: NOTIFY.

/// A CRM's own `LISTEN jobsync_changes` hears the commit of a cycle, with its schema and the
/// feed's last `seq`.
#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn postgres_a_crms_own_listen_hears_each_commit_with_its_last_seq() {
    use diesel::{Connection, PgConnection, RunQueryDsl};
    let Some(t) = TestDb::postgres() else { return };
    let feed = Feed::new(&t, 3);
    let mut conn = PgConnection::establish(&t.url).expect("connect as a CRM");
    let schema = current_schema(&mut conn);
    diesel::sql_query("LISTEN jobsync_changes")
        .execute(&mut conn)
        .unwrap();
    for round in 0..2 {
        let new = feed.add(2, 1);
        let last = new.last().unwrap().seq;
        assert_eq!(last, feed.last_seq());
        // Other tests' schemas notify on the same channel: only this schema's count.
        let mut heard = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while !heard.contains(&last) && Instant::now() < until {
            for notice in conn.notifications_iter() {
                let notice = notice.expect("the listening connection works");
                assert_eq!(notice.channel, "jobsync_changes");
                let payload: Value = serde_json::from_str(&notice.payload)
                    .unwrap_or_else(|e| panic!("payload not JSON: {}: {e}", notice.payload));
                if payload["schema"] == schema.as_str() {
                    heard.push(payload["last_seq"].as_i64().expect("last_seq a number"));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            heard.contains(&last),
            "round {round}: no notification of last_seq {last} for schema {schema}; heard {heard:?}"
        );
        assert!(
            heard.iter().all(|&s| s <= last),
            "a notification beyond the feed: {heard:?} > {last}"
        );
    }
}

fn current_schema(conn: &mut diesel::PgConnection) -> String {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Schema {
        #[diesel(sql_type = diesel::sql_types::Text)]
        s: String,
    }
    diesel::sql_query("SELECT current_schema()::text AS s")
        .get_result::<Schema>(conn)
        .unwrap()
        .s
}

/// A follower waiting on PostgreSQL prints a commit within 2.5 s of the cycle's end, where its
/// fallback poll would take up to 5 s: the notification woke it. Each cycle starts right after
/// the follower printed the previous one (its poll just restarted) and takes a fraction of a
/// second, so a poll-only follower would print it 4 s or more after the cycle's end. The latency
/// the issue asks about (≤ 100 ms) is measured from the commit, as the test's own `LISTEN`
/// hears it, and printed.
#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn postgres_a_follower_prints_a_commit_well_before_its_fallback_poll() {
    const ROUNDS: usize = 5;
    let Some(t) = TestDb::postgres() else { return };
    let feed = Feed::new(&t, 3);
    let commits = CommitClock::start(&t.url);
    let mut follower = feed.follow(&["--consumer", "crm", "--follow"]);
    follower.wait_for_seq(feed.last_seq(), "the first rows");
    let mut from_commit = Vec::new();
    for round in 0..ROUNDS {
        let before = follower.seen.len();
        let cycle = Instant::now();
        let new = feed.add(1, 0);
        let ended = Instant::now();
        let seq = new[0].seq;
        let reached = follower.wait_until(ended + Duration::from_millis(2500), |seen| {
            seen[before..].iter().any(|(_, l)| line_seq(l) >= seq)
        });
        assert!(
            reached,
            "round {round}: seq {seq} not printed within 2.5 s of the cycle's end (the cycle \
             took {:?}): the follower waited for its poll; stderr: {}",
            ended - cycle,
            follower.stderr_text()
        );
        let printed_at = follower.seen[before..]
            .iter()
            .find(|(_, l)| line_seq(l) >= seq)
            .unwrap()
            .0;
        let committed_at = commits.heard(seq);
        let latency = printed_at.saturating_duration_since(committed_at);
        eprintln!(
            "round {round}: seq {seq} printed {latency:?} after its commit was notified, {:?} \
             after the cycle ended (the cycle took {:?})",
            printed_at.saturating_duration_since(ended),
            ended - cycle
        );
        from_commit.push(latency);
    }
    let (code, _) = follower.terminate();
    assert_eq!(code, Some(0));
    from_commit.sort();
    eprintln!(
        "changes --follow on PostgreSQL, commit to printed line over {ROUNDS} commits: median \
         {:?}, max {:?} (the issue asks for <= 100 ms; the fallback poll is 5 s)",
        from_commit[ROUNDS / 2],
        from_commit[ROUNDS - 1]
    );
}

/// When this schema's changefeed commits are notified: a connection of the test's own
/// `LISTEN`ing, read every millisecond, as a CRM's would.
struct CommitClock {
    heard: mpsc::Receiver<(Instant, i64)>,
    stop: std::sync::Arc<AtomicBool>,
    seen: std::cell::RefCell<Vec<(Instant, i64)>>,
}

impl CommitClock {
    fn start(url: &str) -> CommitClock {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        let mut conn = PgConnection::establish(url).expect("connect as a CRM");
        let schema = current_schema(&mut conn);
        diesel::sql_query("LISTEN jobsync_changes")
            .execute(&mut conn)
            .unwrap();
        let (tx, heard) = mpsc::channel();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                for notice in conn.notifications_iter() {
                    let Ok(notice) = notice else { return };
                    let at = Instant::now();
                    let payload: Value = serde_json::from_str(&notice.payload).unwrap();
                    if payload["schema"] == schema.as_str()
                        && let Some(seq) = payload["last_seq"].as_i64()
                        && tx.send((at, seq)).is_err()
                    {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        CommitClock {
            heard,
            stop,
            seen: Default::default(),
        }
    }

    /// When the commit of `seq` was first heard (within [`DEADLINE`]).
    fn heard(&self, seq: i64) -> Instant {
        let until = Instant::now() + DEADLINE;
        let mut seen = self.seen.borrow_mut();
        loop {
            if let Some((at, _)) = seen.iter().find(|(_, s)| *s >= seq) {
                return *at;
            }
            let left = until.saturating_duration_since(Instant::now());
            match self.heard.recv_timeout(left) {
                Ok(notice) => seen.push(notice),
                Err(_) => panic!("the commit of seq {seq} was never notified: heard {seen:?}"),
            }
        }
    }
}

impl Drop for CommitClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// 5. Retention.

/// Makes the rows up to `seq` a year old.
fn age_rows_up_to(t: &TestDb, seq: i64) -> usize {
    execute_sql(
        &t.db,
        &format!(
            "UPDATE job_changes SET observed_at = '2020-01-01 00:00:00.000000' WHERE seq <= {seq}"
        ),
    )
}

fn prune(feed: &Feed) -> Output {
    let out = feed.run(&["prune"], &[("JOBSYNC_RETENTION__CHANGES_DAYS", "30")]);
    assert_eq!(out.status.code(), Some(0), "prune: {}", stderr_of(&out));
    out
}

fn prune_names_a_consumer_behind_and_counts_its_unread_rows(t: &TestDb) {
    let feed = Feed::new(t, 5);
    let rows = seqs_of(&feed.rows());
    // `crm` read 3 rows, `ahead` all; the first 7 rows are old.
    feed.changes_ok(&["--consumer", "crm", "--limit", "3"]);
    feed.changes_ok(&["--consumer", "ahead"]);
    assert_eq!(age_rows_up_to(t, rows[6]), 7);
    let out = prune(&feed);
    let stdout = stdout_of(&out);
    assert!(
        stdout.contains("pruned: 7 changefeed rows"),
        "the old rows are pruned: {stdout}"
    );
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(
        warnings,
        ["warning: consumer crm had not read 4 of the pruned changefeed rows"],
        "{stdout}"
    );
    let logged: Vec<Value> = stderr_of(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == "WARN")
        .collect();
    assert!(
        logged
            .iter()
            .any(|v| v.to_string().contains("crm") && v.to_string().contains("changes_days")),
        "a WARN in the log names the consumer: {}",
        stderr_of(&out)
    );
    assert!(
        !logged.iter().any(|v| v.to_string().contains("ahead")),
        "{logged:?}"
    );
    assert_eq!(seqs_of(&feed.rows()), rows[7..], "the old rows are gone");

    // What is left reaches `crm` after its position: it lost only the pruned rows.
    let rest = feed.changes_ok(&["--consumer", "crm"]);
    assert_eq!(seqs(&rest), rows[7..]);
}

fn prune_of_rows_every_consumer_read_warns_nothing(t: &TestDb) {
    let feed = Feed::new(t, 5);
    let rows = seqs_of(&feed.rows());
    feed.changes_ok(&["--consumer", "crm", "--limit", "6"]);
    feed.changes_ok(&["--consumer", "other"]);
    // Only rows both read are old: `crm` is behind, but on rows that stay.
    assert_eq!(age_rows_up_to(t, rows[5]), 6);
    let out = prune(&feed);
    let stdout = stdout_of(&out);
    assert!(stdout.contains("pruned: 6 changefeed rows"), "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
    assert!(!stderr_of(&out).contains("\"WARN\""), "{}", stderr_of(&out));
    assert_eq!(seqs_of(&feed.rows()), rows[6..]);
}

// 6. Status.

/// The `consumer:` line of `name` in `jobsync status`.
fn status_line(feed: &Feed, name: &str) -> String {
    let out = feed.run(&["status"], &[]);
    assert_eq!(out.status.code(), Some(0), "status: {}", stderr_of(&out));
    let stdout = stdout_of(&out);
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("consumer:") && l.contains(&format!(" {name} at seq ")))
        .collect();
    assert_eq!(lines.len(), 1, "one line for consumer {name}: {stdout}");
    lines[0].to_string()
}

fn status_shows_each_consumers_lag(t: &TestDb) {
    let feed = Feed::new(t, 5);
    let rows = seqs_of(&feed.rows());
    let out = feed.run(&["status"], &[]);
    assert!(
        !stdout_of(&out).contains("consumer:"),
        "no consumer yet: {}",
        stdout_of(&out)
    );
    feed.changes_ok(&["--consumer", "crm", "--limit", "3"]);
    let line = status_line(&feed, "crm");
    let lag = feed.last_seq() - rows[2];
    assert_eq!(lag, 7, "10 rows, 3 read");
    assert!(
        line.contains(&format!("crm at seq {}, {lag} behind", rows[2])),
        "{line}"
    );
    feed.add(1, 1);
    let line = status_line(&feed, "crm");
    let lag = feed.last_seq() - rows[2];
    assert!(
        line.contains(&format!("crm at seq {}, {lag} behind", rows[2])),
        "new rows add to the lag ({lag}): {line}"
    );
    feed.changes_ok(&["--consumer", "crm"]);
    let line = status_line(&feed, "crm");
    assert!(
        line.contains(&format!("crm at seq {}, 0 behind", feed.last_seq())),
        "caught up: {line}"
    );
}
