//! Measures the client's peak memory while it decodes a very large listing: starts the simulator
//! (the `sim_server` example, built alongside) as a separate process seeded with JOBS jobs in
//! campaign 28, streams the listing in batches of 1000, and prints the jobs seen and this
//! process's peak RSS (VmHWM).
//!
//! `cargo build --release --examples && target/release/examples/list_memory [JOBS]`

use jobsync::api::{ApiClient, ClientOptions, ListQuery, TokenSource};
use jobsync::secret::Secret;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/rss.rs"]
mod rss;
use rss::peak_rss_kib;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let server = std::env::current_exe()?.with_file_name("sim_server");
    let mut child = Command::new(&server)
        .args(["--listen", "127.0.0.1:0", "--campaigns", "28"])
        .args(["--jobs-per-campaign", &jobs.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", server.display()))?;
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut first_line)?;
    let addr = first_line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected first line {first_line:?}"))?
        .to_owned();

    let before = peak_rss_kib();
    let mut opts = ClientOptions::new(
        format!("http://{addr}").parse()?,
        TokenSource::Static(Secret::new("dev-token")),
    );
    opts.timeout = Duration::from_secs(120);
    let client = ApiClient::new(opts)?;
    let started = Instant::now();
    let mut listing = client
        .list_jobs(ListQuery {
            campaign: Some(28),
            modified_since: None,
        })
        .await?;
    let mut seen = 0usize;
    while let Some(batch) = listing.next_batch(1000).await? {
        seen += batch.len();
    }
    let elapsed = started.elapsed();
    let peak = peak_rss_kib();
    child.kill()?;
    child.wait()?;

    println!(
        "jobs decoded: {seen} (expected {jobs}) in {:.1}s",
        elapsed.as_secs_f64()
    );
    println!(
        "client peak RSS (VmHWM): {:.1} MiB (before the listing: {:.1} MiB)",
        peak as f64 / 1024.0,
        before as f64 / 1024.0
    );
    anyhow::ensure!(seen == jobs, "the listing was incomplete");
    anyhow::ensure!(peak < 64 * 1024, "peak RSS above 64 MiB");
    Ok(())
}
