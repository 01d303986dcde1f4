//! `jobsync import FILE [--format ndjson|csv] [--delimiter CHAR] [--dry-run]`: appends CRM
//! changes to the outbox.
//!
//! The file is streamed: read, checked with the push's own validation, and inserted
//! [`BATCH_ROWS`] rows at a time, so memory does not grow with the file. All of it goes in one
//! write transaction, begun at the first insert and committed after the last line, so a CRM (and
//! the push, which cannot read uncommitted rows) never sees half an import. A file with any bad
//! line inserts nothing: the transaction is rolled back at the first bad line, and the rest of
//! the file is still read and checked so that every bad line is reported with its line number
//! (the first [`MAX_REPORTED`] in full, the rest counted), exit 2. A file that is not UTF-8 stops
//! at its first such line. Checking shows a progress bar on a terminal, and progress log lines
//! otherwise.

use super::progress::Progress;
use super::{CliError, CliResult, ImportArgs, ImportFormat, open_db};
use crate::config::Config;
use crate::db::models::NewOutboxRow;
use crate::db::repo::{self, outbox};
use crate::db::{Conn, Db};
use crate::sync::push::{RowInput, check_payload_size, validate, validate_fields};
use serde::Deserialize;
use serde_json::Value;
use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bad lines printed in full; the rest are counted.
const MAX_REPORTED: u64 = 1000;

/// Rows checked, then inserted, at a time: what the import holds in memory.
const BATCH_ROWS: usize = 2000;

/// The longest NDJSON line read: a row is its payload (at most
/// [`MAX_PAYLOAD_BYTES`](crate::sync::push::MAX_PAYLOAD_BYTES)) and a few short fields.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// The UTF-8 byte order mark that some editors (Excel, Notepad) write at the start of a file.
const BOM: &[u8] = b"\xef\xbb\xbf";

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
    /// The row to insert, checked with the push's rules; the error is the line's reason.
    fn check(self) -> Result<NewOutboxRow, String> {
        let reference = self.reference.filter(|r| !r.is_empty());
        let input = |payload| RowInput {
            op: &self.op,
            campaign: self.campaign,
            reference: reference.as_deref(),
            job_id: self.job_id,
            payload,
        };
        let payload = match self.payload {
            // An object is already parsed: its text is written, the object checked as it is.
            Some(Value::Object(fields)) => {
                let text = serde_json::to_string(&fields)
                    .map_err(|e| format!("payload cannot be written as JSON: {e}"))?;
                // The other forms go through `validate`, which checks the size itself.
                check_payload_size(&text)?;
                validate_fields(input(&text), fields)?;
                text
            }
            None | Some(Value::Null) => {
                validate(input("{}"))?;
                "{}".to_string()
            }
            Some(Value::String(text)) if text.trim().is_empty() => {
                validate(input("{}"))?;
                "{}".to_string()
            }
            Some(Value::String(text)) => {
                validate(input(&text))?;
                text
            }
            // Refused by the check, with the reason naming the type.
            Some(other) => {
                let text = other.to_string();
                validate(input(&text))?;
                text
            }
        };
        Ok(NewOutboxRow {
            op: self.op,
            campaign: self.campaign,
            reference,
            job_id: self.job_id,
            payload,
        })
    }
}

/// What became of a whole file.
struct Imported {
    rows: u64,
    /// How long the write transaction was open, and its commit took (`None` for a dry run, or an
    /// empty file). On SQLite the commit includes the checkpoint that copies the log into the
    /// database, which runs once the write lock is released.
    transaction: Option<(Duration, Duration)>,
}

/// Takes the checked lines of a file, in order: inserts the good ones batch by batch in one
/// transaction while no line was bad; reports the bad ones.
struct Sink<'a> {
    /// `None` for a dry run.
    conn: Option<&'a mut Conn>,
    source: &'a str,
    batch: Vec<NewOutboxRow>,
    /// When the write transaction began, while it is open.
    began: Option<Instant>,
    rows: u64,
    bad: u64,
    progress: Progress,
}

