//! The append-only log directory:
//!
//! - `audit.log`: records, each framed as `u32be length || record bytes`;
//! - `audit.leaves`: the 32-byte leaf hash of each record, in order (derived
//!   data, rebuilt from `audit.log` when it disagrees, so never synced on its
//!   own);
//! - `checkpoints.log`: signed checkpoints, framed the same way.
//!
//! Appends are durable before [`Log::append`] returns. Many threads may
//! append at once: the first to find no commit in progress becomes the
//! committer, takes every record queued so far, writes them in one write,
//! pays one `fdatasync` for all of them and wakes the others (group commit).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use flashgate_tlog::{leaf_hash, Checkpoint, Hash, LeafHashes, Tree};

use crate::checkpoint::{origin_for, sign_checkpoint, CheckpointSigner, UnverifiedCheckpoint};
use crate::error::{AuditError, RollbackFinding};
use crate::frame::{put_frame, FrameError, FrameReader};
use crate::record::{Record, RecordKind, MAX_RECORD_LEN};

/// File name of the records.
pub const LOG_FILE: &str = "audit.log";
/// File name of the leaf hashes.
pub const LEAVES_FILE: &str = "audit.leaves";
/// File name of the signed checkpoints.
pub const CHECKPOINTS_FILE: &str = "checkpoints.log";

/// A clock giving Unix time in milliseconds.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// How to open a log.
#[derive(Clone)]
pub struct LogOptions {
    appliance_id: String,
    clock: Clock,
}

impl std::fmt::Debug for LogOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogOptions")
            .field("appliance_id", &self.appliance_id)
            .finish_non_exhaustive()
    }
}

impl LogOptions {
    /// Options for the log of the appliance `appliance_id` (checkpoint
    /// origin `flashgate/<appliance_id>`), with the system clock.
    pub fn new(appliance_id: impl Into<String>) -> Self {
        Self {
            appliance_id: appliance_id.into(),
            clock: Arc::new(system_time_ms),
        }
    }

