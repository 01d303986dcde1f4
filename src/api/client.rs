//! The Jobs API client: one place where requests are built, authenticated, rate-limited, retried,
//! counted and traced. The bulk helpers live in `bulk.rs`, the streaming listing in `listing.rs`.

use super::error::{ApiError, CrossOrigin, body_message, looks_like_html};
use super::limit::RateLimiter;
use super::listing::Listing;
use super::models::JobFields;
use super::retry::{RetryPolicy, parse_retry_after};
use super::token::{TokenProvider, TokenSource};
use crate::job::Job;
use crate::shutdown::StopFlag;
use crate::telemetry::ApiStats;
use crate::telemetry::Heartbeat;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{CONTENT_TYPE, DATE, RETRY_AFTER};
use reqwest::{Method, Response, Url};
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Everything the client needs, as typed values (the caller maps `api.*` settings onto it).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub base_url: Url,
    pub token: TokenSource,
    /// Per request, the whole answer included; for a listing (which may stream for minutes), the
    /// wait for the answer to start and the longest wait for each next complete job.
    pub timeout: Duration,
    pub max_attempts: u32,
    pub requests_per_second: f64,
    /// Bulk requests in flight at once.
    pub concurrency: usize,
    /// Items per bulk call (the API takes at most 1000).
    pub bulk_size: usize,
    pub retry_after_cap: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A stop request ends retries and backoff sleeps at once, and abandons requests still in
    /// flight at its deadline.
    pub stop: StopFlag,
    /// Beaten on every answer received: the daemon's liveness reads it.
    pub heartbeat: Heartbeat,
    /// `api.max_date_skew_secs`: a `Date` header further than this from both the local clock
    /// and the API's last good `Date` is not believed (see [`ApiClient::server_now`]).
    pub max_date_skew: Duration,
    /// `sync.listing_deadline_secs`: the longest a whole listing may take from its request,
    /// however fast its jobs still come (see [`Listing`]).
    pub listing_deadline: Duration,
}

impl ClientOptions {
    /// The options with docs/contract.md §2's defaults.
    pub fn new(base_url: Url, token: TokenSource) -> Self {
        ClientOptions {
            base_url,
            token,
            timeout: Duration::from_secs(30),
            max_attempts: 8,
            requests_per_second: 10.0,
            concurrency: 4,
            bulk_size: 1000,
            retry_after_cap: Duration::from_secs(60),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            stop: StopFlag::default(),
            heartbeat: Heartbeat::default(),
            max_date_skew: Duration::from_secs(86_400),
            listing_deadline: Duration::from_secs(1800),
        }
    }

    fn validate(&self) -> Result<(), ApiError> {
        let bad = |what: String| Err(ApiError::Config(what));
        if !matches!(self.base_url.scheme(), "http" | "https") {
            return bad(format!(
                "`api.base_url` {} must start with http:// or https://",
                crate::secret::api_url::redact_url(&self.base_url)
            ));
        }
        if self.max_attempts == 0 {
            return bad("`api.max_attempts` must be at least 1".into());
        }
        if self.requests_per_second.is_nan() || self.requests_per_second <= 0.0 {
            return bad(format!(
                "`api.requests_per_second` must be positive, not {}",
                self.requests_per_second
            ));
        }
        if self.concurrency == 0 {
            return bad("`api.concurrency` must be at least 1".into());
        }
        if !(1..=1000).contains(&self.bulk_size) {
            return bad(format!(
                "`api.bulk_size` must be between 1 and 1000 (the API's maximum), not {}",
                self.bulk_size
            ));
        }
        if self.timeout.is_zero() {
            return bad("`api.timeout_secs` must be positive".into());
        }
        Ok(())
    }
}

/// What a listing asks for; at least one of the two must be set (the API's rule).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ListQuery {
    pub campaign: Option<i64>,
    pub modified_since: Option<DateTime<Utc>>,
}

