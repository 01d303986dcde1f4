//! The push against the real simulator, on SQLite and PostgreSQL: bulk calls at their minimum,
//! the final state upstream and in the mirror, every coalescing case of SPEC §4 on its own, and
//! item-level failures that stay item-level.

use crate::common::*;
use jobsync::sim::SimConfig;
use serde_json::json;

on_both_backends!(
    creates_patches_and_unqueues_reach_the_api_in_the_fewest_bulk_calls,
    create_then_patches_become_one_create,
    patches_of_one_job_become_one_patch,
    unqueues_of_one_job_become_one_unqueue,
    an_unsent_create_then_an_unqueue_sends_nothing,
    rows_behind_a_prefix_wait_for_the_next_round_in_order,
    a_create_of_a_job_the_mirror_knows_becomes_a_patch_of_what_differs,
    a_bad_item_fails_alone_and_its_batch_mates_succeed,
    invalid_rows_fail_with_their_reason_and_block_nothing,
    a_payload_with_a_nul_character_fails_alone_before_it_is_sent,
);

fn seeded(n: usize) -> SimConfig {
    SimConfig {
        jobs_per_campaign: n,
        ..SimConfig::default()
    }
}

async fn creates_patches_and_unqueues_reach_the_api_in_the_fewest_bulk_calls(t: &TestDb) {
    let sim = start_sim(seeded(1000)).await;
    let client = client(&sim);
    pull(&t.db, &client).await;
    let seeded = sim_jobs(&sim).await;
    let (to_patch, rest) = seeded.split_at(1000);
    let to_unqueue = &rest[..500];
    let mut rows = Vec::new();
    for n in 0..2500 {
        let payload = json!({"name": format!("New {n}"), "numbers": ["+33612345678"],
                             "city": "Lyon", "value": n});
        rows.push(create(28 + n % 2, &format!("new-{n}"), payload));
    }
    for n in 0..500 {
        rows.push(patch_ref(
            28 + n % 2,
            &format!("new-{n}"),
            json!({"city": "Nice"}),
        ));
    }
    for job in to_patch {
        rows.push(patch_id(
            job.id,
            json!({"label": format!("patched {}", job.id)}),
        ));
    }
    for job in to_unqueue {
        let reference = job.reference.clone().unwrap();
        rows.push(unqueue_ref(job.campaign, &reference));
    }
    insert(&t.db, &rows);

    let stats = push(&t.db, &client).await;
    assert_eq!(
        (stats.ok, stats.failed, stats.superseded, stats.deferred),
        (4000, 0, 500, 0)
    );
    assert_eq!(
        bulk_calls(&sim, "create").await,
        3,
        "2,500 creates in 3 calls"
    );
    assert_eq!(bulk_calls(&sim, "patch").await, 1);
    assert_eq!(bulk_calls(&sim, "unqueue").await, 1);

    let stored = all_rows(&t.db);
    assert_eq!(count_status(&stored, "done"), 4000);
    assert_eq!(count_status(&stored, "superseded"), 500);
    assert!(
        stored.iter().all(|r| r.result_job_id.is_some()),
        "every row names its job"
    );
    let upstream = sim_by_ref(&sim).await;
    for n in 0..2500 {
        let jobs = &upstream[&(28 + n % 2, format!("new-{n}"))];
        assert_eq!(jobs.len(), 1);
        let city = if n < 500 { "Nice" } else { "Lyon" };
        assert_eq!(jobs[0].city.as_deref(), Some(city));
        assert_eq!(jobs[0].name, Some(format!("New {n}")));
    }
    let now: std::collections::HashMap<i64, _> = sim_jobs(&sim)
        .await
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    for job in to_patch {
        assert_eq!(now[&job.id].label, Some(format!("patched {}", job.id)));
    }
    for job in to_unqueue {
        let expected = if jobsync::job::state::is_finished(job.state) {
            job.state
        } else {
            3
        };
        assert_eq!(now[&job.id].state, expected);
    }
    assert_mirror_equals_sim(&t.db, &sim).await;
    // Nothing left: a second push sends nothing.
    let again = push(&t.db, &client).await;
    assert_eq!(again, Default::default());
    assert_eq!(bulk_calls(&sim, "create").await, 3);
}