impl<'a> Sink<'a> {
    fn new(conn: Option<&'a mut Conn>, source: &'a str) -> Self {
        Sink {
            conn,
            source,
            batch: Vec::with_capacity(BATCH_ROWS),
            began: None,
            rows: 0,
            bad: 0,
            progress: Progress::new("import: rows checked", None),
        }
    }

    fn line(&mut self, number: u64, checked: Result<NewOutboxRow, String>) -> CliResult {
        self.rows += 1;
        self.progress.add(1);
        match checked {
            Ok(row) if self.bad == 0 => {
                self.batch.push(row);
                if self.batch.len() >= BATCH_ROWS {
                    self.flush()?;
                }
            }
            // Nothing will be inserted: the rest of the file is only checked.
            Ok(_) => {}
            Err(reason) => {
                self.bad += 1;
                if self.bad <= MAX_REPORTED {
                    let source = self.source;
                    self.progress
                        .suspend(|| eprintln!("{source}:{number}: {reason}"));
                }
                if self.bad == 1 {
                    self.batch = Vec::new();
                    self.abandon()?;
                }
            }
        }
        Ok(())
    }

    /// Inserts the batch, beginning the transaction at the first one.
    fn flush(&mut self) -> CliResult {
        if let Some(conn) = self.conn.as_deref_mut()
            && !self.batch.is_empty()
        {
            if self.began.is_none() {
                // A file read slowly (a pipe) may leave the transaction idle for long.
                repo::allow_idle_transaction(conn)?;
                repo::begin(conn)?;
                self.began = Some(Instant::now());
            }
            outbox::append(conn, &self.batch)?;
        }
        self.batch.clear();
        Ok(())
    }

    /// Rolls back what was inserted, if anything.
    fn abandon(&mut self) -> CliResult {
        if let (Some(conn), Some(_)) = (self.conn.as_deref_mut(), self.began.take()) {
            repo::rollback(conn)?;
        }
        Ok(())
    }

