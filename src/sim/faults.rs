//! Injected faults on the `/j/` routes — 500, 429, connections dropped before or after the
//! request is applied, POSTs applied and then answered 502 by a "gateway", slow commits applied
//! after a delay, added latency — and the log of every `/j/` request with what it was answered.

use super::body::error;
use super::gate::Hold;
use super::routes::MAX_BODY_BYTES;
use super::{Sim, lock};
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Fault rates, each between 0 and 1, drawn independently for every `/j/` request (at most one
/// fault per request), with the settings some of them need.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Answer 500.
    pub fail_rate: f64,
    /// Answer 429 with `Retry-After: retry_after_secs`.
    pub throttle_rate: f64,
    pub retry_after_secs: u64,
    /// Close the connection without answering, before doing anything.
    pub drop_rate: f64,
    /// For a POST: apply it, then close the connection without answering.
    pub applied_drop_rate: f64,
    /// For a POST: apply it, then answer 502 with a gateway's HTML page instead of the API's
    /// JSON — what a client sees when the gateway in front of the API gave up on an API that
    /// went on to commit. A 5xx therefore does not prove that nothing was applied.
    pub applied_fail_rate: f64,
    /// For a POST: a slow commit, applied only `late_apply_ms` after it arrived and answered
    /// after that — applied even when the client stopped waiting and closed the connection.
    pub late_apply_rate: f64,
    pub late_apply_ms: u64,
}

/// The longest `latency_ms` or `late_apply_ms` accepted (ten minutes): longer is a typo, and a
/// delay beyond any client's timeout shows nothing more.
pub const MAX_DELAY_MS: u64 = 600_000;

/// The longest `Retry-After` a 429 may ask for (a day, as a daily quota would): longer is a
/// typo. The client caps what it honours anyway (`api.retry_after_cap`).
pub const MAX_RETRY_AFTER_SECS: u64 = 86_400;

/// Every fault setting (`GET /_sim/faults`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultSettings {
    #[serde(flatten)]
    pub faults: Faults,
    pub latency_ms: u64,
    /// No uniqueness check of `reference` within a campaign, so that a create sent twice
    /// becomes two jobs, as on an API that does not enforce it (the documented API refuses the
    /// second one). Not a random fault: it holds for every request while set.
    pub allow_duplicate_references: bool,
    /// The gate (see `gate`): matching requests are held unanswered until released. Off (and
    /// absent from the JSON) by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
}

/// `POST /_sim/faults` (or `SimHandle::set_faults`): the settings given replace the current
/// ones, the others stay.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    pub fail_rate: Option<f64>,
    pub throttle_rate: Option<f64>,
    pub retry_after_secs: Option<u64>,
    pub drop_rate: Option<f64>,
    pub applied_drop_rate: Option<f64>,
    pub applied_fail_rate: Option<f64>,
    pub late_apply_rate: Option<f64>,
    pub late_apply_ms: Option<u64>,
    pub latency_ms: Option<u64>,
    pub allow_duplicate_references: Option<bool>,
    /// `Some(None)` (JSON `null`) opens the gate; `Some(rule)` sets a new one. Either releases
    /// the requests held so far.
    #[serde(default, deserialize_with = "given")]
    pub hold: Option<Option<Hold>>,
}

/// A key given as `null` is `Some(None)`, told apart from a key not given (`None`).
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Hold>>, D::Error> {
    Option::<Hold>::deserialize(d).map(Some)
}

impl FaultSettings {
    /// Applies `update` whole, or — when any value is out of range — not at all.
    pub fn update(&mut self, update: &FaultUpdate) -> Result<(), String> {
        let mut next = self.clone();
        let f = &mut next.faults;
        let keep = |given: Option<f64>, current: f64| given.unwrap_or(current);
        f.fail_rate = keep(update.fail_rate, f.fail_rate);
        f.throttle_rate = keep(update.throttle_rate, f.throttle_rate);
        f.retry_after_secs = update.retry_after_secs.unwrap_or(f.retry_after_secs);
        f.drop_rate = keep(update.drop_rate, f.drop_rate);
        f.applied_drop_rate = keep(update.applied_drop_rate, f.applied_drop_rate);
        f.applied_fail_rate = keep(update.applied_fail_rate, f.applied_fail_rate);
        f.late_apply_rate = keep(update.late_apply_rate, f.late_apply_rate);
        f.late_apply_ms = update.late_apply_ms.unwrap_or(f.late_apply_ms);
        next.latency_ms = update.latency_ms.unwrap_or(next.latency_ms);
        next.allow_duplicate_references = update
            .allow_duplicate_references
            .unwrap_or(next.allow_duplicate_references);
        if let Some(hold) = &update.hold {
            next.hold = hold.clone();
        }
        next.check()?;
        *self = next;
        Ok(())
    }

