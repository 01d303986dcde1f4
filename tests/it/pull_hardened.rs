//! The pull, hardened (issue 24): no single answer of the API can stop, starve or silently corrupt
//! the sync. Where the simulator cannot misbehave so, a test server of the test's own stands in
//! front of it.
//!
//! Implausible clocks: an API whose `Date` header says 2099 (or 1970) for one cycle must not move
//! the watermark, the campaigns' full-listing stamps or the last good pull there — before, one
//! such cycle stopped full listings and delete detection until 2099, and an incremental pull
//! from a 2099 watermark (answered `[]`) missed every later change.
//!
//! Refused campaigns: a job of a campaign nobody configured (archived since) appears in the
//! incremental answer, and that campaign's listing answers 404, 403 or 400. Before, every cycle
//! then failed — the outbox never pushed — with a message blaming `api.base_url` or the token.
//!
//! Malformed jobs: one job the client cannot decode (a naive datetime, a lone surrogate, `1e400`,
//! a string for an array, a duplicate key, a state beyond i32, an invalid date) failed every
//! cycle while it existed, and the CRM's rows waited.
//!
//! A listing that never ends (the same jobs over and over) kept `--once` running and the daemon
//! skipping ticks, its push never run.
//!
//! jobsync stopped itself: a CRM create of 5 MB, accepted by the API, made every later pull fail
//! ("item 3 is larger than 1 MiB"). The push honours the pull's per-job cap.
//!
//! Mass deletes: one transient `200 []` for a campaign's full listing marked every job of the
//! campaign deleted (then created again at the next listing): the CRM saw the campaign vanish.

use crate::common::*;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jobsync::api::ApiClient;
use jobsync::config::SyncConfig;
use jobsync::db::repo::state;
use jobsync::sim::{SimConfig, SimHandle};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

on_both_backends!(
    a_date_in_2099_for_one_cycle_moves_no_stamp_and_later_changes_arrive,
    a_date_in_1970_for_one_cycle_moves_no_stamp_back,
    a_campaign_answering_404_is_set_aside_and_the_cycle_goes_on,
    a_campaign_answering_403_is_set_aside_and_the_cycle_goes_on,
    a_campaign_answering_400_is_set_aside_and_the_cycle_goes_on,
    a_transient_empty_listing_deletes_nothing_and_a_confirmed_one_deletes_all,
    malformed_jobs_are_quarantined_and_the_sync_goes_on,
    a_listing_that_loops_fails_and_the_push_still_runs,
    a_listing_of_ever_new_jobs_ends_at_its_deadline_and_the_push_still_runs,
    a_create_too_large_for_the_pull_is_refused_not_sent,
    a_compressed_answer_is_refused_naming_the_encoding,
    one_job_id_in_two_campaigns_is_quarantined_not_flipped,
    one_job_id_twice_in_one_listing_is_quarantined_not_a_loop,
);

const CAMPAIGN: i64 = 28;

/// A gateway in front of the simulator that can lie as the issue's APIs did: while `date` is
/// set, it answers with that `Date` header (and `[]` to a listing whose `modified_since` lies in
/// the future, which the simulator would refuse with a 400); while `refuse` names a campaign, it
/// answers that campaign's listing with the given status, as an API does for an archived
/// campaign. It notes the campaigns whose listing it was asked for.
struct Gateway {
    base: String,
    rules: Arc<Rules>,
}

#[derive(Default)]
struct Rules {
    date: Mutex<Option<&'static str>>,
    refuse: Mutex<Option<(i64, u16)>>,
    /// A campaign whose listing is answered `200 []`.
    empty: Mutex<Option<i64>>,
    /// Items added at the end of every listing's array (or only of this campaign's listing).
    inject: Mutex<Vec<String>>,
    inject_only: Mutex<Option<i64>>,
    /// Every listing is answered with its jobs over and over, never ending.
    looping: Mutex<bool>,
    /// Every listing is answered with ever-new jobs, never ending.
    endless: Mutex<bool>,
    /// Listings come compressed (`Content-Encoding: gzip`), unasked.
    gzip: Mutex<bool>,
    campaign_listings: Mutex<Vec<i64>>,
}

impl Gateway {
    fn lie(&self, date: Option<&'static str>) {
        *self.rules.date.lock().unwrap() = date;
    }

