//! The offline verifier: pure, streaming, flat in memory.
//!
//! It reads the signed checkpoints (small) first, then streams the records
//! once: each record is hashed into the Merkle tree and checked, then
//! dropped. What it keeps grows only with the job's units (sets of UIDs,
//! serials and certificate hashes, 16 bytes each, and intervals of counter
//! values), never with the records themselves.
//!
//! Problems with the log are [`Anomaly`]s in the [`Report`]; only a bundle
//! that cannot be read at all is an [`AuditError`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{BufReader, Read};
use std::path::Path;

use flashgate_tlog::{leaf_hash, Hash, Tree};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::bundle::{self, BundleIndex};
use crate::checkpoint::{CheckpointError, UnverifiedCheckpoint};
use crate::error::AuditError;
use crate::frame::{FrameError, FrameReader};
use crate::intervals::Intervals;
use crate::record::{JobId, Record, RecordKind, RunId};

/// At most this many anomalies are listed; the rest are only counted.
pub const MAX_LISTED_ANOMALIES: usize = 10_000;

/// What the OEM's signed manifest says about the job (the caller extracts
/// it after verifying the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFacts {
    /// The job.
    #[serde(with = "hex_array")]
    pub job_id: JobId,
    /// Units the job allows.
    pub quota: u64,
    /// Device types the job may program.
    pub device_types: Vec<String>,
    /// The product.
    pub product: String,
}

/// Everything the verifier trusts: the pinned log key, the job facts and,
/// optionally, a signed checkpoint the OEM kept from an earlier bundle.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The appliance's log public key (uncompressed SEC1), taken from its
    /// verified enrollment record.
    pub log_key: [u8; 65],
    /// The job.
    pub facts: JobFacts,
    /// A signed checkpoint from an earlier export, as stored.
    pub previous_checkpoint: Option<Vec<u8>>,
}

/// What kind of problem an [`Anomaly`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AnomalyKind {
    /// A record does not decode (edited, or not a record).
    MalformedRecord,
    /// `records.log` ends inside a record, or a frame claims a huge length.
    TruncatedRecords,
    /// A sequence number was skipped (records deleted).
    SequenceGap,
    /// A sequence number is not above the previous one (duplicated or
    /// reordered records).
    SequenceRepeated,
    /// A record's `prev` is not the previous record's leaf hash.
    BrokenChain,
    /// A record's time is before the previous record's.
    TimeWentBackwards,
    /// A checkpoint is not a well-formed signed checkpoint.
    MalformedCheckpoint,
    /// A checkpoint is signed by another key than the pinned one.
    CheckpointWrongKey,
    /// A checkpoint's signature does not verify.
    CheckpointBadSignature,
    /// A checkpoint names another log.
    CheckpointOrigin,
    /// A checkpoint's size is below the one before it.
    CheckpointSizeDecreased,
    /// Two checkpoints for the same size.
    CheckpointRepeated,
    /// The recomputed root at a checkpoint's size is not its root.
    CheckpointRootMismatch,
    /// A checkpoint covers more records than the bundle holds (records
    /// removed after it was signed).
    CheckpointBeyondLog,
    /// `checkpoints.log` ends inside an entry.
    TruncatedCheckpoints,
    /// Records after the last valid checkpoint: not protected by any
    /// signature.
    UnprotectedRecords,
    /// The previous checkpoint given does not verify.
    PreviousCheckpointInvalid,
    /// The log does not extend the previous checkpoint (fork or rollback).
    PreviousCheckpointMismatch,
    /// The log is shorter than the previous checkpoint (rollback).
    PreviousCheckpointBeyondLog,
    /// No `job-imported` record for the job.
    JobNotImported,
    /// The `job-imported` record disagrees with the manifest.
    JobFactsMismatch,
    /// More counter values reserved than the quota allows.
    QuotaExceeded,
    /// A reservation does not start where the previous one ended.
    ReservationNotContiguous,
    /// A unit record uses a counter value that was never reserved.
    CounterNotReserved,
    /// A counter value closed by two records.
    CounterReused,
    /// Reserved counter values that no record closes.
    CountersUnaccounted,
    /// Two passed units with the same UID.
    DuplicateUid,
    /// A serial number issued twice.
    DuplicateSerial,
    /// A certificate issued twice.
    DuplicateCertificate,
    /// A device type the job does not allow.
    DeviceTypeNotAllowed,
    /// A passed unit's certificate is not in the bundle.
    CertificateMissing,
    /// A certificate in the bundle that no record mentions.
    CertificateNotInLog,
    /// A certificate file whose name is not the SHA-256 of its content.
    CertificateMisnamed,
    /// A unit record names a run that was never started.
    UnknownRun,
    /// A record for the job after it was removed.
    RecordAfterJobRemoved,
    /// `bundle.json` disagrees with the files.
    BundleIndexMismatch,
}

