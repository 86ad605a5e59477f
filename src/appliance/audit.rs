//! The appliance's audit log and quota counters: the durable [`Ledger`]
//! behind every run. Counters live in the HSM (one token object per job,
//! advanced before any identity is issued); the log lives in the state
//! directory and is checkpointed with the HSM log key.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cryptoki::object::ObjectHandle;
use flashgate_audit::record::{
    JobImported, JobRemoved, RunStarted, RunStopped, UnitFailed, UnitPassed,
};
use flashgate_audit::{CheckpointSigner, CounterStore, Log, LogOptions, RecordKind};
use sha2::{Digest, Sha256};

use super::{Appliance, ApplianceError, LOG_LABEL};
use crate::hsm::Token;
use crate::pipeline::{Ledger, LedgerError, UnitRecord, UnitResult};

/// Marker file in a job directory: the job's `job-imported` record is in the log.
const IMPORT_LOGGED: &str = "import-logged";

fn job_imported_record(
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

/// Label prefix of a quota counter object: `fg-count:<id>`.
pub const COUNTER_PREFIX: &str = "fg-count:";

/// Quota counters as token data objects. `CKA_VALUE` is read-only on some
/// tokens (SoftHSM), so a counter advances by creating the new value and
/// then destroying the old; a crash between leaves two, and the larger wins.
pub struct HsmCounterStore {
    token: Mutex<Token>,
}

impl std::fmt::Debug for HsmCounterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HsmCounterStore")
    }
}

impl HsmCounterStore {
    fn values(token: &Token, id: &[u8; 16]) -> Result<Vec<(ObjectHandle, u64)>, String> {
        let label = format!("{COUNTER_PREFIX}{}", hex::encode(id));
        let mut out = Vec::new();
        for h in token.find_by_label(&label).map_err(|e| e.to_string())? {
            let v = token.data_value(h).map_err(|e| e.to_string())?;
            let v = <[u8; 8]>::try_from(v.as_slice())
                .map_err(|_| format!("counter object {label} is not 8 bytes"))?;
            out.push((h, u64::from_be_bytes(v)));
        }
        Ok(out)
    }
}

impl CounterStore for HsmCounterStore {
    fn read(&self, id: &[u8; 16]) -> Result<u64, String> {
        let token = self
            .token
            .lock()
            .map_err(|_| "token lock poisoned".to_owned())?;
        Ok(Self::values(&token, id)?
            .into_iter()
            .map(|(_, v)| v)
            .max()
            .unwrap_or(0))
    }

