//! `jobsync simulate`: the simulator as a command, serving until SIGINT or SIGTERM.

use super::clock::{MAX_OFFSET_HOURS, check_offset_hours};
use super::faults::{MAX_DELAY_MS, MAX_RETRY_AFTER_SECS, check_rate};
use super::gate::Hold;
use super::{Faults, MAX_SEEDED_JOBS, SimConfig, repeated_campaign, seeded_jobs, spawn};
use std::io::Write;
use std::net::SocketAddr;

/// `jobsync simulate` alone serves something to sync: two campaigns of this many jobs (the
/// library's `SimConfig` starts empty, for tests that seed their own).
pub const DEFAULT_JOBS_PER_CAMPAIGN: usize = 500;

#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token clients must send (default: the configured api.token, else `dev-token`).
    #[arg(long)]
    pub token: Option<String>,
    /// The campaigns that exist, comma-separated positive ids, each listed once.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "28,29",
        value_parser = campaign_id,
        allow_negative_numbers = true
    )]
    pub campaigns: Vec<i64>,
    /// Jobs seeded in each campaign at start (0 for empty campaigns), at most 10000000 in all.
    #[arg(long, default_value_t = DEFAULT_JOBS_PER_CAMPAIGN, value_parser = jobs_per_campaign, allow_negative_numbers = true)]
    pub jobs_per_campaign: usize,
    /// Seed for the seeded jobs, the dialer, edits and faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Every this many milliseconds the dialer moves some jobs (0 = off), at most 600000.
    #[arg(long, default_value_t = 0, value_parser = delay_ms, allow_negative_numbers = true)]
    pub dial_interval_ms: u64,
    /// Share of API requests answered 500.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub fail_rate: f64,
    /// Share of API requests answered 429.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub throttle_rate: f64,
    /// `Retry-After` seconds sent with a 429, 0 to 86400.
    #[arg(long, default_value_t = 1, value_parser = retry_after_secs, allow_negative_numbers = true)]
    pub retry_after_secs: u64,
    /// Share of API requests whose connection is closed without an answer.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub drop_rate: f64,
    /// Share of API POSTs applied, then closed without an answer.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub applied_drop_rate: f64,
    /// Share of API POSTs applied, then answered 502 with a gateway's HTML page.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub applied_fail_rate: f64,
    /// Share of API POSTs applied only after --late-apply-ms (even if the client has gone).
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub late_apply_rate: f64,
    /// How long a slow commit (--late-apply-rate) takes, 0 to 600000 ms.
    #[arg(long, default_value_t = 2000, value_parser = delay_ms, allow_negative_numbers = true)]
    pub late_apply_ms: u64,
    /// Do not check that a reference is unused in its campaign: a create sent twice makes two
    /// jobs.
    #[arg(long)]
    pub allow_duplicate_references: bool,
    /// Hold API requests unanswered until `POST /_sim/release`: "[METHOD ]PREFIX", matched
    /// against the path and query as sent (e.g. "POST /j/jobs/bulk/create").
    #[arg(long, value_parser = hold_rule)]
    pub hold: Option<Box<Hold>>,
    /// Let this many requests matching --hold through before holding the next ones.
    #[arg(long, default_value_t = 0, requires = "hold")]
    pub hold_after: u64,
    /// Delay added before answering each API request, 0 to 600000 ms.
    #[arg(long, default_value_t = 0, value_parser = delay_ms, allow_negative_numbers = true)]
    pub latency_ms: u64,
    /// Shift of the simulated clock from real time, in hours (may be negative), within
    /// ±100000.
    #[arg(
        long,
        default_value_t = 0.0,
        allow_negative_numbers = true,
        value_parser = offset_hours
    )]
    pub clock_offset_hours: f64,
}

// Clap names the flag in front of these messages, so they only state the allowed range.

fn rate(raw: &str) -> Result<f64, String> {
    let rate: f64 = raw
        .parse()
        .map_err(|_| format!("`{raw}` is not a number"))?;
    check_rate("a rate", rate)?;
    Ok(rate)
}

