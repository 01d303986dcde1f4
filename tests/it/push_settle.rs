//! Every row is settleable (contract §8): no outbox row stays `in_flight` for good, whatever its
//! payload and wherever a process died. Each test starts from the state that used to stay open
//! for ever and counts what the CRM would see: rows still open, jobs upstream.

use crate::common::*;
use chrono::Utc;
use diesel::prelude::*;
use jobsync::config::PushConfig;
use jobsync::db::Ts;
use jobsync::db::repo::outbox;
use jobsync::db::schema::outbox as outbox_table;
use jobsync::shutdown::StopFlag;
use jobsync::sim::SimConfig;
use jobsync::sync::push;
use serde_json::json;
use std::time::{Duration, Instant};

on_both_backends!(
    a_create_whose_reference_a_patch_removes_settles_after_its_answer_is_lost,
    a_linked_create_left_in_flight_by_a_dead_process_is_sent_again,
    a_blocked_backlog_larger_than_a_pass_once_held_is_sent_once_and_the_push_ends,
    a_create_whose_commit_outlasts_the_lookup_delay_is_not_sent_twice,
    creates_in_doubt_are_settled_by_one_listing_per_campaign_not_one_per_window,
    lookups_and_chunk_commits_at_once_never_deadlock,
);

/// A create and a patch that removes its reference, the create's answer lost after the API
/// applied it. Merged, the create went out without a reference, and the lookup (by reference)
/// skipped it for ever; now the patch waits for its create, which is looked up by the reference
/// it was sent with.
async fn a_create_whose_reference_a_patch_removes_settles_after_its_answer_is_lost(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let client = impatient_client(&sim, Duration::from_secs(1), 100);
    insert(
        &t.db,
        &[
            create(
                28,
                "nr-1",
                json!({"name": "Null ref", "numbers": ["+33612345678"]}),
            ),
            patch_ref(28, "nr-1", json!({"reference": null})),
        ],
    );
    set_faults(&sim, json!({"applied_drop_rate": 1.0})).await;
    push(&t.db, &client).await;
    clear_faults(&sim).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_rows(&t.db) > 0 {
        assert!(
            Instant::now() < deadline,
            "rows still open 30 s after the answer was lost: {:?}",
            all_rows(&t.db)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        push(&t.db, &client).await;
    }
    let named: Vec<_> = sim_jobs(&sim)
        .await
        .into_iter()
        .filter(|j| j.name.as_deref() == Some("Null ref"))
        .collect();
    assert_eq!(named.len(), 1, "one job upstream: {named:?}");
    assert_eq!(
        named[0].reference,
        None,
        "the CRM's last change holds: {:?}",
        all_rows(&t.db)
    );
}

/// A create that a lookup found applied but lacking fields is linked to its job and its missing
/// fields sent as a patch; a process killed while that patch was in flight left the row
/// `in_flight`, not in doubt, which no cycle looked up or sent again.
async fn a_linked_create_left_in_flight_by_a_dead_process_is_sent_again(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);
    let job = fields(json!({
        "campaign": 28, "reference": "lk-1", "name": "Old", "numbers": ["+33612345678"]
    }));
    let job_id = sim.insert_jobs(vec![job]).unwrap()[0].id;
    pull(&t.db, &client).await;
    insert(
        &t.db,
        &[create(
            28,
            "lk-1",
            json!({"name": "New", "numbers": ["+33612345678"]}),
        )],
    );
    // As a dead process left it: linked to its job, its patch in flight, long past its wait.
    let long_ago = Ts::from(Utc::now() - chrono::Duration::minutes(10));
    let mut c = t.db.conn().unwrap();
    jobsync::with_conn!(&mut c, |c| diesel::update(outbox_table::table)
        .set((
            outbox_table::status.eq(jobsync::db::models::OutboxStatus::InFlight),
            outbox_table::in_doubt.eq(false),
            outbox_table::result_job_id.eq(Some(job_id)),
            outbox_table::first_sent_at.eq(Some(long_ago)),
            outbox_table::next_attempt_at.eq(long_ago),
            outbox_table::attempts.eq(1),
        ))
        .execute(c)
        .unwrap());
    drop(c);
    push(&t.db, &client).await;
    let rows = all_rows(&t.db);
    assert_eq!(
        (rows[0].status.as_str(), rows[0].result_job_id),
        ("done", Some(job_id)),
        "{rows:?}"
    );
    let upstream = sim_by_ref(&sim).await;
    let copies = &upstream[&(28, "lk-1".to_string())];
    assert_eq!(copies.len(), 1, "never created twice: {copies:?}");
    assert_eq!(
        copies[0].name.as_deref(),
        Some("New"),
        "the create's fields"
    );
}

