//! The health server (`server.listen`): `/healthz`, `/readyz`, `/metrics`, `/status`. It reads
//! the daemon's run state (in `telemetry`) and the database; it never drives the engine, and does
//! not know the daemon. Clients cannot hold it open: headers must arrive within
//! [`HEADER_READ_TIMEOUT`], and at most [`MAX_CONNECTIONS`] are open at once — beyond that the
//! oldest is closed, so idle or slow sockets cannot keep a probe waiting.

mod metrics;

use crate::api::ApiClient;
use crate::db::Db;
use crate::db::repo::{report, state};
use crate::telemetry::RunState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What the handlers read.
#[derive(Clone)]
pub struct ServerContext {
    pub db: Db,
    pub run: Arc<RunState>,
    pub api: ApiClient,
    pub max_staleness_secs: u64,
    pub stall_secs: u64,
}

/// The longest a client may take to send a request's headers, counted from the moment the
/// server starts waiting for them: when a connection is accepted, and again after each answer
/// on a kept-alive connection. A connection that sends nothing, half a request line, or its
/// headers a byte at a time ("slow loris") is closed when it runs out, without an answer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The most connections open at once (a bound on the memory and descriptors clients can hold:
/// an idle connection costs a few KiB). A new connection beyond it is served at once, and the
/// oldest open connection is closed to make room: probes and scrapes are answered in
/// milliseconds, so the oldest is the one most likely idle or trickling its headers. Before,
/// a new connection waited for a free slot, and 64 idle sockets or 300 reconnecting slow
/// clients kept the kubelet's probes waiting past their timeout, so the pod was restarted.
pub const MAX_CONNECTIONS: usize = 256;

/// How long [`ServerHandle::stop`] lets open connections finish their answers once it has
/// stopped accepting; those still open then (a slow client mid-headers) are closed.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running server; [`ServerHandle::stop`] ends it.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The address bound (with the port chosen when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes idle connections, lets answers in progress finish for up to
    /// [`STOP_GRACE`], then closes what is left.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Binds `listen` and serves in the background: HTTP/1.1, with [`HEADER_READ_TIMEOUT`] and at
/// most [`MAX_CONNECTIONS`] at once.
pub async fn start(listen: &str, context: ServerContext) -> Result<ServerHandle, String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "health server listening");
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::handler))
        .route("/status", get(status))
        .with_state(context);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app, stopped));
    Ok(ServerHandle { addr, stop, task })
}

/// The accept loop (axum's `serve` has no header-read timeout): a connection is accepted only
/// with a free slot, and served by hyper with the header timeout. On `stop` it stops accepting,
/// asks every connection to end after its answer in progress, and waits up to [`STOP_GRACE`].
async fn serve(listener: TcpListener, app: Router, mut stop: oneshot::Receiver<()>) {
    let stopping = CancellationToken::new();
    let mut connections = JoinSet::new();
    // The open connections, oldest first (by accept order), to close the oldest at the limit.
    let mut open: std::collections::BTreeMap<u64, tokio::task::AbortHandle> = Default::default();
    let mut order: std::collections::HashMap<tokio::task::Id, u64> = Default::default();
    let mut accepted_so_far = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(ended) = connections.join_next_with_id(), if !connections.is_empty() => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(n) = order.remove(&id) {
                    open.remove(&n);
                }
            }
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _peer)) => {
                        if open.len() >= MAX_CONNECTIONS
                            && let Some((_, oldest)) = open.pop_first()
                        {
                            order.remove(&oldest.id());
                            oldest.abort();
                        }
                        let _ = stream.set_nodelay(true);
                        let (app, stopping) = (app.clone(), stopping.clone());
                        let handle = connections.spawn(async move {
                            serve_connection(stream, app, stopping).await;
                        });
                        accepted_so_far += 1;
                        order.insert(handle.id(), accepted_so_far);
                        open.insert(accepted_so_far, handle);
                    }
                    Err(error) => {
                        // Usually out of file descriptors: wait instead of spinning.
                        tracing::warn!(%error, "the health server could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
    drop(listener);
    stopping.cancel();
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "health server connections still open after the stop grace are closed"
        );
    }
    connections.shutdown().await;
}

async fn serve_connection(stream: TcpStream, app: Router, stopping: CancellationToken) {
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stopping.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        // A header timeout, a client gone mid-request: the client's doing, not the server's.
        tracing::debug!(%error, "health server connection closed");
    }
}

