//! The webhook sink (contract §8): the changefeed POSTed to `webhook.url` in `seq` order, in
//! batches of `webhook.batch_size`, as `{"changes": [...]}` (each element a line of `jobsync
//! changes`), signed per Standard Webhooks ([`sign`]).
//!
//! Exactly the push's discipline turned around:
//! - **Position.** The sink is the changefeed consumer `webhook` (`changefeed_consumers`). Before
//!   a batch is sent its range is recorded (`pending_last_seq`), so its `webhook-id`
//!   (`jobsync-<first seq>-<last seq>`) is the same at every retry, after a restart or a crash
//!   too; the position moves past it only after a 2xx. At least once, in order: a receiver keeps
//!   the ids (or the highest `seq`) it applied and acknowledges a repeat without applying it.
//! - **Retries.** Timeouts, connection failures, 408, 429 and 5xx are retried with backon's
//!   exponential backoff and jitter, a `Retry-After` being a floor (capped at 10 minutes), up to
//!   `webhook.max_attempts` tries. Any other answer (a 4xx, or a 3xx: redirects are never
//!   followed, only the configured URL is called) is a refusal.
//! - **Pause.** A refusal, or tries exhausted, pauses the sink (`paused_until`, `paused_reason`:
//!   the receiver's answer, scrubbed) for `webhook.pause_secs`, doubled at each pause in a row
//!   up to an hour; `/status`, `jobsync status`, `jobsync_webhook_paused` and a WARN say so. It
//!   resumes on its own, or at `jobsync webhook resume`, with the same batch.
//! - **Never in the sync's way.** It runs as a task of its own with its own HTTP client; a slow
//!   or dead receiver holds nothing a cycle needs.
//! - **One deliverer.** Only the holder of the webhook lock ([`SinkLock`]) delivers; replicas
//!   wait for it. A holder that lost its lock finds out before its next batch, and a commit of a
//!   position another process moved (a replay, a new holder) is refused.

pub mod sign;

use crate::config::WebhookConfig;
use crate::db::listen::ChangeListener;
use crate::db::lock::SinkLock;
use crate::db::models::ChangeRow;
use crate::db::repo::{changes, consumers};
use crate::db::{Db, DbError, Ts};
use crate::telemetry::RunState;
use backon::BackoffBuilder;
use sign::Signer;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The consumer whose position is the sink's.
pub const CONSUMER: &str = consumers::WEBHOOK;
/// The longest a pause grows to.
const PAUSE_CAP: Duration = Duration::from_secs(3600);
/// The longest a `Retry-After` is obeyed.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);
/// The first and longest backoff between tries of one batch.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an idle or paused sink looks again (new rows on SQLite, a resume, the lock).
const POLL: Duration = Duration::from_secs(1);
/// How often the holder checks that it still holds the webhook lock.
const LOCK_CHECK: Duration = Duration::from_secs(2);
/// How long a sink without the lock waits before trying it again.
const LOCK_RETRY: Duration = Duration::from_secs(5);
/// The most of a receiver's answer kept, for a refusal's reason.
const ANSWER_KEPT: usize = 300;

/// Why the sink cannot start.
pub fn check(config: &WebhookConfig) -> Result<(), String> {
    start_parts(config).map(|_| ())
}

fn start_parts(config: &WebhookConfig) -> Result<(reqwest::Url, Signer, reqwest::Client), String> {
    let url = reqwest::Url::parse(config.url.trim()).map_err(|e| format!("webhook.url: {e}"))?;
    let path = config
        .secret_file
        .as_deref()
        .ok_or("webhook.url is set but webhook.secret_file is not")?;
    let signer = Signer::new(path)?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(config.timeout_secs))
        .connect_timeout(Duration::from_secs(config.timeout_secs))
        .user_agent(concat!("jobsync/", env!("CARGO_PKG_VERSION"), " webhook"))
        .build()
        .map_err(|e| format!("cannot build the webhook's HTTP client: {e}"))?;
    Ok((url, signer, client))
}

/// Starts the sink as a task of its own; it runs until `stop` is cancelled. A request in flight
/// at the stop is abandoned: its batch is delivered again, with the same id, at the next start.
pub fn start(
    db: &Db,
    config: &WebhookConfig,
    run: Arc<RunState>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let (url, signer, client) = start_parts(config)?;
    let sink = Sink {
        db: db.clone(),
        shown_url: shown(&url),
        url,
        signer,
        client,
        run,
        batch_size: i64::from(config.batch_size),
        max_attempts: config.max_attempts.max(1),
        pause: Duration::from_secs(config.pause_secs.max(1)),
        pauses_in_a_row: 0,
    };
    Ok(tokio::spawn(sink.run(stop)))
}

