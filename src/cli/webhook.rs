//! `jobsync webhook replay --from SEQ` and `jobsync webhook resume`: they change the sink's
//! position or pause in the database (consumer `webhook`), which the running daemon's sink reads
//! before each batch — within a second when it is idle or paused. Neither sends anything itself.

use super::args::WebhookCommand;
use super::{CliError, CliResult, open_db};
use crate::config::Config;
use crate::db::repo::consumers;

pub async fn run(config: &Config, command: WebhookCommand) -> CliResult {
    let note = if config.webhook.url.trim().is_empty() {
        " (webhook.url is not set here: a daemon with it set delivers from there)"
    } else {
        ""
    };
    match command {
        WebhookCommand::Replay { from } => {
            if from < 1 {
                return Err(CliError::usage(format!(
                    "--from {from}: changefeed seqs start at 1; give the first seq to deliver \
                     again, e.g. --from 1 for the whole retained feed"
                )));
            }
            let db = open_db(config).await?;
            let before = db
                .run(move |c| consumers::rewind(c, consumers::WEBHOOK, from - 1))
                .await?;
            let was = match before {
                Some(last) => format!("it had delivered up to seq {last}"),
                None => "it had delivered nothing yet".into(),
            };
            out!(
                "the webhook sink delivers again from seq {from} ({was}; any pause ended){note}\n"
            );
            Ok(())
        }
        WebhookCommand::Resume => {
            let db = open_db(config).await?;
            let (resumed, consumer) = db
                .run(|c| {
                    let resumed = consumers::resume(c, consumers::WEBHOOK)?;
                    Ok::<_, crate::db::DbError>((resumed, consumers::get(c, consumers::WEBHOOK)?))
                })
                .await?;
            let next = consumer.map_or(1, |c| c.last_seq + 1);
            if resumed {
                out!("the webhook sink resumes from seq {next}{note}\n");
            } else {
                out!("the webhook sink was not paused; it delivers from seq {next}{note}\n");
            }
            Ok(())
        }
    }
}
