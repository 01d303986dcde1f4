//! The Jobs API client against the real simulator: retry of every retryable class, no retry of
//! the others, Retry-After, bulk chunking and alignment, unknown outcomes, listings.

use crate::common::*;
use jobsync::api::{ApiClient, ApiError, ItemOutcome, ListQuery, TokenSource};
use jobsync::sim::{Faults, SimConfig};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

fn seeded(jobs_per_campaign: usize) -> SimConfig {
    SimConfig {
        jobs_per_campaign,
        ..SimConfig::default()
    }
}

fn ends_with<'a>(log: &'a [Value], method: &str, suffix: &str) -> Vec<&'a Value> {
    log.iter()
        .filter(|r| r["method"] == method && r["path"].as_str().unwrap().ends_with(suffix))
        .collect()
}

fn count_status(log: &[&Value], status: u64) -> usize {
    log.iter().filter(|r| r["status"] == status).count()
}

async fn first_job_ids(client: &ApiClient, n: usize) -> Vec<i64> {
    let mut listing = client
        .list_jobs(ListQuery {
            campaign: Some(28),
            modified_since: None,
        })
        .await
        .unwrap();
    let batch = listing.next_batch(n).await.unwrap().unwrap();
    batch.into_iter().map(|j| j.id).collect()
}

fn new_job(reference: &str) -> serde_json::Map<String, Value> {
    fields(
        json!({"campaign": 28, "reference": reference, "name": "Test Person",
                  "numbers": ["0612345678"]}),
    )
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let sim = start_sim(seeded(20)).await;
    let client = client(&sim);
    let ids = first_job_ids(&client, 20).await;
    set_faults(&sim, json!({"fail_rate": 0.4})).await;
    for &id in &ids {
        assert_eq!(client.get_job(id).await.unwrap().id, id);
    }
    let log = requests(&sim.base_url()).await;
    let failed = log.iter().filter(|r| r["status"] == 500).count();
    assert!(
        failed > 0,
        "the fault rate produced no 500 in {} requests",
        log.len()
    );
    assert_eq!(
        client.stats().count("GET /j/jobs/:id", "500") as usize,
        failed
    );
    assert_eq!(client.stats().count("GET /j/jobs/:id", "200"), 20);
    assert_eq!(client.stats().retries() as usize, failed);
}

#[tokio::test]
async fn throttling_is_retried_until_success() {
    let sim = start_sim(seeded(10)).await;
    let client = client(&sim);
    let ids = first_job_ids(&client, 10).await;
    set_faults(&sim, json!({"throttle_rate": 0.5, "retry_after_secs": 0})).await;
    let patches: Vec<_> = ids
        .iter()
        .map(|id| fields(json!({"id": id, "label": "vip"})))
        .collect();
    for _ in 0..12 {
        let outcomes = client.bulk_patch(patches.clone()).await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, ItemOutcome::Ok { job, .. }
            if job.label.as_deref() == Some("vip")))
        );
    }
    let throttled = client.stats().count("POST /j/jobs/bulk/patch", "429");
    let log = requests(&sim.base_url()).await;
    assert_eq!(
        count_status(&ends_with(&log, "POST", "/bulk/patch"), 429),
        throttled as usize
    );
    assert!(throttled > 0, "no 429 was drawn");
    assert_eq!(client.stats().retries(), throttled);
}

#[tokio::test]
async fn dropped_connections_are_retried_for_idempotent_requests() {
    let sim = start_sim(seeded(10)).await;
    let client = client(&sim);
    let ids = first_job_ids(&client, 10).await;
    set_faults(&sim, json!({"drop_rate": 0.4})).await;
    for &id in &ids {
        assert_eq!(client.get_job(id).await.unwrap().id, id);
    }
    let outcomes = client.bulk_unqueue(ids.clone()).await;
    for (outcome, id) in outcomes.iter().zip(&ids) {
        assert!(
            matches!(outcome, ItemOutcome::Ok { job, .. } if job.id == *id),
            "{outcome:?}"
        );
    }
    let log = requests(&sim.base_url()).await;
    let dropped = log.iter().filter(|r| r["dropped"] == true).count();
    assert!(dropped > 0, "no connection was dropped");
    let errors = client.stats().count("GET /j/jobs/:id", "error")
        + client.stats().count("POST /j/jobs/bulk/unqueue", "error");
    assert_eq!(errors as usize, dropped);
    assert!(client.stats().retries() as usize >= dropped);
}

