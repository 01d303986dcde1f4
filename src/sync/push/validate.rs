//! What makes an outbox row valid on its own (docs/contract.md §3), independent of the mirror:
//! the push and `jobsync import` share this one check, so a file that imports cleanly never fails
//! here.

use crate::api::models::{JobFields, check_writable_fields};
use crate::db::models::{NewOutboxRow, OpenRow};
use serde_json::Value;

/// The operation a row asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Patch,
    Unqueue,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Patch => "patch",
            Op::Unqueue => "unqueue",
        }
    }
}

/// Which job a row is about: the API's id, or the CRM's own key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Id(i64),
    Ref { campaign: i64, reference: String },
}

/// A valid row, ready to plan. For a create, `fields` already holds `campaign` and `reference`.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub op: Op,
    pub target: Target,
    pub fields: JobFields,
}

/// The columns a CRM writes, borrowed from an outbox row or an import line.
#[derive(Debug, Clone, Copy)]
pub struct RowInput<'a> {
    pub op: &'a str,
    pub campaign: Option<i64>,
    pub reference: Option<&'a str>,
    pub job_id: Option<i64>,
    pub payload: &'a str,
}

impl<'a> From<&'a OpenRow> for RowInput<'a> {
    fn from(row: &'a OpenRow) -> Self {
        RowInput {
            op: &row.op,
            campaign: row.campaign,
            reference: row.reference.as_deref(),
            job_id: row.job_id,
            payload: &row.payload,
        }
    }
}

impl<'a> From<&'a NewOutboxRow> for RowInput<'a> {
    fn from(row: &'a NewOutboxRow) -> Self {
        RowInput {
            op: &row.op,
            campaign: row.campaign,
            reference: row.reference.as_deref(),
            job_id: row.job_id,
            payload: &row.payload,
        }
    }
}

/// Checks one row; the error is the reason stored in `last_error` (or printed by `import`).
pub fn validate(row: RowInput<'_>) -> Result<Intent, String> {
    check_payload_size(row.payload)?;
    let op = parse_op(row.op)?;
    check_reference(row.reference)?;
    if row.payload.contains('\0') {
        // Raw, as SQLite can store it (inside a JSON string it would also be invalid JSON).
        return Err(format!("payload {NUL_REASON}"));
    }
    let fields = parse_payload(row.payload)?;
    validate_parsed(op, row, fields)
}

/// [`validate`] for a row whose payload the caller has already parsed into `fields`
/// (`row.payload` is not read): `import` decodes a line's payload with the line.
pub fn validate_fields(row: RowInput<'_>, fields: JobFields) -> Result<Intent, String> {
    let op = parse_op(row.op)?;
    check_reference(row.reference)?;
    validate_parsed(op, row, fields)
}

/// The largest payload a row may carry: a job made of it must stay within the per-job cap the
/// pull enforces on listings ([`MAX_JOB_BYTES`](crate::api::listing::MAX_JOB_BYTES), 1 MiB),
/// with 64 KiB left for the fields the API adds. A larger job, once the API accepted it, would
/// fail every later pull that lists it.
pub const MAX_PAYLOAD_BYTES: usize = crate::api::listing::MAX_JOB_BYTES - 64 * 1024;

/// Refuses a payload over [`MAX_PAYLOAD_BYTES`], naming the cap.
pub fn check_payload_size(payload: &str) -> Result<(), String> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "payload is {} bytes, more than {MAX_PAYLOAD_BYTES} (960 KiB): the job would exceed the \
             1 MiB per job that jobsync reads back from the API's listings; shorten its fields",
            payload.len()
        ));
    }
    Ok(())
}

/// Why a NUL character is refused: PostgreSQL text cannot hold one, so a job carrying it could
/// not be recorded in the mirror after the API applied it (and a CRM on PostgreSQL could not
/// read it back).
const NUL_REASON: &str = "contains a NUL character (U+0000, `\\u0000` in JSON), which the \
                          database cannot store; remove it";

