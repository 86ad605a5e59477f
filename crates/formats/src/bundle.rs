//! The audit bundle as the OEM checks it: offline, against the OEM's
//! signing key and (optionally) the pinned enrollment fingerprint. Writing
//! a bundle needs the appliance and is `flashgate-core`'s (`bundle`).

use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::cose::{CoseError, UnverifiedSign1};
use crate::enrollment::{EnrollmentError, VerifiedEnrollment};
use crate::package::{Manifest, PackageError};

/// Why a bundle could not be written or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The job's package is not on the appliance.
    #[error(
        "job {id} is not on this appliance (removed jobs keep their log but not their package)"
    )]
    NoPackage { id: String },
    /// The audit log, the bundle or its verification failed.
    #[error(transparent)]
    Audit(#[from] flashgate_audit::AuditError),
    /// The package or manifest is bad.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The enrollment record is bad.
    #[error("the bundle's enrollment record: {0}")]
    Enrollment(#[from] EnrollmentError),
    /// The manifest's signature structure is bad.
    #[error(transparent)]
    Cose(#[from] CoseError),
    /// The manifest does not verify with the OEM's key.
    #[error("the bundle's job manifest is not signed by this OEM key; check that --oem names the key the job was built with")]
    NotSignedByOem,
    /// The manifest names the OEM's key but its signature fails: altered.
    #[error("the bundle's job manifest was altered after the OEM signed it (its signature does not verify with the OEM key it names); ask the CM for the bundle again and treat this one as tampered")]
    ManifestAltered,
    /// The record is not the one pinned.
    #[error("the bundle comes from appliance {appliance} with enrollment fingerprint {found}, not the pinned {pinned}")]
    FingerprintMismatch {
        appliance: String,
        found: String,
        pinned: String,
    },
    /// The record is not the one the job was built for.
    #[error("the bundle's enrollment record (fingerprint {found}) is not the one this job was built for ({signed}); the bundle is not from the appliance the OEM sent the job to")]
    NotTheJobsAppliance { found: String, signed: String },
    /// The signed policy does not parse.
    #[error("the job's policy: {0}")]
    Policy(#[from] flashgate_policy::PolicyError),
}

/// The outcome of an offline verification.
#[derive(Debug)]
pub struct BundleVerification {
    /// The appliance's enrollment record, as carried by the bundle and tied
    /// to the OEM-signed manifest.
    pub enrollment: VerifiedEnrollment,
    /// The job the bundle is about.
    pub manifest: Manifest,
    /// The verifier's report.
    pub report: flashgate_audit::Report,
}

/// What the verified manifest and its policy say the log must show.
fn job_facts(
    manifest: &Manifest,
    policy: &flashgate_policy::Policy,
    manifest_sign1: &[u8],
) -> flashgate_audit::JobFacts {
    let job = policy.job();
    let serial = policy.serial();
    flashgate_audit::JobFacts {
        job_id: manifest.job_id,
        quota: job.quota,
        device_types: policy.target().device_types.clone(),
        product: job.product.as_str().to_owned(),
        security_version: u64::from(job.security_version),
        manifest_digest: Sha256::digest(manifest_sign1).into(),
        not_before: job.not_before,
        not_after: job.not_after,
        serials: flashgate_audit::SerialScheme {
            prefix: serial.prefix.clone(),
            start: serial.start,
            end: serial.end,
            width: serial.width,
        },
        lock_level: policy.lock().level.as_str().to_owned(),
        // The pipeline measures the images concatenated in order; with one
        // image that is the image's plaintext digest, which the manifest
        // carries. With several, only the units' agreement can be checked.
        firmware_sha256: match manifest.images.as_slice() {
            [only] => Some(only.digest),
            _ => None,
        },
    }
}

/// A bundle's manifest checked with the OEM's key and tied to its
/// enrollment record: what [`verify_bundle`] checks before the log.
#[derive(Debug)]
pub struct VerifiedManifest {
    enrollment: VerifiedEnrollment,
    manifest: Manifest,
    policy: flashgate_policy::Policy,
    manifest_sign1: Vec<u8>,
}

impl VerifiedManifest {
    /// The appliance's enrollment record, as carried by the bundle.
    pub fn enrollment(&self) -> &VerifiedEnrollment {
        &self.enrollment
    }

    /// The job the bundle is about.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The job's signed policy.
    pub fn policy(&self) -> &flashgate_policy::Policy {
        &self.policy
    }
}

/// The first half of [`verify_bundle`]: the manifest with the OEM's signing
/// key, and the bundle's enrollment record against the one the manifest
/// names (and `pinned_fingerprint` when given). Cheap: the log is not read.
pub fn verify_manifest(
    bundle: &Path,
    oem_key: &[u8; 65],
    pinned_fingerprint: Option<&str>,
) -> Result<VerifiedManifest, BundleError> {
    let b = flashgate_audit::Bundle::open(bundle)?;
    let enrollment = VerifiedEnrollment::parse(&b.enrollment()?)?;
    if let Some(pinned) = pinned_fingerprint {
        if !pinned.eq_ignore_ascii_case(&enrollment.fingerprint()) {
            return Err(BundleError::FingerprintMismatch {
                appliance: enrollment.record().appliance_id.clone(),
                found: enrollment.fingerprint(),
                pinned: pinned.to_owned(),
            });
        }
    }
    let manifest_bytes = b.manifest()?;
    let sign1 = UnverifiedSign1::parse(&manifest_bytes, "job manifest")?;
    // The kid tells an altered manifest from one another key signed.
    let names_this_key = sign1.key_id() == crate::cose::key_id(oem_key).as_slice();
    let payload = sign1.verify(oem_key).map_err(|_| {
        if names_this_key {
            BundleError::ManifestAltered
        } else {
            BundleError::NotSignedByOem
        }
    })?;
    let manifest = Manifest::decode(&payload)?;
    // The OEM signed which enrollment record the job was built for: the
    // bundle's record, and so the log key, must be that one.
    if manifest.enrollment_digest != *enrollment.digest() {
        return Err(BundleError::NotTheJobsAppliance {
            found: enrollment.fingerprint(),
            signed: hex::encode(manifest.enrollment_digest),
        });
    }
    let policy = flashgate_policy::Policy::from_toml_str(&manifest.policy_toml)?;
    Ok(VerifiedManifest {
        enrollment,
        manifest,
        policy,
        manifest_sign1: manifest_bytes,
    })
}

/// The second half of [`verify_bundle`]: the log, against what the
/// verified manifest says it must show.
pub fn verify_log(
    bundle: &Path,
    checked: VerifiedManifest,
    previous_checkpoint: Option<Vec<u8>>,
) -> Result<BundleVerification, BundleError> {
    let report = flashgate_audit::verify_bundle(
        bundle,
        &flashgate_audit::VerifyOptions {
            log_key: checked.enrollment.record().log_public,
            appliance_id: checked.enrollment.record().appliance_id.clone(),
            facts: job_facts(&checked.manifest, &checked.policy, &checked.manifest_sign1),
            previous_checkpoint,
        },
    )?;
    Ok(BundleVerification {
        enrollment: checked.enrollment,
        manifest: checked.manifest,
        report,
    })
}

/// The OEM side: checks the bundle's manifest with the OEM's signing key,
/// ties the bundle's enrollment record to the one the manifest names (and
/// to `pinned_fingerprint` when given), then verifies the log with that
/// record's log key.
pub fn verify_bundle(
    bundle: &Path,
    oem_key: &[u8; 65],
    pinned_fingerprint: Option<&str>,
    previous_checkpoint: Option<Vec<u8>>,
) -> Result<BundleVerification, BundleError> {
    let checked = verify_manifest(bundle, oem_key, pinned_fingerprint)?;
    verify_log(bundle, checked, previous_checkpoint)
}
