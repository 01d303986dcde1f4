//! Rows as stored, and their conversion from the job model's [`Job`].
//!
//! A mirror row's job fields are generated from the job model's table (`crate::job`): each
//! field's column holds its wire value in the stored form [`StoredField`] gives its wire type.

use super::Ts;
pub use super::outbox_status::OutboxStatus;
use super::schema::{job_changes, jobs, outbox, sync_runs};
use crate::job::{Job, Object, Time, job_fields};
use diesel::prelude::*;
use serde_json::Value;

/// How a job field's wire type is stored in its `jobs` column: text as text, arrays and objects
/// as canonical JSON text, datetimes as [`Ts`] (microseconds), numbers as they are.
pub trait StoredField: Sized {
    /// The column's value as Diesel reads and writes it.
    type Stored: std::fmt::Debug + Clone + PartialEq;
    /// The column's value borrowed from a [`JobContent`], for PostgreSQL's `COPY`.
    type Borrowed<'a>;
    /// The stored form; `field` names the field in `nul_replaced` when a NUL character had to
    /// be replaced (see [`JobContent::from_job`]).
    fn to_stored(&self, field: &'static str, nul_replaced: &mut Vec<&'static str>) -> Self::Stored;
    /// Back to the wire value.
    fn from_stored(stored: &Self::Stored) -> Self;
    fn borrow(stored: &Self::Stored) -> Self::Borrowed<'_>;
}

/// Integers and floats: stored as they are.
macro_rules! stored_as_is {
    ($($ty:ty),*) => {$(
        impl StoredField for $ty {
            type Stored = $ty;
            type Borrowed<'a> = $ty;
            fn to_stored(&self, _: &'static str, _: &mut Vec<&'static str>) -> $ty {
                *self
            }
            fn from_stored(stored: &$ty) -> $ty {
                *stored
            }
            fn borrow(stored: &$ty) -> $ty {
                *stored
            }
        }
    )*};
}
stored_as_is!(i64, i32, Option<f64>);

/// Plain text. PostgreSQL text cannot hold the NUL character (U+0000): see
/// [`JobContent::from_job`].
impl StoredField for Option<String> {
    type Stored = Option<String>;
    type Borrowed<'a> = Option<&'a str>;
    fn to_stored(&self, field: &'static str, nul_replaced: &mut Vec<&'static str>) -> Self {
        match self {
            Some(v) if v.contains('\0') => {
                nul_replaced.push(field);
                Some(v.replace('\0', "\u{FFFD}"))
            }
            other => other.clone(),
        }
    }
    fn from_stored(stored: &Self) -> Self {
        stored.clone()
    }
    fn borrow(stored: &Self) -> Option<&str> {
        stored.as_deref()
    }
}

/// Arrays and objects: canonical JSON text (a NUL character stays, escaped as `\u0000`).
macro_rules! stored_as_json {
    ($($ty:ty),*) => {$(
        impl StoredField for Option<$ty> {
            type Stored = Option<String>;
            type Borrowed<'a> = Option<&'a str>;
            fn to_stored(&self, _: &'static str, _: &mut Vec<&'static str>) -> Option<String> {
                self.clone().map(|v| canonical_json(&Value::from(v)))
            }
            fn from_stored(stored: &Option<String>) -> Self {
                stored.as_deref().and_then(|t| serde_json::from_str(t).ok())
            }
            fn borrow(stored: &Option<String>) -> Option<&str> {
                stored.as_deref()
            }
        }
    )*};
}
stored_as_json!(Vec<String>, Object);

/// Datetimes: at microsecond precision.
impl StoredField for Option<Time> {
    type Stored = Option<Ts>;
    type Borrowed<'a> = Option<Ts>;
    fn to_stored(&self, _: &'static str, _: &mut Vec<&'static str>) -> Option<Ts> {
        self.map(Ts::from)
    }
    fn from_stored(stored: &Option<Ts>) -> Self {
        stored.map(Ts::as_utc)
    }
    fn borrow(stored: &Option<Ts>) -> Option<Ts> {
        *stored
    }
}

