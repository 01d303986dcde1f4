//! The push against answers and rows a real deployment meets: answers that do not match what was
//! sent (a server of the test's own), a payload that is not UTF-8, a job deleted upstream behind
//! the mirror's back, a lookup that keeps failing, ambiguous targets, and a stop request in the
//! middle of a long push against a slow API. Damage is counted where a user sees it: jobs
//! upstream, outbox rows, the mirror.

use crate::common::*;
use axum::Json;
use axum::extract::State;
use axum::routing::{get, post};
use chrono::Utc;
use jobsync::config::PushConfig;
use jobsync::db::Ts;
use jobsync::db::repo::{jobs, outbox};
use jobsync::shutdown::StopFlag;
use jobsync::sim::SimConfig;
use jobsync::sync::push;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

on_both_backends!(
    answers_that_do_not_match_what_was_sent_are_never_linked,
    a_create_of_a_reference_deleted_upstream_is_created_again,
    a_lookup_that_keeps_failing_ends_the_row_failed,
    ambiguous_targets_fail_alone_and_touch_nothing,
    tiny_windows_keep_each_targets_order_and_the_minimum_calls,
);

mod sqlite_only {
    #[test]
    fn a_payload_that_is_not_utf8_fails_alone() {
        crate::common::run_on(
            super::a_payload_that_is_not_utf8_fails_alone,
            &crate::common::TestDb::sqlite(),
        );
    }

    #[test]
    fn a_stop_in_a_long_push_against_a_slow_api_exits_0_within_10s_then_converges() {
        crate::common::run_on(
            super::a_stop_in_a_long_push_exits_promptly,
            &crate::common::TestDb::sqlite(),
        );
    }
}

/// How the test's own server mangles a bulk create answer.
#[derive(Clone, Copy, Debug)]
enum Mangle {
    Reversed,
    Shifted,
    Shortened,
}

