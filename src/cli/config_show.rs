//! `jobsync config show`: the effective configuration as plain aligned text, one key a line with
//! its value (secrets masked) and the layer it came from.

use super::CliResult;
use crate::config::{self, Overrides};

pub fn run(overrides: &Overrides) -> CliResult {
    let settings = config::effective(overrides)?;
    let key_width = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
    let value_width = settings
        .iter()
        .map(|s| s.value.chars().count())
        .max()
        .unwrap_or(0);
    outln!("{:<key_width$}  {:<value_width$}  SOURCE", "KEY", "VALUE");
    for s in &settings {
        outln!(
            "{:<key_width$}  {:<value_width$}  {}",
            s.key,
            s.value,
            s.source
        );
    }
    Ok(())
}
