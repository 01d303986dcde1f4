//! The pull, hardened (issue 24): no single answer of the API can stop, starve or silently corrupt
//! the sync. Where the simulator cannot misbehave so, a test server of the test's own stands in
//! front of it.
//!
//! Implausible clocks: an API whose `Date` header says 2099 (or 1970) for one cycle must not move
//! the watermark, the campaigns' full-listing stamps or the last good pull there — before, one
//! such cycle stopped full listings and delete detection until 2099, and an incremental pull
//! from a 2099 watermark (answered `[]`) missed every later change.

mod common;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::*;
use jobsync::api::ApiClient;
use jobsync::config::SyncConfig;
use jobsync::db::repo::state;
use jobsync::sim::{SimConfig, SimHandle};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

on_both_backends!(
    a_date_in_2099_for_one_cycle_moves_no_stamp_and_later_changes_arrive,
    a_date_in_1970_for_one_cycle_moves_no_stamp_back,
);

const CAMPAIGN: i64 = 28;

/// A gateway in front of the simulator that, while `date` is set, answers with that `Date`
/// header — and answers `[]` to a listing whose `modified_since` lies in the future, as the
/// issue's API did (the simulator refuses it with a 400).
struct DateGateway {
    base: String,
    date: Arc<Mutex<Option<&'static str>>>,
}

impl DateGateway {
    fn lie(&self, date: Option<&'static str>) {
        *self.date.lock().unwrap() = date;
    }
}

#[derive(Clone)]
struct Upstream {
    sim: String,
    http: reqwest::Client,
    date: Arc<Mutex<Option<&'static str>>>,
}

async fn date_gateway(sim: &SimHandle) -> DateGateway {
    let date = Arc::new(Mutex::new(None));
    let upstream = Upstream {
        sim: sim.base_url(),
        http: reqwest::Client::new(),
        date: date.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(upstream);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    DateGateway {
        base: format!("http://{addr}"),
        date,
    }
}

async fn forward(State(up): State<Upstream>, request: Request) -> Response {
    let lie = *up.date.lock().unwrap();
    let uri = request.uri().clone();
    let future_since = uri.query().is_some_and(|q| {
        q.split('&')
            .filter_map(|kv| kv.strip_prefix("modified_since="))
            .filter_map(|v| {
                let v = v.replace("%3A", ":").replace("%2B", "+");
                chrono::DateTime::parse_from_rfc3339(&v).ok()
            })
            .any(|since| since > chrono::Utc::now())
    });
    let mut response = if future_since {
        (StatusCode::OK, [("content-type", "application/json")], "[]").into_response()
    } else {
        let method = request.method().clone();
        let headers = request.headers().clone();
        let body = axum::body::to_bytes(request.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let url = format!("{}{}", up.sim, uri);
        let answer = up
            .http
            .request(method, url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let headers = answer.headers().clone();
        let body: Bytes = answer.bytes().await.unwrap();
        let mut response = (status, body).into_response();
        for (name, value) in &headers {
            if name != "content-length" && name != "transfer-encoding" {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response
    };
    if let Some(date) = lie {
        response
            .headers_mut()
            .insert("date", HeaderValue::from_static(date));
    }
    response
}

async fn setup(t: &TestDb) -> (SimHandle, DateGateway, jobsync::sync::cycle::Engine) {
    let sim = start_sim(SimConfig {
        campaigns: vec![CAMPAIGN],
        jobs_per_campaign: 20,
        ..SimConfig::default()
    })
    .await;
    let gateway = date_gateway(&sim).await;
    let mut opts = options(&sim, "dev-token");
    opts.base_url = gateway.base.parse().unwrap();
    let engine = engine_with(
        &t.db,
        ApiClient::new(opts).unwrap(),
        SyncConfig {
            campaigns: vec![CAMPAIGN],
            full_resync_after_hours: 1,
            ..SyncConfig::default()
        },
    );
    (sim, gateway, engine)
}

/// The watermark, the last good pull and campaign 28's last full listing.
fn stamps(t: &TestDb) -> [chrono::DateTime<chrono::Utc>; 3] {
    let mut c = t.db.conn().unwrap();
    let listed = state::tracked_campaigns(&mut c)
        .unwrap()
        .into_iter()
        .find(|(campaign, _)| *campaign == CAMPAIGN)
        .and_then(|(_, at)| at)
        .unwrap()
        .as_utc();
    [
        state::get_time(&mut c, state::WATERMARK).unwrap().unwrap(),
        state::get_time(&mut c, state::LAST_PULL_OK)
            .unwrap()
            .unwrap(),
        listed,
    ]
}

async fn a_date_in_2099_for_one_cycle_moves_no_stamp_and_later_changes_arrive(t: &TestDb) {
    let (sim, gateway, engine) = setup(t).await;
    cycle(&engine).await;
    let good = stamps(t);

    gateway.lie(Some("Thu, 31 Dec 2099 23:59:59 GMT"));
    let lied = cycle(&engine).await;
    gateway.lie(None);
    let after = stamps(t);
    assert!(
        engine.client.stats().implausible_dates() >= 1,
        "the refused `Date` is counted (jobsync_api_implausible_dates_total)"
    );
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    assert!(
        after.iter().all(|at| *at < tomorrow),
        "no stamp moved to 2099: {after:?} (before: {good:?}); the cycle: {lied:?}"
    );
    assert!(
        after.iter().zip(&good).all(|(a, g)| a >= g),
        "no stamp went back: {after:?} (before: {good:?})"
    );

    // Later: a rename and a delete upstream, and the API's clock two hours on (a full listing
    // is due after one): both reach the mirror.
    let renamed = sim.edit(3);
    assert_eq!(renamed, 3);
    let gone = sim.state()[0].id;
    sim.delete_job(gone).unwrap();
    sim.set_clock(2.0).unwrap();
    // The first cycle after the jump learns the API's new time from its answers; the schedule
    // was decided by the time known when it began, so the full listing is the next cycle's.
    cycle(&engine).await;
    let later = cycle(&engine).await;
    assert!(later.pull.full, "the full listing came on time: {later:?}");
    let mirror = jobsync::db::repo::jobs::get(&mut t.db.conn().unwrap(), gone)
        .unwrap()
        .unwrap();
    assert!(
        mirror.remote_deleted_at.is_some(),
        "the job deleted upstream is marked deleted: {mirror:?}"
    );
    let live: Vec<_> = jobsync::db::repo::jobs::all(&mut t.db.conn().unwrap())
        .unwrap()
        .into_iter()
        .filter(|r| r.remote_deleted_at.is_none())
        .map(|r| r.to_job())
        .collect();
    let mut upstream = sim.state();
    upstream.sort_by_key(|j| j.id);
    assert_eq!(live, upstream, "the mirror's live jobs equal the API's");
}

async fn a_date_in_1970_for_one_cycle_moves_no_stamp_back(t: &TestDb) {
    let (_sim, gateway, engine) = setup(t).await;
    cycle(&engine).await;
    let good = stamps(t);
    gateway.lie(Some("Thu, 01 Jan 1970 00:00:00 GMT"));
    let lied = cycle(&engine).await;
    gateway.lie(None);
    let after = stamps(t);
    assert!(
        after.iter().zip(&good).all(|(a, g)| a >= g),
        "no stamp went back to 1970: {after:?} (before: {good:?}); the cycle: {lied:?}"
    );
    // The campaign was listed in full within the hour: the next cycle does not list it again.
    let next = cycle(&engine).await;
    assert!(!next.pull.full, "no needless full listing: {next:?}");
}
