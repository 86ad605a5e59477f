//! Secure per-unit programming, on many channels at once.
//!
//! Per unit, in the order docs/FORMATS.md §10 gives: identify -> reserve ->
//! erase / blank-check / program / verify -> derive -> certificate -> inject
//! -> challenge -> lock -> lock read-back -> record. A unit that fails at any
//! stage is never locked; once a counter value is reserved, the unit counts
//! against the quota whatever happens next.

mod blank;
mod checks;
mod run;
mod uid_index;
mod unit;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cryptoki::object::ObjectHandle;
use flashgate_policy::Policy;
use flashgate_target::{Capabilities, FlashRange};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::appliance::{Appliance, ApplianceError, ImportError};
use crate::identity::{self, DeviceCertificateIssuer};
pub use crate::unit::ledger::{Ledger, LedgerError, MemoryLedger};
pub use crate::unit::{FailureKind, UnitFailure, UnitRecord, UnitResult, UnitStage};
pub use blank::blank_check_ranges;
pub use checks::{check_driver, check_quota, check_validity, required_capabilities};
pub use uid_index::{Attempt, AttemptState, UidIndex, UidIndexError};

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The job could not be loaded.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Appliance trouble.
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
    /// The job's keys are not in the token.
    #[error("the HSM keys of job {id} are missing ({what}); remove the job and import it again")]
    MissingKey { id: String, what: String },
    /// The driver cannot run the job.
    #[error(transparent)]
    Driver(#[from] crate::drivers::DriverMismatch),
    /// The job has expired or is not valid yet.
    #[error("job {id} is not valid now (valid {from} .. {until}); ask the OEM for a new job")]
    OutsideValidity {
        id: String,
        from: String,
        until: String,
    },
    /// The job's quota is used up: no board would be counted.
    #[error("job {id} has used all {quota} units of its quota; no board was taken. Ask the OEM for a new job to provision more units")]
    QuotaUsedUp { id: String, quota: u64 },
    /// The job's images cannot be measured for the challenge.
    #[error("{0}")]
    Firmware(String),
    /// Certificate issuer set-up failed.
    #[error(transparent)]
    Certificate(#[from] identity::CertificateError),
}

/// Events for line control and MES (one JSON object per line with `--json`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum RunEvent {
    /// A board was taken on a channel.
    UnitStarted { channel: u32, board: u64 },
    /// A stage finished.
    StageDone {
        channel: u32,
        board: u64,
        stage: String,
        us: u64,
    },
    /// A unit passed.
    UnitPassed {
        channel: u32,
        board: u64,
        unit: UnitRecord,
    },
    /// A unit failed.
    UnitFailed {
        channel: u32,
        board: u64,
        unit: UnitRecord,
    },
    /// A channel stopped (no more boards, limit, quota, or operator stop).
    ChannelStopped { channel: u32, reason: String },
}

/// Stops a run from outside (Ctrl-C, a service call).
#[derive(Debug, Default, Clone)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks every channel to finish its unit in flight and stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Run options.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Boards to take in all (None: until the fixtures or the quota run out).
    pub units: Option<u64>,
    /// The most counter values a channel reserves at a time. A channel
    /// reserves about one second of its own production, at least one value,
    /// never more than this, than the boards its fixture can still deliver
    /// or than its share of `units`.
    pub block: u64,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// Units passed.
    pub passed: u64,
    /// Units failed, by stage.
    pub failed_by_stage: BTreeMap<String, u64>,
    /// Mean time per stage over the units that reached it (µs).
    pub mean_stage_us: BTreeMap<String, u64>,
    /// Counter values reserved this run (quota consumed).
    pub counted: u64,
    /// Of those, values no unit used (reserved ahead, then released).
    pub reserved_unused: u64,
    /// Quota left for the job after the run.
    pub quota_left: u64,
    /// Wall time of the run.
    pub elapsed_ms: u64,
    /// Channels whose fixture failed to hand over a board.
    pub fixtures_failed: u64,
    /// The first such failure, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixture_error: Option<String>,
    /// Why the run ended.
    pub stopped_because: String,
}

impl RunSummary {
    /// Units that failed.
    pub fn failed(&self) -> u64 {
        self.failed_by_stage.values().sum()
    }
}