/// The Jobs API client. Cheap to clone: clones share the connection pool, rate limit, bulk slots
/// and statistics.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    http: reqwest::Client,
    base_url: Url,
    timeout: Duration,
    token: TokenProvider,
    limiter: RateLimiter,
    pub(super) bulk_slots: Semaphore,
    pub(super) bulk_size: usize,
    concurrency: usize,
    pub(super) policy: RetryPolicy,
    pub(super) stats: ApiStats,
    pub(super) stop: StopFlag,
    heartbeat: Heartbeat,
    /// The API's clock: the `Date` of its most recent plausible answer, and when that answer
    /// came.
    server_clock: std::sync::Mutex<Option<(DateTime<Utc>, Instant)>>,
    /// The API's time as last stored (the last good pull, on the API's clock), for a process
    /// that has no `Date` of its own yet to judge the first one against.
    known_time: std::sync::Mutex<Option<DateTime<Utc>>>,
    max_date_skew: chrono::Duration,
    listing_deadline: Duration,
}

/// One API route: `label` is the low-cardinality name used in statistics, `name` the concrete
/// method and path used in logs and errors.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) label: &'static str,
    pub(super) name: String,
    method: Method,
    path: String,
}

impl Endpoint {
    pub(super) fn new(label: &'static str, method: Method, path: String) -> Self {
        Endpoint {
            label,
            name: format!("{method} {path}"),
            method,
            path,
        }
    }
}

