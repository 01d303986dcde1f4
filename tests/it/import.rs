//! `jobsync import` and `jobsync outbox` as a user runs them: the real binary, a real database.

use crate::common::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};

on_both_backends!(
    a_file_with_one_bad_line_inserts_nothing_and_names_the_line,
    a_good_ndjson_file_goes_in_whole_and_in_order,
    csv_import_with_dry_run_then_for_real,
    stdin_import,
    outbox_list_and_retry,
    a_byte_order_mark_is_accepted,
    duplicate_csv_headers_are_refused_in_one_line,
    a_nul_character_is_refused_with_its_line,
    a_file_that_is_not_utf8_names_the_line_and_asks_for_utf8,
    a_large_file_goes_in_whole_and_in_order,
    a_bad_line_after_many_rows_inserts_nothing,
    the_first_thousand_bad_lines_are_printed_and_the_rest_counted,
    an_import_inserts_as_it_reads_in_one_transaction_readers_see_only_whole,
);

fn jobsync(t: &TestDb, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobsync"))
        .args(args)
        .args(["--database-url", &t.url])
        .env_remove("JOBSYNC_API__TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// The binary with its standard streams piped, for a test that feeds it while it runs.
fn spawn_jobsync(t: &TestDb, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_jobsync"))
        .args(args)
        .args(["--database-url", &t.url])
        .env_remove("JOBSYNC_API__TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// `n` NDJSON creates, references `r-{start}`…, one per line.
fn creates(range: std::ops::Range<usize>) -> String {
    let mut out = String::new();
    for n in range {
        out.push_str(&format!(
            "{{\"op\":\"create\",\"campaign\":28,\"reference\":\"r-{n}\",\
             \"payload\":{{\"name\":\"Contact {n}\",\"numbers\":[\"+33612345678\"]}}}}\n"
        ));
    }
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const GOOD: &str = concat!(
    r#"{"op":"create","campaign":28,"reference":"a","payload":{"name":"A","numbers":["0612345678"]}}"#,
    "\n",
    r#"{"op":"patch","campaign":28,"reference":"a","payload":{"city":"Lyon"}}"#,
    "\n",
    r#"{"op":"unqueue","job_id":42,"payload":{}}"#,
    "\n",
);

fn a_file_with_one_bad_line_inserts_nothing_and_names_the_line(t: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("changes.ndjson");
    let bad = GOOD.replace(r#""city":"Lyon""#, r#""state":2"#);
    std::fs::write(&file, bad).unwrap();
    let out = jobsync(t, &["import", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("changes.ndjson:2:"), "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(stderr.contains("nothing was inserted"), "{stderr}");
    assert!(all_rows(&t.db).is_empty());
}

fn a_good_ndjson_file_goes_in_whole_and_in_order(t: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("changes.jsonl");
    std::fs::write(&file, GOOD).unwrap();
    let out = jobsync(t, &["import", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("imported 3 row(s)"),
        "{}",
        text(&out.stdout)
    );
    let rows = all_rows(&t.db);
    let ops: Vec<&str> = rows.iter().map(|r| r.op.as_str()).collect();
    assert_eq!(ops, ["create", "patch", "unqueue"]);
    assert!(rows.iter().all(|r| r.status == "pending"));
    assert_eq!(rows[2].job_id, Some(42));
}

fn csv_import_with_dry_run_then_for_real(t: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("changes.csv");
    std::fs::write(
        &file,
        "op,campaign,reference,job_id,payload\n\
         create,28,c1,,\"{\"\"name\"\": \"\"C\"\"}\"\n\
         unqueue,,,7,\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = jobsync(t, &["import", path, "--dry-run"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 row(s)"),
        "{}",
        text(&out.stdout)
    );
    assert!(all_rows(&t.db).is_empty(), "a dry run inserts nothing");
    let out = jobsync(t, &["import", path], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows = all_rows(&t.db);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].payload, r#"{"name": "C"}"#);
}

fn stdin_import(t: &TestDb) {
    let out = jobsync(t, &["import", "-"], Some(GOOD));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(all_rows(&t.db).len(), 3);
    let out = jobsync(
        t,
        &["import", "-", "--format", "csv"],
        Some("op,colour\ncreate,red\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown CSV column `colour`"));
}

fn outbox_list_and_retry(t: &TestDb) {
    insert(
        &t.db,
        &[
            row("bogus", None, None, Some(1), serde_json::json!({})),
            create(28, "x", serde_json::json!({})),
        ],
    );
    {
        use jobsync::db::repo::outbox::{self, RowUpdate};
        let mut c = t.db.conn().unwrap();
        let failed = RowUpdate::failed("unknown op `bogus`".into(), None);
        outbox::update(&mut c, &[all_rows(&t.db)[0].id], &failed).unwrap();
    }
    let ids: Vec<String> = all_rows(&t.db).iter().map(|r| r.id.to_string()).collect();
    let out = jobsync(t, &["outbox", "list", "--status", "nope"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("pending, in_flight, done, failed, superseded"));
    let out = jobsync(t, &["outbox", "list", "--status", "failed"], None);
    let listed = text(&out.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.contains(&format!("#{} bogus job 1 failed attempts=0", ids[0])),
        "{listed}"
    );
    assert!(listed.contains("unknown op"), "{listed}");
    let out = jobsync(
        t,
        &[
            "outbox", "retry", "--id", &ids[0], "--id", &ids[1], "--id", "999",
        ],
        None,
    );
    // Ids that were not re-queued are named, and make it exit 1 (issue 13).
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("re-queued 1 failed row(s)"), "{said}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{} (status is pending)", ids[1]))
            && err.contains("999 (no such row)"),
        "{err}"
    );
    let rows = all_rows(&t.db);
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("pending", 0));
}

fn a_byte_order_mark_is_accepted(t: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let ndjson = dir.path().join("excel.ndjson");
    std::fs::write(&ndjson, format!("\u{FEFF}{GOOD}")).unwrap();
    let out = jobsync(t, &["import", ndjson.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(all_rows(&t.db).len(), 3);

    let csv = dir.path().join("excel.csv");
    std::fs::write(
        &csv,
        "\u{FEFF}op,campaign,reference,job_id,payload\ncreate,28,c1,,\"{\"\"name\"\": \"\"C\"\"}\"\n",
    )
    .unwrap();
    let out = jobsync(t, &["import", csv.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = jobsync(t, &["import", "-"], Some(&format!("\u{FEFF}{GOOD}")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows = all_rows(&t.db);
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[3].reference.as_deref(), Some("c1"));
}

fn duplicate_csv_headers_are_refused_in_one_line(t: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dup.csv");
    std::fs::write(
        &file,
        "op,campaign,reference, payload,payload\ncreate,28,c1,{},{\"\"name\"\":\"\"X\"\"}\n",
    )
    .unwrap();
    let out = jobsync(t, &["import", file.to_str().unwrap(), "--dry-run"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("`payload`"), "{stderr}");
    assert!(stderr.contains("twice"), "{stderr}");
    assert!(stderr.contains("keep one"), "names the fix: {stderr}");
    let out = jobsync(t, &["import", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(all_rows(&t.db).is_empty());
}

fn a_nul_character_is_refused_with_its_line(t: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nul.ndjson");
    let lines = [
        r#"{"op":"create","campaign":28,"reference":"ok","payload":{"name":"Fine"}}"#,
        r#"{"op":"create","campaign":28,"reference":"n1","payload":{"name":"x\u0000y"}}"#,
        r#"{"op":"create","campaign":28,"reference":"n\u00002","payload":{}}"#,
        r#"{"op":"patch","job_id":7,"payload":{"data":{"note":"a\u0000"}}}"#,
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = jobsync(t, &["import", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains('\0'), "no raw NUL printed: {stderr:?}");
    for line in 2..=4 {
        let reported = stderr
            .lines()
            .find(|l| l.starts_with(&format!("{}:{line}:", file.display())))
            .unwrap_or_else(|| panic!("line {line} is named: {stderr}"));
        assert!(reported.contains("NUL"), "{reported}");
    }
    assert!(stderr.contains("reference"), "{stderr}");
    assert!(!stderr.contains(":1:"), "{stderr}");
    assert!(stderr.contains("3 bad line(s)"), "{stderr}");
    assert!(all_rows(&t.db).is_empty());
}

fn a_file_that_is_not_utf8_names_the_line_and_asks_for_utf8(t: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let ndjson = dir.path().join("latin1.ndjson");
    let mut bytes = GOOD.lines().next().unwrap().as_bytes().to_vec();
    bytes.extend_from_slice(b"\n{\"op\":\"create\",\"campaign\":28,\"reference\":\"f\",\"payload\":{\"name\":\"Fran\xe7ois\"}}\n");
    std::fs::write(&ndjson, &bytes).unwrap();
    let csv = dir.path().join("latin1.csv");
    std::fs::write(
        &csv,
        b"op,campaign,reference,payload\ncreate,28,a,{}\ncreate,28,f,\"{\"\"name\"\":\"\"Fran\xe7ois\"\"}\"\n",
    )
    .unwrap();
    for (file, line) in [(&ndjson, 2), (&csv, 3)] {
        let out = jobsync(t, &["import", file.to_str().unwrap()], None);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&format!("{}:{line}:", file.display())),
            "names the file and line: {stderr}"
        );
        assert!(stderr.contains("save the file as UTF-8"), "{stderr}");
        assert!(all_rows(&t.db).is_empty());
    }
}

fn a_large_file_goes_in_whole_and_in_order(t: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("large.ndjson");
    std::fs::write(&file, creates(0..12_345)).unwrap();
    let out = jobsync(t, &["import", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("imported 12345 row(s)"),
        "{}",
        text(&out.stdout)
    );
    let rows = all_rows(&t.db);
    assert_eq!(rows.len(), 12_345);
    for (n, row) in rows.iter().enumerate() {
        assert_eq!(row.reference.as_deref(), Some(format!("r-{n}").as_str()));
    }
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
}

fn a_bad_line_after_many_rows_inserts_nothing(t: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("late.ndjson");
    let mut content = creates(0..11_110);
    content.push_str(
        "{\"op\":\"create\",\"campaign\":28,\"reference\":\"bad\",\"payload\":{\"state\":2}}\n",
    );
    content.push_str(&creates(11_111..12_000));
    std::fs::write(&file, content).unwrap();
    let out = jobsync(t, &["import", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("late.ndjson:11111: payload: field `state` is read-only"),
        "{stderr}"
    );
    assert!(stderr.contains("1 bad line(s) in"), "{stderr}");
    assert!(stderr.contains("(of 12000)"), "{stderr}");
    assert!(all_rows(&t.db).is_empty(), "rolled back whole");
    // The same file, fixed, goes in.
    let fixed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("{\"state\":2}", "{}");
    std::fs::write(&file, fixed).unwrap();
    let out = jobsync(t, &["import", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(all_rows(&t.db).len(), 12_000);
}

fn the_first_thousand_bad_lines_are_printed_and_the_rest_counted(t: &TestDb) {
    let mut input = creates(0..10);
    for n in 0..1205 {
        input.push_str(&format!("{{\"op\":\"bogus\",\"job_id\":{}}}\n", n + 1));
    }
    let out = jobsync(t, &["import", "-"], Some(&input));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let printed: Vec<&str> = stderr.lines().filter(|l| l.starts_with("stdin:")).collect();
    assert_eq!(printed.len(), 1000);
    assert!(
        printed[0].starts_with("stdin:11: unknown op `bogus`"),
        "{}",
        printed[0]
    );
    assert!(printed[999].starts_with("stdin:1010:"), "{}", printed[999]);
    assert!(stderr.contains("and 205 more bad lines"), "{stderr}");
    assert!(
        stderr.contains("1205 bad line(s) in stdin (of 1215)"),
        "{stderr}"
    );
    assert!(all_rows(&t.db).is_empty());
}

/// Whether another connection holds the write lock of the outbox: SQLite's database lock (a
/// `BEGIN IMMEDIATE` that may not wait fails), PostgreSQL's row-exclusive lock on the table
/// (taken by an INSERT).
fn someone_writes_the_outbox(t: &TestDb) -> bool {
    use diesel::prelude::*;
    if let Some(path) = t.url.strip_prefix("sqlite://") {
        let mut c = SqliteConnection::establish(path).unwrap();
        diesel::sql_query("PRAGMA busy_timeout = 0")
            .execute(&mut c)
            .unwrap();
        match diesel::sql_query("BEGIN IMMEDIATE").execute(&mut c) {
            Ok(_) => {
                diesel::sql_query("ROLLBACK").execute(&mut c).unwrap();
                false
            }
            Err(e) => {
                assert!(e.to_string().contains("locked"), "{e}");
                true
            }
        }
    } else {
        let mut c = PgConnection::establish(&t.url).unwrap();
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "EXISTS (SELECT 1 FROM pg_locks WHERE relation = 'outbox'::regclass \
             AND mode = 'RowExclusiveLock' AND pid <> pg_backend_pid())",
        ))
        .get_result(&mut c)
        .unwrap()
    }
}

fn an_import_inserts_as_it_reads_in_one_transaction_readers_see_only_whole(t: &TestDb) {
    const N: usize = 50_000;
    let mut child = spawn_jobsync(t, &["import", "-"]);
    let mut stdin = child.stdin.take().unwrap();
    // About 5 MB: `write_all` returns once the import has read all but what the pipe (64 KiB)
    // and its own buffers hold, so it has read — and, streaming, inserted — most rows, and
    // still waits for the end of its input.
    stdin.write_all(creates(0..N).as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert!(
        someone_writes_the_outbox(t),
        "the import inserts while it reads, inside its write transaction"
    );
    assert!(
        all_rows(&t.db).is_empty(),
        "no row of an import is visible before its commit"
    );
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!someone_writes_the_outbox(t));
    let rows = all_rows(&t.db);
    assert_eq!(rows.len(), N);
    assert_eq!(
        rows[N - 1].reference.as_deref(),
        Some(format!("r-{}", N - 1).as_str())
    );
}
