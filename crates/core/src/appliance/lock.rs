//! The writer lock: one process at a time changes an appliance's state.
//!
//! An exclusive `flock` on `writer.lock` in the state directory. The kernel
//! drops it when the process dies, so a crash never leaves it held. After
//! taking it the holder writes its pid and what it does into the file, so
//! that a refused process can say who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{io_err, Appliance, ApplianceError};

/// File name of the lock in the state directory.
pub const LOCK_FILE: &str = "writer.lock";

/// What a read-only command writes into the lock while it recovers.
pub const RECOVERING: &str = "the appliance is being recovered after an interrupted command";

/// The held writer lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct WriterLock {
    file: File,
    path: PathBuf,
}

fn open_lock_file(state_dir: &Path) -> Result<(File, PathBuf), ApplianceError> {
    std::fs::create_dir_all(state_dir).map_err(io_err("cannot create", state_dir))?;
    let path = state_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("cannot open", &path))?;
    Ok((file, path))
}

/// What the lock file says about its holder, as one sentence.
fn holder_sentence(path: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    let mut lines = text.lines();
    let pid = lines
        .next()
        .and_then(|l| l.strip_prefix("pid "))
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    let what = lines.next().map(str::trim).filter(|w| !w.is_empty());
    match (what, pid) {
        (Some(what), Some(pid)) => {
            format!("{what} by another flashgate process (pid {pid}); wait for it or stop it")
        }
        _ => "another flashgate process is changing this appliance's state; wait for it or stop it"
            .to_owned(),
    }
}

impl WriterLock {
    /// Takes the lock without waiting; `Ok(None)` when another process holds it.
    /// `what` completes "... by another flashgate process", e.g.
    /// "job X is being run".
    pub fn try_acquire(state_dir: &Path, what: &str) -> Result<Option<Self>, ApplianceError> {
        let (file, path) = open_lock_file(state_dir)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(io_err("cannot lock", &path)(e)),
        }
        let lock = Self { file, path };
        lock.describe(what)?;
        Ok(Some(lock))
    }

    /// Takes the lock or refuses at once, naming the holder. A holder that
    /// is only recovering (a read-only command settling what a crash left)
    /// is waited for, up to a few seconds: it never holds the lock long.
    pub fn acquire(state_dir: &Path, what: &str) -> Result<Self, ApplianceError> {
        let path = state_dir.join(LOCK_FILE);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(lock) = Self::try_acquire(state_dir, what)? {
                return Ok(lock);
            }
            let holder = holder_sentence(&path);
            if !holder.starts_with(RECOVERING) || std::time::Instant::now() >= deadline {
                return Err(ApplianceError::Busy { holder });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Rewrites what the holder is doing.
    pub fn describe(&self, what: &str) -> Result<(), ApplianceError> {
        let text = format!("pid {}\n{what}\n", std::process::id());
        let mut f = &self.file;
        self.file
            .set_len(0)
            .and_then(|()| std::io::Seek::rewind(&mut f))
            .and_then(|_| f.write_all(text.as_bytes()))
            .map_err(io_err("cannot write", &self.path))
    }
}

impl Appliance {
    /// Takes this appliance's writer lock, or refuses at once naming the
    /// process that holds it.
    pub fn lock_writer(&self, what: &str) -> Result<WriterLock, ApplianceError> {
        WriterLock::acquire(&self.config.state_dir, what)
    }

    /// Takes the writer lock if no other process holds it.
    pub fn try_lock_writer(&self, what: &str) -> Result<Option<WriterLock>, ApplianceError> {
        WriterLock::try_acquire(&self.config.state_dir, what)
    }
}
