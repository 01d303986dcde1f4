use clap::Parser;
use jobsync::cli::{Cli, Command};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if !is_server(&cli) {
        end_quietly_on_closed_pipe();
    }
    jobsync::cli::run(cli).await
}

/// The daemon and the simulator are servers; every other command writes its output and ends.
fn is_server(cli: &Cli) -> bool {
    match &cli.command {
        None => !cli.once,
        Some(Command::Run { once }) => !once,
        Some(Command::Simulate(_)) => true,
        Some(_) => false,
    }
}

/// Rust ignores SIGPIPE, so printing to a pipe whose reader went away (`jobsync status | head`)
/// would panic. A command-line tool should end quietly instead, as `cat` does: restore the default
/// action. (Network writes use MSG_NOSIGNAL and are unaffected.)
fn end_quietly_on_closed_pipe() {
    // SAFETY: called once at start, before any other thread could be writing to a pipe; setting a
    // signal's disposition to its default has no other effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
