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

impl ToSql<Timestamp, Sqlite> for Ts {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.format("%Y-%m-%d %H:%M:%S%.6f").to_string());
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