fn parse_op(op: &str) -> Result<Op, String> {
    match op {
        "create" => Ok(Op::Create),
        "patch" => Ok(Op::Patch),
        "unqueue" => Ok(Op::Unqueue),
        other => Err(format!(
            "unknown op `{}`; expected create, patch or unqueue",
            other.escape_debug()
        )),
    }
}

fn check_reference(reference: Option<&str>) -> Result<(), String> {
    if reference.is_some_and(|r| r.contains('\0')) {
        return Err(format!("reference {NUL_REASON}"));
    }
    Ok(())
}

/// Whether a NUL character is anywhere in `value`: a string, an object's key, at any depth.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn validate_parsed(op: Op, row: RowInput<'_>, fields: JobFields) -> Result<Intent, String> {
    if let Some((key, _)) = fields
        .iter()
        .find(|(k, v)| k.contains('\0') || holds_nul(v))
    {
        return Err(format!(
            "payload field `{}` {NUL_REASON}",
            key.escape_debug()
        ));
    }
    if let Some(campaign) = row.campaign
        && campaign <= 0
    {
        return Err(format!(
            "campaign must be a positive integer, not {campaign}"
        ));
    }
    if let Some(id) = row.job_id
        && id <= 0
    {
        return Err(format!("job_id must be a positive integer, not {id}"));
    }
    let reference = row.reference.filter(|r| !r.is_empty());
    match op {
        Op::Create => validate_create(row, reference, fields),
        Op::Patch => {
            let target = target_of(row, reference)?;
            check_writable_fields(&fields, false).map_err(|e| format!("payload: {e}"))?;
            Ok(Intent { op, target, fields })
        }
        Op::Unqueue => {
            let target = target_of(row, reference)?;
            if !fields.is_empty() {
                return Err("an unqueue takes no fields: its payload must be {}".into());
            }
            Ok(Intent { op, target, fields })
        }
    }
}

fn validate_create(
    row: RowInput<'_>,
    reference: Option<&str>,
    mut fields: JobFields,
) -> Result<Intent, String> {
    let (Some(campaign), Some(reference)) = (row.campaign, reference) else {
        return Err(
            "a create needs both campaign and reference (the CRM's own key, unique \
                    within the campaign)"
                .into(),
        );
    };
    if row.job_id.is_some() {
        return Err("a create cannot name a job_id: the API assigns it".into());
    }
    check_writable_fields(&fields, true).map_err(|e| format!("payload: {e}"))?;
    if let Some(given) = fields.get("campaign")
        && given.as_i64() != Some(campaign)
    {
        return Err(format!(
            "payload campaign {given} contradicts the row's campaign {campaign}"
        ));
    }
    if let Some(given) = fields.get("reference")
        && given.as_str() != Some(reference)
    {
        return Err(format!(
            "payload reference {given} contradicts the row's reference `{reference}`"
        ));
    }
    fields.insert("campaign".into(), campaign.into());
    fields.insert("reference".into(), reference.into());
    Ok(Intent {
        op: Op::Create,
        target: Target::Ref {
            campaign,
            reference: reference.to_owned(),
        },
        fields,
    })
}

fn target_of(row: RowInput<'_>, reference: Option<&str>) -> Result<Target, String> {
    match (row.job_id, row.campaign, reference) {
        (Some(id), _, _) => Ok(Target::Id(id)),
        (None, Some(campaign), Some(reference)) => Ok(Target::Ref {
            campaign,
            reference: reference.to_owned(),
        }),
        _ => Err(format!(
            "missing target: a {} needs job_id, or campaign and reference",
            row.op
        )),
    }
}

