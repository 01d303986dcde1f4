//! `jobsync changes [--since SEQ] [--follow]`: the changefeed as NDJSON on stdout, rows with
//! `seq > SEQ` in `seq` order. With `--follow` it keeps polling for new rows until SIGINT/SIGTERM
//! (or until stdout is closed, e.g. piped into `head`).

use super::CliResult;
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
        print_page(&page);
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

/// Prints rows, a page per write. A reader that goes away (`| head`) ends the process quietly
/// (see [`super::end_on_stdout_error`]).
fn print_page(rows: &[ChangeRow]) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = rows
        .iter()
        .try_for_each(|row| writeln!(out, "{}", to_json(row)))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        super::end_on_stdout_error(&e);
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