    fn advance(&self, id: &[u8; 16], to: u64) -> Result<(), String> {
        let token = self
            .token
            .lock()
            .map_err(|_| "token lock poisoned".to_owned())?;
        let old = Self::values(&token, id)?;
        let current = old.iter().map(|(_, v)| *v).max().unwrap_or(0);
        if to < current {
            return Err(format!(
                "refusing to move counter {} back from {current} to {to}",
                hex::encode(id)
            ));
        }
        if to == current && !old.is_empty() {
            return Ok(());
        }
        token
            .create_data(
                &format!("{COUNTER_PREFIX}{}", hex::encode(id)),
                &to.to_be_bytes(),
            )
            .map_err(|e| e.to_string())?;
        for (h, _) in old {
            token.destroy(h).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The HSM log key as the checkpoint signer.
pub struct HsmLogSigner {
    token: Mutex<Token>,
    key: ObjectHandle,
    public: [u8; 65],
}

impl std::fmt::Debug for HsmLogSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HsmLogSigner")
    }
}

impl CheckpointSigner for HsmLogSigner {
    fn public_key(&self) -> [u8; 65] {
        self.public
    }
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], String> {
        let token = self
            .token
            .lock()
            .map_err(|_| "token lock poisoned".to_owned())?;
        token
            .sign_prehash(self.key, digest)
            .map_err(|e| e.to_string())
    }
}

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

    /// Opens the audit log (checking it against the HSM's high-water mark)
    /// with its own token sessions.
    pub fn audit(&self) -> Result<Audit, ApplianceError> {
        let enrollment = self.enrollment()?;
        let dir = self.audit_dir();
        let log = Log::open(
            &dir,
            LogOptions::new(enrollment.record.appliance_id.clone()),
        )?;
        let store = HsmCounterStore {
            token: Mutex::new(self.token.another_session()?),
        };
        let ledger = flashgate_audit::Ledger::new(Arc::new(log), Arc::new(store))?;
        let key = self
            .token
            .find_by_label(LOG_LABEL)?
            .into_iter()
            .find(|h| {
                self.token.object_class(*h).ok() == Some(cryptoki::object::ObjectClass::PRIVATE_KEY)
            })
            .ok_or(ApplianceError::NotEnrolled)?;
        let signer = HsmLogSigner {
            token: Mutex::new(self.token.another_session()?),
            key,
            public: enrollment.record.log_public,
        };
        Ok(Audit {
            ledger,
            signer,
            dir,
        })
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
        let audit = self.audit()?;
        audit.append_and_checkpoint(job_imported_record(m, policy, manifest_sign1))?;
        self.mark_import_logged(&m.job_id_hex())
    }

    fn mark_import_logged(&self, id: &str) -> Result<(), ApplianceError> {
        let path = self.job_dir(id).join(IMPORT_LOGGED);
        std::fs::write(&path, b"").map_err(super::io_err("cannot write", &path))
    }

    /// The import is committed before its record is written; if a crash came
    /// in between, the record is written now (before the job's first run),
    /// so that the log never shows units of a job it never saw imported.
    fn ensure_import_logged(&self, audit: &Audit, job_id: &[u8; 16]) -> Result<(), ApplianceError> {
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
            let package = std::fs::read(self.job_dir(&id).join("package.fgj"))
                .map_err(super::io_err("cannot read", &self.job_dir(&id)))?;
            let signed = crate::package::UnverifiedPackage::parse(&package)
                .and_then(|p| p.verify(&self.config.trust.keys))
                .map_err(|e| ApplianceError::Audit(e.to_string()))?;
            let policy = flashgate_policy::Policy::from_toml_str(&signed.manifest.policy_toml)
                .map_err(|e| ApplianceError::Audit(e.to_string()))?;
            audit.append_and_checkpoint(job_imported_record(
                &signed.manifest,
                &policy,
                signed.manifest_sign1,
            ))?;
        }
        self.mark_import_logged(&id)
    }

    /// Records a removal and checkpoints.
    pub(crate) fn audit_remove(&self, job_id: [u8; 16]) -> Result<(), ApplianceError> {
        self.audit()?
            .append_and_checkpoint(RecordKind::JobRemoved(JobRemoved { job_id }))
    }
}

impl From<flashgate_audit::AuditError> for ApplianceError {
    fn from(e: flashgate_audit::AuditError) -> Self {
        ApplianceError::Audit(e.to_string())
    }
}

/// The durable ledger of one run: HSM counter first, then the log; a
/// checkpoint at run start and end and every N units or T seconds.
pub struct RunLedger {
    audit: Audit,
    job_id: [u8; 16],
    run_id: [u8; 16],
    quota: u64,
    every_units: u64,
    every: std::time::Duration,
    since: Mutex<(u64, Instant)>,
    cert_dir: PathBuf,
    used: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RunLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLedger")
            .field("job", &hex::encode(self.job_id))
            .finish_non_exhaustive()
    }
}