    /// Every rate within 0..=1, every delay within [`MAX_DELAY_MS`] and the `Retry-After`
    /// within [`MAX_RETRY_AFTER_SECS`]; the error names the first setting out of range.
    pub fn check(&self) -> Result<(), String> {
        let f = &self.faults;
        let rates = [
            ("fail_rate", f.fail_rate),
            ("throttle_rate", f.throttle_rate),
            ("drop_rate", f.drop_rate),
            ("applied_drop_rate", f.applied_drop_rate),
            ("applied_fail_rate", f.applied_fail_rate),
            ("late_apply_rate", f.late_apply_rate),
        ];
        for (name, rate) in rates {
            check_rate(name, rate)?;
        }
        check_delay("latency_ms", self.latency_ms)?;
        check_delay("late_apply_ms", f.late_apply_ms)?;
        check_retry_after("retry_after_secs", f.retry_after_secs)?;
        self.hold.as_ref().map_or(Ok(()), Hold::check)
    }
}

/// A rate is a probability: within 0..=1, so never NaN nor infinite either.
pub fn check_rate(name: &str, rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!(
            "{name} must be between 0 and 1, not {}",
            super::shown(rate)
        ))
    }
}

pub fn check_retry_after(name: &str, secs: u64) -> Result<(), String> {
    if secs <= MAX_RETRY_AFTER_SECS {
        Ok(())
    } else {
        Err(format!(
            "{name} must be between 0 and {MAX_RETRY_AFTER_SECS} seconds, not {secs}"
        ))
    }
}

/// The keys `POST /_sim/faults` takes and their ranges, said after a body it could not read, so
/// that a value of the wrong type (or beyond what a number can hold) gets them with the
/// parser's words.
pub fn fault_ranges() -> String {
    format!(
        "the rates fail_rate, throttle_rate, drop_rate, applied_drop_rate, applied_fail_rate and \
         late_apply_rate between 0 and 1; latency_ms and late_apply_ms whole milliseconds \
         between 0 and {MAX_DELAY_MS}; retry_after_secs whole seconds between 0 and \
         {MAX_RETRY_AFTER_SECS}; allow_duplicate_references true or false; hold null or \
         {{\"method\": <GET, POST…, optional>, \"prefix\": \"/j/…\", \"after\": <count, optional>}}"
    )
}

pub fn check_delay(name: &str, ms: u64) -> Result<(), String> {
    if ms <= MAX_DELAY_MS {
        Ok(())
    } else {
        Err(format!(
            "{name} must be between 0 and {MAX_DELAY_MS} milliseconds, not {ms}"
        ))
    }
}

/// Marks a response that must never reach the client: the connection is closed instead.
#[derive(Clone, Copy, Debug)]
pub struct DropConnection;

/// A fault injected into one request, as the request log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectedFault {
    Fail,
    Throttle,
    Drop,
    AppliedDrop,
    AppliedFail,
    LateApply,
}

impl InjectedFault {
    pub fn as_str(self) -> &'static str {
        match self {
            InjectedFault::Fail => "fail",
            InjectedFault::Throttle => "throttle",
            InjectedFault::Drop => "drop",
            InjectedFault::AppliedDrop => "applied_drop",
            InjectedFault::AppliedFail => "applied_fail",
            InjectedFault::LateApply => "late_apply",
        }
    }
}

