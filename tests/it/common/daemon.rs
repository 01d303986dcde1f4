//! The daemon as operators run it: the real binary (`jobsync run`) with its health server on a
//! free port, its JSON log read line by line, signals sent by pid, killed when dropped.

use super::process::{jobsync_command, jobsync_command_with_url};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every log line received so far, in order (also those `wait_for_log` skipped).
    seen: Vec<String>,
    health: Option<String>,
    rt: tokio::runtime::Handle,
}

impl Daemon {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        base_url: &str,
        db_path: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Daemon {
        Daemon::spawn(rt, jobsync_command(base_url, db_path), extra)
    }

    /// [`Daemon::start`] on any database URL (e.g. several replicas on one PostgreSQL
    /// database), run in `dir`.
    pub fn start_with_url(
        rt: &tokio::runtime::Runtime,
        base_url: &str,
        database_url: &str,
        dir: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Daemon {
        Daemon::spawn(
            rt,
            jobsync_command_with_url(base_url, database_url, dir),
            extra,
        )
    }

    fn spawn(
        rt: &tokio::runtime::Runtime,
        mut command: std::process::Command,
        extra: &[(&str, &str)],
    ) -> Daemon {
        let mut child = command
            .arg("run")
            .env("JOBSYNC_SERVER__LISTEN", "127.0.0.1:0")
            .env("JOBSYNC_SYNC__SCHEDULE", "*/1 * * * * *")
            .env("JOBSYNC_SYNC__CAMPAIGNS", "28")
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            lines,
            seen: Vec::new(),
            health: None,
            rt: rt.handle().clone(),
        };
        let line = daemon.wait_for_log("health server listening");
        let addr = serde_json::from_str::<Value>(&line).unwrap()["addr"]
            .as_str()
            .unwrap()
            .to_string();
        daemon.health = Some(format!("http://{addr}"));
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `HOST:PORT` of the health server, for a test that speaks raw TCP to it.
    pub fn health_addr(&self) -> &str {
        self.health
            .as_deref()
            .and_then(|url| url.strip_prefix("http://"))
            .unwrap()
    }

    /// The next log line containing `needle`, within a deadline.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        self.wait_for_log_where(&format!("{needle:?}"), |line| line.contains(needle))
    }

    /// The next log line that `accept` takes (`what` describes it), within a deadline.
    pub fn wait_for_log_where(&mut self, what: &str, accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if accept(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {what} within 30 s; the log so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every log line the process wrote, once it has exited (or what came within a deadline).
    pub fn whole_log(&mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected | RecvTimeoutError::Timeout) => break,
            }
        }
        self.seen.clone()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.health.as_ref().unwrap());
        self.rt.block_on(async {
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    }

    /// Polls `path` until `accept` holds, within a deadline.
    pub fn wait_until(&self, path: &str, accept: impl Fn(u16, &str) -> bool) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(path);
            if accept(status, &body) {
                return (status, body);
            }
            assert!(
                Instant::now() < deadline,
                "{path} never satisfied the condition: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    /// The exit status, if the process exits within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }

    pub fn terminate(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(20))
            .expect("the daemon did not stop within 20 s of SIGTERM")
    }
}

impl Drop for Daemon {
    /// A test that fails midway leaves no daemon behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid of a child this test started; no memory is involved.
    let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal}) failed");
}

/// Polls `child` until it exits or `limit` passes.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of one Prometheus series.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{body}"))
}
