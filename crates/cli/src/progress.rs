//! Progress for long operations: a bar (bytes, rate, ETA) on a terminal, a log line every
//! tenth of the way otherwise (systemd timers, cron, CI). The core reports through
//! [`pitr_core::Reporter`]; this is how the binary shows it.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

static QUIET: AtomicBool = AtomicBool::new(false);

/// `-q`: no bars, no progress lines.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// The binary's [`pitr_core::Reporter`].
pub struct Shown;

impl pitr_core::Reporter for Shown {
    fn start(&self, what: String, total: u64) -> Box<dyn pitr_core::Progress> {
        Box::new(Progress::new(what, total))
    }
}

pub struct Progress {
    what: String,
    total: AtomicU64,
    done: AtomicU64,
    next_log: AtomicU64,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(what: impl Into<String>, total: u64) -> Self {
        let quiet = QUIET.load(Ordering::Relaxed);
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        let what = what.into();
        if let Some(b) = &bar {
            b.set_message(what.clone());
        }
        Progress {
            what,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            next_log: AtomicU64::new(total / 10),
            started: Instant::now(),
            bar,
        }
    }

    fn report(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
            return;
        }
        let total = self.total.load(Ordering::Relaxed);
        let mark = self.next_log.load(Ordering::Relaxed);
        if total == 0 || done < mark {
            return;
        }
        let next = done + (total / 10).max(1);
        if self
            .next_log
            .compare_exchange(mark, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = total.saturating_sub(done) as f64 / rate.max(1.0);
        tracing::info!(
            "{}: {} / {} MiB ({}%, {:.0} MiB/s, about {:.0} s left)",
            self.what,
            done >> 20,
            total >> 20,
            (done * 100 / total).min(100),
            rate / 1048576.0,
            eta
        );
    }
}

impl pitr_core::Progress for Progress {
    fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.next_log.store(total / 10, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.report(done);
    }

    fn set(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.report(done);
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
