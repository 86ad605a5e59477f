//! The crate's error type.

use std::fmt;
use std::io;
use std::path::Path;

use crate::checkpoint::CheckpointError;
use crate::record::{JobId, MAX_RECORD_LEN};

/// Everything that can stop an audit operation.
///
/// Anomalies found while verifying a bundle are not errors: they are listed
/// in the verifier's [`crate::Report`]. An `AuditError` from the verifier
/// means the bundle could not be read at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and to which file.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A log file is damaged in a way a crash cannot explain.
    #[error("{file} is damaged at byte {offset}: {detail}")]
    Corrupt {
        /// The file.
        file: String,
        /// Where.
        offset: u64,
        /// What was found.
        detail: String,
    },
    /// The record to append encodes to more than the maximum size.
    #[error("the record encodes to {len} bytes; at most {MAX_RECORD_LEN} are allowed")]
    RecordTooLarge {
        /// Its encoded length.
        len: usize,
    },
    /// An earlier write or sync failed; the log refuses further writes until
    /// it is reopened (which cuts any partial write back).
    #[error("the audit log refuses writes after an earlier failure ({0}); reopen it")]
    Poisoned(String),
    /// A signed checkpoint could not be made or is invalid.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A Merkle tree operation failed.
    #[error("Merkle tree: {0}")]
    Tree(#[from] flashgate_tlog::Error),
    /// The job's quota is used up.
    #[error("job {job_id} allows {quota} units and {used} have been used")]
    QuotaExhausted {
        /// The job, hex.
        job_id: String,
        /// Its quota.
        quota: u64,
        /// Counter values already reserved.
        used: u64,
    },
    /// The quota counter store failed.
    #[error("the quota counter for {id} failed: {detail}")]
    Counter {
        /// The counter id, hex.
        id: String,
        /// The store's message.
        detail: String,
    },
    /// The audit log and the counter store disagree in a way only a deleted,
    /// truncated, replaced or restored log (or counter) explains. The
    /// appliance must not run the job.
    #[error("refusing to run job {job}: {finding}")]
    LogRolledBack {
        /// The job, hex, or "(all jobs)".
        job: String,
        /// What was found.
        finding: RollbackFinding,
    },
    /// `reserve` was called before `recover` for the job in this process.
    #[error(
        "job {job_id} has not been recovered since the log was opened; call Ledger::recover first"
    )]
    NotRecovered {
        /// The job, hex.
        job_id: String,
    },
    /// A bundle cannot be written or read.
    #[error("audit bundle: {0}")]
    Bundle(String),
    /// Something asked for is not there.
    #[error("{0}")]
    NotFound(String),
    /// An inclusion proof does not hold.
    #[error("the inclusion proof does not hold: {0}")]
    Proof(String),
}

impl AuditError {
    pub(crate) fn io(context: impl fmt::Display, path: &Path, source: io::Error) -> Self {
        Self::Io {
            context: format!("{context} {}", path.display()),
            source,
        }
    }

    pub(crate) fn rolled_back(job: Option<&JobId>, finding: RollbackFinding) -> Self {
        Self::LogRolledBack {
            job: job.map_or_else(|| "(all jobs)".to_owned(), hex::encode),
            finding,
        }
    }
}

/// What disagreed between the log, its checkpoints and the counter store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollbackFinding {
    /// The counter is above zero but the log has no record of the job.
    LogMissing {
        /// The counter value.
        counter: u64,
        /// Records in the log.
        log_size: u64,
    },
    /// The log is shorter than a size the counter store recorded.
    LogBelowHighWater {
        /// Records in the log.
        log_size: u64,
        /// The high-water mark.
        high_water: u64,
    },
    /// The log reserves more counter values than the counter shows.
    CounterBehindLog {
        /// The counter value.
        counter: u64,
        /// Values reserved in the log.
        logged: u64,
    },
    /// The log's own checkpoints cover more records than it holds.
    CheckpointAheadOfLog {
        /// The checkpoint's size.
        checkpoint_size: u64,
        /// Records in the log.
        log_size: u64,
    },
    /// The log's root at a checkpoint's size is not the checkpoint's root.
    CheckpointMismatch {
        /// The checkpoint's size.
        checkpoint_size: u64,
    },
    /// The job's reservations in the log do not follow one another.
    ReservationGap {
        /// Sequence number of the record.
        seq: u64,
        /// The first value the record should reserve.
        expected_first: u64,
        /// The first value it reserves.
        found_first: u64,
    },
}

impl fmt::Display for RollbackFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LogMissing { counter, log_size } => write!(
                f,
                "the quota counter shows {counter} units used, but the audit log ({log_size} records) \
                 holds no record of this job: the log was deleted or replaced"
            ),
            Self::LogBelowHighWater {
                log_size,
                high_water,
            } => write!(
                f,
                "the audit log holds {log_size} records, but the counter store proves it held at least \
                 {high_water}: the log was truncated or an older copy was restored"
            ),
            Self::CounterBehindLog { counter, logged } => write!(
                f,
                "the audit log reserves {logged} units, but the quota counter shows only {counter}: \
                 the counter was reset or the log comes from another appliance or token"
            ),
            Self::CheckpointAheadOfLog {
                checkpoint_size,
                log_size,
            } => write!(
                f,
                "a signed checkpoint covers {checkpoint_size} records, but the audit log holds only \
                 {log_size}: the log was truncated"
            ),
            Self::CheckpointMismatch { checkpoint_size } => write!(
                f,
                "the first {checkpoint_size} records of the audit log do not match the signed \
                 checkpoint for that size: records were altered or the log was replaced"
            ),
            Self::ReservationGap {
                seq,
                expected_first,
                found_first,
            } => write!(
                f,
                "record {seq} reserves units from {found_first}, but the previous reservation ended \
                 at {expected_first}: reservations were removed or altered"
            ),
        }
    }
}
