//! How long the token takes, for whoever watches the process (the station
//! service's metrics). One observer per process, set once; with none set,
//! an operation costs one atomic load more.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Told the name of each timed operation and how long it took.
pub type Observer = Box<dyn Fn(&'static str, Duration) + Send + Sync>;

static OBSERVER: OnceLock<Observer> = OnceLock::new();

/// Sets the process's observer; false if one was set already.
pub fn set_observer(observer: Observer) -> bool {
    OBSERVER.set(observer).is_ok()
}

/// Times `f` as operation `name` (`sign`, `hmac`, `counter-advance`, ...).
pub(crate) fn timed<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let Some(observer) = OBSERVER.get() else {
        return f();
    };
    let start = Instant::now();
    let out = f();
    observer(name, start.elapsed());
    out
}
