//! The audit bundle, as the CM writes it and as the OEM checks it: the
//! appliance-side export (log, enrollment record, signed manifest, device
//! certificates) here, and the offline verification against the pinned OEM
//! key from `flashgate-formats` (an OEM's verifier needs no token).

use std::path::Path;

pub use flashgate_formats::bundle::{verify_bundle, BundleError, BundleVerification};

use crate::appliance::Appliance;
use crate::package::UnverifiedPackage;

fn read(path: &Path) -> Result<Vec<u8>, BundleError> {
    std::fs::read(path).map_err(|source| BundleError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Appliance {
    /// Writes the audit bundle of `job_id` into `out` (new or empty);
    /// returns how many device certificates it holds.
    pub fn export_audit_bundle(&self, job_id: &[u8; 16], out: &Path) -> Result<usize, BundleError> {
        let id = hex::encode(job_id);
        let package = std::fs::read(self.job_dir(&id).join("package.fgj"))
            .map_err(|_| BundleError::NoPackage { id })?;
        export_bundle(
            &self.audit_dir(),
            read(&self.enrollment_path())?,
            &package,
            &self.certificate_dir(job_id),
            job_id,
            out,
        )
    }
}

/// Writes a bundle from its parts: the log directory, the enrollment
/// record, the job package (its signed manifest goes in) and the directory
/// of DER device certificates (`*.der`; pending and aborted ones stay out).
pub fn export_bundle(
    audit_dir: &Path,
    enrollment: Vec<u8>,
    package: &[u8],
    cert_dir: &Path,
    job_id: &[u8; 16],
    out: &Path,
) -> Result<usize, BundleError> {
    let manifest = UnverifiedPackage::parse(package)?.parts().0.to_vec();
    let index = flashgate_audit::export(
        audit_dir,
        job_id,
        &flashgate_audit::BundleExtras {
            enrollment,
            manifest,
            certificates: Vec::new(),
            certificate_dir: Some(cert_dir.to_owned()),
        },
        out,
    )?;
    let n = index.certificates.len();
    Ok(n)
}