impl ApiClient {
    pub fn new(opts: ClientOptions) -> Result<Self, ApiError> {
        opts.validate()?;
        warn_if_unencrypted(&opts.base_url);
        let token = TokenProvider::new(opts.token.clone())?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("jobsync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.timeout)
            .read_timeout(opts.timeout)
            .redirect(redirect_policy(&opts.base_url))
            .build()
            .map_err(|e| ApiError::Config(format!("cannot build the HTTP client: {e}")))?;
        let policy = RetryPolicy::new(
            opts.max_attempts,
            opts.min_backoff,
            opts.max_backoff,
            opts.retry_after_cap,
        );
        Ok(ApiClient {
            inner: Arc::new(Inner {
                http,
                base_url: opts.base_url,
                timeout: opts.timeout,
                token,
                limiter: RateLimiter::new(opts.requests_per_second),
                bulk_slots: Semaphore::new(opts.concurrency),
                bulk_size: opts.bulk_size,
                concurrency: opts.concurrency,
                policy,
                stats: ApiStats::default(),
                stop: opts.stop,
                heartbeat: opts.heartbeat,
                server_clock: std::sync::Mutex::new(None),
                known_time: std::sync::Mutex::new(None),
                max_date_skew: chrono::Duration::from_std(opts.max_date_skew)
                    .unwrap_or(chrono::Duration::MAX),
                listing_deadline: opts.listing_deadline,
            }),
        })
    }

    /// Items per bulk call: callers that pipeline their own chunks cut them to this size, so
    /// that no call is split further.
    pub fn bulk_size(&self) -> usize {
        self.inner.bulk_size
    }

    /// Bulk calls in flight at once.
    pub fn concurrency(&self) -> usize {
        self.inner.concurrency
    }

    pub fn stats(&self) -> &ApiStats {
        &self.inner.stats
    }

    /// The heartbeat this client beats on every answer; the engine beats it too when it commits
    /// (one heartbeat per cycle's engine, read by `/healthz`).
    pub fn heartbeat(&self) -> &Heartbeat {
        &self.inner.heartbeat
    }

    /// The stop request this client honours.
    pub fn stop_flag(&self) -> &StopFlag {
        &self.inner.stop
    }

    /// The per-request timeout: a create left unanswered this long may still be committed, so
    /// a lookup waits at least this long after the send.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The API's clock now, estimated from the `Date` header of its most recent answer plus the
    /// time elapsed since (`Date` has whole seconds: the estimate may lag by up to one), or
    /// `None` before any answer carried one.
    pub fn server_now(&self) -> Option<DateTime<Utc>> {
        let clock = *self
            .inner
            .server_clock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        clock.map(|(date, seen)| {
            date + chrono::Duration::from_std(seen.elapsed()).unwrap_or_default()
        })
    }

    /// [`Self::server_now`], asking the API (one cheap listing of the last minute's changes) when
    /// no answer has told it yet. Any answer with a `Date` will do, even a refusal.
    pub async fn server_time(&self) -> Result<DateTime<Utc>, ApiError> {
        if let Some(now) = self.server_now() {
            return Ok(now);
        }
        match self.check().await {
            Ok(()) => {}
            Err(e) if e.is_auth() => return Err(e),
            // A refusal still told the time; no answer at all did not.
            Err(e) if self.server_now().is_none() => return Err(e),
            Err(e) => tracing::debug!(error = %e, "asking the API's time"),
        }
        self.server_now().ok_or_else(|| ApiError::InvalidAnswer {
            endpoint: "GET /j/jobs".into(),
            detail: "no answer carried a plausible `Date` header, so the API's clock is unknown"
                .into(),
        })
    }

    /// Tells the client the API's time as last stored (e.g. the last good pull): the first
    /// `Date` of a new process is judged against it as well as against the local clock.
    pub fn know_time(&self, at: DateTime<Utc>) {
        *self
            .inner
            .known_time
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    /// The answer's `Date`, if it has one that is plausible: within `api.max_date_skew_secs` of
    /// the local clock, or of the API's clock as known so far (its last good `Date` moved on by
    /// the time since, else the time last stored). With nothing known, any `Date` is taken: the
    /// local clock may be the wrong one. An implausible `Date` (an API whose clock jumped to
    /// 2099 for a while) is counted and logged, and not used for any stamp.
    fn plausible_date(&self, response: &Response) -> Option<DateTime<Utc>> {
        let date = response
            .headers()
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
            .map(|d| d.with_timezone(&Utc))?;
        let bound = self.inner.max_date_skew;
        let near = |t: DateTime<Utc>| (date - t).abs() <= bound;
        let local = Utc::now();
        let known = self.server_now().or_else(|| {
            *self
                .inner
                .known_time
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        });
        if near(local) || known.is_none_or(near) {
            return Some(date);
        }
        self.inner.stats.record_implausible_date();
        tracing::warn!(
            date = %date.to_rfc3339(),
            local_clock = %local.to_rfc3339(),
            api_clock_known = %known.map(|k| k.to_rfc3339()).unwrap_or_default(),
            max_date_skew_secs = bound.num_seconds(),
            "the API's `Date` header is further than api.max_date_skew_secs from both the local \
             clock and the API's last good `Date`: not used for any stamp (the watermark, the \
             listings' and the last good pull's stay where they were)"
        );
        None
    }

    fn observe_date(&self, response: &Response) {
        if let Some(date) = self.plausible_date(response) {
            *self
                .inner
                .server_clock
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((date, Instant::now()));
        }
    }

    /// Starts a listing: the request is retried until the answer starts; the jobs are then decoded
    /// as they arrive with [`Listing::next_batch`].
    pub async fn list_jobs(&self, q: ListQuery) -> Result<Listing, ApiError> {
        let ep = Endpoint::new("GET /j/jobs", Method::GET, "/j/jobs".into());
        let mut query = Vec::new();
        if let Some(campaign) = q.campaign {
            query.push(("campaign", campaign.to_string()));
        }
        if let Some(since) = q.modified_since {
            query.push(("modified_since", format_datetime(since)));
        }
        let asked = Instant::now();
        let response = self
            .inner
            .policy
            .run(
                &ep.name,
                &self.inner.stats,
                &self.inner.stop,
                ApiError::is_retryable,
                |n| self.send_once(&ep, &query, None, n, false),
            )
            .await
            // A 404 on a campaign's listing speaks of the campaign (archived, deleted), not of
            // the address: the listing exists, the campaign does not.
            .map_err(|e| match q.campaign {
                None => self.listing_not_found(&ep, e),
                Some(_) => e,
            })?;
        if let Some(kind) = content_type(&response).filter(|t| t.contains("html")) {
            return Err(ApiError::InvalidAnswer {
                endpoint: ep.name,
                detail: format!(
                    "got an HTML page ({kind}) instead of a JSON array of jobs (is \
                     `api.base_url` the Jobs API, not a proxy or login page?)"
                ),
            });
        }
        // Only a `Date` the client believed (it is then the API's clock as known now).
        let server_date = response
            .headers()
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
            .map(|d| d.with_timezone(&Utc))
            .filter(|d| {
                self.server_now()
                    .is_some_and(|now| (now - *d).abs() <= chrono::Duration::seconds(60))
            });
        Ok(Listing::new(
            ep.name,
            server_date,
            response,
            self.inner.stop.clone(),
            self.inner.timeout,
            self.inner.heartbeat.clone(),
        )
        .with_deadline(asked, self.inner.listing_deadline))
    }

    /// A 404 on the listing means no listing lives at that address: `api.base_url` names
    /// something else than the API root (a path too many, or too few). (On `GET /j/jobs/:id` a
    /// 404 means an unknown job, and says nothing about the base URL.)
    fn listing_not_found(&self, ep: &Endpoint, e: ApiError) -> ApiError {
        match e {
            ApiError::Http {
                endpoint,
                status: 404,
                message,
                retry_after,
            } => {
                // Credentials in a base URL stay out of messages.
                let asked = crate::secret::api_url::redact_url(&self.url(&ep.path));
                ApiError::Http {
                    endpoint,
                    status: 404,
                    message: format!(
                        "{message} — there is no listing at {}, so api.base_url is likely wrong: it \
                     should be the API root, e.g. https://api.example.com (jobsync appends {})",
                        asked, ep.path
                    ),
                    retry_after,
                }
            }
            other => other,
        }
    }

    pub async fn get_job(&self, id: i64) -> Result<Job, ApiError> {
        let ep = Endpoint::new("GET /j/jobs/:id", Method::GET, format!("/j/jobs/{id}"));
        self.call_json::<Job>(&ep, None, ApiError::is_retryable, "the job")
            .await
            .map(Job::truncated_to_micros)
    }

    /// Creates one job. Re-sent only when the API surely did not apply it (connect error, 429,
    /// 5xx); on a timeout or broken connection the error is returned at once, and the caller must
    /// treat the outcome as unknown (`ApiError::surely_not_applied` is false).
    pub async fn create_job(&self, fields: &JobFields) -> Result<Job, ApiError> {
        let ep = Endpoint::new("POST /j/jobs", Method::POST, "/j/jobs".into());
        let body = to_body(&ep, fields)?;
        self.call_json::<Job>(&ep, Some(body), retry_create, "the created job")
            .await
            .map(Job::truncated_to_micros)
    }

    pub async fn unqueue_job(&self, id: i64) -> Result<Job, ApiError> {
        let ep = Endpoint::new(
            "POST /j/jobs/:id/unqueue",
            Method::POST,
            format!("/j/jobs/{id}/unqueue"),
        );
        self.call_json::<Job>(&ep, None, ApiError::is_retryable, "the unqueued job")
            .await
            .map(Job::truncated_to_micros)
    }

    /// One cheap authenticated call, for `jobsync check` and for the API's clock: the jobs
    /// modified in the last minute, of which the first 1,000 are read and decoded — the rest is
    /// not needed to prove the token and the answer's shape, and an answer that never ends (an
    /// API that lies) must not hold a check or a cycle's start.
    pub async fn check(&self) -> Result<(), ApiError> {
        let since = Utc::now() - chrono::Duration::minutes(1);
        let mut listing = self
            .list_jobs(ListQuery {
                campaign: None,
                modified_since: Some(since),
            })
            .await?;
        listing.next_batch(1000).await?;
        Ok(())
    }

    /// A request whose whole answer is one JSON document, retried per `should_retry`.
    pub(super) async fn call_json<T: DeserializeOwned>(
        &self,
        ep: &Endpoint,
        body: Option<Bytes>,
        should_retry: fn(&ApiError) -> bool,
        what: &str,
    ) -> Result<T, ApiError> {
        let bytes = self.call_bytes(ep, body, should_retry).await?;
        decode_json(&ep.name, &bytes, what)
    }

    /// A request and its whole answer, retried per `should_retry`; the caller decodes it (an
    /// answer that does not decode is never retried, so decoding need not happen in here).
    pub(super) async fn call_bytes(
        &self,
        ep: &Endpoint,
        body: Option<Bytes>,
        should_retry: fn(&ApiError) -> bool,
    ) -> Result<Bytes, ApiError> {
        self.inner
            .policy
            .run(
                &ep.name,
                &self.inner.stats,
                &self.inner.stop,
                should_retry,
                |n| {
                    let body = body.clone();
                    async move {
                        let response = self.send_once(ep, &[], body, n, true).await?;
                        read_capped(&ep.name, response, self.inner.timeout).await
                    }
                },
            )
            .await
    }

    /// One attempt: waits for the rate limit, sends, counts and traces it, and turns an error
    /// status into an [`ApiError`]. With `whole_timeout` the timeout covers the body too; without
    /// (a streamed listing), only the wait for the answer to start.
    async fn send_once(
        &self,
        ep: &Endpoint,
        query: &[(&str, String)],
        body: Option<Bytes>,
        attempt: u32,
        whole_timeout: bool,
    ) -> Result<Response, ApiError> {
        let inner = &self.inner;
        inner.limiter.acquire().await;
        let token = inner.token.current()?;
        let mut request = inner
            .http
            .request(ep.method.clone(), self.url(&ep.path))
            .bearer_auth(token.expose())
            .query(query);
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        if whole_timeout {
            request = request.timeout(inner.timeout);
        }
        let started = Instant::now();
        let sent = tokio::time::timeout(inner.timeout, request.send()).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let failure = match sent {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(ApiError::from_reqwest(&ep.name, &e, inner.timeout)),
            Err(_) => Err(ApiError::Timeout {
                endpoint: ep.name.clone(),
                timeout: inner.timeout,
            }),
        };
        let response = match failure {
            Ok(response) => response,
            Err(e) => {
                inner
                    .stats
                    .record_request(ep.label, None, started.elapsed());
                tracing::debug!(endpoint = %ep.name, status = "error", attempt, elapsed_ms, error = %e, "API request");
                return Err(e);
            }
        };
        let status = response.status().as_u16();
        inner.heartbeat.beat();
        self.observe_date(&response);
        inner
            .stats
            .record_request(ep.label, Some(status), started.elapsed());
        tracing::debug!(endpoint = %ep.name, status, attempt, elapsed_ms, "API request");
        if let Some(encoding) = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .filter(|e| !e.trim().eq_ignore_ascii_case("identity"))
        {
            // jobsync asks for no compression and decodes none: a compressed body would only
            // show as binary garbage in a decode error.
            return Err(ApiError::InvalidAnswer {
                endpoint: ep.name.clone(),
                detail: format!(
                    "the answer is compressed (Content-Encoding: {}), which jobsync did not ask \
                     for and does not decode; a proxy between jobsync and the API may be \
                     compressing it",
                    encoding.escape_debug()
                ),
            });
        }
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(error_answer(&ep.name, response).await)
        }
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.inner.base_url.clone();
        let joined = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }
}

/// Same-origin redirects followed at most, as reqwest's default policy.
const MAX_REDIRECTS: usize = 10;

/// Follows a redirect within the origin of the request (at most [`MAX_REDIRECTS`]), and refuses
/// one to another origin with a [`CrossOrigin`] error that names both and the `api.base_url` to
/// set: the token is for `api.base_url`'s origin only (reqwest drops `Authorization` on a hop to
/// another host, so the other origin would answer 401 and the error would blame the token).
fn redirect_policy(base_url: &Url) -> reqwest::redirect::Policy {
    let base_path = base_url.path().trim_end_matches('/').to_owned();
    reqwest::redirect::Policy::custom(move |attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.follow();
        };
        let (from, to) = (first.origin(), attempt.url().origin());
        if from != to {
            let refused = CrossOrigin {
                status: attempt.status().as_u16(),
                from: from.ascii_serialization(),
                to: to.ascii_serialization(),
                suggested: suggested_base_url(&base_path, first, attempt.url()),
            };
            return attempt.error(refused);
        }
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        attempt.follow()
    })
}