    /// After the last line: commits, or reports the bad lines.
    fn finish(&mut self) -> Result<Imported, CliError> {
        if self.bad > 0 {
            if self.bad > MAX_REPORTED {
                let more = self.bad - MAX_REPORTED;
                self.progress
                    .suspend(|| eprintln!("… and {more} more bad lines"));
            }
            return Err(CliError::usage(format!(
                "{} bad line(s) in {} (of {}); nothing was inserted — fix them and import the \
                 file again",
                self.bad, self.source, self.rows
            )));
        }
        self.flush()?;
        let mut transaction = None;
        if let (Some(conn), Some(began)) = (self.conn.as_deref_mut(), self.began.take()) {
            let committing = Instant::now();
            repo::commit(conn)?;
            transaction = Some((began.elapsed(), committing.elapsed()));
        }
        Ok(Imported {
            rows: self.rows,
            transaction,
        })
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
    let db = if args.dry_run {
        None
    } else {
        Some(open_db(config).await?)
    };
    let name = source.clone();
    let delimiter = args.delimiter.unwrap_or(b',');
    let imported =
        crate::db::blocking(move || import(input, format, delimiter, &name, db.as_ref())).await?;
    let count = imported.rows;
    if args.dry_run {
        outln!("dry run: {count} row(s) of {source} are valid; nothing was inserted");
        return Ok(());
    }
    if let Some((held, commit)) = imported.transaction {
        tracing::info!(
            rows = count,
            transaction_ms = held.as_millis() as u64,
            commit_ms = commit.as_millis() as u64,
            "import committed"
        );
    }
    outln!("imported {count} row(s) from {source} into the outbox");
    Ok(())
}

/// Streams `input` into the outbox (`db`), or only checks it (`None`).
fn import(
    input: Box<dyn Read + Send>,
    format: ImportFormat,
    delimiter: u8,
    source: &str,
    db: Option<&Db>,
) -> Result<Imported, CliError> {
    let mut conn = db.map(Db::conn).transpose()?;
    let mut sink = Sink::new(conn.as_mut(), source);
    let read = match format {
        ImportFormat::Ndjson => read_ndjson(input, source, |n, row| sink.line(n, row)),
        ImportFormat::Csv => read_csv(input, source, delimiter, |n, row| sink.line(n, row)),
    };
    let outcome = read.and_then(|()| sink.finish());
    if outcome.is_err() {
        // A read or database error, or bad lines: nothing stays inserted.
        let _ = sink.abandon();
    }
    let Sink { progress, .. } = sink;
    progress.finish();
    outcome
}

fn describe(file: &Path) -> String {
    if file.as_os_str() == "-" {
        "stdin".into()
    } else {
        file.display().to_string()
    }
}

/// The file's format: `--format`, else its extension; `--delimiter` means CSV where neither
/// says otherwise (stdin, an unknown extension) and is refused where they say NDJSON.
fn format_of(args: &ImportArgs) -> Result<ImportFormat, CliError> {
    let format = format_named(args)?;
    if args.delimiter.is_some() && format == Some(ImportFormat::Ndjson) {
        let why = if args.format.is_some() {
            "and --format ndjson reads NDJSON".to_string()
        } else {
            format!(
                "and {} is read as NDJSON (from its extension)",
                args.file.display()
            )
        };
        return Err(CliError::usage(format!(
            "--delimiter applies to CSV only, {why}; drop --delimiter, or pass --format csv if \
             the file is CSV"
        )));
    }
    match format {
        Some(format) => Ok(format),
        None if args.delimiter.is_some() => Ok(ImportFormat::Csv),
        None if args.file.as_os_str() == "-" => Ok(ImportFormat::Ndjson),
        None => Err(CliError::usage(format!(
            "cannot tell the format of {} from its extension; pass --format ndjson or --format csv",
            args.file.display()
        ))),
    }
}

/// The format `--format` or the file's extension names, if any.
fn format_named(args: &ImportArgs) -> Result<Option<ImportFormat>, CliError> {
    if let Some(format) = args.format {
        return Ok(Some(format));
    }
    if args.file.as_os_str() == "-" {
        return Ok(None);
    }
    let extension = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    Ok(match extension.as_deref() {
        Some("csv") => Some(ImportFormat::Csv),
        Some("ndjson" | "jsonl" | "json") => Some(ImportFormat::Ndjson),
        _ => None,
    })
}

/// The one-line error for bytes that are not UTF-8 at `line` (`bytes[..valid]` are).
fn not_utf8(source: &str, line: u64, what: &str, bytes: &[u8], valid: usize) -> CliError {
    if line == 1 && (bytes.starts_with(b"\xff\xfe") || bytes.starts_with(b"\xfe\xff")) {
        return CliError::usage(format!(
            "{source}:1: the file is UTF-16 text; save the file as UTF-8 and import it again"
        ));
    }
    let column = String::from_utf8_lossy(&bytes[..valid]).chars().count() + 1;
    let byte = bytes.get(valid).copied().unwrap_or_default();
    CliError::usage(format!(
        "{source}:{line}: {what}byte 0x{byte:02X} at character {column} is not UTF-8 (a Latin-1 \
         or Windows-1252 file?); save the file as UTF-8 and import it again"
    ))
}

/// Reads NDJSON lines, passing each non-blank line's number and checked row to `emit`.
fn read_ndjson(
    input: impl Read,
    source: &str,
    mut emit: impl FnMut(u64, Result<NewOutboxRow, String>) -> CliResult,
) -> CliResult {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut buf = Vec::with_capacity(1024);
    let mut number = 0u64;
    let mut seen_content = false;
    loop {
        buf.clear();
        // At most one row's worth is read into memory: a line without end (`/dev/zero`, a
        // corrupt export) stops the file instead of filling the memory.
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| CliError::usage(format!("cannot read {source}: {e}")))?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        if buf.len() > MAX_LINE_BYTES && !buf.ends_with(b"\n") {
            return Err(CliError::usage(format!(
                "{source}:{number}: the line is longer than {} KiB, more than any row can be (a \
                 payload may hold {} KiB); nothing of the file is imported",
                MAX_LINE_BYTES / 1024,
                crate::sync::push::MAX_PAYLOAD_BYTES / 1024
            )));
        }
        let mut bytes = buf.as_slice();
        if number == 1 {
            bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| not_utf8(source, number, "", bytes, e.valid_up_to()))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let first = !seen_content;
        seen_content = true;
        let parsed = serde_json::from_str::<Line>(text);
        if let Err(e) = &parsed
            && first
            && looks_like_csv(text)
        {
            // Every line would fail the same way: one line saying why is enough.
            return Err(CliError::usage(format!(
                "{source}:{number}: not an NDJSON row ({e}); if this is CSV, add --format csv"
            )));
        }
        let checked = parsed
            .map_err(|e| format!("not a valid row: {e}"))
            .and_then(Line::check);
        emit(number, checked)?;
    }
}

