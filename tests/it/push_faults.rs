//! No duplicates, nothing lost: pushes under injected faults (5xx, 429, dropped connections,
//! requests applied and then dropped), creates left in flight by a crash, and duplicate-reference
//! refusals all converge to each reference existing exactly once upstream.

use crate::common::*;
use chrono::Utc;
use jobsync::api::ApiClient;
use jobsync::db::Ts;
use jobsync::db::repo::outbox;
use jobsync::sim::SimConfig;
use serde_json::json;
use std::time::{Duration, Instant};

on_both_backends!(
    repeated_pushes_under_faults_converge_without_duplicates_or_losses,
    a_create_applied_before_a_crash_is_linked_not_sent_again,
    a_create_in_flight_that_never_left_is_sent_after_a_lookup,
    a_duplicate_reference_refusal_of_a_first_send_fails_the_row,
    a_refused_token_stops_the_push_and_leaves_rows_untouched,
    a_stop_request_is_honoured_before_the_next_round,
);

async fn repeated_pushes_under_faults_converge_without_duplicates_or_losses(t: &TestDb) {
    let sim = start_sim(SimConfig {
        jobs_per_campaign: 50,
        ..SimConfig::default()
    })
    .await;
    let client = impatient_client(&sim, Duration::from_secs(5), 10);
    pull(&t.db, &client).await;
    let seeded = sim_jobs(&sim).await;
    let mut rows = Vec::new();
    for n in 0..300 {
        rows.push(create(
            28,
            &format!("f-{n}"),
            json!({"name": format!("F {n}")}),
        ));
        if n % 3 == 0 {
            rows.push(patch_ref(28, &format!("f-{n}"), json!({"city": "Lyon"})));
        }
    }
    for job in &seeded[..40] {
        rows.push(patch_id(job.id, json!({"label": "faulty"})));
    }
    for job in &seeded[40..60] {
        rows.push(unqueue_id(job.id));
    }
    // A few rows in batches of their own, so that faults hit several calls.
    let total = rows.len();
    for part in rows.chunks(97) {
        insert(&t.db, part);
    }
    set_faults(
        &sim,
        json!({"fail_rate": 0.15, "throttle_rate": 0.1, "retry_after_secs": 0,
               "drop_rate": 0.1, "applied_drop_rate": 0.25}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut runs = 0;
    loop {
        push(&t.db, &client).await;
        runs += 1;
        let open = open_rows(&t.db);
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} rows still open after {runs} runs"
        );
    }
    clear_faults(&sim).await;
    let log = requests(&sim.base_url()).await;
    let applied_drops = log.iter().filter(|r| r["fault"] == "applied_drop").count();
    assert!(applied_drops > 0, "the faults really happened");

    let stored = all_rows(&t.db);
    assert_eq!(stored.len(), total, "no row lost");
    for row in &stored {
        match row.status.as_str() {
            "done" | "superseded" => {}
            "failed" => assert!(row.last_error.is_some(), "{row:?}"),
            other => panic!("row {} left {other}", row.id),
        }
    }
    let upstream = sim_by_ref(&sim).await;
    for n in 0..300 {
        let key = (28, format!("f-{n}"));
        let row = stored
            .iter()
            .find(|r| r.op == "create" && r.reference.as_ref() == Some(&key.1))
            .unwrap();
        let copies = upstream.get(&key).map_or(0, Vec::len);
        if row.status == "failed" {
            assert!(copies <= 1, "{key:?} exists {copies} times");
        } else {
            assert_eq!(copies, 1, "{key:?} must exist exactly once: {row:?}");
            assert_eq!(row.result_job_id, Some(upstream[&key][0].id));
        }
    }
    eprintln!("converged after {runs} push runs, {applied_drops} applied-then-dropped requests");
}

/// Marks creates as a killed process would leave them: in flight and in doubt, first sent `ago`,
/// due for their lookup.
fn leave_in_flight(t: &TestDb, ids: &[i64], ago: chrono::Duration) {
    let mut c = t.db.conn().unwrap();
    let sent = Ts::from(Utc::now() - ago);
    let sending: Vec<outbox::Sending> = ids
        .iter()
        .map(|&id| outbox::Sending {
            survivor: id,
            merged: vec![],
            create: Some(outbox::CreateSend { sent_payload: None }),
        })
        .collect();
    outbox::mark_sent(&mut c, &sending, sent, sent, sent).unwrap();
}

