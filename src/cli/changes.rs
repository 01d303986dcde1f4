//! `jobsync changes [--since SEQ | --consumer NAME] [--follow] [--limit N] [--campaign N]`: the
//! changefeed as NDJSON on stdout, rows with `seq > SEQ` in `seq` order. With `--follow` it keeps
//! printing new rows until SIGINT/SIGTERM (or until stdout is closed, e.g. piped into `head`):
//! on PostgreSQL it wakes on the commit's notification ([`ChangeListener`]; a poll every 5 s
//! covers a lost connection), on SQLite it polls every 0.5 s.
//!
//! With `--consumer NAME` the position is kept in `changefeed_consumers`: the command resumes
//! after the consumer's committed `seq`, and commits after each page is written and flushed to
//! stdout — at least once: a page written but not committed (the process killed between the two)
//! is printed again by the next run, so a consumer keeps the highest `seq` it applied and skips
//! rows at or below it. `--since` sets the start of a consumer that does not exist yet.

use super::{CliError, CliResult};
use crate::db::Db;
use crate::db::listen::ChangeListener;
use crate::db::models::ChangeRow;
use crate::db::repo::{changes, consumers};
use std::io::Write;

const PAGE: i64 = 1000;

/// What `changes` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub since: Option<i64>,
    pub consumer: Option<String>,
    pub follow: bool,
    /// At most this many rows printed, then exit.
    pub limit: Option<u64>,
    pub campaign: Option<i64>,
}

pub async fn run(db: &Db, request: Request) -> CliResult {
    if let Some(limit) = request.limit
        && limit == 0
    {
        return Err(CliError::usage(
            "--limit 0 prints nothing; give at least 1, or leave --limit out for every row",
        ));
    }
    let mut last = match &request.consumer {
        None => request.since.unwrap_or(0),
        Some(name) => start_of(db, name, request.since).await?,
    };
    let mut left = request.limit;
    let mut listener = ChangeListener::new(db, crate::db::listen::fallback(db));
    let mut stop = Box::pin(super::shutdown_signal());
    loop {
        if request.follow {
            listener.listen().await;
        }
        let want = left.map_or(PAGE, |n| PAGE.min(n as i64));
        let campaign = request.campaign;
        let (page, scanned) = db
            .run(move |c| {
                // With a campaign, the rows of others are passed over: the page ends at the
                // feed's end as read before the rows (appends commit in `seq` order).
                let end = changes::last_seq(c)?;
                let page = changes::page(c, last, Some(end), campaign, want)?;
                let scanned = match page.last() {
                    Some(row) if page.len() as i64 == want => row.seq,
                    _ => end.max(last),
                };
                Ok::<_, crate::db::DbError>((page, scanned))
            })
            .await?;
        print_page(&page);
        if let Some(name) = &request.consumer
            && scanned > last
        {
            commit(db, name, last, scanned).await?;
        }
        last = scanned;
        if let Some(n) = left.as_mut() {
            *n -= page.len() as u64;
            if *n == 0 {
                return Ok(());
            }
        }
        if page.len() as i64 == want {
            continue;
        }
        if !request.follow {
            return Ok(());
        }
        if !listener.wait(&mut stop).await {
            return Ok(());
        }
    }
}

/// Where a consumer resumes: after its committed `seq`, or after `since` when it is new.
async fn start_of(db: &Db, name: &str, since: Option<i64>) -> Result<i64, CliError> {
    consumers::valid_name(name).map_err(CliError::usage)?;
    let owned = name.to_string();
    let (existing, consumer) = db
        .run(move |c| {
            let existing = consumers::get(c, &owned)?;
            let consumer = consumers::get_or_create(c, &owned, since.unwrap_or(0))?;
            Ok::<_, crate::db::DbError>((existing, consumer))
        })
        .await?;
    if let (Some(existing), Some(since)) = (existing, since)
        && existing.last_seq != since
    {
        return Err(CliError::usage(format!(
            "consumer {name} exists and resumes after seq {}; --since only sets where a new \
             consumer starts: drop --since, or use another --consumer name",
            existing.last_seq
        )));
    }
    Ok(consumer.last_seq)
}

/// Commits a consumer's position after its page was flushed; refused when another process moved
/// it since (two readers of one name would each skip what the other printed).
async fn commit(db: &Db, name: &str, from: i64, to: i64) -> Result<(), CliError> {
    let owned = name.to_string();
    let moved = db
        .run(move |c| consumers::commit(c, &owned, from, to))
        .await?;
    if moved {
        return Ok(());
    }
    Err(CliError::failed(format!(
        "consumer {name}'s position moved while this command read after seq {from} (another \
         `changes --consumer {name}`, or a replay): its rows up to seq {to} were printed but not \
         committed; run one reader per consumer name"
    )))
}

/// Prints rows, a page per write, and flushes. A reader that goes away (`| head`) ends the
/// process quietly before anything is committed (see [`super::end_on_stdout_error`]).
fn print_page(rows: &[ChangeRow]) {
    if rows.is_empty() {
        return;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = rows
        .iter()
        .try_for_each(|row| writeln!(out, "{}", changes::to_json(row)))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        super::end_on_stdout_error(&e);
    }
}
