//! `jobsync changes [--since SEQ] [--follow]`: the changefeed as NDJSON on stdout, rows with
//! `seq > SEQ` in `seq` order. With `--follow` it keeps polling for new rows until SIGINT/SIGTERM
//! (or until stdout is closed, e.g. piped into `head`).

use super::{CliError, CliResult};
use crate::db::Db;
use crate::db::models::ChangeRow;
use crate::db::repo::changes;
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

const PAGE: i64 = 1000;
const FOLLOW_POLL: Duration = Duration::from_millis(500);

pub async fn run(db: &Db, since: i64, follow: bool) -> CliResult {
    let mut last = since;
    let mut stop = Box::pin(super::shutdown_signal());
    loop {
        let page = db.run(move |c| changes::since(c, last, PAGE)).await?;
        if let Some(row) = page.last() {
            last = row.seq;
        }
        if !print_page(&page)? {
            return Ok(());
        }
        if page.len() as i64 == PAGE {
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

/// Prints rows; `false` when the reader went away (a closed pipe ends the command quietly).
fn print_page(rows: &[ChangeRow]) -> Result<bool, CliError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for row in rows {
        let line = to_json(row);
        if let Err(e) = writeln!(out, "{line}") {
            return broken_pipe_or(e);
        }
    }
    match out.flush() {
        Ok(()) => Ok(true),
        Err(e) => broken_pipe_or(e),
    }
}

fn broken_pipe_or(e: std::io::Error) -> Result<bool, CliError> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(false)
    } else {
        Err(CliError::failed(format!("cannot write to stdout: {e}")))
    }
}

/// One changefeed row as NDJSON, keys in the table's column order, `changed_fields` as a JSON
/// array, times in RFC 3339.
#[derive(Serialize)]
pub struct ChangeLine<'a> {
    seq: i64,
    job_id: i64,
    campaign: i64,
    reference: Option<&'a str>,
    kind: &'a str,
    old_state: Option<i32>,
    new_state: Option<i32>,
    changed_fields: Value,
    source: &'a str,
    observed_at: String,
}

pub fn to_json(row: &ChangeRow) -> String {
    let line = ChangeLine {
        seq: row.seq,
        job_id: row.job_id,
        campaign: row.campaign,
        reference: row.reference.as_deref(),
        kind: &row.kind,
        old_state: row.old_state,
        new_state: row.new_state,
        changed_fields: serde_json::from_str(&row.changed_fields).unwrap_or(Value::Null),
        source: &row.source,
        observed_at: row.observed_at.to_string(),
    };
    serde_json::to_string(&line).expect("a change line serialises")
}
