//! The command line's rendering of progress: a bar on a terminal with human logs; with no
//! terminal, or with JSON logs, the progress log lines of [`crate::telemetry::progress`] instead.
//! The only terminal code of the crate: the engine reports events, this draws them.

use crate::telemetry::progress::{self, ProgressEvent, ProgressSink, Work};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

/// Counts items of one piece of work.
pub struct Progress {
    what: String,
    done: u64,
    bar: Option<ProgressBar>,
    started: std::time::Instant,
}

impl Progress {
    /// `total`, when known, draws a bar with an ETA; otherwise a counter with a rate.
    pub fn new(what: impl Into<String>, total: Option<u64>) -> Progress {
        let what = what.into();
        let bar = progress::bars_allowed().then(|| {
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
        Progress {
            what,
            done: 0,
            bar,
            started: std::time::Instant::now(),
        }
    }

    pub fn add(&mut self, n: u64) {
        let before = self.done;
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => progress::log_line(&self.what, before, self.done, self.started.elapsed()),
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

/// The engine's progress events drawn as one [`Progress`] per piece of work in progress.
#[derive(Default)]
pub struct TerminalProgress {
    open: Mutex<Vec<(Work, Progress)>>,
}

impl ProgressSink for TerminalProgress {
    fn event(&self, event: ProgressEvent<'_>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let position = |work: &Work| open.iter().position(|(w, _)| w == work);
        match event {
            ProgressEvent::Started { work } => {
                open.push((work.clone(), Progress::new(work.to_string(), None)));
            }
            ProgressEvent::Advanced { work, items, .. } => {
                if let Some(i) = position(work) {
                    open[i].1.add(items);
                }
            }
            ProgressEvent::Finished { work, .. } => {
                if let Some(i) = position(work) {
                    open.remove(i).1.finish();
                }
            }
        }
    }
}
