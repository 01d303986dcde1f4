//! The outbox row's `status`, typed: the contract's five words (docs/contract.md §3) exist only
//! here, and every transition between them is a named function of [`crate::db::repo::outbox`].
//!
//! ```text
//! pending ──send──> in_flight ──answer──> done | failed | superseded
//!    ^                 │  (outcome unknown: stays in_flight, `in_doubt`, looked up first)
//!    └──retryable / looked up and absent──┘
//! ```

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Text;
use diesel::sqlite::Sqlite;
use std::io::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
pub enum OutboxStatus {
    /// Waiting to be sent (from `next_attempt_at` on).
    Pending,
    /// Sent, or about to be; a create here with `in_doubt` set has an unknown outcome.
    InFlight,
    Done,
    Failed,
    /// Merged into another row; `last_error` names it.
    Superseded,
}

impl OutboxStatus {
    pub const ALL: [OutboxStatus; 5] = [
        OutboxStatus::Pending,
        OutboxStatus::InFlight,
        OutboxStatus::Done,
        OutboxStatus::Failed,
        OutboxStatus::Superseded,
    ];
    /// The statuses the push still has work for.
    pub const OPEN: [OutboxStatus; 2] = [OutboxStatus::Pending, OutboxStatus::InFlight];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::InFlight => "in_flight",
            OutboxStatus::Done => "done",
            OutboxStatus::Failed => "failed",
            OutboxStatus::Superseded => "superseded",
        }
    }

    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }
}

impl std::fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OutboxStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown outbox status `{s}`; use one of: pending, in_flight, done, failed, \
                     superseded"
                )
            })
    }
}

impl PartialEq<&str> for OutboxStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for OutboxStatus {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl serde::Serialize for OutboxStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl ToSql<Text, Sqlite> for OutboxStatus {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.as_str());
        Ok(IsNull::No)
    }
}

impl ToSql<Text, Pg> for OutboxStatus {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(self.as_str().as_bytes())?;
        Ok(IsNull::No)
    }
}

impl<DB: Backend> FromSql<Text, DB> for OutboxStatus
where
    String: FromSql<Text, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        Ok(String::from_sql(bytes)?.parse()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_word() {
        for status in OutboxStatus::ALL {
            assert_eq!(status.as_str().parse::<OutboxStatus>(), Ok(status));
        }
        assert!("sent".parse::<OutboxStatus>().unwrap_err().contains("sent"));
        assert!(OutboxStatus::InFlight == "in_flight");
    }
}