impl RunLedger {
    /// Opens the ledger for a run of `job_id`: recovers what a crash left
    /// (aborted units are recorded), refuses a log that disagrees with the
    /// HSM, records the run start and checkpoints. Returns what recovery did.
    pub fn start(
        appliance: &Appliance,
        job_id: [u8; 16],
        policy: &flashgate_policy::Policy,
        operator: &str,
        channels: u32,
    ) -> Result<(Self, flashgate_audit::Recovery), ApplianceError> {
        let audit = appliance.audit()?;
        appliance.ensure_import_logged(&audit, &job_id)?;
        let recovery = audit.ledger.recover(&job_id)?;
        resolve_pending_certificates(&audit.dir, &appliance.certificate_dir(&job_id), &job_id)?;
        let mut run_id = [0u8; 16];
        appliance.token.random(&mut run_id)?;
        audit.append_and_checkpoint(RecordKind::RunStarted(RunStarted {
            job_id,
            run_id,
            operator: operator.to_owned(),
            channels,
        }))?;
        let a = policy.audit();
        Ok((
            Self {
                audit,
                job_id,
                run_id,
                quota: policy.job().quota,
                every_units: u64::from(a.checkpoint_every_units),
                every: std::time::Duration::from_secs(u64::from(a.checkpoint_every_seconds)),
                since: Mutex::new((0, Instant::now())),
                cert_dir: appliance.certificate_dir(&job_id),
                used: std::sync::atomic::AtomicU64::new(recovery.counter),
            },
            recovery,
        ))
    }

    fn maybe_checkpoint(&self) -> Result<(), LedgerError> {
        let due = {
            let mut s = self
                .since
                .lock()
                .map_err(|_| LedgerError::Store("poisoned".to_owned()))?;
            s.0 += 1;
            if s.0 >= self.every_units || s.1.elapsed() >= self.every {
                *s = (0, Instant::now());
                true
            } else {
                false
            }
        };
        if due {
            self.audit
                .ledger
                .checkpoint(&self.audit.signer)
                .map_err(|e| LedgerError::Store(e.to_string()))?;
        }
        Ok(())
    }
}

fn hex32(s: &Option<String>) -> Option<[u8; 32]> {
    s.as_ref()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|v| v.try_into().ok())
}

impl Ledger for RunLedger {
    fn reserve(&self, n: u64) -> Result<Range<u64>, LedgerError> {
        let r = self
            .audit
            .ledger
            .reserve(&self.job_id, n, self.quota)
            .map_err(|e| match e {
                flashgate_audit::AuditError::QuotaExhausted { .. } => LedgerError::QuotaExhausted {
                    quota: self.quota,
                    used: self.used(),
                },
                other => LedgerError::Store(other.to_string()),
            })?;
        self.used
            .fetch_max(r.end, std::sync::atomic::Ordering::SeqCst);
        Ok(r)
    }

    fn record(&self, unit: &UnitRecord) -> Result<(), LedgerError> {
        let Some(counter) = unit.counter else {
            return Ok(());
        };
        // The certificate is kept for the export bundle: written as pending
        // before the record, made final after it. A crash in between is
        // settled by `resolve_pending_certificates` at the next run start.
        let pending = unit.certificate.as_ref().map(|cert| {
            let name = hex::encode(Sha256::digest(cert));
            let _ = std::fs::create_dir_all(&self.cert_dir);
            let path = self.cert_dir.join(format!("{name}.der.pending"));
            let _ = std::fs::write(&path, cert);
            (path, self.cert_dir.join(format!("{name}.der")))
        });
        let uid = unit.uid.as_ref().and_then(|u| hex::decode(u).ok());
        let kind = match &unit.result {
            UnitResult::Passed => RecordKind::UnitPassed(UnitPassed {
                job_id: self.job_id,
                run_id: self.run_id,
                counter,
                channel: unit.channel,
                device_type: unit.device_type.clone().unwrap_or_default(),
                uid: uid.unwrap_or_default(),
                serial: unit.serial.clone().unwrap_or_default(),
                cert_sha256: hex32(&unit.cert_sha256).unwrap_or_default(),
                firmware_sha256: hex32(&Some(unit.firmware_sha256.clone())).unwrap_or_default(),
                lock_state: unit.lock_raw.clone(),
                lock_level: unit.lock_level.clone().unwrap_or_else(|| "none".to_owned()),
                timings: unit.timings_us.clone(),
                rework_of: None,
            }),
            UnitResult::Failed { stage, reason } => RecordKind::UnitFailed(UnitFailed {
                job_id: self.job_id,
                run_id: self.run_id,
                counter,
                channel: unit.channel,
                device_type: unit.device_type.clone(),
                uid,
                serial: unit.serial.clone(),
                cert_sha256: hex32(&unit.cert_sha256),
                firmware_sha256: hex32(&Some(unit.firmware_sha256.clone())),
                stage: stage.clone(),
                reason: reason.clone(),
                timings: unit.timings_us.clone(),
                rework_of: None,
            }),
        };
        self.audit
            .ledger
            .append(kind)
            .map_err(|e| LedgerError::Store(e.to_string()))?;
        if let Some((from, to)) = pending {
            let _ = std::fs::rename(from, to);
        }
        self.maybe_checkpoint()
    }

