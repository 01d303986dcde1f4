//! The simulator refuses settings out of range (issue 11): every numeric flag of
//! `jobsync simulate` (exit 2 with a one-line error, never a panic), every field of
//! `POST /_sim/faults` and `POST /_sim/clock` (400 with a JSON message, the settings unchanged,
//! the next request served as before), and `SimConfig` built in code.

use crate::common;
use jobsync::sim::{self, SimConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const RATE_FLAGS: [&str; 6] = [
    "--fail-rate",
    "--throttle-rate",
    "--drop-rate",
    "--applied-drop-rate",
    "--applied-fail-rate",
    "--late-apply-rate",
];
const BAD_RATES: [&str; 7] = ["1.5", "-0.1", "NaN", "inf", "-inf", "1e308", "one"];

/// How `jobsync simulate` answered its command line.
enum Outcome {
    /// It exited before serving: the exit code and what it wrote on stderr.
    Exited(Option<i32>, String),
    /// It printed `listening on ADDR`: the values were accepted (it has been stopped since).
    Started,
}

/// Runs `jobsync simulate --listen 127.0.0.1:0 ARGS` in an empty directory, with no JOBSYNC_
/// variable, until it exits or says it listens.
fn simulate(args: &[&str]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsync"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
        cmd.env_remove(key);
    }
    let mut child = cmd
        .current_dir(dir.path())
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, first_line) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match first_line.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if line.starts_with("listening on") => {
            let _ = child.kill();
            let _ = child.wait();
            Outcome::Started
        }
        Ok(_) => {
            let status = child.wait().unwrap();
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            Outcome::Exited(status.code(), stderr)
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`simulate {args:?}` neither exited nor listened within 60 s");
        }
    }
}

/// Checks that `simulate ARGS` is refused as a usage error naming `named`; answers what was
/// wrong instead, for a report of every case at once.
fn refusal_problem(args: &[&str], named: &str) -> Option<String> {
    match simulate(args) {
        Outcome::Started => Some(format!("{args:?}: accepted, the simulator started")),
        Outcome::Exited(code, stderr) => {
            let first = stderr.lines().next().unwrap_or("");
            if stderr.contains("panicked") {
                Some(format!("{args:?}: panicked:\n{stderr}"))
            } else if code != Some(2) {
                Some(format!("{args:?}: exit {code:?}, not 2: {stderr}"))
            } else if !first.starts_with("error:") || !first.contains(named) {
                Some(format!(
                    "{args:?}: the first line does not name {named}: {stderr}"
                ))
            } else {
                None
            }
        }
    }
}