async fn create_then_patches_become_one_create(t: &TestDb) {
    let sim = start_sim(seeded(0)).await;
    let client = client(&sim);
    insert(
        &t.db,
        &[
            create(28, "a", json!({"name": "A", "city": "Paris"})),
            patch_ref(28, "a", json!({"city": "Lyon"})),
            patch_ref(28, "a", json!({"label": "vip"})),
        ],
    );
    let stats = push(&t.db, &client).await;
    assert_eq!((stats.ok, stats.superseded), (1, 2));
    assert_eq!(bulk_calls(&sim, "create").await, 1);
    assert_eq!(bulk_calls(&sim, "patch").await, 0);
    let rows = all_rows(&t.db);
    assert_eq!(rows[0].status, "done");
    for merged in &rows[1..] {
        assert_eq!(merged.status, "superseded");
        let expected = format!("merged into outbox row {}", rows[0].id);
        assert_eq!(merged.last_error.as_deref(), Some(expected.as_str()));
    }
    let job = &sim_by_ref(&sim).await[&(28, "a".to_string())][0];
    assert_eq!(
        (job.city.as_deref(), job.label.as_deref()),
        (Some("Lyon"), Some("vip"))
    );
    assert_eq!(rows[0].result_job_id, Some(job.id));
    assert_mirror_equals_sim(&t.db, &sim).await;
}

async fn patches_of_one_job_become_one_patch(t: &TestDb) {
    let sim = start_sim(seeded(3)).await;
    let client = client(&sim);
    pull(&t.db, &client).await;
    let job = sim_jobs(&sim).await[0].clone();
    let reference = job.reference.clone().unwrap();
    insert(
        &t.db,
        &[
            patch_id(job.id, json!({"city": "Lyon", "name": "First"})),
            patch_ref(job.campaign, &reference, json!({"name": "Second"})),
            patch_id(job.id, json!({"postal_code": "69001"})),
        ],
    );
    let stats = push(&t.db, &client).await;
    assert_eq!((stats.ok, stats.superseded), (1, 2));
    assert_eq!(bulk_calls(&sim, "patch").await, 1);
    let now = sim_jobs(&sim)
        .await
        .into_iter()
        .find(|j| j.id == job.id)
        .unwrap();
    assert_eq!(now.name.as_deref(), Some("Second"));
    assert_eq!(now.city.as_deref(), Some("Lyon"));
    assert_eq!(now.postal_code.as_deref(), Some("69001"));
    let rows = all_rows(&t.db);
    assert_eq!(rows[0].status, "done");
    assert_eq!(rows[0].http_status, Some(200));
    assert!(rows[1..].iter().all(|r| r.status == "superseded"));
    assert_mirror_equals_sim(&t.db, &sim).await;
}

async fn unqueues_of_one_job_become_one_unqueue(t: &TestDb) {
    let sim = start_sim(seeded(20)).await;
    let client = client(&sim);
    pull(&t.db, &client).await;
    let job = sim_jobs(&sim)
        .await
        .into_iter()
        .find(|j| j.state == 0)
        .unwrap();
    insert(&t.db, &[unqueue_id(job.id), unqueue_id(job.id)]);
    let stats = push(&t.db, &client).await;
    assert_eq!((stats.ok, stats.superseded), (1, 1));
    assert_eq!(bulk_calls(&sim, "unqueue").await, 1);
    let now = sim_jobs(&sim)
        .await
        .into_iter()
        .find(|j| j.id == job.id)
        .unwrap();
    assert_eq!(now.state, 3);
    assert_mirror_equals_sim(&t.db, &sim).await;
}

async fn an_unsent_create_then_an_unqueue_sends_nothing(t: &TestDb) {
    let sim = start_sim(seeded(0)).await;
    let client = client(&sim);
    insert(
        &t.db,
        &[
            create(28, "gone", json!({"name": "Never"})),
            patch_ref(28, "gone", json!({"city": "Lyon"})),
            unqueue_ref(28, "gone"),
        ],
    );
    let stats = push(&t.db, &client).await;
    assert_eq!((stats.ok, stats.superseded, stats.failed), (0, 3, 0));
    assert!(requests(&sim.base_url()).await.is_empty(), "no call at all");
    let rows = all_rows(&t.db);
    assert!(rows.iter().all(|r| r.status == "superseded"));
    let create_reason = rows[0].last_error.clone().unwrap();
    assert!(
        create_reason.contains(&format!("merged into outbox row {}", rows[2].id)),
        "{create_reason}"
    );
    let unqueue_reason = rows[2].last_error.clone().unwrap();
    assert!(
        unqueue_reason.contains(&format!("merged into outbox row {}", rows[0].id)),
        "{unqueue_reason}"
    );
    assert!(sim_jobs(&sim).await.is_empty());
}

