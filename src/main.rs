use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    jobsync::cli::run(jobsync::cli::Cli::parse()).await
}
