//! The command line of docs/contract.md §1.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "jobsync",
    version,
    about = "Keeps a CRM and a call-campaign platform's Jobs API in step",
    long_about = "Keeps a CRM and a call-campaign platform's Jobs API in step: pulls every job \
                  change into a local mirror, pushes the CRM's outbox through the bulk \
                  endpoints, and records a changefeed. Without a command it runs the daemon."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    /// Run exactly one sync cycle (pull + push), print a summary, and exit.
    #[arg(long)]
    pub once: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags every command accepts: the command-line layer of the configuration.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML), layered over config/default.toml [env: JOBSYNC_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Database URL: sqlite://PATH or postgres://USER:PASSWORD@HOST/DB (database.url)
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Jobs API root, e.g. https://api.example.com (api.base_url)
    #[arg(long, global = true, value_name = "URL")]
    pub api_base_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: sync on the schedule, serve health and metrics, stop cleanly on SIGTERM
    Run {
        /// Run exactly one sync cycle, print a summary, and exit
        #[arg(long)]
        once: bool,
    },
    /// Apply pending database migrations and exit
    Migrate {
        /// List the applied and pending migrations instead, changing nothing (a SQLite file
        /// that does not exist is not created)
        #[arg(long)]
        status: bool,
    },
    /// Validate the configuration and reach the database and the API; exit 0 only if all pass
    Check,
    /// Append CRM changes to the outbox, validating every row first
    Import(ImportArgs),
    /// Inspect the outbox, or re-queue failed rows
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Print the changefeed as NDJSON, rows with seq > SINCE in seq order
    Changes {
        /// Print rows after this sequence number (with --consumer: where a new consumer starts)
        #[arg(long, value_name = "SEQ")]
        since: Option<i64>,
        /// Resume after this consumer's committed seq, and commit after each page is printed
        /// (at least once; table changefeed_consumers)
        #[arg(long, value_name = "NAME")]
        consumer: Option<String>,
        /// Keep printing new rows as they arrive
        #[arg(long)]
        follow: bool,
        /// Print at most this many rows, then exit
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Only this campaign's rows (a consumer's position still passes the others)
        #[arg(long, value_name = "N")]
        campaign: Option<i64>,
    },
    /// Last runs, watermark, outbox and mirror counts, from the database (no API call)
    Status,
    /// Apply the retention settings now
    Prune,
    /// Compare the mirror with the API field for field, audit the outbox and the changefeed
    /// (read-only); exit 0 clean, 3 differences found, 1 could not complete
    Verify {
        /// Only this campaign (repeat for several; default: every tracked campaign)
        #[arg(long = "campaign", value_name = "N")]
        campaigns: Vec<i64>,
        /// Print the findings as NDJSON (kind, job_id, campaign, reference, fields)
        #[arg(long)]
        json: bool,
    },
    /// Ask the next cycle to list every tracked campaign (or those named) in full
    Resync {
        /// Only this campaign (repeat for several; default: every tracked campaign)
        #[arg(long = "campaign", value_name = "N")]
        campaigns: Vec<i64>,
    },
    /// Inspect the configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The webhook sink: re-deliver from a seq, or resume a paused sink
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Run a faithful local stand-in for the Jobs API
    Simulate(crate::sim::SimulateArgs),
    /// A one-command tour: the simulator in-process, sync cycles into a local SQLite file
    Demo {
        /// With --database-url: write the demo's jobs into that database even when it holds
        /// data the demo did not write
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// NDJSON or CSV file of outbox rows; `-` reads standard input
    pub file: PathBuf,
    /// The file's format (default: from the extension; ndjson for stdin)
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,
    /// Validate every row and report, but insert nothing
    #[arg(long)]
    pub dry_run: bool,
    /// CSV only: the character between cells (default `,`): one ASCII character, e.g. ';' for
    /// a spreadsheet's export in a locale that writes decimal commas; `tab` (or `\t`) for tab
    #[arg(long, value_name = "CHAR", value_parser = delimiter)]
    pub delimiter: Option<u8>,
}

/// `--delimiter`: one ASCII character that can separate cells, `tab` or `\t` for tab.
fn delimiter(text: &str) -> Result<u8, String> {
    let byte = match text {
        "tab" | "TAB" | "\\t" | "\t" => b'\t',
        _ if text.len() == 1 && text.is_ascii() => text.as_bytes()[0],
        _ => {
            return Err(
                "expected one ASCII character, e.g. ';' (or `tab` for tab); quote it for the \
                 shell: --delimiter ';'"
                    .into(),
            );
        }
    };
    let shown = if byte.is_ascii_graphic() {
        (byte as char).to_string()
    } else {
        (byte as char).escape_default().to_string()
    };
    match byte {
        b'"' | b'\n' | b'\r' => Err(format!(
            "`{shown}` cannot separate cells (it quotes or ends them); expected e.g. ';', '|' or \
             `tab`"
        )),
        _ if byte.is_ascii_alphanumeric() || (byte.is_ascii_control() && byte != b'\t') => {
            Err(format!(
                "`{shown}` cannot separate cells (cells hold it); expected e.g. ';', '|' or `tab`"
            ))
        }
        _ => Ok(byte),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    Ndjson,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// The effective configuration: every key, its value (secrets masked) and the layer it came
    /// from (default, file, env, flag)
    Show,
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Re-deliver the changefeed from SEQ: sets the sink's position (consumer `webhook`) so the
    /// running daemon's sink delivers the rows with seq >= SEQ again, in order
    Replay {
        /// The first seq to deliver again
        #[arg(long, value_name = "SEQ")]
        from: i64,
    },
    /// Resume a paused sink now, from the same seq
    Resume,
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List outbox rows, newest first
    List {
        /// Only rows with this status (pending, in_flight, done, failed, superseded)
        #[arg(long)]
        status: Option<String>,
        /// At most this many rows
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Re-queue failed rows: give --id N (one or more) or --failed
    Retry {
        /// Row ids to re-queue (repeat for several)
        #[arg(long = "id", value_name = "N")]
        ids: Vec<i64>,
        /// Re-queue every failed row
        #[arg(long, conflicts_with = "ids")]
        failed: bool,
    },
}
