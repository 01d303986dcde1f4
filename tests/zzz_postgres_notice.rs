//! One line at the end of `cargo test` when the PostgreSQL half of the suite did not run.
//!
//! Without `JOBSYNC_TEST_POSTGRES_URL` every PostgreSQL test skips and passes, and libtest
//! captures the `skipping PostgreSQL test` each one prints: a run on SQLite alone would look like
//! a full pass. Cargo runs integration test binaries in alphabetical order, so this one comes
//! last (before the doc-tests), and it writes to the process's standard error directly, which
//! libtest does not capture (it captures only `print!`/`eprint!`).

use std::io::Write;

#[test]
fn say_whether_the_postgresql_tests_ran() {
    if std::env::var_os("JOBSYNC_TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        return;
    }
    let _ = writeln!(
        std::io::stderr(),
        "\nNOTE: JOBSYNC_TEST_POSTGRES_URL is not set: the PostgreSQL tests were SKIPPED (they \
         passed without running). Run them with \
         JOBSYNC_TEST_POSTGRES_URL=postgres://jobsync:jobsync@127.0.0.1/jobsync_test cargo test\n"
    );
}
