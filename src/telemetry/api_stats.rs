//! Counters of every request the API client sends, for the metrics endpoint and for
//! `sync_runs.api_calls` (a run reads `total()` before and after). The client counts; the faces
//! read.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The labels of a request duration: `[("endpoint", label)]`.
pub type EndpointLabels = Vec<(&'static str, &'static str)>;

/// Request durations by endpoint label, answered or not (`jobsync_api_request_duration_seconds`).
pub type DurationFamily = Family<EndpointLabels, Histogram, fn() -> Histogram>;

/// Buckets from 5 ms to about 82 s, doubling: a bulk call at 20 ms of latency and one at the
/// default 30 s timeout both land in a bucket of their own.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

#[derive(Debug)]
pub struct ApiStats {
    /// (endpoint label, status code or "error") → count.
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    total: AtomicU64,
    retries: AtomicU64,
    retry_wait_ms: AtomicU64,
    max_retry_wait_ms: AtomicU64,
    implausible_dates: AtomicU64,
    durations: DurationFamily,
}

impl Default for ApiStats {
    fn default() -> Self {
        ApiStats {
            requests: Mutex::default(),
            total: AtomicU64::default(),
            retries: AtomicU64::default(),
            retry_wait_ms: AtomicU64::default(),
            max_retry_wait_ms: AtomicU64::default(),
            implausible_dates: AtomicU64::default(),
            durations: Family::new_with_constructor(request_histogram),
        }
    }
}

impl ApiStats {
    /// Counts one attempt, which took `elapsed` until its answer's headers (or its failure);
    /// `status` is `None` when no answer came back.
    pub(crate) fn record_request(
        &self,
        endpoint: &'static str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        self.durations
            .get_or_create(&vec![("endpoint", endpoint)])
            .observe(elapsed.as_secs_f64());
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry((endpoint, status)).or_default() += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one retry and the pause taken before it.
    pub(crate) fn record_retry(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.retry_wait_ms.fetch_add(ms, Ordering::Relaxed);
        self.max_retry_wait_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Requests by (endpoint label, status code or "error"), sorted.
    pub fn snapshot(&self) -> Vec<(String, String, u64)> {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests
            .iter()
            .map(|((endpoint, status), n)| ((*endpoint).to_owned(), status.clone(), *n))
            .collect()
    }

    /// Requests to one endpoint label answered with one status ("error" for no answer).
    pub fn count(&self, endpoint: &str, status: &str) -> u64 {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests
            .iter()
            .filter(|((e, s), _)| *e == endpoint && s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// Counts an answer whose `Date` header was not believed (`api.max_date_skew_secs`).
    pub(crate) fn record_implausible_date(&self) {
        self.implausible_dates.fetch_add(1, Ordering::Relaxed);
    }

    /// Answers whose `Date` header was not believed.
    pub fn implausible_dates(&self) -> u64 {
        self.implausible_dates.load(Ordering::Relaxed)
    }

    /// Request durations by endpoint (shared: a clone observes into the same histograms).
    pub fn durations(&self) -> DurationFamily {
        self.durations.clone()
    }

    /// Every request sent, retries included.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Requests that were re-sends of an earlier failed attempt.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Total time spent waiting between attempts.
    pub fn retry_wait(&self) -> Duration {
        Duration::from_millis(self.retry_wait_ms.load(Ordering::Relaxed))
    }

    /// The longest single wait between attempts (a honoured `Retry-After` shows here).
    pub fn max_retry_wait(&self) -> Duration {
        Duration::from_millis(self.max_retry_wait_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_endpoint_and_status() {
        let stats = ApiStats::default();
        let ms = Duration::from_millis;
        stats.record_request("GET /j/jobs", Some(200), ms(10));
        stats.record_request("GET /j/jobs", Some(200), ms(20));
        stats.record_request("GET /j/jobs", None, ms(30));
        stats.record_retry(Duration::from_millis(1500));
        stats.record_retry(Duration::from_millis(100));
        assert_eq!(
            stats.snapshot(),
            vec![
                ("GET /j/jobs".into(), "200".into(), 2),
                ("GET /j/jobs".into(), "error".into(), 1)
            ]
        );
        assert_eq!(stats.count("GET /j/jobs", "200"), 2);
        assert_eq!(stats.total(), 3);
        assert_eq!(stats.retries(), 2);
        assert_eq!(stats.retry_wait(), Duration::from_millis(1600));
        assert_eq!(stats.max_retry_wait(), Duration::from_millis(1500));
    }
}
