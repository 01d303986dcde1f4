//! `jobsync migrate`: applies pending migrations; `jobsync migrate --status` lists the applied
//! and pending ones and changes nothing.

use super::{CliResult, db_options};
use crate::config::Config;
use crate::db::Db;

pub async fn run(config: &Config) -> CliResult {
    let url = config.database.url.clone();
    let options = db_options(config);
    let applied = crate::db::blocking(move || Db::connect_with(&url, options)?.migrate()).await?;
    outln!(
        "migrations: {applied} applied, database {} is up to date",
        crate::db::redact(&config.database.url)
    );
    Ok(())
}

pub async fn status(config: &Config) -> CliResult {
    let url = config.database.url.clone();
    let options = db_options(config);
    let status = crate::db::blocking(move || Db::migration_status(&url, options)).await?;
    let shown = crate::db::redact(&config.database.url);
    let pending = status.migrations.iter().filter(|m| !m.applied).count();
    let applied = status.migrations.len() - pending;
    if let Some(missing) = &status.missing {
        outln!("{missing}: every migration pending (`jobsync migrate` creates it)");
    } else if pending == 0 {
        outln!("database {shown}: {applied} applied, none pending (up to date)");
    } else {
        outln!(
            "database {shown}: {applied} applied, {pending} pending (`jobsync migrate` applies them)"
        );
    }
    for migration in &status.migrations {
        let state = if migration.applied {
            "applied"
        } else {
            "pending"
        };
        outln!("{state:<8} {}", migration.name);
    }
    Ok(())
}