/// The `api.base_url` a request to `first` redirected to `next` suggests: `next`'s origin and
/// its path without the endpoint's own (`/j/jobs`), when it ends with it — the API's root at
/// the other origin. Never credentials nor a query.
fn suggested_base_url(base_path: &str, first: &Url, next: &Url) -> String {
    let origin = next.origin().ascii_serialization();
    let endpoint = first.path().strip_prefix(base_path).unwrap_or_default();
    match next.path().strip_suffix(endpoint) {
        Some(root) if !endpoint.is_empty() => format!("{origin}{}", root.trim_end_matches('/')),
        _ => origin,
    }
}

/// The largest answer read whole (a bulk answer, one job): a thousand jobs of 32 KiB each, far
/// above real ones; beyond it the request fails rather than take the memory.
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// Reads an answer's body, refusing one larger than [`MAX_ANSWER_BYTES`].
async fn read_capped(
    endpoint: &str,
    mut response: Response,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::InvalidAnswer {
        endpoint: endpoint.to_owned(),
        detail: format!(
            "the answer is larger than {} MiB, far beyond any real one",
            MAX_ANSWER_BYTES / (1024 * 1024)
        ),
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ApiError::from_reqwest(endpoint, &e, timeout))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A create is re-sent only when the API surely did not apply it.
pub(super) fn retry_create(err: &ApiError) -> bool {
    err.is_retryable() && err.surely_not_applied()
}

pub(super) fn to_body<T: serde::Serialize + ?Sized>(
    ep: &Endpoint,
    value: &T,
) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ApiError::InvalidAnswer {
            endpoint: ep.name.clone(),
            detail: format!("the request body could not be encoded: {e}"),
        })
}