/// The CSV reader's buffer: the most it holds of the input that it has not yet parsed.
const CSV_BUFFER: usize = 8 * 1024;

/// What [`Tracked`] knows of the input it has handed to the CSV reader.
struct Stream {
    /// Bytes handed out since the last record ended: at most about one row's worth is read
    /// between two records, as an unterminated quote (or `/dev/zero`) would otherwise make one
    /// record of the whole rest of the file.
    since_record: usize,
    /// Bytes handed out in all.
    handed: u64,
    /// The last bytes handed out, byte `i` at `i % len`: enough to hold all the reader has not
    /// parsed yet, and the last byte it did.
    recent: Box<[u8]>,
}

impl Stream {
    fn new() -> Self {
        Stream {
            since_record: 0,
            handed: 0,
            recent: vec![0; 2 * CSV_BUFFER].into_boxed_slice(),
        }
    }

    /// The byte at `offset`, if it is still held.
    fn byte_at(&self, offset: u64) -> Option<u8> {
        let len = self.recent.len() as u64;
        (offset < self.handed && self.handed - offset <= len)
            .then(|| self.recent[(offset % len) as usize])
    }
}

/// A CSV input that refuses to hand out more than [`MAX_LINE_BYTES`] (and a buffer) between two
/// records (the reader resets `since_record` after each one), and keeps the last bytes it handed
/// out, for line numbers.
struct Tracked<R> {
    inner: R,
    stream: Rc<RefCell<Stream>>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut stream = self.stream.borrow_mut();
        if stream.since_record > MAX_LINE_BYTES + 64 * 1024 {
            return Err(std::io::Error::other(format!(
                "a record longer than {} KiB, more than any row can be (an unterminated quote?); \
                 nothing of the file is imported",
                MAX_LINE_BYTES / 1024
            )));
        }
        let n = self.inner.read(buf)?;
        let len = stream.recent.len();
        // Only the last `len` bytes of a larger read can still be asked for.
        let kept = &buf[n.saturating_sub(len)..n];
        let at = ((stream.handed + (n - kept.len()) as u64) % len as u64) as usize;
        let first = kept.len().min(len - at);
        stream.recent[at..at + first].copy_from_slice(&kept[..first]);
        stream.recent[..kept.len() - first].copy_from_slice(&kept[first..]);
        stream.since_record += n;
        stream.handed += n as u64;
        Ok(n)
    }
}

/// Where a CSV record is, in the lines an editor shows. The CSV reader's own line numbers count
/// the newlines it has parsed when a record begins, which is one short after a CRLF line (it
/// ends a record at the `\r`, and its `\n` opens the next one) or a blank line.
struct Lines {
    stream: Rc<RefCell<Stream>>,
    /// The line the next record is expected on (blank lines before it aside).
    next: u64,
}

impl Lines {
    /// The line where `record`, just read, begins: the lines parsed up to its end, less the
    /// line breaks inside its cells (a quoted cell spanning lines) and the `\n` that ended it.
    fn of(&mut self, record: &csv::ByteRecord, end: &csv::Position) -> u64 {
        let inside: u64 = record
            .iter()
            .map(|cell| cell.iter().filter(|&&b| b == b'\n').count() as u64)
            .sum();
        let last = end
            .byte()
            .checked_sub(1)
            .and_then(|at| self.stream.borrow().byte_at(at));
        let (ended_by_lf, next) = match last {
            Some(b'\n') => (1, end.line()),
            // A CRLF line: the `\n` is still to be parsed.
            Some(b'\r') => (0, end.line() + 1),
            _ => (0, end.line()),
        };
        self.next = next;
        self.stream.borrow_mut().since_record = 0;
        end.line().saturating_sub(inside + ended_by_lf).max(1)
    }
}

