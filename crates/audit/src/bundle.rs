//! The export bundle handed to the OEM: a directory
//!
//! ```text
//! bundle.json        index: format, job id, counts, SHA-256 and size of each file
//! records.log        every record of the log (all jobs: the tree covers all)
//! checkpoints.log    every signed checkpoint
//! enrollment.cbor    the appliance's signed enrollment record, as given
//! manifest.cose      the job's signed manifest, as given
//! certs/<sha256>.der each device certificate, named by its SHA-256
//! ```
//!
//! The index is a convenience and is not signed: the verifier checks it
//! against the files and trusts only the checkpoints and the pinned key.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::AuditError;
use crate::frame::{put_frame, FrameError, FrameReader};
use crate::log::{RecordFile, CHECKPOINTS_FILE as LOG_CHECKPOINTS, LOG_FILE};
use crate::record::JobId;

/// The index file.
pub const INDEX_FILE: &str = "bundle.json";
/// The records.
pub const RECORDS_FILE: &str = "records.log";
/// The signed checkpoints.
pub const CHECKPOINTS_FILE: &str = "checkpoints.log";
/// The enrollment record.
pub const ENROLLMENT_FILE: &str = "enrollment.cbor";
/// The signed manifest.
pub const MANIFEST_FILE: &str = "manifest.cose";
/// The certificate directory.
pub const CERTS_DIR: &str = "certs";
/// The value of `format` in the index.
pub const BUNDLE_FORMAT: &str = "flashgate-audit-bundle/1";

/// What the caller adds to the log's files.
#[derive(Debug, Clone, Default)]
pub struct BundleExtras {
    /// The appliance's signed enrollment record.
    pub enrollment: Vec<u8>,
    /// The job's signed manifest.
    pub manifest: Vec<u8>,
    /// The DER device certificates issued for the job.
    pub certificates: Vec<Vec<u8>>,
    /// A directory of more DER certificates (`*.der`; other files are left
    /// out): copied one at a time, so that an export's memory does not grow
    /// with the job's units.
    pub certificate_dir: Option<PathBuf>,
}

/// One file in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// `bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleIndex {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The job the bundle was exported for, hex.
    pub job_id: String,
    /// Records in `records.log`.
    pub records: u64,
    /// Checkpoints in `checkpoints.log`.
    pub checkpoints: u64,
    /// The files, by name.
    pub files: BTreeMap<String, FileEntry>,
    /// SHA-256 of each certificate, hex, sorted.
    pub certificates: Vec<String>,
}

/// The certificate list of `bundle.json`, summarised while it is read so
/// that a bundle of millions of units is not held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateList {
    /// Entries in the list.
    pub count: u64,
    /// SHA-256 over the entries' 32-byte values, concatenated in order.
    pub sha256: [u8; 32],
    /// True when the entries are in strictly ascending order.
    pub sorted: bool,
}

impl<'de> Deserialize<'de> for CertificateList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = CertificateList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of hex SHA-256 values")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut hash = Sha256::new();
                let mut count = 0u64;
                let mut sorted = true;
                let mut last: Option<[u8; 32]> = None;
                while let Some(text) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
                    let mut v = [0u8; 32];
                    hex::decode_to_slice(text.as_bytes(), &mut v).map_err(|_| {
                        serde::de::Error::custom(format!("{text:?} is not a hex SHA-256"))
                    })?;
                    sorted &= last.is_none_or(|l| l < v);
                    last = Some(v);
                    hash.update(v);
                    count += 1;
                }
                Ok(CertificateList {
                    count,
                    sha256: hash.finalize().into(),
                    sorted,
                })
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// `bundle.json` as the verifier reads it: everything but the certificate
/// list, which is only summarised.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IndexSummary {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The job the bundle was exported for, hex.
    pub job_id: String,
    /// Records in `records.log`.
    pub records: u64,
    /// Checkpoints in `checkpoints.log`.
    pub checkpoints: u64,
    /// The files, by name.
    pub files: BTreeMap<String, FileEntry>,
    /// The certificates.
    pub certificates: CertificateList,
}

