//! `jobsync outbox list [--status S] [--limit N]` and `jobsync outbox retry (--id N… | --failed)`:
//! look at the outbox from the database (no API call), and re-queue failed rows.

use super::{CliError, CliResult, OutboxCommand, open_db};
use crate::config::Config;
use crate::db::models::{OutboxRow, OutboxStatus};
use crate::db::repo::{self, outbox};

pub async fn run(config: &Config, cmd: OutboxCommand) -> CliResult {
    match cmd {
        OutboxCommand::List { status, limit } => list(config, status, limit).await,
        OutboxCommand::Retry { ids, failed } => retry(config, ids, failed).await,
    }
}

async fn list(config: &Config, status: Option<String>, limit: i64) -> CliResult {
    let status = match status.as_deref().map(str::parse::<OutboxStatus>) {
        None => None,
        Some(Ok(status)) => Some(status),
        Some(Err(e)) => return Err(CliError::usage(e)),
    };
    if limit <= 0 {
        return Err(CliError::usage("--limit must be positive"));
    }
    let db = open_db(config).await?;
    let rows = db.run(move |c| outbox::list(c, status, limit)).await?;
    if rows.is_empty() {
        outln!("no outbox rows");
    }
    for row in &rows {
        outln!("{}", describe(row));
    }
    Ok(())
}

/// One line per row: id, op, target, status, attempts, HTTP status, resulting job, error.
fn describe(row: &OutboxRow) -> String {
    let target = match (row.job_id, row.campaign, &row.reference) {
        (Some(id), _, _) => format!("job {id}"),
        (None, Some(c), Some(r)) => format!("campaign {c} reference {r}"),
        (None, Some(c), None) => format!("campaign {c}"),
        (None, None, Some(r)) => format!("reference {r}"),
        (None, None, None) => "no target".into(),
    };
    let mut line = format!(
        "#{} {} {target} {} attempts={}",
        row.id, row.op, row.status, row.attempts
    );
    if let Some(status) = row.http_status {
        line += &format!(" http={status}");
    }
    if let Some(job) = row.result_job_id {
        line += &format!(" result_job_id={job}");
    }
    if let Some(error) = &row.last_error {
        line += &format!(" error: {error}");
    }
    line
}

async fn retry(config: &Config, mut ids: Vec<i64>, all_failed: bool) -> CliResult {
    if ids.is_empty() && !all_failed {
        // Checked here rather than by clap, whose message would name only one of the two forms.
        return Err(CliError::usage(
            "outbox retry: which rows? give --id N (one or more) or --failed (every failed row); \
             `outbox list --status failed` shows them",
        ));
    }
    let db = open_db(config).await?;
    if all_failed {
        let n = db.run(|c| outbox::retry(c, None)).await?;
        outln!("re-queued {n} failed row(s)");
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    let (requeued, others) = db
        .run(move |c| {
            repo::transaction(c, |c| {
                let requeued = outbox::retry_ids(c, &ids)?;
                let others: Vec<i64> = ids
                    .iter()
                    .filter(|id| requeued.binary_search(id).is_err())
                    .copied()
                    .collect();
                let found = outbox::get_many(c, &others)?;
                let others: Vec<(i64, Option<OutboxStatus>)> = others
                    .into_iter()
                    .map(|id| (id, found.iter().find(|r| r.id == id).map(|r| r.status)))
                    .collect();
                Ok((requeued, others))
            })
        })
        .await?;
    outln!("re-queued {} failed row(s)", requeued.len());
    if others.is_empty() {
        return Ok(());
    }
    let why: Vec<String> = others
        .iter()
        .map(|(id, status)| match status {
            None => format!("{id} (no such row)"),
            Some(status) => format!("{id} (status is {status})"),
        })
        .collect();
    Err(CliError::failed(format!(
        "not re-queued: {}; only failed rows are re-queued",
        why.join(", ")
    )))
}