/// Decodes a whole JSON answer, naming the field at fault.
pub(super) fn decode_json<T: DeserializeOwned>(
    endpoint: &str,
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    if looks_like_html(body) {
        return Err(ApiError::InvalidAnswer {
            endpoint: endpoint.to_owned(),
            detail: format!("got an HTML page instead of {what} as JSON"),
        });
    }
    let decode_error = |detail: String| ApiError::Decode {
        endpoint: endpoint.to_owned(),
        detail,
    };
    // Plain serde first; the path-tracking decoder only runs again to word an error (it costs
    // a good share of a bulk answer's decoding).
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| decode_error(describe_decode_error(&e, what)))?;
    de.end()
        .map_err(|e| decode_error(format!("{what}: unexpected data after the JSON value: {e}")))?;
    Ok(value)
}

/// "item 3 of the array (job 42), field `numbers[0]`: invalid type: integer, expected a string":
/// where, and what was expected, never the value — answers carry personal data (a phone number,
/// a name) and this text goes to the logs, `sync_runs.error` and `outbox.last_error`.
pub(super) fn describe_decode_error(
    err: &serde_path_to_error::Error<serde_json::Error>,
    what: &str,
) -> String {
    let path = err.path().to_string();
    let reason = without_value(err.inner());
    if path == "." || path.is_empty() {
        format!("{what}: {reason}")
    } else {
        format!("{what}, field `{path}`: {reason}")
    }
}

