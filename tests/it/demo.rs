//! The newcomer's tour runs end to end through the real binary.

use std::process::Command;

#[test]
fn demo_runs_a_backfill_then_an_incremental_cycle_and_prints_the_changefeed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsync"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
        cmd.env_remove(key);
    }
    let out = cmd.current_dir(dir.path()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok (full)"), "{stdout}");
    assert!(stdout.contains("ok (incremental)"), "{stdout}");
    assert!(stdout.contains("\"kind\":\"updated\""), "{stdout}");
    assert!(
        stdout.contains("pushed 4 ok, 0 failed, 1 superseded"),
        "{stdout}"
    );
    assert!(stdout.contains("merged into outbox row 1"), "{stdout}");
    assert!(dir.path().join("jobsync-demo.db").exists());
    // A second tour starts from an empty mirror again.
    let again = Command::new(env!("CARGO_BIN_EXE_jobsync"))
        .current_dir(dir.path())
        .arg("demo")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("run #1 ok (full)"));
}

#[test]
fn a_reader_that_closes_the_pipe_early_ends_the_command_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobsync"))
        .current_dir(dir.path())
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("jobsync demo"), "{first}");
    // The reader is gone (as with `| head -1`); the command must not panic writing to it.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}