async fn rows_behind_a_prefix_wait_for_the_next_round_in_order(t: &TestDb) {
    let sim = start_sim(seeded(0)).await;
    let client = client(&sim);
    // create+patch | unqueue | patch: three rounds, each after the previous one's answer.
    insert(
        &t.db,
        &[
            create(28, "x", json!({"name": "X"})),
            patch_ref(28, "x", json!({"city": "Lyon"})),
            create(28, "y", json!({"name": "Y"})),
        ],
    );
    // Sent once, so the unqueue below cannot cancel it.
    push(&t.db, &client).await;
    insert(
        &t.db,
        &[
            patch_ref(28, "x", json!({"label": "before"})),
            unqueue_ref(28, "x"),
            patch_ref(28, "x", json!({"label": "after"})),
        ],
    );
    let stats = push(&t.db, &client).await;
    assert_eq!((stats.ok, stats.superseded), (3, 0));
    let log = requests(&sim.base_url()).await;
    let kinds: Vec<&str> = log
        .iter()
        .filter_map(|r| r["path"].as_str()?.strip_prefix("/j/jobs/bulk/"))
        .collect();
    assert_eq!(kinds, ["create", "patch", "unqueue", "patch"]);
    let job = &sim_by_ref(&sim).await[&(28, "x".to_string())][0];
    assert_eq!(
        (job.state, job.label.as_deref(), job.city.as_deref()),
        (3, Some("after"), Some("Lyon"))
    );
    assert_mirror_equals_sim(&t.db, &sim).await;
}

async fn a_create_of_a_job_the_mirror_knows_becomes_a_patch_of_what_differs(t: &TestDb) {
    let sim = start_sim(seeded(2)).await;
    let client = client(&sim);
    pull(&t.db, &client).await;
    let job = sim_jobs(&sim).await[0].clone();
    let reference = job.reference.clone().unwrap();
    let same = json!({"name": job.name, "email": job.email});
    insert(&t.db, &[create(job.campaign, &reference, same)]);
    let stats = push(&t.db, &client).await;
    assert_eq!(stats.ok, 1);
    assert_eq!(bulk_calls(&sim, "create").await, 0);
    assert_eq!(
        bulk_calls(&sim, "patch").await,
        1,
        "nothing differs, and the API (not the mirror) confirms the job exists"
    );
    insert(
        &t.db,
        &[create(job.campaign, &reference, json!({"name": "Renamed"}))],
    );
    push(&t.db, &client).await;
    assert_eq!(bulk_calls(&sim, "create").await, 0);
    assert_eq!(bulk_calls(&sim, "patch").await, 2);
    let rows = all_rows(&t.db);
    assert!(
        rows.iter()
            .all(|r| r.status == "done" && r.result_job_id == Some(job.id))
    );
    assert_eq!(sim_by_ref(&sim).await[&(job.campaign, reference)].len(), 1);
    assert_mirror_equals_sim(&t.db, &sim).await;
}

async fn a_bad_item_fails_alone_and_its_batch_mates_succeed(t: &TestDb) {
    let sim = start_sim(seeded(20)).await;
    let client = client(&sim);
    pull(&t.db, &client).await;
    let jobs = sim_jobs(&sim).await;
    let finished = jobs.iter().find(|j| j.state >= 2).unwrap().clone();
    let vanished = jobs.iter().find(|j| j.id != finished.id).unwrap().clone();
    reqwest::Client::new()
        .delete(format!("{}/_sim/jobs/{}", sim.base_url(), vanished.id))
        .send()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for n in 0..10 {
        let numbers = if n == 4 {
            json!(["not a phone"])
        } else {
            json!(["0612345678"])
        };
        rows.push(create(
            28,
            &format!("b-{n}"),
            json!({"name": "B", "numbers": numbers}),
        ));
    }
    rows.push(create(999, "nowhere", json!({})));
    rows.push(patch_id(vanished.id, json!({"name": "Ghost"})));
    rows.push(unqueue_id(finished.id));
    insert(&t.db, &rows);
    let stats = push(&t.db, &client).await;
    assert_eq!((stats.ok, stats.failed), (10, 3));
    assert_eq!(
        bulk_calls(&sim, "create").await,
        1,
        "one call, answered per item"
    );
    let stored = all_rows(&t.db);
    for (n, row) in stored[..10].iter().enumerate() {
        if n == 4 {
            assert_eq!(row.status, "failed");
            assert_eq!(row.http_status, Some(400));
            let error = row.last_error.clone().unwrap();
            assert!(
                error.contains("POST /j/jobs/bulk/create") && error.contains("400"),
                "{error}"
            );
        } else {
            assert_eq!(row.status, "done", "{row:?}");
        }
    }
    assert_eq!(stored[10].status, "failed");
    assert!(
        stored[10]
            .last_error
            .clone()
            .unwrap()
            .contains("campaign 999")
    );
    assert_eq!(
        (stored[11].status.as_str(), stored[11].http_status),
        ("failed", Some(404))
    );
    assert!(
        stored[11]
            .last_error
            .clone()
            .unwrap()
            .contains("does not exist upstream")
    );
    assert_eq!(
        stored[12].status, "done",
        "unqueue of a finished job is success"
    );
    let now = sim_jobs(&sim)
        .await
        .into_iter()
        .find(|j| j.id == finished.id)
        .unwrap();
    assert_eq!(now.state, finished.state);
}

