//! Provisioning first. The threads that serve HTTPS (TLS, event streams,
//! status, lookups) run at a lower scheduling priority than the runs they
//! watch, so a thousand event clients take CPU time from the console's
//! latency, not from the line's throughput.
//!
//! A thread's nice value is inherited by the threads it starts and cannot
//! be lowered back without privilege, so runs are started from a
//! [`Launcher`] thread that keeps the process's own priority.

use std::sync::mpsc;

/// How much lower than the process the serving threads run (nice
/// increment; Linux gives a thread at +10 about a tenth of the CPU time of
/// one at +0 when both want it).
pub const SERVING_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A thread at the process's own priority that runs what is handed to it
/// (starting runs, whose threads inherit its priority).
#[derive(Clone)]
pub struct Launcher {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Launcher")
    }
}

impl Launcher {
    /// Starts the launcher thread from the calling thread, at its priority.
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("launcher".to_owned())
            .spawn(move || {
                for job in rx {
                    // A job that panics is reported to its caller (see
                    // `run`); the launcher stays for the next one.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        Ok(Self { jobs: tx })
    }

    /// Runs `f` on the launcher thread and waits for its result. If the
    /// launcher is gone, `f` runs on the calling thread.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done_tx, done_rx) = mpsc::sync_channel::<T>(1);
        let job: Job = Box::new(move || {
            let _ = done_tx.send(f());
        });
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            job();
        }
        done_rx.recv().unwrap_or_else(|_| panic_in_launcher())
    }
}

#[allow(clippy::panic)]
fn panic_in_launcher() -> ! {
    // The job did not return: it panicked on the launcher thread; carry
    // that on here, as a plain call would have.
    panic!("a job on the launcher thread panicked")
}

/// The calling thread's nice value (0 where there is none to read).
fn this_thread_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getpriority_process(None).unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Sets the calling thread's nice value to `nice` (as far as the system
/// allows). Linux's nice value is per thread.
fn set_this_thread_nice(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::process::setpriority_process(None, nice.min(19));
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
    }
}

/// The service's runtime (its threads run [`SERVING_NICE`] below the
/// calling thread) and the launcher its runs start from, at the calling
/// thread's priority. Call it from the thread whose priority runs should
/// have (the main thread).
pub fn runtime() -> std::io::Result<(tokio::runtime::Runtime, Launcher)> {
    let launcher = Launcher::new()?;
    // Set, not added: a thread the runtime starts from one of its own
    // threads already inherits the lower priority.
    let serving = this_thread_nice() + SERVING_NICE;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("serve")
        .on_thread_start(move || set_this_thread_nice(serving))
        .enable_all()
        .build()?;
    Ok((runtime, launcher))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn nice() -> i32 {
        this_thread_nice()
    }

    #[test]
    fn serving_threads_yield_to_the_threads_runs_start_from() {
        let base = std::thread::spawn(nice).join().unwrap();
        let (runtime, launcher) = runtime().unwrap();
        let (serving, launched) = runtime.block_on(async move {
            let serving = tokio::spawn(async { nice() }).await.unwrap();
            // A blocking thread, started by a serving thread: no lower.
            let blocking = tokio::task::spawn_blocking(nice).await.unwrap();
            assert_eq!(blocking, serving);
            // As a run starts: from a serving thread, through the launcher,
            // onto a thread of its own.
            let launched = tokio::task::spawn_blocking(move || {
                launcher.run(|| std::thread::spawn(nice).join().unwrap())
            })
            .await
            .unwrap();
            (serving, launched)
        });
        assert_eq!(serving, (base + SERVING_NICE).min(19));
        assert_eq!(launched, base);
    }

    #[test]
    fn a_launcher_returns_what_it_ran() {
        let launcher = Launcher::new().unwrap();
        let here = std::thread::current().id();
        let there = launcher.run(move || std::thread::current().id() != here);
        assert!(there);
        assert_eq!(launcher.run(|| 41 + 1), 42);
        // A job that panics panics its caller; the launcher takes the next.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            launcher.run(|| -> u8 { panic!("the job fails") })
        }));
        assert!(panicked.is_err());
        assert_eq!(launcher.run(|| 7), 7);
    }
}
