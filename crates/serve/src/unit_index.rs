//! Where in the audit log a serial or a UID may be, so that a unit lookup
//! reads a few stretches of the log instead of all of it. The log is cut
//! into stretches of [`STRETCH_RECORDS`] records, each with a Bloom filter
//! of the serials and UIDs its unit records carry (about 2.5 bytes of
//! memory per unit). A lookup first reads what was appended since the last
//! one, then the stretches whose filter may hold the value; those records
//! are decoded and compared in full, so the filter's false positives cost
//! a read, never a wrong answer.

use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

use flashgate_audit::record::{Record, RecordKind};
use flashgate_audit::{AuditError, RecordFile};

/// Records per stretch.
pub const STRETCH_RECORDS: u32 = 4096;

/// Filter bits per stretch: 10 per key, two keys per record, for about a
/// 1% false-positive rate with [`PROBES`] probes.
const FILTER_WORDS: usize = (STRETCH_RECORDS as usize * 2 * 10).div_ceil(64);

/// Bits set (and tested) per key.
const PROBES: u64 = 7;

/// A value to look up.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// A serial, as the record holds it.
    Serial(&'a str),
    /// A UID's bytes.
    Uid(&'a [u8]),
}

impl Key<'_> {
    /// Two independent hashes of the key, for double hashing.
    fn hashes(self) -> (u64, u64) {
        let one = |salt: u8| {
            let mut h = std::hash::DefaultHasher::new();
            salt.hash(&mut h);
            match self {
                Key::Serial(s) => (b's', s.as_bytes()).hash(&mut h),
                Key::Uid(u) => (b'u', u).hash(&mut h),
            }
            h.finish()
        };
        // An odd step visits every bit position of a power-of-two table;
        // for this one it only has to be non-zero.
        (one(0), one(1) | 1)
    }
}

#[derive(Debug)]
struct Stretch {
    start: u64,
    end: u64,
    records: u32,
    filter: Box<[u64; FILTER_WORDS]>,
}

impl Stretch {
    fn new(start: u64) -> Self {
        Self {
            start,
            end: start,
            records: 0,
            filter: Box::new([0; FILTER_WORDS]),
        }
    }

    fn positions(key: Key<'_>) -> impl Iterator<Item = (usize, u64)> {
        let (a, b) = key.hashes();
        let bits = (FILTER_WORDS * 64) as u64;
        (0..PROBES).map(move |i| {
            let bit = a.wrapping_add(i.wrapping_mul(b)) % bits;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn insert(&mut self, key: Key<'_>) {
        for (word, mask) in Self::positions(key) {
            self.filter[word] |= mask;
        }
    }

    fn may_hold(&self, key: Key<'_>) -> bool {
        Self::positions(key).all(|(word, mask)| self.filter[word] & mask != 0)
    }
}

/// The index of one audit log file.
#[derive(Debug)]
pub struct UnitIndex {
    path: PathBuf,
    /// The file indexed (device and inode): a new file is indexed anew.
    file: Option<(u64, u64)>,
    stretches: Vec<Stretch>,
    end: u64,
}

impl UnitIndex {
    /// For the log at `path`; nothing is read until the first lookup.
    #[must_use]
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
            stretches: Vec::new(),
            end: 0,
        }
    }

    /// Reads the records appended since the last call.
    fn catch_up(&mut self) -> Result<(), AuditError> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&self.path).map_err(|source| AuditError::Io {
            context: format!("cannot read {}", self.path.display()),
            source,
        })?;
        let file = Some((meta.dev(), meta.ino()));
        if file != self.file || meta.len() < self.end {
            self.file = file;
            self.stretches.clear();
            self.end = 0;
        }
        if meta.len() == self.end {
            return Ok(());
        }
        let mut log = RecordFile::open_at(&self.path, self.end)?;
        loop {
            let from = log.offset();
            let Some((at, bytes)) = log.next_bytes().map_err(|e| AuditError::Corrupt {
                file: self.path.display().to_string(),
                offset: from,
                detail: e.to_string(),
            })?
            else {
                break;
            };
            if self
                .stretches
                .last()
                .is_none_or(|s| s.records >= STRETCH_RECORDS)
            {
                if let Some(full) = self.stretches.last_mut() {
                    full.end = at;
                }
                self.stretches.push(Stretch::new(at));
            }
            let Some(stretch) = self.stretches.last_mut() else {
                break;
            };
            stretch.records += 1;
            if let Ok(record) = Record::decode(bytes) {
                let (serial, uid) = match &record.kind {
                    RecordKind::UnitPassed(u) => (Some(u.serial.as_str()), Some(u.uid.as_slice())),
                    RecordKind::UnitFailed(u) => (u.serial.as_deref(), u.uid.as_deref()),
                    _ => (None, None),
                };
                if let Some(s) = serial {
                    stretch.insert(Key::Serial(s));
                }
                if let Some(u) = uid {
                    stretch.insert(Key::Uid(u));
                }
            }
        }
        self.end = log.offset();
        if let Some(s) = self.stretches.last_mut() {
            s.end = self.end;
        }
        Ok(())
    }

    /// The byte ranges of the log, oldest first, whose records may carry
    /// `key`, after reading what was appended.
    pub fn candidates(&mut self, key: Key<'_>) -> Result<Vec<(u64, u64)>, AuditError> {
        self.catch_up()?;
        Ok(self
            .stretches
            .iter()
            .filter(|s| s.may_hold(key))
            .map(|s| (s.start, s.end))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stretch_holds_what_went_in_and_rarely_claims_what_did_not() {
        let mut s = Stretch::new(0);
        let serials: Vec<String> = (0..STRETCH_RECORDS)
            .map(|i| format!("ACME-{i:08}"))
            .collect();
        let uids: Vec<[u8; 12]> = (0..STRETCH_RECORDS)
            .map(|i| {
                let mut u = [0x9a; 12];
                u[8..].copy_from_slice(&i.to_be_bytes());
                u
            })
            .collect();
        for (serial, uid) in serials.iter().zip(&uids) {
            s.insert(Key::Serial(serial));
            s.insert(Key::Uid(uid));
        }
        assert!(serials.iter().all(|x| s.may_hold(Key::Serial(x))));
        assert!(uids.iter().all(|u| s.may_hold(Key::Uid(u))));
        let false_positives = (0..10_000)
            .filter(|i| s.may_hold(Key::Serial(&format!("OTHER-{i:08}"))))
            .count();
        assert!(false_positives < 300, "{false_positives} in 10000");
    }
}
