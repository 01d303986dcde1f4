//! Running the real `jobsync` binary against a simulator and a SQLite file.

use std::path::Path;
use std::process::{Command, Output};

/// A `jobsync` command with a clean environment: only the given API and database settings.
pub fn jobsync_command(base_url: &str, db_path: &Path) -> Command {
    jobsync_command_with_url(
        base_url,
        &format!("sqlite://{}", db_path.display()),
        db_path.parent().unwrap(),
    )
}

/// [`jobsync_command`] for any database URL (e.g. PostgreSQL), run in `dir`.
pub fn jobsync_command_with_url(base_url: &str, database_url: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsync"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
        cmd.env_remove(key);
    }
    cmd.env("JOBSYNC_API__BASE_URL", base_url)
        .env("JOBSYNC_API__TOKEN", "dev-token")
        .env("JOBSYNC_DATABASE__URL", database_url)
        .env("JOBSYNC_SERVER__LISTEN", "")
        .env("JOBSYNC_LOG__FORMAT", "json")
        .current_dir(dir);
    cmd
}

/// Runs `jobsync --once` (plus `extra` environment) to completion.
pub fn once(base_url: &str, db_path: &Path, extra: &[(&str, &str)]) -> Output {
    jobsync_command(base_url, db_path)
        .arg("--once")
        .envs(extra.iter().copied())
        .output()
        .expect("run jobsync --once")
}

/// A command for the real binary in `dir` with a clean environment: no `JOBSYNC_*` variable and
/// no `RUST_LOG` but `env`, no health server, JSON logs.
pub fn clean_command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsync"));
    cmd.current_dir(dir).args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
        cmd.env_remove(key);
    }
    cmd.env_remove("RUST_LOG")
        .env("JOBSYNC_SERVER__LISTEN", "")
        .env("JOBSYNC_LOG__FORMAT", "json")
        .envs(env.iter().copied());
    cmd
}

/// [`clean_command`], run to its end.
pub fn run_clean(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    clean_command(dir, args, env).output().expect("run jobsync")
}

/// What a command printed on stdout, as text.
pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a command printed on stderr, as text.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
