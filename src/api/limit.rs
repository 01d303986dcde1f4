//! The client-side rate limit shared by every request (`api.requests_per_second`): each request
//! reserves the next free slot on an evenly spaced timeline and sleeps until it comes.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct RateLimiter {
    interval: Duration,
    next_slot: Mutex<Instant>,
}

impl RateLimiter {
    /// `requests_per_second` must be positive (checked by the client's constructor); `f64::INFINITY`
    /// disables the limit.
    pub(crate) fn new(requests_per_second: f64) -> Self {
        let interval = if requests_per_second.is_finite() {
            Duration::from_secs_f64(1.0 / requests_per_second)
        } else {
            Duration::ZERO
        };
        RateLimiter {
            interval,
            next_slot: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's slot. Slots are handed out in call order, so no caller starves.
    pub(crate) async fn acquire(&self) {
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        // The timer has a resolution of a millisecond: even a deadline already passed would
        // wait for its next tick, a millisecond added to every request in a busy push.
        if slot > Instant::now() {
            tokio::time::sleep_until(slot).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spaces_requests_evenly() {
        let limiter = RateLimiter::new(100.0);
        let start = Instant::now();
        for _ in 0..11 {
            limiter.acquire().await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    }

    #[tokio::test]
    async fn an_idle_limiter_does_not_bank_a_burst() {
        let limiter = RateLimiter::new(100.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn infinity_means_no_limit() {
        let limiter = RateLimiter::new(f64::INFINITY);
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