/// A stand-in API whose bulk creates answer each item with a job, but mangled; listings are
/// empty (no job exists, so an in-doubt create looks absent).
async fn mangling_server(mangle: Mangle) -> String {
    async fn bulk_create(
        State(mangle): State<Mangle>,
        Json(items): Json<Vec<Value>>,
    ) -> Json<Value> {
        let mut answers: Vec<Value> = items
            .iter()
            .enumerate()
            .map(|(n, item)| {
                json!({"status_code": 201, "data": {
                    "id": 1000 + n as i64, "campaign": item["campaign"],
                    "reference": item["reference"], "name": item["name"], "state": 0,
                    "created_at": "2026-11-30T10:00:00Z"}})
            })
            .collect();
        match mangle {
            Mangle::Reversed => answers.reverse(),
            Mangle::Shifted => answers.rotate_left(1),
            Mangle::Shortened => {
                answers.pop();
            }
        }
        Json(Value::Array(answers))
    }
    let app = axum::Router::new()
        .route("/j/jobs/bulk/create", post(bulk_create))
        .route("/j/jobs", get(|| async { Json(json!([])) }))
        .with_state(mangle);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn answers_that_do_not_match_what_was_sent_are_never_linked(t: &TestDb) {
    for mangle in [Mangle::Reversed, Mangle::Shifted, Mangle::Shortened] {
        let base = mangling_server(mangle).await;
        let mut opts = jobsync::api::ClientOptions::new(
            base.parse().unwrap(),
            jobsync::api::TokenSource::Static(jobsync::secret::Secret::new("t")),
        );
        opts.max_attempts = 1;
        let client = jobsync::api::ApiClient::new(opts).unwrap();
        let tag = format!("{mangle:?}");
        insert(
            &t.db,
            &[
                create(28, &format!("{tag}-A"), json!({"name": "A"})),
                create(28, &format!("{tag}-B"), json!({"name": "B"})),
                create(28, &format!("{tag}-C"), json!({"name": "C"})),
            ],
        );
        push(&t.db, &client).await;
        for row in all_rows(&t.db) {
            assert_eq!(
                row.result_job_id, None,
                "{mangle:?}: never linked by position: {row:?}"
            );
            assert!(
                row.status == "in_flight" && row.in_doubt,
                "{mangle:?}: {row:?}"
            );
        }
        let mut c = t.db.conn().unwrap();
        assert!(
            jobs::all(&mut c).unwrap().is_empty(),
            "{mangle:?}: no phantom job in the mirror"
        );
    }
}

async fn a_payload_that_is_not_utf8_fails_alone(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);
    insert(&t.db, &[create(28, "before", json!({"name": "Before"}))]);
    {
        use diesel::RunQueryDsl;
        let mut c = t.db.conn().unwrap();
        let jobsync::db::Conn::Sqlite(c) = &mut c else {
            unreachable!()
        };
        // `{"name":"\x80\xff"}`: bytes a CRM can store in SQLite's TEXT, and no text at all.
        diesel::sql_query(
            "INSERT INTO outbox (op, campaign, reference, payload) \
             VALUES ('create', 28, 'broken', CAST(X'7B226E616D65223A2280FF227D' AS TEXT))",
        )
        .execute(&mut **c)
        .unwrap();
    }
    insert(&t.db, &[create(28, "after", json!({"name": "After"}))]);
    drop(client);
    // A whole cycle, as an operator runs it: its summary and its `sync_runs` row count the
    // broken row among the failed, where `status`, the metrics and alerts read them.
    let out = Command::new(env!("CARGO_BIN_EXE_jobsync"))
        .args(["--once", "--database-url", &t.url])
        .env("JOBSYNC_API__TOKEN", "dev-token")
        .env("JOBSYNC_API__BASE_URL", sim.base_url())
        .env("JOBSYNC_SERVER__LISTEN", "")
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{summary}");
    let run = &jobsync::db::repo::runs::recent(&mut t.db.conn().unwrap(), 1).unwrap()[0];
    assert_eq!(
        (run.pushed_ok, run.pushed_failed),
        (2, 1),
        "the run counts the broken row as failed: {run:?}"
    );
    assert!(summary.contains("pushed 2 ok, 1 failed"), "{summary}");
    let rows = all_rows(&t.db);
    let broken = rows
        .iter()
        .find(|r| r.reference.as_deref() == Some("broken"))
        .unwrap();
    assert_eq!(broken.status, "failed");
    let reason = broken.last_error.as_deref().unwrap();
    assert!(
        reason.contains("not valid UTF-8") && reason.contains("offset 9"),
        "{reason}"
    );
    let upstream = sim_by_ref(&sim).await;
    assert_eq!(upstream.len(), 2, "the broken row was never sent");
    assert!(
        rows.iter()
            .filter(|r| r.id != broken.id)
            .all(|r| r.status == "done")
    );
    // `outbox list` shows it, with its reason.
    let out = Command::new(env!("CARGO_BIN_EXE_jobsync"))
        .args([
            "outbox",
            "list",
            "--status",
            "failed",
            "--database-url",
            &t.url,
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("not valid UTF-8"), "{listed}");
}

async fn a_create_of_a_reference_deleted_upstream_is_created_again(t: &TestDb) {
    let sim = start_sim(SimConfig {
        jobs_per_campaign: 3,
        ..SimConfig::default()
    })
    .await;
    let client = client(&sim);
    pull(&t.db, &client).await;
    let gone = sim_jobs(&sim).await[0].clone();
    let reference = gone.reference.clone().unwrap();
    // Deleted upstream since the last full listing: the mirror still holds it.
    let deleted = reqwest::Client::new()
        .delete(format!("{}/_sim/jobs/{}", sim.base_url(), gone.id))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    insert(
        &t.db,
        &[create(gone.campaign, &reference, json!({"name": "Back"}))],
    );
    push(&t.db, &client).await;
    let upstream = sim_by_ref(&sim).await;
    let Some(copies) = upstream.get(&(gone.campaign, reference.clone())) else {
        panic!("not created: {:?}", all_rows(&t.db));
    };
    assert_eq!(copies.len(), 1, "the job exists upstream again, once");
    assert_ne!(copies[0].id, gone.id);
    let row = &all_rows(&t.db)[0];
    assert_eq!(
        (row.status.as_str(), row.result_job_id),
        ("done", Some(copies[0].id))
    );
    let mut c = t.db.conn().unwrap();
    let old = jobs::get(&mut c, gone.id).unwrap().unwrap();
    assert!(
        old.remote_deleted_at.is_some(),
        "the mirror learnt the old job is gone"
    );
}

async fn a_lookup_that_keeps_failing_ends_the_row_failed(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let mut opts = options(&sim, "dev-token");
    opts.max_attempts = 1;
    let client = jobsync::api::ApiClient::new(opts).unwrap();
    insert(&t.db, &[create(28, "doubt", json!({"name": "D"}))]);
    // Left in doubt by a crash a while ago: due for its lookup.
    let id = all_rows(&t.db)[0].id;
    let sent = Ts::from(Utc::now() - chrono::Duration::minutes(1));
    let sending = [outbox::Sending {
        survivor: id,
        merged: vec![],
        create: Some(outbox::CreateSend { sent_payload: None }),
    }];
    outbox::mark_sent(&mut t.db.conn().unwrap(), &sending, sent, sent, sent).unwrap();
    set_faults(&sim, json!({"fail_rate": 1.0})).await;
    let config = PushConfig {
        max_row_attempts: 3,
        ..PushConfig::default()
    };
    for cycle in 1..=3 {
        let stop = StopFlag::new();
        push_alone(&t.db, &client, &config, quick_tuning(), &stop)
            .await
            .unwrap();
        let row = &all_rows(&t.db)[0];
        let expected = if cycle < 3 { "in_flight" } else { "failed" };
        assert_eq!(row.status, expected, "cycle {cycle}: {row:?}");
        assert_eq!(row.attempts, cycle);
    }
    let row = &all_rows(&t.db)[0];
    let reason = row.last_error.as_deref().unwrap();
    assert!(
        reason.contains("lookup") && reason.contains("outbox retry"),
        "{reason}"
    );
    assert!(
        row.in_doubt,
        "a re-queue looks it up again before any re-send"
    );
    let log = requests(&sim.base_url()).await;
    assert!(
        matching(&log, "POST", "/j/jobs/bulk/create").is_empty(),
        "never re-sent blindly"
    );
}

async fn ambiguous_targets_fail_alone_and_touch_nothing(t: &TestDb) {
    let sim = start_sim(SimConfig {
        jobs_per_campaign: 2,
        allow_duplicate_references: true,
        ..SimConfig::default()
    })
    .await;
    let client = client(&sim);
    let seeded = sim_jobs(&sim).await;
    let (five, six) = (&seeded[0], &seeded[1]);
    // Two live jobs sharing one reference.
    for name in ["Twin 1", "Twin 2"] {
        let outcome = client
            .bulk_create(vec![fields(
                json!({"campaign": 28, "reference": "twin", "name": name}),
            )])
            .await;
        assert!(
            matches!(outcome[0], jobsync::api::ItemOutcome::Ok { .. }),
            "{outcome:?}"
        );
    }
    pull(&t.db, &client).await;
    let before = sim_jobs(&sim).await;
    insert(
        &t.db,
        &[
            row(
                "patch",
                Some(five.campaign),
                five.reference.as_deref(),
                Some(six.id),
                json!({"name": "Renamed"}),
            ),
            patch_ref(28, "twin", json!({"name": "Which one?"})),
            create(28, "twin", json!({"name": "Twin 3"})),
        ],
    );
    let stats = push(&t.db, &client).await;
    assert_eq!(stats.failed, 3);
    let rows = all_rows(&t.db);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("contradicts"),
        "{:?}",
        rows[0]
    );
    assert!(
        rows[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("2 live jobs"),
        "{:?}",
        rows[1]
    );
    assert!(
        rows[2]
            .last_error
            .as_deref()
            .unwrap()
            .contains("2 live jobs"),
        "{:?}",
        rows[2]
    );
    assert_eq!(
        sim_jobs(&sim).await,
        before,
        "nobody renamed, nothing created"
    );
}

async fn a_stop_in_a_long_push_exits_promptly(t: &TestDb) {
    const ROWS: usize = 200_000;
    let sim = start_sim(SimConfig::default()).await;
    let rows: Vec<_> = (0..ROWS)
        .map(|n| {
            create(
                28 + (n % 2) as i64,
                &format!("s-{n}"),
                json!({"name": format!("S {n}")}),
            )
        })
        .collect();
    for part in rows.chunks(20_000) {
        insert(&t.db, part);
    }
    set_faults(&sim, json!({"latency_ms": 5000})).await;
    let logs = tempfile::tempdir().unwrap();
    let spawn = |name: &str| {
        let log = std::fs::File::create(logs.path().join(name)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_jobsync"))
            .args(["--once", "--database-url", &t.url])
            .env("JOBSYNC_API__TOKEN", "dev-token")
            .env("JOBSYNC_API__BASE_URL", sim.base_url())
            .env("JOBSYNC_API__TIMEOUT_SECS", "30")
            .env("JOBSYNC_API__REQUESTS_PER_SECOND", "1000")
            .env("JOBSYNC_SERVER__LISTEN", "")
            .env("JOBSYNC_LOG__FORMAT", "json")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    };
    let mut child = spawn("stopped.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_status(&all_rows_in_flight(t), "in_flight") == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the stop"
        );
        assert!(Instant::now() < deadline, "the push never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_at = Instant::now();
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = stopped_at.elapsed();
    let log = std::fs::read_to_string(logs.path().join("stopped.log")).unwrap();
    assert_eq!(status.code(), Some(0), "a deliberate stop exits 0:\n{log}");
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
    let run = &jobsync::db::repo::runs::recent(&mut t.db.conn().unwrap(), 1).unwrap()[0];
    assert_eq!(run.status, "failed");
    assert!(
        run.error.as_deref().unwrap().contains("shutdown signal"),
        "{run:?}"
    );
    let done = count_status(&all_rows(&t.db), "done") as i64;
    assert_eq!(run.pushed_ok, done, "the run records what it pushed");
    eprintln!("stopped {took:?} after SIGTERM with {done} rows done");
    // The chunks still waiting for a request slot never left: their creates are back as never
    // sent (no `first_sent_at`), so an unqueue can still cancel them.
    let marked_never_sent = all_rows(&t.db)
        .iter()
        .filter(|r| r.status == "pending" && r.first_sent_at.is_some())
        .count();
    assert_eq!(marked_never_sent, 0, "pending creates that count as sent");

    // Afterwards, cycles converge with no duplicate.
    clear_faults(&sim).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    for n in 1.. {
        let status = spawn(&format!("run-{n}.log")).wait().unwrap();
        assert!(status.success());
        let open = all_rows(&t.db)
            .iter()
            .filter(|r| r.status.is_open())
            .count();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} rows open after {n} runs");
    }
    let upstream = sim_by_ref(&sim).await;
    assert_eq!(upstream.len(), ROWS);
    assert!(
        upstream.values().all(|jobs| jobs.len() == 1),
        "no duplicate"
    );
}

/// The outbox rows, read through the same repository the push uses.
fn all_rows_in_flight(t: &TestDb) -> Vec<jobsync::db::models::OutboxRow> {
    let mut c = t.db.conn().unwrap();
    outbox::list(
        &mut c,
        Some(jobsync::db::models::OutboxStatus::InFlight),
        10,
    )
    .unwrap()
}

/// Rows of one target spread over many windows (of 7 rows) end as with one window: per-target
/// order holds across windows, and short chunks wait for the next window's rows instead of
/// costing calls.
async fn tiny_windows_keep_each_targets_order_and_the_minimum_calls(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let mut opts = options(&sim, "dev-token");
    // Two calls in flight and small chunks: the planner waits for room while earlier
    // creates are answered, so the mirror learns their jobs in the middle of the pass.
    opts.bulk_size = 2;
    opts.concurrency = 1;
    let client = jobsync::api::ApiClient::new(opts).unwrap();
    let mut rows = Vec::new();
    for n in 0..40 {
        rows.push(create(
            28,
            &format!("w-{n}"),
            json!({"name": format!("W {n}")}),
        ));
    }
    for n in (0..40).step_by(3) {
        rows.push(patch_ref(28, &format!("w-{n}"), json!({"city": "Lyon"})));
        rows.push(patch_ref(
            28,
            &format!("w-{n}"),
            json!({"city": "Nice", "label": "late"}),
        ));
    }
    insert(&t.db, &rows);
    // Slow answers: later windows are planned while earlier windows' creates are in flight,
    // and the mirror learns their jobs mid-pass (the same target then has two names).
    set_faults(&sim, json!({"latency_ms": 10})).await;
    let tuning = push::PushTuning {
        window_rows: Some(7),
        ..quick_tuning()
    };
    let stats = push_with(&t.db, &client, tuning).await;
    assert_eq!(stats.ok + stats.superseded, rows.len() as i64, "{stats:?}");
    assert!(
        all_rows(&t.db)
            .iter()
            .all(|r| r.status == "done" || r.status == "superseded")
    );
    let upstream = sim_by_ref(&sim).await;
    for n in 0..40 {
        let jobs = &upstream[&(28, format!("w-{n}"))];
        assert_eq!(jobs.len(), 1);
        let city = if n % 3 == 0 { Some("Nice") } else { None };
        assert_eq!(jobs[0].city.as_deref(), city, "w-{n}: the later patch wins");
    }
    // 40 creates in 20 calls of 2: short chunks wait for the next window's rows.
    assert_eq!(bulk_calls(&sim, "create").await, 20);
    assert_mirror_equals_sim(&t.db, &sim).await;
}
