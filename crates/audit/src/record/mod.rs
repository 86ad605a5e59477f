//! Audit records: one deterministic-CBOR map per event, with small integer
//! keys. The CDDL is in `docs/AUDIT-FORMAT.md`.
//!
//! [`Record::decode`] is strict: it accepts exactly the bytes that
//! [`Record::encode`] produces (shortest heads, keys in increasing order,
//! definite lengths, no unknown keys, no field that does not belong to the
//! record's kind), so the bytes that are hashed into the log and the record
//! that is reported can never disagree.

mod decode;
mod encode;

use std::collections::BTreeMap;

use crate::cbor::CborError;

/// A job identifier (16 bytes, chosen by the OEM when it builds the job).
pub type JobId = [u8; 16];
/// A run identifier (16 random bytes chosen by the appliance at run start).
pub type RunId = [u8; 16];
/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The job id that [`RecordKind::job_id`] gives for records about the whole
/// appliance (`log-reset`): it matches no job.
pub const NO_JOB: JobId = [0; 16];

/// The `units-unused` reason of the values a job had used before a log
/// reset: the new segment reserves and closes them at once, so that its
/// accounting starts where the job's HSM counter stands. What happened to
/// them is in the sealed segment.
pub const REASON_CARRIED_OVER: &str =
    "counted in a sealed log segment before a log reset; see the log-reset record";

/// The largest encoded record accepted, in bytes.
pub const MAX_RECORD_LEN: usize = 64 * 1024;

/// Map keys. Each key has one meaning and one type in every kind of record.
pub(crate) mod key {
    pub const SEQ: u64 = 0;
    pub const TIME: u64 = 1;
    pub const PREV: u64 = 2;
    pub const KIND: u64 = 3;
    pub const JOB_ID: u64 = 4;
    pub const PRODUCT: u64 = 5;
    pub const QUOTA: u64 = 6;
    pub const SECURITY_VERSION: u64 = 7;
    pub const MANIFEST_DIGEST: u64 = 8;
    pub const RUN_ID: u64 = 9;
    pub const OPERATOR: u64 = 10;
    pub const CHANNELS: u64 = 11;
    pub const REASON: u64 = 12;
    pub const FIRST: u64 = 13;
    pub const COUNT: u64 = 14;
    pub const COUNTER: u64 = 15;
    pub const CHANNEL: u64 = 16;
    pub const DEVICE_TYPE: u64 = 17;
    pub const UID: u64 = 18;
    pub const SERIAL: u64 = 19;
    pub const CERT_SHA256: u64 = 20;
    pub const FIRMWARE_SHA256: u64 = 21;
    pub const LOCK_STATE: u64 = 22;
    pub const LOCK_LEVEL: u64 = 23;
    pub const TIMINGS: u64 = 24;
    pub const STAGE: u64 = 25;
    pub const SEGMENT: u64 = 26;
    pub const CHECKPOINT_SIZE: u64 = 27;
    pub const CHECKPOINT_ROOT: u64 = 28;
    pub const CHECKPOINT_SHA256: u64 = 29;
    pub const LOST_RECORDS: u64 = 30;
    pub const LOST_BYTES: u64 = 31;
    pub const HIGH_WATER: u64 = 32;
    pub const REWORK_OF: u64 = 33;
    /// One past the largest key.
    pub const END: u64 = 34;
}

/// The field names, indexed by key, as the CDDL spells them.
const FIELD_NAMES: [&str; key::END as usize] = [
    "seq",
    "time",
    "prev",
    "kind",
    "job_id",
    "product",
    "quota",
    "security_version",
    "manifest_digest",
    "run_id",
    "operator",
    "channels",
    "reason",
    "first",
    "count",
    "counter",
    "channel",
    "device_type",
    "uid",
    "serial",
    "cert_sha256",
    "firmware_sha256",
    "lock_state",
    "lock_level",
    "timings",
    "stage",
    "segment",
    "checkpoint_size",
    "checkpoint_root",
    "checkpoint_sha256",
    "lost_records",
    "lost_bytes",
    "high_water",
    "rework_of",
];

fn field_name(k: u64) -> &'static str {
    usize::try_from(k)
        .ok()
        .and_then(|i| FIELD_NAMES.get(i))
        .copied()
        .unwrap_or("unknown")
}