/// serde_json's message without the value it quotes: `invalid type: string "+33612345678",
/// expected a sequence` becomes `invalid type: string, expected a sequence`. Syntax errors
/// quote nothing; field names (`missing field `campaign``) come from jobsync's own types and
/// stay; anything else quoted is masked.
pub(super) fn without_value(err: &serde_json::Error) -> String {
    let text = err.to_string();
    if err.classify() != serde_json::error::Category::Data {
        return text;
    }
    for kind in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = text.strip_prefix(kind) {
            // The expectation comes last and from jobsync's types; the value before it may
            // contain anything, ", expected " included.
            return match rest.rsplit_once(", expected ") {
                Some((found, expected)) => {
                    let found = found.find(['`', '"']).map_or(found, |at| &found[..at]);
                    format!("{kind}{}, expected {expected}", found.trim())
                }
                None => format!("{kind}(value not shown)"),
            };
        }
    }
    if let Some(rest) = text.strip_prefix("unknown variant ")
        && let Some((_, expected)) = rest.rsplit_once(", expected ")
    {
        return format!("unknown variant, expected {expected}");
    }
    if [
        "missing field",
        "duplicate field",
        "unknown field",
        "invalid length",
    ]
    .iter()
    .any(|known| text.starts_with(known))
    {
        return text;
    }
    mask_quoted(&text)
}

/// Each `"…"` or `` `…` `` of a message replaced by `"…"` / `` `…` ``.
fn mask_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<char> = None;
    for c in text.chars() {
        match open {
            Some(quote) if c == quote => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    open = Some(c);
                }
            }
        }
    }
    out
}

async fn error_answer(endpoint: &str, response: Response) -> ApiError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()));
    // Only the start of an error body is read: its message is all that is kept.
    let mut response = response;
    let mut body = Vec::new();
    while body.len() < 64 * 1024 {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    // A gateway may echo the request, `Authorization` header included.
    let message = crate::secret::scrub(&body_message(&body));
    let endpoint = endpoint.to_owned();
    match status {
        401 | 403 => ApiError::Auth {
            endpoint,
            status,
            message,
        },
        _ => ApiError::Http {
            endpoint,
            status,
            message,
            retry_after,
        },
    }
}

fn content_type(response: &Response) -> Option<String> {
    let value = response.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.to_ascii_lowercase())
}