/// Whether a line that is not NDJSON looks like a CSV header or row: commas, and no JSON object.
fn looks_like_csv(line: &str) -> bool {
    line.contains(',') && !line.contains('{')
}

/// The columns of an import CSV, in their usual order.
const COLUMNS: [&str; 5] = ["op", "campaign", "reference", "job_id", "payload"];

/// Reads CSV records, cells separated by `delimiter`, passing each one's line number (where it
/// begins, as an editor counts lines) and checked row to `emit`.
fn read_csv(
    input: impl Read,
    source: &str,
    delimiter: u8,
    mut emit: impl FnMut(u64, Result<NewOutboxRow, String>) -> CliResult,
) -> CliResult {
    // csv-core skips a UTF-8 byte order mark at the start.
    let stream = Rc::new(RefCell::new(Stream::new()));
    let input = Tracked {
        inner: input,
        stream: stream.clone(),
    };
    let mut lines = Lines { stream, next: 1 };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .delimiter(delimiter)
        .buffer_capacity(CSV_BUFFER)
        .from_reader(input);
    let raw = reader
        .byte_headers()
        .map_err(|e| CliError::usage(format!("cannot read the CSV header of {source}: {e}")))?
        .clone();
    let header_line = lines.of(&raw, reader.position());
    let mut headers = Vec::with_capacity(raw.len());
    for field in &raw {
        let name = std::str::from_utf8(field)
            .map_err(|e| not_utf8(source, header_line, "the header: ", field, e.valid_up_to()))?;
        headers.push(name.trim());
    }
    if let [single] = headers[..]
        && !COLUMNS.contains(&single)
        && let Some(hint) = other_delimiter(single, delimiter)
    {
        return Err(CliError::usage(format!(
            "{source}:{header_line}: the CSV header is one column, `{single}`: it looks \
             {hint}"
        )));
    }
    if let Some(unknown) = headers.iter().find(|h| !COLUMNS.contains(h)) {
        return Err(CliError::usage(format!(
            "unknown CSV column `{unknown}`; the columns are {}",
            COLUMNS.join(", ")
        )));
    }
    for (i, name) in headers.iter().enumerate() {
        if let Some(first) = headers[..i].iter().position(|h| h == name) {
            return Err(CliError::usage(format!(
                "the CSV header of {source} names `{name}` twice (columns {} and {}); keep one \
                 `{name}` column and import the file again",
                first + 1,
                i + 1
            )));
        }
    }
    if !headers.contains(&"op") {
        return Err(CliError::usage("the CSV header has no `op` column"));
    }
    let column = |name: &str| headers.iter().position(|h| *h == name);
    let columns = COLUMNS.map(column);
    let mut record = csv::ByteRecord::new();
    loop {
        let read = reader.read_byte_record(&mut record);
        let number = match &read {
            Ok(false) => return Ok(()),
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                return Err(CliError::usage(format!("{source}:{}: {e}", lines.next)));
            }
            // A record read whole, even one with the wrong number of cells.
            Ok(true) | Err(_) => lines.of(&record, reader.position()),
        };
        let checked = match read {
            Ok(_) => {
                let mut cells: [Option<&str>; 5] = [None; 5];
                for (cell, (index, name)) in cells.iter_mut().zip(columns.iter().zip(COLUMNS)) {
                    let Some(bytes) = index.and_then(|i| record.get(i)) else {
                        continue;
                    };
                    let text = std::str::from_utf8(bytes).map_err(|e| {
                        let what = format!("column `{name}`: ");
                        not_utf8(source, number, &what, bytes, e.valid_up_to())
                    })?;
                    *cell = Some(text.trim()).filter(|v| !v.is_empty());
                }
                csv_line(cells).and_then(Line::check)
            }
            Err(e) => Err(format!("not a valid CSV row: {}", without_position(&e))),
        };
        emit(number, checked)?;
    }
}

/// A CSV error's text without the position the CSV reader gives (its line is one short after a
/// CRLF line; the caller names the line).
fn without_position(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "found record with {len} fields, but the previous record has {expected_len} fields"
        ),
        _ => e.to_string(),
    }
}

