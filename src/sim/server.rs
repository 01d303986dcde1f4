//! Serving: the router (API, control routes, simulated `Date` header) and an accept loop of our
//! own, because a simulated dropped connection must be a real one — hyper closes a connection
//! without answering when the service fails, which axum's `serve` never lets a handler do.

use super::faults::DropConnection;
use super::{Sim, clock::http_date, control, routes};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tower::ServiceExt;

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .nest("/j", routes::api_router(sim.clone()))
        .nest("/_sim", control::control_router(sim.clone()))
        .layer(middleware::from_fn_with_state(sim, simulated_date))
}

/// Every answer carries the simulated clock's time, which the client uses as its watermark
/// (hyper would otherwise add the real time).
async fn simulated_date(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if let Ok(date) = HeaderValue::from_str(&http_date(sim.clock.now())) {
        response.headers_mut().insert(header::DATE, date);
    }
    response
}

/// The error that makes hyper close a connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("simulated dropped connection")]
struct ConnectionDropped;

/// Accepts connections until `stop` fires (or its sender is dropped), then closes them all.
pub async fn serve(listener: TcpListener, router: Router, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, router.clone()));
                }
                Err(error) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    tracing::info!("simulator stopped");
}

async fn serve_connection(stream: tokio::net::TcpStream, router: Router) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        async move {
            let response = router
                .oneshot(request)
                .await
                .unwrap_or_else(|never| match never {});
            if response.extensions().get::<DropConnection>().is_some() {
                Err(ConnectionDropped)
            } else {
                Ok(response)
            }
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "connection closed");
    }
}