impl IndexSummary {
    /// Reads `bundle.json` as a stream.
    pub fn read(path: &Path) -> Result<Self, AuditError> {
        let f = File::open(path).map_err(|e| AuditError::io("cannot read", path, e))?;
        serde_json::from_reader(BufReader::new(f)).map_err(|e| {
            AuditError::Bundle(format!("{} is not a bundle index: {e}", path.display()))
        })
    }
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<FileEntry, AuditError> {
    let f = write_unsynced(path, bytes)?;
    f.sync_all()
        .map_err(|e| AuditError::io("cannot write", path, e))?;
    Ok(FileEntry {
        sha256: hex::encode(Sha256::digest(bytes)),
        bytes: bytes.len() as u64,
    })
}

/// Writes a file and leaves its durability to one [`sync_filesystem`]
/// later: a bundle's certificates are many small files, and one fsync
/// each is most of an export's time.
fn write_unsynced(path: &Path, bytes: &[u8]) -> Result<File, AuditError> {
    let mut f = File::create(path).map_err(|e| AuditError::io("cannot create", path, e))?;
    f.write_all(bytes)
        .map_err(|e| AuditError::io("cannot write", path, e))?;
    Ok(f)
}

/// Makes everything written on `dir`'s file system durable (syncfs(2)),
/// data and directory entries alike.
fn sync_filesystem(dir: &Path) -> Result<(), AuditError> {
    let d = File::open(dir).map_err(|e| AuditError::io("cannot open", dir, e))?;
    rustix::fs::syncfs(&d).map_err(|e| AuditError::io("cannot sync", dir, e.into()))
}

/// Copies the complete frames of a framed file; returns (entry, count).
fn copy_frames(src: &Path, dst: &Path) -> Result<(FileEntry, u64), AuditError> {
    let input = File::open(src).map_err(|e| AuditError::io("cannot open", src, e))?;
    let out = File::create(dst).map_err(|e| AuditError::io("cannot create", dst, e))?;
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(1 << 16, out),
        hash: Sha256::new(),
        len: 0,
    };
    let mut frames = FrameReader::new(BufReader::with_capacity(1 << 16, input));
    let mut count = 0u64;
    let mut buf = Vec::new();
    loop {
        match frames.next_frame() {
            Ok(Some((_, bytes))) => {
                buf.clear();
                put_frame(&mut buf, bytes);
                w.write_all(&buf)
                    .map_err(|e| AuditError::io("cannot write", dst, e))?;
                count += 1;
            }
            Ok(None) => break,
            // An entry being written right now: stop before it.
            Err(FrameError::Truncated { .. }) => break,
            Err(FrameError::TooLarge { offset, len }) => {
                return Err(AuditError::Corrupt {
                    file: src.display().to_string(),
                    offset,
                    detail: format!("an entry claims {len} bytes"),
                })
            }
            Err(FrameError::Io(e)) => return Err(AuditError::io("cannot read", src, e)),
        }
    }
    w.flush()
        .map_err(|e| AuditError::io("cannot write", dst, e))?;
    let HashingWriter { inner, hash, len } = w;
    let file = inner
        .into_inner()
        .map_err(|e| AuditError::io("cannot write", dst, e.into_error()))?;
    file.sync_all()
        .map_err(|e| AuditError::io("cannot sync", dst, e))?;
    Ok((
        FileEntry {
            sha256: hex::encode(hash.finalize()),
            bytes: len,
        },
        count,
    ))
}