/// For a one-column CSV header read with `delimiter`: the separator it seems to use instead, and
/// the flag that reads it (`None` if it holds none).
fn other_delimiter(header: &str, delimiter: u8) -> Option<String> {
    let (sep, _) = [b',', b';', b'\t', b'|']
        .into_iter()
        .filter(|&c| c != delimiter)
        .map(|c| (c, header.bytes().filter(|&b| b == c).count()))
        .filter(|&(_, n)| n > 0)
        .max_by_key(|&(_, n)| n)?;
    Some(match sep {
        b',' => {
            "comma-separated; drop `--delimiter` (cells are separated by `,` by default)".into()
        }
        b'\t' => "tab-separated; pass `--delimiter tab`".into(),
        c => format!(
            "`{}`-separated; pass `--delimiter '{}'`",
            c as char, c as char
        ),
    })
}

/// A CSV record's cells, in the order of [`COLUMNS`], blank cells `None`.
fn csv_line([op, campaign, reference, job_id, payload]: [Option<&str>; 5]) -> Result<Line, String> {
    let number = |name: &str, cell: Option<&str>| -> Result<Option<i64>, String> {
        cell.map(|v| {
            v.parse::<i64>()
                .map_err(|_| format!("{name} `{v}` is not an integer"))
        })
        .transpose()
    };
    Ok(Line {
        op: op.unwrap_or_default().to_string(),
        campaign: number("campaign", campaign)?,
        reference: reference.map(str::to_string),
        job_id: number("job_id", job_id)?,
        payload: payload.map(|p| Value::String(p.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows and the bad lines (line number, reason) of a text.
    #[derive(Debug, Default)]
    struct Parsed {
        rows: Vec<NewOutboxRow>,
        bad: Vec<(u64, String)>,
    }

    fn collect(
        read: impl FnOnce(&mut dyn FnMut(u64, Result<NewOutboxRow, String>) -> CliResult) -> CliResult,
    ) -> Parsed {
        let mut parsed = Parsed::default();
        read(&mut |line, checked| {
            match checked {
                Ok(row) => parsed.rows.push(row),
                Err(reason) => parsed.bad.push((line, reason)),
            }
            Ok(())
        })
        .unwrap();
        parsed
    }

    fn ndjson(text: &str) -> Parsed {
        collect(|emit| read_ndjson(text.as_bytes(), "t.ndjson", emit))
    }

    fn csv_text(text: &str) -> Parsed {
        collect(|emit| read_csv(text.as_bytes(), "t.csv", b',', emit))
    }

    fn csv_error(bytes: &[u8]) -> String {
        let err = read_csv(bytes, "t.csv", b',', |_, _| Ok(())).unwrap_err();
        assert_eq!(err.code, 2);
        err.message
    }

    #[test]
    fn ndjson_rows_and_bad_lines_carry_their_line_numbers() {
        let parsed = ndjson(concat!(
            r#"{"op":"create","campaign":28,"reference":"a","payload":{"name":"A"}}"#,
            "\n\n",
            r#"{"op":"patch","job_id":5,"payload":{"state":2}}"#,
            "\n",
            r#"{"op":"unqueue","campaign":28,"reference":"a"}"#,
            "\r\n",
            "not json\n",
            r#"{"op":"create","campaign":28,"reference":"b","colour":"red"}"#,
        ));
        assert_eq!(parsed.rows.len(), 2);
        assert_eq!(parsed.rows[0].payload, r#"{"name":"A"}"#);
        assert_eq!(parsed.rows[1].payload, "{}");
        let lines: Vec<u64> = parsed.bad.iter().map(|b| b.0).collect();
        assert_eq!(lines, [3, 5, 6]);
        assert!(parsed.bad[0].1.contains("read-only"), "{:?}", parsed.bad);
        assert!(parsed.bad[2].1.contains("colour"), "{:?}", parsed.bad);
    }

    #[test]
    fn a_line_without_end_stops_the_file_after_one_row_of_it() {
        let zeros = std::io::Read::take(std::io::repeat(0), 1 << 40);
        let err = read_ndjson(zeros, "/dev/zero", |_, _| Ok(())).unwrap_err();
        assert_eq!(err.code, 2);
        assert!(
            err.message.contains("/dev/zero:1") && err.message.contains("1024 KiB"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_unterminated_csv_quote_stops_the_file_after_one_row_of_it() {
        let head = std::io::Cursor::new(b"op,campaign,reference,payload\ncreate,28,a,\"{".to_vec());
        let rest = std::io::Read::take(std::io::repeat(b'x'), 1 << 40);
        let err = read_csv(std::io::Read::chain(head, rest), "t.csv", b',', |_, _| {
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.code, 2);
        assert!(err.message.contains("1024 KiB"), "{}", err.message);
    }

    #[test]
    fn a_payload_beyond_the_pulls_cap_is_a_bad_line_naming_it() {
        let big = "x".repeat(1_000_000);
        let parsed = ndjson(&format!(
            r#"{{"op":"create","campaign":28,"reference":"big","payload":{{"name":"{big}"}}}}"#
        ));
        assert!(parsed.rows.is_empty());
        assert!(parsed.bad[0].1.contains("1 MiB"), "{:?}", parsed.bad[0].1);
    }

    #[test]
    fn ndjson_payload_as_text_or_other_types() {
        let parsed = ndjson(concat!(
            r#"{"op":"patch","job_id":5,"payload":"{\"city\": \"Lyon\"}"}"#,
            "\n",
            r#"{"op":"patch","job_id":5,"payload":[1]}"#,
            "\n",
            r#"{"op":"unqueue","job_id":5,"payload":null}"#,
        ));
        assert_eq!(parsed.rows.len(), 2);
        assert_eq!(parsed.rows[0].payload, r#"{"city": "Lyon"}"#);
        assert_eq!(parsed.bad.len(), 1);
        assert!(parsed.bad[0].1.contains("not an array"), "{:?}", parsed.bad);
    }

    #[test]
    fn csv_read_as_ndjson_stops_at_the_first_line_with_the_fix() {
        let err = read_ndjson(
            &b"\nop,campaign,reference,job_id,payload\nunqueue,,,5,\n"[..],
            "stdin",
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert_eq!(err.code, 2);
        assert!(
            err.message.starts_with("stdin:2: not an NDJSON row (")
                && err.message.ends_with("if this is CSV, add --format csv"),
            "{}",
            err.message
        );
        // A bad JSON line, or a later line with commas, is only a bad line.
        let parsed = ndjson("{\"op\": \"unqueue\", \"job_id\": 5}\na,b,c\n{\"op\",}\n");
        assert_eq!(parsed.bad.iter().map(|b| b.0).collect::<Vec<_>>(), [2, 3]);
        let parsed = ndjson("{\"op\": 1,\n");
        assert_eq!(parsed.bad.len(), 1);
    }

    #[test]
    fn a_byte_order_mark_counts_only_at_the_start() {
        let line = r#"{"op":"unqueue","job_id":5}"#;
        let parsed = ndjson(&format!("\u{FEFF}{line}\n\u{FEFF}{line}\n"));
        assert_eq!(parsed.rows.len(), 1);
        assert_eq!(parsed.bad[0].0, 2);
        let parsed = csv_text("\u{FEFF}op,job_id\nunqueue,5\n");
        assert_eq!((parsed.rows.len(), parsed.bad.len()), (1, 0));
    }

    #[test]
    fn bytes_that_are_not_utf8_stop_the_file_naming_the_line() {
        let err = read_ndjson(&b"{}\n\"Fran\xe7ois\"\n"[..], "t.ndjson", |_, _| Ok(()))
            .unwrap_err()
            .message;
        assert!(
            err.starts_with("t.ndjson:2: byte 0xE7 at character 6"),
            "{err}"
        );
        assert!(err.contains("save the file as UTF-8"), "{err}");
        let err = read_ndjson(&b"\xff\xfe{\x00"[..], "t.ndjson", |_, _| Ok(()))
            .unwrap_err()
            .message;
        assert!(err.contains("UTF-16"), "{err}");
        let err =
            csv_error(b"op,job_id,payload\nunqueue,5,\"{\"\"name\"\": \"\"Fran\xe7ois\"\"}\"\n");
        assert!(
            err.starts_with("t.csv:2: column `payload`: byte 0xE7"),
            "{err}"
        );
        let err = csv_error(b"op,r\xe9f\n");
        assert!(err.starts_with("t.csv:1: the header: byte 0xE9"), "{err}");
    }

    #[test]
    fn csv_headers_are_known_and_each_once() {
        let err = csv_error(b"op,job_id,op\nunqueue,5,unqueue\n");
        assert!(
            err.contains("names `op` twice (columns 1 and 3); keep one `op` column"),
            "{err}"
        );
        assert!(csv_error(b"op,colour\n").contains("unknown CSV column `colour`"));
        assert!(csv_error(b"job_id\n5\n").contains("no `op` column"));
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

    #[test]
    fn csv_bad_lines_are_numbered_as_an_editor_shows_them() {
        let rows = [
            "op,campaign,reference,job_id,payload",
            "unqueue,,,7,",
            "patch,,,x,",
            "",
            "patch,,,y,",
            "patch,,,8,\"{\"\"city\"\": ",
            "\"\"Lyon\"\"}\"",
            "patch,,,z,",
            "unqueue,,,9",
            "patch,,,w,",
        ];
        for end in ["\n", "\r\n"] {
            let parsed = csv_text(&rows.join(end));
            let lines: Vec<u64> = parsed.bad.iter().map(|b| b.0).collect();
            assert_eq!(lines, [3, 5, 8, 9, 10], "{end:?}: {:?}", parsed.bad);
            assert_eq!(parsed.rows.len(), 2, "{end:?}");
            assert!(
                !parsed.bad[3].1.contains("line"),
                "no line number of the CSV reader's own: {}",
                parsed.bad[3].1
            );
        }
        // Lines beyond the reader's buffer.
        let mut text = String::from("op,job_id\r\n");
        for n in 0..5000 {
            text.push_str(&format!("unqueue,{}\r\n", n + 1));
        }
        text.push_str("unqueue,x\r\n");
        assert_eq!(csv_text(&text).bad[0].0, 5002);
    }

    #[test]
    fn a_one_column_header_names_the_delimiter_it_seems_to_use() {
        let err = csv_error(b"op;campaign;reference;job_id;payload\r\nunqueue;;;5;\r\n");
        assert_eq!(
            err,
            "t.csv:1: the CSV header is one column, `op;campaign;reference;job_id;payload`: it \
             looks `;`-separated; pass `--delimiter ';'`"
        );
        assert!(csv_error(b"op\tjob_id\n").ends_with("tab-separated; pass `--delimiter tab`"));
        assert!(csv_error(b"op|job_id\n").ends_with("pass `--delimiter '|'`"));
        let err = read_csv(&b"op,job_id\n"[..], "t.csv", b';', |_, _| Ok(()))
            .unwrap_err()
            .message;
        assert!(err.contains("comma-separated; drop `--delimiter`"), "{err}");
        let mut parsed = Parsed::default();
        read_csv(
            &b"op;job_id;payload\nunqueue;5;\npatch;6;\"{\"\"city\"\": \"\"Lyon; Rhone\"\"}\"\n"[..],
            "t.csv",
            b';',
            |line, checked| {
                match checked {
                    Ok(row) => parsed.rows.push(row),
                    Err(reason) => parsed.bad.push((line, reason)),
                }
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((parsed.rows.len(), parsed.bad.len()), (2, 0), "{parsed:?}");
        assert_eq!(parsed.rows[1].payload, r#"{"city": "Lyon; Rhone"}"#);
        // One column that is a known one, or holds no separator: the usual answers.
        assert!(csv_error(b"job_id\n5\n").contains("no `op` column"));
        assert!(csv_error(b"colour\n").contains("unknown CSV column `colour`"));
    }

    #[test]
    fn csv_columns_in_any_order() {
        let parsed = csv_text("payload,job_id,op\n,7,unqueue\n");
        assert_eq!(parsed.rows.len(), 1);
        assert_eq!(parsed.rows[0].job_id, Some(7));
        assert_eq!(parsed.rows[0].op, "unqueue");
    }
}
