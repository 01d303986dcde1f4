//! The repository layer on real SQLite and real PostgreSQL.

use crate::common::{self, TestDb, on_both_backends, sample_job};
use chrono::{TimeZone, Utc};
use jobsync::db::models::{ChangeSource, NewOutboxRow, OutboxStatus};
use jobsync::db::repo::{changes, jobs, outbox, runs, state};
use jobsync::db::{Conn, Ts};
use jobsync::job::JOB_FIELDS;
use serde_json::json;

on_both_backends!(
    migrations_create_the_contract_tables_and_rerun_as_a_no_op,
    upserting_the_same_10000_jobs_twice_writes_nothing_the_second_time,
    a_changed_field_is_detected_and_reported,
    key_order_and_number_formatting_are_not_changes,
    complete_listing_marks_missing_jobs_deleted_and_reappearance_recreates,
    watermark_round_trips_at_microsecond_precision,
    outbox_rows_insert_list_count_and_retry,
    runs_record_and_abandoned_runs_fail,
    timestamps_keep_microseconds,
);

fn conn(t: &TestDb) -> Conn {
    t.db.conn().expect("connection")
}

fn migrations_create_the_contract_tables_and_rerun_as_a_no_op(t: &TestDb) {
    assert_eq!(t.db.migrate().expect("migrate again"), 0);
    let mut c = conn(t);
    assert!(jobs::all(&mut c).unwrap().is_empty());
    assert!(changes::since(&mut c, 0, 10).unwrap().is_empty());
    assert!(runs::recent(&mut c, 10).unwrap().is_empty());
    assert_eq!(
        outbox::counts(&mut c)
            .unwrap()
            .iter()
            .map(|x| x.1)
            .sum::<i64>(),
        0
    );
    // The CRM's minimal insert: every other column has a default.
    let sql = "INSERT INTO outbox (op, campaign, reference, job_id, payload) \
               VALUES ('create', 28, 'r-1', NULL, '{\"name\": \"A\"}')";
    jobsync::with_conn!(&mut c, |raw| {
        use diesel::RunQueryDsl;
        diesel::sql_query(sql).execute(raw).unwrap()
    });
    let rows = outbox::list(&mut c, Some(OutboxStatus::Pending), 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].attempts, 0);
    assert!(rows[0].next_attempt_at <= Ts::now());
}

fn upserting_the_same_10000_jobs_twice_writes_nothing_the_second_time(t: &TestDb) {
    let batch: Vec<_> = (1..=10_000).map(|id| sample_job(id, 28 + id % 3)).collect();
    let mut c = conn(t);
    let first = jobs::upsert(&mut c, &batch, ChangeSource::Pull, Ts::now(), false).unwrap();
    assert_eq!((first.written, first.changes), (10_000, 10_000));
    let second = jobs::upsert(&mut c, &batch, ChangeSource::Pull, Ts::now(), false).unwrap();
    assert_eq!(
        (second.written, second.changes, second.unchanged),
        (0, 0, 10_000)
    );
    assert_eq!(changes::since(&mut c, 0, 20_000).unwrap().len(), 10_000);
    let created = &changes::since(&mut c, 0, 1).unwrap()[0];
    assert_eq!(created.kind, "created");
    assert_eq!(created.old_state, None);
    let fields: Vec<String> = serde_json::from_str(&created.changed_fields).unwrap();
    assert_eq!(fields, JOB_FIELDS);
    // The mirror holds what the API said.
    let stored = jobs::get(&mut c, 42).unwrap().unwrap().to_job();
    assert_eq!(stored, sample_job(42, 28).truncated_to_micros());
}