macro_rules! job_content {
    (
        key $id:ident : $id_ty:ty = $($id_rule:ident)*;
        $( $(#[$attr:meta])* $f:ident : $ty:ty = $($rule:ident)* ),* $(,)?
    ) => {
        /// A mirror row's content: every job field, in stored form. Two contents are equal
        /// exactly when the job did not change (JSON compared canonically, datetimes at
        /// microseconds).
        #[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
        #[diesel(table_name = jobs, treat_none_as_default_value = false)]
        pub struct JobContent {
            pub $id: <$id_ty as StoredField>::Stored,
            $( pub $f: <$ty as StoredField>::Stored, )*
        }

        impl JobContent {
            /// Every field in stored form; the fields whose NUL characters were replaced are
            /// added to `nul_replaced`.
            fn stored(job: &Job, nul_replaced: &mut Vec<&'static str>) -> Self {
                JobContent {
                    $id: job.$id.to_stored(stringify!($id), nul_replaced),
                    $( $f: job.$f.to_stored(stringify!($f), nul_replaced), )*
                }
            }

            /// The names of the fields (of [`crate::job::JOB_FIELDS`], in that order) that
            /// differ.
            pub fn changed_fields(&self, old: &JobContent) -> Vec<&'static str> {
                let mut changed = Vec::new();
                $(
                    if self.$f != old.$f {
                        changed.push(stringify!($f));
                    }
                )*
                changed
            }

            /// Back to the model's shape.
            pub fn to_job(&self) -> Job {
                Job {
                    $id: StoredField::from_stored(&self.$id),
                    $( $f: StoredField::from_stored(&self.$f), )*
                }
            }
        }
    };
}
job_fields!(job_content);

impl JobContent {
    /// The job in stored form. PostgreSQL text cannot hold the NUL character (U+0000), so in the
    /// plain text columns it is stored as U+FFFD (the replacement character) — on both backends,
    /// so that they hold the same mirror — logged once per job with its id and counted in
    /// `jobsync_jobs_nul_replaced_total`. JSON columns (`numbers`, `address_lines`, `data`) keep
    /// it exactly, escaped as `\u0000`. One such job never costs the others of its batch.
    pub fn from_job(job: &Job) -> Self {
        let mut replaced: Vec<&'static str> = Vec::new();
        let content = JobContent::stored(job, &mut replaced);
        if !replaced.is_empty() {
            crate::telemetry::count_nul_replaced_job();
            tracing::warn!(
                job_id = job.id,
                fields = ?replaced,
                "the API sent a NUL character, which the database cannot store as text: stored as U+FFFD"
            );
        }
        content
    }
}

/// A mirror row with its sync metadata.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = jobs)]
pub struct MirrorRow {
    #[diesel(embed)]
    pub content: JobContent,
    pub first_seen_at: Ts,
    pub last_seen_at: Ts,
    pub remote_deleted_at: Option<Ts>,
}

impl MirrorRow {
    /// Back to the API's shape (for comparing the mirror with the API, and for `status`).
    pub fn to_job(&self) -> Job {
        self.content.to_job()
    }
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = jobs, treat_none_as_default_value = false)]
pub(crate) struct NewMirrorRow {
    #[diesel(embed)]
    pub content: JobContent,
    pub first_seen_at: Ts,
    pub last_seen_at: Ts,
    pub remote_deleted_at: Option<Ts>,
}

/// JSON text with object keys sorted and integral numbers written as integers, so that key
/// order and number formatting (`1` vs `1.0`) never count as a change.
pub fn canonical_json(value: &Value) -> String {
    fn normalise(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), normalise(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    Value::from(f as i64)
                }
                _ => v.clone(),
            },
            other => other.clone(),
        }
    }
    normalise(value).to_string()
}

/// Where a change was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    Pull,
    Push,
}

impl ChangeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Pull => "pull",
            ChangeSource::Push => "push",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = job_changes, treat_none_as_default_value = false)]
