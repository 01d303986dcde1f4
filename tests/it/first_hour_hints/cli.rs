//! See the parent module: each test starts from the user's mistake and expects the fix named.

use super::*;
use std::time::{Duration, Instant};

/// [`jobsync`], but a command that keeps running (a simulator or a demo that should have been
/// refused) is killed after `limit` and fails the test instead of hanging it.
fn jobsync_within(dir: &Path, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsync"));
    cmd.current_dir(dir).args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
        cmd.env_remove(key);
    }
    cmd.env_remove("RUST_LOG")
        .env("JOBSYNC_SERVER__LISTEN", "")
        .env("JOBSYNC_LOG__FORMAT", "json")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run jobsync");
    let started = Instant::now();
    while child.try_wait().expect("wait for jobsync").is_none() {
        if started.elapsed() > limit {
            child.kill().expect("kill jobsync");
            let out = child.wait_with_output().expect("jobsync's output");
            panic!(
                "`jobsync {}` was still running after {limit:?} instead of being refused: {}",
                args.join(" "),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("jobsync's output")
}

/// The CSV a spreadsheet in a locale with decimal commas exports: `;` between cells, CRLF.
const SEMICOLON_CSV: &str = "op;campaign;reference;job_id;payload\r\n\
    create;28;crm-1;;\"{\"\"name\"\": \"\"Ada; Lovelace\"\"}\"\r\n\
    unqueue;;;42;\r\n";

// --- import: the delimiter ------------------------------------------------------------------------

#[test]
fn a_semicolon_separated_csv_names_the_delimiter_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crm.csv"), SEMICOLON_CSV).unwrap();
    let url = sqlite_url(dir.path());
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "import", "crm.csv"],
        &[],
    );
    let err = usage_error(
        &out,
        &[
            "crm.csv:1:",
            "`op;campaign;reference;job_id;payload`",
            "looks `;`-separated",
            "pass `--delimiter ';'`",
        ],
    );
    assert!(!err.contains("unknown CSV column"), "{err}");

    // The flag is for CSV only, and takes one character.
    let out = jobsync(
        dir.path(),
        &[
            "--database-url",
            &url,
            "import",
            "crm.csv",
            "--format",
            "ndjson",
            "--delimiter",
            ";",
        ],
        &[],
    );
    usage_error(
        &out,
        &["--delimiter applies to CSV only", "--format ndjson"],
    );
    let out = jobsync(
        dir.path(),
        &[
            "--database-url",
            &url,
            "import",
            "crm.csv",
            "--delimiter",
            ";;",
        ],
        &[],
    );
    usage_error(&out, &["--delimiter", "one ASCII character"]);
    let out = jobsync(dir.path(), &["--database-url", &url, "outbox", "list"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "no outbox rows",
        "nothing was inserted"
    );
}