fn a_changed_field_is_detected_and_reported(t: &TestDb) {
    let mut c = conn(t);
    let original: Vec<_> = (1..=3).map(|id| sample_job(id, 28)).collect();
    jobs::upsert(&mut c, &original, ChangeSource::Pull, Ts::now(), false).unwrap();
    let seq = changes::since(&mut c, 0, 100).unwrap().last().unwrap().seq;
    let mut edited = original.clone();
    edited[1].state = 2;
    edited[1].city = Some("Lyon".into());
    let stats = jobs::upsert(&mut c, &edited, ChangeSource::Push, Ts::now(), false).unwrap();
    assert_eq!((stats.written, stats.changes, stats.unchanged), (1, 1, 2));
    let new = changes::since(&mut c, seq, 100).unwrap();
    assert_eq!(new.len(), 1);
    let change = &new[0];
    assert_eq!((change.job_id, change.kind.as_str()), (2, "updated"));
    assert_eq!((change.old_state, change.new_state), (Some(0), Some(2)));
    assert_eq!(change.changed_fields, r#"["city","state"]"#);
    assert_eq!(change.source, "push");
    assert_eq!(change.reference.as_deref(), Some("ref-2"));
    let row = jobs::get(&mut c, 2).unwrap().unwrap();
    assert_eq!(row.content.city.as_deref(), Some("Lyon"));
    assert!(row.last_seen_at >= row.first_seen_at);
}

fn key_order_and_number_formatting_are_not_changes(t: &TestDb) {
    let mut c = conn(t);
    let mut job = sample_job(7, 28);
    job.data = json!({"a": 1, "b": {"y": 2.0, "x": "s"}})
        .as_object()
        .cloned();
    jobs::upsert(
        &mut c,
        std::slice::from_ref(&job),
        ChangeSource::Pull,
        Ts::now(),
        false,
    )
    .unwrap();
    job.data = json!({"b": {"x": "s", "y": 2}, "a": 1.0})
        .as_object()
        .cloned();
    job.value = Some(12.50);
    let stats = jobs::upsert(&mut c, &[job], ChangeSource::Pull, Ts::now(), false).unwrap();
    assert_eq!(stats.written, 0);
}

fn complete_listing_marks_missing_jobs_deleted_and_reappearance_recreates(t: &TestDb) {
    let mut c = conn(t);
    let all: Vec<_> = (1..=5).map(|id| sample_job(id, 28)).collect();
    let other = sample_job(99, 29);
    jobs::upsert(&mut c, &all, ChangeSource::Pull, Ts::now(), false).unwrap();
    jobs::upsert(
        &mut c,
        std::slice::from_ref(&other),
        ChangeSource::Pull,
        Ts::now(),
        false,
    )
    .unwrap();
    let listing_started = Ts::now();
    // A complete listing of campaign 28 without job 3.
    let listed: Vec<_> = all.iter().filter(|j| j.id != 3).cloned().collect();
    let stats = jobs::upsert(&mut c, &listed, ChangeSource::Pull, Ts::now(), true).unwrap();
    assert_eq!(
        stats.written, 0,
        "touching last_seen_at is not a content change"
    );
    let marked = jobs::mark_missing_deleted(&mut c, 28, listing_started, Ts::now()).unwrap();
    assert_eq!(marked, 1);
    assert!(
        jobs::get(&mut c, 3)
            .unwrap()
            .unwrap()
            .remote_deleted_at
            .is_some()
    );
    assert!(
        jobs::get(&mut c, 99)
            .unwrap()
            .unwrap()
            .remote_deleted_at
            .is_none()
    );
    let last = changes::since(&mut c, 0, 100).unwrap().pop().unwrap();
    assert_eq!(
        (last.job_id, last.kind.as_str(), last.old_state),
        (3, "deleted", Some(0))
    );
    assert_eq!(jobs::counts(&mut c).unwrap(), (5, 1));
    // It comes back: `created` again, and live.
    jobs::upsert(&mut c, &all[2..3], ChangeSource::Pull, Ts::now(), false).unwrap();
    let row = jobs::get(&mut c, 3).unwrap().unwrap();
    assert!(row.remote_deleted_at.is_none());
    let last = changes::since(&mut c, 0, 100).unwrap().pop().unwrap();
    assert_eq!((last.job_id, last.kind.as_str()), (3, "created"));
}

fn watermark_round_trips_at_microsecond_precision(t: &TestDb) {
    let mut c = conn(t);
    assert_eq!(state::get_time(&mut c, state::WATERMARK).unwrap(), None);
    let at = Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
        + chrono::Duration::nanoseconds(123_456_789);
    state::set_time(&mut c, state::WATERMARK, at).unwrap();
    let back = state::get_time(&mut c, state::WATERMARK).unwrap().unwrap();
    assert_eq!(back, at - chrono::Duration::nanoseconds(789));
    state::set_time(
        &mut c,
        state::WATERMARK,
        back + chrono::Duration::seconds(1),
    )
    .unwrap();
    assert!(state::get_time(&mut c, state::WATERMARK).unwrap().unwrap() > back);
}

fn outbox_rows_insert_list_count_and_retry(t: &TestDb) {
    let mut c = conn(t);
    let row = |op: &str, reference: &str| NewOutboxRow {
        op: op.into(),
        campaign: Some(28),
        reference: Some(reference.into()),
        job_id: None,
        payload: "{}".into(),
    };
    let n = outbox::insert(
        &mut c,
        &[row("create", "a"), row("patch", "a"), row("unqueue", "b")],
    )
    .unwrap();
    assert_eq!(n, 3);
    let (due, _) = outbox::open_window(&mut c, 0, i64::MAX, 10).unwrap();
    assert_eq!(
        due.iter().map(|r| r.op.as_str()).collect::<Vec<_>>(),
        ["create", "patch", "unqueue"]
    );
    let failed = outbox::RowUpdate::failed("bulk/patch answered 404".into(), Some(404));
    assert_eq!(outbox::update(&mut c, &[due[1].id], &failed).unwrap(), 1);
    let counts = outbox::counts(&mut c).unwrap();
    assert!(counts.contains(&("pending".into(), 2)) && counts.contains(&("failed".into(), 1)));
    assert_eq!(
        outbox::list(&mut c, Some(OutboxStatus::Failed), 10).unwrap()[0].http_status,
        Some(404)
    );
    assert_eq!(outbox::retry(&mut c, None).unwrap(), 1);
    // By id: only the failed ones among them, by id.
    assert_eq!(outbox::update(&mut c, &[due[0].id], &failed).unwrap(), 1);
    assert_eq!(
        outbox::retry_ids(&mut c, &[due[2].id, 9999, due[0].id]).unwrap(),
        [due[0].id]
    );
    assert_eq!(
        outbox::list(&mut c, Some(OutboxStatus::Pending), 10)
            .unwrap()
            .len(),
        3
    );
    assert!(outbox::oldest_pending(&mut c).unwrap().is_some());
}

fn runs_record_and_abandoned_runs_fail(t: &TestDb) {
    let mut c = conn(t);
    let first = runs::start(&mut c, "once", Ts::now()).unwrap();
    let outcome = runs::RunOutcome {
        mode: "full".into(),
        ok: true,
        jobs_pulled: 10,
        jobs_changed: 4,
        api_calls: 3,
        ..Default::default()
    };
    runs::finish(&mut c, first, &outcome).unwrap();
    let second = runs::start(&mut c, "schedule", Ts::now()).unwrap();
    assert!(second > first);
    assert_eq!(runs::fail_abandoned(&mut c).unwrap(), 1);
    let recent = runs::recent(&mut c, 10).unwrap();
    assert_eq!(recent[0].status, "failed");
    assert!(recent[0].error.as_deref().unwrap().contains("abandoned"));
    assert_eq!(
        (recent[1].status.as_str(), recent[1].mode.as_str()),
        ("ok", "full")
    );
    assert_eq!(
        (recent[1].jobs_pulled, recent[1].trigger.as_str()),
        (10, "once")
    );
}

fn timestamps_keep_microseconds(t: &TestDb) {
    let mut c = conn(t);
    let at = Ts::from(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap());
    let id = runs::start(&mut c, "once", at).unwrap();
    assert_eq!(runs::recent(&mut c, 1).unwrap()[0].started_at, at);
    if t.db.is_sqlite() {
        // The contract's text form, six fractional digits even when they are zero.
        let text: String = jobsync::with_conn!(&mut c, |raw| {
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct Row {
                #[diesel(sql_type = diesel::sql_types::Text)]
                started_at: String,
            }
            diesel::sql_query(format!("SELECT started_at FROM sync_runs WHERE id = {id}"))
                .get_result::<Row>(raw)
                .unwrap()
                .started_at
        });
        assert_eq!(text, "2026-01-02 03:04:05.000000");
    }
}

/// Processes starting together migrate one fresh database at once; every one of them opens it,
/// and the schema is complete exactly once.
fn open_concurrently(url: &str) {
    const STARTS: usize = 6;
    let all_ready = std::sync::Arc::new(std::sync::Barrier::new(STARTS));
    let opened: Vec<_> = (0..STARTS)
        .map(|_| {
            let (url, all_ready) = (url.to_string(), all_ready.clone());
            std::thread::spawn(move || {
                all_ready.wait();
                jobsync::db::Db::open(&url).map(|_| ())
            })
        })
        .collect();
    for handle in opened {
        handle
            .join()
            .unwrap()
            .expect("every concurrent start opens the database");
    }
    let db = jobsync::db::Db::open(url).unwrap();
    assert_eq!(db.migrate().unwrap(), 0);
    assert!(jobs::all(&mut db.conn().unwrap()).unwrap().is_empty());
}

#[test]
fn concurrent_starts_migrate_a_fresh_sqlite_file_once() {
    let dir = tempfile::tempdir().unwrap();
    open_concurrently(&format!("sqlite://{}", dir.path().join("j.db").display()));
}

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn concurrent_starts_migrate_a_fresh_postgres_schema_once() {
    if let Some((url, _schema)) = common::fresh_postgres_schema() {
        open_concurrently(&url);
    }
}

/// A write transaction on SQLite holds the write lock from its `BEGIN`: a CRM committing between
/// its first read and its first write waits for it, instead of the transaction being refused
/// with "database is locked" when it starts writing (what a deferred `BEGIN` does). Nested
/// transactions still nest, as savepoints.
#[test]
fn sqlite_write_transactions_take_the_write_lock_when_they_begin() {
    use diesel::{Connection, RunQueryDsl, SqliteConnection};
    let t = TestDb::sqlite();
    let path = t.db.sqlite_path().unwrap().to_string_lossy().to_string();
    // The CRM's connection, without a busy timeout: a held write lock shows at once.
    let mut crm = SqliteConnection::establish(&path).unwrap();
    let crm_insert = "INSERT INTO outbox (op, campaign, reference, payload) \
                      VALUES ('create', 28, 'crm-1', '{\"name\": \"A\"}')";
    let row = NewOutboxRow {
        op: "create".into(),
        campaign: Some(28),
        reference: Some("sync-1".into()),
        job_id: None,
        payload: json!({"name": "B"}).to_string(),
    };
    let mut c = conn(&t);
    jobsync::db::repo::transaction(&mut c, |c| {
        let before = outbox::counts(c)?;
        assert!(before.iter().all(|(_, n)| *n == 0));
        // The CRM's transaction, between this one's read and its write: its first write is
        // refused, since this transaction holds the write lock. (A deferred `BEGIN` let it
        // through, and this transaction's own write then failed.)
        diesel::sql_query("BEGIN").execute(&mut crm).unwrap();
        let refused = diesel::sql_query(crm_insert).execute(&mut crm).unwrap_err();
        diesel::sql_query("ROLLBACK").execute(&mut crm).unwrap();
        assert!(
            refused.to_string().contains("database is locked"),
            "{refused}"
        );
        // `outbox::insert` opens its own transaction inside this one.
        outbox::insert(c, std::slice::from_ref(&row))
    })
    .expect("the transaction writes after reading");
    diesel::sql_query(crm_insert).execute(&mut crm).unwrap();
    let references: Vec<_> = outbox::list(&mut c, None, 10)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.reference)
        .collect();
    assert_eq!(references, ["crm-1", "sync-1"]);
}