pub struct ChangeRow {
    #[diesel(skip_insertion)]
    pub seq: i64,
    pub job_id: i64,
    pub campaign: i64,
    pub reference: Option<String>,
    pub kind: String,
    pub old_state: Option<i32>,
    pub new_state: Option<i32>,
    /// JSON array of field names.
    pub changed_fields: String,
    pub source: String,
    #[serde(serialize_with = "ts_as_rfc3339")]
    pub observed_at: Ts,
}

pub(crate) fn ts_as_rfc3339<S: serde::Serializer>(t: &Ts, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

/// An outbox row as stored.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = outbox)]
pub struct OutboxRow {
    pub id: i64,
    pub op: String,
    pub campaign: Option<i64>,
    pub reference: Option<String>,
    pub job_id: Option<i64>,
    pub payload: String,
    pub status: OutboxStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub http_status: Option<i32>,
    pub result_job_id: Option<i64>,
    pub created_at: Ts,
    pub updated_at: Ts,
    pub next_attempt_at: Ts,
    pub first_sent_at: Option<Ts>,
    pub in_doubt: bool,
    pub merged_into: Option<i64>,
}

/// The columns of an open outbox row the push works from: a large backlog is read before the
/// first request can leave, and leaving out the four columns the push never reads (two of them
/// timestamps to parse) took a quarter off reading 100,000 rows.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = outbox)]
pub struct OpenRow {
    pub id: i64,
    pub op: String,
    pub campaign: Option<i64>,
    pub reference: Option<String>,
    pub job_id: Option<i64>,
    pub payload: String,
    pub status: OutboxStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: Ts,
    /// A create's first send, on the API's clock: an in-doubt create is looked up from there.
    pub first_sent_at: Option<Ts>,
    /// The create was sent and its outcome is unknown: it is looked up before any re-send.
    pub in_doubt: bool,
    /// The create as last sent (JSON), for the lookup by the reference actually sent.
    pub sent_payload: Option<String>,
    /// A linked create: the job the API holds for it (found by a lookup).
    pub result_job_id: Option<i64>,
}

/// What a CRM (or `import`) writes: every other column has a default.
///
/// `None` is bound as NULL (these columns default to NULL anyway), not written `DEFAULT`: on
/// SQLite, which has no `DEFAULT` in `VALUES`, Diesel would otherwise insert the rows of a batch
/// one statement each, and a statement's text would change with which fields are set.
#[derive(Debug, Clone, PartialEq, Insertable, serde::Deserialize)]
#[diesel(table_name = outbox, treat_none_as_default_value = false)]
pub struct NewOutboxRow {
    pub op: String,
    pub campaign: Option<i64>,
    pub reference: Option<String>,
    pub job_id: Option<i64>,
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = sync_runs)]
pub struct RunRow {
    pub id: i64,
    #[diesel(column_name = trigger_)]
    pub trigger: String,
    pub mode: String,
    #[serde(serialize_with = "ts_as_rfc3339")]
    pub started_at: Ts,
    #[serde(serialize_with = "opt_ts_as_rfc3339")]
    pub finished_at: Option<Ts>,
    pub status: String,
    pub jobs_pulled: i64,
    pub jobs_changed: i64,
    pub pushed_ok: i64,
    pub pushed_failed: i64,
    pub api_calls: i64,
    pub error: Option<String>,
    /// Jobs of the run's listings set aside because they could not be decoded.
    pub jobs_quarantined: i64,
}

fn opt_ts_as_rfc3339<S: serde::Serializer>(t: &Option<Ts>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(t),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_ignores_key_order_and_number_formatting() {
        assert_eq!(
            canonical_json(&json!({"b": 1.0, "a": [2.0, {"d": 1, "c": 0.5}]})),
            canonical_json(&json!({"a": [2, {"c": 0.5, "d": 1}], "b": 1}))
        );
        assert_ne!(
            canonical_json(&json!({"a": 1})),
            canonical_json(&json!({"a": 1.5}))
        );
    }
}
