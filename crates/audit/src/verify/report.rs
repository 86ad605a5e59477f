//! What the verifier found: [`Report`], its [`Anomaly`]s, and the
//! documented JSON output ([`VerifyOutput`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// At most this many anomalies are listed; the rest are only counted.
pub const MAX_LISTED_ANOMALIES: usize = 10_000;

/// What kind of problem an [`Anomaly`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AnomalyKind {
    /// A record does not decode (edited, not a record, or over 65,536 bytes).
    MalformedRecord,
    /// `records.log` ends inside a record.
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
    /// A checkpoint names another log than the appliance's.
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
    /// A UID attempted again without a valid `rework_of`.
    ReworkInvalid,
    /// A serial number issued twice.
    DuplicateSerial,
    /// A certificate issued twice.
    DuplicateCertificate,
    /// A device type the job does not allow.
    DeviceTypeNotAllowed,
    /// A serial that is not the one the job's serial scheme gives for the
    /// unit's counter value.
    SerialMismatch,
    /// A passed unit whose lock level read back is below the policy's.
    LockBelowPolicy,
    /// A passed unit whose measured firmware is not the job's.
    FirmwareMismatch,
    /// A unit record dated outside the job window.
    UnitOutsideWindow,
    /// A passed unit's certificate is not in the bundle.
    CertificateMissing,
    /// A certificate in the bundle that no record mentions.
    CertificateNotInLog,
    /// A certificate file whose name is not the SHA-256 of its content.
    CertificateMisnamed,
    /// A certificate file that a record names is not an X.509 certificate.
    CertificateMalformed,
    /// A certificate whose notBefore is outside the job window.
    CertificateOutsideWindow,
    /// A unit record names a run that was never started.
    UnknownRun,
    /// A record for the job after it was removed.
    RecordAfterJobRemoved,
    /// `bundle.json` disagrees with the files.
    BundleIndexMismatch,
    /// A `job-removed` record without the `job-removal-started` intent
    /// before it (removal is write-ahead).
    RemovalWithoutIntent,
    /// A `job-removal-started` that no `job-removed` completes.
    RemovalIncomplete,
    /// A `log-reset` record anywhere but at seq 0 of its segment.
    LogResetMisplaced,
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

    /// True when the anomaly means the records cannot be trusted as the
    /// appliance's signed log (edited, reordered, forked, wrongly signed or
    /// not the bundle's own), so nothing in them may be merged into a fleet
    /// store. False for findings about what an authentic log records (a
    /// duplicate UID, a unit outside the window): those are facts to keep.
    /// Decided here, beside the variants, so that a new kind must be placed.
    #[must_use]
    pub fn breaks_log_integrity(self) -> bool {
        match self {
            Self::MalformedRecord
            | Self::TruncatedRecords
            | Self::SequenceGap
            | Self::SequenceRepeated
            | Self::BrokenChain
            | Self::TimeWentBackwards
            | Self::MalformedCheckpoint
            | Self::CheckpointWrongKey
            | Self::CheckpointBadSignature
            | Self::CheckpointOrigin
            | Self::CheckpointSizeDecreased
            | Self::CheckpointRepeated
            | Self::CheckpointRootMismatch
            | Self::CheckpointBeyondLog
            | Self::TruncatedCheckpoints
            | Self::PreviousCheckpointInvalid
            | Self::PreviousCheckpointMismatch
            | Self::PreviousCheckpointBeyondLog
            | Self::BundleIndexMismatch
            | Self::LogResetMisplaced => true,
            Self::UnprotectedRecords
            | Self::CertificateMisnamed
            | Self::JobNotImported
            | Self::JobFactsMismatch
            | Self::QuotaExceeded
            | Self::ReservationNotContiguous
            | Self::CounterNotReserved
            | Self::CounterReused
            | Self::CountersUnaccounted
            | Self::DuplicateUid
            | Self::ReworkInvalid
            | Self::DuplicateSerial
            | Self::DuplicateCertificate
            | Self::DeviceTypeNotAllowed
            | Self::SerialMismatch
            | Self::LockBelowPolicy
            | Self::FirmwareMismatch
            | Self::UnitOutsideWindow
            | Self::CertificateMissing
            | Self::CertificateNotInLog
            | Self::CertificateMalformed
            | Self::CertificateOutsideWindow
            | Self::UnknownRun
            | Self::RecordAfterJobRemoved
            | Self::RemovalWithoutIntent
            | Self::RemovalIncomplete => false,
        }
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
    /// Counter values a log reset carried over from a sealed segment
    /// (closed there, not here); not counted in `unused`.
    #[serde(default)]
    pub carried_over: u64,
}

