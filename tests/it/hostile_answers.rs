//! Hostile answers from upstream: text the database cannot hold, bodies that trickle or never end,
//! a job too large to be real. A small server of our own plays the API (the simulator only sends
//! well-formed jobs); the pull runs in-process against it, on both backends.

use crate::common::*;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::Response;
use axum::routing::get;
use futures_util::stream;
use jobsync::api::{ApiClient, ClientOptions, TokenSource};
use jobsync::config::SyncConfig;
use jobsync::db::repo::jobs;
use jobsync::secret::Secret;
use jobsync::shutdown::StopFlag;
use jobsync::sync::{SyncError, pull};
use std::convert::Infallible;
use std::time::Duration;

#[derive(Clone, Copy)]
enum Listing {
    /// Three jobs, the middle one with a NUL in its name.
    Nul,
    /// `[` then one byte a second, forever.
    Trickle,
    /// `[` then whitespace as fast as the client reads, forever.
    Endless,
    /// One job whose name is 10 MB.
    Huge,
}

fn http_date() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

async fn list_jobs(State(mode): State<Listing>, RawQuery(query): RawQuery) -> Response {
    let full = query.unwrap_or_default().contains("campaign=");
    let body = if !full {
        Body::from("[]")
    } else {
        match mode {
            Listing::Nul => {
                let mut jobs = vec![sample_job(1, 28), sample_job(2, 28), sample_job(3, 28)];
                jobs[1].name = Some("x\u{0}y".into());
                Body::from(serde_json::to_vec(&jobs).unwrap())
            }
            Listing::Trickle => {
                let bytes = stream::unfold(0u32, |n| async move {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let byte: &'static [u8] = if n == 0 { b"[" } else { b" " };
                    Some((Ok::<_, Infallible>(Bytes::from_static(byte)), n + 1))
                });
                Body::from_stream(bytes)
            }
            Listing::Endless => {
                let first = stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b"[")) });
                let spaces = stream::repeat_with(|| Ok(Bytes::from(vec![b' '; 64 * 1024])));
                Body::from_stream(futures_util::StreamExt::chain(first, spaces))
            }
            Listing::Huge => {
                let mut job = sample_job(1, 28);
                job.name = Some("x".repeat(10_000_000));
                Body::from(serde_json::to_vec(&vec![job]).unwrap())
            }
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::DATE, http_date())
        .body(body)
        .unwrap()
}

async fn start_api(mode: Listing) -> String {
    let app = Router::new()
        .route("/j/jobs", get(list_jobs))
        .with_state(mode);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn client(base_url: &str, timeout: Duration) -> ApiClient {
    let mut opts = ClientOptions::new(
        base_url.parse().unwrap(),
        TokenSource::Static(Secret::new("dev-token")),
    );
    opts.requests_per_second = 10_000.0;
    opts.max_attempts = 1;
    opts.timeout = timeout;
    ApiClient::new(opts).unwrap()
}

fn campaign_28() -> SyncConfig {
    SyncConfig {
        campaigns: vec![28],
        ..SyncConfig::default()
    }
}

/// Runs a pull, failing the test if it has not ended within `limit` (a hang is the bug).
async fn pull_within(
    t: &TestDb,
    client: &ApiClient,
    limit: Duration,
) -> Result<pull::PullStats, SyncError> {
    let stop = StopFlag::new();
    tokio::time::timeout(limit, pull_alone(&t.db, client, &campaign_28(), &stop))
        .await
        .unwrap_or_else(|_| panic!("the pull had not ended after {limit:?}"))
}

fn backends() -> Vec<TestDb> {
    std::iter::once(TestDb::sqlite())
        .chain(TestDb::postgres())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_one_job_costs_neither_it_nor_its_neighbours() {
    let api = start_api(Listing::Nul).await;
    for t in backends() {
        let stats = pull_within(
            &t,
            &client(&api, Duration::from_secs(5)),
            Duration::from_secs(30),
        )
        .await
        .expect("the pull completes");
        assert_eq!(stats.jobs_pulled, 3);
        let mut c = t.db.conn().unwrap();
        assert_eq!(jobs::counts(&mut c).unwrap(), (3, 0), "{}", t.url);
        let stored = jobs::get(&mut c, 2).unwrap().unwrap();
        assert_eq!(stored.content.name.as_deref(), Some("x\u{FFFD}y"));
        assert_eq!(
            jobs::get(&mut c, 3)
                .unwrap()
                .unwrap()
                .content
                .name
                .as_deref(),
            Some("Contact 3")
        );
        // The same answer again changes nothing: the replacement is stable.
        let again = pull_within(
            &t,
            &client(&api, Duration::from_secs(5)),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert_eq!(again.jobs_changed, 0, "{}", t.url);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_trickle_or_never_end_fail_within_the_timeout() {
    for mode in [Listing::Trickle, Listing::Endless] {
        let api = start_api(mode).await;
        let t = TestDb::sqlite();
        // Timeout 2 s: the pull must fail on its own well before the test's 20 s limit.
        let err = pull_within(
            &t,
            &client(&api, Duration::from_secs(2)),
            Duration::from_secs(20),
        )
        .await
        .expect_err("a listing that never completes a job fails");
        let text = err.to_string();
        assert!(
            text.contains("no complete job within 2s") && text.contains("GET /j/jobs"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_too_large_to_be_real_fails_the_run_naming_the_cap() {
    let api = start_api(Listing::Huge).await;
    let t = TestDb::sqlite();
    let err = pull_within(
        &t,
        &client(&api, Duration::from_secs(5)),
        Duration::from_secs(30),
    )
    .await
    .expect_err("a 10 MB job fails the listing");
    let text = err.to_string();
    assert!(text.contains("larger than 1 MiB"), "{text}");
    assert_eq!(jobs::counts(&mut t.db.conn().unwrap()).unwrap(), (0, 0));
}