    fn release_unused(&self, unused: Range<u64>) -> Result<(), LedgerError> {
        self.audit
            .ledger
            .release(
                &self.job_id,
                unused,
                "reserved ahead; the run ended before they were used",
            )
            .map(|_| ())
            .map_err(|e| LedgerError::Store(e.to_string()))
    }

    fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn tick(&self) -> Result<(), LedgerError> {
        let due = {
            let s = self
                .since
                .lock()
                .map_err(|_| LedgerError::Store("poisoned".to_owned()))?;
            s.1.elapsed() >= self.every && self.audit.ledger.log().unprotected() > 0
        };
        if due {
            if let Ok(mut s) = self.since.lock() {
                *s = (0, Instant::now());
            }
            self.audit
                .ledger
                .checkpoint(&self.audit.signer)
                .map_err(|e| LedgerError::Store(e.to_string()))?;
        }
        Ok(())
    }

    fn run_finished(&self, reason: &str) -> Result<(), LedgerError> {
        self.audit
            .append_and_checkpoint(RecordKind::RunStopped(RunStopped {
                job_id: self.job_id,
                run_id: self.run_id,
                reason: reason.to_owned(),
            }))
            .map_err(|e| LedgerError::Store(e.to_string()))
    }
}

/// Certificates left pending by a crash: those whose record reached the log
/// become final; the others belong to units that recovery closed as aborted
/// and are kept apart under `aborted/` (evidence for the OEM, not part of
/// the bundle's certificate set).
fn resolve_pending_certificates(
    log_dir: &std::path::Path,
    cert_dir: &std::path::Path,
    job_id: &[u8; 16],
) -> Result<(), ApplianceError> {
    let pending: Vec<PathBuf> = match std::fs::read_dir(cert_dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pending"))
            .collect(),
        Err(_) => return Ok(()),
    };
    if pending.is_empty() {
        return Ok(());
    }
    let mut recorded = std::collections::HashSet::new();
    scan_log(log_dir, |kind| {
        match kind {
            RecordKind::UnitPassed(u) if u.job_id == *job_id => {
                recorded.insert(u.cert_sha256);
            }
            RecordKind::UnitFailed(u) if u.job_id == *job_id => {
                if let Some(h) = u.cert_sha256 {
                    recorded.insert(h);
                }
            }
            _ => {}
        }
        true
    })?;
    for p in pending {
        let Some(stem) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".der.pending"))
        else {
            continue;
        };
        let hash: Option<[u8; 32]> = hex::decode(stem).ok().and_then(|v| v.try_into().ok());
        if hash.is_some_and(|h| recorded.contains(&h)) {
            let _ = std::fs::rename(&p, cert_dir.join(format!("{stem}.der")));
        } else {
            let aborted = cert_dir.join("aborted");
            let _ = std::fs::create_dir_all(&aborted);
            let _ = std::fs::rename(&p, aborted.join(format!("{stem}.der")));
        }
    }
    Ok(())
}

/// Streams the records of the log in `log_dir` to `f` until it returns false.
fn scan_log(
    log_dir: &std::path::Path,
    mut f: impl FnMut(&RecordKind) -> bool,
) -> Result<(), ApplianceError> {
    let mut file = flashgate_audit::RecordFile::open(&log_dir.join(flashgate_audit::LOG_FILE))?;
    while let Some((_, bytes)) = file
        .next_bytes()
        .map_err(|e| ApplianceError::Audit(e.to_string()))?
    {
        if let Ok(r) = flashgate_audit::Record::decode(bytes) {
            if !f(&r.kind) {
                break;
            }
        }
    }
    Ok(())
}
