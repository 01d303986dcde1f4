//! The command-line face: parses arguments, loads the configuration, calls the engine, and maps
//! every failure to a one-line message and an exit code (0 done, 1 could not complete, 2 usage,
//! configuration or input error).

/// `println!` for command output: a reader that has gone away ends the process quietly (see
/// [`write_stdout`]) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

mod args;
mod changes;
mod check;
mod config_show;
mod context;
mod daemon;
mod demo;
mod import;
mod migrate;
mod once;
mod outbox;
mod progress;
mod prune;
mod resync;
mod status;
mod verify;
mod webhook;

pub use args::{Cli, Command, ConfigCommand, GlobalArgs, ImportArgs, ImportFormat, OutboxCommand};

use crate::config::{self, Config, ConfigError, Overrides};
use crate::db::{Db, DbError, DbOptions};
use std::process::ExitCode;
use std::time::Duration;

/// A failure the user sees: its message and exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: 2,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::usage(e.to_string())
    }
}

impl From<DbError> for CliError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Url { .. } => CliError::usage(e.to_string()),
            _ => CliError::failed(e.to_string()),
        }
    }
}

pub type CliResult = Result<(), CliError>;

/// Runs the parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    // Before anything else (the configuration, connecting, migrating): PID 1 in a container
    // ignores a SIGTERM nobody handles, so a pod stopped while it connects or migrates used to
    // wait out its grace and end in SIGKILL.
    install_signal_handlers();
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::secret::scrub(&e.message));
            ExitCode::from(e.code)
        }
    }
}

async fn dispatch(cli: Cli) -> CliResult {
    let overrides = Overrides {
        config_file: cli.global.config.clone(),
        database_url: cli.global.database_url.clone(),
        api_base_url: cli.global.api_base_url.clone(),
    };
    let cli_database_url = cli.global.database_url.is_some();
    let command = command_of(cli.command, cli.once, &cli.global)?;
    if let Command::Simulate(args) = command {
        // The simulator needs no database; it only borrows the token when one is configured.
        let token = config::load(&overrides)
            .ok()
            .and_then(|c| c.api.token.map(|t| t.expose().to_string()));
        return crate::sim::run_cli(args, token).await.map_err(|e| match e {
            crate::sim::SimulateError::Invalid(reason) => CliError::usage(reason),
            failed @ crate::sim::SimulateError::Failed(_) => CliError::failed(failed.to_string()),
        });
    }
    match command {
        Command::Check => return check::run(&overrides).await,
        Command::Config(ConfigCommand::Show) => return config_show::run(&overrides),
        Command::Migrate { status: true } => {
            return migrate::status(&config::load(&overrides)?).await;
        }
        _ => {}
    }
    let config = config::load(&overrides)?;
    // The demo is a printed tour: only warnings unless RUST_LOG asks for more.
    let default_level = if matches!(command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    let _traces = crate::telemetry::init_logging(&config.log, &config.telemetry, default_level);
    match command {
        Command::Migrate { .. } => migrate::run(&config).await,
        Command::Status => status::run(&config).await,
        Command::Run { once: true } => once::run(&config).await,
        Command::Run { once: false } => daemon::run(&config).await,
        Command::Import(args) => import::run(&config, args).await,
        Command::Outbox(cmd) => outbox::run(&config, cmd).await,
        Command::Changes {
            since,
            consumer,
            follow,
            limit,
            campaign,
        } => {
            let request = changes::Request {
                since,
                consumer,
                follow,
                limit,
                campaign,
            };
            changes::run(&open_db(&config).await?, request).await
        }
        Command::Webhook(cmd) => webhook::run(&config, cmd).await,
        Command::Prune => prune::run(&config).await,
        Command::Verify { campaigns, json } => verify::run(&config, campaigns, json).await,
        Command::Resync { campaigns } => resync::run(&config, campaigns).await,
        Command::Demo { force } => demo::run(&config, cli_database_url, force).await,
        Command::Simulate(_) | Command::Check | Command::Config(_) => {
            unreachable!("handled above")
        }
    }
}

/// The command to run. Flags that would mean nothing for it are refused rather than ignored:
/// `--once` belongs to `run` (`jobsync --once status` would otherwise just print the status),
/// `demo --force` only matters for a database named with `--database-url`, the simulator has no
/// database and is no client of an API, and the demo syncs from a simulator of its own.
fn command_of(
    command: Option<Command>,
    once: bool,
    global: &GlobalArgs,
) -> Result<Command, CliError> {
    let database_url = global.database_url.is_some();
    let api_base_url = global.api_base_url.is_some();
    match command {
        None => Ok(Command::Run { once }),
        Some(Command::Run { once: run_once }) => Ok(Command::Run {
            once: once || run_once,
        }),
        Some(_) if once => Err(CliError::usage(
            "--once applies to the sync only: run `jobsync --once` (or `jobsync run --once`) on \
             its own",
        )),
        Some(Command::Demo { force: true }) if !database_url => Err(CliError::usage(
            "demo --force only matters with --database-url (it lets the demo write into a \
             database holding other data); without it the demo recreates ./jobsync-demo.db anyway",
        )),
        Some(Command::Demo { .. }) if api_base_url => Err(CliError::usage(
            "--api-base-url means nothing to `jobsync demo` (it syncs from a simulator of its \
             own); drop it, or run `jobsync --once --api-base-url URL` to sync from that API",
        )),
        Some(Command::Simulate(_)) if database_url => Err(CliError::usage(
            "--database-url means nothing to `jobsync simulate` (it keeps its jobs in memory); \
             drop it",
        )),
        Some(Command::Simulate(_)) if api_base_url => Err(CliError::usage(
            "--api-base-url means nothing to `jobsync simulate` (it is the API: it serves on \
             --listen, default 127.0.0.1:8080); drop it, or pass --listen ADDR",
        )),
        Some(command) => Ok(command),
    }
}

/// Writes command output to stdout. SIGPIPE is ignored (see `main`), so a reader that went away
/// (`jobsync status | head -1`, `jobsync changes | head`) shows up here as a `BrokenPipe` error:
/// the process ends at once with exit 0 and nothing on stderr, as `cat` would end, rather than
/// panicking as `println!` does. Any other write error ends it with exit 1 and a message.
pub fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        end_on_stdout_error(&e);
    }
}

