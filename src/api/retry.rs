//! The one retry policy every request goes through: exponential backoff with jitter (backon),
//! `api.max_attempts` tries, only for retryable errors, and the server's `Retry-After` honoured up
//! to a cap.

use super::error::ApiError;
use crate::shutdown::StopFlag;
use crate::telemetry::ApiStats;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    backoff: ExponentialBuilder,
    max_attempts: u32,
    max_backoff: Duration,
    retry_after_cap: Duration,
}

impl RetryPolicy {
    pub(crate) fn new(
        max_attempts: u32,
        min_backoff: Duration,
        max_backoff: Duration,
        retry_after_cap: Duration,
    ) -> Self {
        let retries = max_attempts.saturating_sub(1) as usize;
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(min_backoff)
            .with_max_delay(max_backoff)
            .with_max_times(retries);
        RetryPolicy {
            backoff,
            max_attempts,
            max_backoff,
            retry_after_cap,
        }
    }

    /// The pause before the next attempt, or `None` when attempts are exhausted. backon's jitter
    /// adds up to one more delay on top, so the result is capped again at `max_backoff`; a
    /// `Retry-After` is a floor, itself capped so that a confused server cannot stall a cycle.
    pub(crate) fn next_delay(
        &self,
        err: &ApiError,
        proposed: Option<Duration>,
    ) -> Option<Duration> {
        let backoff = proposed?.min(self.max_backoff);
        match err.retry_after() {
            Some(asked) => Some(asked.min(self.retry_after_cap).max(backoff)),
            None => Some(backoff),
        }
    }

    /// Runs `attempt` (given the 1-based attempt number) until it succeeds, fails with an error
    /// `should_retry` refuses, or attempts run out.
    ///
    /// A stop request ends the loop: no attempt starts after it (the first one fails with
    /// [`ApiError::Stopped`], a later one returns the error of the attempt before it), a backoff
    /// sleep is cut short, and an attempt still in flight at the stop's deadline fails with
    /// [`ApiError::Abandoned`].
    pub(crate) async fn run<T, F, Fut>(
        &self,
        endpoint: &str,
        stats: &ApiStats,
        stop: &StopFlag,
        should_retry: fn(&ApiError) -> bool,
        mut attempt: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let counter = AtomicU32::new(0);
        let last_error: Mutex<Option<ApiError>> = Mutex::new(None);
        let next_attempt = || {
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            let sent = attempt(n);
            let (last_error, stop) = (&last_error, stop);
            async move {
                if stop.is_set() {
                    let previous = last_error.lock().unwrap_or_else(|p| p.into_inner()).take();
                    return Err(previous.unwrap_or_else(|| ApiError::Stopped {
                        endpoint: endpoint.to_owned(),
                    }));
                }
                let result = tokio::select! {
                    biased;
                    () = stop.abandoned() => Err(ApiError::Abandoned {
                        endpoint: endpoint.to_owned(),
                    }),
                    result = sent => result,
                };
                if let Err(e) = &result {
                    *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                }
                result
            }
        };
        let stop_sleep = stop.clone();
        next_attempt
            .retry(self.backoff)
            .sleep(move |wait| {
                let stop = stop_sleep.clone();
                async move {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.stopping() => {}
                    }
                }
            })
            .when(|e| should_retry(e) && !stop.is_set())
            .adjust(|err, proposed| self.next_delay(err, proposed))
            .notify(|err, wait| {
                stats.record_retry(wait);
                tracing::warn!(
                    endpoint,
                    attempt = counter.load(Ordering::Relaxed),
                    max_attempts = self.max_attempts,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %err,
                    "API request failed, retrying"
                );
            })
            .await
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (a date in the past means now).
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&Utc) - now;
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn http(status: u16, retry_after: Option<Duration>) -> ApiError {
        ApiError::Http {
            endpoint: "GET /j/jobs".into(),
            status,
            message: "x".into(),
            retry_after,
        }
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy::new(
            max_attempts,
            Duration::from_millis(1),
            Duration::from_millis(5),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 01 May 2024 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 01 May 2024 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn retry_after_is_a_floor_capped_by_the_setting() {
        let p = RetryPolicy::new(
            8,
            Duration::from_millis(100),
            Duration::from_secs(30),
            Duration::from_secs(60),
        );
        let proposed = Some(Duration::from_millis(150));
        let asked = http(429, Some(Duration::from_secs(2)));
        assert_eq!(p.next_delay(&asked, proposed), Some(Duration::from_secs(2)));
        let greedy = http(503, Some(Duration::from_secs(3600)));
        assert_eq!(
            p.next_delay(&greedy, proposed),
            Some(Duration::from_secs(60))
        );
        let plain = http(500, None);
        assert_eq!(p.next_delay(&plain, proposed), proposed);
        let huge = Some(Duration::from_secs(50));
        assert_eq!(p.next_delay(&plain, huge), Some(Duration::from_secs(30)));
        assert_eq!(p.next_delay(&asked, None), None, "attempts exhausted");
    }

    #[tokio::test]
    async fn retries_retryable_errors_up_to_max_attempts() {
        let stats = ApiStats::default();
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = policy(4)
            .run(
                "GET /j/jobs",
                &stats,
                &StopFlag::new(),
                ApiError::is_retryable,
                |_| async {
                    calls.fetch_add(1, Ordering::Relaxed);
                    Err(http(500, None))
                },
            )
            .await;
        assert_eq!(result.unwrap_err().status(), Some(500));
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        assert_eq!(stats.retries(), 3);
    }

    #[tokio::test]
    async fn never_retries_a_client_error() {
        let stats = ApiStats::default();
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = policy(8)
            .run(
                "GET /j/jobs",
                &stats,
                &StopFlag::new(),
                ApiError::is_retryable,
                |_| async {
                    calls.fetch_add(1, Ordering::Relaxed);
                    Err(http(404, None))
                },
            )
            .await;
        assert_eq!(result.unwrap_err().status(), Some(404));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(stats.retries(), 0);
    }

    #[tokio::test]
    async fn numbers_attempts_and_stops_at_the_first_success() {
        let stats = ApiStats::default();
        let seen = std::sync::Mutex::new(Vec::new());
        let result = policy(8)
            .run(
                "GET /j/jobs",
                &stats,
                &StopFlag::new(),
                ApiError::is_retryable,
                |n| {
                    seen.lock().unwrap().push(n);
                    async move { if n < 3 { Err(http(429, None)) } else { Ok(n) } }
                },
            )
            .await;
        assert_eq!(result, Ok(3));
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
    }
}
