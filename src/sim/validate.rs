//! The simulator's own reading of a create, patch or unqueue item, following `jobs-api.md`.
//!
//! Deliberately independent of `api::models::check_writable_fields`: the simulator exists to
//! catch the client's mistakes, so it must not share the client's idea of what is valid. Both
//! take only the documented list of fields from the job model (`crate::job`): each field's
//! access and JSON shape; the checks of a shape are the simulator's own.

use super::phone::normalize_number;
use crate::job::{self, Access, Shape};
use chrono::DateTime;
use serde_json::{Map, Value};

/// A create item, checked: the target campaign and the other fields, numbers in E.164.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateItem {
    pub campaign: i64,
    pub fields: Map<String, Value>,
}

/// A patch item, checked: the job to change and the fields to set (numbers in E.164).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchItem {
    pub id: i64,
    pub fields: Map<String, Value>,
}

pub fn parse_create(item: &Value) -> Result<CreateItem, String> {
    let object = as_object(item)?;
    let mut fields = Map::new();
    let mut campaign = None;
    for (key, value) in object {
        if key == "campaign" {
            let id = value.as_i64().filter(|c| *c > 0).ok_or_else(|| {
                format!("field `campaign` must be a positive integer, not {value}")
            })?;
            campaign = Some(id);
        } else {
            fields.insert(key.clone(), writable_value(key, value)?);
        }
    }
    let campaign = campaign.ok_or("field `campaign` is required to create a job")?;
    Ok(CreateItem { campaign, fields })
}

pub fn parse_patch(item: &Value) -> Result<PatchItem, String> {
    let object = as_object(item)?;
    let id = required_id(object)?;
    let mut fields = Map::new();
    for (key, value) in object.iter().filter(|(key, _)| *key != "id") {
        if key == "campaign" {
            return Err("field `campaign` is read-only once a job exists".into());
        }
        fields.insert(key.clone(), writable_value(key, value)?);
    }
    Ok(PatchItem { id, fields })
}

pub fn parse_unqueue(item: &Value) -> Result<i64, String> {
    let object = as_object(item)?;
    if let Some(other) = object.keys().find(|key| *key != "id") {
        return Err(format!("unexpected field `{other}` in an unqueue item"));
    }
    required_id(object)
}

fn as_object(item: &Value) -> Result<&Map<String, Value>, String> {
    item.as_object()
        .ok_or_else(|| format!("each item must be a JSON object, not {}", kind(item)))
}

fn required_id(object: &Map<String, Value>) -> Result<i64, String> {
    match object.get("id") {
        None => Err("field `id` is required".into()),
        Some(value) => value
            .as_i64()
            .ok_or_else(|| format!("field `id` must be an integer, not {value}")),
    }
}