/// What a `log-reset` record at the start of the log says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogResetSummary {
    /// The sealed segment it follows (`sealed/<segment>/` in the bundle).
    pub segment: u64,
    /// Size of the sealed log's last verified checkpoint, if it had one.
    pub checkpoint_size: Option<u64>,
    /// Complete records after that checkpoint, lost to this log.
    pub lost_records: u64,
    /// Bytes after the records the checkpoint covers.
    pub lost_bytes: u64,
    /// The operator's reason.
    pub reason: String,
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
    /// Passed or failed units that validly rework a UID whose earlier
    /// attempt failed or was aborted (each is also counted in `units`).
    pub reworks: u64,
    /// Failed units by failing stage.
    pub failures_by_stage: BTreeMap<String, u64>,
    /// Quota use.
    pub quota: QuotaUse,
    /// Units by channel.
    pub channels: BTreeMap<u32, ResultCounts>,
    /// Units by the operator who started their run.
    pub operators: BTreeMap<String, ResultCounts>,
    /// The log reset this log starts with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_reset: Option<LogResetSummary>,
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

    /// How many anomalies were found, listed or not.
    #[must_use]
    pub fn anomaly_total(&self) -> u64 {
        self.anomaly_counts.values().sum()
    }

    /// [`Verdict::Clean`] or [`Verdict::Anomalies`].
    #[must_use]
    pub fn verdict(&self) -> Verdict {
        if self.is_clean() {
            Verdict::Clean
        } else {
            Verdict::Anomalies
        }
    }

    /// The report as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub(crate) fn add(&mut self, seq: Option<u64>, kind: AnomalyKind, detail: String) {
        *self.anomaly_counts.entry(kind).or_insert(0) += 1;
        if self.anomalies.len() < MAX_LISTED_ANOMALIES {
            self.anomalies.push(Anomaly { seq, kind, detail });
        }
    }
}

/// The outcome of `flashgate audit verify`, as its exit code says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No anomaly (exit 0).
    Clean,
    /// At least one anomaly (exit 1).
    Anomalies,
    /// The bundle could not be verified at all (exit 2).
    CouldNotVerify,
}

/// The JSON document `audit verify --json` prints (schema in
/// `docs/AUDIT-FORMAT.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyOutput {
    /// The format name, [`VERIFY_OUTPUT_FORMAT`].
    pub format: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The appliance the bundle comes from, once its enrollment record
    /// verified.
    pub appliance_id: Option<String>,
    /// The enrollment fingerprint of that appliance.
    pub fingerprint: Option<String>,
    /// Why the bundle could not be verified (only with `could-not-verify`).
    pub error: Option<String>,
    /// The report (absent with `could-not-verify`).
    pub report: Option<Report>,
}

/// The `format` value of [`VerifyOutput`].
pub const VERIFY_OUTPUT_FORMAT: &str = "flashgate-audit-verify/1";

impl VerifyOutput {
    /// The output for a verified bundle.
    #[must_use]
    pub fn verified(appliance_id: String, fingerprint: String, report: Report) -> Self {
        Self {
            format: VERIFY_OUTPUT_FORMAT.to_owned(),
            verdict: report.verdict(),
            appliance_id: Some(appliance_id),
            fingerprint: Some(fingerprint),
            error: None,
            report: Some(report),
        }
    }

    /// The output for a bundle that could not be verified.
    #[must_use]
    pub fn failed(error: String) -> Self {
        Self {
            format: VERIFY_OUTPUT_FORMAT.to_owned(),
            verdict: Verdict::CouldNotVerify,
            appliance_id: None,
            fingerprint: None,
            error: Some(error),
            report: None,
        }
    }

    /// Pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn fmt_time(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |t| format!("{t} (Unix ms)"))
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
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
                plural(self.anomaly_total(), "ANOMALY", "ANOMALIES")
            }
        )?;
        writeln!(
            f,
            "  log: {} ({} for this job), {}, last covers {}, {} unprotected",
            plural(self.records, "record", "records"),
            self.job_records,
            plural(self.checkpoints, "valid checkpoint", "valid checkpoints"),
            self.last_checkpoint_size
                .map_or_else(|| "nothing".to_owned(), |s| plural(s, "record", "records")),
            self.unprotected_records
        )?;
        writeln!(
            f,
            "  units: {} passed, {} failed, {} aborted, {} unused ({})",
            self.units.passed,
            self.units.failed,
            self.units.aborted,
            self.units.unused,
            plural(self.reworks, "rework", "reworks")
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
            let total = self.anomaly_total();
            if total > listed {
                writeln!(f, "    ... and {} more", total - listed)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_anomaly_is_singular() {
        let mut r = Report::default();
        r.add(Some(3), AnomalyKind::SequenceGap, "gap".to_owned());
        let text = r.to_string();
        assert!(text.contains("verdict: 1 ANOMALY\n"), "{text}");
        r.add(Some(4), AnomalyKind::SequenceGap, "gap".to_owned());
        assert!(r.to_string().contains("verdict: 2 ANOMALIES\n"));
    }
}