#[tokio::test]
async fn a_wrong_token_fails_at_once_with_a_clear_message() {
    let sim = start_sim(seeded(1)).await;
    let client = ApiClient::new(options(&sim, "not-the-token")).unwrap();
    let err = client.get_job(1).await.unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("refused the API token") && text.contains("api.token_file"),
        "{text}"
    );
    assert!(!text.contains("not-the-token"), "the token leaked: {text}");
    assert!(client.check().await.unwrap_err().is_auth());
    let outcomes = client.bulk_create(vec![new_job("r1")]).await;
    assert!(
        matches!(&outcomes[0], ItemOutcome::Retryable { error } if error.is_auth()),
        "{outcomes:?}"
    );
    let log = requests(&sim.base_url()).await;
    assert_eq!(log.len(), 3, "one request per call, never retried");
    assert!(log.iter().all(|r| r["status"] == 403));
    assert_eq!(client.stats().retries(), 0);
}

#[tokio::test]
async fn not_found_and_bad_request_fail_at_once() {
    let sim = start_sim(seeded(1)).await;
    let client = client(&sim);
    let err = client.get_job(987_654).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err:?}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("GET /j/jobs/987654") && text.contains("404"),
        "{text}"
    );

    let too_old = chrono::Utc::now() - chrono::Duration::hours(72);
    let err = client
        .list_jobs(ListQuery {
            campaign: None,
            modified_since: Some(too_old),
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err:?}");
    assert!(err.to_string().contains("GET /j/jobs"), "{err}");

    let log = requests(&sim.base_url()).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(client.stats().total(), 2);
    assert_eq!(client.stats().retries(), 0);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let sim = start_sim(seeded(1)).await;
    let client = client(&sim);
    let id = first_job_ids(&client, 1).await[0];
    set_faults(&sim, json!({"throttle_rate": 1.0, "retry_after_secs": 1})).await;
    let base_url = sim.base_url();
    let clearer = tokio::spawn(async move {
        loop {
            let log = requests(&base_url).await;
            if log.iter().any(|r| r["status"] == 429) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        reqwest::Client::new()
            .post(format!("{base_url}/_sim/faults"))
            .json(&json!({"throttle_rate": 0.0}))
            .send()
            .await
            .unwrap();
    });
    assert_eq!(client.get_job(id).await.unwrap().id, id);
    clearer.await.unwrap();
    assert!(client.stats().count("GET /j/jobs/:id", "429") >= 1);
    // The backoff alone would wait at most 20 ms (`max_backoff` in these tests).
    assert!(
        client.stats().max_retry_wait() >= Duration::from_secs(1),
        "{:?}",
        client.stats().max_retry_wait()
    );
}

#[tokio::test]
async fn a_large_bulk_create_is_chunked_and_aligned() {
    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);
    let items: Vec<_> = (0..2500).map(|i| new_job(&format!("ref-{i}"))).collect();
    let outcomes = client.bulk_create(items).await;
    assert_eq!(outcomes.len(), 2500);
    for (i, outcome) in outcomes.iter().enumerate() {
        let ItemOutcome::Ok { status, job } = outcome else {
            panic!("item {i}: {outcome:?}")
        };
        assert_eq!(*status, 201);
        assert_eq!(job.reference.as_deref(), Some(format!("ref-{i}").as_str()));
        assert_eq!(
            job.numbers.as_deref(),
            Some(&["+33612345678".to_owned()][..])
        );
    }
    let log = requests(&sim.base_url()).await;
    assert_eq!(ends_with(&log, "POST", "/bulk/create").len(), 3);
    assert_eq!(client.stats().count("POST /j/jobs/bulk/create", "200"), 3);
    assert_eq!(sim_state(&sim).await.len(), 2500);
}