/// Ends the process after a failed write to stdout: quietly (exit 0) when the reader has gone
/// away, with a message (exit 1) otherwise.
pub fn end_on_stdout_error(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// Set once SIGINT or SIGTERM arrived; the handlers are installed first thing by [`run`].
static SIGNALLED: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> =
    std::sync::OnceLock::new();

/// Installs the SIGINT and SIGTERM handlers now (idempotent): a signal that arrives at any later
/// moment, even before the command has started its work, is kept for [`shutdown_signal`].
fn install_signal_handlers() {
    use tokio::signal::unix::{SignalKind, signal};
    SIGNALLED.get_or_init(|| {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (term, int) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        tokio::spawn(async move {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = recv(term.ok()) => {}
                () = recv(int.ok()) => {}
            }
            let _ = tx.send(true);
        });
        rx
    });
}

/// Resolves on SIGINT or SIGTERM (also one received before this call).
pub async fn shutdown_signal() {
    install_signal_handlers();
    if let Some(rx) = SIGNALLED.get() {
        let _ = rx.clone().wait_for(|signalled| *signalled).await;
    }
    tracing::info!("shutdown signal received; finishing the work in flight");
}

/// `work` (connecting, migrating: the start of `run` and `--once`), unless SIGINT or SIGTERM
/// comes first: then the process exits 0 at once, as nothing has started that a stop would have
/// to finish. A migration cut short is rolled back by the database (each runs in a transaction)
/// and applied again at the next start.
pub async fn unless_stopped<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::select! {
        done = work => done,
        () = shutdown_signal() => {
            tracing::info!("stopped {what}: exiting before any cycle started");
            std::process::exit(0);
        }
    }
}

/// How the configuration sets up database connections: PostgreSQL statements time out after
/// `sync.stall_secs`, so a wedged one fails its cycle instead of hanging it.
pub fn db_options(config: &Config) -> DbOptions {
    DbOptions {
        statement_timeout: Some(Duration::from_secs(config.sync.stall_secs)),
        schema: Some(config.database.schema.clone()),
    }
}

/// Connects and migrates (every command that touches the database migrates first).
pub async fn open_db(config: &Config) -> Result<Db, CliError> {
    let url = config.database.url.clone();
    let options = db_options(config);
    crate::db::blocking(move || Db::open_with(&url, options))
        .await
        .map_err(CliError::from)
}
