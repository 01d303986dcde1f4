//! `jobsync import FILE [--format ndjson|csv] [--dry-run]`: appends CRM changes to the outbox.
//!
//! Every row is checked first with the push's own validation; a file with any bad line inserts
//! nothing (every bad line is reported with its line number, exit 2). A good file goes in as one
//! transaction, so a CRM never sees half an import pushed. Checking shows a progress bar on a
//! terminal, and progress log lines otherwise.

use super::{CliError, CliResult, ImportArgs, ImportFormat, open_db};
use crate::config::Config;
use crate::db::models::NewOutboxRow;
use crate::db::repo::outbox;
use crate::sync::push::{RowInput, validate};
use crate::telemetry::progress::Progress;
use serde::Deserialize;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Bad lines printed in full; the rest are counted.
const MAX_REPORTED: usize = 1000;

/// One NDJSON line (CSV rows use the same names as headers).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    op: String,
    #[serde(default)]
    campaign: Option<i64>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    job_id: Option<i64>,
    /// A JSON object (NDJSON), or its text (a CSV cell).
    #[serde(default)]
    payload: Option<Value>,
}

impl Line {
    fn into_row(self) -> NewOutboxRow {
        let payload = match self.payload {
            None | Some(Value::Null) => "{}".to_string(),
            Some(Value::String(text)) if text.trim().is_empty() => "{}".to_string(),
            Some(Value::String(text)) => text,
            Some(other) => other.to_string(),
        };
        NewOutboxRow {
            op: self.op,
            campaign: self.campaign,
            reference: self.reference.filter(|r| !r.is_empty()),
            job_id: self.job_id,
            payload,
        }
    }
}

/// The rows of a file and its bad lines (line number, reason).
#[derive(Debug, Default)]
struct Parsed {
    rows: Vec<NewOutboxRow>,
    bad: Vec<(u64, String)>,
}

impl Parsed {
    fn push(&mut self, line: u64, parsed: Result<Line, String>) {
        let checked = parsed.and_then(|l| {
            let row = l.into_row();
            validate(RowInput::from(&row)).map(|_| row)
        });
        match checked {
            Ok(row) => self.rows.push(row),
            Err(reason) => self.bad.push((line, reason)),
        }
    }
}

pub async fn run(config: &Config, args: ImportArgs) -> CliResult {
    let format = format_of(&args)?;
    let source = describe(&args.file);
    let input: Box<dyn Read + Send> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&args.file)
                .map_err(|e| CliError::usage(format!("cannot read {source}: {e}")))?,
        )
    };
    let parsed = tokio::task::spawn_blocking(move || match format {
        ImportFormat::Ndjson => parse_ndjson(input),
        ImportFormat::Csv => parse_csv(input),
    })
    .await
    .map_err(|e| CliError::failed(format!("import task failed: {e}")))??;
    if !parsed.bad.is_empty() {
        for (line, reason) in parsed.bad.iter().take(MAX_REPORTED) {
            eprintln!("{source}:{line}: {reason}");
        }
        if parsed.bad.len() > MAX_REPORTED {
            eprintln!("… and {} more bad lines", parsed.bad.len() - MAX_REPORTED);
        }
        return Err(CliError::usage(format!(
            "{} bad line(s) in {source} (of {}); nothing was inserted — fix them and import the \
             file again",
            parsed.bad.len(),
            parsed.bad.len() + parsed.rows.len()
        )));
    }
    let count = parsed.rows.len();
    if args.dry_run {
        println!("dry run: {count} row(s) of {source} are valid; nothing was inserted");
        return Ok(());
    }
    let db = open_db(config).await?;
    let rows = parsed.rows;
    let inserted = db.run(move |c| outbox::insert(c, &rows)).await?;
    println!("imported {inserted} row(s) from {source} into the outbox");
    Ok(())
}

fn describe(file: &Path) -> String {
    if file.as_os_str() == "-" {
        "stdin".into()
    } else {
        file.display().to_string()
    }
}

fn format_of(args: &ImportArgs) -> Result<ImportFormat, CliError> {
    if let Some(format) = args.format {
        return Ok(format);
    }
    if args.file.as_os_str() == "-" {
        return Ok(ImportFormat::Ndjson);
    }
    let extension = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("csv") => Ok(ImportFormat::Csv),
        Some("ndjson" | "jsonl" | "json") => Ok(ImportFormat::Ndjson),
        _ => Err(CliError::usage(format!(
            "cannot tell the format of {} from its extension; pass --format ndjson or --format csv",
            args.file.display()
        ))),
    }
}

