//! Sets `cfg(pg)` when `JOBSYNC_TEST_POSTGRES_URL` is set and non-empty, so that the PostgreSQL
//! tests are reported as ignored (not passed) when there is no PostgreSQL to run them against.
//! (`tests/it/common/db.rs`; the crate itself does not use the cfg.)

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pg)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=JOBSYNC_TEST_POSTGRES_URL");
    if std::env::var_os("JOBSYNC_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=pg");
    }
}
