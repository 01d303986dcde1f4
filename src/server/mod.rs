//! The health server (`server.listen`): `/healthz`, `/readyz`, `/metrics`, `/status`. It reads
//! the daemon's run state and the database; it never drives the engine.

mod metrics;

use crate::api::ApiClient;
use crate::daemon::state::RunState;
use crate::db::Db;
use crate::db::repo::{report, state};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// What the handlers read.
#[derive(Clone)]
pub struct ServerContext {
    pub db: Db,
    pub run: Arc<RunState>,
    pub api: ApiClient,
    pub max_staleness_secs: u64,
    pub stall_secs: u64,
}

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

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Binds `listen` and serves in the background.
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
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the health server stopped");
        }
    });
    Ok(ServerHandle { addr, stop, task })
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
    // The start-up grace covers a first cycle still running, not one that failed: a deployment
    // that cannot sync (a wrong api.base_url, a blocked network) must not pass a rollout.
    if s.first_cycle_failed() {
        return unavailable(&format!(
            "the first cycle failed: {}",
            s.last_error.as_deref().unwrap_or("no error recorded")
        ));
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
        None if s.started_at.is_some_and(|t| (now - t).num_seconds() <= max) => (
            StatusCode::OK,
            Json(
                json!({"status": "starting", "detail": "the first cycle is running", "role": role}),
            ),
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