impl AnomalyKind {
    /// The kebab-case name used in JSON and text.
    #[must_use]
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One problem found, with the record it concerns when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The record's position in the log (its sequence number).
    pub seq: Option<u64>,
    /// What kind of problem.
    pub kind: AnomalyKind,
    /// A sentence saying what was found.
    pub detail: String,
}

/// Units by result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitCounts {
    /// Passed: provisioned, verified, locked.
    pub passed: u64,
    /// Failed at some stage.
    pub failed: u64,
    /// Handed out, no record (crash).
    pub aborted: u64,
    /// Reserved, never handed out.
    pub unused: u64,
}

/// Quota use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUse {
    /// Units the job allows.
    pub quota: u64,
    /// Counter values reserved (every value counts, used or not).
    pub used: u64,
    /// Values left.
    pub left: u64,
}

/// Per-channel or per-operator unit counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultCounts {
    /// Passed units.
    pub passed: u64,
    /// Failed units.
    pub failed: u64,
}

/// The verifier's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The job, hex.
    pub job_id: String,
    /// The product, from the job facts.
    pub product: String,
    /// Records in the bundle (all jobs).
    pub records: u64,
    /// Records about this job.
    pub job_records: u64,
    /// Valid checkpoints.
    pub checkpoints: u64,
    /// Size of the last valid checkpoint.
    pub last_checkpoint_size: Option<u64>,
    /// Records after the last valid checkpoint.
    pub unprotected_records: u64,
    /// Units by result.
    pub units: UnitCounts,
    /// Failed units by failing stage.
    pub failures_by_stage: BTreeMap<String, u64>,
    /// Quota use.
    pub quota: QuotaUse,
    /// Units by channel.
    pub channels: BTreeMap<u32, ResultCounts>,
    /// Units by the operator who started their run.
    pub operators: BTreeMap<String, ResultCounts>,
    /// Time of the job's first record (Unix ms).
    pub first_time: Option<u64>,
    /// Time of the job's last record (Unix ms).
    pub last_time: Option<u64>,
    /// Problems found (at most [`MAX_LISTED_ANOMALIES`]).
    pub anomalies: Vec<Anomaly>,
    /// Number of problems of each kind, including those not listed.
    pub anomaly_counts: BTreeMap<AnomalyKind, u64>,
}

impl Report {
    /// True when nothing is wrong.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.anomaly_counts.is_empty()
    }

    /// True when at least one anomaly of `kind` was found.
    #[must_use]
    pub fn has(&self, kind: AnomalyKind) -> bool {
        self.anomaly_counts.contains_key(&kind)
    }

    /// The report as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    fn add(&mut self, seq: Option<u64>, kind: AnomalyKind, detail: String) {
        *self.anomaly_counts.entry(kind).or_insert(0) += 1;
        if self.anomalies.len() < MAX_LISTED_ANOMALIES {
            self.anomalies.push(Anomaly { seq, kind, detail });
        }
    }
}

fn fmt_time(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |t| format!("{t} (Unix ms)"))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "job {} ({})", self.job_id, self.product)?;
        writeln!(
            f,
            "  verdict: {}",
            if self.is_clean() {
                "CLEAN".to_owned()
            } else {
                format!("{} ANOMALIES", self.anomaly_counts.values().sum::<u64>())
            }
        )?;
        writeln!(
            f,
            "  log: {} records ({} for this job), {} valid checkpoints, last covers {}, {} unprotected",
            self.records,
            self.job_records,
            self.checkpoints,
            self.last_checkpoint_size
                .map_or_else(|| "nothing".to_owned(), |s| format!("{s} records")),
            self.unprotected_records
        )?;
        writeln!(
            f,
            "  units: {} passed, {} failed, {} aborted, {} unused",
            self.units.passed, self.units.failed, self.units.aborted, self.units.unused
        )?;
        writeln!(
            f,
            "  quota: {} allowed, {} used, {} left",
            self.quota.quota, self.quota.used, self.quota.left
        )?;
        if !self.failures_by_stage.is_empty() {
            writeln!(f, "  failures by stage:")?;
            for (stage, n) in &self.failures_by_stage {
                writeln!(f, "    {stage}: {n}")?;
            }
        }
        if !self.channels.is_empty() {
            writeln!(f, "  by channel:")?;
            for (ch, c) in &self.channels {
                writeln!(f, "    {ch}: {} passed, {} failed", c.passed, c.failed)?;
            }
        }
        if !self.operators.is_empty() {
            writeln!(f, "  by operator:")?;
            for (op, c) in &self.operators {
                writeln!(f, "    {op}: {} passed, {} failed", c.passed, c.failed)?;
            }
        }
        writeln!(
            f,
            "  first record: {}, last record: {}",
            fmt_time(self.first_time),
            fmt_time(self.last_time)
        )?;
        if !self.anomalies.is_empty() {
            writeln!(f, "  anomalies:")?;
            for a in &self.anomalies {
                match a.seq {
                    Some(s) => writeln!(f, "    [{}] record {s}: {}", a.kind, a.detail)?,
                    None => writeln!(f, "    [{}] {}", a.kind, a.detail)?,
                }
            }
            let listed = self.anomalies.len() as u64;
            let total: u64 = self.anomaly_counts.values().sum();
            if total > listed {
                writeln!(f, "    ... and {} more", total - listed)?;
            }
        }
        Ok(())
    }
}

