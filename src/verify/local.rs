//! The checks that read the database only: rows stuck in flight, and the changefeed against the
//! mirror.

use super::VerifyError;
use super::findings::{Collector, Finding, Kind};
use crate::db::Db;
use crate::db::repo::{changes, outbox, runs};

/// `stuck`: rows still `in_flight` although `after_cycles` successful cycles started after their
/// deadline (`next_attempt_at`).
pub(super) async fn stuck(
    db: &Db,
    campaigns: Option<&[i64]>,
    after_cycles: u32,
    out: &mut Collector,
) -> Result<(), VerifyError> {
    let campaigns = campaigns.map(<[i64]>::to_vec);
    let limit = out.room() as i64;
    let (count, rows) = db
        .run(move |c| {
            let Some(threshold) = runs::nth_latest_ok_start(c, i64::from(after_cycles.max(1)))?
            else {
                return Ok((0, Vec::new()));
            };
            outbox::in_flight_due_before(c, threshold, campaigns.as_deref(), limit)
        })
        .await?;
    let detailed = rows
        .into_iter()
        .map(|row| Finding {
            kind: Kind::Stuck,
            job_id: row.job_id.or(row.result_job_id),
            campaign: row.campaign,
            reference: row.reference,
            fields: vec![],
        })
        .collect();
    out.add_counted(Kind::Stuck, count.max(0) as u64, detailed);
    Ok(())
}

/// `feed`: mirror jobs whose last changefeed row disagrees with them.
pub(super) async fn feed(
    db: &Db,
    campaigns: Option<&[i64]>,
    out: &mut Collector,
) -> Result<(), VerifyError> {
    let campaigns = campaigns.map(<[i64]>::to_vec);
    let limit = out.room() as i64;
    let (count, rows) = db
        .run(move |c| changes::feed_mismatches(c, campaigns.as_deref(), limit))
        .await?;
    let detailed = rows
        .into_iter()
        .map(|row| Finding {
            kind: Kind::Feed,
            job_id: Some(row.id),
            campaign: Some(row.campaign),
            reference: row.reference,
            fields: vec!["state"],
        })
        .collect();
    out.add_counted(Kind::Feed, count.max(0) as u64, detailed);
    Ok(())
}
