//! The simulated clock: real UTC time shifted by an offset that tests can change at runtime, so
//! that the 48-hour `modified_since` window and the `Date` header can be moved without waiting.

use chrono::{DateTime, Duration, Utc};
use std::sync::atomic::{AtomicI64, Ordering};

/// How far in the future a `modified_since` may lie before it is refused: the client takes its
/// watermark from our second-precision `Date` header, so anything later than a few seconds ahead
/// is a client bug rather than rounding.
pub const FUTURE_TOLERANCE: Duration = Duration::seconds(60);

/// How far back `modified_since` may reach (`jobs-api.md`: "in the past 48 hours").
pub const MODIFIED_SINCE_WINDOW: Duration = Duration::hours(48);

/// The largest shift of the clock, either way (about 11 years): far enough for any test of
/// windows or skew, near enough that the shifted time stays a date every part can handle (an
/// offset of 1e308 hours made every request panic).
pub const MAX_OFFSET_HOURS: f64 = 100_000.0;

/// Refuses an offset that is not finite or beyond ±[`MAX_OFFSET_HOURS`].
pub fn check_offset_hours(hours: f64) -> Result<(), String> {
    if hours.is_finite() && hours.abs() <= MAX_OFFSET_HOURS {
        Ok(())
    } else {
        Err(format!(
            "the clock offset must be a number of hours between -{MAX_OFFSET_HOURS} and \
             {MAX_OFFSET_HOURS}, not {}",
            super::shown(hours)
        ))
    }
}

#[derive(Debug, Default)]
pub struct SimClock {
    offset_micros: AtomicI64,
}

impl SimClock {
    pub fn new(offset_hours: f64) -> Result<Self, String> {
        let clock = SimClock::default();
        clock.set_offset_hours(offset_hours)?;
        Ok(clock)
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::microseconds(self.offset_micros.load(Ordering::Relaxed))
    }

    pub fn offset_hours(&self) -> f64 {
        self.offset_micros.load(Ordering::Relaxed) as f64 / 3_600_000_000.0
    }

    /// Moves the clock; an offset out of range is refused and the clock stays where it was.
    pub fn set_offset_hours(&self, hours: f64) -> Result<(), String> {
        check_offset_hours(hours)?;
        let micros = (hours * 3_600_000_000.0).round() as i64;
        self.offset_micros.store(micros, Ordering::Relaxed);
        Ok(())
    }
}

/// The value of an HTTP `Date` header (RFC 9110 IMF-fixdate) for `at`.
pub fn http_date(at: DateTime<Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Parses a `modified_since` query value and checks it lies within the past 48 hours of `now`.
pub fn parse_modified_since(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let since = DateTime::parse_from_rfc3339(raw)
        .map_err(|e| {
            format!(
                "modified_since `{raw}` is not an RFC 3339 datetime ({e}); \
                 remember to percent-encode a `+` offset"
            )
        })?
        .with_timezone(&Utc);
    if since < now - MODIFIED_SINCE_WINDOW {
        return Err(format!(
            "modified_since {since} is more than 48 hours in the past (server time {now})"
        ));
    }
    if since > now + FUTURE_TOLERANCE {
        return Err(format!(
            "modified_since {since} is in the future (server time {now})"
        ));
    }
    Ok(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn accepts_the_past_48_hours_only() {
        let now = at("2024-05-10T12:00:00Z");
        assert!(parse_modified_since("2024-05-08T12:00:00Z", now).is_ok());
        assert!(parse_modified_since("2024-05-10T11:59:59.123+00:00", now).is_ok());
        assert!(parse_modified_since("2024-05-10T14:00:00+02:00", now).is_ok());
        let err = parse_modified_since("2024-05-08T11:59:59Z", now).unwrap_err();
        assert!(err.contains("48 hours"), "{err}");
        assert!(parse_modified_since("2024-05-10T12:00:30Z", now).is_ok());
        let err = parse_modified_since("2024-05-10T12:05:00Z", now).unwrap_err();
        assert!(err.contains("future"), "{err}");
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        let now = at("2024-05-10T12:00:00Z");
        for bad in ["yesterday", "2024-05-10", "2024-05-10 11:00:00 00:00", ""] {
            assert!(parse_modified_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn offset_moves_now_and_formats_http_dates() {
        let clock = SimClock::new(-72.5).unwrap();
        let shift = Utc::now() - clock.now();
        assert!(
            (shift - Duration::minutes(72 * 60 + 30))
                .num_seconds()
                .abs()
                <= 1
        );
        assert!((clock.offset_hours() + 72.5).abs() < 1e-9);
        assert_eq!(
            http_date(at("2016-11-04T19:11:34.985Z")),
            "Fri, 04 Nov 2016 19:11:34 GMT"
        );
    }

    #[test]
    fn offsets_out_of_range_are_refused_and_change_nothing() {
        let clock = SimClock::new(MAX_OFFSET_HOURS).unwrap();
        assert!(clock.now() > Utc::now() + Duration::days(4000));
        clock.set_offset_hours(-MAX_OFFSET_HOURS).unwrap();
        for bad in [1e308, -1e308, 100_000.5, f64::NAN, f64::INFINITY] {
            let err = clock.set_offset_hours(bad).unwrap_err();
            assert!(err.contains("between -100000 and 100000"), "{err}");
        }
        assert!((clock.offset_hours() + MAX_OFFSET_HOURS).abs() < 1e-9);
        assert!(SimClock::new(f64::NEG_INFINITY).is_err());
    }
}