/// Verifies the bundle in `dir` (see [`crate::bundle`]).
///
/// Reads `checkpoints.log`, then streams `records.log`; checks every file in
/// `certs/` and, if present, the hashes listed in `bundle.json`. Returns
/// `Err` only when a file cannot be read at all.
pub fn verify_bundle(dir: &Path, options: &VerifyOptions) -> Result<Report, AuditError> {
    let mut v = Verifier::new(options);
    let index = match std::fs::read(dir.join(bundle::INDEX_FILE)) {
        Ok(b) => match serde_json::from_slice::<BundleIndex>(&b) {
            Ok(i) => Some(i),
            Err(e) => {
                v.report.add(
                    None,
                    AnomalyKind::BundleIndexMismatch,
                    format!("bundle.json is not a valid index: {e}"),
                );
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(AuditError::io(
                "cannot read",
                &dir.join(bundle::INDEX_FILE),
                e,
            ))
        }
    };

    // Certificates: name = SHA-256 of content.
    let mut certs = HashMap::new();
    let certs_dir = dir.join(bundle::CERTS_DIR);
    if certs_dir.exists() {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&certs_dir)
            .map_err(|e| AuditError::io("cannot list", &certs_dir, e))?
        {
            let entry = entry.map_err(|e| AuditError::io("cannot list", &certs_dir, e))?;
            names.push(entry.path());
        }
        names.sort();
        for path in names {
            let der = std::fs::read(&path).map_err(|e| AuditError::io("cannot read", &path, e))?;
            let digest: [u8; 32] = Sha256::digest(&der).into();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name != format!("{}.der", hex::encode(digest)) {
                v.report.add(
                    None,
                    AnomalyKind::CertificateMisnamed,
                    format!(
                        "certs/{name} holds a certificate whose SHA-256 is {}",
                        hex::encode(digest)
                    ),
                );
            }
            certs.insert(digest, None);
        }
    }

    let open = |name: &str| {
        let p = dir.join(name);
        std::fs::File::open(&p).map_err(|e| AuditError::io("cannot open", &p, e))
    };
    let mut cps = HashingReader::new(open(bundle::CHECKPOINTS_FILE)?);
    v.read_checkpoints(&mut cps)
        .map_err(|e| AuditError::io("cannot read", &dir.join(bundle::CHECKPOINTS_FILE), e))?;
    let mut recs = HashingReader::new(open(bundle::RECORDS_FILE)?);
    v.read_records(&mut recs, Some(&mut certs))
        .map_err(|e| AuditError::io("cannot read", &dir.join(bundle::RECORDS_FILE), e))?;

    if let Some(index) = index {
        let mut check = |name: &str, digest: [u8; 32], len: u64| match index.files.get(name) {
            Some(f) if f.sha256 == hex::encode(digest) && f.bytes == len => {}
            Some(_) => v.report.add(
                None,
                AnomalyKind::BundleIndexMismatch,
                format!("{name} does not match the hash or size listed in bundle.json"),
            ),
            None => v.report.add(
                None,
                AnomalyKind::BundleIndexMismatch,
                format!("bundle.json does not list {name}"),
            ),
        };
        let (d, n) = cps.finish();
        check(bundle::CHECKPOINTS_FILE, d, n);
        let (d, n) = recs.finish();
        check(bundle::RECORDS_FILE, d, n);
        for name in [bundle::ENROLLMENT_FILE, bundle::MANIFEST_FILE] {
            if let Ok(b) = std::fs::read(dir.join(name)) {
                check(name, Sha256::digest(&b).into(), b.len() as u64);
            }
        }
        if hex::encode(options.facts.job_id) != index.job_id {
            v.report.add(
                None,
                AnomalyKind::BundleIndexMismatch,
                format!(
                    "bundle.json is for job {}, not {}",
                    index.job_id,
                    hex::encode(options.facts.job_id)
                ),
            );
        }
    }
    Ok(v.finish(Some(&certs)))
}