fn delay_ms(raw: &str) -> Result<u64, String> {
    let ms: u64 = raw.parse().map_err(|_| {
        format!("`{raw}` is not a whole number of milliseconds between 0 and {MAX_DELAY_MS}")
    })?;
    super::faults::check_delay("a delay", ms)?;
    Ok(ms)
}

fn retry_after_secs(raw: &str) -> Result<u64, String> {
    let secs: u64 = raw.parse().map_err(|_| {
        format!("`{raw}` is not a whole number of seconds between 0 and {MAX_RETRY_AFTER_SECS}")
    })?;
    super::faults::check_retry_after("a Retry-After", secs)?;
    Ok(secs)
}

fn jobs_per_campaign(raw: &str) -> Result<usize, String> {
    let range = format!("a whole number of jobs between 0 and {MAX_SEEDED_JOBS}");
    match raw.parse::<usize>() {
        Ok(n) if n <= MAX_SEEDED_JOBS => Ok(n),
        Ok(n) => Err(format!("{n} is more than {MAX_SEEDED_JOBS}: {range}")),
        Err(_) => Err(format!("`{raw}` is not {range}")),
    }
}

fn campaign_id(raw: &str) -> Result<i64, String> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(format!(
            "`{raw}` is not a campaign id: ids are positive integers, as in 28,29"
        )),
    }
}

/// Boxed: the flags of `simulate` stay small beside the other commands'.
fn hold_rule(raw: &str) -> Result<Box<Hold>, String> {
    let rule = match raw.trim().split_once(' ') {
        Some((method, prefix)) => Hold::new(Some(method), prefix.trim()),
        None => Hold::new(None, raw.trim()),
    };
    rule.check()?;
    Ok(Box::new(rule))
}

fn offset_hours(raw: &str) -> Result<f64, String> {
    let hours: f64 = raw.parse().map_err(|_| {
        format!(
            "`{raw}` is not a number of hours between -{MAX_OFFSET_HOURS} and {MAX_OFFSET_HOURS}"
        )
    })?;
    check_offset_hours(hours)?;
    Ok(hours)
}

impl SimulateArgs {
    /// What clap cannot check flag by flag: a campaign listed twice (its seeded references
    /// would collide) and the jobs to seed in all.
    fn check_together(&self) -> Result<(), String> {
        if let Some(twice) = repeated_campaign(&self.campaigns) {
            return Err(format!("--campaigns lists campaign {twice} twice"));
        }
        if seeded_jobs(self.campaigns.len(), self.jobs_per_campaign).is_none() {
            return Err(format!(
                "--campaigns × --jobs-per-campaign is {} × {} jobs to seed, more than \
                 {MAX_SEEDED_JOBS}",
                self.campaigns.len(),
                self.jobs_per_campaign
            ));
        }
        Ok(())
    }

    pub fn into_config(self, default_token: Option<String>) -> SimConfig {
        SimConfig {
            token: self
                .token
                .or(default_token)
                .filter(|t| !t.trim().is_empty())
                .unwrap_or_else(|| "dev-token".into()),
            campaigns: self.campaigns,
            jobs_per_campaign: self.jobs_per_campaign,
            seed: self.seed,
            dial_interval_ms: self.dial_interval_ms,
            faults: Faults {
                fail_rate: self.fail_rate,
                throttle_rate: self.throttle_rate,
                retry_after_secs: self.retry_after_secs,
                drop_rate: self.drop_rate,
                applied_drop_rate: self.applied_drop_rate,
                applied_fail_rate: self.applied_fail_rate,
                late_apply_rate: self.late_apply_rate,
                late_apply_ms: self.late_apply_ms,
            },
            latency_ms: self.latency_ms,
            clock_offset_hours: self.clock_offset_hours,
            allow_duplicate_references: self.allow_duplicate_references,
        }
    }
}

