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
