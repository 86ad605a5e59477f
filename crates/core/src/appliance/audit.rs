//! The appliance's audit log and quota counters: the durable [`Ledger`]
//! behind every run. Counters live in the HSM (one token object per job,
//! advanced before any identity is issued); the log lives in the state
//! directory and is checkpointed with the HSM log key.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use flashgate_audit::record::JobImported;
use flashgate_audit::{AuditError, CounterStore, Log, LogOptions, RecordKind};
use sha2::{Digest, Sha256};

use super::counters::HsmCounterStore;
use super::run_ledger::{scan_log, settle_certificates};
use super::{
    io_err, write_atomic, Appliance, ApplianceError, RemovalState, IMPORTED_PREFIX, LOG_LABEL,
};
use crate::hsm::Token;

/// Marker file in a job directory: the job's `job-imported` record is in the log.
const IMPORT_LOGGED: &str = "import-logged";

pub(super) fn job_imported_record(
    m: &crate::package::Manifest,
    policy: &flashgate_policy::Policy,
    manifest_sign1: &[u8],
) -> RecordKind {
    let j = policy.job();
    RecordKind::JobImported(JobImported {
        job_id: m.job_id,
        product: j.product.as_str().to_owned(),
        quota: j.quota,
        security_version: u64::from(j.security_version),
        manifest_digest: Sha256::digest(manifest_sign1).into(),
    })
}

/// The HSM log key as the checkpoint signer, on a session of its own.
pub type HsmLogSigner = crate::hsm::TokenKey<Token>;

/// The appliance's audit log, its quota ledger and the log key.
pub struct Audit {
    /// The ledger (log + HSM counters).
    pub ledger: flashgate_audit::Ledger,
    /// The log key.
    pub signer: HsmLogSigner,
    /// Where the log lives.
    pub dir: PathBuf,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Appends a record and signs a checkpoint after it.
    pub fn append_and_checkpoint(&self, kind: RecordKind) -> Result<(), ApplianceError> {
        self.ledger.append(kind).map_err(ApplianceError::from)?;
        self.ledger
            .checkpoint(&self.signer)
            .map_err(ApplianceError::from)?;
        Ok(())
    }
}

impl Appliance {
    /// Where the audit log lives.
    pub fn audit_dir(&self) -> PathBuf {
        self.config.state_dir.join("audit")
    }

    /// The audit log, opened (and checked against the HSM's high-water
    /// mark) on first use in this process, then shared.
    pub fn audit(&self) -> Result<Arc<Audit>, ApplianceError> {
        let mut cached = self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(a) = cached.as_ref() {
            return Ok(a.clone());
        }
        let a = Arc::new(self.open_audit()?);
        *cached = Some(a.clone());
        Ok(a)
    }