fn parse_payload(text: &str) -> Result<JobFields, String> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(other) => Err(format!(
            "payload must be a JSON object of job fields, not {}",
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )),
        Err(e) => Err(format!("payload is not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(
        op: &'a str,
        campaign: Option<i64>,
        reference: Option<&'a str>,
        job_id: Option<i64>,
        payload: &'a str,
    ) -> RowInput<'a> {
        RowInput {
            op,
            campaign,
            reference,
            job_id,
            payload,
        }
    }

    #[test]
    fn a_create_carries_its_key_in_the_fields() {
        let intent =
            validate(row("create", Some(28), Some("r1"), None, r#"{"name":"A"}"#)).unwrap();
        assert_eq!(intent.op, Op::Create);
        assert_eq!(intent.fields["campaign"], 28);
        assert_eq!(intent.fields["reference"], "r1");
        let same = r#"{"campaign":28,"reference":"r1"}"#;
        assert!(validate(row("create", Some(28), Some("r1"), None, same)).is_ok());
    }

    #[test]
    fn rejects_each_kind_of_bad_row_with_its_reason() {
        let cases = [
            (row("delete", Some(1), Some("r"), None, "{}"), "unknown op"),
            (
                row("create", None, Some("r"), None, "{}"),
                "campaign and reference",
            ),
            (
                row("create", Some(1), Some(""), None, "{}"),
                "campaign and reference",
            ),
            (
                row("create", Some(1), Some("r"), None, r#"{"campaign":2}"#),
                "contradicts",
            ),
            (
                row("create", Some(1), Some("r"), None, r#"{"reference":"x"}"#),
                "contradicts",
            ),
            (
                row("create", Some(1), Some("r"), None, "[1]"),
                "JSON object",
            ),
            (
                row("create", Some(1), Some("r"), None, "{nope"),
                "not valid JSON",
            ),
            (
                row("create", Some(1), Some("r"), None, r#"{"numbers":"06"}"#),
                "numbers",
            ),
            (
                row("patch", Some(1), None, None, r#"{"name":"A"}"#),
                "missing target",
            ),
            (
                row("patch", None, None, Some(3), r#"{"state":2}"#),
                "read-only",
            ),
            (
                row("patch", None, None, Some(3), r#"{"campaign":2}"#),
                "campaign",
            ),
            (
                row("patch", None, None, Some(3), r#"{"colour":"red"}"#),
                "unknown job field",
            ),
            (
                row("unqueue", None, None, Some(3), r#"{"name":"A"}"#),
                "payload must be {}",
            ),
            (row("unqueue", None, None, None, "{}"), "missing target"),
            (row("unqueue", None, None, Some(0), "{}"), "job_id"),
            (
                row("create", Some(1), Some("r"), None, r#"{"name":"x\u0000y"}"#),
                "payload field `name` contains a NUL character",
            ),
            (
                row("patch", None, None, Some(3), r#"{"data":{"a":["\u0000"]}}"#),
                "payload field `data` contains a NUL",
            ),
            (
                row("patch", None, None, Some(3), r#"{"data":{"k\u0000":1}}"#),
                "payload field `data` contains a NUL",
            ),
            (
                row("create", Some(1), Some("r"), None, "{\"name\":\"x\0y\"}"),
                "payload contains a NUL character",
            ),
            (
                row("create", Some(1), Some("r\0"), None, "{}"),
                "reference contains a NUL character",
            ),
            (
                row("bo\0gus", None, None, Some(3), "{}"),
                "unknown op `bo\\0gus`",
            ),
        ];
        for (input, expected) in cases {
            let err = validate(input).unwrap_err();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn a_pre_parsed_payload_is_checked_the_same() {
        let fields = |text: &str| parse_payload(text).unwrap();
        let input = row("create", Some(28), Some("r1"), None, "ignored");
        let intent = validate_fields(input, fields(r#"{"name":"A"}"#)).unwrap();
        assert_eq!(intent.fields["reference"], "r1");
        let err = validate_fields(input, fields(r#"{"state":2}"#)).unwrap_err();
        assert!(err.contains("read-only"), "{err}");
        let err = validate_fields(input, fields(r#"{"city":"\u0000"}"#)).unwrap_err();
        assert!(err.contains("NUL"), "{err}");
    }

    #[test]
    fn patches_and_unqueues_name_their_target_either_way() {
        let by_id = validate(row("patch", None, None, Some(7), r#"{"city":"X"}"#)).unwrap();
        assert_eq!(by_id.target, Target::Id(7));
        let by_ref = validate(row("unqueue", Some(28), Some("r"), None, "")).unwrap();
        assert_eq!(
            by_ref.target,
            Target::Ref {
                campaign: 28,
                reference: "r".into()
            }
        );
    }
}
