//! A job: its fields, listed once in `job_fields!`, and what follows from that list alone —
//! the wire model [`Job`], the changefeed's field names [`JOB_FIELDS`], and who may write each
//! field and in which JSON shape ([`field`]).
//!
//! Owned by neither `api` nor `db`: both derive their view of a job from this module and neither
//! depends on the other. The mirror's rows (`db::models::JobContent`, the `COPY` row, the upsert's
//! columns), the simulator's JSON writer and its validation expand the same table with their own
//! macros, so adding a field is a row here, a migration per backend and a column in
//! `src/db/schema.rs` (CONTRIBUTING.md, "Adding a job field").

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A datetime as the API writes it (RFC 3339, UTC).
pub type Time = DateTime<Utc>;
/// A JSON object (a job's free-form `data`).
pub type Object = Map<String, Value>;

/// The fields of a job, in the order the contract lists them: the API's JSON, the changefeed's
/// `changed_fields` and the mirror's columns all follow this order. Each row is
///
/// `serde attributes  name: wire type = Access Shape`
///
/// The wire type is the field's type in [`Job`] (its stored form follows from it: see
/// `db::models::StoredField`); [`Access`] and [`Shape`] say who may write it and what a create or
/// patch may send. `id` is the key, apart from the other fields.
///
/// Expands `$then! { key id: … ; field, field, … }`: the caller's macro generates its items.
macro_rules! job_fields {
    ($then:ident) => {
        $then! {
            key id: i64 = ReadOnly Integer;
            campaign: i64 = CreateOnly PositiveInteger,
            #[serde(default)] reference: Option<String> = Writable Text,
            #[serde(default)] name: Option<String> = Writable Text,
            #[serde(default)] email: Option<String> = Writable Text,
            #[serde(default)] numbers: Option<Vec<String>> = Writable PhoneNumbers,
            #[serde(default)] address_lines: Option<Vec<String>> = Writable Strings,
            #[serde(default)] postal_code: Option<String> = Writable Text,
            #[serde(default)] city: Option<String> = Writable Text,
            #[serde(default)] country: Option<String> = Writable Text,
            #[serde(default)] appointment: Option<$crate::job::Time> = Writable DateTime,
            #[serde(default)] data: Option<$crate::job::Object> = Writable Object,
            #[serde(default)] label: Option<String> = Writable Text,
            #[serde(default)] url: Option<String> = Writable Text,
            #[serde(default)] value: Option<f64> = Writable Number,
            state: i32 = ReadOnly Integer,
            #[serde(default)] created_at: Option<$crate::job::Time> = ReadOnly DateTime,
        }
    };
}
pub(crate) use job_fields;

/// Who may set a field through a create or a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Set by the API only; a request carrying it is refused.
    ReadOnly,
    /// Sent with a create, never changed by a patch.
    CreateOnly,
    /// Sent with a create or a patch.
    Writable,
}

/// The JSON a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Integer,
    PositiveInteger,
    /// A string, or `null`.
    Text,
    /// An array of strings, or `null`.
    Strings,
    /// An array of phone numbers (strings), or `null`.
    PhoneNumbers,
    /// An RFC 3339 datetime string, or `null`.
    DateTime,
    /// A JSON object, or `null`.
    Object,
    /// A number, or `null`.
    Number,
}

/// One field of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub access: Access,
    pub shape: Shape,
}

macro_rules! define_job {
    (
        key $id:ident : $id_ty:ty = $id_access:ident $id_shape:ident;
        $( $(#[$attr:meta])* $f:ident : $ty:ty = $access:ident $shape:ident ),* $(,)?
    ) => {
        /// One job exactly as the API returns it.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct Job {
            pub $id: $id_ty,
            $( $(#[$attr])* pub $f: $ty, )*
        }

        impl Job {
            /// The job with its datetimes truncated to microseconds, the precision both
            /// database backends keep (docs/contract.md §3), so that a stored row and a fresh
            /// answer compare equal.
            pub fn truncated_to_micros(self) -> Self {
                Job {
                    $id: self.$id,
                    $( $f: WireValue::truncated_to_micros(self.$f), )*
                }
            }
        }

        /// The fields of a job in the order the contract lists them (everything but `id`).
        /// `changed_fields` in the changefeed uses these names.
        pub const JOB_FIELDS: [&str; [$(stringify!($f)),*].len()] = [$(stringify!($f)),*];

        /// Every field, `id` first.
        pub const FIELDS: [Field; 1 + JOB_FIELDS.len()] = [
            Field {
                name: stringify!($id),
                access: Access::$id_access,
                shape: Shape::$id_shape,
            },
            $( Field { name: stringify!($f), access: Access::$access, shape: Shape::$shape }, )*
        ];
    };
}
job_fields!(define_job);

/// The field of this name (`id` included), if a job has one.
pub fn field(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// What every wire type of the table knows about itself.
pub trait WireValue: Sized {
    /// The value at the microsecond precision the database keeps (only datetimes change).
    fn truncated_to_micros(self) -> Self {
        self
    }
}

impl WireValue for i64 {}
impl WireValue for i32 {}
impl WireValue for Option<f64> {}
impl WireValue for Option<String> {}
impl WireValue for Option<Vec<String>> {}
impl WireValue for Option<Object> {}
impl WireValue for Option<Time> {
    fn truncated_to_micros(self) -> Self {
        self.map(|t| t.trunc_subsecs(6))
    }
}

/// Job states as the API numbers them.
pub mod state {
    pub const QUEUED: i32 = 0;
    pub const CALLING: i32 = 1;
    pub const SUCCEEDED: i32 = 2;
    pub const FAILED: i32 = 3;
    pub const CANCELLED: i32 = 4;

    /// A job that the dialer will not touch again.
    pub fn is_finished(state: i32) -> bool {
        matches!(state, SUCCEEDED | FAILED | CANCELLED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_fields_up_by_name() {
        assert_eq!(FIELDS.len(), JOB_FIELDS.len() + 1);
        assert_eq!(FIELDS[0].name, "id");
        assert_eq!(field("state").map(|f| f.access), Some(Access::ReadOnly));
        assert_eq!(field("numbers").map(|f| f.shape), Some(Shape::PhoneNumbers));
        assert!(field("colour").is_none());
    }
}

/// An item of a listing that could not be decoded as a job: set aside rather than failing the
/// listing. `raw` is its text, capped and with long digit runs (phone numbers) and secrets masked.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub job_id: Option<i64>,
    pub campaign: Option<i64>,
    /// What could not be read: the field and the type expected, never the value.
    pub reason: String,
    pub raw: String,
}