/// One `/j/` request as the simulator saw it (`GET /_sim/requests`, `SimHandle::requests`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestRecord {
    pub seq: u64,
    /// Simulated time the request arrived.
    pub at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The status answered; 0 when the connection was dropped instead.
    pub status: u16,
    pub dropped: bool,
    /// The fault injected, if any: `fail`, `throttle`, `drop`, `applied_drop`, `applied_fail`
    /// or `late_apply`.
    pub fault: Option<InjectedFault>,
    /// For a create (`POST /j/jobs/bulk/create`, `POST /j/jobs`): the `reference` of each item
    /// that has one, in order, whatever became of the request — so that a test can count how
    /// often each reference was sent. Empty for every other request.
    pub references: Vec<String>,
}

/// The most recent requests (bounded, so a long demo does not grow without end), and the
/// cumulative counts of [`SimStats`], which neither the bound nor a reset of the log forgets.
#[derive(Debug, Default)]
pub struct RequestLog {
    entries: VecDeque<RequestRecord>,
    next_seq: u64,
    /// Faults injected since the simulator started, by `InjectedFault::as_str`.
    faults: std::collections::BTreeMap<&'static str, u64>,
}

/// What the simulator has served since it started (`GET /_sim/stats`, `SimHandle::stats`):
/// every `/j/` request counted once when it was answered (or dropped), and the faults injected
/// into them by kind — cumulative, unlike the request log, which keeps only the last 100,000
/// entries and which `POST /_sim/reset-log` empties. A soak that runs for hours reads its totals
/// here. Kinds never injected are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    pub requests: u64,
    /// `fail`, `throttle`, `drop`, `applied_drop`, `applied_fail`, `late_apply` → count.
    pub faults: std::collections::BTreeMap<String, u64>,
}

const LOG_CAPACITY: usize = 100_000;

impl RequestLog {
    fn push(&mut self, mut entry: RequestRecord) {
        self.next_seq += 1;
        if let Some(fault) = entry.fault {
            *self.faults.entry(fault.as_str()).or_default() += 1;
        }
        entry.seq = self.next_seq;
        if self.entries.len() == LOG_CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    pub fn entries(&self) -> Vec<RequestRecord> {
        self.entries.iter().cloned().collect()
    }

    /// The cumulative counts (not reset by [`RequestLog::clear`]).
    pub fn stats(&self) -> SimStats {
        SimStats {
            requests: self.next_seq,
            faults: self
                .faults
                .iter()
                .map(|(kind, n)| ((*kind).to_string(), *n))
                .collect(),
        }
    }

    /// Forgets every entry (the cumulative counts stay); answers how many there were.
    pub fn clear(&mut self) -> usize {
        let cleared = self.entries.len();
        self.entries.clear();
        cleared
    }
}

/// Middleware of the `/j/` routes: references noted, latency, the gate (`hold`), then the
/// faults drawn before the route, then the route itself (now or late), then the faults drawn
/// after it, then logging.
pub async fn inject(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    let mut entry = arriving(&sim, &request);
    let request = if request.method() == Method::POST && is_create(&entry.path) {
        match buffered(request).await {
            Ok((request, body)) => {
                entry.references = references(&entry.path, &body);
                request
            }
            Err(refused) => return logged(&sim, entry, refused),
        }
    } else {
        request
    };
    let latency_ms = lock(&sim.faults).latency_ms;
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }
    // The rule is read and the request caught under the faults lock, so that a release cannot
    // slip in between and leave the request held by a rule already gone.
    let (faults, ticket) = {
        let settings = lock(&sim.faults);
        let ticket = sim.gate.catch(
            settings.hold.as_ref(),
            &entry.method,
            &entry.path,
            entry.query.as_deref(),
        );
        (settings.faults, ticket)
    };
    let Some(mut ticket) = ticket else {
        return faulted(sim, entry, request, next, faults).await;
    };
    // Held: the rest runs in a task of its own that holds the whole body, so that a request the
    // API received is applied once released even if its client has gone meanwhile.
    let request = match buffered(request).await {
        Ok((request, _)) => request,
        Err(refused) => return logged(&sim, entry, refused),
    };
    let task = tokio::spawn(async move {
        ticket.released().await;
        // The faults as they are now: a test clears them before it releases.
        let faults = lock(&sim.faults).faults;
        let response = faulted(sim, entry, request, next, faults).await;
        drop(ticket);
        response
    });
    task.await.unwrap_or_else(|_| {
        fault_answer(StatusCode::INTERNAL_SERVER_ERROR, "the held request failed")
    })
}

