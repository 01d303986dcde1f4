use clap::Parser;
use jobsync::cli::{Cli, Command};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    limit_malloc_arenas();
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

/// glibc gives each thread that allocates its own arena, up to eight per core, and keeps what is
/// freed in each: a push whose bulk chunks run on many threads (tokio workers, the database's
/// blocking threads) held twice the memory it used. Four arenas keep the peak within the
/// push's 64 MiB budget at no measurable cost in throughput (one or two arenas made threads
/// wait for each other: 1.5× the latency floor instead of 1.2×).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing, before any other thread exists; mallopt only sets a tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
        // A fixed threshold: blocks of 1 MiB and more are mapped on their own and returned when
        // freed. glibc otherwise raises the threshold each time such a block is freed, and later
        // ones stay in the arenas (a 1,000,000-row push on PostgreSQL peaked at 66 MiB, 58 with
        // this). 256 KiB saved 5 MiB more but mapped every pull batch anew: three times the
        // system time of a backfill.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
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