#[tokio::test]
async fn a_create_dropped_after_it_was_applied_is_unknown_and_not_resent() {
    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);
    set_faults(&sim, json!({"applied_drop_rate": 1.0})).await;
    let items: Vec<_> = (0..5).map(|i| new_job(&format!("maybe-{i}"))).collect();
    let outcomes = client.bulk_create(items).await;
    assert_eq!(outcomes.len(), 5);
    for outcome in &outcomes {
        let ItemOutcome::Unknown { error } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(!error.surely_not_applied(), "{error:?}");
    }
    let log = requests(&sim.base_url()).await;
    assert_eq!(
        ends_with(&log, "POST", "/bulk/create").len(),
        1,
        "never re-sent"
    );
    let state = sim_state(&sim).await;
    for i in 0..5 {
        let reference = format!("maybe-{i}");
        assert!(
            state.iter().any(|j| j["reference"] == reference.as_str()),
            "{reference} was applied by the simulator"
        );
    }

    // The single-create endpoint follows the same rule.
    let err = client.create_job(&new_job("single")).await.unwrap_err();
    assert!(!err.surely_not_applied(), "{err:?}");
    let log = requests(&sim.base_url()).await;
    assert_eq!(ends_with(&log, "POST", "/jobs").len(), 1);
}

#[tokio::test]
async fn a_throttled_create_is_retried_and_a_5xx_one_is_in_doubt() {
    let sim = start_sim(SimConfig::default()).await;
    let mut opts = options(&sim, "dev-token");
    opts.max_attempts = 3;
    let client = ApiClient::new(opts).unwrap();
    set_faults(&sim, json!({"throttle_rate": 1.0, "retry_after_secs": 0})).await;
    let outcomes = client.bulk_create(vec![new_job("a"), new_job("b")]).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, ItemOutcome::Retryable { error }
        if error.status() == Some(429))),
        "{outcomes:?}"
    );
    let log = requests(&sim.base_url()).await;
    assert_eq!(ends_with(&log, "POST", "/bulk/create").len(), 3);

    // A 5xx may come from a gateway after the API applied the create: one attempt, in doubt.
    clear_faults(&sim).await;
    set_faults(&sim, json!({"fail_rate": 1.0})).await;
    let outcomes = client.bulk_create(vec![new_job("a")]).await;
    assert!(
        matches!(&outcomes[0], ItemOutcome::Unknown { error } if error.status() == Some(500)),
        "{outcomes:?}"
    );
    let log = requests(&sim.base_url()).await;
    assert_eq!(ends_with(&log, "POST", "/bulk/create").len(), 4);

    // A dropped connection may hide an applied create: one attempt, then Unknown.
    clear_faults(&sim).await;
    set_faults(&sim, json!({"drop_rate": 1.0})).await;
    let outcomes = client.bulk_create(vec![new_job("c")]).await;
    assert!(
        matches!(&outcomes[0], ItemOutcome::Unknown { .. }),
        "{outcomes:?}"
    );
    let log = requests(&sim.base_url()).await;
    assert_eq!(ends_with(&log, "POST", "/bulk/create").len(), 5);
}

#[tokio::test]
async fn a_create_that_times_out_is_not_resent() {
    let sim = start_sim(SimConfig::default()).await;
    let mut opts = options(&sim, "dev-token");
    opts.timeout = Duration::from_millis(300);
    let client = ApiClient::new(opts).unwrap();
    set_faults(&sim, json!({"latency_ms": 1500})).await;
    let outcomes = client.bulk_create(vec![new_job("slow")]).await;
    let ItemOutcome::Unknown { error } = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert!(matches!(error, ApiError::Timeout { .. }), "{error:?}");
    assert!(error.to_string().contains("api.timeout_secs"), "{error}");
    assert_eq!(client.stats().total(), 1);
    assert_eq!(client.stats().count("POST /j/jobs/bulk/create", "error"), 1);
}