/// The faults drawn before the route, the route (now or late), the faults drawn after it.
async fn faulted(
    sim: Arc<Sim>,
    mut entry: RequestRecord,
    request: Request,
    next: Next,
    faults: Faults,
) -> Response {
    let is_post = entry.method == Method::POST.as_str();
    if let Some((fault, response)) = before_applying(&sim, &faults) {
        entry.fault = Some(fault);
        return logged(&sim, entry, response);
    }
    if is_post && draw(&sim, faults.late_apply_rate) {
        entry.fault = Some(InjectedFault::LateApply);
        return late_apply(sim, entry, request, next, faults.late_apply_ms).await;
    }
    let mut response = next.run(request).await;
    if is_post && draw(&sim, faults.applied_drop_rate) {
        entry.fault = Some(InjectedFault::AppliedDrop);
        response = dropped();
    } else if is_post && draw(&sim, faults.applied_fail_rate) {
        entry.fault = Some(InjectedFault::AppliedFail);
        response = bad_gateway();
    }
    logged(&sim, entry, response)
}

/// The log entry of a request that just arrived, before anything is known of its fate.
fn arriving(sim: &Sim, request: &Request) -> RequestRecord {
    // Under `nest("/j")` the request's own URI has lost its prefix; log the path as sent.
    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().clone(), |original| original.0.clone());
    RequestRecord {
        seq: 0,
        at: sim.clock.now(),
        method: request.method().to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        status: 0,
        dropped: false,
        fault: None,
        references: Vec::new(),
    }
}

/// Draws one fault of probability `rate`; a rate of 0 draws nothing, so that adding a kind of
/// fault leaves the sequence of the others (and seeded runs) unchanged.
fn draw(sim: &Sim, rate: f64) -> bool {
    rate > 0.0 && sim.rng().gen_bool(rate.min(1.0))
}

/// The faults that answer instead of the route: nothing is applied.
fn before_applying(sim: &Sim, faults: &Faults) -> Option<(InjectedFault, Response)> {
    if draw(sim, faults.drop_rate) {
        Some((InjectedFault::Drop, dropped()))
    } else if draw(sim, faults.fail_rate) {
        let response = fault_answer(StatusCode::INTERNAL_SERVER_ERROR, "simulated server error");
        Some((InjectedFault::Fail, response))
    } else if draw(sim, faults.throttle_rate) {
        let mut response = fault_answer(StatusCode::TOO_MANY_REQUESTS, "simulated throttling");
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(faults.retry_after_secs),
        );
        Some((InjectedFault::Throttle, response))
    } else {
        None
    }
}

/// A slow commit: the route runs `delay_ms` from now in a task of its own, and the answer waits
/// for it. Hyper drops this handler's future when the client closes the connection; the task,
/// which holds the whole body, applies and logs the request all the same, as a database that
/// was already committing would.
async fn late_apply(
    sim: Arc<Sim>,
    entry: RequestRecord,
    request: Request,
    next: Next,
    delay_ms: u64,
) -> Response {
    let request = match buffered(request).await {
        Ok((request, _)) => request,
        Err(refused) => return logged(&sim, entry, refused),
    };
    let pending = PendingLateApply::start(sim.clone());
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let response = next.run(request).await;
        let response = logged(&sim, entry, response);
        drop(pending);
        response
    });
    task.await.unwrap_or_else(|_| {
        fault_answer(StatusCode::INTERNAL_SERVER_ERROR, "the slow commit failed")
    })
}

/// Counts a late apply from its start until it was applied and logged (or its task ended
/// otherwise), so that a test can wait for every slow commit to land.
struct PendingLateApply(Arc<Sim>);

impl PendingLateApply {
    fn start(sim: Arc<Sim>) -> Self {
        sim.late_applies.fetch_add(1, Ordering::SeqCst);
        PendingLateApply(sim)
    }
}