fn parse_ndjson(input: Box<dyn Read + Send>) -> Result<Parsed, CliError> {
    let mut parsed = Parsed::default();
    let mut progress = Progress::new("import: rows checked", None);
    for (index, line) in BufReader::new(input).lines().enumerate() {
        let number = index as u64 + 1;
        let line = line.map_err(|e| CliError::usage(format!("line {number}: cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let decoded =
            serde_json::from_str::<Line>(&line).map_err(|e| format!("not a valid row: {e}"));
        parsed.push(number, decoded);
        progress.add(1);
    }
    progress.finish();
    Ok(parsed)
}

fn parse_csv(input: Box<dyn Read + Send>) -> Result<Parsed, CliError> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| CliError::usage(format!("cannot read the CSV header: {e}")))?
        .clone();
    const KNOWN: [&str; 5] = ["op", "campaign", "reference", "job_id", "payload"];
    if let Some(unknown) = headers.iter().find(|h| !KNOWN.contains(&h.trim())) {
        return Err(CliError::usage(format!(
            "unknown CSV column `{unknown}`; the columns are {}",
            KNOWN.join(", ")
        )));
    }
    if !headers.iter().any(|h| h.trim() == "op") {
        return Err(CliError::usage("the CSV header has no `op` column"));
    }
    let mut parsed = Parsed::default();
    let mut progress = Progress::new("import: rows checked", None);
    for record in reader.records() {
        let (number, decoded) = match record {
            Ok(record) => {
                let number = record.position().map_or(0, |p| p.line());
                (number, csv_line(&headers, &record))
            }
            Err(e) => {
                let number = e.position().map_or(0, |p| p.line());
                (number, Err(format!("not a valid CSV row: {e}")))
            }
        };
        parsed.push(number, decoded);
        progress.add(1);
    }
    progress.finish();
    Ok(parsed)
}

fn csv_line(headers: &csv::StringRecord, record: &csv::StringRecord) -> Result<Line, String> {
    let cell = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .and_then(|i| record.get(i))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let number = |name: &str| -> Result<Option<i64>, String> {
        cell(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("{name} `{v}` is not an integer"))
            })
            .transpose()
    };
    Ok(Line {
        op: cell("op").unwrap_or_default().to_string(),
        campaign: number("campaign")?,
        reference: cell("reference").map(str::to_string),
        job_id: number("job_id")?,
        payload: cell("payload").map(|p| Value::String(p.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ndjson(text: &str) -> Parsed {
        parse_ndjson(Box::new(std::io::Cursor::new(text.to_string()))).unwrap()
    }

    fn csv_text(text: &str) -> Parsed {
        parse_csv(Box::new(std::io::Cursor::new(text.to_string()))).unwrap()
    }

    #[test]
    fn ndjson_rows_and_bad_lines_carry_their_line_numbers() {
        let parsed = ndjson(concat!(
            r#"{"op":"create","campaign":28,"reference":"a","payload":{"name":"A"}}"#,
            "\n\n",
            r#"{"op":"patch","job_id":5,"payload":{"state":2}}"#,
            "\n",
            r#"{"op":"unqueue","campaign":28,"reference":"a"}"#,
            "\n",
            "not json\n",
            r#"{"op":"create","campaign":28,"reference":"b","colour":"red"}"#,
        ));
        assert_eq!(parsed.rows.len(), 2);
        assert_eq!(parsed.rows[1].payload, "{}");
        let lines: Vec<u64> = parsed.bad.iter().map(|b| b.0).collect();
        assert_eq!(lines, [3, 5, 6]);
        assert!(parsed.bad[0].1.contains("read-only"), "{:?}", parsed.bad);
        assert!(parsed.bad[2].1.contains("colour"), "{:?}", parsed.bad);
    }

    #[test]
    fn csv_payload_is_a_json_cell() {
        let parsed = csv_text(concat!(
            "op,campaign,reference,job_id,payload\n",
            "create,28,a,,\"{\"\"name\"\": \"\"A\"\"}\"\n",
            "patch,,,7,\"{\"\"city\"\": \"\"Lyon\"\"}\"\n",
            "patch,,,x,{}\n",
            "unqueue,,,7,\n",
        ));
        assert_eq!(parsed.rows.len(), 3);
        assert_eq!(parsed.rows[0].payload, r#"{"name": "A"}"#);
        assert_eq!(parsed.rows[1].job_id, Some(7));
        assert_eq!(parsed.bad.len(), 1);
        assert_eq!(parsed.bad[0].0, 4);
        assert!(parsed.bad[0].1.contains("job_id `x`"));
    }
}
