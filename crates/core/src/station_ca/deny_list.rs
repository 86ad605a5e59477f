//! The deny-list: SHA-256 fingerprints of client certificates refused at
//! the handshake even though their chain checks. A text file the service
//! reloads when it changes, so a revocation needs no restart.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{io_err, StationCaError};

/// The deny-list's first lines, written when `revoke_client` creates it.
const HEADER: &str = "# flashgate station deny-list: SHA-256 fingerprints of client certificates\n\
# refused at the TLS handshake. One fingerprint (64 lowercase hex digits) per\n\
# line; lines starting with # are comments. Written by `flashgate appliance revoke-cert`.\n";

/// Where the deny-list lives: `state_dir/station/revoked`.
pub fn revoked_path(state_dir: &Path) -> PathBuf {
    super::station_dir(state_dir).join("revoked")
}

/// SHA-256 fingerprints refused at the handshake even though the chain checks.
/// File: state_dir/station/revoked, one lowercase hex fingerprint per line, `#` comments.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    fingerprints: BTreeSet<[u8; 32]>,
}

impl std::fmt::Debug for DenyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenyList")
            .field("fingerprints", &self.fingerprints.len())
            .finish()
    }
}

impl DenyList {
    /// Reads the file at `path`; a missing file is an empty list. A line
    /// that is neither blank, a comment nor a fingerprint is refused with
    /// its number, so that a typo never silently re-admits a client.
    pub fn load(path: &Path) -> Result<Self, StationCaError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(io_err("cannot read", path)(e)),
        }
    }

    /// Parses the deny-list's bytes (`path` names it in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, StationCaError> {
        let mut fingerprints = BTreeSet::new();
        for (n, raw) in bytes.split(|b| *b == b'\n').enumerate() {
            let bad = |why: &'static str| StationCaError::DenyList {
                path: path.to_owned(),
                line: n + 1,
                why,
            };
            let line = std::str::from_utf8(raw)
                .map_err(|_| bad("it is not UTF-8 text"))?
                .trim_matches([' ', '\t', '\r']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() != 64 {
                return Err(bad("it is not 64 hex digits"));
            }
            if !line.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(bad("it is not lowercase hex"));
            }
            let mut fp = [0u8; 32];
            hex::decode_to_slice(line, &mut fp).map_err(|_| bad("it is not lowercase hex"))?;
            fingerprints.insert(fp);
        }
        Ok(Self { fingerprints })
    }

    /// Whether the certificate with this SHA-256 is refused.
    pub fn contains(&self, fingerprint: &[u8; 32]) -> bool {
        self.fingerprints.contains(fingerprint)
    }

    /// How many fingerprints the list holds.
    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    /// Whether the list refuses nothing.
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }
}

/// Adds `fingerprint` to the deny-list at `path`, after a comment line with
/// the time and `note`: the whole file is written anew under a temporary
/// name and renamed over the old one, so a reader sees the old list or the
/// new one, never a part. False if it was there already (nothing written).
/// A lock file beside the list (`revoked.lock`) keeps two revocations from
/// interleaving; the writer lock is not needed.
pub(crate) fn revoke(
    path: &Path,
    fingerprint: [u8; 32],
    note: &str,
    now: u64,
) -> Result<bool, StationCaError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    }
    // Two revokers at once would each rewrite the list from what it read.
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("cannot open", &lock_path))?;
    lock.lock().map_err(io_err("cannot lock", &lock_path))?;
    let mut text = match std::fs::read(path) {
        Ok(bytes) => {
            // A list that does not parse is not extended: it is fixed first.
            if DenyList::parse(path, &bytes)?.contains(&fingerprint) {
                return Ok(false);
            }
            bytes
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HEADER.as_bytes().to_vec(),
        Err(e) => return Err(io_err("cannot read", path)(e)),
    };
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    // One line: control characters (a newline would start a line the
    // parser reads as a fingerprint) become spaces.
    let note: String = note
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let note = note.trim();
    let comment = if note.is_empty() {
        format!("# revoked {}\n", crate::display::time(now))
    } else {
        format!("# revoked {}: {note}\n", crate::display::time(now))
    };
    text.extend_from_slice(comment.as_bytes());
    text.extend_from_slice(hex::encode(fingerprint).as_bytes());
    text.push(b'\n');
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    }
    super::write_atomic(path, &text)?;
    Ok(true)
}
