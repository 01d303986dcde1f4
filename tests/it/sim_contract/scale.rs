//! Timing and memory reports on large listings (ignored by default).

use super::*;

/// `cargo test --test it sim_contract::scale::serves_ -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a timing report, not a check"]
async fn serves_100k_jobs_listing() {
    let started = std::time::Instant::now();
    let api = Api::start(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 100_000,
        ..SimConfig::default()
    })
    .await;
    println!("100,000 jobs seeded in {:?}", started.elapsed());
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let response = api.get("/j/jobs?campaign=28").send().await.unwrap();
        let bytes = response.bytes().await.unwrap();
        let elapsed = started.elapsed();
        let jobs: Vec<jobsync::job::Job> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(jobs.len(), 100_000);
        println!(
            "100,000 jobs ({} MB) served in {elapsed:?}",
            bytes.len() / 1_000_000
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a timing and memory report, not a check"]
async fn serves_1m_jobs_listing() {
    use futures_util::StreamExt;
    let started = std::time::Instant::now();
    let api = Api::start(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 1_000_000,
        ..SimConfig::default()
    })
    .await;
    println!("1,000,000 jobs seeded in {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let response = api.get("/j/jobs?campaign=28").send().await.unwrap();
    let mut body = response.bytes_stream();
    let (mut size, mut last) = (0, 0u8);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        size += chunk.len();
        last = *chunk.last().unwrap_or(&last);
    }
    assert_eq!(last, b']');
    println!(
        "1,000,000 jobs ({} MB) served in {:?}",
        size / 1_000_000,
        started.elapsed()
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    println!("peak memory of this process (simulator and reader): {rss}");
}
