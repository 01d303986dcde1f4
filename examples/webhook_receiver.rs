//! A webhook receiver for the webhook sink's benchmark (`scripts/bench-webhook.sh`): answers every
//! POST with 200 and counts what it received, checking only what is cheap — each batch's `seq`s
//! (a repeat is a `seq` at or below the highest seen; a gap, a batch whose first `seq` is beyond
//! the highest + 1). No signature check, no storage.
//!
//! `target/release/examples/webhook_receiver [LISTEN]` (default `127.0.0.1:0`) prints
//! `listening on HOST:PORT`; `GET /count` answers the counts as JSON; SIGINT/SIGTERM print them
//! and end it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[path = "common/rss.rs"]
mod rss;

#[derive(Deserialize)]
struct Batch {
    changes: Vec<Change>,
}

/// The one field read of each change; the others are skipped by the parser.
#[derive(Deserialize)]
struct Change {
    seq: i64,
}

#[derive(Default, serde::Serialize)]
struct Counts {
    batches: u64,
    changes: u64,
    /// Changes whose `seq` was at or below the highest seen before (delivered again).
    repeats: u64,
    /// Batches starting beyond the highest `seq` seen + 1.
    gaps: u64,
    /// Bodies that were not `{"changes": [...]}` with a `seq` in each.
    bad_bodies: u64,
    last_seq: i64,
    /// Seconds from the first batch to the last.
    seconds: f64,
    #[serde(skip)]
    first_at: Option<Instant>,
}

type Shared = Arc<Mutex<Counts>>;

async fn receive(State(counts): State<Shared>, body: Bytes) -> StatusCode {
    let batch = serde_json::from_slice::<Batch>(&body);
    let now = Instant::now();
    let mut c = counts.lock().unwrap();
    let first = *c.first_at.get_or_insert(now);
    c.seconds = (now - first).as_secs_f64();
    let Ok(batch) = batch else {
        c.bad_bodies += 1;
        // A 400 would pause the sink: the benchmark would stall and say so, not hide it.
        return StatusCode::BAD_REQUEST;
    };
    c.batches += 1;
    if let Some(head) = batch.changes.first()
        && head.seq > c.last_seq + 1
    {
        c.gaps += 1;
    }
    for change in &batch.changes {
        c.changes += 1;
        if change.seq <= c.last_seq {
            c.repeats += 1;
        } else {
            c.last_seq = change.seq;
        }
    }
    StatusCode::OK
}

async fn count(State(counts): State<Shared>) -> String {
    serde_json::to_string(&*counts.lock().unwrap()).unwrap()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let counts = Shared::default();
    let app = Router::new()
        .route("/count", get(count))
        .fallback(receive)
        // A batch of 10,000 rows is a few MB: above axum's 2 MB default.
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await?;
    println!(
        "{}; receiver peak RSS {} MiB",
        serde_json::to_string(&*counts.lock().unwrap())?,
        rss::peak_rss_kib() / 1024
    );
    Ok(())
}