async fn a_create_applied_before_a_crash_is_linked_not_sent_again(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);
    insert(
        &t.db,
        &[
            create(
                28,
                "c-1",
                json!({"name": "One", "numbers": ["+33612345678"]}),
            ),
            create(28, "c-2", json!({"name": "Two"})),
        ],
    );
    let ids: Vec<i64> = all_rows(&t.db).iter().map(|r| r.id).collect();
    leave_in_flight(t, &ids, chrono::Duration::seconds(5));
    // The API applied both before the process died; the mirror never heard of them.
    let applied = client
        .bulk_create(vec![
            fields(json!({"campaign": 28, "reference": "c-1", "name": "One", "numbers": ["+33612345678"]})),
            fields(json!({"campaign": 28, "reference": "c-2", "name": "Two"})),
        ])
        .await;
    assert!(
        applied
            .iter()
            .all(|o| matches!(o, jobsync::api::ItemOutcome::Ok { .. }))
    );
    let stats = push(&t.db, &client).await;
    assert_eq!(stats.ok, 2);
    assert_eq!(
        bulk_calls(&sim, "create").await,
        1,
        "only the pre-crash call"
    );
    assert_eq!(bulk_calls(&sim, "patch").await, 0, "nothing differs");
    let log = requests(&sim.base_url()).await;
    let lookups: Vec<_> = matching(&log, "GET", "/j/jobs");
    assert_eq!(lookups.len(), 1);
    let query = lookups[0]["query"].as_str().unwrap();
    assert!(
        query.contains("campaign=28") && query.contains("modified_since="),
        "{query}"
    );
    let upstream = sim_by_ref(&sim).await;
    for (row, reference) in all_rows(&t.db).iter().zip(["c-1", "c-2"]) {
        let jobs = &upstream[&(28, reference.to_string())];
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (row.status.as_str(), row.result_job_id),
            ("done", Some(jobs[0].id))
        );
    }
    assert_mirror_equals_sim(&t.db, &sim).await;
}

async fn a_create_in_flight_that_never_left_is_sent_after_a_lookup(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);
    insert(&t.db, &[create(28, "lost", json!({"name": "Lost"}))]);
    let ids: Vec<i64> = all_rows(&t.db).iter().map(|r| r.id).collect();
    // Long enough ago (`push.settle_secs`, 300 s by default) for a lookup that does not find
    // it to establish that it was never applied.
    leave_in_flight(t, &ids, chrono::Duration::minutes(10));
    let stats = push(&t.db, &client).await;
    assert_eq!(stats.ok, 1);
    let log = requests(&sim.base_url()).await;
    let order: Vec<&str> = log.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        order,
        ["/j/jobs", "/j/jobs/bulk/create"],
        "looked up, then sent"
    );
    assert_eq!(sim_by_ref(&sim).await[&(28, "lost".to_string())].len(), 1);
}

async fn a_duplicate_reference_refusal_of_a_first_send_fails_the_row(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);
    // Created behind jobsync's back (the mirror does not know it): the create is refused,
    // and since this row was never sent before, the refusal is the API's answer to it.
    let outcome = client
        .bulk_create(vec![fields(
            json!({"campaign": 28, "reference": "dup", "name": "Old"}),
        )])
        .await;
    let jobsync::api::ItemOutcome::Ok { job, .. } = &outcome[0] else {
        panic!("{outcome:?}")
    };
    insert(&t.db, &[create(28, "dup", json!({"name": "New"}))]);
    let stats = push(&t.db, &client).await;
    assert_eq!((stats.ok, stats.failed), (0, 1));
    let row = &all_rows(&t.db)[0];
    assert_eq!(
        (row.status.as_str(), row.http_status),
        ("failed", Some(400))
    );
    assert!(
        row.last_error.as_deref().unwrap().contains("bulk/create"),
        "{row:?}"
    );
    let upstream = sim_by_ref(&sim).await;
    let jobs = &upstream[&(28, "dup".to_string())];
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].id, jobs[0].name.as_deref()), (job.id, Some("Old")));
}

async fn a_refused_token_stops_the_push_and_leaves_rows_untouched(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    let refused = ApiClient::new(options(&sim, "wrong-token")).unwrap();
    insert(&t.db, &[create(28, "t-1", json!({"name": "T"}))]);
    let err = push_alone(
        &t.db,
        &refused,
        &jobsync::config::PushConfig::default(),
        jobsync::sync::push::PushTuning::default(),
        &jobsync::shutdown::StopFlag::new(),
    )
    .await
    .unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert_eq!(requests(&sim.base_url()).await.len(), 1, "no retry loop");
    let row = &all_rows(&t.db)[0];
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 0));
    assert_eq!(push(&t.db, &client(&sim)).await.ok, 1);
}

async fn a_stop_request_is_honoured_before_the_next_round(t: &TestDb) {
    let sim = start_sim(SimConfig::default()).await;
    insert(&t.db, &[create(28, "s-1", json!({"name": "S"}))]);
    let stop = jobsync::shutdown::StopFlag::new();
    stop.stop();
    let config = jobsync::config::PushConfig::default();
    let err = push_alone(
        &t.db,
        &client(&sim),
        &config,
        jobsync::sync::push::PushTuning::default(),
        &stop,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, jobsync::sync::SyncError::Stopped), "{err}");
    assert!(requests(&sim.base_url()).await.is_empty());
    assert_eq!(all_rows(&t.db)[0].status, "pending");
}