/// Rows a pass used to hold before it ended early and began again at the first open row.
const OLD_PASS_LIMIT: usize = 200_000;

/// A backlog of creates every one of which the API applies and answers 502 (a gateway): each is
/// in doubt and blocked for the rest of the run. Passes used to end after 200,000 targets and
/// begin again at the first open row, so the blocked ones were re-read up to a thousand times,
/// at full CPU, while the rows behind them were never sent. One push now sends every row once,
/// then ends.
async fn a_blocked_backlog_larger_than_a_pass_once_held_is_sent_once_and_the_push_ends(t: &TestDb) {
    let rows_n = OLD_PASS_LIMIT + 25_000;
    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);
    let rows: Vec<_> = (0..rows_n)
        .map(|n| {
            create(
                28,
                &format!("b-{n}"),
                json!({"name": "B", "numbers": ["+33612345678"]}),
            )
        })
        .collect();
    insert(&t.db, &rows);
    drop(rows);
    set_faults(&sim, json!({"applied_fail_rate": 1.0})).await;
    let pushed = tokio::time::timeout(Duration::from_secs(300), push(&t.db, &client)).await;
    let calls = bulk_calls(&sim, "create").await;
    assert!(
        pushed.is_ok(),
        "the push did not end within 300 s ({calls} bulk calls made)"
    );
    let upstream = sim_jobs(&sim).await.len();
    assert_eq!(upstream, rows_n, "every create reached the API, once");
    let rows = all_rows(&t.db);
    let in_doubt = rows.iter().filter(|r| r.in_doubt).count();
    assert_eq!(
        in_doubt, rows_n,
        "every create is in doubt, to be looked up"
    );
    let log = requests(&sim.base_url()).await;
    let sent: Vec<&str> = matching(&log, "POST", "/j/jobs/bulk/create")
        .iter()
        .flat_map(|r| r["references"].as_array().unwrap().iter())
        .map(|r| r.as_str().unwrap())
        .collect();
    let distinct: std::collections::HashSet<&str> = sent.iter().copied().collect();
    assert_eq!(
        (sent.len(), distinct.len()),
        (rows_n, rows_n),
        "every create sent once, no more"
    );
}

