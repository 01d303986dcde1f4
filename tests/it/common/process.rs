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