    /// Replaces the clock (tests). Record times never go backwards whatever
    /// the clock says: a record gets the later of the clock and the previous
    /// record's time.
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

/// Unix time in milliseconds from the system clock (0 before 1970).
#[must_use]
pub fn system_time_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What [`Log::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records in the log.
    pub records: u64,
    /// Bytes of an incomplete last record cut from `audit.log` (a crash
    /// during a write that was never acknowledged).
    pub truncated_bytes: u64,
    /// Signed checkpoints in `checkpoints.log`.
    pub checkpoints: u64,
    /// Bytes of an incomplete last checkpoint cut from `checkpoints.log`.
    pub truncated_checkpoint_bytes: u64,
    /// Leaf hashes rewritten in `audit.leaves` because they were missing or
    /// wrong.
    pub leaves_rewritten: u64,
}

impl std::fmt::Display for OpenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records, {} checkpoints",
            self.records, self.checkpoints
        )?;
        if self.truncated_bytes > 0 {
            write!(
                f,
                "; cut an incomplete last record ({} bytes) left by an interrupted write",
                self.truncated_bytes
            )?;
        }
        if self.truncated_checkpoint_bytes > 0 {
            write!(
                f,
                "; cut an incomplete last checkpoint ({} bytes)",
                self.truncated_checkpoint_bytes
            )?;
        }
        if self.leaves_rewritten > 0 {
            write!(f, "; rewrote {} leaf hashes", self.leaves_rewritten)?;
        }
        Ok(())
    }
}

/// A record that is now durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number (its leaf index).
    pub seq: u64,
    /// Its leaf hash.
    pub leaf_hash: Hash,
}

/// A signed checkpoint stored in the log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// Tree size it covers.
    pub size: u64,
    /// Root hash at that size.
    pub root: Hash,
    /// The tagged `COSE_Sign1` bytes, as stored.
    pub bytes: Vec<u8>,
}

/// The append-only audit log of one appliance.
///
/// `Log` is `Send + Sync`; share it with `Arc`. Only one process may have a
/// log directory open.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    origin: String,
    report: OpenReport,
    shared: Shared,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    writer: Mutex<Writer>,
    durable: AtomicU64,
    syncs: AtomicU64,
    clock: Clock,
    leaves_reader: File,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Queue {
    pending: Vec<(u64, RecordKind)>,
    next_ticket: u64,
    committing: bool,
    done: HashMap<u64, Result<Appended, AuditError>>,
}

struct Writer {
    log: File,
    leaves: File,
    checkpoints: File,
    tree: Tree,
    last_hash: Hash,
    last_time: u64,
    latest: Option<SignedCheckpoint>,
    poisoned: Option<String>,
    paths: [PathBuf; 3],
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the log inconsistent: the
    // writer state is only updated after a successful sync.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open_rw(path: &Path, created: &mut bool) -> Result<File, AuditError> {
    if !path.exists() {
        *created = true;
    }
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| AuditError::io("cannot open", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io("cannot sync directory", dir, e))
}

/// True when every byte of `file` from `offset` on is zero (a region the
/// file system extended but whose data never reached the disk).
fn zeros_from(file: &File, offset: u64, path: &Path) -> Result<bool, AuditError> {
    let mut pos = offset;
    let mut buf = [0u8; 8192];
    loop {
        let n = file
            .read_at(&mut buf, pos)
            .map_err(|e| AuditError::io("cannot read", path, e))?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, reads and checks all of it:
    /// every record decodes, sequence numbers run from 0 without gaps, each
    /// record links to its predecessor, times never go backwards, and the
    /// tree matches every checkpoint in `checkpoints.log`. An incomplete last
    /// record or checkpoint (a write cut by a crash) is cut off and reported
    /// in [`Log::open_report`].
    ///
    /// Fails with [`AuditError::Corrupt`] for damage a crash cannot explain
    /// and with [`AuditError::LogRolledBack`] when the records no longer
    /// reach or match the log's own signed checkpoints.
    pub fn open(dir: &Path, options: LogOptions) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| AuditError::io("cannot create directory", dir, e))?;
        let origin = origin_for(&options.appliance_id);
        let paths = [
            dir.join(LOG_FILE),
            dir.join(LEAVES_FILE),
            dir.join(CHECKPOINTS_FILE),
        ];
        let mut created = false;
        let log = open_rw(&paths[0], &mut created)?;
        let leaves = open_rw(&paths[1], &mut created)?;
        let checkpoints = open_rw(&paths[2], &mut created)?;
        if created {
            sync_dir(dir)?;
        }
        let mut report = OpenReport::default();

        // Checkpoints first, so that the record scan can compare roots.
        let (cps, latest) = scan_checkpoints(&checkpoints, &paths[2], &origin, &mut report)?;

        let scan = scan_log(&log, &leaves, &paths, &cps, &mut report)?;
        let size = scan.tree.size();
        if let Some(&(cp_size, _)) = cps.last() {
            if cp_size > size {
                return Err(AuditError::rolled_back(
                    None,
                    RollbackFinding::CheckpointAheadOfLog {
                        checkpoint_size: cp_size,
                        log_size: size,
                    },
                ));
            }
        }
        report.records = size;
        let leaves_reader =
            File::open(&paths[1]).map_err(|e| AuditError::io("cannot open", &paths[1], e))?;
        let writer = Writer {
            log,
            leaves,
            checkpoints,
            tree: scan.tree,
            last_hash: scan.last_hash,
            last_time: scan.last_time,
            latest,
            poisoned: None,
            paths,
        };
        Ok(Self {
            dir: dir.to_owned(),
            origin,
            report,
            shared: Shared {
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
                writer: Mutex::new(writer),
                durable: AtomicU64::new(size),
                syncs: AtomicU64::new(0),
                clock: options.clock,
                leaves_reader,
            },
        })
    }

    /// What opening found and repaired.
    #[must_use]
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The log directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint origin, `flashgate/<appliance id>`.
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Number of durable records.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// How many batches of records this handle has synced (one
    /// `fdatasync` each); with concurrent appenders it is lower than the
    /// number of records appended.
    #[must_use]
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// The current tree size and root (waits for a commit in progress).
    #[must_use]
    pub fn root(&self) -> (u64, Hash) {
        let w = lock(&self.shared.writer);
        (w.tree.size(), w.tree.root())
    }

    /// The latest signed checkpoint, if any.
    #[must_use]
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        lock(&self.shared.writer).latest.clone()
    }

    /// Records appended since the latest checkpoint.
    #[must_use]
    pub fn unprotected(&self) -> u64 {
        let w = lock(&self.shared.writer);
        w.tree.size() - w.latest.as_ref().map_or(0, |c| c.size)
    }

    /// Appends a record and returns once it is durable (written and
    /// `fdatasync`ed). Thread-safe; concurrent appends share syncs.
    ///
    /// The record gets the next sequence number, the previous record's leaf
    /// hash and the later of the clock and the previous record's time.
    pub fn append(&self, kind: RecordKind) -> Result<Appended, AuditError> {
        self.append_many(vec![kind])
            .pop()
            .unwrap_or(Err(AuditError::Poisoned("no result".to_owned())))
    }

    /// Appends several records, consecutive in the log, and returns once all
    /// are durable; one result per record, in order.
    pub fn append_many(&self, kinds: Vec<RecordKind>) -> Vec<Result<Appended, AuditError>> {
        let sh = &self.shared;
        let mut q = lock(&sh.queue);
        let first = q.next_ticket;
        let n = kinds.len() as u64;
        q.next_ticket += n;
        for (i, kind) in kinds.into_iter().enumerate() {
            q.pending.push((first + i as u64, kind));
        }
        loop {
            if (first..first + n).all(|t| q.done.contains_key(&t)) {
                return (first..first + n)
                    .map(|t| {
                        q.done
                            .remove(&t)
                            .unwrap_or(Err(AuditError::Poisoned("no result".to_owned())))
                    })
                    .collect();
            }
            if !q.committing {
                q.committing = true;
                let batch = std::mem::take(&mut q.pending);
                drop(q);
                let results = self.commit(batch);
                q = lock(&sh.queue);
                q.done.extend(results);
                q.committing = false;
                sh.wake.notify_all();
                continue;
            }
            q = sh
                .wake
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Writes and syncs one batch; returns each ticket's result.
    fn commit(&self, batch: Vec<(u64, RecordKind)>) -> Vec<(u64, Result<Appended, AuditError>)> {
        let sh = &self.shared;
        let mut w = lock(&sh.writer);
        if let Some(p) = &w.poisoned {
            let p = p.clone();
            return batch
                .into_iter()
                .map(|(t, _)| (t, Err(AuditError::Poisoned(p.clone()))))
                .collect();
        }
        let saved = (w.tree.clone(), w.last_hash, w.last_time);
        let now = (sh.clock)();
        let mut frames = Vec::with_capacity(batch.len() * 300);
        let mut leaves = Vec::with_capacity(batch.len() * 32);
        let mut results = Vec::with_capacity(batch.len());
        for (ticket, kind) in batch {
            let time = now.max(w.last_time);
            let seq = w.tree.size();
            let rec = Record {
                seq,
                time,
                prev: w.last_hash,
                kind,
            };
            let bytes = rec.encode();
            if bytes.len() > MAX_RECORD_LEN {
                results.push((ticket, Err(AuditError::RecordTooLarge { len: bytes.len() })));
                continue;
            }
            let leaf = leaf_hash(&bytes);
            if let Err(e) = w.tree.push_leaf_hash(leaf) {
                results.push((ticket, Err(AuditError::Tree(e))));
                continue;
            }
            put_frame(&mut frames, &bytes);
            leaves.extend_from_slice(&leaf);
            w.last_hash = leaf;
            w.last_time = time;
            results.push((
                ticket,
                Ok(Appended {
                    seq,
                    leaf_hash: leaf,
                }),
            ));
        }
        if frames.is_empty() {
            return results;
        }
        let written = w
            .log
            .write_all(&frames)
            .and_then(|()| w.log.sync_data())
            .map_err(|e| (0, e))
            .and_then(|()| w.leaves.write_all(&leaves).map_err(|e| (1, e)));
        match written {
            Ok(()) => {
                sh.durable.store(w.tree.size(), Ordering::Release);
                sh.syncs.fetch_add(1, Ordering::Relaxed);
                results
            }
            Err((file, e)) => {
                let msg = format!("writing {} failed: {e}", w.paths[file].display());
                (w.tree, w.last_hash, w.last_time) = saved;
                w.poisoned = Some(msg.clone());
                results
                    .into_iter()
                    .map(|(t, r)| {
                        (
                            t,
                            r.and_then(|_| {
                                Err(AuditError::Io {
                                    context: msg.clone(),
                                    source: std::io::Error::new(e.kind(), e.to_string()),
                                })
                            }),
                        )
                    })
                    .collect()
            }
        }
    }

    /// Signs and stores a checkpoint of the log as it is now (after any
    /// commit in progress). If the latest checkpoint already covers every
    /// record, returns it instead of signing another of the same size.
    pub fn checkpoint(
        &self,
        signer: &dyn CheckpointSigner,
    ) -> Result<SignedCheckpoint, AuditError> {
        let mut w = lock(&self.shared.writer);
        if let Some(p) = &w.poisoned {
            return Err(AuditError::Poisoned(p.clone()));
        }
        let size = w.tree.size();
        if let Some(latest) = &w.latest {
            if latest.size == size {
                return Ok(latest.clone());
            }
        }
        let root = w.tree.root();
        let cp = Checkpoint::new(self.origin.clone(), size, root)?;
        let bytes = sign_checkpoint(signer, &cp)?;
        let mut frame = Vec::with_capacity(bytes.len() + 4);
        put_frame(&mut frame, &bytes);
        let res = w
            .checkpoints
            .write_all(&frame)
            .and_then(|()| w.checkpoints.sync_data());
        if let Err(e) = res {
            let msg = format!("writing {} failed: {e}", w.paths[2].display());
            w.poisoned = Some(msg.clone());
            return Err(AuditError::Io {
                context: msg,
                source: e,
            });
        }
        let signed = SignedCheckpoint { size, root, bytes };
        w.latest = Some(signed.clone());
        Ok(signed)
    }

    /// The RFC 9162 inclusion proof of record `index` in the tree of the
    /// first `size` records, read from `audit.leaves`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        flashgate_tlog::inclusion_proof(&self.leaf_source(), index, size)
    }

    /// The RFC 9162 consistency proof between the trees of the first `size1`
    /// and `size2` records.
    pub fn consistency_proof(&self, size1: u64, size2: u64) -> Result<Vec<Hash>, AuditError> {
        flashgate_tlog::consistency_proof(&self.leaf_source(), size1, size2)
    }

    fn leaf_source(&self) -> LeafFile<'_> {
        LeafFile {
            file: &self.shared.leaves_reader,
            len: self.size(),
            path: self.dir.join(LEAVES_FILE),
        }
    }
}

/// Leaf hashes read from `audit.leaves` on demand.
struct LeafFile<'a> {
    file: &'a File,
    len: u64,
    path: PathBuf,
}

impl LeafHashes for LeafFile<'_> {
    type Error = AuditError;

    fn len(&self) -> u64 {
        self.len
    }

    fn leaf_hash(&self, index: u64) -> Result<Hash, AuditError> {
        if index >= self.len {
            return Err(flashgate_tlog::Error::IndexOutOfRange {
                index,
                size: self.len,
            }
            .into());
        }
        let mut h = [0u8; 32];
        self.file
            .read_exact_at(&mut h, index * 32)
            .map_err(|e| AuditError::io("cannot read", &self.path, e))?;
        Ok(h)
    }
}

type CheckpointList = Vec<(u64, Hash)>;

fn scan_checkpoints(
    file: &File,
    path: &Path,
    origin: &str,
    report: &mut OpenReport,
) -> Result<(CheckpointList, Option<SignedCheckpoint>), AuditError> {
    let mut frames = FrameReader::new(BufReader::new(file));
    let mut cps: CheckpointList = Vec::new();
    let mut latest = None;
    loop {
        match frames.next_frame() {
            Ok(None) => break,
            Ok(Some((offset, bytes))) => {
                let corrupt = |detail: String| AuditError::Corrupt {
                    file: path.display().to_string(),
                    offset,
                    detail,
                };
                let u = UnverifiedCheckpoint::parse(bytes).map_err(|e| corrupt(e.to_string()))?;
                let cp = u.checkpoint_unverified();
                if cp.origin != origin {
                    return Err(corrupt(format!(
                        "the checkpoint is for log {:?}, this appliance's log is {origin:?}",
                        cp.origin
                    )));
                }
                if cps.last().is_some_and(|&(s, _)| s > cp.size) {
                    return Err(corrupt("checkpoint sizes go down".to_owned()));
                }
                cps.push((cp.size, cp.root));
                latest = Some(SignedCheckpoint {
                    size: cp.size,
                    root: cp.root,
                    bytes: bytes.to_vec(),
                });
            }
            Err(FrameError::Truncated { offset, .. }) => {
                report.truncated_checkpoint_bytes = cut_tail(file, path, offset)?;
                break;
            }
            Err(FrameError::TooLarge { offset, len }) => {
                if zeros_from(file, offset, path)? {
                    report.truncated_checkpoint_bytes = cut_tail(file, path, offset)?;
                    break;
                }
                return Err(AuditError::Corrupt {
                    file: path.display().to_string(),
                    offset,
                    detail: format!("an entry claims {len} bytes"),
                });
            }
            Err(FrameError::Io(e)) => return Err(AuditError::io("cannot read", path, e)),
        }
    }
    report.checkpoints = cps.len() as u64;
    Ok((cps, latest))
}

/// Cuts `file` back to `offset` and returns how many bytes were cut.
fn cut_tail(file: &File, path: &Path, offset: u64) -> Result<u64, AuditError> {
    let len = file
        .metadata()
        .map_err(|e| AuditError::io("cannot stat", path, e))?
        .len();
    cut(file, path, offset)?;
    Ok(len - offset)
}

fn cut(file: &File, path: &Path, len: u64) -> Result<(), AuditError> {
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| AuditError::io("cannot cut the incomplete tail of", path, e))
}

struct Scan {
    tree: Tree,
    last_hash: Hash,
    last_time: u64,
}

fn scan_log(
    log: &File,
    leaves: &File,
    paths: &[PathBuf; 3],
    cps: &CheckpointList,
    report: &mut OpenReport,
) -> Result<Scan, AuditError> {
    let path = &paths[0];
    let mut frames = FrameReader::new(BufReader::with_capacity(1 << 16, log));
    let mut leaf_in = BufReader::with_capacity(1 << 16, leaves);
    let mut leaves_ok = true;
    let mut rewrite_from = 0u64;
    let mut rewrite: Vec<u8> = Vec::new();
    let mut tree = Tree::new();
    let mut last_hash = [0u8; 32];
    let mut last_time = 0u64;
    let mut next_cp = 0usize;
    // Checkpoints of size 0 are checked against the empty tree.
    while let Some(&(0, root)) = cps.get(next_cp) {
        if root != tree.root() {
            return Err(AuditError::rolled_back(
                None,
                RollbackFinding::CheckpointMismatch { checkpoint_size: 0 },
            ));
        }
        next_cp += 1;
    }
    loop {
        let (offset, bytes) = match frames.next_frame() {
            Ok(None) => break,
            Ok(Some(f)) => f,
            Err(FrameError::Truncated { offset, .. }) => {
                report.truncated_bytes = cut_tail(log, path, offset)?;
                break;
            }
            Err(FrameError::TooLarge { offset, len }) => {
                if zeros_from(log, offset, path)? {
                    report.truncated_bytes = cut_tail(log, path, offset)?;
                    break;
                }
                return Err(AuditError::Corrupt {
                    file: path.display().to_string(),
                    offset,
                    detail: format!("an entry claims {len} bytes"),
                });
            }
            Err(FrameError::Io(e)) => return Err(AuditError::io("cannot read", path, e)),
        };
        let corrupt = |detail: String| AuditError::Corrupt {
            file: path.display().to_string(),
            offset,
            detail,
        };
        let rec = match Record::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                if zeros_from(log, offset, path)? {
                    report.truncated_bytes = cut_tail(log, path, offset)?;
                    break;
                }
                return Err(corrupt(format!("not a valid record: {e}")));
            }
        };
        let seq = tree.size();
        if rec.seq != seq {
            return Err(corrupt(format!(
                "record number {seq} says it is number {}",
                rec.seq
            )));
        }
        if rec.prev != last_hash {
            return Err(corrupt(format!(
                "record {seq} does not link to the record before it"
            )));
        }
        if rec.time < last_time {
            return Err(corrupt(format!("record {seq} goes back in time")));
        }
        let leaf = leaf_hash(bytes);
        tree.push_leaf_hash(leaf)?;
        last_hash = leaf;
        last_time = rec.time;
        if leaves_ok {
            let mut stored = [0u8; 32];
            let same = leaf_in.read_exact(&mut stored).is_ok() && stored == leaf;
            if !same {
                leaves_ok = false;
                rewrite_from = seq;
            }
        }
        if !leaves_ok {
            rewrite.extend_from_slice(&leaf);
        }
        while let Some(&(cp_size, cp_root)) = cps.get(next_cp) {
            if cp_size != tree.size() {
                break;
            }
            if cp_root != tree.root() {
                return Err(AuditError::rolled_back(
                    None,
                    RollbackFinding::CheckpointMismatch {
                        checkpoint_size: cp_size,
                    },
                ));
            }
            next_cp += 1;
        }
    }
    // The leaves file must hold exactly one hash per record.
    let leaves_len = leaves
        .metadata()
        .map_err(|e| AuditError::io("cannot stat", &paths[1], e))?
        .len();
    if leaves_ok && leaves_len != tree.size() * 32 {
        leaves_ok = false;
        rewrite_from = tree.size();
    }
    if !leaves_ok {
        let mut w = leaves;
        leaves
            .set_len(rewrite_from * 32)
            .and_then(|()| w.write_all(&rewrite))
            .and_then(|()| leaves.sync_data())
            .map_err(|e| AuditError::io("cannot rewrite", &paths[1], e))?;
        report.leaves_rewritten = rewrite.len() as u64 / 32;
    }
    Ok(Scan {
        tree,
        last_hash,
        last_time,
    })
}

/// Reads the records of a log directory (or any framed record file) one at
/// a time, without checking links (the verifier does that).
#[derive(Debug)]
pub struct RecordFile {
    frames: FrameReader<BufReader<File>>,
}

impl RecordFile {
    /// Opens a framed record file such as `audit.log` or a bundle's
    /// `records.log`.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let f = File::open(path).map_err(|e| AuditError::io("cannot open", path, e))?;
        Ok(Self {
            frames: FrameReader::new(BufReader::with_capacity(1 << 16, f)),
        })
    }

    /// Opens it at `offset`, which must be where a frame starts (one that
    /// [`RecordFile::offset`] gave).
    pub fn open_at(path: &Path, offset: u64) -> Result<Self, AuditError> {
        use std::io::{Seek as _, SeekFrom};
        let mut f = File::open(path).map_err(|e| AuditError::io("cannot open", path, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| AuditError::io("cannot read", path, e))?;
        Ok(Self {
            frames: FrameReader::new_at(BufReader::with_capacity(1 << 16, f), offset),
        })
    }

    /// The next record's offset and bytes; `Ok(None)` at the end. An
    /// incomplete last frame ends the stream.
    pub fn next_bytes(&mut self) -> Result<Option<(u64, &[u8])>, FrameError> {
        self.frames.next_frame()
    }

    /// Where the next record starts: the end of the last whole one read.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.frames.offset()
    }
}