/// Writes a bundle for `job_id` from the log in `log_dir` into `out_dir`
/// (created; must not exist or be empty). The log may be in use: the copy
/// holds the checkpoints and records complete at the time, checkpoints
/// first, so every copied checkpoint is covered by the copied records.
pub fn export(
    log_dir: &Path,
    job_id: &JobId,
    extras: &BundleExtras,
    out_dir: &Path,
) -> Result<BundleIndex, AuditError> {
    if out_dir.exists() {
        let mut entries =
            std::fs::read_dir(out_dir).map_err(|e| AuditError::io("cannot list", out_dir, e))?;
        if entries.next().is_some() {
            return Err(AuditError::Bundle(format!(
                "{} is not empty; export into a new directory",
                out_dir.display()
            )));
        }
    }
    let certs_dir = out_dir.join(CERTS_DIR);
    std::fs::create_dir_all(&certs_dir)
        .map_err(|e| AuditError::io("cannot create", &certs_dir, e))?;
    let mut files = BTreeMap::new();
    let (entry, checkpoints) = copy_frames(
        &log_dir.join(LOG_CHECKPOINTS),
        &out_dir.join(CHECKPOINTS_FILE),
    )?;
    files.insert(CHECKPOINTS_FILE.to_owned(), entry);
    let (entry, records) = copy_frames(&log_dir.join(LOG_FILE), &out_dir.join(RECORDS_FILE))?;
    files.insert(RECORDS_FILE.to_owned(), entry);
    files.insert(
        ENROLLMENT_FILE.to_owned(),
        write_file(&out_dir.join(ENROLLMENT_FILE), &extras.enrollment)?,
    );
    files.insert(
        MANIFEST_FILE.to_owned(),
        write_file(&out_dir.join(MANIFEST_FILE), &extras.manifest)?,
    );
    // Names are kept as 32-byte hashes (the list bundle.json needs, sorted);
    // the certificates themselves pass through one at a time.
    let mut hashes: Vec<[u8; 32]> = Vec::with_capacity(extras.certificates.len());
    for der in &extras.certificates {
        let h: [u8; 32] = Sha256::digest(der).into();
        write_unsynced(&certs_dir.join(format!("{}.der", hex::encode(h))), der)?;
        hashes.push(h);
    }
    if let Some(dir) = &extras.certificate_dir {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let path = e.path();
                if path.extension().is_none_or(|x| x != "der") {
                    continue;
                }
                let der =
                    std::fs::read(&path).map_err(|e| AuditError::io("cannot read", &path, e))?;
                let h: [u8; 32] = Sha256::digest(&der).into();
                write_unsynced(&certs_dir.join(format!("{}.der", hex::encode(h))), &der)?;
                hashes.push(h);
            }
        }
    }
    // Every certificate is durable before the index that lists it.
    sync_filesystem(&certs_dir)?;
    hashes.sort_unstable();
    hashes.dedup();
    let certificates: Vec<String> = hashes.into_iter().map(hex::encode).collect();
    let index = BundleIndex {
        format: BUNDLE_FORMAT.to_owned(),
        job_id: hex::encode(job_id),
        records,
        checkpoints,
        files,
        certificates,
    };
    let json = serde_json::to_vec_pretty(&index)
        .map_err(|e| AuditError::Bundle(format!("cannot encode the index: {e}")))?;
    write_file(&out_dir.join(INDEX_FILE), &json)?;
    File::open(out_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io("cannot sync", out_dir, e))?;
    Ok(index)
}

/// A bundle directory opened for reading. Records are streamed; nothing
/// large is held.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
    index: IndexSummary,
}

impl Bundle {
    /// Opens a bundle and reads its index.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let index = IndexSummary::read(&dir.join(INDEX_FILE))?;
        if index.format != BUNDLE_FORMAT {
            return Err(AuditError::Bundle(format!(
                "unknown bundle format {:?}, expected {BUNDLE_FORMAT:?}",
                index.format
            )));
        }
        Ok(Self {
            dir: dir.to_owned(),
            index,
        })
    }

    /// The index (unauthenticated).
    #[must_use]
    pub fn index(&self) -> &IndexSummary {
        &self.index
    }

    /// The bundle directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A streaming reader over `records.log`.
    pub fn records(&self) -> Result<RecordFile, AuditError> {
        RecordFile::open(&self.dir.join(RECORDS_FILE))
    }

    /// A streaming reader over `checkpoints.log` (same framing).
    pub fn checkpoints(&self) -> Result<RecordFile, AuditError> {
        RecordFile::open(&self.dir.join(CHECKPOINTS_FILE))
    }

    /// The enrollment record.
    pub fn enrollment(&self) -> Result<Vec<u8>, AuditError> {
        let p = self.dir.join(ENROLLMENT_FILE);
        std::fs::read(&p).map_err(|e| AuditError::io("cannot read", &p, e))
    }

    /// The signed manifest.
    pub fn manifest(&self) -> Result<Vec<u8>, AuditError> {
        let p = self.dir.join(MANIFEST_FILE);
        std::fs::read(&p).map_err(|e| AuditError::io("cannot read", &p, e))
    }

    /// The certificate with this SHA-256, if the bundle has it.
    pub fn certificate(&self, sha256: &[u8; 32]) -> Result<Option<Vec<u8>>, AuditError> {
        let p = self
            .dir
            .join(CERTS_DIR)
            .join(format!("{}.der", hex::encode(sha256)));
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AuditError::io("cannot read", &p, e)),
        }
    }
}