#[test]
fn a_semicolon_separated_csv_imports_with_delimiter() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crm.csv"), SEMICOLON_CSV).unwrap();
    let url = sqlite_url(dir.path());
    let out = jobsync(
        dir.path(),
        &[
            "--database-url",
            &url,
            "import",
            "crm.csv",
            "--delimiter",
            ";",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("imported 2 row(s) from crm.csv"),
        "{}",
        stdout(&out)
    );
    let out = jobsync(dir.path(), &["--database-url", &url, "outbox", "list"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listed = stdout(&out);
    let rows: Vec<&str> = listed.lines().collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(
        rows[0].contains("unqueue job 42 pending"),
        "newest first: {listed}"
    );
    assert!(
        rows[1].contains("create campaign 28 reference crm-1 pending"),
        "{listed}"
    );

    // A tab-separated export, named as `tab`.
    std::fs::write(dir.path().join("tabs.csv"), "op\tjob_id\r\nunqueue\t43\r\n").unwrap();
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "import", "tabs.csv"],
        &[],
    );
    usage_error(&out, &["looks tab-separated", "pass `--delimiter tab`"]);
    let out = jobsync(
        dir.path(),
        &[
            "--database-url",
            &url,
            "import",
            "tabs.csv",
            "--delimiter",
            "tab",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("imported 1 row(s)"),
        "{}",
        stdout(&out)
    );
}

// --- import: line numbers -------------------------------------------------------------------------

#[test]
fn a_bad_row_in_a_crlf_csv_is_named_by_the_line_an_editor_shows() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let rows = [
        "op,campaign,reference,job_id,payload",
        "unqueue,,,41,",
        "unqueue,,,forty-two,",
        "unqueue,,,43,",
    ];
    for (name, end) in [("windows.csv", "\r\n"), ("unix.csv", "\n")] {
        std::fs::write(dir.path().join(name), rows.join(end) + end).unwrap();
        let out = jobsync(dir.path(), &["--database-url", &url, "import", name], &[]);
        usage_error(&out, &["1 bad line(s) in", "nothing was inserted"]);
        let err = stderr(&out);
        let bad: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with(&format!("{name}:")))
            .collect();
        assert_eq!(
            bad,
            [format!("{name}:3: job_id `forty-two` is not an integer")],
            "{err}"
        );
    }
}

// --- configuration: a schedule that never fires ----------------------------------------------------

#[test]
fn a_schedule_that_never_fires_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = jobsync(
        dir.path(),
        &["config", "show"],
        &[("JOBSYNC_SYNC__SCHEDULE", "0 0 0 30 2 *")],
    );
    usage_error(
        &out,
        &[
            "`sync.schedule` = \"0 0 0 30 2 *\"",
            "JOBSYNC_SYNC__SCHEDULE",
            "never fires (",
            "30 February",
            "the daemon would never sync",
        ],
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let url = sqlite_url(dir.path());
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "check"],
        &[
            ("JOBSYNC_API__TOKEN", "t"),
            ("JOBSYNC_VERIFY__SCHEDULE", "0 0 4 31 4,6,9,11 *"),
        ],
    );
    // `check` lists what failed on stdout, and ends with one error line.
    usage_error(&out, &["configuration check failed"]);
    let listed = stdout(&out);
    let failed = listed
        .lines()
        .find(|l| l.starts_with("FAIL configuration"))
        .unwrap_or_else(|| panic!("the configuration failed: {listed}"));
    for part in [
        "`verify.schedule`",
        "JOBSYNC_VERIFY__SCHEDULE",
        "never fires (",
        "no verify would ever run",
    ] {
        assert!(failed.contains(part), "expected {part:?} in {failed}");
    }
    // A rare day that exists (29 February) is a schedule.
    let out = jobsync(
        dir.path(),
        &["config", "show"],
        &[("JOBSYNC_SYNC__SCHEDULE", "0 0 0 29 2 *")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

// --- flags that mean nothing ------------------------------------------------------------------------

#[test]
fn simulate_refuses_the_database_and_api_flags() {
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(30);
    let out = jobsync_within(
        dir.path(),
        &[
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "mysql://nope",
        ],
        &[],
        limit,
    );
    let err = usage_error(
        &out,
        &[
            "--database-url means nothing to `jobsync simulate` (it keeps its jobs in memory); drop it",
        ],
    );
    assert!(!err.contains("nope"), "{err}");
    assert!(
        stdout(&out).is_empty(),
        "nothing was served: {}",
        stdout(&out)
    );
    let out = jobsync_within(
        dir.path(),
        &[
            "--api-base-url",
            "http://127.0.0.1:9",
            "simulate",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
        limit,
    );
    usage_error(
        &out,
        &[
            "--api-base-url means nothing to `jobsync simulate`",
            "--listen",
        ],
    );
    let out = jobsync_within(
        dir.path(),
        &["demo", "--api-base-url", "https://api.example.com"],
        &[],
        limit,
    );
    usage_error(&out, &["--api-base-url means nothing to `jobsync demo`"]);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the demo wrote nothing"
    );
}