impl Drop for PendingLateApply {
    fn drop(&mut self) {
        self.0.late_applies.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Records `response` in the entry and the entry in the log; answers the response.
fn logged(sim: &Sim, mut entry: RequestRecord, response: Response) -> Response {
    entry.dropped = response.extensions().get::<DropConnection>().is_some();
    entry.status = if entry.dropped {
        0
    } else {
        response.status().as_u16()
    };
    tracing::debug!(
        method = %entry.method,
        path = %entry.path,
        status = entry.status,
        fault = entry.fault.map(InjectedFault::as_str),
        "api request"
    );
    lock(&sim.log).push(entry);
    response
}

fn is_create(path: &str) -> bool {
    matches!(path, "/j/jobs/bulk/create" | "/j/jobs")
}

/// The request with its whole body read, and the body; a body too large for the API (or cut
/// short) is answered as the route would.
async fn buffered(request: Request) -> Result<(Request, Bytes), Response> {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => Ok((Request::from_parts(parts, Body::from(bytes.clone())), bytes)),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body could not be read whole: {e}"),
        )),
    }
}

/// Only an item's `reference`, borrowed as raw JSON: the rest of the item is skipped, not
/// decoded, which keeps the log cheap in a push of 100,000 creates.
#[derive(Deserialize)]
struct ItemReference<'a> {
    #[serde(borrow)]
    reference: Option<&'a RawValue>,
}

/// The string references of a create's items (a bulk array, or one object for `/j/jobs`); an
/// item without one, or a body the API will refuse anyway, adds nothing.
fn references(path: &str, body: &[u8]) -> Vec<String> {
    let items: Vec<ItemReference> = if path == "/j/jobs" {
        serde_json::from_slice(body).map_or_else(|_| Vec::new(), |item| vec![item])
    } else {
        serde_json::from_slice(body).unwrap_or_default()
    };
    items
        .iter()
        .filter_map(|item| serde_json::from_str(item.reference?.get()).ok())
        .collect()
}

fn dropped() -> Response {
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(DropConnection);
    response
}