/// An imported job, opened for programming: its keys found in the token and
/// its firmware decrypted (in the HSM) into zeroizing memory.
pub struct Provisioner {
    appliance: Arc<Appliance>,
    job_id: [u8; 16],
    policy: Policy,
    images: Vec<(u32, Zeroizing<Vec<u8>>)>,
    regions: Vec<FlashRange>,
    firmware_digest: [u8; 32],
    master: ObjectHandle,
    ca: ObjectHandle,
    ca_public: [u8; 65],
    issuer: DeviceCertificateIssuer,
    ledger: Arc<dyn Ledger>,
    uids: UidIndex,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("job_id", &hex::encode(self.job_id))
            .field("images", &self.images.len())
            .finish_non_exhaustive()
    }
}

fn handle(appliance: &Appliance, id: &str, name: &str) -> Result<ObjectHandle, RunError> {
    let label = crate::appliance::job_key_label(id, name);
    appliance
        .token
        .find_by_label(&label)
        .map_err(ApplianceError::from)?
        .into_iter()
        .next()
        .ok_or_else(|| RunError::MissingKey {
            id: id.to_owned(),
            what: name.to_owned(),
        })
}

impl Provisioner {
    /// Opens job `id` on `appliance`, counting through `ledger`.
    pub fn open(
        appliance: Arc<Appliance>,
        id: &str,
        ledger: Arc<dyn Ledger>,
    ) -> Result<Self, RunError> {
        let (job, images) = appliance.open_job_firmware(id)?;
        let uids = UidIndex::new(&appliance.job_dir(id).join("uids"));
        check_validity(job.policy(), id, appliance.now())?;
        let master = handle(&appliance, id, "master")?;
        let ca = handle(&appliance, id, "ca")?;
        let issuer = DeviceCertificateIssuer::new(&job.manifest().job_ca_cert)?;
        let ca_public = crate::x509::certificate_public_key(&job.manifest().job_ca_cert).ok_or(
            identity::CertificateError::Check("the job CA certificate has no P-256 key"),
        )?;
        let regions: Vec<FlashRange> = images
            .iter()
            .map(|(a, d)| FlashRange {
                address: *a,
                length: u32::try_from(d.len()).unwrap_or(u32::MAX),
            })
            .collect();
        let firmware_digest = digest_of_images(&images, &regions)
            .map_err(|e| RunError::Firmware(format!("cannot measure the job's images: {e}")))?;
        Ok(Self {
            appliance,
            job_id: job.manifest().job_id,
            policy: job.policy().clone(),
            images,
            regions,
            firmware_digest,
            master,
            ca,
            ca_public,
            issuer,
            ledger,
            uids,
        })
    }

    /// The job's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The job id.
    pub fn job_id(&self) -> [u8; 16] {
        self.job_id
    }

    /// The capabilities a driver must have for this job.
    pub fn required_capabilities(&self) -> Capabilities {
        required_capabilities(&self.policy)
    }

    /// Fails before touching any unit when the driver lacks a capability.
    pub fn check_driver(&self, driver: &str, capabilities: Capabilities) -> Result<(), RunError> {
        check_driver(&self.policy, driver, capabilities)
    }

    fn hsm<T>(
        &self,
        f: impl FnOnce(&Appliance) -> Result<T, crate::hsm::HsmError>,
    ) -> Result<T, String> {
        f(&self.appliance).map_err(|e| e.to_string())
    }
}

fn digest_of_images(
    images: &[(u32, Zeroizing<Vec<u8>>)],
    regions: &[FlashRange],
) -> Result<[u8; 32], flashgate_agent::AgentError> {
    flashgate_agent::firmware_digest(regions, |address, buf| {
        for (base, data) in images {
            if let Some(off) = address.checked_sub(*base) {
                let off = off as usize;
                if let Some(src) = data.get(off..off + buf.len()) {
                    buf.copy_from_slice(src);
                    return Ok(());
                }
            }
        }
        Err(flashgate_agent::AgentError::RegionOutside {
            address,
            length: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        })
    })
}

/// A fixture that makes each board with a closure (kept here for callers
/// of the pipeline; it lives with the driver model).
pub use flashgate_target::BoardsFrom;

/// The runtime a run needs: each channel holds a blocking thread for the
/// whole run, beside the time-based checkpoint ticker.
pub fn runtime(channels: u32) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(channels as usize + 4)
        .enable_all()
        .build()
}

/// Time a stage took, for display.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