#[test]
fn numeric_flags_out_of_range_exit_2_with_a_one_line_error_and_never_panic() {
    let mut cases: Vec<(Vec<String>, String)> = Vec::new();
    let mut case = |args: &[&str], named: &str| {
        cases.push((
            args.iter().map(|a| a.to_string()).collect(),
            named.to_string(),
        ));
    };
    for value in ["1e308", "-1e308", "NaN", "inf", "-inf", "100000.5"] {
        case(
            &[&format!("--clock-offset-hours={value}")],
            "--clock-offset-hours",
        );
    }
    for flag in RATE_FLAGS {
        for value in BAD_RATES {
            case(&[&format!("{flag}={value}")], flag);
        }
    }
    for flag in ["--latency-ms", "--late-apply-ms", "--dial-interval-ms"] {
        for value in ["600001", "-1", "1e308", "NaN", "18446744073709551616"] {
            case(&[&format!("{flag}={value}")], flag);
        }
    }
    for value in ["86401", "-1", "1e308", "18446744073709551616"] {
        case(
            &[&format!("--retry-after-secs={value}")],
            "--retry-after-secs",
        );
    }
    // (Beyond the 10,000,000 allowed is checked at parse level: refused here, accepted by
    // mistake it would seed them before the test could tell.)
    for value in ["-1", "1e308", "1.5"] {
        case(
            &[&format!("--jobs-per-campaign={value}")],
            "--jobs-per-campaign",
        );
    }
    for value in ["0", "-5", "28,0", "1e308", "28,,29"] {
        case(&[&format!("--campaigns={value}")], "--campaigns");
    }
    // A campaign listed twice seeded the same references twice, which panicked.
    case(
        &["--campaigns=28,29,28", "--jobs-per-campaign=1"],
        "--campaigns",
    );
    let problems: Vec<String> = cases
        .iter()
        .filter_map(|(args, named)| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            refusal_problem(&args, named)
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn values_at_the_edges_of_their_ranges_are_accepted() {
    let edges = [
        "--clock-offset-hours=-100000",
        "--fail-rate=1",
        "--throttle-rate=0",
        "--latency-ms=600000",
        "--late-apply-ms=0",
        "--dial-interval-ms=600000",
        "--retry-after-secs=86400",
        "--campaigns=1,28",
        "--jobs-per-campaign=3",
    ];
    assert!(matches!(simulate(&edges), Outcome::Started));
}

struct Sim {
    handle: sim::SimHandle,
    http: reqwest::Client,
}

impl Sim {
    async fn start() -> Sim {
        let handle = common::start_sim(SimConfig {
            campaigns: vec![28],
            jobs_per_campaign: 3,
            ..SimConfig::default()
        })
        .await;
        Sim {
            handle,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    /// POSTs `body` as it is (so that it may hold numbers JSON tools refuse to write).
    async fn post_raw(&self, path: &str, body: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} {body}: not JSON ({e}): {text}"));
        (status, json)
    }

    async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A normal API request: answered 200 with the three seeded jobs.
    async fn assert_serving(&self) {
        let response = self
            .http
            .get(self.url("/j/jobs?campaign=28"))
            .bearer_auth("dev-token")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key("date"));
        let jobs: Vec<Value> = response.json().await.unwrap();
        assert_eq!(jobs.len(), 3);
    }
}

/// A 400 whose JSON message names `key` and says what is wrong with its value.
fn problem_with_refusal(
    body: &str,
    (status, answer): (StatusCode, Value),
    key: &str,
) -> Option<String> {
    let message = answer["message"].as_str().unwrap_or_default();
    let explains = ["between", "invalid", "out of range"]
        .iter()
        .any(|word| message.contains(word));
    if status != StatusCode::BAD_REQUEST {
        Some(format!("{body}: {status}, not 400: {answer}"))
    } else if !message.contains(key) || !explains {
        Some(format!(
            "{body}: the message does not say what is wrong with {key}: {message}"
        ))
    } else {
        None
    }
}

#[tokio::test]
async fn a_clock_offset_out_of_range_is_a_400_and_the_clock_stays_where_it_was() {
    let sim = Sim::start().await;
    let (status, _) = sim
        .post_raw("/_sim/clock", r#"{"offset_hours": -1.5}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut problems = Vec::new();
    for bad in [
        "1e308",
        "-1e308",
        "1e400",
        "100000.001",
        "-100000.001",
        "\"soon\"",
        "null",
    ] {
        let body = format!(r#"{{"offset_hours": {bad}}}"#);
        let answer = sim.post_raw("/_sim/clock", &body).await;
        problems.extend(problem_with_refusal(&body, answer, "offset_hours"));
        sim.assert_serving().await;
    }
    for body in ["{}", "[]", "not json"] {
        let answer = sim.post_raw("/_sim/clock", body).await;
        problems.extend(problem_with_refusal(body, answer, "offset_hours"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let clock = sim.get_json("/_sim/clock").await;
    assert_eq!(clock["offset_hours"], json!(-1.5), "{clock}");
    sim.assert_serving().await;
}

#[tokio::test]
async fn a_fault_setting_out_of_range_is_a_400_and_changes_nothing() {
    let sim = Sim::start().await;
    let before = sim.get_json("/_sim/faults").await;
    let mut problems = Vec::new();
    let rates = [
        "fail_rate",
        "throttle_rate",
        "drop_rate",
        "applied_drop_rate",
        "applied_fail_rate",
        "late_apply_rate",
    ];
    let mut cases: Vec<(String, &str)> = Vec::new();
    for key in rates {
        for bad in ["1.5", "-0.1", "1e308", "-1e308", "1e400", "\"half\""] {
            cases.push((format!(r#"{{"{key}": {bad}}}"#), key));
        }
    }
    for key in ["latency_ms", "late_apply_ms"] {
        for bad in [
            "600001",
            "-1",
            "1e308",
            "0.5",
            "18446744073709551616",
            "true",
        ] {
            cases.push((format!(r#"{{"{key}": {bad}}}"#), key));
        }
    }
    for bad in ["86401", "-1", "1e308", "18446744073709551616"] {
        cases.push((
            format!(r#"{{"retry_after_secs": {bad}}}"#),
            "retry_after_secs",
        ));
    }
    // A valid key beside an invalid one is not applied either.
    cases.push((
        r#"{"fail_rate": 0.5, "latency_ms": 600001}"#.into(),
        "latency_ms",
    ));
    cases.push((
        r#"{"latency_ms": 10, "throttle_rate": 1e308}"#.into(),
        "throttle_rate",
    ));
    for (body, key) in &cases {
        let answer = sim.post_raw("/_sim/faults", body).await;
        problems.extend(problem_with_refusal(body, answer, key));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(sim.get_json("/_sim/faults").await, before);
    sim.assert_serving().await;
    // The edges are accepted.
    let (status, after) = sim
        .post_raw(
            "/_sim/faults",
            r#"{"fail_rate": 0, "throttle_rate": 1, "retry_after_secs": 86400, "latency_ms": 0,
                "late_apply_ms": 600000, "drop_rate": 0.0}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["retry_after_secs"], 86400);
}

#[tokio::test]
async fn a_configuration_built_in_code_is_checked_the_same_way() {
    let refused = |cfg: SimConfig, named: &str| {
        let err = cfg.validate().expect_err(named);
        assert!(err.contains(named), "{named}: {err}");
    };
    refused(
        SimConfig {
            campaigns: vec![28, 0],
            ..SimConfig::default()
        },
        "0",
    );
    refused(
        SimConfig {
            campaigns: vec![28, 29, 28],
            ..SimConfig::default()
        },
        "28",
    );
    // Checked before seeding anything: ten million jobs and one more.
    refused(
        SimConfig {
            campaigns: (1..=11).collect(),
            jobs_per_campaign: 1_000_000,
            ..SimConfig::default()
        },
        "10000000",
    );
    refused(
        SimConfig {
            dial_interval_ms: 600_001,
            ..SimConfig::default()
        },
        "dial_interval_ms",
    );
    let mut cfg = SimConfig::default();
    cfg.faults.retry_after_secs = 86_401;
    refused(cfg, "retry_after_secs");
    let mut cfg = SimConfig::default();
    cfg.faults.drop_rate = f64::NAN;
    refused(cfg, "drop_rate");
    // spawn refuses the same, before binding or seeding.
    let duplicate = SimConfig {
        campaigns: vec![28, 28],
        jobs_per_campaign: 1,
        ..SimConfig::default()
    };
    let err = sim::spawn("127.0.0.1:0".parse().unwrap(), duplicate)
        .await
        .err()
        .expect("a campaign listed twice is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