/// RFC 3339 in UTC with microseconds and `Z`, the precision the mirror keeps.
pub(super) fn format_datetime(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn warn_if_unencrypted(base_url: &Url) {
    if base_url.scheme() != "http" {
        return;
    }
    let host = base_url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        tracing::warn!(
            base_url = %crate::secret::api_url::redact_url(base_url),
            "api.base_url uses http:// to a remote host: the API token travels unencrypted; use https://"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn options(base: &str) -> ClientOptions {
        ClientOptions::new(base.parse().unwrap(), TokenSource::Static(Secret::new("t")))
    }

    #[test]
    fn formats_modified_since_with_microseconds_and_z() {
        let t = DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456789+02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_datetime(t), "2024-05-01T08:00:00.123456Z");
    }

    #[test]
    fn joins_paths_under_the_base_url() {
        let client = ApiClient::new(options("http://127.0.0.1:1/")).unwrap();
        assert_eq!(client.url("/j/jobs").as_str(), "http://127.0.0.1:1/j/jobs");
        let client = ApiClient::new(options("http://127.0.0.1:1/api/")).unwrap();
        assert_eq!(
            client.url("/j/jobs/3").as_str(),
            "http://127.0.0.1:1/api/j/jobs/3"
        );
    }

    #[test]
    fn a_cross_origin_redirect_suggests_the_api_root_at_the_other_origin() {
        let url = |s: &str| Url::parse(s).unwrap();
        let first = url("http://old.example:8080/api/j/jobs?modified_since=x");
        for (next, suggested) in [
            (
                "https://new.example/api/j/jobs?modified_since=x",
                "https://new.example/api",
            ),
            (
                "https://new.example:8443/v2/j/jobs",
                "https://new.example:8443/v2",
            ),
            ("https://new.example/j/jobs", "https://new.example"),
            (
                "https://u:p@new.example/login?next=/j",
                "https://new.example",
            ),
        ] {
            assert_eq!(
                suggested_base_url("/api", &first, &url(next)),
                suggested,
                "{next}"
            );
        }
        let first = url("http://old.example/j/jobs/42");
        assert_eq!(
            suggested_base_url("", &first, &url("https://old.example/j/jobs/42")),
            "https://old.example"
        );
    }

    #[test]
    fn refuses_bad_options() {
        let mut o = options("http://127.0.0.1:1");
        o.bulk_size = 1001;
        assert!(
            ApiClient::new(o)
                .unwrap_err()
                .to_string()
                .contains("api.bulk_size")
        );
        let mut o = options("http://127.0.0.1:1");
        o.requests_per_second = 0.0;
        assert!(ApiClient::new(o).is_err());
        let o = options("ftp://127.0.0.1:1");
        assert!(
            ApiClient::new(o)
                .unwrap_err()
                .to_string()
                .contains("api.base_url")
        );
    }

    #[test]
    fn decode_errors_say_what_was_found_and_expected_never_the_value() {
        let reason =
            |json: &str| without_value(&serde_json::from_str::<Job>(json).map(|_| ()).unwrap_err());
        let text = reason(r#"{"id": 1, "campaign": 2, "state": 0, "numbers": "+33612345678"}"#);
        assert!(
            text.starts_with("invalid type: string, expected a sequence"),
            "{text}"
        );
        let text = reason(r#"{"id": 1, "campaign": 2, "state": 0, "name": 33612345678}"#);
        assert!(
            text.starts_with("invalid type: integer, expected a string"),
            "{text}"
        );
        let text = reason(r#"{"id": 1, "campaign": 2, "state": "a, expected b"}"#);
        assert!(!text.contains("a, expected b"), "{text}");
        assert!(reason(r#"{"id": 1, "state": 0}"#).contains("missing field `campaign`"));
        assert_eq!(
            mask_quoted("bad `0612` and \"x\" here"),
            "bad `…` and \"…\" here"
        );
    }

    #[test]
    fn names_the_field_of_a_decode_error() {
        let err = decode_json::<Job>(
            "GET /j/jobs/1",
            br#"{"id": 1, "campaign": 2, "state": "x"}"#,
            "the job",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("GET /j/jobs/1") && text.contains("field `state`"),
            "{text}"
        );
        assert!(!text.contains("\"x\""), "never the value: {text}");
        let err = decode_json::<Job>("GET /j/jobs/1", b"<html>", "the job").unwrap_err();
        assert!(matches!(err, ApiError::InvalidAnswer { .. }), "{err}");
        let err = decode_json::<Job>(
            "GET /j/jobs/1",
            br#"{"id":1,"campaign":2,"state":0} x"#,
            "the job",
        )
        .unwrap_err();
        assert!(matches!(err, ApiError::Decode { .. }), "{err}");
    }
}
