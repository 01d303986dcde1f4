//! Wire types of the Jobs API (`docs/jobs-api.md`), shared by the client and the simulator.
//!
//! Decoding is tolerant where the documentation allows it (unknown fields are ignored, optional
//! fields may be `null` or missing) and strict where a wrong type would corrupt the mirror.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One job exactly as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: i64,
    pub campaign: i64,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub numbers: Option<Vec<String>>,
    #[serde(default)]
    pub address_lines: Option<Vec<String>>,
    #[serde(default)]
    pub postal_code: Option<String>,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub appointment: Option<DateTime<Utc>>,
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub value: Option<f64>,
    pub state: i32,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

impl Job {
    /// The job with its datetimes truncated to microseconds, the precision both database
    /// backends keep (SPEC §3), so that a stored row and a fresh answer compare equal.
    pub fn truncated_to_micros(mut self) -> Self {
        self.appointment = self.appointment.map(|t| t.trunc_subsecs(6));
        self.created_at = self.created_at.map(|t| t.trunc_subsecs(6));
        self
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

/// The fields of a job in the order the contract lists them (everything but `id`).
/// `changed_fields` in the changefeed uses these names.
pub const JOB_FIELDS: [&str; 16] = [
    "campaign",
    "reference",
    "name",
    "email",
    "numbers",
    "address_lines",
    "postal_code",
    "city",
    "country",
    "appointment",
    "data",
    "label",
    "url",
    "value",
    "state",
    "created_at",
];

/// One item of a bulk create (`campaign` and the writable fields) or a bulk patch (`id` and the
/// writable fields). Kept as a JSON object so that PATCH semantics survive: a field absent is left
/// alone, a field set to `null` is cleared.
pub type JobFields = Map<String, Value>;

/// One item of a bulk unqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobId {
    pub id: i64,
}

/// One per-item answer of a bulk call, in the order of the request's items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkItemResult {
    #[serde(default)]
    pub data: Option<Job>,
    pub status_code: u16,
    /// A reason, when the API gives one for a rejected item (the documentation shows none; the
    /// simulator sends one, and the client keeps it for `outbox.last_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a set of job fields is not a valid create or patch.
pub fn check_writable_fields(fields: &JobFields, allow_campaign: bool) -> Result<(), String> {
    for (key, value) in fields {
        check_field(key, value, allow_campaign)?;
    }
    Ok(())
}

fn check_field(key: &str, value: &Value, allow_campaign: bool) -> Result<(), String> {
    let ok = match key {
        "campaign" if allow_campaign => value.as_i64().is_some_and(|c| c > 0),
        "campaign" => return Err("field `campaign` cannot be changed by a patch".into()),
        "id" | "state" | "created_at" => {
            return Err(format!("field `{key}` is read-only"));
        }
        "reference" | "name" | "email" | "postal_code" | "city" | "country" | "label" | "url" => {
            value.is_null() || value.is_string()
        }
        "numbers" | "address_lines" => {
            value.is_null()
                || value
                    .as_array()
                    .is_some_and(|items| items.iter().all(Value::is_string))
        }
        "appointment" => {
            value.is_null()
                || value
                    .as_str()
                    .is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok())
        }
        "data" => value.is_null() || value.is_object(),
        "value" => value.is_null() || value.is_number(),
        other => return Err(format!("unknown job field `{other}`")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "field `{key}` has the wrong type ({}); expected {}",
            type_name(value),
            expected_type(key)
        ))
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected_type(key: &str) -> &'static str {
    match key {
        "campaign" => "a positive integer",
        "numbers" | "address_lines" => "an array of strings",
        "appointment" => "an RFC 3339 datetime string",
        "data" => "an object",
        "value" => "a number",
        _ => "a string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_the_documented_example_with_nulls_and_unknown_fields() {
        let job: Job = serde_json::from_value(json!({
            "address_lines": ["1 rue Toto"], "appointment": null, "campaign": 28,
            "city": "Paris", "country": "FR", "created_at": "2016-11-04T19:11:34.985Z",
            "data": {"some_property": "some value"}, "email": "simon.dupont@example.com",
            "id": 14, "label": null, "name": "Simon Dupont",
            "numbers": ["+33123456789", "+33612345678"], "postal_code": "75001",
            "reference": "1234567", "state": 0, "url": "https://crm.example.com/customers/1234567",
            "value": 123.45, "something_new": true
        }))
        .unwrap();
        assert_eq!(job.id, 14);
        assert_eq!(job.label, None);
        assert_eq!(job.value, Some(123.45));
    }

    #[test]
    fn rejects_a_wrong_type() {
        let err = serde_json::from_value::<Job>(json!({"id": "x", "campaign": 1, "state": 0}))
            .unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn checks_writable_fields() {
        let ok = json!({"name": "A", "numbers": ["1"], "value": 3, "data": {}, "label": null});
        assert!(check_writable_fields(ok.as_object().unwrap(), false).is_ok());
        let bad = json!({"state": 2});
        assert!(check_writable_fields(bad.as_object().unwrap(), false).is_err());
        let bad = json!({"numbers": "0612"});
        let err = check_writable_fields(bad.as_object().unwrap(), false).unwrap_err();
        assert!(err.contains("numbers"), "{err}");
        let bad = json!({"campaign": 3});
        assert!(check_writable_fields(bad.as_object().unwrap(), false).is_err());
        assert!(check_writable_fields(bad.as_object().unwrap(), true).is_ok());
    }
}
