//! The simulator as a stand-alone process, as `jobsync simulate` runs it, built as an example so
//! that a client under measurement does not share its memory and a benchmark needs no jobsync
//! binary to serve the API:
//! `cargo run --example sim_server -- --listen 127.0.0.1:0 --jobs-per-campaign 1000`.

use clap::Parser;
use jobsync::sim::SimulateArgs;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Ok(jobsync::sim::run_cli(Cli::parse().args, None).await?)
}
