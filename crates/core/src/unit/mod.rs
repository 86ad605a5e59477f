//! One unit's outcome and the ledger that counts it: below both the
//! pipeline that produces them and the appliance's audit log that records
//! them.

mod failure;
pub mod ledger;

use std::collections::BTreeMap;

use serde::Serialize;

pub use failure::{FailureKind, UnitFailure, UnitStage};

/// A reported outcome of one unit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum UnitResult {
    /// Programmed, proved its key, locked as the policy asks.
    Passed,
    /// Stopped at a stage; never locked.
    Failed(UnitFailure),
}

impl UnitResult {
    /// The failure, if the unit failed.
    pub fn failure(&self) -> Option<&UnitFailure> {
        match self {
            Self::Passed => None,
            Self::Failed(f) => Some(f),
        }
    }
}

/// What happened to one board.
#[derive(Debug, Clone, Serialize)]
pub struct UnitRecord {
    /// Channel number (from 0).
    pub channel: u32,
    /// Quota counter value, once reserved.
    pub counter: Option<u64>,
    /// Serial number, once assigned.
    pub serial: Option<String>,
    /// Device type as identified.
    pub device_type: Option<String>,
    /// Device UID (hex).
    pub uid: Option<String>,
    /// SHA-256 of the issued certificate (hex).
    pub cert_sha256: Option<String>,
    /// The issued certificate (DER), kept for the audit bundle.
    #[serde(skip)]
    pub certificate: Option<Vec<u8>>,
    /// Digest of the firmware the unit was measured against (hex).
    pub firmware_sha256: String,
    /// Lock level read back, and the raw bytes.
    pub lock: Option<String>,
    /// Lock level read back, by name.
    #[serde(skip)]
    pub lock_level: Option<String>,
    /// Raw lock bytes read back.
    #[serde(skip)]
    pub lock_raw: Vec<u8>,
    /// Whether any secret reached the unit.
    pub secrets_injected: bool,
    /// The counter value of this UID's earlier, failed or aborted attempt
    /// in this job, when the board is being reworked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rework_of: Option<u64>,
    /// Time per stage, in microseconds.
    pub timings_us: BTreeMap<String, u64>,
    /// Outcome.
    #[serde(flatten)]
    pub result: UnitResult,
}