/// Verifies a bundle given as streams: `records` (the `records.log` bytes),
/// `checkpoints` (the `checkpoints.log` bytes) and, if certificates are to
/// be checked, the SHA-256 of every certificate in the bundle.
///
/// Returns `Err` only when a reader fails.
pub fn verify_parts<R1: Read, R2: Read>(
    records: R1,
    checkpoints: R2,
    certificates: Option<&[[u8; 32]]>,
    options: &VerifyOptions,
) -> Result<Report, AuditError> {
    let io = |e| AuditError::Io {
        context: "cannot read the bundle".to_owned(),
        source: e,
    };
    let mut v = Verifier::new(options);
    let mut certs: Option<HashMap<[u8; 32], Option<u64>>> =
        certificates.map(|c| c.iter().map(|d| (*d, None)).collect());
    v.read_checkpoints(checkpoints).map_err(io)?;
    v.read_records(records, certs.as_mut()).map_err(io)?;
    Ok(v.finish(certs.as_ref()))
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    /// Drains the rest and returns (SHA-256, length).
    fn finish(&mut self) -> ([u8; 32], u64) {
        let mut sink = [0u8; 8192];
        while let Ok(n) = self.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        (std::mem::take(&mut self.hash).finalize().into(), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// 16 bytes standing for a UID or serial, so that the sets stay small
/// whatever the values' length: values of up to 15 bytes are kept as they
/// are (with their length in the last byte), longer ones as a SHA-256
/// prefix with the top bit of the last byte set. Distinct short values never
/// share a key.
fn compact_key(bytes: &[u8]) -> u128 {
    let mut k = [0u8; 16];
    if bytes.len() < 16 {
        k[..bytes.len()].copy_from_slice(bytes);
        k[15] = bytes.len() as u8;
    } else {
        let d = Sha256::digest(bytes);
        k.copy_from_slice(&d[..16]);
        k[15] |= 0x80;
    }
    u128::from_be_bytes(k)
}

fn digest_key(d: &[u8; 32]) -> u128 {
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    u128::from_be_bytes(k)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Bundle,
    Previous,
}

struct Target {
    size: u64,
    root: Hash,
    source: Source,
}

struct Verifier<'a> {
    options: &'a VerifyOptions,
    report: Report,
    targets: Vec<Target>,
    last_cp_size: Option<u64>,
    previous_size: Option<u64>,
    // Job state.
    imported: bool,
    removed_at: Option<u64>,
    runs: HashMap<RunId, String>,
    reserved: Intervals,
    reserved_end: u64,
    closed: Intervals,
    uids: HashMap<u128, u64>,
    serials: HashMap<u128, u64>,
    cert_seen: HashMap<u128, u64>,
}

impl<'a> Verifier<'a> {
    fn new(options: &'a VerifyOptions) -> Self {
        let facts = &options.facts;
        Self {
            options,
            report: Report {
                job_id: hex::encode(facts.job_id),
                product: facts.product.clone(),
                quota: QuotaUse {
                    quota: facts.quota,
                    used: 0,
                    left: facts.quota,
                },
                ..Report::default()
            },
            targets: Vec::new(),
            last_cp_size: None,
            previous_size: None,
            imported: false,
            removed_at: None,
            runs: HashMap::new(),
            reserved: Intervals::default(),
            reserved_end: 0,
            closed: Intervals::default(),
            uids: HashMap::new(),
            serials: HashMap::new(),
            cert_seen: HashMap::new(),
        }
    }

    fn read_checkpoints<R: Read>(&mut self, reader: R) -> std::io::Result<()> {
        let key = self.options.log_key;
        let mut frames = FrameReader::new(BufReader::new(reader));
        let mut origin: Option<String> = None;
        let mut last: Option<(u64, Hash)> = None;
        let mut index = 0u64;
        loop {
            let (offset, bytes) = match frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(FrameError::Io(e)) => return Err(e),
                Err(e) => {
                    self.report
                        .add(None, AnomalyKind::TruncatedCheckpoints, e.to_string());
                    break;
                }
            };
            index += 1;
            let what = format!("checkpoint {index} (byte {offset} of checkpoints.log)");
            let verified = match UnverifiedCheckpoint::parse(bytes) {
                Err(e) => {
                    self.report.add(
                        None,
                        AnomalyKind::MalformedCheckpoint,
                        format!("{what}: {e}"),
                    );
                    continue;
                }
                Ok(u) => match u.verify(&key) {
                    Ok(v) => v,
                    Err(e @ CheckpointError::WrongKey { .. }) => {
                        self.report.add(
                            None,
                            AnomalyKind::CheckpointWrongKey,
                            format!("{what}: {e}"),
                        );
                        continue;
                    }
                    Err(e) => {
                        self.report.add(
                            None,
                            AnomalyKind::CheckpointBadSignature,
                            format!("{what}: {e}"),
                        );
                        continue;
                    }
                },
            };
            let cp = verified.checkpoint();
            match &origin {
                None if !cp.origin.starts_with("flashgate/") => self.report.add(
                    None,
                    AnomalyKind::CheckpointOrigin,
                    format!(
                        "{what} is for log {:?}, not a flashgate appliance",
                        cp.origin
                    ),
                ),
                Some(o) if *o != cp.origin => self.report.add(
                    None,
                    AnomalyKind::CheckpointOrigin,
                    format!("{what} is for log {:?}, earlier ones for {o:?}", cp.origin),
                ),
                _ => {}
            }
            origin.get_or_insert_with(|| cp.origin.clone());
            if let Some((size, root)) = last {
                if cp.size < size {
                    self.report.add(
                        None,
                        AnomalyKind::CheckpointSizeDecreased,
                        format!(
                            "{what} covers {} records, the one before covered {size}",
                            cp.size
                        ),
                    );
                } else if cp.size == size {
                    let detail = if cp.root == root {
                        format!("{what} repeats the checkpoint for size {size}")
                    } else {
                        format!(
                            "{what} gives a different root for size {size} than the one before (fork)"
                        )
                    };
                    self.report
                        .add(None, AnomalyKind::CheckpointRepeated, detail);
                }
            }
            last = Some((cp.size, cp.root));
            self.last_cp_size = Some(self.last_cp_size.map_or(cp.size, |s| s.max(cp.size)));
            self.report.checkpoints += 1;
            self.targets.push(Target {
                size: cp.size,
                root: cp.root,
                source: Source::Bundle,
            });
        }
        if let Some(prev) = &self.options.previous_checkpoint {
            match UnverifiedCheckpoint::parse(prev).and_then(|u| u.verify(&key)) {
                Ok(v) => {
                    let cp = v.checkpoint();
                    if let Some(o) = &origin {
                        if *o != cp.origin {
                            self.report.add(
                                None,
                                AnomalyKind::PreviousCheckpointMismatch,
                                format!(
                                    "the previous checkpoint is for log {:?}, this bundle for {o:?}",
                                    cp.origin
                                ),
                            );
                        }
                    }
                    self.previous_size = Some(cp.size);
                    self.targets.push(Target {
                        size: cp.size,
                        root: cp.root,
                        source: Source::Previous,
                    });
                }
                Err(e) => self.report.add(
                    None,
                    AnomalyKind::PreviousCheckpointInvalid,
                    format!("the previous checkpoint given does not verify: {e}"),
                ),
            }
        }
        // Stable: bundle checkpoints keep their order within a size.
        self.targets.sort_by_key(|t| t.size);
        Ok(())
    }

    fn check_targets(&mut self, tree: &Tree, next: &mut usize) {
        while let Some(t) = self.targets.get(*next) {
            if t.size != tree.size() {
                break;
            }
            let root = tree.root();
            if t.root != root {
                let (kind, detail) = match t.source {
                    Source::Bundle => (
                        AnomalyKind::CheckpointRootMismatch,
                        format!(
                            "the root of the first {} records is not the signed checkpoint's: records were edited, removed, inserted or reordered",
                            t.size
                        ),
                    ),
                    Source::Previous => (
                        AnomalyKind::PreviousCheckpointMismatch,
                        format!(
                            "the root of the first {} records is not the root of the checkpoint kept from before: the log was forked or rewritten",
                            t.size
                        ),
                    ),
                };
                self.report.add(t.size.checked_sub(1), kind, detail);
            }
            *next += 1;
        }
    }

    fn read_records<R: Read>(
        &mut self,
        reader: R,
        mut certs: Option<&mut HashMap<[u8; 32], Option<u64>>>,
    ) -> std::io::Result<()> {
        // Every passed unit has a certificate in the bundle: size the unit
        // sets once instead of growing them.
        if let Some(c) = certs.as_deref() {
            self.uids.reserve(c.len());
            self.serials.reserve(c.len());
        }
        let mut frames = FrameReader::new(BufReader::with_capacity(1 << 16, reader));
        let mut tree = Tree::new();
        let mut next_target = 0usize;
        let mut expected_seq = 0u64;
        let mut last_leaf = [0u8; 32];
        let mut last_time: Option<u64> = None;
        self.check_targets(&tree, &mut next_target);
        loop {
            let (offset, bytes) = match frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(FrameError::Io(e)) => return Err(e),
                Err(e) => {
                    self.report.add(
                        Some(tree.size()),
                        AnomalyKind::TruncatedRecords,
                        format!("records.log: {e}"),
                    );
                    break;
                }
            };
            let pos = tree.size();
            let leaf = leaf_hash(bytes);
            match Record::decode(bytes) {
                Err(e) => self.report.add(
                    Some(pos),
                    AnomalyKind::MalformedRecord,
                    format!("the record at byte {offset} does not decode: {e}"),
                ),
                Ok(rec) => {
                    if rec.seq != expected_seq {
                        if rec.seq < expected_seq {
                            self.report.add(
                                Some(pos),
                                AnomalyKind::SequenceRepeated,
                                format!(
                                    "record number {} follows number {}: duplicated or reordered",
                                    rec.seq,
                                    expected_seq.wrapping_sub(1)
                                ),
                            );
                        } else {
                            self.report.add(
                                Some(pos),
                                AnomalyKind::SequenceGap,
                                format!(
                                    "record number {} follows number {}: {} records missing",
                                    rec.seq,
                                    expected_seq.wrapping_sub(1),
                                    rec.seq - expected_seq
                                ),
                            );
                        }
                    }
                    if rec.prev != last_leaf {
                        self.report.add(
                            Some(pos),
                            AnomalyKind::BrokenChain,
                            format!(
                                "record {} does not link to the record stored before it",
                                rec.seq
                            ),
                        );
                    }
                    if let Some(t) = last_time {
                        if rec.time < t {
                            self.report.add(
                                Some(pos),
                                AnomalyKind::TimeWentBackwards,
                                format!(
                                    "record {} is dated {} ms before the record before it",
                                    rec.seq,
                                    t - rec.time
                                ),
                            );
                        }
                    }
                    last_time = Some(rec.time);
                    expected_seq = rec.seq.wrapping_add(1);
                    if rec.kind.job_id() == &self.options.facts.job_id {
                        self.job_record(pos, &rec, certs.as_deref_mut());
                    }
                }
            }
            last_leaf = leaf;
            if tree.push_leaf_hash(leaf).is_err() {
                break;
            }
            self.check_targets(&tree, &mut next_target);
        }
        let n = tree.size();
        self.report.records = n;
        for t in &self.targets[next_target..] {
            if t.size > n {
                let (kind, detail) = match t.source {
                    Source::Bundle => (
                        AnomalyKind::CheckpointBeyondLog,
                        format!(
                            "a signed checkpoint covers {} records but the bundle holds {n}: records after {n} were removed",
                            t.size
                        ),
                    ),
                    Source::Previous => (
                        AnomalyKind::PreviousCheckpointBeyondLog,
                        format!(
                            "the checkpoint kept from before covers {} records but the bundle holds {n}: the log was rolled back",
                            t.size
                        ),
                    ),
                };
                self.report.add(None, kind, detail);
            }
        }
        let protected = self.last_cp_size.unwrap_or(0).min(n);
        self.report.last_checkpoint_size = self.last_cp_size;
        self.report.unprotected_records = n - protected;
        if n > protected {
            self.report.add(
                Some(protected),
                AnomalyKind::UnprotectedRecords,
                format!(
                    "records {protected} to {} come after the last valid checkpoint: no signature covers them",
                    n - 1
                ),
            );
        }
        Ok(())
    }

    fn job_record(
        &mut self,
        pos: u64,
        rec: &Record,
        certs: Option<&mut HashMap<[u8; 32], Option<u64>>>,
    ) {
        let facts = &self.options.facts;
        self.report.job_records += 1;
        self.report.first_time.get_or_insert(rec.time);
        self.report.last_time = Some(rec.time);
        if let Some(at) = self.removed_at {
            if !matches!(rec.kind, RecordKind::JobImported(_)) {
                self.report.add(
                    Some(pos),
                    AnomalyKind::RecordAfterJobRemoved,
                    format!(
                        "a {} record after the job was removed at record {at}",
                        rec.kind.name()
                    ),
                );
            }
        }
        let seq = Some(pos);
        match &rec.kind {
            RecordKind::JobImported(r) => {
                self.imported = true;
                self.removed_at = None;
                if r.product != facts.product || r.quota != facts.quota {
                    self.report.add(
                        seq,
                        AnomalyKind::JobFactsMismatch,
                        format!(
                            "the log imported product {:?} with quota {}, the manifest says {:?} with quota {}",
                            r.product, r.quota, facts.product, facts.quota
                        ),
                    );
                }
            }
            RecordKind::JobRemoved(_) => self.removed_at = Some(pos),
            // Not checked yet: the verifier is to learn them.
            RecordKind::JobRemovalStarted(_) | RecordKind::LogReset(_) => {}
            RecordKind::RunStarted(r) => {
                self.runs.insert(r.run_id, r.operator.clone());
            }
            RecordKind::RunStopped(_) => {}
            RecordKind::UnitsReserved(r) => {
                if r.first != self.reserved_end {
                    self.report.add(
                        seq,
                        AnomalyKind::ReservationNotContiguous,
                        format!(
                            "reserves values from {}, but the previous reservation ended at {}",
                            r.first, self.reserved_end
                        ),
                    );
                }
                let end = r.first.saturating_add(r.count);
                let before = self.reserved.total;
                let dup = self.reserved.insert(r.first, end);
                if dup > 0 {
                    self.report.add(
                        seq,
                        AnomalyKind::CounterReused,
                        format!("reserves {dup} counter values that were already reserved"),
                    );
                }
                self.reserved_end = self.reserved_end.max(end);
                if self.reserved.total > facts.quota && before <= facts.quota {
                    self.report.add(
                        seq,
                        AnomalyKind::QuotaExceeded,
                        format!(
                            "job {} allows {} units; this reservation brings the count to {}",
                            hex::encode(facts.job_id),
                            facts.quota,
                            self.reserved.total
                        ),
                    );
                }
            }
            RecordKind::UnitPassed(r) => {
                self.report.units.passed += 1;
                self.close(pos, r.counter, 1, "unit-passed");
                self.by_run(pos, &r.run_id, r.channel, true);
                self.device_type(pos, &r.device_type);
                if let Some(&first) = self.uids.get(&compact_key(&r.uid)) {
                    self.report.add(
                        seq,
                        AnomalyKind::DuplicateUid,
                        format!(
                            "UID {} passed already at record {first}",
                            hex::encode(&r.uid)
                        ),
                    );
                } else {
                    self.uids.insert(compact_key(&r.uid), pos);
                }
                self.serial(pos, &r.serial);
                self.certificate(pos, &r.cert_sha256, true, certs);
            }
            RecordKind::UnitFailed(r) => {
                self.report.units.failed += 1;
                *self
                    .report
                    .failures_by_stage
                    .entry(r.stage.clone())
                    .or_insert(0) += 1;
                self.close(pos, r.counter, 1, "unit-failed");
                self.by_run(pos, &r.run_id, r.channel, false);
                if let Some(d) = &r.device_type {
                    self.device_type(pos, d);
                }
                if let Some(s) = &r.serial {
                    self.serial(pos, s);
                }
                if let Some(c) = &r.cert_sha256 {
                    self.certificate(pos, c, false, certs);
                }
            }
            RecordKind::UnitAborted(r) => {
                self.report.units.aborted += 1;
                self.close(pos, r.counter, 1, "unit-aborted");
            }
            RecordKind::UnitsUnused(r) => {
                self.report.units.unused = self.report.units.unused.saturating_add(r.count);
                self.close(pos, r.first, r.count, "units-unused");
            }
        }
    }

    fn close(&mut self, pos: u64, first: u64, count: u64, what: &str) {
        let end = first.saturating_add(count);
        if !self.reserved.contains(first, end) {
            self.report.add(
                Some(pos),
                AnomalyKind::CounterNotReserved,
                if count == 1 {
                    format!("{what} uses counter value {first}, which was never reserved")
                } else {
                    format!("{what} covers counter values {first}..{end}, not all reserved")
                },
            );
        }
        let dup = self.closed.insert(first, end);
        if dup > 0 {
            self.report.add(
                Some(pos),
                AnomalyKind::CounterReused,
                if count == 1 {
                    format!("{what} uses counter value {first}, which another record already accounts for")
                } else {
                    format!("{what} covers {dup} counter values that other records already account for")
                },
            );
        }
    }

    fn by_run(&mut self, pos: u64, run: &RunId, channel: u32, passed: bool) {
        let bump = |c: &mut ResultCounts| {
            if passed {
                c.passed += 1;
            } else {
                c.failed += 1;
            }
        };
        bump(self.report.channels.entry(channel).or_default());
        match self.runs.get(run) {
            Some(op) => match self.report.operators.get_mut(op) {
                Some(c) => bump(c),
                None => bump(self.report.operators.entry(op.clone()).or_default()),
            },
            None => self.report.add(
                Some(pos),
                AnomalyKind::UnknownRun,
                format!(
                    "the unit belongs to run {}, which was never started",
                    hex::encode(run)
                ),
            ),
        }
    }

    fn device_type(&mut self, pos: u64, device_type: &str) {
        if !self
            .options
            .facts
            .device_types
            .iter()
            .any(|d| d == device_type)
        {
            self.report.add(
                Some(pos),
                AnomalyKind::DeviceTypeNotAllowed,
                format!(
                    "device type {device_type:?} is not one the job allows ({})",
                    self.options.facts.device_types.join(", ")
                ),
            );
        }
    }

    fn serial(&mut self, pos: u64, serial: &str) {
        let k = compact_key(serial.as_bytes());
        if let Some(&first) = self.serials.get(&k) {
            self.report.add(
                Some(pos),
                AnomalyKind::DuplicateSerial,
                format!("serial {serial:?} was issued already at record {first}"),
            );
        } else {
            self.serials.insert(k, pos);
        }
    }

    fn certificate(
        &mut self,
        pos: u64,
        digest: &[u8; 32],
        must_be_in_bundle: bool,
        certs: Option<&mut HashMap<[u8; 32], Option<u64>>>,
    ) {
        let duplicate = |report: &mut Report, first: u64| {
            report.add(
                Some(pos),
                AnomalyKind::DuplicateCertificate,
                format!(
                    "certificate {} was issued already at record {first}",
                    hex::encode(digest)
                ),
            );
        };
        // Certificates in the bundle remember where they were first seen in
        // the bundle's own table; only the others need a set of their own.
        if let Some(certs) = certs {
            if let Some(first) = certs.get_mut(digest) {
                match first {
                    Some(f) => duplicate(&mut self.report, *f),
                    None => *first = Some(pos),
                }
                return;
            }
            if must_be_in_bundle {
                self.report.add(
                    Some(pos),
                    AnomalyKind::CertificateMissing,
                    format!(
                        "the certificate {} of this passed unit is not in the bundle",
                        hex::encode(digest)
                    ),
                );
            }
        }
        let k = digest_key(digest);
        if let Some(&first) = self.cert_seen.get(&k) {
            duplicate(&mut self.report, first);
        } else {
            self.cert_seen.insert(k, pos);
        }
    }

    fn finish(mut self, certs: Option<&HashMap<[u8; 32], Option<u64>>>) -> Report {
        let facts = &self.options.facts;
        if !self.imported {
            self.report.add(
                None,
                AnomalyKind::JobNotImported,
                format!(
                    "the log has no job-imported record for job {}",
                    hex::encode(facts.job_id)
                ),
            );
        }
        let used = self.reserved.total;
        self.report.quota.used = used;
        self.report.quota.left = facts.quota.saturating_sub(used);
        let accounted = self
            .reserved
            .map
            .iter()
            .map(|(&s, &e)| self.closed.overlap(s, e))
            .sum::<u64>();
        let open = used.saturating_sub(accounted);
        if open > 0 {
            let mut first = Vec::new();
            for (&s, &e) in &self.reserved.map {
                self.closed.missing_in(s, e, 10, &mut first);
                if first.len() >= 10 {
                    break;
                }
            }
            let list: Vec<String> = first.iter().map(u64::to_string).collect();
            self.report.add(
                None,
                AnomalyKind::CountersUnaccounted,
                format!(
                    "{open} reserved counter values have no passed, failed, aborted or unused record (first: {})",
                    list.join(", ")
                ),
            );
        }
        if let Some(certs) = certs {
            let mut extra: Vec<&[u8; 32]> = certs
                .iter()
                .filter(|(_, first)| first.is_none())
                .map(|(d, _)| d)
                .collect();
            extra.sort();
            for d in extra {
                self.report.add(
                    None,
                    AnomalyKind::CertificateNotInLog,
                    format!(
                        "certs/{}.der is in the bundle but no record of the job issued it",
                        hex::encode(d)
                    ),
                );
            }
        }
        self.report
    }
}

/// Serde helpers: fixed-size byte arrays as hex strings.
pub(crate) mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom(format!("expected {N} bytes of hex")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn compact_keys_are_distinct_for_short_values() {
        assert_ne!(compact_key(b""), compact_key(b"\0"));
        assert_ne!(compact_key(b"ab"), compact_key(b"ab\0"));
        assert_ne!(compact_key(&[7; 15]), compact_key(&[7; 16]));
        assert_ne!(compact_key(&[1; 16]), compact_key(&[2; 16]));
    }
}
