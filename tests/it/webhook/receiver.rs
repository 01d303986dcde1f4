//! The receiver the webhook tests deliver to: a real HTTP/1.1 server (hyper) on 127.0.0.1 that
//! verifies every delivery's signature with the `standardwebhooks` crate — an implementation
//! other than jobsync's signer — and records each request: its `webhook-id`, the changes of its
//! body, and what was done with it.
//!
//! It misbehaves on demand: a script of [`Fault`]s applied to the next requests one by one
//! ([`Receiver::script`]), and a latency for every normal answer ([`Receiver::set_latency`]).
//!
//! A batch is *processed* (applied, as a CRM would apply it) when the receiver records it so:
//! at a 2xx answer, and also at the faults that process a batch and then fail to answer (a stall
//! past the sender's timeout, a reset after processing). Repeats come from those, and from a
//! sender killed while it waited for the answer.

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the receiver does with one request instead of accepting it.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 500, the batch not processed.
    ServerError,
    /// 429 with `Retry-After: SECS`, the batch not processed.
    TooManyRequests { retry_after_secs: u64 },
    /// Processes the batch, then answers 200 only after this long.
    Stall(Duration),
    /// Processes the batch, then resets the connection without an answer.
    ResetAfterProcessing,
    /// Stops listening and drops every open connection (this request unanswered and not
    /// processed); connections are refused for this long, then it listens again on its port.
    Down(Duration),
    /// 400 with this text, the batch not processed.
    Refuse(String),
    /// 301 with this `Location`, the batch not processed.
    Redirect(String),
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    /// The `seq` of each element of `changes`, in the body's order.
    pub seqs: Vec<i64>,
    /// The elements of `changes`.
    pub changes: Vec<Value>,
    pub received: Instant,
    /// When the receiver handed its answer over (`None`: it never answered, or not yet).
    pub answered: Option<Instant>,
    /// Whether the receiver applied the batch.
    pub processed: bool,
    /// What it answered or did: `200`, `500`, `429`, `stalled`, `reset`, `down`, `400`, `301`,
    /// `401 bad signature: …`, `bad body: …`, `body broke off: …`.
    pub what: String,
    /// The `standardwebhooks` crate's verdict when it refused the signature.
    pub signature_error: Option<String>,
}

#[derive(Default)]
struct State {
    script: VecDeque<Option<Fault>>,
    latency: Duration,
    seen: Vec<Seen>,
    /// Requests being handled (header read, handler not finished): a token and the id.
    in_flight: Vec<(u64, String)>,
    max_in_flight: usize,
    /// The ids in flight together, each time a request started while others were in flight.
    overlaps: Vec<Vec<String>>,
    /// When the receiver went down, and when it listened again.
    downs: Vec<(Instant, Option<Instant>)>,
}

struct Shared {
    addr: SocketAddr,
    verifier: standardwebhooks::Webhook,
    state: Mutex<State>,
    accept: Mutex<Option<JoinHandle<()>>>,
    /// Bumped to drop every open connection.
    generation: watch::Sender<u64>,
    closed: std::sync::atomic::AtomicBool,
    tokens: AtomicU64,
}

/// A running receiver; stops listening and drops its connections when dropped.
pub struct Receiver {
    shared: Arc<Shared>,
    secret: String,
    path: String,
}

impl Receiver {
    /// Starts a receiver on a free port of 127.0.0.1, with a fresh random secret.
    pub fn start(rt: &tokio::runtime::Runtime) -> Receiver {
        use base64::Engine;
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("the receiver listens");
        let shared = Arc::new(Shared {
            addr: listener.local_addr().unwrap(),
            verifier: standardwebhooks::Webhook::new(&secret).expect("a valid secret"),
            state: Mutex::new(State::default()),
            accept: Mutex::new(None),
            generation: watch::channel(0).0,
            closed: false.into(),
            tokens: AtomicU64::new(0),
        });
        let task = rt.spawn(accept_loop(shared.clone(), listener));
        *shared.accept.lock().unwrap() = Some(task);
        Receiver {
            shared,
            secret,
            path: "/hooks/jobsync".into(),
        }
    }