    /// Forgets the shared audit log (after a reset moved it away).
    pub(super) fn forget_audit(&self) {
        *self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Opens the audit log with its own token sessions.
    fn open_audit(&self) -> Result<Audit, ApplianceError> {
        let enrollment = self.enrollment()?;
        let dir = self.audit_dir();
        let log = Log::open(
            &dir,
            LogOptions::new(enrollment.record().appliance_id.clone()),
        )
        .map_err(damage)?;
        let store = HsmCounterStore {
            token: Mutex::new(self.token.another_session()?),
        };
        let ledger =
            flashgate_audit::Ledger::new(Arc::new(log), Arc::new(store)).map_err(damage)?;
        let key = self
            .token
            .find_by_label(LOG_LABEL)?
            .into_iter()
            .find(|h| {
                self.token.object_class(*h).ok() == Some(cryptoki::object::ObjectClass::PRIVATE_KEY)
            })
            .ok_or(ApplianceError::NotEnrolled)?;
        let signer = HsmLogSigner::new(
            self.token.another_session()?,
            key,
            &enrollment.record().log_public,
        )?;
        Ok(Audit {
            ledger,
            signer,
            dir,
        })
    }

    /// Counter values the job has used (reserved), from the HSM counter.
    pub fn quota_used(&self, job_id: &[u8; 16]) -> Result<u64, ApplianceError> {
        let store = HsmCounterStore {
            token: Mutex::new(self.token.another_session()?),
        };
        store.read(job_id).map_err(ApplianceError::Audit)
    }

    /// Where the DER device certificates of a job are kept (outside the job
    /// directory, so that they outlive `job remove` for the audit bundle).
    pub fn certificate_dir(&self, job_id: &[u8; 16]) -> PathBuf {
        self.config
            .state_dir
            .join("certs")
            .join(hex::encode(job_id))
    }

    /// Records an import (after its commit) and checkpoints.
    pub(crate) fn audit_import(
        &self,
        m: &crate::package::Manifest,
        policy: &flashgate_policy::Policy,
        manifest_sign1: &[u8],
    ) -> Result<(), ApplianceError> {
        super::crash_point("import-before-record");
        let audit = self.audit()?;
        audit.append_and_checkpoint(job_imported_record(m, policy, manifest_sign1))?;
        self.mark_import_logged(&m.job_id_hex())
    }

    fn mark_import_logged(&self, id: &str) -> Result<(), ApplianceError> {
        write_atomic(&self.job_dir(id).join(IMPORT_LOGGED), b"")
    }

    /// The import is committed before its record is written; if a crash came
    /// in between, the record is written now (before the job's first run),
    /// so that the log never shows units of a job it never saw imported.
    pub(super) fn ensure_import_logged(
        &self,
        audit: &Audit,
        job_id: &[u8; 16],
    ) -> Result<(), ApplianceError> {
        let id = hex::encode(job_id);
        if self.job_dir(&id).join(IMPORT_LOGGED).exists() {
            return Ok(());
        }
        let mut logged = false;
        scan_log(&audit.dir, |kind| {
            logged = matches!(kind, RecordKind::JobImported(j) if j.job_id == *job_id);
            !logged
        })?;
        if !logged {
            let (manifest, policy, sign1) = self.job_import_facts(&id)?;
            audit.append_and_checkpoint(job_imported_record(&manifest, &policy, &sign1))?;
        }
        self.mark_import_logged(&id)
    }

    /// Where the removal of `job_id` stands in the log.
    pub(crate) fn removal_state(
        &self,
        audit: &Audit,
        job_id: &[u8; 16],
    ) -> Result<RemovalState, ApplianceError> {
        let mut state = RemovalState::NotStarted;
        scan_log(&audit.dir, |kind| {
            match kind {
                RecordKind::JobRemovalStarted(r) if r.job_id == *job_id => {
                    state = RemovalState::Started;
                }
                RecordKind::JobRemoved(r) if r.job_id == *job_id => state = RemovalState::Done,
                _ => {}
            }
            true
        })?;
        Ok(state)
    }

    /// The committed jobs whose package is on the appliance.
    pub(super) fn present_jobs(&self) -> Result<Vec<[u8; 16]>, ApplianceError> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.config.state_dir.join("jobs")) else {
            return Ok(out);
        };
        for entry in rd.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Some(job_id) = crate::package::Manifest::job_id_from_hex(&id) else {
                continue;
            };
            if entry.path().join("package.fgj").exists()
                && !self
                    .token
                    .find_by_label(&format!("{IMPORTED_PREFIX}{id}"))?
                    .is_empty()
            {
                out.push(job_id);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The log part of recovery, for every job on the appliance: a lost
    /// import record is written, counter values a crash left open are
    /// closed (`unit-aborted`, `units-unused`), pending certificates are
    /// settled, and whatever was appended is checkpointed.
    pub(crate) fn recover_log(
        &self,
        audit: &Audit,
        lines: &mut Vec<String>,
    ) -> Result<(), ApplianceError> {
        for job_id in self.present_jobs()? {
            self.ensure_import_logged(audit, &job_id)?;
            let recovery = audit.ledger.recover(&job_id).map_err(damage)?;
            if !recovery.was_clean() {
                lines.push(format!("job {}: {recovery}", hex::encode(job_id)));
            }
            settle_certificates(
                &audit.dir,
                &self.certificate_dir(&job_id),
                &job_id,
                !recovery.was_clean(),
                lines,
            )?;
        }
        if audit.ledger.log().unprotected() > 0 {
            audit
                .ledger
                .checkpoint(&audit.signer)
                .map_err(ApplianceError::from)?;
        }
        Ok(())
    }

    /// The verified manifest, policy and signed manifest bytes of a job on
    /// the appliance.
    pub(super) fn job_import_facts(
        &self,
        id: &str,
    ) -> Result<(crate::package::Manifest, flashgate_policy::Policy, Vec<u8>), ApplianceError> {
        let path = self.job_dir(id).join("package.fgj");
        let package = std::fs::read(&path).map_err(io_err("cannot read", &path))?;
        let signed = crate::package::UnverifiedPackage::parse(&package)
            .and_then(|p| p.verify(&self.config.trust.keys))
            .map_err(|e| ApplianceError::Audit(e.to_string()))?;
        let policy = flashgate_policy::Policy::from_toml_str(&signed.manifest().policy_toml)
            .map_err(|e| ApplianceError::Audit(e.to_string()))?;
        let sign1 = signed.manifest_sign1().to_vec();
        Ok((signed.into_manifest(), policy, sign1))
    }
}

impl From<flashgate_audit::AuditError> for ApplianceError {
    fn from(e: flashgate_audit::AuditError) -> Self {
        ApplianceError::Audit(e.to_string())
    }
}

/// A log that is damaged or disagrees with the HSM is reported as such, with
/// what to do; other failures (I/O) stay what they are.
pub(super) fn damage(e: AuditError) -> ApplianceError {
    match e {
        AuditError::Corrupt { .. } | AuditError::LogRolledBack { .. } => {
            ApplianceError::LogDamaged {
                detail: e.to_string(),
            }
        }
        other => other.into(),
    }
}