/// The URL as logs show it: scheme, host, port and path; never credentials or a query.
fn shown(url: &reqwest::Url) -> String {
    format!(
        "{}://{}{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default(),
        url.path()
    )
}

struct Sink {
    db: Db,
    url: reqwest::Url,
    shown_url: String,
    signer: Signer,
    client: reqwest::Client,
    run: Arc<RunState>,
    batch_size: i64,
    max_attempts: u32,
    pause: Duration,
    pauses_in_a_row: u32,
}

/// How one batch's delivery ended.
enum Delivery {
    Delivered,
    /// A refusal: an answer that no retry changes.
    Refused(String),
    /// Every try failed; the last failure.
    Exhausted(String),
    Stopped,
}

/// One batch, its position and id.
struct Batch {
    from: i64,
    until: i64,
    id: String,
    rows: usize,
    body: Vec<u8>,
}

impl Sink {
    async fn run(mut self, stop: CancellationToken) {
        let mut waiting_logged = false;
        while !stop.is_cancelled() {
            let db = self.db.clone();
            let lock = match crate::db::blocking(move || SinkLock::try_acquire(&db)).await {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    if !waiting_logged {
                        tracing::info!(
                            "webhook sink: another process holds the webhook lock and delivers; \
                             waiting for it"
                        );
                        waiting_logged = true;
                    }
                    self.run.update(|s| s.webhook.delivering = false);
                    idle(&stop, LOCK_RETRY).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook sink: cannot take the webhook lock; trying again");
                    idle(&stop, LOCK_RETRY).await;
                    continue;
                }
            };
            waiting_logged = false;
            tracing::info!(url = %self.shown_url, "webhook sink delivering the changefeed");
            self.run.update(|s| s.webhook.delivering = true);
            self.deliver_while_held(lock, &stop).await;
            self.run.update(|s| s.webhook.delivering = false);
        }
    }

    /// Delivers batch after batch while this process holds `lock`. A task beside it checks the
    /// lock every [`LOCK_CHECK`] (which also keeps its PostgreSQL session from idling out while a
    /// POST waits on a slow receiver); once it is lost, no new batch or retry starts.
    async fn deliver_while_held(&mut self, lock: SinkLock, stop: &CancellationToken) {
        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_checking(lock, lost.clone(), stop.clone()));
        let mut listener = ChangeListener::new(&self.db, crate::db::listen::fallback(&self.db));
        // Stop delivering at the stop, or once the lock is lost.
        let end = stop.child_token();
        let end_on_loss = {
            let (end, lost) = (end.clone(), lost.clone());
            tokio::spawn(async move {
                lost.cancelled().await;
                end.cancel();
            })
        };
        while !end.is_cancelled() {
            listener.listen().await;
            match self.next_batch().await {
                Err(e) => {
                    tracing::warn!(error = %e, "webhook sink: the database did not answer; trying again");
                    self.run
                        .update(|s| s.webhook.last_error = Some(e.to_string()));
                    idle(&end, POLL).await;
                }
                Ok(Next::Paused) => {
                    idle(&end, POLL).await;
                }
                Ok(Next::Empty) => {
                    listener.wait(end.cancelled()).await;
                }
                Ok(Next::Moved) => {}
                Ok(Next::Batch(batch)) => self.deliver_batch(batch, &end).await,
            }
        }
        if lost.is_cancelled() && !stop.is_cancelled() {
            tracing::error!(
                "webhook sink: lost the webhook lock (its database session ended, or its lock \
                 file was replaced); stopped delivering, and competes for it again"
            );
        }
        end_on_loss.abort();
        keeper.abort();
        let _ = keeper.await;
    }

    /// Reads the sink's position and the batch to deliver next, recording its range first.
    async fn next_batch(&mut self) -> Result<Next, DbError> {
        let size = self.batch_size;
        let db = self.db.clone();
        let read = crate::db::blocking(move || {
            let mut c = db.conn()?;
            let consumer = consumers::get_or_create(&mut c, CONSUMER, 0)?;
            if let Some(until) = consumer.paused_until {
                if until > Ts::now() {
                    return Ok(Next::Paused);
                }
                consumers::resume(&mut c, CONSUMER)?;
                tracing::info!(
                    "webhook sink: its pause ended; delivering again from seq {}",
                    consumer.last_seq + 1
                );
            }
            let from = consumer.last_seq;
            let rows = match consumer.pending_last_seq {
                // The batch recorded before: the same rows, so the same id.
                Some(until) => changes::page(&mut c, from, Some(until), None, until - from)?,
                None => changes::page(&mut c, from, None, None, size)?,
            };
            let until = match (consumer.pending_last_seq, rows.last()) {
                (Some(until), _) => until,
                (None, Some(last)) => last.seq,
                (None, None) => return Ok(Next::Empty),
            };
            if rows.is_empty() {
                // The recorded rows were pruned meanwhile: nothing left to deliver in the range.
                consumers::commit(&mut c, CONSUMER, from, until)?;
                return Ok(Next::Moved);
            }
            if consumer.pending_last_seq.is_none()
                && !consumers::set_pending(&mut c, CONSUMER, from, until)?
            {
                return Ok(Next::Moved);
            }
            Ok(Next::Batch(batch_of(from, until, &rows)))
        })
        .await;
        if matches!(read, Ok(Next::Batch(_) | Next::Empty)) {
            self.run.update(|s| s.webhook.paused = false);
        }
        read
    }

    async fn deliver_batch(&mut self, batch: Batch, stop: &CancellationToken) {
        match self.deliver(&batch, stop).await {
            Delivery::Stopped => {}
            Delivery::Delivered => {
                self.pauses_in_a_row = 0;
                let (db, from, until) = (self.db.clone(), batch.from, batch.until);
                let committed = crate::db::blocking(move || {
                    consumers::commit(&mut db.conn()?, CONSUMER, from, until)
                })
                .await;
                match committed {
                    Ok(true) => {
                        tracing::debug!(id = %batch.id, rows = batch.rows, "webhook batch delivered");
                        self.run.update(|s| {
                            s.webhook.batches_delivered += 1;
                            s.webhook.changes_delivered += batch.rows as u64;
                            s.webhook.last_delivered_at = Some(chrono::Utc::now());
                            s.webhook.last_error = None;
                        });
                    }
                    Ok(false) => tracing::info!(
                        id = %batch.id,
                        "webhook sink: delivered, but its position was moved meanwhile (a \
                         `jobsync webhook replay`, or another deliverer): going on from the new \
                         position"
                    ),
                    // The batch is still recorded: the next read delivers it again, same id.
                    Err(e) => tracing::warn!(
                        id = %batch.id,
                        error = %e,
                        "webhook sink: delivered, but the position could not be committed; the \
                         batch will be delivered again with the same id"
                    ),
                }
            }
            Delivery::Refused(reason) | Delivery::Exhausted(reason) => {
                self.pause_for(&batch, &reason).await;
            }
        }
    }

    /// Pauses the sink, recording why where operators look.
    async fn pause_for(&mut self, batch: &Batch, reason: &str) {
        let factor = 2u32.saturating_pow(self.pauses_in_a_row.min(16));
        let pause = self.pause.saturating_mul(factor).min(PAUSE_CAP);
        self.pauses_in_a_row += 1;
        let until = Ts::from(chrono::Utc::now() + pause);
        let reason = crate::secret::scrub(reason);
        tracing::warn!(
            id = %batch.id,
            url = %self.shown_url,
            paused_secs = pause.as_secs(),
            "webhook sink paused: {reason}; it resumes on its own at {until} with the same batch, \
             or now with `jobsync webhook resume`"
        );
        self.run.update(|s| {
            s.webhook.paused = true;
            s.webhook.last_error = Some(reason.clone());
        });
        let db = self.db.clone();
        let stored = crate::db::blocking(move || {
            consumers::pause(&mut db.conn()?, CONSUMER, until, &reason)
        })
        .await;
        if let Err(e) = stored {
            tracing::warn!(error = %e, "webhook sink: the pause could not be recorded");
        }
    }

    /// Sends one batch until a 2xx, a refusal, tries exhausted, or the stop.
    async fn deliver(&mut self, batch: &Batch, stop: &CancellationToken) -> Delivery {
        let mut delays = backon::ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(MIN_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .build();
        loop {
            let (failure, retry_after) = match self.attempt(batch, stop).await {
                Attempt::Delivered => return Delivery::Delivered,
                Attempt::Stopped => return Delivery::Stopped,
                Attempt::Refused(reason) => {
                    self.run.update(|s| s.webhook.failed_attempts += 1);
                    return Delivery::Refused(reason);
                }
                Attempt::Failed {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            self.run.update(|s| {
                s.webhook.failed_attempts += 1;
                s.webhook.last_error = Some(failure.clone());
            });
            let Some(backoff) = delays.next() else {
                return Delivery::Exhausted(format!(
                    "{} tries failed; the last: {failure}",
                    self.max_attempts
                ));
            };
            let wait = match retry_after {
                Some(asked) => asked.min(RETRY_AFTER_CAP).max(backoff),
                None => backoff.min(MAX_BACKOFF),
            };
            tracing::info!(
                id = %batch.id,
                retry_in_ms = wait.as_millis() as u64,
                "webhook delivery failed, retrying: {failure}"
            );
            if !idle(stop, wait).await {
                return Delivery::Stopped;
            }
        }
    }

    /// One POST.
    async fn attempt(&mut self, batch: &Batch, stop: &CancellationToken) -> Attempt {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = match self.signer.sign(&batch.id, timestamp, &batch.body) {
            Ok(signature) => signature,
            Err(e) => return Attempt::Refused(e),
        };
        let request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &batch.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(batch.body.clone())
            .send();
        let answer = tokio::select! {
            _ = stop.cancelled() => return Attempt::Stopped,
            answer = request => answer,
        };
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                let what = if e.is_timeout() {
                    "no answer within webhook.timeout_secs"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "the connection failed"
                };
                return Attempt::Failed {
                    reason: format!("{what}: {}", causes(&e.without_url())),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let read = tokio::select! {
            _ = stop.cancelled() => return Attempt::Stopped,
            text = answer_text(response) => text,
        };
        let text = match read {
            Ok(text) => text,
            // The answer's head came, its body did not: the status is what counts for a 2xx.
            Err(_) if status.is_success() => String::new(),
            Err(e) => e,
        };
        if status.is_success() {
            return Attempt::Delivered;
        }
        let answer = if text.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {text}")
        };
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            return Attempt::Failed {
                reason: format!("the receiver answered {answer}"),
                retry_after,
            };
        }
        if status.is_redirection() {
            return Attempt::Refused(format!(
                "the receiver answered {answer} to {}, a redirect{}: redirects are not followed \
                 (only webhook.url is ever called); set webhook.url to the final address",
                self.shown_url,
                location.map(|l| format!(" to {l}")).unwrap_or_default()
            ));
        }
        Attempt::Refused(format!(
            "the receiver refused the batch: {answer} (from {})",
            self.shown_url
        ))
    }
}

enum Next {
    Batch(Batch),
    Empty,
    Paused,
    /// The position moved under the sink: read again.
    Moved,
}

enum Attempt {
    Delivered,
    Refused(String),
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
    Stopped,
}

fn batch_of(from: i64, until: i64, rows: &[ChangeRow]) -> Batch {
    let first = rows.first().map_or(from + 1, |r| r.seq);
    let mut body = Vec::with_capacity(rows.len() * 256 + 16);
    body.extend_from_slice(b"{\"changes\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(changes::to_json(row).as_bytes());
    }
    body.extend_from_slice(b"]}");
    Batch {
        from,
        until,
        id: format!("jobsync-{first}-{until}"),
        rows: rows.len(),
        body,
    }
}

/// At most [`ANSWER_KEPT`] characters of an answer's body, on one line.
async fn answer_text(response: reqwest::Response) -> Result<String, String> {
    use futures_util::StreamExt;
    let mut stream = response.bytes_stream();
    let mut kept = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("the answer broke off: {}", e.without_url()))?;
        let room = ANSWER_KEPT * 4 - kept.len();
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if kept.len() >= ANSWER_KEPT * 4 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&kept);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ANSWER_KEPT)
        .collect();
    Ok(line.trim().to_string())
}

/// An error and its causes on one line (reqwest's own text is only "error sending request").
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = cause.source();
    }
    text
}

/// A `Retry-After` of seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// Checks the lock every [`LOCK_CHECK`] until it is lost (then cancels `lost`) or `stop`.
async fn keep_checking(lock: SinkLock, lost: CancellationToken, stop: CancellationToken) {
    let lock = Arc::new(std::sync::Mutex::new(lock));
    while idle(&stop, LOCK_CHECK).await {
        let lock = lock.clone();
        let held = crate::db::blocking(move || {
            Ok::<_, DbError>(lock.lock().unwrap_or_else(|p| p.into_inner()).is_held())
        })
        .await
        .unwrap_or(false);
        if !held {
            lost.cancel();
            return;
        }
    }
}

/// Waits `wait` unless `stop` comes first (then `false`).
async fn idle(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// `jobsync webhook replay --from SEQ`: the sink's position set to `from - 1`. Returns the
/// position before, if the sink had one.
pub fn replay(db: &Db, from: i64) -> Result<Option<i64>, DbError> {
    consumers::rewind(&mut db.conn()?, CONSUMER, from - 1)
}