async fn invalid_rows_fail_with_their_reason_and_block_nothing(t: &TestDb) {
    let sim = start_sim(seeded(0)).await;
    let client = client(&sim);
    insert(
        &t.db,
        &[
            row("delete", Some(28), Some("a"), None, json!({})),
            create(28, "a", json!({"state": 2})),
            patch_ref(28, "nobody", json!({"name": "x"})),
            patch_id(123_456, json!({"name": "x"})),
            create(28, "ok", json!({"name": "Fine"})),
        ],
    );
    let stats = push(&t.db, &client).await;
    assert_eq!((stats.ok, stats.failed), (1, 4));
    let rows = all_rows(&t.db);
    let reasons: Vec<String> = rows[..4]
        .iter()
        .map(|r| r.last_error.clone().unwrap())
        .collect();
    assert!(reasons[0].contains("unknown op"), "{}", reasons[0]);
    assert!(reasons[1].contains("read-only"), "{}", reasons[1]);
    assert!(
        reasons[2].contains("neither the mirror nor an earlier pending create"),
        "{}",
        reasons[2]
    );
    assert!(
        reasons[3].contains("job 123456 is unknown"),
        "{}",
        reasons[3]
    );
    assert_eq!(rows[4].status, "done");
}

/// A NUL character (U+0000) as a JSON serializer writes it (`\u0000`): PostgreSQL's text holds
/// that escape, but not the job the API would return, which the mirror could not record.
async fn a_payload_with_a_nul_character_fails_alone_before_it_is_sent(t: &TestDb) {
    let sim = start_sim(seeded(0)).await;
    let client = client(&sim);
    insert(
        &t.db,
        &[
            create(28, "clean-1", json!({"name": "Fine"})),
            create(28, "nul", json!({"name": "x\u{0}y"})),
            create(28, "clean-2", json!({"name": "Fine too"})),
            patch_ref(28, "clean-1", json!({"data": {"note": "a\u{0}"}})),
        ],
    );
    assert!(all_rows(&t.db)[1].payload.contains("\\u0000"));
    let stats = push(&t.db, &client).await;
    assert_eq!((stats.ok, stats.failed), (2, 2));
    let rows = all_rows(&t.db);
    let states: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(states, ["done", "failed", "done", "failed"]);
    for failed in [&rows[1], &rows[3]] {
        let reason = failed.last_error.clone().unwrap();
        assert!(reason.contains("NUL"), "{reason}");
    }
    let upstream = sim_by_ref(&sim).await;
    assert!(
        !upstream.contains_key(&(28, "nul".to_string())),
        "never sent"
    );
    assert_eq!(upstream.len(), 2);
}

/// SQLite stores whatever a CRM writes, raw NUL characters too (PostgreSQL's text refuses them
/// at the CRM's own INSERT): in the payload's text or in the reference, the row fails alone.
#[test]
fn sqlite_a_raw_nul_written_in_sql_fails_alone_before_it_is_sent() {
    use diesel::RunQueryDsl;
    let t = TestDb::sqlite();
    {
        let mut c = t.db.conn().unwrap();
        let jobsync::db::Conn::Sqlite(c) = &mut c else {
            unreachable!()
        };
        diesel::sql_query(
            "INSERT INTO outbox (op, campaign, reference, payload) VALUES \
             ('create', 28, 'clean-1', '{\"name\": \"Fine\"}'), \
             ('create', 28, 'raw', '{\"name\": \"x' || char(0) || 'y\"}'), \
             ('create', 28, 'r' || char(0) || 'ef', '{\"name\": \"Ref\"}'), \
             ('create', 28, 'clean-2', '{\"name\": \"Fine too\"}')",
        )
        .execute(&mut **c)
        .unwrap();
    }
    let rows = all_rows(&t.db);
    assert!(
        rows[1].payload.contains('\0'),
        "SQLite kept the NUL: {:?}",
        rows[1].payload
    );
    assert_eq!(rows[2].reference.as_deref(), Some("r\0ef"));
    block_on(async {
        let sim = start_sim(seeded(0)).await;
        let client = client(&sim);
        let stats = push(&t.db, &client).await;
        assert_eq!((stats.ok, stats.failed), (2, 2));
        let rows = all_rows(&t.db);
        let states: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(states, ["done", "failed", "failed", "done"]);
        let payload_reason = rows[1].last_error.clone().unwrap();
        assert!(payload_reason.contains("NUL"), "{payload_reason}");
        let reference_reason = rows[2].last_error.clone().unwrap();
        assert!(
            reference_reason.contains("NUL") && reference_reason.contains("reference"),
            "{reference_reason}"
        );
        assert_eq!(
            sim_by_ref(&sim).await.len(),
            2,
            "only the clean rows were sent"
        );
    })
}