#[tokio::test]
async fn bad_items_are_rejected_one_by_one() {
    let sim = start_sim(seeded(2)).await;
    let client = client(&sim);
    let items = vec![
        new_job("ok-1"),
        new_job("ok-1"),
        fields(json!({"campaign": 999, "reference": "nowhere"})),
        fields(json!({"campaign": 28, "reference": "bad-number", "numbers": ["abc"]})),
        new_job("ok-2"),
    ];
    let outcomes = client.bulk_create(items).await;
    assert!(
        matches!(&outcomes[0], ItemOutcome::Ok { .. }),
        "{outcomes:?}"
    );
    for (i, outcome) in outcomes.iter().enumerate().skip(1).take(3) {
        let ItemOutcome::Rejected { status, message } = outcome else {
            panic!("item {i}: {outcome:?}")
        };
        assert_eq!(*status, 400, "item {i}");
        assert!(
            message.contains("POST /j/jobs/bulk/create") && message.contains("400"),
            "{message}"
        );
    }
    assert!(
        matches!(&outcomes[4], ItemOutcome::Ok { .. }),
        "{outcomes:?}"
    );

    let id = first_job_ids(&client, 1).await[0];
    let outcomes = client
        .bulk_patch(vec![
            fields(json!({"id": id, "city": "Lyon"})),
            fields(json!({"id": 987_654, "city": "Nowhere"})),
        ])
        .await;
    assert!(
        matches!(&outcomes[0], ItemOutcome::Ok { job, .. } if job.city.as_deref() == Some("Lyon"))
    );
    assert!(
        matches!(&outcomes[1], ItemOutcome::Rejected { status: 404, .. }),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn single_calls_round_trip() {
    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);
    client.check().await.unwrap();
    let created = client.create_job(&new_job("solo")).await.unwrap();
    assert_eq!(created.reference.as_deref(), Some("solo"));
    assert_eq!(client.get_job(created.id).await.unwrap(), created);
    let unqueued = client.unqueue_job(created.id).await.unwrap();
    assert_eq!(unqueued.state, 3);
    let again = client.bulk_unqueue(vec![created.id]).await;
    assert!(matches!(&again[0], ItemOutcome::Ok { status: 200, job } if job.state == 3));
}

#[tokio::test]
async fn listings_stream_every_job_and_carry_the_server_date() {
    let sim = start_sim(seeded(3000)).await;
    let client = client(&sim);
    let mut listing = client
        .list_jobs(ListQuery {
            campaign: Some(28),
            modified_since: None,
        })
        .await
        .unwrap();
    let date = listing.server_date.expect("a Date header");
    assert!((chrono::Utc::now() - date).num_seconds().abs() < 60);
    let mut seen = Vec::new();
    while let Some(batch) = listing.next_batch(700).await.unwrap() {
        assert!(batch.len() <= 700);
        seen.extend(batch.into_iter().map(|j| j.id));
    }
    assert_eq!(seen.len(), 3000);
    assert!(listing.next_batch(700).await.unwrap().is_none());

    let since = chrono::Utc::now() - chrono::Duration::minutes(10);
    let mut recent = client
        .list_jobs(ListQuery {
            campaign: Some(29),
            modified_since: Some(since),
        })
        .await
        .unwrap();
    let mut n = 0;
    while let Some(batch) = recent.next_batch(1000).await.unwrap() {
        assert!(batch.iter().all(|j| j.campaign == 29));
        n += batch.len();
    }
    let log = requests(&sim.base_url()).await;
    let query = log.last().unwrap()["query"].as_str().unwrap().to_owned();
    assert!(
        query.contains("modified_since=") && query.contains("Z"),
        "{query}"
    );
    assert!(n <= 3000);
}

#[tokio::test]
async fn a_rotated_token_file_is_picked_up() {
    let sim = start_sim(seeded(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "old-token\n").unwrap();
    let mut opts = options(&sim, "unused");
    opts.token = TokenSource::File(path.clone());
    let client = ApiClient::new(opts).unwrap();
    assert!(client.check().await.unwrap_err().is_auth());
    std::fs::write(&path, "dev-token\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    client.check().await.unwrap();
}

#[tokio::test]
async fn bulk_calls_respect_the_concurrency_limit_and_faults_config_type() {
    // Faults can also be set at start; a simulator that always fails leaves patches retryable.
    let sim = start_sim(SimConfig {
        faults: Faults {
            fail_rate: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let mut opts = options(&sim, "dev-token");
    opts.max_attempts = 2;
    opts.bulk_size = 2;
    opts.concurrency = 1;
    let client = ApiClient::new(opts).unwrap();
    let patches: Vec<_> = (1..=5)
        .map(|id| fields(json!({"id": id, "label": "x"})))
        .collect();
    let outcomes = client.bulk_patch(patches).await;
    assert_eq!(outcomes.len(), 5);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, ItemOutcome::Retryable { .. }))
    );
    assert_eq!(client.stats().count("POST /j/jobs/bulk/patch", "500"), 6);
}
