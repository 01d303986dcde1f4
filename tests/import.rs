//! `jobsync import` and `jobsync outbox` as a user runs them: the real binary, a real database.

mod common;
mod push_support;

use common::*;
use push_support::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};

on_both_backends!(
    a_file_with_one_bad_line_inserts_nothing_and_names_the_line,
    a_good_ndjson_file_goes_in_whole_and_in_order,
    csv_import_with_dry_run_then_for_real,
    stdin_import,
    outbox_list_and_retry,
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
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("re-queued 1 failed row(s)"), "{said}");
    assert!(
        said.contains(&format!("{} (pending)", ids[1])) && said.contains("999 (no such row)"),
        "{said}"
    );
    let rows = all_rows(&t.db);
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("pending", 0));
}
