//! Wire types of the Jobs API (`docs/jobs-api.md`), shared by the client and the simulator.
//!
//! Decoding is tolerant where the documentation allows it (unknown fields are ignored, optional
//! fields may be `null` or missing) and strict where a wrong type would corrupt the mirror.
//!
//! The job itself is the neutral model of [`crate::job`], re-exported here; which fields a create
//! or patch may carry, and in which shape, comes from its table.

use crate::job::{self, Access, Shape};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::job::Job;

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
    let Some(field) = job::field(key) else {
        return Err(format!("unknown job field `{key}`"));
    };
    match field.access {
        Access::ReadOnly => return Err(format!("field `{key}` is read-only")),
        Access::CreateOnly if !allow_campaign => {
            return Err(format!("field `{key}` cannot be changed by a patch"));
        }
        Access::CreateOnly | Access::Writable => {}
    }
    let ok = match field.shape {
        Shape::Integer => value.is_null() || value.is_i64(),
        Shape::PositiveInteger => value.as_i64().is_some_and(|c| c > 0),
        Shape::Text => value.is_null() || value.is_string(),
        Shape::Strings | Shape::PhoneNumbers => {
            value.is_null()
                || value
                    .as_array()
                    .is_some_and(|items| items.iter().all(Value::is_string))
        }
        Shape::DateTime => {
            value.is_null()
                || value
                    .as_str()
                    .is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok())
        }
        Shape::Object => value.is_null() || value.is_object(),
        Shape::Number => value.is_null() || value.is_number(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "field `{key}` has the wrong type ({}); expected {}",
            type_name(value),
            expected_type(field.shape)
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

fn expected_type(shape: Shape) -> &'static str {
    match shape {
        Shape::Integer => "an integer",
        Shape::PositiveInteger => "a positive integer",
        Shape::Strings | Shape::PhoneNumbers => "an array of strings",
        Shape::DateTime => "an RFC 3339 datetime string",
        Shape::Object => "an object",
        Shape::Number => "a number",
        Shape::Text => "a string",
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