fn fault_answer(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

/// A gateway's own page (nginx's), not the API's JSON: a client must not expect to decode it.
const BAD_GATEWAY_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
    <center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

fn bad_gateway() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html")],
        BAD_GATEWAY_PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_replaces_only_what_it_gives() {
        let mut settings = FaultSettings {
            faults: Faults {
                fail_rate: 0.5,
                retry_after_secs: 1,
                ..Faults::default()
            },
            latency_ms: 20,
            ..FaultSettings::default()
        };
        let update: FaultUpdate =
            serde_json::from_str(r#"{"throttle_rate": 1.0, "retry_after_secs": 7}"#).unwrap();
        settings.update(&update).unwrap();
        assert_eq!(settings.faults.fail_rate, 0.5);
        assert_eq!(settings.faults.throttle_rate, 1.0);
        assert_eq!(settings.faults.retry_after_secs, 7);
        assert_eq!(settings.latency_ms, 20);
        let bad: FaultUpdate = serde_json::from_str(r#"{"drop_rate": 1.5}"#).unwrap();
        assert!(settings.update(&bad).unwrap_err().contains("drop_rate"));
        assert_eq!(settings.faults.drop_rate, 0.0);
        assert!(serde_json::from_str::<FaultUpdate>(r#"{"fail": 1}"#).is_err());
        let allow: FaultUpdate =
            serde_json::from_str(r#"{"allow_duplicate_references": true}"#).unwrap();
        settings.update(&allow).unwrap();
        assert!(settings.allow_duplicate_references);
        assert_eq!(settings.faults.throttle_rate, 1.0);
    }

    #[test]
    fn new_faults_are_set_by_their_keys_and_checked() {
        let mut settings = FaultSettings::default();
        let update: FaultUpdate = serde_json::from_str(
            r#"{"applied_fail_rate": 0.25, "late_apply_rate": 1, "late_apply_ms": 1500,
                "allow_duplicate_references": true}"#,
        )
        .unwrap();
        settings.update(&update).unwrap();
        let f = settings.faults;
        assert_eq!((f.applied_fail_rate, f.late_apply_rate), (0.25, 1.0));
        assert_eq!(f.late_apply_ms, 1500);
        assert!(settings.allow_duplicate_references);
        let shown = serde_json::to_value(&settings).unwrap();
        assert_eq!(shown["late_apply_ms"], 1500);
        assert_eq!(shown["allow_duplicate_references"], true);
        for (bad, named) in [
            (r#"{"applied_fail_rate": -0.1}"#, "applied_fail_rate"),
            (r#"{"late_apply_rate": 2}"#, "late_apply_rate"),
            (r#"{"late_apply_ms": 600001}"#, "late_apply_ms"),
            (r#"{"latency_ms": 600001, "fail_rate": 0.5}"#, "latency_ms"),
            (r#"{"retry_after_secs": 86401}"#, "retry_after_secs"),
        ] {
            let update: FaultUpdate = serde_json::from_str(bad).unwrap();
            let err = settings.update(&update).unwrap_err();
            assert!(err.contains(named), "{bad}: {err}");
        }
        // A refused update changes nothing, not even its valid keys.
        assert_eq!(settings.faults.fail_rate, 0.0);
        assert_eq!(settings.faults.late_apply_ms, 1500);
        let most: FaultUpdate =
            serde_json::from_str(r#"{"latency_ms": 600000, "late_apply_ms": 0}"#).unwrap();
        settings.update(&most).unwrap();
        assert!(
            serde_json::from_str::<FaultUpdate>(r#"{"allow_duplicate_references": 1}"#).is_err()
        );
    }

    #[test]
    fn references_of_creates_are_read_and_nothing_else() {
        let bulk = br#"[{"campaign": 28, "reference": "a", "data": {"reference": "x"}},
                        {"campaign": 28}, {"reference": "b\u00e9", "name": "N"},
                        {"reference": null}]"#;
        assert_eq!(references("/j/jobs/bulk/create", bulk), ["a", "b\u{e9}"]);
        let one = br#"{"campaign": 28, "reference": "solo"}"#;
        assert_eq!(references("/j/jobs", one), ["solo"]);
        assert!(references("/j/jobs/bulk/create", b"not json").is_empty());
        assert!(references("/j/jobs/bulk/create", one).is_empty());
        // A reference that is not a string is the API's to refuse; it is not listed.
        assert!(references("/j/jobs", br#"{"reference": 7}"#).is_empty());
        assert!(is_create("/j/jobs") && is_create("/j/jobs/bulk/create"));
        assert!(!is_create("/j/jobs/bulk/patch") && !is_create("/j/jobs/1/unqueue"));
    }

    #[test]
    fn the_log_is_bounded_and_numbered() {
        let mut log = RequestLog::default();
        let entry = RequestRecord {
            seq: 0,
            at: Utc::now(),
            method: "GET".into(),
            path: "/j/jobs".into(),
            query: None,
            status: 200,
            dropped: false,
            fault: None,
            references: Vec::new(),
        };
        for _ in 0..LOG_CAPACITY + 3 {
            log.push(entry.clone());
        }
        let entries = log.entries();
        assert_eq!(entries.len(), LOG_CAPACITY);
        assert_eq!(entries[0].seq, 4);
        assert_eq!(entries.last().unwrap().seq, LOG_CAPACITY as u64 + 3);
    }

    #[test]
    fn stats_are_cumulative_beyond_the_log_and_its_reset() {
        let mut log = RequestLog::default();
        let entry = |fault| RequestRecord {
            seq: 0,
            at: Utc::now(),
            method: "POST".into(),
            path: "/j/jobs/bulk/create".into(),
            query: None,
            status: 502,
            dropped: false,
            fault,
            references: Vec::new(),
        };
        log.push(entry(None));
        log.push(entry(Some(InjectedFault::AppliedFail)));
        log.push(entry(Some(InjectedFault::AppliedFail)));
        log.push(entry(Some(InjectedFault::Drop)));
        assert_eq!(log.clear(), 4);
        log.push(entry(Some(InjectedFault::LateApply)));
        let stats = log.stats();
        assert_eq!(stats.requests, 5);
        let faults: Vec<(&str, u64)> = stats.faults.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(
            faults,
            [("applied_fail", 2), ("drop", 1), ("late_apply", 1)]
        );
    }
}