/// Why bytes are not a valid audit record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes are not deterministic CBOR of the expected shape.
    #[error(transparent)]
    Cbor(#[from] CborError),
    /// The record is larger than [`MAX_RECORD_LEN`].
    #[error("the record is {len} bytes long; at most {MAX_RECORD_LEN} are allowed")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// A map key that no version of this format defines.
    #[error("unknown key {key} in the record")]
    UnknownKey {
        /// The key.
        key: u64,
    },
    /// A known field that does not belong to this kind of record.
    #[error("field {field:?} does not belong in a {kind:?} record")]
    UnexpectedField {
        /// The field.
        field: &'static str,
        /// The record's kind.
        kind: &'static str,
    },
    /// A mandatory field is absent.
    #[error("the {kind:?} record has no {field:?} field")]
    MissingField {
        /// The field.
        field: &'static str,
        /// The record's kind (or "record" for the common fields).
        kind: &'static str,
    },
    /// A field holds a value of the wrong CBOR type.
    #[error("field {field:?} is not a {expected}")]
    WrongFieldType {
        /// The field.
        field: &'static str,
        /// The type it must have.
        expected: &'static str,
    },
    /// A fixed-size byte string has the wrong length.
    #[error("field {field:?} is {found} bytes long, expected {expected}")]
    WrongLength {
        /// The field.
        field: &'static str,
        /// The length it must have.
        expected: usize,
        /// Its length.
        found: usize,
    },
    /// The kind is not one this version knows.
    #[error("unknown record kind {kind:?}")]
    UnknownKind {
        /// The kind text (cut to 64 characters).
        kind: String,
    },
}

/// One audit event with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the log, contiguous from 0 for the whole log.
    pub seq: u64,
    /// Unix time in milliseconds when the record was appended; never lower
    /// than the previous record's.
    pub time: u64,
    /// Leaf hash of the previous record (zeros for `seq` 0).
    pub prev: Digest,
    /// What happened.
    pub kind: RecordKind,
}

/// What a record says happened. New kinds may be added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordKind {
    /// A job package was imported.
    JobImported(JobImported),
    /// A job was removed from the appliance.
    JobRemoved(JobRemoved),
    /// A job's removal began (written before any key is destroyed).
    JobRemovalStarted(JobRemovalStarted),
    /// The previous log was damaged and sealed; this segment starts anew.
    LogReset(LogReset),
    /// An operator started a production run.
    RunStarted(RunStarted),
    /// A production run ended.
    RunStopped(RunStopped),
    /// A block of quota counter values was reserved (the counter was
    /// advanced durably before this record was written).
    UnitsReserved(UnitsReserved),
    /// A unit was provisioned, verified and locked.
    UnitPassed(UnitPassed),
    /// A unit failed; it was never locked.
    UnitFailed(UnitFailed),
    /// A reserved counter value was handed out but the unit's record was
    /// never written (the appliance stopped); the unit may hold secrets.
    UnitAborted(UnitAborted),
    /// Reserved counter values that were never handed out.
    UnitsUnused(UnitsUnused),
}

/// `job-imported`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobImported {
    /// The job.
    pub job_id: JobId,
    /// The product the job builds.
    pub product: String,
    /// How many units the job allows.
    pub quota: u64,
    /// The job's security version (anti-rollback).
    pub security_version: u64,
    /// SHA-256 of the signed manifest as received.
    pub manifest_digest: Digest,
}

/// `job-removed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRemoved {
    /// The job.
    pub job_id: JobId,
}

/// `job-removal-started`: the intent, recorded before the job's keys and
/// directory are destroyed; `job-removed` follows once they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRemovalStarted {
    /// The job.
    pub job_id: JobId,
}

/// `log-reset`: the first record of a new log segment, written when an
/// operator sealed a damaged log (`flashgate audit reset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReset {
    /// Number of the sealed segment (`audit/sealed/<segment>/`), from 1.
    pub segment: u64,
    /// The sealed log's last checkpoint that verified against its records
    /// and the log key, if it had one.
    pub checkpoint: Option<SealedCheckpoint>,
    /// Complete records in the sealed log after that checkpoint (not
    /// covered by any verified signature).
    pub lost_records: u64,
    /// Bytes of the sealed log after the records the checkpoint covers.
    pub lost_bytes: u64,
    /// The HSM high-water mark of the sealed log when it was sealed.
    pub high_water: u64,
    /// Why the operator reset the log.
    pub reason: String,
}

/// The checkpoint a `log-reset` record commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedCheckpoint {
    /// Its tree size.
    pub size: u64,
    /// Its root hash.
    pub root: Digest,
    /// SHA-256 of its `COSE_Sign1` bytes as stored in `checkpoints.log`.
    pub sha256: Digest,
}

/// `run-started`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStarted {
    /// The job.
    pub job_id: JobId,
    /// The run.
    pub run_id: RunId,
    /// Who started it.
    pub operator: String,
    /// How many channels it drives.
    pub channels: u32,
}

/// `run-stopped`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStopped {
    /// The job.
    pub job_id: JobId,
    /// The run.
    pub run_id: RunId,
    /// Why it stopped.
    pub reason: String,
}

/// `units-reserved`: counter values `first .. first + count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitsReserved {
    /// The job.
    pub job_id: JobId,
    /// First counter value of the block.
    pub first: u64,
    /// Number of values.
    pub count: u64,
}

