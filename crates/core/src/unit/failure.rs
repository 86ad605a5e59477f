//! Why a unit failed, as a typed value: the stage it stopped at and what
//! kind of trouble it was, so that reports, events and audit records cannot
//! drift apart.

use std::fmt;

use flashgate_target::{Stage, TargetError};
use serde::Serialize;

/// Where a unit stopped: every target [`Stage`] plus the appliance's own
/// steps between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitStage {
    /// Attaching to the programming interface.
    Connect,
    /// Reading device type, UID and lock state; checking the board may be programmed.
    Identify,
    /// Reserving a quota counter value and a serial number.
    Reserve,
    /// Chip erase.
    Erase,
    /// Checking that flash reads back erased.
    BlankCheck,
    /// Writing the images.
    Program,
    /// Reading the images back.
    Verify,
    /// Deriving the unit's secrets (HSM and host).
    Derive,
    /// On-chip key generation.
    Keygen,
    /// Issuing the device certificate in the HSM.
    Certificate,
    /// Injecting keys and the certificate.
    Inject,
    /// A write into the device's key store failed.
    StoreSecret,
    /// Challenge-response with the device's agent.
    Challenge,
    /// Setting the lock bits.
    Lock,
    /// Reading the lock bits back.
    LockReadback,
    /// Writing the unit's audit record.
    Record,
}

impl UnitStage {
    /// The kebab-case name used in events, audit records and reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Identify => "identify",
            Self::Reserve => "reserve",
            Self::Erase => "erase",
            Self::BlankCheck => "blank-check",
            Self::Program => "program",
            Self::Verify => "verify",
            Self::Derive => "derive",
            Self::Keygen => "keygen",
            Self::Certificate => "certificate",
            Self::Inject => "inject",
            Self::StoreSecret => "store-secret",
            Self::Challenge => "challenge",
            Self::Lock => "lock",
            Self::LockReadback => "lock-readback",
            Self::Record => "record",
        }
    }
}

impl From<Stage> for UnitStage {
    fn from(s: Stage) -> Self {
        match s {
            Stage::Connect => Self::Connect,
            Stage::Identify => Self::Identify,
            Stage::Erase => Self::Erase,
            Stage::BlankCheck => Self::BlankCheck,
            Stage::Program => Self::Program,
            Stage::Verify => Self::Verify,
            Stage::StoreSecret => Self::StoreSecret,
            Stage::Keygen => Self::Keygen,
            Stage::Challenge => Self::Challenge,
            Stage::Lock => Self::Lock,
            Stage::LockReadback => Self::LockReadback,
        }
    }
}

impl fmt::Display for UnitStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of trouble stopped a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The board, the fixture or the bus: contact, timeout, protocol, a
    /// verify mismatch. The board may be reworked.
    Target,
    /// The board is not one this job may program (wrong device type,
    /// already locked, already provisioned by this job). Not counted.
    BoardRefused,
    /// The device did not prove that it holds its new key.
    ChallengeFailed,
    /// The lock read back is not the one set.
    LockMismatch,
    /// The job's quota is used up.
    QuotaExhausted,
    /// The policy's serial range has no serial for the counter value.
    SerialRangeExhausted,
    /// The job window is closed: the job CA may not sign any more.
    OutsideWindow,
    /// The quota counter or the audit log failed.
    Ledger,
    /// The HSM failed.
    Hsm,
    /// Deriving keys or issuing the certificate failed.
    Provisioning,
}

impl FailureKind {
    /// The kebab-case name used in events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Target => "target",
            Self::BoardRefused => "board-refused",
            Self::ChallengeFailed => "challenge-failed",
            Self::LockMismatch => "lock-mismatch",
            Self::QuotaExhausted => "quota-exhausted",
            Self::SerialRangeExhausted => "serial-range-exhausted",
            Self::OutsideWindow => "outside-window",
            Self::Ledger => "ledger",
            Self::Hsm => "hsm",
            Self::Provisioning => "provisioning",
        }
    }

    /// Whether no later unit on any channel can do better, so the channel
    /// stops instead of taking the next board.
    pub const fn stops_the_run(self) -> bool {
        match self {
            Self::QuotaExhausted
            | Self::SerialRangeExhausted
            | Self::OutsideWindow
            | Self::Ledger => true,
            Self::Target
            | Self::BoardRefused
            | Self::ChallengeFailed
            | Self::LockMismatch
            | Self::Hsm
            | Self::Provisioning => false,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit's failure: stage, kind and the sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitFailure {
    /// Where it stopped.
    pub stage: UnitStage,
    /// What kind of trouble.
    pub kind: FailureKind,
    /// What happened and what to do, in one sentence.
    pub reason: String,
}

impl UnitFailure {
    /// A failure at `stage`.
    pub fn new(stage: UnitStage, kind: FailureKind, reason: impl Into<String>) -> Self {
        Self {
            stage,
            kind,
            reason: reason.into(),
        }
    }

    /// A target error, at the stage the driver names (connect if none).
    pub fn target(e: &TargetError) -> Self {
        let kind = if e.refuses_the_board() {
            FailureKind::BoardRefused
        } else {
            FailureKind::Target
        };
        Self::new(
            e.stage().map_or(UnitStage::Connect, UnitStage::from),
            kind,
            e.to_string(),
        )
    }
}

impl fmt::Display for UnitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.stage, self.kind, self.reason)
    }
}
