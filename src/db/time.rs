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
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let naive = <NaiveDateTime as FromSql<Timestamp, Sqlite>>::from_sql(value)?;
        Ok(Ts::from(naive.and_utc()))
    }
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
    fn sqlite_text_has_six_fractional_digits() {
        let t =
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(7);
        assert_eq!(Ts::from(t).sqlite_text(), "2026-01-02 03:04:05.000007");
        let t = Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::nanoseconds(999_999_999);
        assert_eq!(Ts::from(t).sqlite_text(), "1999-12-31 23:59:59.999999");
    }
}
