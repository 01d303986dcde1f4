//! Progress of long work (a backfill, a large import): a bar on a terminal with human logs; with
//! no terminal, or with JSON logs, a progress log line every [`LOG_EVERY`] items instead.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};

/// Items between two progress log lines when no bar is shown.
pub const LOG_EVERY: u64 = 100_000;

static BARS_ALLOWED: AtomicBool = AtomicBool::new(false);

/// Called by the logging set-up: bars only when stderr is a terminal and logs are human.
pub(crate) fn allow_bars(allowed: bool) {
    BARS_ALLOWED.store(allowed, Ordering::Relaxed);
}

/// Counts items of one piece of work.
pub struct Progress {
    what: String,
    done: u64,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `total`, when known, draws a bar with an ETA; otherwise a counter with a rate.
    pub fn new(what: impl Into<String>, total: Option<u64>) -> Progress {
        let what = what.into();
        let bar = BARS_ALLOWED.load(Ordering::Relaxed).then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    ProgressBar::new(n),
                    "{msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, {eta} left)",
                ),
                None => (
                    ProgressBar::no_length(),
                    "{spinner} {msg}: {human_pos} ({per_sec})",
                ),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what.clone());
            bar
        });
        Progress { what, done: 0, bar }
    }

    pub fn add(&mut self, n: u64) {
        let before = self.done;
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.done / LOG_EVERY > before / LOG_EVERY => {
                tracing::info!(what = %self.what, done = self.done, "progress");
            }
            None => {}
        }
    }

    /// Runs `print` (a line to the terminal) with the bar hidden, so that the two do not mix.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
