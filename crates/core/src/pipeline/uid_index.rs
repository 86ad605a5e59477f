//! Which device UIDs a job has already attempted, kept on disk so that the
//! run's memory stays flat in the number of units: one small file per UID,
//! named by the SHA-256 of the UID, holding the counter value of its latest
//! attempt and how that attempt ended.
//!
//! An entry is written when the unit's counter value is reserved (before any
//! identity is issued), and settled when its record is written. An entry
//! still `reserved` after a crash is an aborted attempt.

use std::collections::HashSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// How a UID's latest attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptState {
    /// Counted, not settled: in flight, or aborted by a crash.
    Reserved,
    /// Failed at some stage; the board may be reworked.
    Failed,
    /// Provisioned: the UID must never be provisioned again by this job.
    Passed,
}

impl AttemptState {
    const fn byte(self) -> u8 {
        match self {
            Self::Reserved => 0,
            Self::Failed => 1,
            Self::Passed => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Reserved),
            1 => Some(Self::Failed),
            2 => Some(Self::Passed),
            _ => None,
        }
    }
}

/// The latest attempt on one UID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Its quota counter value.
    pub counter: u64,
    /// How it ended.
    pub state: AttemptState,
}

/// Why the index could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UidIndexError {
    /// File trouble.
    #[error("cannot {action} the UID index entry {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An entry that is not one this code writes.
    #[error("the UID index entry {path} is damaged; remove it only after checking the audit log for that device")]
    Damaged { path: PathBuf },
}

/// The per-job UID index.
#[derive(Debug)]
pub struct UidIndex {
    dir: PathBuf,
    /// UIDs being provisioned right now (at most one per channel).
    in_flight: Mutex<HashSet<[u8; 32]>>,
}

/// Marks a UID as in flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a> {
    index: &'a UidIndex,
    key: [u8; 32],
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.index.in_flight.lock() {
            set.remove(&self.key);
        }
    }
}

const ENTRY_LEN: usize = 9;

impl UidIndex {
    /// The index under `dir` (created on first write).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    fn key(uid: &[u8]) -> [u8; 32] {
        Sha256::digest(uid).into()
    }

    fn path(&self, key: &[u8; 32]) -> PathBuf {
        let h = hex::encode(key);
        self.dir.join(&h[..2]).join(&h[2..])
    }

    /// Claims `uid` for this channel: `Ok(None)` when another channel is
    /// provisioning the same UID right now.
    pub fn claim(&self, uid: &[u8]) -> Option<InFlight<'_>> {
        let key = Self::key(uid);
        let mut set = self.in_flight.lock().ok()?;
        // Lazily: a guard made and dropped here would remove the key the
        // other claimant holds (and take this lock again).
        set.insert(key).then(|| InFlight { index: self, key })
    }

    /// The latest attempt on `uid`, if any.
    pub fn lookup(&self, uid: &[u8]) -> Result<Option<Attempt>, UidIndexError> {
        let path = self.path(&Self::key(uid));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(UidIndexError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let entry: [u8; ENTRY_LEN] = match bytes.try_into() {
            Ok(e) => e,
            Err(_) => return Err(UidIndexError::Damaged { path }),
        };
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&entry[..8]);
        let state = AttemptState::from_byte(entry[8]).ok_or(UidIndexError::Damaged { path })?;
        Ok(Some(Attempt {
            counter: u64::from_be_bytes(counter),
            state,
        }))
    }

    /// Records the latest attempt on `uid` (written whole: temporary file,
    /// then rename, so a reader never sees half an entry).
    pub fn note(&self, uid: &[u8], attempt: Attempt) -> Result<(), UidIndexError> {
        let path = self.path(&Self::key(uid));
        let io = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| UidIndexError::Io {
                action,
                path,
                source,
            }
        };
        let dir = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(dir).map_err(io("create the directory of", &path))?;
        let tmp = path.with_extension("tmp");
        let mut entry = [0u8; ENTRY_LEN];
        entry[..8].copy_from_slice(&attempt.counter.to_be_bytes());
        entry[8] = attempt.state.byte();
        let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&entry).map_err(io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("rename", &path))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let index = UidIndex::new(dir.path());
        assert_eq!(index.lookup(b"uid-1").unwrap(), None);
        for state in [
            AttemptState::Reserved,
            AttemptState::Failed,
            AttemptState::Passed,
        ] {
            let a = Attempt { counter: 7, state };
            index.note(b"uid-1", a).unwrap();
            assert_eq!(index.lookup(b"uid-1").unwrap(), Some(a));
        }
        assert_eq!(index.lookup(b"uid-2").unwrap(), None);
        let path = index.path(&UidIndex::key(b"uid-1"));
        fs::write(&path, [0u8; 9 + 1]).unwrap();
        assert!(matches!(
            index.lookup(b"uid-1"),
            Err(UidIndexError::Damaged { .. })
        ));
        fs::write(&path, [0, 0, 0, 0, 0, 0, 0, 1, 9]).unwrap();
        assert!(matches!(
            index.lookup(b"uid-1"),
            Err(UidIndexError::Damaged { .. })
        ));
    }

    #[test]
    fn a_uid_is_claimed_by_one_channel_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let index = UidIndex::new(dir.path());
        let first = index.claim(b"same").unwrap();
        assert!(index.claim(b"same").is_none());
        assert!(index.claim(b"other").is_some());
        drop(first);
        assert!(index.claim(b"same").is_some());
    }
}
