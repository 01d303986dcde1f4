//! The README's quick start, run as written: the shell block after `<!-- quickstart -->` is
//! extracted from README.md and run with `bash -e` in an empty directory, so a command that stops
//! working (or a step that stops exiting 0) fails this test instead of a newcomer.
//!
//! Two substitutions only, both about the test's environment, not the commands: the release
//! build is replaced by the binary this test run built (`cargo build --release` is skipped and
//! `target/release` points at it), and the simulator listens on a free port instead of 8080
//! (with `api.base_url` set to match), so parallel runs do not collide.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn quick_start() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let after = readme
        .split_once("<!-- quickstart -->")
        .expect("the README marks its quick start with <!-- quickstart -->")
        .1;
    let block = after
        .split_once("```sh\n")
        .expect("a ```sh block follows the marker")
        .1;
    block
        .split_once("\n```")
        .expect("the block is closed")
        .0
        .to_string()
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let script = quick_start();
    assert!(script.contains("jobsync --once") && script.contains("jobsync import"));
    let bin = Path::new(env!("CARGO_BIN_EXE_jobsync"));
    let bin_dir = bin.parent().unwrap().to_str().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script: String = script
        .lines()
        .filter(|line| !line.trim_start().starts_with("cargo build"))
        .map(|line| {
            line.replace("$PWD/target/release", bin_dir).replace(
                "jobsync simulate",
                &format!("jobsync simulate --listen 127.0.0.1:{port}"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-e").arg("-c").arg(&script).current_dir(dir.path());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
        cmd.env_remove(key);
    }
    cmd.env("JOBSYNC_API__BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("JOBSYNC_SERVER__LISTEN", "")
        .env("JOBSYNC_LOG__FORMAT", "json");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A step that hangs (the simulator never listening) fails the test, bounded.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = Command::new("pkill")
                .args(["-f", &format!("127.0.0.1:{port}")])
                .status();
            panic!("the quick start had not finished after 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the quick start failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("run #1 ok (full): pulled"), "{stdout}");
    assert!(stdout.contains("imported 1 row(s)"), "{stdout}");
    assert!(
        stdout.contains("pushed 1 ok, 0 failed"),
        "the second cycle pushed the create: {stdout}"
    );
    let done_row = stdout
        .lines()
        .find(|l| l.contains("quickstart-1"))
        .unwrap_or_else(|| panic!("outbox list shows the row: {stdout}"));
    assert!(done_row.contains("done"), "{done_row}");
}
