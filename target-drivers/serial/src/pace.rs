//! Making real time pass in step with simulated time.

use std::time::{Duration, Instant};

/// Shortest sleep: below about a millisecond the sleep call's own overhead would dominate.
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// Accumulates simulated time and, when paced, sleeps it off in slices of at least 1 ms,
/// crediting oversleep against later charges so that the real total stays within a fraction
/// of a percent of the simulated total.
#[derive(Debug, Clone)]
pub struct Pacer {
    paced: bool,
    total: Duration,
    /// Simulated time not yet slept off (negative: slept too long, credited).
    owed_ns: i128,
}

impl Pacer {
    /// A pacer; `paced` makes real time pass.
    pub fn new(paced: bool) -> Self {
        Pacer {
            paced,
            total: Duration::ZERO,
            owed_ns: 0,
        }
    }

    /// Whether real time passes.
    pub fn is_paced(&self) -> bool {
        self.paced
    }

    /// Adds `d` of simulated time; sleeps once at least 1 ms is owed.
    pub fn charge(&mut self, d: Duration) {
        self.total = self.total.saturating_add(d);
        if self.paced {
            self.owed_ns += d.as_nanos() as i128;
            if self.owed_ns >= MIN_SLEEP.as_nanos() as i128 {
                self.sleep_owed();
            }
        }
    }

    /// Sleeps whatever is still owed, however small.
    pub fn settle(&mut self) {
        if self.paced && self.owed_ns > 0 {
            self.sleep_owed();
        }
    }

    /// Total simulated time charged.
    pub fn total(&self) -> Duration {
        self.total
    }

    fn sleep_owed(&mut self) {
        let start = Instant::now();
        let want = u64::try_from(self.owed_ns.max(0)).unwrap_or(u64::MAX);
        std::thread::sleep(Duration::from_nanos(want));
        self.owed_ns -= start.elapsed().as_nanos() as i128;
    }
}