    fn refuse(&self, campaign_and_status: Option<(i64, u16)>) {
        *self.rules.refuse.lock().unwrap() = campaign_and_status;
    }

    fn gzip(&self, on: bool) {
        *self.rules.gzip.lock().unwrap() = on;
    }

    fn looping(&self, on: bool) {
        *self.rules.looping.lock().unwrap() = on;
    }

    fn endless(&self, on: bool) {
        *self.rules.endless.lock().unwrap() = on;
    }

    fn inject(&self, items: Vec<String>) {
        *self.rules.inject.lock().unwrap() = items;
    }

    fn answer_empty(&self, campaign: Option<i64>) {
        *self.rules.empty.lock().unwrap() = campaign;
    }

    /// The campaigns whose listing was asked for since the last call.
    fn listings_asked(&self) -> Vec<i64> {
        std::mem::take(&mut *self.rules.campaign_listings.lock().unwrap())
    }
}

#[derive(Clone)]
struct Upstream {
    sim: String,
    http: reqwest::Client,
    rules: Arc<Rules>,
}

async fn gateway(sim: &SimHandle) -> Gateway {
    let rules = Arc::new(Rules::default());
    let upstream = Upstream {
        sim: sim.base_url(),
        http: reqwest::Client::new(),
        rules: rules.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(upstream);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Gateway {
        base: format!("http://{addr}"),
        rules,
    }
}

async fn forward(State(up): State<Upstream>, request: Request) -> Response {
    let lie = *up.rules.date.lock().unwrap();
    let uri = request.uri().clone();
    // The simulator's clock (it may be shifted): what "the future" means, and the `Date` of the
    // answers the gateway gives itself.
    let clock: serde_json::Value = up
        .http
        .get(format!("{}/_sim/clock", up.sim))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sim_now: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(clock["now"].clone()).unwrap();
    let own = |status: StatusCode, body: String| {
        let date = sim_now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        (
            status,
            [
                ("content-type", "application/json".to_string()),
                ("date", date),
            ],
            body,
        )
            .into_response()
    };
    let campaign: Option<i64> = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("campaign="))
            .and_then(|v| v.parse().ok())
    });
    if let Some(campaign) = campaign {
        up.rules.campaign_listings.lock().unwrap().push(campaign);
        let refused = *up.rules.refuse.lock().unwrap();
        if let Some((_, status)) = refused.filter(|(c, _)| *c == campaign) {
            let body = format!("{{\"detail\": \"campaign {campaign} is archived\"}}");
            return own(StatusCode::from_u16(status).unwrap(), body);
        }
        if *up.rules.empty.lock().unwrap() == Some(campaign) {
            return own(StatusCode::OK, "[]".into());
        }
    }
    let future_since = uri.query().is_some_and(|q| {
        q.split('&')
            .filter_map(|kv| kv.strip_prefix("modified_since="))
            .filter_map(|v| {
                let v = v.replace("%3A", ":").replace("%2B", "+");
                chrono::DateTime::parse_from_rfc3339(&v).ok()
            })
            .any(|since| since > sim_now)
    });
    let mut response = if future_since {
        own(StatusCode::OK, "[]".into())
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
        let mut body: Bytes = answer.bytes().await.unwrap();
        if uri.path() == "/j/jobs" && status == 200 && *up.rules.gzip.lock().unwrap() {
            // A gzip stream's first bytes (magic, method, flags) and binary garbage after.
            let body: Vec<u8> = [0x1f, 0x8b, 0x08, 0x00, 0xff, 0xfe, 0x00, 0x9c].repeat(64);
            let mut response = (status, body).into_response();
            let headers = response.headers_mut();
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            headers.insert("content-encoding", HeaderValue::from_static("gzip"));
            return response;
        }
        if uri.path() == "/j/jobs" && status == 200 && *up.rules.endless.lock().unwrap() {
            return endless_listing(headers.get("date").cloned());
        }
        let looping = *up.rules.looping.lock().unwrap();
        if uri.path() == "/j/jobs" && status == 200 && looping {
            // The same jobs for ever: "[" then the items, a comma, the items, …
            let text = up
                .http
                .get(format!("{}/j/jobs?campaign={CAMPAIGN}", up.sim))
                .bearer_auth("dev-token")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let items = text
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let head = futures_util::stream::once(async { "[".to_string() });
            let rest = futures_util::stream::iter(std::iter::repeat(format!("{items},")));
            let stream = futures_util::StreamExt::map(
                futures_util::StreamExt::chain(head, rest),
                Ok::<_, std::convert::Infallible>,
            );
            let mut response = (status, axum::body::Body::from_stream(stream)).into_response();
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            if let Some(date) = headers.get("date") {
                response.headers_mut().insert("date", date.clone());
            }
            return response;
        }
        let inject = up.rules.inject.lock().unwrap().clone();
        let only = *up.rules.inject_only.lock().unwrap();
        if uri.path() == "/j/jobs"
            && status == 200
            && !inject.is_empty()
            // `Some(-1)`: only the incremental listing (no campaign).
            && only.is_none_or(|c| campaign == Some(c) || (c == -1 && campaign.is_none()))
        {
            let text = String::from_utf8(body.to_vec()).unwrap();
            let open = text.trim_end().trim_end_matches(']').trim_end().to_string();
            let sep = if open.ends_with('[') { "" } else { "," };
            body = Bytes::from(format!("{open}{sep}{}]", inject.join(",")));
        }
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

/// A listing of ever-new jobs (ids from 10,000,000 up, in campaign 28), streamed as fast as it
/// is read and never ending.
fn endless_listing(date: Option<HeaderValue>) -> Response {
    let head = futures_util::stream::once(async { "[".to_string() });
    let items = futures_util::stream::iter((10_000_000i64..).map(|id| {
        format!(r#"{{"id": {id}, "campaign": {CAMPAIGN}, "state": 0, "name": "new {id}"}},"#)
    }));
    let stream = futures_util::StreamExt::map(
        futures_util::StreamExt::chain(head, items),
        Ok::<_, std::convert::Infallible>,
    );
    let mut response = (StatusCode::OK, axum::body::Body::from_stream(stream)).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(date) = date {
        response.headers_mut().insert("date", date);
    }
    response
}

async fn setup(t: &TestDb) -> (SimHandle, Gateway, jobsync::sync::cycle::Engine) {
    setup_with(t, vec![CAMPAIGN]).await
}

/// The simulator with 20 jobs in each of `campaigns`, the gateway in front, and an engine that
/// tracks campaign 28 (the others it discovers) and lists each in full every hour.
async fn setup_with(
    t: &TestDb,
    campaigns: Vec<i64>,
) -> (SimHandle, Gateway, jobsync::sync::cycle::Engine) {
    let sim = start_sim(SimConfig {
        campaigns,
        jobs_per_campaign: 20,
        ..SimConfig::default()
    })
    .await;
    let gateway = gateway(&sim).await;
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

/// A first good cycle, then one whose answers carry `date`: the stamps after the good cycle, the
/// dated cycle, and the stamps after it.
async fn one_cycle_dated(
    t: &TestDb,
    gateway: &Gateway,
    engine: &jobsync::sync::cycle::Engine,
    date: &'static str,
) -> (
    [chrono::DateTime<chrono::Utc>; 3],
    jobsync::sync::cycle::CycleSummary,
    [chrono::DateTime<chrono::Utc>; 3],
) {
    cycle(engine).await;
    let good = stamps(t);
    gateway.lie(Some(date));
    let lied = cycle(engine).await;
    gateway.lie(None);
    (good, lied, stamps(t))
}

/// The mirror's live jobs equal the API's, field for field.
fn assert_live_mirror_equals_api(t: &TestDb, sim: &SimHandle) {
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

async fn a_date_in_2099_for_one_cycle_moves_no_stamp_and_later_changes_arrive(t: &TestDb) {
    let (sim, gateway, engine) = setup(t).await;
    let (good, lied, after) =
        one_cycle_dated(t, &gateway, &engine, "Thu, 31 Dec 2099 23:59:59 GMT").await;
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
    assert_live_mirror_equals_api(t, &sim);
}

async fn a_date_in_1970_for_one_cycle_moves_no_stamp_back(t: &TestDb) {
    let (_sim, gateway, engine) = setup(t).await;
    let (good, lied, after) =
        one_cycle_dated(t, &gateway, &engine, "Thu, 01 Jan 1970 00:00:00 GMT").await;
    assert!(
        after.iter().zip(&good).all(|(a, g)| a >= g),
        "no stamp went back to 1970: {after:?} (before: {good:?}); the cycle: {lied:?}"
    );
    // The campaign was listed in full within the hour: the next cycle does not list it again.
    let next = cycle(&engine).await;
    assert!(!next.pull.full, "no needless full listing: {next:?}");
}

async fn a_campaign_answering_404_is_set_aside_and_the_cycle_goes_on(t: &TestDb) {
    campaign_refused_with(t, 404).await
}

async fn a_campaign_answering_403_is_set_aside_and_the_cycle_goes_on(t: &TestDb) {
    campaign_refused_with(t, 403).await
}

async fn a_campaign_answering_400_is_set_aside_and_the_cycle_goes_on(t: &TestDb) {
    campaign_refused_with(t, 400).await
}

const ARCHIVED: i64 = 29;

async fn campaign_refused_with(t: &TestDb, status: u16) {
    let (sim, gateway, engine) = setup_with(t, vec![CAMPAIGN, ARCHIVED]).await;
    gateway.refuse(Some((ARCHIVED, status)));
    insert(
        &t.db,
        &[create(
            CAMPAIGN,
            "crm-1",
            serde_json::json!({"name": "From the CRM"}),
        )],
    );
    let run = engine
        .cycle(jobsync::sync::cycle::Trigger::Once)
        .run()
        .await
        .unwrap();
    assert!(
        run.ok,
        "the cycle goes on past the refused campaign: {:?}",
        run.error
    );
    // The CRM's row went out; campaign 28 is mirrored; campaign 29 is set aside, and says why.
    let rows = all_rows(&t.db);
    assert_eq!(count_status(&rows, "done"), 1, "the push ran: {rows:?}");
    assert_eq!(
        gateway.listings_asked(),
        vec![CAMPAIGN, ARCHIVED],
        "campaign 28 then the discovered 29 were listed"
    );
    assert_eq!(run.pull.campaigns_refused, vec![ARCHIVED]);
    let refused = refused_campaigns(t);
    assert_eq!(refused.len(), 1, "{refused:?}");
    // `jobsync status` and `/status` show it (the report both print).
    let report = jobsync::db::repo::report::read(&mut t.db.conn().unwrap(), 1).unwrap();
    assert_eq!(report.campaigns_set_aside.len(), 1, "{report:?}");
    let (campaign, reason) = &refused[0];
    assert_eq!(*campaign, ARCHIVED);
    assert!(
        reason.contains(&format!("campaign {ARCHIVED}"))
            && reason.contains(&status.to_string())
            && !reason.contains("api.base_url")
            && !reason.contains("api.token"),
        "the reason names the campaign and the answer, not the base URL or the token: {reason}"
    );
    let mirror = jobsync::db::repo::jobs::all(&mut t.db.conn().unwrap()).unwrap();
    let mirrored_28 = mirror
        .iter()
        .filter(|r| r.content.campaign == CAMPAIGN)
        .count();
    assert_eq!(mirrored_28, 21, "campaign 28's 20 jobs and the CRM's");

    // Later cycles skip it: no listing of 29, each cycle ok.
    cycle(&engine).await;
    assert_eq!(gateway.listings_asked(), Vec::<i64>::new());

    // It answers again: an hour later (the API's clock) it is tried, listed, and no longer set
    // aside.
    gateway.refuse(None);
    sim.set_clock(1.5).unwrap();
    cycle(&engine).await;
    cycle(&engine).await;
    assert!(
        gateway.listings_asked().contains(&ARCHIVED),
        "the set-aside campaign is tried again after an hour"
    );
    assert!(
        refused_campaigns(t).is_empty(),
        "{:?}",
        refused_campaigns(t)
    );
}

/// Campaigns set aside, with the reason recorded.
fn refused_campaigns(t: &TestDb) -> Vec<(i64, String)> {
    state::refused_campaigns(&mut t.db.conn().unwrap())
        .unwrap()
        .into_iter()
        .map(|r| (r.campaign, r.reason))
        .collect()
}

/// `deleted` changes in the changefeed.
fn deleted_changes(t: &TestDb) -> usize {
    jobsync::db::repo::changes::since(&mut t.db.conn().unwrap(), 0, 100_000)
        .unwrap()
        .iter()
        .filter(|c| c.kind == "deleted")
        .count()
}

async fn a_transient_empty_listing_deletes_nothing_and_a_confirmed_one_deletes_all(t: &TestDb) {
    let (sim, gateway, engine) = setup(t).await;
    cycle(&engine).await;
    let live = || {
        jobsync::db::repo::jobs::counts(&mut t.db.conn().unwrap())
            .unwrap()
            .0
    };
    assert_eq!(live(), 20);

    // A full listing is due (the API's clock two hours on), and it answers `200 []` once.
    gateway.answer_empty(Some(CAMPAIGN));
    sim.set_clock(2.0).unwrap();
    cycle(&engine).await;
    let held = cycle(&engine).await;
    gateway.answer_empty(None);
    assert!(held.pull.full, "{held:?}");
    assert_eq!(deleted_changes(t), 0, "an empty listing deleted jobs");
    assert_eq!(live(), 20);
    let report = jobsync::db::repo::report::read(&mut t.db.conn().unwrap(), 1).unwrap();
    assert_eq!(
        report.deletes_held.len(),
        1,
        "status says it is held: {report:?}"
    );
    // The next listing, a true one, disagrees: nothing deleted, nothing held.
    cycle(&engine).await;
    assert_eq!(deleted_changes(t), 0);
    let report = jobsync::db::repo::report::read(&mut t.db.conn().unwrap(), 1).unwrap();
    assert!(report.deletes_held.is_empty(), "{report:?}");

    // A real deletion of all 20: held at the first listing, applied at the second.
    for job in sim.state() {
        sim.delete_job(job.id).unwrap();
    }
    sim.set_clock(4.0).unwrap();
    cycle(&engine).await;
    let first = cycle(&engine).await;
    assert!(first.pull.full, "{first:?}");
    assert_eq!(deleted_changes(t), 0, "held until a second listing agrees");
    let second = cycle(&engine).await;
    assert!(
        second.pull.full,
        "the held campaign is listed again at once: {second:?}"
    );
    assert_eq!(
        deleted_changes(t),
        20,
        "confirmed by two listings: 20 deleted"
    );
    assert_eq!(live(), 0);
}

/// The phone number planted in malformed jobs: no table, output or endpoint may hold it.
const PLANTED: &str = "33612345678";

async fn malformed_jobs_are_quarantined_and_the_sync_goes_on(t: &TestDb) {
    let (sim, gateway, engine) = setup(t).await;
    cycle(&engine).await;
    let known = sim.state()[0].id;
    let bad = |fields: &str| format!(r#"{{"campaign": 28, {fields}}}"#);
    gateway.inject(vec![
        bad(r#""id": 9001, "state": 0, "created_at": "2026-12-08T09:30:00", "numbers": ["+33612345678"]"#),
        bad(r#""id": 9002, "state": 0, "name": "\ud83d""#),
        bad(r#""id": 9003, "state": 1e400"#),
        bad(r#""id": 9004, "state": 0, "numbers": "+33612345678""#),
        bad(r#""id": 9005, "state": 0, "state": 1"#),
        bad(r#""id": 9006, "state": 4294967296"#),
        bad(r#""id": 9007, "state": 0, "created_at": "2026-02-30T10:00:00Z""#),
        // A job the mirror holds, in a version that cannot be read: kept as it was, not deleted.
        bad(&format!(r#""id": {known}, "state": "queued""#)),
        // No readable id: the listing cannot say what it did not contain.
        r#"{"id": "x-1", "campaign": 28, "state": 0}"#.to_string(),
    ]);
    insert(
        &t.db,
        &[create(
            CAMPAIGN,
            "crm-q",
            serde_json::json!({"name": "Waiting"}),
        )],
    );
    let before = jobsync::db::repo::jobs::get(&mut t.db.conn().unwrap(), known)
        .unwrap()
        .unwrap();
    let run = cycle(&engine).await;
    assert_eq!(run.pull.quarantined, 9, "{run:?}");
    // A full listing too (the API's clock two hours on): nothing is deleted.
    sim.set_clock(2.0).unwrap();
    cycle(&engine).await;
    let full = cycle(&engine).await;
    assert!(full.pull.full, "{full:?}");
    assert_eq!(
        deleted_changes(t),
        0,
        "a job that could not be read was deleted"
    );

    let rows = all_rows(&t.db);
    assert_eq!(
        count_status(&rows, "done"),
        1,
        "the CRM's row was pushed: {rows:?}"
    );
    let mut c = t.db.conn().unwrap();
    let quarantined = jobsync::db::repo::quarantine::list(&mut c, 100).unwrap();
    assert_eq!(quarantined.len(), 9, "{quarantined:?}");
    assert!(
        quarantined
            .iter()
            .all(|q| q.campaign == Some(CAMPAIGN) && !q.reason.is_empty()),
        "{quarantined:?}"
    );
    assert_eq!(
        jobsync::db::repo::jobs::get(&mut c, known)
            .unwrap()
            .unwrap()
            .content,
        before.content,
        "the mirrored job stays as it was read last"
    );
    let runs = jobsync::db::repo::runs::recent(&mut c, 10).unwrap();
    assert!(
        runs.iter().any(|r| r.jobs_quarantined >= 9),
        "the run counts them: {runs:?}"
    );
    let report = jobsync::db::repo::report::read(&mut c, 10).unwrap();
    assert_eq!(report.jobs_quarantined, 9, "status says so: {report:?}");
    // The planted phone number is nowhere: quarantine, runs, status.
    let seen = format!(
        "{quarantined:?} {runs:?} {}",
        serde_json::to_string(&report).unwrap()
    );
    assert!(!seen.contains(PLANTED), "the phone number leaked: {seen}");
    // The mirror equals the API for every readable job.
    assert_live_mirror_equals_api(t, &sim);

    // The API sends the job readably again: it leaves quarantine.
    gateway.inject(Vec::new());
    sim.set_clock(4.0).unwrap();
    cycle(&engine).await;
    cycle(&engine).await;
    let left = jobsync::db::repo::quarantine::list(&mut t.db.conn().unwrap(), 100).unwrap();
    assert!(
        left.iter().all(|q| q.job_id != Some(known)) && left.len() == 8,
        "{left:?}"
    );
}

async fn a_listing_that_loops_fails_and_the_push_still_runs(t: &TestDb) {
    let (_sim, gateway, engine) = setup(t).await;
    a_listing_that_never_ends(
        t,
        &engine,
        |on| gateway.looping(on),
        &["again", "repeats itself"],
    )
    .await;
}

async fn a_listing_of_ever_new_jobs_ends_at_its_deadline_and_the_push_still_runs(t: &TestDb) {
    let (sim, gateway, mut engine) = setup(t).await;
    let mut opts = options(&sim, "dev-token");
    opts.base_url = gateway.base.parse().unwrap();
    opts.listing_deadline = std::time::Duration::from_secs(3);
    engine.client = ApiClient::new(opts).unwrap();
    a_listing_that_never_ends(
        t,
        &engine,
        |on| gateway.endless(on),
        &["sync.listing_deadline_secs"],
    )
    .await;
}

/// A good cycle, then one whose listings never end (`never_ending(true)`) while a CRM create
/// waits: the cycle ends anyway, failed with an error holding each of `words`, the create is
/// pushed and the watermark stays; with the API honest again, the next cycle completes.
async fn a_listing_that_never_ends(
    t: &TestDb,
    engine: &jobsync::sync::cycle::Engine,
    never_ending: impl Fn(bool),
    words: &[&str],
) {
    cycle(engine).await;
    let watermark = stamps(t)[0];
    never_ending(true);
    insert(
        &t.db,
        &[create(
            CAMPAIGN,
            "crm-never-ending",
            serde_json::json!({"name": "Never ending"}),
        )],
    );
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        engine.cycle(jobsync::sync::cycle::Trigger::Once).run(),
    )
    .await
    .expect("the cycle ends although the listing never does")
    .unwrap();
    never_ending(false);
    let error = run.error.clone().unwrap_or_default();
    assert!(
        !run.ok && words.iter().all(|w| error.contains(w)),
        "the run fails naming why ({words:?}): {run:?}"
    );
    let rows = all_rows(&t.db);
    assert_eq!(count_status(&rows, "done"), 1, "the push ran: {rows:?}");
    assert_eq!(stamps(t)[0], watermark, "the watermark stays");
    cycle(engine).await;
}

async fn a_create_too_large_for_the_pull_is_refused_not_sent(t: &TestDb) {
    let (sim, _gateway, engine) = setup(t).await;
    insert(
        &t.db,
        &[
            create(
                CAMPAIGN,
                "huge",
                serde_json::json!({"name": "x".repeat(5_000_000)}),
            ),
            create(CAMPAIGN, "fine", serde_json::json!({"name": "Fine"})),
        ],
    );
    cycle(&engine).await;
    let rows = all_rows(&t.db);
    let huge = rows
        .iter()
        .find(|r| r.reference.as_deref() == Some("huge"))
        .unwrap();
    assert_eq!(huge.status, "failed", "{:?}", huge.last_error);
    let reason = huge.last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("1 MiB") && reason.contains("bytes"),
        "{reason}"
    );
    assert_eq!(count_status(&rows, "done"), 1);
    assert!(
        sim.state()
            .iter()
            .all(|j| j.reference.as_deref() != Some("huge")),
        "never sent"
    );
    // The pulls that follow, full listings included, go on.
    sim.set_clock(2.0).unwrap();
    cycle(&engine).await;
    assert!(cycle(&engine).await.pull.full);
}

async fn a_compressed_answer_is_refused_naming_the_encoding(t: &TestDb) {
    let (_sim, gateway, engine) = setup(t).await;
    gateway.gzip(true);
    let run = engine
        .cycle(jobsync::sync::cycle::Trigger::Once)
        .run()
        .await
        .unwrap();
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("Content-Encoding: gzip") && !error.contains('\u{fffd}'),
        "names the encoding, quotes no binary: {error}"
    );
}

async fn one_job_id_in_two_campaigns_is_quarantined_not_flipped(t: &TestDb) {
    let (sim, gateway, engine) = setup_with(t, vec![CAMPAIGN, ARCHIVED]).await;
    let known = sim
        .state()
        .iter()
        .find(|j| j.campaign == CAMPAIGN)
        .unwrap()
        .id;
    // Campaign 29's full listing also carries job `known`, as a job of campaign 29.
    *gateway.rules.inject_only.lock().unwrap() = Some(ARCHIVED);
    gateway.inject(vec![format!(
        r#"{{"id": {known}, "campaign": {ARCHIVED}, "state": 0, "name": "Other"}}"#
    )]);
    let first = cycle(&engine).await;
    assert_eq!(first.pull.campaigns_listed, vec![CAMPAIGN, ARCHIVED]);
    // Listed again, both: the mirror keeps campaign 28's version, no change flips it.
    sim.set_clock(2.0).unwrap();
    cycle(&engine).await;
    assert!(cycle(&engine).await.pull.full);
    let mut c = t.db.conn().unwrap();
    let row = jobsync::db::repo::jobs::get(&mut c, known)
        .unwrap()
        .unwrap();
    assert_eq!(row.content.campaign, CAMPAIGN);
    let changes: Vec<_> = jobsync::db::repo::changes::since(&mut c, 0, 100_000)
        .unwrap()
        .into_iter()
        .filter(|ch| ch.job_id == known)
        .collect();
    assert_eq!(changes.len(), 1, "only its creation: {changes:?}");
    let quarantined = jobsync::db::repo::quarantine::list(&mut c, 10).unwrap();
    assert!(
        quarantined
            .iter()
            .any(|q| q.job_id == Some(known) && q.reason.contains("two campaigns")),
        "{quarantined:?}"
    );
}

async fn one_job_id_twice_in_one_listing_is_quarantined_not_a_loop(t: &TestDb) {
    let (sim, gateway, engine) = setup(t).await;
    let known = sim.state()[0].id;
    // The incremental answer carries job `known` twice: as campaign 28, and as campaign 29.
    *gateway.rules.inject_only.lock().unwrap() = Some(-1);
    gateway.inject(vec![format!(
        r#"{{"id": {known}, "campaign": 29, "state": 0, "name": "Other"}}"#
    )]);
    let run = cycle(&engine).await;
    assert_eq!(run.pull.quarantined, 1, "{run:?}");
    let mut c = t.db.conn().unwrap();
    assert_eq!(
        jobsync::db::repo::jobs::get(&mut c, known)
            .unwrap()
            .unwrap()
            .content
            .campaign,
        CAMPAIGN
    );
    let quarantined = jobsync::db::repo::quarantine::list(&mut c, 10).unwrap();
    assert!(
        quarantined
            .iter()
            // The full listing of 28 just before made the incremental pass skip campaign 28's
            // copy: then it is the mirror that holds the first.
            .any(|q| q.job_id == Some(known)
                && (q.reason.contains("second time") || q.reason.contains("two campaigns"))),
        "{quarantined:?}"
    );
}
