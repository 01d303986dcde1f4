//! Progress of long work (a backfill, a large import) as events: the engine says what it started,
//! how many items it has done, and when it finished, to a [`ProgressSink`]; the faces render
//! them. [`LogProgress`] (the daemon's) writes a progress log line every [`LOG_EVERY`] items; the
//! command line draws a bar on a terminal with human logs (`cli::progress`). No terminal code
//! here: the engine imports this module.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// Items between two progress log lines when no bar is shown.
pub const LOG_EVERY: u64 = 100_000;

static BARS_ALLOWED: AtomicBool = AtomicBool::new(false);

/// Called by the logging set-up: bars only when stderr is a terminal and logs are human.
pub(crate) fn allow_bars(allowed: bool) {
    BARS_ALLOWED.store(allowed, Ordering::Relaxed);
}

/// Whether a face may draw progress bars (stderr is a terminal and logs are human).
pub fn bars_allowed() -> bool {
    BARS_ALLOWED.load(Ordering::Relaxed)
}

/// A piece of long work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Work {
    /// The incremental listing of a pull (`modified_since` the watermark).
    ChangesSinceWatermark,
    /// A full listing of one campaign.
    Campaign(i64),
}

impl fmt::Display for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Work::ChangesSinceWatermark => f.write_str("changes since the watermark"),
            Work::Campaign(campaign) => write!(f, "campaign {campaign}"),
        }
    }
}

/// What happened to a piece of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent<'a> {
    /// The work started; its total is not known in advance.
    Started { work: &'a Work },
    /// `items` more were done, `done` in all, `elapsed` since the work started.
    Advanced {
        work: &'a Work,
        items: u64,
        done: u64,
        elapsed: std::time::Duration,
    },
    /// The work ended (finished, failed or stopped).
    Finished { work: &'a Work, done: u64 },
}

/// Where the engine sends its progress events.
pub trait ProgressSink: Send + Sync {
    fn event(&self, event: ProgressEvent<'_>);
}

/// Log lines only: `progress` at INFO every [`LOG_EVERY`] items of one piece of work.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogProgress;

impl ProgressSink for LogProgress {
    fn event(&self, event: ProgressEvent<'_>) {
        if let ProgressEvent::Advanced {
            work,
            items,
            done,
            elapsed,
        } = event
        {
            log_line(&work.to_string(), done - items.min(done), done, elapsed);
        }
    }
}

/// The progress log line, when the count went from `before` to `done` across a multiple of
/// [`LOG_EVERY`]; shared by every face that renders progress as log lines. It says the rate
/// so far in whole jobs per second (`per_sec`) and the time taken (`elapsed_s`, one decimal):
/// "progress what=campaign 28 done=200000 per_sec=8123 elapsed_s=24.6".
pub fn log_line(what: &str, before: u64, done: u64, elapsed: std::time::Duration) {
    if done / LOG_EVERY > before / LOG_EVERY {
        let secs = elapsed.as_secs_f64();
        let per_sec = if secs > 0.0 {
            (done as f64 / secs).round() as u64
        } else {
            0
        };
        let elapsed_s = (secs * 10.0).round() / 10.0;
        tracing::info!(what = %what, done, per_sec, elapsed_s, "progress");
    }
}

/// Counts the items of one piece of work and reports them to a sink: `Started` now, `Advanced`
/// on [`Tracker::add`], `Finished` on [`Tracker::finish`] or when dropped.
pub struct Tracker<'s> {
    sink: &'s dyn ProgressSink,
    work: Work,
    done: u64,
    started: std::time::Instant,
}

impl<'s> Tracker<'s> {
    pub fn start(sink: &'s dyn ProgressSink, work: Work) -> Tracker<'s> {
        sink.event(ProgressEvent::Started { work: &work });
        Tracker {
            sink,
            work,
            done: 0,
            started: std::time::Instant::now(),
        }
    }

    pub fn add(&mut self, items: u64) {
        self.done += items;
        self.sink.event(ProgressEvent::Advanced {
            work: &self.work,
            items,
            done: self.done,
            elapsed: self.started.elapsed(),
        });
    }

    pub fn finish(self) {}
}

impl Drop for Tracker<'_> {
    fn drop(&mut self) {
        self.sink.event(ProgressEvent::Finished {
            work: &self.work,
            done: self.done,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl ProgressSink for Recorder {
        fn event(&self, event: ProgressEvent<'_>) {
            let line = match event {
                ProgressEvent::Started { work } => format!("started {work}"),
                ProgressEvent::Advanced {
                    work, items, done, ..
                } => {
                    format!("{work} +{items} = {done}")
                }
                ProgressEvent::Finished { work, done } => format!("finished {work} at {done}"),
            };
            self.0.lock().unwrap().push(line);
        }
    }

    #[test]
    fn a_tracker_reports_start_running_totals_and_end() {
        let sink = Recorder::default();
        let mut tracker = Tracker::start(&sink, Work::Campaign(28));
        tracker.add(2000);
        tracker.add(500);
        tracker.finish();
        {
            // Dropped early (a failed or stopped listing): still finished.
            let mut tracker = Tracker::start(&sink, Work::ChangesSinceWatermark);
            tracker.add(7);
        }
        assert_eq!(
            sink.0.into_inner().unwrap(),
            [
                "started campaign 28",
                "campaign 28 +2000 = 2000",
                "campaign 28 +500 = 2500",
                "finished campaign 28 at 2500",
                "started changes since the watermark",
                "changes since the watermark +7 = 7",
                "finished changes since the watermark at 7",
            ]
        );
    }
}