/// Why `jobsync simulate` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// Settings out of range or at odds with each other: a usage error (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// It could not serve (the address is taken, a signal handler failed): exit 1.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Runs the simulator until SIGINT or SIGTERM. The first line on stdout is `listening on ADDR`,
/// so a script or test that passed port 0 learns the port.
pub async fn run_cli(
    args: SimulateArgs,
    default_token: Option<String>,
) -> Result<(), SimulateError> {
    args.check_together().map_err(SimulateError::Invalid)?;
    let listen = args.listen;
    let hold = args.hold.clone().map(|rule| (*rule).after(args.hold_after));
    let cfg = args.into_config(default_token);
    // The flags were checked one by one and together; this is what `spawn` checks too, said
    // before it is taken for an address problem.
    cfg.validate().map_err(SimulateError::Invalid)?;
    serve(listen, cfg, hold)
        .await
        .map_err(SimulateError::Failed)
}

async fn serve(listen: SocketAddr, cfg: SimConfig, hold: Option<Hold>) -> anyhow::Result<()> {
    let cfg_summary = (cfg.campaigns.clone(), cfg.jobs_per_campaign);
    let handle = spawn(listen, cfg)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}; choose another --listen"))?;
    if let Some(rule) = hold {
        // Checked by its parser already.
        handle.hold(rule).map_err(anyhow::Error::new)?;
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", handle.addr)?;
        stdout.flush()?;
        // Best effort: a script may stop reading after the first line, and a closed pipe must
        // not stop the simulator.
        let campaigns: Vec<String> = cfg_summary.0.iter().map(i64::to_string).collect();
        let _ = writeln!(
            stdout,
            "campaigns {} with {} seeded jobs each; stop with Ctrl-C",
            campaigns.join(", "),
            cfg_summary.1
        )
        .and_then(|()| stdout.flush());
    }
    wait_for_stop_signal().await?;
    tracing::info!("stop signal received");
    handle.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_stop_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    #[test]
    fn defaults_match_the_contract() {
        let args = Cli::parse_from(["sim"]).args;
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
        let cfg = args.into_config(None);
        assert_eq!(cfg.token, "dev-token");
        assert_eq!(cfg.campaigns, [28, 29]);
        assert_eq!(cfg.faults.retry_after_secs, 1);
        assert_eq!(cfg.dial_interval_ms, 0);
        assert!(!cfg.allow_duplicate_references);
        let cfg = Cli::parse_from(["sim", "--allow-duplicate-references"])
            .args
            .into_config(None);
        assert!(cfg.allow_duplicate_references);
    }

    #[test]
    fn flags_are_read() {
        let args = Cli::parse_from([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--campaigns",
            "5,6,7",
            "--jobs-per-campaign",
            "10",
            "--fail-rate",
            "0.5",
            "--clock-offset-hours",
            "-49.5",
            "--drop-rate",
            "1",
        ])
        .args;
        let cfg = args.into_config(Some("from-config".into()));
        assert_eq!(cfg.token, "from-config");
        assert_eq!(cfg.campaigns, [5, 6, 7]);
        assert_eq!(cfg.jobs_per_campaign, 10);
        assert_eq!((cfg.faults.fail_rate, cfg.faults.drop_rate), (0.5, 1.0));
        assert_eq!(cfg.clock_offset_hours, -49.5);
        let cfg = Cli::parse_from(["sim", "--token", "t"])
            .args
            .into_config(Some("c".into()));
        assert_eq!(cfg.token, "t");
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        assert!(Cli::try_parse_from(["sim", "--fail-rate", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--throttle-rate", "x"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--applied-fail-rate", "-0.1"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--late-apply-rate", "2"]).is_err());
    }

    #[test]
    fn a_hold_is_read_and_checked() {
        let args = Cli::parse_from([
            "sim",
            "--hold",
            "POST /j/jobs/bulk/create",
            "--hold-after",
            "3",
        ])
        .args;
        assert_eq!(
            args.hold.as_deref(),
            Some(&Hold::new(Some("POST"), "/j/jobs/bulk/create"))
        );
        assert_eq!(args.hold_after, 3);
        let any = Cli::parse_from(["sim", "--hold", "/j/jobs?campaign=3"]).args;
        assert_eq!(
            any.hold.as_deref(),
            Some(&Hold::new(None, "/j/jobs?campaign=3"))
        );
        assert_eq!(Cli::parse_from(["sim"]).args.hold, None, "off by default");
        for bad in ["GET /_sim/state", "post /j/jobs", "jobs"] {
            assert!(
                Cli::try_parse_from(["sim", "--hold", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["sim", "--hold-after", "2"]).is_err());
    }

    #[test]
    fn gateway_faults_are_read() {
        let cfg = Cli::parse_from([
            "sim",
            "--applied-fail-rate",
            "0.2",
            "--late-apply-rate",
            "0.3",
            "--late-apply-ms",
            "1500",
        ])
        .args
        .into_config(None);
        let f = cfg.faults;
        assert_eq!((f.applied_fail_rate, f.late_apply_rate), (0.2, 0.3));
        assert_eq!(f.late_apply_ms, 1500);
        let defaults = Cli::parse_from(["sim"]).args.into_config(None);
        assert_eq!(defaults.faults.late_apply_ms, 2000);
        assert!(defaults.validate().is_ok());
    }

    /// Each refusal is clap's usage error (exit 2), naming the flag and the range allowed.
    #[test]
    fn delays_and_clock_offsets_out_of_range_are_refused() {
        let refused = |flag: &str, value: &str| {
            let err = Cli::try_parse_from(["sim", flag, value]).err().unwrap();
            assert_eq!(err.exit_code(), 2, "{flag} {value}");
            let text = err.to_string();
            assert!(text.lines().next().unwrap().contains(flag), "{text}");
            text
        };
        for flag in ["--latency-ms", "--late-apply-ms"] {
            assert!(refused(flag, "600001").contains("between 0 and 600000"));
            assert!(refused(flag, "-1").contains("between 0 and 600000"));
        }
        for value in ["1e308", "-1e308", "inf", "NaN", "100000.5", "soon"] {
            let text = refused("--clock-offset-hours", value);
            assert!(text.contains("between -100000 and 100000"), "{text}");
        }
        let edge = Cli::parse_from([
            "sim",
            "--clock-offset-hours",
            "-100000",
            "--latency-ms",
            "600000",
        ]);
        assert_eq!(edge.args.clock_offset_hours, -100_000.0);
    }

    /// The flags that had no range: the dialer's period, `Retry-After`, the jobs to seed, the
    /// campaign ids; and what only the flags together tell.
    #[test]
    fn periods_counts_and_campaigns_out_of_range_are_refused() {
        let refused = |args: &[&str], flag: &str, range: &str| {
            let argv = [&["sim"], args].concat();
            let err = Cli::try_parse_from(argv).err().unwrap();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            let text = err.to_string();
            let first = text.lines().next().unwrap();
            assert!(first.contains(flag) && first.contains(range), "{text}");
        };
        refused(
            &["--dial-interval-ms", "600001"],
            "--dial-interval-ms",
            "600000",
        );
        refused(
            &["--retry-after-secs", "86401"],
            "--retry-after-secs",
            "86400",
        );
        refused(&["--retry-after-secs", "-1"], "--retry-after-secs", "86400");
        for n in ["10000001", "18446744073709551615", "-3", "1e7"] {
            refused(
                &["--jobs-per-campaign", n],
                "--jobs-per-campaign",
                "10000000",
            );
        }
        for ids in ["0", "-5", "28,-1", "28,x", "1e3"] {
            refused(&["--campaigns", ids], "--campaigns", "positive");
        }
        let edge = Cli::parse_from([
            "sim",
            "--dial-interval-ms",
            "600000",
            "--retry-after-secs",
            "86400",
            "--campaigns",
            "1",
            "--jobs-per-campaign",
            "10000000",
        ])
        .args;
        assert!(edge.check_together().is_ok());
        assert!(edge.into_config(None).validate().is_ok());

        let together = |args: &[&str]| {
            let argv = [&["sim"], args].concat();
            Cli::parse_from(argv).args.check_together()
        };
        let twice = together(&["--campaigns", "28,29,28"]).unwrap_err();
        assert!(
            twice.contains("--campaigns") && twice.contains("28"),
            "{twice}"
        );
        let many = together(&["--campaigns", "1,2", "--jobs-per-campaign", "5000001"]);
        let many = many.unwrap_err();
        assert!(
            many.contains("--jobs-per-campaign") && many.contains("10000000"),
            "{many}"
        );
        assert!(together(&["--campaigns", "1,2", "--jobs-per-campaign", "5000000"]).is_ok());
    }
}
