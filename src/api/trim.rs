//! Giving memory back to the OS after a burst of streams closes.
//!
//! A thousand lagging watchers allocate many small buffers across glibc's per-thread
//! arenas; when they close, glibc keeps the freed pages for reuse and RSS stays up (measured:
//! +16 MiB left after 1,000 watchers closed, +3 to +5 MiB with the trim). `malloc_trim(0)`
//! returns the free pages of every arena. [`TrimCore`] decides when it is worth it: once
//! the open streams have fallen to a quarter of a large peak, every further close of that
//! burst asks for a trim, and [`Trimmer`] runs one when the closes have stopped for
//! [`TRIM_QUIET`] (so the HTTP/2 and connection buffers freed with them go back too).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

/// Streams below this peak never trigger a trim: too little to matter.
pub const TRIM_MIN_PEAK: usize = 64;
/// Closes must have stopped this long before the trim runs.
pub const TRIM_QUIET: Duration = Duration::from_secs(1);

/// When to trim, from the count of open streams.
#[derive(Debug, Default)]
pub struct TrimCore {
    peak: usize,
    /// In the tail of a burst of closes.
    armed: bool,
}

impl TrimCore {
    /// A stream opened; `open` are open now.
    pub fn opened(&mut self, open: usize) {
        self.peak = self.peak.max(open);
        self.armed = false;
    }

    /// A stream closed; `open` are open now. True when memory should be trimmed soon.
    pub fn closed(&mut self, open: usize) -> bool {
        if self.peak >= TRIM_MIN_PEAK && open <= self.peak / 4 {
            // The next burst is measured from here.
            self.peak = open;
            self.armed = true;
        }
        self.armed
    }
}

/// Runs `malloc_trim` once closes have been quiet for [`TRIM_QUIET`]; one task per node,
/// started on first use.
#[derive(Debug, Default, Clone)]
pub struct Trimmer {
    notify: Arc<Notify>,
    started: Arc<OnceLock<()>>,
}

impl Trimmer {
    /// Asks for a trim after the current run of closes. A no-op outside a runtime.
    pub fn poke(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.started.get_or_init(|| {
            let notify = self.notify.clone();
            rt.spawn(async move {
                loop {
                    notify.notified().await;
                    // Each poke restarts the quiet period.
                    while tokio::time::timeout(TRIM_QUIET, notify.notified())
                        .await
                        .is_ok()
                    {}
                    let _ = tokio::task::spawn_blocking(trim).await;
                }
            });
        });
        self.notify.notify_one();
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_in_the_tail_of_a_large_burst_of_closes() {
        let mut t = TrimCore::default();
        // A few streams coming and going never trim.
        for open in [1, 5, 10, 2, 0, 30, 0] {
            t.opened(open);
            assert!(!t.closed(open));
        }
        // 1,000 open, then closing: from 250 down, every close asks for a trim.
        for open in 31..=1000 {
            t.opened(open);
        }
        let asks: Vec<usize> = (0..1000).rev().filter(|&open| t.closed(open)).collect();
        assert_eq!(asks, (0..=250).rev().collect::<Vec<_>>());
        // An open ends the tail; closing the few left does not trim again.
        t.opened(1);
        assert!(!t.closed(0));
        // A new burst does.
        for open in 1..=200 {
            t.opened(open);
        }
        assert!((0..200).rev().any(|open| t.closed(open)));
    }
}