/// The value to store for a writable field, or why the field is refused.
fn writable_value(key: &str, value: &Value) -> Result<Value, String> {
    let Some(field) = job::field(key) else {
        return Err(format!("unknown field `{key}`"));
    };
    if field.access != Access::Writable {
        return Err(format!("field `{key}` is read-only"));
    }
    let wrong = |expected: &str| {
        Err(format!(
            "field `{key}` must be {expected}, not {}",
            kind(value)
        ))
    };
    match field.shape {
        Shape::Text => match value {
            Value::Null | Value::String(_) => Ok(value.clone()),
            _ => wrong("a string"),
        },
        Shape::Strings => match value {
            Value::Null => Ok(value.clone()),
            Value::Array(lines) if lines.iter().all(Value::is_string) => Ok(value.clone()),
            _ => wrong("an array of strings"),
        },
        Shape::PhoneNumbers => match value {
            Value::Null => Ok(value.clone()),
            Value::Array(numbers) => numbers
                .iter()
                .map(|n| match n {
                    Value::String(raw) => normalize_number(raw).map(Value::String),
                    _ => Err(format!("field `{key}` must hold strings, not {}", kind(n))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            _ => wrong("an array of strings"),
        },
        Shape::DateTime => match value {
            Value::Null => Ok(value.clone()),
            Value::String(s) if DateTime::parse_from_rfc3339(s).is_ok() => Ok(value.clone()),
            _ => wrong("an RFC 3339 datetime"),
        },
        Shape::Object => match value {
            Value::Null | Value::Object(_) => Ok(value.clone()),
            _ => wrong("an object"),
        },
        Shape::Number => match value {
            Value::Null | Value::Number(_) => Ok(value.clone()),
            _ => wrong("a number"),
        },
        Shape::Integer => match value {
            Value::Null => Ok(value.clone()),
            Value::Number(n) if n.is_i64() => Ok(value.clone()),
            _ => wrong("an integer"),
        },
        Shape::PositiveInteger => match value {
            Value::Number(n) if n.as_i64().is_some_and(|n| n > 0) => Ok(value.clone()),
            _ => wrong("a positive integer"),
        },
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_documented_create_and_normalises_numbers() {
        let item = parse_create(&json!({
            "campaign": 28, "data": {"some_property": "some value"},
            "email": "simon.dupont@example.com", "name": "Simon Dupont",
            "numbers": ["0123456789", "0612345678"], "reference": "1234567",
            "url": "https://crm.example.com/customers/1234567", "value": 123.45
        }))
        .unwrap();
        assert_eq!(item.campaign, 28);
        assert_eq!(
            item.fields["numbers"],
            json!(["+33123456789", "+33612345678"])
        );
        assert!(!item.fields.contains_key("campaign"));
    }

    #[test]
    fn create_refuses_missing_campaign_read_only_and_unknown_fields() {
        let cases = [
            (json!({"name": "A"}), "campaign"),
            (json!({"campaign": "28"}), "campaign"),
            (json!({"campaign": 28, "id": 3}), "read-only"),
            (json!({"campaign": 28, "state": 2}), "read-only"),
            (
                json!({"campaign": 28, "created_at": "2016-11-04T19:11:34.985Z"}),
                "read-only",
            ),
            (json!({"campaign": 28, "colour": "red"}), "unknown field"),
            (json!({"campaign": 28, "name": 5}), "`name`"),
            (
                json!({"campaign": 28, "numbers": "0612345678"}),
                "`numbers`",
            ),
            (json!({"campaign": 28, "numbers": ["hello"]}), "E.164"),
            (json!({"campaign": 28, "numbers": [612345678]}), "`numbers`"),
            (
                json!({"campaign": 28, "address_lines": [1]}),
                "`address_lines`",
            ),
            (
                json!({"campaign": 28, "appointment": "tomorrow"}),
                "`appointment`",
            ),
            (json!({"campaign": 28, "data": [1]}), "`data`"),
            (json!({"campaign": 28, "value": "12.5"}), "`value`"),
            (json!([1, 2]), "JSON object"),
        ];
        for (item, expected) in cases {
            let err = parse_create(&item).unwrap_err();
            assert!(err.contains(expected), "{item}: {err}");
        }
    }

    #[test]
    fn create_allows_nulls_and_no_reference() {
        let item = parse_create(&json!({"campaign": 29, "label": null, "data": null,
            "appointment": "2024-05-10T12:00:00+02:00"}))
        .unwrap();
        assert_eq!(item.fields.len(), 3);
    }

    #[test]
    fn patch_needs_an_id_and_cannot_move_campaign_or_state() {
        let item = parse_patch(&json!({"id": 15, "city": "Fooville"})).unwrap();
        assert_eq!((item.id, item.fields.len()), (15, 1));
        for (item, expected) in [
            (json!({"city": "Fooville"}), "`id` is required"),
            (json!({"id": "15"}), "`id` must be an integer"),
            (json!({"id": 15, "campaign": 29}), "`campaign` is read-only"),
            (json!({"id": 15, "state": 4}), "read-only"),
            (json!({"id": 15, "created_at": null}), "read-only"),
            (json!({"id": 15, "nmae": "typo"}), "unknown field"),
        ] {
            let err = parse_patch(&item).unwrap_err();
            assert!(err.contains(expected), "{item}: {err}");
        }
    }

    #[test]
    fn unqueue_takes_only_an_id() {
        assert_eq!(parse_unqueue(&json!({"id": 14})).unwrap(), 14);
        assert!(parse_unqueue(&json!({"id": 14, "state": 4})).is_err());
        assert!(parse_unqueue(&json!({})).is_err());
        assert!(parse_unqueue(&json!(14)).is_err());
    }
}
