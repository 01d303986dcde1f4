//! The floor the push is measured against: a bare client that sends N creates to the Jobs API
//! the way `jobsync --once` does — bulk calls of 1,000 items, CONCURRENCY in flight, each answer
//! read and parsed — with no database, no bookkeeping and no retries. Prints the calls made, the
//! wall time in seconds and this process's peak RSS.
//!
//! `target/release/examples/bare_push BASE_URL N CONCURRENCY [PREFIX]` (the items are those of
//! `scripts/bench-push.sh`: campaign 28, references PREFIX-0 … PREFIX-(N-1)).

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use std::time::Instant;

const BULK_SIZE: usize = 1000;

#[path = "common/rss.rs"]
mod rss;
use rss::peak_rss_kib;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_push BASE_URL N CONCURRENCY [PREFIX]";
    let base = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let n: usize = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let concurrency: usize = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let prefix = args.next().unwrap_or_else(|| "bench".into());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = format!("{}/j/jobs/bulk/create", base.trim_end_matches('/'));
    let started = Instant::now();
    let calls = n.div_ceil(BULK_SIZE);
    let results: Vec<anyhow::Result<usize>> = stream::iter(0..calls)
        .map(|call| {
            let (client, url, prefix) = (client.clone(), url.clone(), prefix.clone());
            async move {
                // Built when the call's turn comes, as the push builds its chunks.
                let items: Vec<Value> = (call * BULK_SIZE..((call + 1) * BULK_SIZE).min(n))
                    .map(|i| {
                        json!({"campaign": 28, "reference": format!("{prefix}-{i}"),
                               "name": format!("Bench {i}"), "numbers": ["+33612345678"],
                               "value": i})
                    })
                    .collect();
                let body = serde_json::to_vec(&items)?;
                let answer = client
                    .post(&url)
                    .bearer_auth("dev-token")
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?;
                let answers: Vec<Value> = serde_json::from_slice(&answer)?;
                Ok(answers.len())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut answered = 0;
    for result in results {
        answered += result?;
    }
    println!(
        "bare client: {calls} calls, {answered} items answered, {:.2} s, peak RSS {} MiB",
        elapsed.as_secs_f64(),
        peak_rss_kib() / 1024
    );
    Ok(())
}