/// Creates that the API commits 30 s after they arrive, long after the client gave up and after
/// the first lookup found nothing, against an API without a uniqueness check: a re-send on that
/// first lookup made every reference twice. Absence is established only by a lookup
/// `push.settle_secs` after the first send, which finds the slow commit.
async fn a_create_whose_commit_outlasts_the_lookup_delay_is_not_sent_twice(t: &TestDb) {
    let sim = start_sim(SimConfig {
        allow_duplicate_references: true,
        ..SimConfig::default()
    })
    .await;
    let client = impatient_client(&sim, Duration::from_secs(1), 100);
    set_faults(
        &sim,
        json!({"late_apply_rate": 1.0, "late_apply_ms": 30_000}),
    )
    .await;
    let rows: Vec<_> = (0..20)
        .map(|n| {
            create(
                28,
                &format!("slow-{n}"),
                json!({"name": "Slow", "numbers": ["+33612345678"]}),
            )
        })
        .collect();
    insert(&t.db, &rows);
    let config = PushConfig {
        settle_secs: 40,
        ..PushConfig::default()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        push_alone(&t.db, &client, &config, quick_tuning(), &StopFlag::new())
            .await
            .expect("push runs");
        if open_rows(&t.db) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows still open after 90 s: {:?}",
            all_rows(&t.db)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let upstream = sim_by_ref(&sim).await;
    let twice: Vec<_> = upstream.iter().filter(|(_, jobs)| jobs.len() > 1).collect();
    assert!(twice.is_empty(), "created twice upstream: {twice:?}");
    assert_eq!(upstream.len(), 20, "every reference created");
}

/// 6,000 creates the API applied and answered 502, in windows of 1,000 rows: looked up window by
/// window, each window listed the campaign again from the first send — six listings of every job
/// created since (quadratic in a mass in doubt). Now the first listing's jobs go into the mirror
/// and settle the later windows: one listing of the campaign per push.
async fn creates_in_doubt_are_settled_by_one_listing_per_campaign_not_one_per_window(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let client = impatient_client(&sim, Duration::from_secs(1), 100);
    let rows: Vec<_> = (0..6_000)
        .map(|n| {
            create(
                28,
                &format!("d-{n}"),
                json!({"name": "D", "numbers": ["+33612345678"]}),
            )
        })
        .collect();
    insert(&t.db, &rows);
    let tuning = push::PushTuning {
        window_rows: Some(1_000),
        ..quick_tuning()
    };
    set_faults(&sim, json!({"applied_fail_rate": 1.0})).await;
    push_with(&t.db, &client, tuning).await;
    clear_faults(&sim).await;
    assert_eq!(open_rows(&t.db), 6_000, "every create in doubt");
    // Their lookups are due (as they are a request timeout and a margin after the send).
    let due = Ts::from(Utc::now() - chrono::Duration::seconds(1));
    let mut c = t.db.conn().unwrap();
    jobsync::with_conn!(&mut c, |c| diesel::update(outbox_table::table)
        .set(outbox_table::next_attempt_at.eq(due))
        .execute(c)
        .unwrap());
    drop(c);
    reset_log(&sim).await;
    push_with(&t.db, &client, tuning).await;
    assert_eq!(open_rows(&t.db), 0, "every create settled by its lookup");
    let log = requests(&sim.base_url()).await;
    let listings = matching(&log, "GET", "/j/jobs").len();
    assert_eq!(
        listings, 1,
        "one listing of the campaign for the whole push"
    );
    assert_eq!(
        bulk_calls(&sim, "create").await,
        0,
        "nothing sent again: every create was applied"
    );
}

/// 20,000 creates, every other one left in doubt by an earlier process (applied upstream) and due
/// for its lookup, the rest pending: lookups and chunk commits run at once. Lookups took the
/// run's row lock before the changefeed's, chunk commits the other way round, and on PostgreSQL
/// one cycle in three failed "deadlock detected". Every push transaction now takes them in one
/// order: three pushes, no error, every row done.
async fn lookups_and_chunk_commits_at_once_never_deadlock(t: &TestDb) {
    use jobsync::db::models::NewOutboxRow;
    let sim = start_sim(SimConfig::default()).await;
    let client = impatient_client(&sim, Duration::from_secs(5), 100);
    let rows: Vec<NewOutboxRow> = (0..20_000)
        .map(|n| {
            create(
                28,
                &format!("dl-{n}"),
                json!({"name": "DL", "numbers": ["+33612345678"]}),
            )
        })
        .collect();
    insert(&t.db, &rows);
    // The odd ones were applied upstream by a process that died with them in flight.
    let applied: Vec<_> = (1..20_000)
        .step_by(2)
        .map(|n| {
            fields(
                json!({"campaign": 28, "reference": format!("dl-{n}"), "name": "DL",
            "numbers": ["+33612345678"]}),
            )
        })
        .collect();
    sim.insert_jobs(applied).unwrap();
    let odd: Vec<outbox::Sending> = all_rows(&t.db)
        .iter()
        .filter(|r| {
            r.reference.as_deref().is_some_and(|r| {
                r.trim_start_matches("dl-")
                    .parse::<u32>()
                    .is_ok_and(|n| n % 2 == 1)
            })
        })
        .map(|r| outbox::Sending {
            survivor: r.id,
            merged: vec![],
            create: Some(outbox::CreateSend { sent_payload: None }),
        })
        .collect();
    let long_ago = Ts::from(Utc::now() - chrono::Duration::minutes(10));
    outbox::mark_sent(
        &mut t.db.conn().unwrap(),
        &odd,
        long_ago,
        long_ago,
        long_ago,
    )
    .unwrap();
    let config = PushConfig {
        window_rows: 1_000,
        ..PushConfig::default()
    };
    for cycle in 1..=3 {
        let pushed = push_alone(&t.db, &client, &config, quick_tuning(), &StopFlag::new()).await;
        if let Err(e) = &pushed {
            panic!("push {cycle} failed: {e}");
        }
        if open_rows(&t.db) == 0 {
            break;
        }
    }
    assert_eq!(count_status(&all_rows(&t.db), "done"), 20_000);
    let upstream = sim_by_ref(&sim).await;
    assert!(
        upstream.values().all(|jobs| jobs.len() == 1),
        "no reference twice"
    );
    assert_eq!(upstream.len(), 20_000);
}
