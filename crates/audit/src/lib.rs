//! flashgate's audit log.
//!
//! - [`record`]: one deterministic-CBOR record per event ([`Record`],
//!   [`RecordKind`]); strict decoding.
//! - [`Log`]: the append-only log directory with group-committed, fsynced
//!   appends, an RFC 9162 Merkle tree over the records and signed
//!   checkpoints ([`checkpoint`]).
//! - [`Ledger`]: the quota counter ([`CounterStore`]) and the log kept in
//!   agreement, with crash recovery and rollback refusal.
//! - [`bundle`]: the export bundle handed to the OEM.
//! - [`verify`]: the offline, streaming bundle verifier and its [`Report`].
//! - [`prove`]: self-contained inclusion proofs for one unit's record.
//!
//! Byte formats are specified in `docs/AUDIT-FORMAT.md`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
/// The deterministic CBOR the records are written in.
use flashgate_dcbor as cbor;
pub mod checkpoint;
pub mod cosigned;
mod error;
pub mod frame;
mod intervals;
mod log;
pub mod prove;
mod quota;
pub mod record;
pub mod verify;

pub use bundle::{export, Bundle, BundleExtras, BundleIndex, CertificateList, IndexSummary};
pub use cbor::CborError;
pub use checkpoint::{
    key_id, sign_checkpoint, verify_checkpoint, CheckpointError, CheckpointSigner, Es256Signer,
    SoftwareSigner, UnverifiedCheckpoint, VerifiedCheckpoint, CHECKPOINT_CONTENT_TYPE,
};
pub use error::{AuditError, RollbackFinding};
pub use log::{
    system_time_ms, Appended, Clock, Log, LogOptions, OpenReport, RecordFile, SignedCheckpoint,
    CHECKPOINTS_FILE, LEAVES_FILE, LOG_FILE,
};
pub use prove::{prove_uid, verify_proof, InclusionProof, ProvenRecord};
pub use quota::{
    CounterStore, FileCounterStore, Ledger, MemoryCounterStore, Recovery, LOG_HIGH_WATER_ID,
    REASON_CRASH_ABORTED, REASON_CRASH_GAP, REASON_CRASH_UNUSED,
};
pub use record::{Record, RecordError, RecordKind};
pub use verify::{
    kept_checkpoint, verify_bundle, verify_parts, Anomaly, AnomalyKind, CertificateFile,
    CertificateStart, JobFacts, QuotaUse, Report, ResultCounts, SerialScheme, UnitCounts, Verdict,
    VerifyOptions, VerifyOutput,
};
