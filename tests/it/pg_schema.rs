//! PostgreSQL as a CRM team sets it up (issue 27, contract §8 `database.schema`): jobsync in a
//! schema of its own, `jobsync`, of a database whose `public` already holds tables named `jobs`
//! and `campaigns`, with a role that owns only that schema (no CREATE on the database); the
//! CRM's role may insert into the outbox and read the mirror and the changefeed, nothing else.
//! Before, jobsync's migrations ran in `public` ("relation "campaigns" already exists").

use crate::common::*;
use jobsync::sim::SimConfig;

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn jobsync_in_its_own_schema_beside_a_crm_with_jobs_and_campaigns_tables() {
    let Some(admin) = postgres_url() else {
        return;
    };
    let n = std::process::id();
    let (database, owner, crm) = (
        format!("crm_{n}"),
        format!("jobsync_owner_{n}"),
        format!("crm_writer_{n}"),
    );
    pg_sql(&admin, &format!("DROP DATABASE IF EXISTS {database}")).unwrap();
    pg_sql(&admin, &format!("CREATE DATABASE {database}")).unwrap();
    for role in [&owner, &crm] {
        let _ = pg_sql(&admin, &format!("DROP ROLE IF EXISTS {role}"));
        pg_sql(&admin, &format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'")).unwrap();
    }
    let admin_db = pg_url_as(&admin, "jobsync", &database).replace(":pw@", ":jobsync@");
    // The CRM's own tables, named as jobsync's are; jobsync's role owns only its schema.
    pg_sql(
        &admin_db,
        &format!(
            "CREATE TABLE public.jobs (crm_id int); CREATE TABLE public.campaigns (crm_name text); \
             INSERT INTO public.jobs VALUES (1); \
             REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
             REVOKE CREATE ON DATABASE {database} FROM PUBLIC; \
             CREATE SCHEMA jobsync AUTHORIZATION {owner}"
        ),
    )
    .unwrap();

    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 12,
        ..SimConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let jobsync_url = pg_url_as(&admin, &owner, &database);
    let once = || {
        jobsync_command_with_url(&sim.base_url(), &jobsync_url, dir.path())
            .arg("--once")
            .env("JOBSYNC_DATABASE__SCHEMA", "jobsync")
            .env("JOBSYNC_SYNC__CAMPAIGNS", "28")
            .output()
            .unwrap()
    };
    let out = once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pg_count(&admin_db, "SELECT count(*) AS n FROM jobsync.jobs"),
        12
    );
    assert_eq!(
        pg_count(&admin_db, "SELECT count(*) AS n FROM public.jobs"),
        1,
        "the CRM's own table untouched"
    );
    assert_eq!(
        pg_count(
            &admin_db,
            "SELECT count(*) AS n FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_name LIKE '%diesel%'"
        ),
        0,
        "no migrations table left in public"
    );

    // The CRM's least-privilege role, as docs/crm-integration.md gives it.
    pg_sql(
        &admin_db,
        &format!(
            "GRANT USAGE ON SCHEMA jobsync TO {crm}; \
             GRANT INSERT ON jobsync.outbox TO {crm}; \
             GRANT USAGE ON SEQUENCE jobsync.outbox_id_seq TO {crm}; \
             GRANT SELECT ON jobsync.jobs, jobsync.job_changes TO {crm}"
        ),
    )
    .unwrap();
    let crm_url = pg_url_as(&admin, &crm, &database);
    pg_sql(
        &crm_url,
        "INSERT INTO jobsync.outbox (op, campaign, reference, payload) \
         VALUES ('create', 28, 'crm-schema-1', '{\"name\": \"In a schema\"}')",
    )
    .expect("the CRM writes the outbox");
    assert!(pg_count(&crm_url, "SELECT count(*) AS n FROM jobsync.job_changes") >= 12);
    for forbidden in [
        "DELETE FROM jobsync.jobs",
        "UPDATE jobsync.outbox SET status = 'done'",
        "SELECT count(*) FROM jobsync.sync_runs",
        "CREATE TABLE jobsync.crm_scratch (x int)",
    ] {
        let refused = pg_sql(&crm_url, forbidden).unwrap_err();
        assert!(
            refused.contains("permission denied"),
            "{forbidden}: {refused}"
        );
    }
    let out = once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upstream = sim
        .state()
        .into_iter()
        .filter(|j| j.reference.as_deref() == Some("crm-schema-1"))
        .count();
    assert_eq!(upstream, 1, "the CRM's create reached the API");

    drop(sim);
    pg_sql(&admin, &format!("DROP DATABASE {database} WITH (FORCE)")).unwrap();
    for role in [&owner, &crm] {
        pg_sql(&admin, &format!("DROP ROLE {role}")).unwrap();
    }
}