    /// The URL to give `webhook.url`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.shared.addr, self.path)
    }

    /// The `whsec_…` secret to write into `webhook.secret_file`.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Appends steps for the next requests, one each: `None` is a normal answer.
    pub fn script(&self, steps: impl IntoIterator<Item = Option<Fault>>) {
        self.state().script.extend(steps);
    }

    /// How long each normal answer waits after processing the batch.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Every request so far, in the order received.
    pub fn seen(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// The ids of the requests being handled now.
    pub fn in_flight(&self) -> Vec<String> {
        self.state()
            .in_flight
            .iter()
            .map(|(_, id)| id.clone())
            .collect()
    }

    pub fn max_in_flight(&self) -> usize {
        self.state().max_in_flight
    }

    /// The ids in flight together, each time a request started while others were in flight.
    pub fn overlaps(&self) -> Vec<Vec<String>> {
        self.state().overlaps.clone()
    }

    /// When the receiver went down, and when it listened again.
    pub fn downs(&self) -> Vec<(Instant, Option<Instant>)> {
        self.state().downs.clone()
    }

    /// Polls until `done` holds for the requests seen (within `limit`); answers them.
    pub fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.seen();
            if done(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver never saw {what} within {limit:?}; it saw:\n{}",
                describe(&seen)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` for a request in flight; answers its id.
    pub fn wait_in_flight(&self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(id) = self.in_flight().into_iter().next() {
                return Some(id);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.stop_listening();
    }
}

/// The requests as lines, for failure messages.
pub fn describe(seen: &[Seen]) -> String {
    let lines: Vec<String> = seen
        .iter()
        .map(|s| {
            let range = match (s.seqs.first(), s.seqs.last()) {
                (Some(a), Some(b)) => format!("seqs {a}..={b} ({})", s.seqs.len()),
                _ => "no seqs".into(),
            };
            format!(
                "  {:>6} ms  {}  {range}  {}{}",
                s.received.elapsed().as_millis(),
                s.id,
                s.what,
                if s.processed { "  processed" } else { "" }
            )
        })
        .collect();
    format!(
        "{} requests (ms = how long ago):\n{}",
        seen.len(),
        lines.join("\n")
    )
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the listener and every open connection.
    fn stop_listening(&self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Down for `period`, then listening again on the same port.
    fn go_down(self: &Arc<Self>, period: Duration) {
        self.stop_listening();
        self.state().downs.push((Instant::now(), None));
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(period).await;
            if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            // The port was ours a moment ago; another process may take it meanwhile, rarely.
            let deadline = Instant::now() + Duration::from_secs(10);
            let listener = loop {
                match TcpListener::bind(shared.addr).await {
                    Ok(listener) => break listener,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("receiver: cannot listen on {} again yet: {e}", shared.addr);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("the receiver cannot listen on {} again: {e}", shared.addr),
                }
            };
            let task = tokio::spawn(accept_loop(shared.clone(), listener));
            *shared.accept.lock().unwrap() = Some(task);
            if let Some(down) = shared.state().downs.last_mut() {
                down.1 = Some(Instant::now());
            }
        });
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        // A close by the receiver (a reset, going down) is a reset, not an orderly end.
        let _ = stream.set_zero_linger();
        tokio::spawn(serve_connection(shared.clone(), stream));
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let mut generation = shared.generation.subscribe();
    let (reset_tx, mut reset_rx) = mpsc::unbounded_channel::<()>();
    let service = {
        let shared = shared.clone();
        service_fn(move |request| handle(shared.clone(), reset_tx.clone(), request))
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = generation.changed() => {}
        _ = reset_rx.recv() => {}
    }
}

/// Removes its request from those in flight when the handler ends or is dropped.
struct InFlight {
    shared: Arc<Shared>,
    token: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared
            .state()
            .in_flight
            .retain(|(token, _)| *token != self.token);
    }
}

fn answer(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(text.to_string()));
    *response.status_mut() = status;
    response
}

async fn handle(
    shared: Arc<Shared>,
    reset: mpsc::UnboundedSender<()>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let id = parts
        .headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let token = shared.tokens.fetch_add(1, Ordering::SeqCst);
    let _in_flight = {
        let mut state = shared.state();
        state.in_flight.push((token, id.clone()));
        let now = state.in_flight.len();
        state.max_in_flight = state.max_in_flight.max(now);
        if now > 1 {
            let ids = state.in_flight.iter().map(|(_, id)| id.clone()).collect();
            state.overlaps.push(ids);
        }
        InFlight {
            shared: shared.clone(),
            token,
        }
    };
    let received = Instant::now();
    let mut seen = Seen {
        id,
        seqs: Vec::new(),
        changes: Vec::new(),
        received,
        answered: None,
        processed: false,
        what: String::new(),
        signature_error: None,
    };
    let bytes = match axum::body::to_bytes(Body::new(body), 64 << 20).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // The sender went away mid-body (killed): nothing to apply, nothing wrong.
            seen.what = format!("body broke off: {e}");
            shared.state().seen.push(seen);
            return Ok(answer(StatusCode::BAD_REQUEST, "unreadable body"));
        }
    };
    if let Err(e) = shared.verifier.verify(&bytes, &parts.headers) {
        seen.what = format!("401 bad signature: {e}");
        seen.signature_error = Some(e.to_string());
        shared.state().seen.push(seen);
        return Ok(answer(StatusCode::UNAUTHORIZED, "bad signature"));
    }
    let changes = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("changes").and_then(Value::as_array).cloned());
    let Some(changes) = changes else {
        seen.what = "bad body: no `changes` array".into();
        shared.state().seen.push(seen);
        return Ok(answer(StatusCode::BAD_REQUEST, "no changes array"));
    };
    let seqs: Option<Vec<i64>> = changes.iter().map(|c| c["seq"].as_i64()).collect();
    let Some(seqs) = seqs else {
        seen.what = "bad body: a change without an integer seq".into();
        shared.state().seen.push(seen);
        return Ok(answer(StatusCode::BAD_REQUEST, "a change without a seq"));
    };
    seen.seqs = seqs;
    seen.changes = changes;

    let (fault, latency) = {
        let mut state = shared.state();
        (state.script.pop_front().flatten(), state.latency)
    };
    // Records the request; answers its index.
    let record = |mut seen: Seen, what: &str, processed: bool| {
        seen.what = what.into();
        seen.processed = processed;
        let mut state = shared.state();
        state.seen.push(seen);
        state.seen.len() - 1
    };
    // Marks the request answered, then answers.
    let answered = |index: usize, response: Response<Body>| {
        shared.state().seen[index].answered = Some(Instant::now());
        Ok(response)
    };
    match fault {
        None => {
            let index = record(seen, "200", true);
            tokio::time::sleep(latency).await;
            answered(index, answer(StatusCode::OK, "{\"ok\":true}"))
        }
        Some(Fault::ServerError) => {
            let index = record(seen, "500", false);
            answered(
                index,
                answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the receiver's database is down",
                ),
            )
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let index = record(seen, "429", false);
            let mut response = answer(StatusCode::TOO_MANY_REQUESTS, "slow down");
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                retry_after_secs.to_string().parse().unwrap(),
            );
            answered(index, response)
        }
        Some(Fault::Stall(period)) => {
            let index = record(seen, "stalled", true);
            tokio::time::sleep(period).await;
            answered(index, answer(StatusCode::OK, "{\"ok\":true}"))
        }
        Some(Fault::ResetAfterProcessing) => {
            record(seen, "reset", true);
            let _ = reset.send(());
            std::future::pending().await
        }
        Some(Fault::Down(period)) => {
            record(seen, "down", false);
            shared.go_down(period);
            std::future::pending().await
        }
        Some(Fault::Refuse(text)) => {
            let index = record(seen, "400", false);
            answered(index, answer(StatusCode::BAD_REQUEST, &text))
        }
        Some(Fault::Redirect(location)) => {
            let index = record(seen, "301", false);
            let mut response = answer(StatusCode::MOVED_PERMANENTLY, "moved");
            response
                .headers_mut()
                .insert(hyper::header::LOCATION, location.parse().unwrap());
            answered(index, response)
        }
    }
}
