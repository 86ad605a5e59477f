//! `job build` as one operation on the OEM side: the enrollment record is
//! checked against its pinned fingerprint, the device master goes to the
//! OEM's escrow first, then the package is written. A package whose device
//! master was lost can therefore never exist.

use std::path::{Path, PathBuf};

use super::build::{build, BuildError, JobInput};
pub use crate::enrollment::EnrollmentTrust;
use crate::enrollment::{EnrollmentError, PinnedEnrollment, VerifiedEnrollment};
use crate::package::Manifest;
use crate::profile::Profile;

use super::{Oem, OemError};

/// What to build.
#[derive(Debug)]
pub struct BuildRequest<'a> {
    /// The OEM directory (from `oem init`).
    pub oem_dir: &'a Path,
    /// The job policy, as text (it goes into the manifest as it is).
    pub policy_toml: &'a str,
    /// The firmware images.
    pub images: &'a [flashgate_firmware::Segment],
    /// The appliance's enrollment record, as the CM sent it.
    pub enrollment_record: &'a [u8],
    /// The fingerprint pinned out of band; `None` trusts the record on first use.
    pub pinned_fingerprint: Option<&'a str>,
    /// A forced key-transport profile instead of the strongest offered.
    pub profile: Option<Profile>,
    /// Where the package goes.
    pub out: &'a Path,
    /// Now (Unix seconds).
    pub now: u64,
}

/// A job built and written.
#[derive(Debug)]
#[non_exhaustive]
pub struct BuiltPackage {
    /// The manifest inside the package.
    pub manifest: Manifest,
    /// The package's size in bytes.
    pub size: usize,
    /// Where the device master was kept.
    pub escrow: PathBuf,
    /// The appliance it is for, and how its record was trusted.
    pub enrollment: PinnedEnrollment,
}

/// Why a job was not built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobBuildError {
    /// The policy text does not parse.
    #[error("the policy is not valid: {0}")]
    Policy(#[from] flashgate_policy::PolicyError),
    /// The enrollment record is not a valid, self-consistent record.
    #[error(transparent)]
    Enrollment(#[from] EnrollmentError),
    /// The OEM keys or the escrow.
    #[error(transparent)]
    Oem(#[from] OemError),
    /// The builder refused.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Builds the job, keeps its device master (mode 0600) under
/// `OEM_DIR/jobs/`, then writes the package.
pub fn build_job(req: &BuildRequest<'_>) -> Result<BuiltPackage, JobBuildError> {
    let policy = flashgate_policy::Policy::from_toml_str(req.policy_toml)?;
    let verified = VerifiedEnrollment::parse(req.enrollment_record)?;
    let enrollment = match req.pinned_fingerprint {
        Some(fp) => verified.pin(fp)?,
        None => verified.trust_on_first_use(),
    };
    let oem = Oem::load(req.oem_dir)?;
    let job = build(&JobInput {
        policy_toml: req.policy_toml,
        policy: &policy,
        images: req.images,
        enrollment: &enrollment,
        oem: &oem,
        now: req.now,
        profile: req.profile,
    })?;
    let escrow_dir = req.oem_dir.join("jobs");
    std::fs::create_dir_all(&escrow_dir).map_err(super::io("cannot create", &escrow_dir))?;
    let escrow = escrow_dir.join(format!("{}.device-master", job.manifest.job_id_hex()));
    super::write_file(
        &escrow,
        hex::encode(&job.device_master[..]).as_bytes(),
        0o600,
    )?;
    super::write_file(req.out, &job.bytes, 0o644)?;
    Ok(BuiltPackage {
        size: job.bytes.len(),
        manifest: job.manifest,
        escrow,
        enrollment,
    })
}