/// 200 while the process and its scheduler are alive and no running cycle has gone
/// `sync.stall_secs` without progress (an API answer received, a batch committed): a wedged
/// cycle fails liveness, so Kubernetes restarts the pod.
async fn healthz(State(ctx): State<ServerContext>) -> Response {
    let s = ctx.run.snapshot();
    if s.shutting_down {
        return (StatusCode::OK, Json(json!({"status": "alive"}))).into_response();
    }
    if !s.scheduler_running {
        return unavailable("the scheduler is not running");
    }
    let idle = ctx.api.heartbeat().idle_for();
    if s.cycle_running && idle.as_secs() >= ctx.stall_secs {
        return unavailable(&format!(
            "the running cycle has made no progress (no API answer received, no batch committed) for {}s, sync.stall_secs is {}s",
            idle.as_secs(),
            ctx.stall_secs
        ));
    }
    (StatusCode::OK, Json(json!({"status": "alive"}))).into_response()
}

/// 200 when the database answers and the last successful pull is recent enough (or the first
/// cycle is still running within its grace); else 503 with the reason.
async fn readyz(State(ctx): State<ServerContext>) -> Response {
    let s = ctx.run.snapshot();
    if s.shutting_down {
        return unavailable("shutting down");
    }
    // Reading the last pull is also the database check.
    let last_pull = ctx.db.run(|c| state::get_time(c, state::LAST_PULL_OK));
    let last_pull = match last_pull.await {
        Ok(at) => at,
        Err(e) => return unavailable(&format!("the database does not answer: {e}")),
    };
    if s.auth_failed {
        let why = s.last_error.unwrap_or_default();
        return unavailable(&format!("the API refused the token: {why}"));
    }
    // Ready only once this process showed it can do the job with its own configuration: its own
    // cycle pulled (as the active syncer), or, as a follower, its own API call and database check
    // answered. A recent pull recorded by earlier pods proves nothing about this one: a release
    // with a wrong token or base URL must not pass a rollout.
    if s.first_cycle_failed() {
        return unavailable(&format!(
            "the first cycle failed: {}",
            s.last_error.as_deref().unwrap_or("no error recorded")
        ));
    }
    if !s.proven {
        let why = match (s.cycle_running, s.active_syncer, s.last_error.as_deref()) {
            (true, _, _) => "the first cycle is running; ready once it has pulled".to_string(),
            (_, Some(false), Some(e)) => {
                format!("a follower whose own API or database check failed: {e}")
            }
            (_, Some(false), None) => {
                "a follower whose own API and database check has not answered yet".to_string()
            }
            _ => "no cycle has run yet".to_string(),
        };
        return unavailable(&why);
    }
    let role = s.role();
    let now = Utc::now();
    // The last good pull is stamped on the API's clock; its age is measured on the same clock.
    let api_now = ctx.api.server_now().unwrap_or(now);
    let max = ctx.max_staleness_secs as i64;
    match last_pull {
        Some(at) if (api_now - at).num_seconds() <= max => (
            StatusCode::OK,
            Json(json!({"status": "ready", "last_successful_pull": at, "role": role})),
        )
            .into_response(),
        // A follower proven by its own checks, before any pull was recorded anywhere (the
        // active syncer's first backfill still running).
        None if s.active_syncer == Some(false) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "last_successful_pull": null, "role": role})),
        )
            .into_response(),
        Some(at) => unavailable(&format!(
            "the last successful pull was {}s ago, more than sync.max_staleness_secs ({max}s); last error: {}",
            (api_now - at).num_seconds(),
            s.last_error.as_deref().unwrap_or("none")
        )),
        None => unavailable(&format!(
            "no successful pull yet; last error: {}",
            s.last_error.as_deref().unwrap_or("none")
        )),
    }
}

/// Watermark, last runs, outbox and mirror counts, and this process's syncer role: no personal
/// data, no secrets.
async fn status(State(ctx): State<ServerContext>) -> Response {
    let report = ctx.db.run(|c| report::read(c, 5)).await;
    let role = ctx.run.snapshot().role();
    match report.map(serde_json::to_value) {
        Ok(Ok(mut report)) => {
            if let Some(fields) = report.as_object_mut() {
                fields.insert("role".into(), role.into());
            }
            (StatusCode::OK, Json(report)).into_response()
        }
        Ok(Err(e)) => unavailable(&format!("the status could not be written: {e}")),
        Err(e) => unavailable(&format!("the database does not answer: {e}")),
    }
}

fn unavailable(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"status": "unavailable", "reason": reason}).to_string(),
    )
        .into_response()
}