/// `unit-passed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitPassed {
    /// The job.
    pub job_id: JobId,
    /// The run the unit belongs to.
    pub run_id: RunId,
    /// The quota counter value the unit used.
    pub counter: u64,
    /// The fixture channel.
    pub channel: u32,
    /// The device type read from the target.
    pub device_type: String,
    /// The device's unique id as read from the target.
    pub uid: Vec<u8>,
    /// The serial number issued.
    pub serial: String,
    /// SHA-256 of the DER device certificate issued.
    pub cert_sha256: Digest,
    /// SHA-256 of the firmware image as measured on the device.
    pub firmware_sha256: Digest,
    /// The lock bits as read back, raw.
    pub lock_state: Vec<u8>,
    /// The lock level that was set, by name.
    pub lock_level: String,
    /// Time spent per stage, in microseconds.
    pub timings: BTreeMap<String, u64>,
    /// When this UID was attempted before in the job: the counter value of
    /// the most recent earlier attempt, a failed or aborted unit.
    pub rework_of: Option<u64>,
}

/// `unit-failed`: identity fields are present when they were known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFailed {
    /// The job.
    pub job_id: JobId,
    /// The run the unit belongs to.
    pub run_id: RunId,
    /// The quota counter value the unit used.
    pub counter: u64,
    /// The fixture channel.
    pub channel: u32,
    /// The device type, if it was read.
    pub device_type: Option<String>,
    /// The UID, if it was read.
    pub uid: Option<Vec<u8>>,
    /// The serial number, if one was issued.
    pub serial: Option<String>,
    /// SHA-256 of the certificate, if one was issued.
    pub cert_sha256: Option<Digest>,
    /// SHA-256 of the firmware as measured, if it was.
    pub firmware_sha256: Option<Digest>,
    /// The stage that failed.
    pub stage: String,
    /// Why.
    pub reason: String,
    /// Time spent per stage, in microseconds.
    pub timings: BTreeMap<String, u64>,
    /// As in [`UnitPassed::rework_of`].
    pub rework_of: Option<u64>,
}

/// `unit-aborted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitAborted {
    /// The job.
    pub job_id: JobId,
    /// The counter value.
    pub counter: u64,
    /// Why.
    pub reason: String,
}

/// `units-unused`: counter values `first .. first + count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitsUnused {
    /// The job.
    pub job_id: JobId,
    /// First counter value.
    pub first: u64,
    /// Number of values.
    pub count: u64,
    /// Why (run ended, or recovery after a crash).
    pub reason: String,
}

impl RecordKind {
    /// The kind's name as stored in the record.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::JobImported(_) => "job-imported",
            Self::JobRemoved(_) => "job-removed",
            Self::JobRemovalStarted(_) => "job-removal-started",
            Self::LogReset(_) => "log-reset",
            Self::RunStarted(_) => "run-started",
            Self::RunStopped(_) => "run-stopped",
            Self::UnitsReserved(_) => "units-reserved",
            Self::UnitPassed(_) => "unit-passed",
            Self::UnitFailed(_) => "unit-failed",
            Self::UnitAborted(_) => "unit-aborted",
            Self::UnitsUnused(_) => "units-unused",
        }
    }

    /// The device certificate the record says was issued, as its counter
    /// value and the certificate's SHA-256; `None` for a record that issues
    /// none. Decided here, beside the kinds, so that a new kind that issues
    /// one is not missed by the appliance's certificate bookkeeping.
    #[must_use]
    pub fn issued_certificate(&self) -> Option<(u64, &Digest)> {
        match self {
            Self::UnitPassed(r) => Some((r.counter, &r.cert_sha256)),
            Self::UnitFailed(r) => r.cert_sha256.as_ref().map(|h| (r.counter, h)),
            Self::JobImported(_)
            | Self::JobRemoved(_)
            | Self::JobRemovalStarted(_)
            | Self::LogReset(_)
            | Self::RunStarted(_)
            | Self::RunStopped(_)
            | Self::UnitsReserved(_)
            | Self::UnitAborted(_)
            | Self::UnitsUnused(_) => None,
        }
    }

    /// The job the record is about ([`NO_JOB`] for `log-reset`).
    #[must_use]
    pub fn job_id(&self) -> &JobId {
        match self {
            Self::JobImported(r) => &r.job_id,
            Self::JobRemoved(r) => &r.job_id,
            Self::JobRemovalStarted(r) => &r.job_id,
            Self::LogReset(_) => &NO_JOB,
            Self::RunStarted(r) => &r.job_id,
            Self::RunStopped(r) => &r.job_id,
            Self::UnitsReserved(r) => &r.job_id,
            Self::UnitPassed(r) => &r.job_id,
            Self::UnitFailed(r) => &r.job_id,
            Self::UnitAborted(r) => &r.job_id,
            Self::UnitsUnused(r) => &r.job_id,
        }
    }
}
