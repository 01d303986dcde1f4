//! A CRM writing to the outbox while a cycle pushes it, on SQLite: the CRM's own connection
//! inserts rows in short deferred transactions the whole time, and the cycle must neither fail
//! with "database is locked" nor leave rows in flight. (SQLite only: the bug was SQLite's
//! deferred `BEGIN`, refused at once when it turns into a writer after another connection
//! committed.)

use crate::common::*;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use jobsync::api::ApiClient;
use jobsync::config::SyncConfig;
use jobsync::db::repo::runs;
use jobsync::sim::SimConfig;
use jobsync::sync::cycle::Trigger;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Creates already in the outbox when the cycle starts.
const BACKLOG: usize = 3000;
/// How often the CRM writes one row.
const CRM_PERIOD: Duration = Duration::from_millis(10);
/// The CRM stops when the cycle ends, or after this long. A push reloads the outbox every round
/// and ends only when a round finds nothing open, so while a CRM keeps adding a row every 10 ms
/// the cycle keeps chasing them (for minutes, up to the push's round limit): without this bound
/// the test would wait for that. It is longer than the backlog's push takes.
const CRM_WRITES_FOR: Duration = Duration::from_secs(5);

#[test]
fn a_cycle_pushes_while_a_crm_writes_to_the_outbox() {
    let t = TestDb::sqlite();
    block_on(async {
        let sim = start_sim(SimConfig::default()).await;
        // Slow answers and small batches: the push spans many requests while the CRM writes.
        set_faults(&sim, json!({"latency_ms": 30})).await;
        let mut opts = options(&sim, "dev-token");
        opts.bulk_size = 100;
        opts.concurrency = 2;
        let engine = engine_with(&t.db, ApiClient::new(opts).unwrap(), SyncConfig::default());

        let backlog: Vec<_> = (0..BACKLOG)
            .map(|n| {
                create(
                    28 + (n % 2) as i64,
                    &format!("old-{n}"),
                    json!({"name": format!("Old {n}"), "numbers": ["+33612345678"]}),
                )
            })
            .collect();
        insert(&t.db, &backlog);

        let path = t.db.sqlite_path().unwrap().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || crm_writer(path, &stop))
        };

        let started = Instant::now();
        let summary = engine
            .cycle(Trigger::Once)
            .run()
            .await
            .expect("a cycle runs");
        let cycle_time = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        let crm = writer.join().expect("the CRM writer thread");
        let rows = all_rows(&t.db);
        eprintln!(
            "cycle: ok={} in {cycle_time:?}, error={:?}, pushed={:?}, left in flight: {}; \
             CRM: {} rows written, {} busy retries",
            summary.ok,
            summary.error,
            summary.push,
            count_status(&rows, "in_flight"),
            crm.written,
            crm.busy_retries
        );
        assert!(crm.written > 0, "the CRM wrote while the cycle ran");

        let mut c = t.db.conn().unwrap();
        let run = runs::recent(&mut c, 1).unwrap().remove(0);
        drop(c);
        assert_eq!(run.id, summary.run_id);
        for error in [&summary.error, &run.error].into_iter().flatten() {
            assert!(
                !error.contains("database is locked"),
                "the cycle hit SQLite's lock: {error}"
            );
        }
        assert!(summary.ok, "cycle failed: {:?}", summary.error);
        assert_eq!(run.status, "ok", "sync_runs: {run:?}");
        assert_eq!(
            count_status(&rows, "in_flight"),
            0,
            "rows left in flight after the cycle"
        );

        // The rows the CRM added after the cycle's last round go with the next cycles.
        let deadline = Instant::now() + Duration::from_secs(60);
        while count_status(&all_rows(&t.db), "pending") > 0 {
            assert!(
                Instant::now() < deadline,
                "rows still pending after 60 s of cycles"
            );
            let summary = engine
                .cycle(Trigger::Once)
                .run()
                .await
                .expect("a cycle runs");
            assert!(summary.ok, "follow-up cycle failed: {:?}", summary.error);
        }

        let rows = all_rows(&t.db);
        assert_eq!(rows.len(), BACKLOG + crm.written);
        let upstream = sim_by_ref(&sim).await;
        for row in &rows {
            assert_eq!(row.status, "done", "row {row:?}");
            assert!(
                !row.last_error
                    .as_deref()
                    .unwrap_or_default()
                    .contains("database is locked"),
                "row {row:?}"
            );
            let key = (row.campaign.unwrap(), row.reference.clone().unwrap());
            let jobs = upstream.get(&key).map(Vec::len).unwrap_or(0);
            assert_eq!(jobs, 1, "jobs upstream with reference {key:?}");
        }
    });
}

/// What the CRM writer did.
struct CrmWrites {
    written: usize,
    /// Transactions SQLite refused as busy, each retried.
    busy_retries: usize,
}

/// Writes one outbox create every [`CRM_PERIOD`] until `stop` (or for [`CRM_WRITES_FOR`]), as a
/// CRM would: on its own connection, in a deferred transaction that reads before it inserts,
/// retrying a transaction SQLite refuses as busy.
fn crm_writer(path: PathBuf, stop: &AtomicBool) -> CrmWrites {
    let started = Instant::now();
    let mut conn = SqliteConnection::establish(&path.to_string_lossy()).unwrap();
    diesel::sql_query("PRAGMA busy_timeout = 5000")
        .execute(&mut conn)
        .unwrap();
    let mut done = CrmWrites {
        written: 0,
        busy_retries: 0,
    };
    while !stop.load(Ordering::SeqCst) && started.elapsed() < CRM_WRITES_FOR {
        let n = done.written;
        loop {
            match crm_insert(&mut conn, n) {
                Ok(()) => break,
                Err(e) if is_busy(&e) => {
                    let _ = diesel::sql_query("ROLLBACK").execute(&mut conn);
                    done.busy_retries += 1;
                }
                Err(e) => panic!("the CRM's insert failed: {e}"),
            }
        }
        done.written += 1;
        std::thread::sleep(CRM_PERIOD);
    }
    done
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn crm_insert(conn: &mut SqliteConnection, n: usize) -> QueryResult<()> {
    let reference = format!("crm-{n}");
    diesel::sql_query("BEGIN").execute(conn)?;
    let existing = diesel::sql_query("SELECT count(*) AS n FROM outbox WHERE reference = ?")
        .bind::<Text, _>(&reference)
        .get_result::<Count>(conn)?;
    assert_eq!(existing.n, 0, "reference {reference} is new");
    diesel::sql_query(
        "INSERT INTO outbox (op, campaign, reference, payload) VALUES ('create', ?, ?, ?)",
    )
    .bind::<BigInt, _>(28 + (n % 2) as i64)
    .bind::<Text, _>(&reference)
    .bind::<Text, _>(json!({"name": format!("CRM {n}"), "numbers": ["+33612345678"]}).to_string())
    .execute(conn)?;
    diesel::sql_query("COMMIT").execute(conn)?;
    Ok(())
}

fn is_busy(e: &diesel::result::Error) -> bool {
    let text = e.to_string();
    text.contains("database is locked") || text.contains("database is busy")
}
