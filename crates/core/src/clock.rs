//! Where the appliance reads the time: validity windows, certificate
//! dates and records all ask one [`TimeProvider`], so that a test (or a
//! station with a trusted time source) sets the clock instead of moving a
//! policy's window around.

use std::sync::atomic::{AtomicU64, Ordering};

/// A source of the current time, in Unix seconds.
pub trait TimeProvider: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl TimeProvider for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that says what it is told: for tests of validity windows.
#[derive(Debug, Default)]
pub struct FixedClock(AtomicU64);

impl FixedClock {
    /// A clock standing at `now`.
    pub fn at(now: u64) -> Self {
        Self(AtomicU64::new(now))
    }

    /// Sets it.
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl TimeProvider for FixedClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
