//! [`Ts`]: a UTC instant stored at microsecond precision, the precision both backends keep.
//! SQLite gets the contract's text form `YYYY-MM-DD HH:MM:SS.ffffff` (always six digits, so text
//! order is time order); PostgreSQL a `timestamp` holding UTC.

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Timestamp;
use diesel::sqlite::{Sqlite, SqliteValue};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = Timestamp)]
pub struct Ts(DateTime<Utc>);

impl Ts {
    pub fn now() -> Self {
        Ts::from(Utc::now())
    }

    pub fn as_utc(self) -> DateTime<Utc> {
        self.0
    }
}

impl From<DateTime<Utc>> for Ts {
    fn from(t: DateTime<Utc>) -> Self {
        Ts(t.trunc_subsecs(6))
    }
}

impl From<Ts> for DateTime<Utc> {
    fn from(t: Ts) -> Self {
        t.0
    }
}

impl fmt::Display for Ts {
    /// RFC 3339 with microseconds, as the changefeed and `status` print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
    }
}

impl Ts {
    /// The SQLite text form `YYYY-MM-DD HH:MM:SS.ffffff`, written digit by digit: chrono's
    /// `format` (and even `format!`) showed up in backfill profiles, at three timestamps a row.
    pub fn sqlite_text(&self) -> String {
        use chrono::{Datelike, Timelike};
        fn digits(out: &mut String, value: u32, width: u32) {
            for place in (0..width).rev() {
                out.push(char::from(b'0' + (value / 10u32.pow(place) % 10) as u8));
            }
        }
        let t = self.0;
        let mut out = String::with_capacity(26);
        digits(&mut out, t.year().clamp(0, 9999) as u32, 4);
        out.push('-');
        digits(&mut out, t.month(), 2);
        out.push('-');
        digits(&mut out, t.day(), 2);
        out.push(' ');
        digits(&mut out, t.hour(), 2);
        out.push(':');
        digits(&mut out, t.minute(), 2);
        out.push(':');
        digits(&mut out, t.second(), 2);
        out.push('.');
        digits(&mut out, t.nanosecond() / 1000, 6);
        out
    }
}

impl ToSql<Timestamp, Sqlite> for Ts {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.sqlite_text());
        Ok(IsNull::No)
    }
}

impl FromSql<Timestamp, Sqlite> for Ts {
    /// The contract's form is parsed with chrono's items built once; anything else (a CRM that
    /// wrote another form SQLite understands) goes through Diesel's parser, which tries eighteen
    /// format strings in turn and parsed each one again for every value: a sixth of the time
    /// the push spent loading a large outbox.
    fn from_sql(mut value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        if let Some(naive) = parse_sqlite_text(value.read_text()) {
            return Ok(Ts::from(naive.and_utc()));
        }
        let naive = <NaiveDateTime as FromSql<Timestamp, Sqlite>>::from_sql(value)?;
        Ok(Ts::from(naive.and_utc()))
    }
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]`, the form jobsync writes and the schema defaults produce.
fn parse_sqlite_text(text: &str) -> Option<NaiveDateTime> {
    use chrono::format::{Fixed, Item, Numeric, Pad, Parsed};
    const ITEMS: &[Item<'static>] = &[
        Item::Numeric(Numeric::Year, Pad::Zero),
        Item::Literal("-"),
        Item::Numeric(Numeric::Month, Pad::Zero),
        Item::Literal("-"),
        Item::Numeric(Numeric::Day, Pad::Zero),
        Item::Literal(" "),
        Item::Numeric(Numeric::Hour, Pad::Zero),
        Item::Literal(":"),
        Item::Numeric(Numeric::Minute, Pad::Zero),
        Item::Literal(":"),
        Item::Numeric(Numeric::Second, Pad::Zero),
        Item::Fixed(Fixed::Nanosecond),
    ];
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, text, ITEMS.iter()).ok()?;
    parsed.to_naive_datetime_with_offset(0).ok()
}

impl ToSql<Timestamp, Pg> for Ts {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let naive = self.0.naive_utc();
        <NaiveDateTime as ToSql<Timestamp, Pg>>::to_sql(&naive, &mut out.reborrow())
    }
}

impl FromSql<Timestamp, Pg> for Ts {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let naive = <NaiveDateTime as FromSql<Timestamp, Pg>>::from_sql(value)?;
        Ok(Ts::from(naive.and_utc()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sqlite_text_is_read_back_in_every_form_sqlite_may_hold() {
        let exact =
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(7);
        let text = Ts::from(exact).sqlite_text();
        assert_eq!(
            parse_sqlite_text(&text).map(|n| n.and_utc()),
            Some(exact),
            "{text}"
        );
        let whole = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(
            parse_sqlite_text("2026-01-02 03:04:05").map(|n| n.and_utc()),
            Some(whole)
        );
        assert_eq!(
            parse_sqlite_text("2026-01-02 03:04:05.5").map(|n| n.and_utc()),
            Some(whole + chrono::Duration::milliseconds(500))
        );
        // Other forms are left to Diesel's parser.
        assert_eq!(parse_sqlite_text("2026-01-02T03:04:05Z"), None);
        assert_eq!(parse_sqlite_text("2026-01-02 03:04:05+02:00"), None);
        assert_eq!(parse_sqlite_text("2026-13-02 03:04:05"), None);
    }

    #[test]
    fn sqlite_text_has_six_fractional_digits() {
        let t =
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(7);
        assert_eq!(Ts::from(t).sqlite_text(), "2026-01-02 03:04:05.000007");
        let t = Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::nanoseconds(999_999_999);
        assert_eq!(Ts::from(t).sqlite_text(), "1999-12-31 23:59:59.999999");
    }
}
