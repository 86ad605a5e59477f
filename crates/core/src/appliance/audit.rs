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
    JobImported, LogReset, RunStarted, RunStopped, SealedCheckpoint, UnitFailed, UnitPassed,
    UnitsReserved, UnitsUnused, REASON_CARRIED_OVER,
};
use flashgate_audit::{AuditError, CounterStore, Log, LogOptions, RecordKind, LOG_HIGH_WATER_ID};
use sha2::{Digest, Sha256};

use super::{
    io_err, is_temp_file, rename_synced, sync_dir, write_atomic, Appliance, ApplianceError,
    RemovalState, IMPORTED_PREFIX, LOG_LABEL,
};
use crate::hsm::Token;
use crate::unit::ledger::{Ledger, LedgerError};
use crate::unit::{UnitRecord, UnitResult};

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

impl HsmCounterStore {
    /// Destroys every value of the log's high-water mark (it reads 0 after):
    /// only a log reset does this, and its record keeps the old value.
    fn clear_high_water(&self) -> Result<(), String> {
        let token = self
            .token
            .lock()
            .map_err(|_| "token lock poisoned".to_owned())?;
        for (h, _) in Self::values(&token, &LOG_HIGH_WATER_ID)? {
            token.destroy(h).map_err(|e| e.to_string())?;
        }
        Ok(())
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
    fn forget_audit(&self) {
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
    fn present_jobs(&self) -> Result<Vec<[u8; 16]>, ApplianceError> {
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

    /// Where sealed log segments are kept.
    pub fn sealed_dir(&self) -> PathBuf {
        self.audit_dir().join(SEALED_DIR)
    }

    /// `audit reset`: seals a log that can no longer be trusted as evidence
    /// (its files move, read-only, to `audit/sealed/<n>/`), starts a new
    /// segment whose first record is `log-reset` (committing to the sealed
    /// log's last verified checkpoint and saying what came after it), then,
    /// for each job on the appliance, its `job-imported` record again and
    /// the counter values it had used, reserved and closed as carried over.
    /// The HSM high-water mark moves to the new segment. Refuses a log that
    /// opens cleanly. The caller holds the writer lock.
    pub fn reset_log(&self, reason: &str) -> Result<LogResetReport, ApplianceError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(ApplianceError::ResetWithoutReason);
        }
        let enrollment = self.enrollment()?;
        // Judge the log as it is on disk now, not as this process opened it.
        self.forget_audit();
        let detail = match self.audit() {
            Ok(_) => return Err(ApplianceError::LogIntact),
            Err(ApplianceError::LogDamaged { detail }) => detail,
            Err(e) => return Err(e),
        };
        let dir = self.audit_dir();
        let evidence = examine_log(&dir, &enrollment.record().log_public)?;
        let sealed_root = self.sealed_dir();
        std::fs::create_dir_all(&sealed_root).map_err(io_err("cannot create", &sealed_root))?;
        let segment = next_segment(&sealed_root);
        let sealed = sealed_root.join(segment.to_string());
        std::fs::create_dir(&sealed).map_err(io_err("cannot create", &sealed))?;
        sync_dir(&sealed_root)?;
        for name in [
            flashgate_audit::LOG_FILE,
            flashgate_audit::CHECKPOINTS_FILE,
            flashgate_audit::LEAVES_FILE,
        ] {
            let from = dir.join(name);
            if from.exists() {
                let to = sealed.join(name);
                rename_synced(&from, &to)?;
                set_read_only(&to)?;
            }
        }
        // The certificates those records name go with them (the new
        // segment's bundles hold only the certificates it records).
        if let Ok(rd) = std::fs::read_dir(self.config.state_dir.join("certs")) {
            for job in rd.flatten() {
                let to = sealed.join("certs").join(job.file_name());
                let Ok(files) = std::fs::read_dir(job.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".der") && f.file_type().is_ok_and(|t| t.is_file()) {
                        std::fs::create_dir_all(&to).map_err(io_err("cannot create", &to))?;
                        rename_synced(&f.path(), &to.join(&name))?;
                    }
                }
            }
        }
        set_read_only(&sealed)?;

        // The new segment, and the high-water mark that goes with it.
        let store = HsmCounterStore {
            token: Mutex::new(self.token.another_session()?),
        };
        let high_water = store
            .read(&LOG_HIGH_WATER_ID)
            .map_err(ApplianceError::Audit)?;
        store.clear_high_water().map_err(ApplianceError::Audit)?;
        let audit = self.audit()?;
        let mut records = vec![RecordKind::LogReset(LogReset {
            segment,
            checkpoint: evidence.checkpoint,
            lost_records: evidence.lost_records,
            lost_bytes: evidence.lost_bytes,
            high_water,
            reason: reason.to_owned(),
        })];
        let jobs = self.present_jobs()?;
        for job_id in &jobs {
            let id = hex::encode(job_id);
            let (manifest, policy, sign1) = self.job_import_facts(&id)?;
            records.push(job_imported_record(&manifest, &policy, &sign1));
            let counter = store.read(job_id).map_err(ApplianceError::Audit)?;
            if counter > 0 {
                records.push(RecordKind::UnitsReserved(UnitsReserved {
                    job_id: *job_id,
                    first: 0,
                    count: counter,
                }));
                records.push(RecordKind::UnitsUnused(UnitsUnused {
                    job_id: *job_id,
                    first: 0,
                    count: counter,
                    reason: REASON_CARRIED_OVER.to_owned(),
                }));
            }
        }
        for r in audit.ledger.log().append_many(records) {
            r?;
        }
        audit.ledger.checkpoint(&audit.signer)?;
        Ok(LogResetReport {
            damage: detail,
            segment,
            sealed,
            sealed_records: evidence.records,
            checkpoint_size: evidence.checkpoint.map(|c| c.size),
            lost_records: evidence.lost_records,
            lost_bytes: evidence.lost_bytes,
            high_water,
            jobs: jobs.len(),
        })
    }

    /// The verified manifest, policy and signed manifest bytes of a job on
    /// the appliance.
    fn job_import_facts(
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

    /// Copies the sealed log segments, if any, into `out/sealed/<n>/`
    /// (files as they are, with the certificates their records name under
    /// `certs/<job>/`); returns how many.
    pub fn copy_sealed_segments(&self, out: &std::path::Path) -> Result<usize, ApplianceError> {
        fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Result<(), ApplianceError> {
            std::fs::create_dir_all(to).map_err(io_err("cannot create", to))?;
            for e in std::fs::read_dir(from)
                .map_err(io_err("cannot list", from))?
                .flatten()
            {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    copy_tree(&e.path(), &to.join(e.file_name()))?;
                } else {
                    let bytes =
                        std::fs::read(e.path()).map_err(io_err("cannot read", &e.path()))?;
                    write_atomic(&to.join(e.file_name()), &bytes)?;
                }
            }
            Ok(())
        }
        let Ok(rd) = std::fs::read_dir(self.sealed_dir()) else {
            return Ok(0);
        };
        let mut n = 0;
        for seg in rd.flatten() {
            copy_tree(&seg.path(), &out.join(SEALED_DIR).join(seg.file_name()))?;
            n += 1;
        }
        Ok(n)
    }
}

impl From<flashgate_audit::AuditError> for ApplianceError {
    fn from(e: flashgate_audit::AuditError) -> Self {
        ApplianceError::Audit(e.to_string())
    }
}

/// A log that is damaged or disagrees with the HSM is reported as such, with
/// what to do; other failures (I/O) stay what they are.
fn damage(e: AuditError) -> ApplianceError {
    match e {
        AuditError::Corrupt { .. } | AuditError::LogRolledBack { .. } => {
            ApplianceError::LogDamaged {
                detail: e.to_string(),
            }
        }
        other => other.into(),
    }
}

/// Folder of the sealed segments, under the audit directory.
pub const SEALED_DIR: &str = "sealed";

/// What `audit reset` did.
#[derive(Debug, Clone)]
pub struct LogResetReport {
    /// Why the log could not be trusted.
    pub damage: String,
    /// The sealed segment's number.
    pub segment: u64,
    /// Where it is.
    pub sealed: PathBuf,
    /// Complete frames in the sealed `audit.log`.
    pub sealed_records: u64,
    /// Size of its last verified checkpoint.
    pub checkpoint_size: Option<u64>,
    /// Records after that checkpoint.
    pub lost_records: u64,
    /// Bytes after the records that checkpoint covers.
    pub lost_bytes: u64,
    /// The sealed log's HSM high-water mark.
    pub high_water: u64,
    /// Jobs carried over into the new segment.
    pub jobs: usize,
}

impl std::fmt::Display for LogResetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "the audit log could not be trusted: {}", self.damage)?;
        writeln!(
            f,
            "sealed it as segment {} in {} ({} records; the HSM had counted {})",
            self.segment,
            self.sealed.display(),
            self.sealed_records,
            self.high_water
        )?;
        match self.checkpoint_size {
            Some(size) => writeln!(
                f,
                "its last verified checkpoint covers {size} records; lost after it: {} records ({} bytes), which no signature covers",
                self.lost_records, self.lost_bytes
            )?,
            None => writeln!(
                f,
                "it has no verified checkpoint; lost: all {} records ({} bytes)",
                self.lost_records, self.lost_bytes
            )?,
        }
        write!(
            f,
            "started a new log segment with a log-reset record; {} job(s) carried over at their HSM counters. Send the sealed segment to the OEM with the next audit bundle (`audit export` copies it)",
            self.jobs
        )
    }
}

/// What a damaged log still proves.
struct Evidence {
    records: u64,
    checkpoint: Option<SealedCheckpoint>,
    lost_records: u64,
    lost_bytes: u64,
}

/// Finds the last checkpoint of the log in `dir` that verifies with the log
/// key and matches the records before any damage; counts what follows it.
fn examine_log(dir: &std::path::Path, log_public: &[u8; 65]) -> Result<Evidence, ApplianceError> {
    use flashgate_tlog::{leaf_hash, Tree};
    let mut cps: Vec<SealedCheckpoint> = Vec::new();
    let cp_path = dir.join(flashgate_audit::CHECKPOINTS_FILE);
    if cp_path.exists() {
        let mut file = flashgate_audit::RecordFile::open(&cp_path)?;
        while let Ok(Some((_, bytes))) = file.next_bytes() {
            let sha256: [u8; 32] = Sha256::digest(bytes).into();
            let Ok(u) = flashgate_audit::UnverifiedCheckpoint::parse(bytes) else {
                continue;
            };
            if let Ok(v) = u.verify(log_public) {
                cps.push(SealedCheckpoint {
                    size: v.size(),
                    root: *v.root(),
                    sha256,
                });
            }
        }
    }
    let log_path = dir.join(flashgate_audit::LOG_FILE);
    let file_len = std::fs::metadata(&log_path).map_or(0, |m| m.len());
    let mut tree = Tree::new();
    // Checkpoint sizes never go down in a log this appliance wrote, but a
    // damaged file may say otherwise: look them up by size.
    cps.sort_by_key(|c| c.size);
    let mut best: Option<(SealedCheckpoint, u64)> = None;
    let consider = |tree: &Tree, end: u64, best: &mut Option<(SealedCheckpoint, u64)>| {
        let (size, root) = (tree.size(), tree.root());
        let from = cps.partition_point(|c| c.size < size);
        if let Some(c) = cps[from..]
            .iter()
            .take_while(|c| c.size == size)
            .find(|c| c.root == root)
        {
            *best = Some((*c, end));
        }
    };
    consider(&tree, 0, &mut best);
    let mut records = 0u64;
    if log_path.exists() {
        let mut file = flashgate_audit::RecordFile::open(&log_path)?;
        let mut intact = true;
        let mut prev = [0u8; 32];
        while let Ok(Some((offset, bytes))) = file.next_bytes() {
            records += 1;
            if !intact {
                continue;
            }
            let ok = flashgate_audit::Record::decode(bytes)
                .is_ok_and(|r| r.seq == tree.size() && r.prev == prev);
            if !ok {
                intact = false;
                continue;
            }
            prev = leaf_hash(bytes);
            if tree.push_leaf_hash(prev).is_err() {
                intact = false;
                continue;
            }
            consider(&tree, offset + 4 + bytes.len() as u64, &mut best);
        }
    }
    let covered = best.map_or(0, |(c, _)| c.size);
    let end = best.map_or(0, |(_, e)| e);
    Ok(Evidence {
        records,
        checkpoint: best.map(|(c, _)| c),
        lost_records: records.saturating_sub(covered),
        lost_bytes: file_len.saturating_sub(end),
    })
}

/// The next free segment number under `sealed` (from 1).
fn next_segment(sealed: &std::path::Path) -> u64 {
    std::fs::read_dir(sealed)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1
}

fn set_read_only(path: &std::path::Path) -> Result<(), ApplianceError> {
    let mut perms = std::fs::metadata(path)
        .map_err(io_err("cannot stat", path))?
        .permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(path, perms).map_err(io_err("cannot protect", path))
}

/// The durable ledger of one run: HSM counter first, then the log; a
/// checkpoint at run start and end and every N units or T seconds.
pub struct RunLedger {
    audit: Arc<Audit>,
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
        let cert_dir = appliance.certificate_dir(&job_id);
        settle_certificates(
            &audit.dir,
            &cert_dir,
            &job_id,
            !recovery.was_clean(),
            &mut Vec::new(),
        )?;
        std::fs::create_dir_all(&cert_dir).map_err(io_err("cannot create", &cert_dir))?;
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

    fn certificate_issued(&self, _counter: u64, der: &[u8]) -> Result<(), LedgerError> {
        let name = hex::encode(Sha256::digest(der));
        write_atomic(&self.cert_dir.join(format!("{name}{PENDING}")), der)
            .map_err(|e| LedgerError::Store(e.to_string()))
    }

    fn record(&self, unit: &UnitRecord) -> Result<(), LedgerError> {
        let Some(counter) = unit.counter else {
            return Ok(());
        };
        // The certificate was made pending when it was issued; the record
        // makes it final. A crash in between is settled by recovery.
        let pending = unit.certificate.as_ref().map(|cert| {
            let name = hex::encode(Sha256::digest(cert));
            (
                self.cert_dir.join(format!("{name}{PENDING}")),
                self.cert_dir.join(format!("{name}.der")),
                cert,
            )
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
                rework_of: unit.rework_of,
            }),
            UnitResult::Failed(failure) => RecordKind::UnitFailed(UnitFailed {
                job_id: self.job_id,
                run_id: self.run_id,
                counter,
                channel: unit.channel,
                device_type: unit.device_type.clone(),
                uid,
                serial: unit.serial.clone(),
                cert_sha256: hex32(&unit.cert_sha256),
                firmware_sha256: hex32(&Some(unit.firmware_sha256.clone())),
                stage: failure.stage.as_str().to_owned(),
                reason: failure.reason.clone(),
                timings: unit.timings_us.clone(),
                rework_of: unit.rework_of,
            }),
        };
        self.audit
            .ledger
            .append(kind)
            .map_err(|e| LedgerError::Store(e.to_string()))?;
        if let Some((from, to, cert)) = pending {
            let done = if from.exists() {
                rename_synced(&from, &to)
            } else {
                write_atomic(&to, cert)
            };
            done.map_err(|e| LedgerError::Store(e.to_string()))?;
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

/// Suffix of a certificate issued but not yet recorded.
const PENDING: &str = ".der.pending";

/// The SHA-256 a certificate file's name claims, if it is `<hex>` + `suffix`.
fn named_hash(name: &str, suffix: &str) -> Option<[u8; 32]> {
    name.strip_suffix(suffix)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|v| v.try_into().ok())
}

/// True when the file's content hashes to `hash`.
fn content_matches(path: &std::path::Path, hash: &[u8; 32]) -> bool {
    std::fs::read(path).is_ok_and(|b| <[u8; 32]>::from(Sha256::digest(&b)) == *hash)
}

/// Settles a job's certificate files after a crash. A pending certificate
/// whose unit has a record becomes final; one without belongs to a unit
/// recovery closed as aborted and moves to `aborted/` (evidence for the
/// OEM, outside the bundle's certificate set). A pending file whose content
/// is not what its name says is removed (it is not a certificate anyone
/// got: pending files are written atomically). With `check_all`, or when
/// anything was pending, every final and aborted file is checked against
/// its name (a mismatch moves to `damaged/`) and every recorded unit's
/// certificate against the files: one missing cannot be rebuilt and is
/// reported.
fn settle_certificates(
    log_dir: &std::path::Path,
    cert_dir: &std::path::Path,
    job_id: &[u8; 16],
    check_all: bool,
    lines: &mut Vec<String>,
) -> Result<(), ApplianceError> {
    let Ok(rd) = std::fs::read_dir(cert_dir) else {
        return Ok(());
    };
    let names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_temp_file(n))
        .collect();
    let pending: Vec<&String> = names.iter().filter(|n| n.ends_with(PENDING)).collect();
    if pending.is_empty() && !check_all {
        return Ok(());
    }
    let aborted = cert_dir.join("aborted");
    let damaged = cert_dir.join("damaged");
    // Pending files that are what their names say; the others are removed.
    let mut pending_ok: std::collections::HashMap<[u8; 32], bool> =
        std::collections::HashMap::new();
    for name in &pending {
        let path = cert_dir.join(name);
        match named_hash(name, PENDING).filter(|h| content_matches(&path, h)) {
            Some(h) => {
                pending_ok.insert(h, false);
            }
            None => {
                std::fs::remove_file(&path).map_err(io_err("cannot remove", &path))?;
                lines.push(format!(
                    "removed {}: its content is not the certificate its name says",
                    path.display()
                ));
            }
        }
    }
    // Final and aborted files are what their names say.
    if check_all {
        let aborted_names: Vec<String> = std::fs::read_dir(&aborted)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !is_temp_file(n))
                    .collect()
            })
            .unwrap_or_default();
        for (dir, list) in [(cert_dir, &names), (aborted.as_path(), &aborted_names)] {
            for name in list.iter().filter(|n| n.ends_with(".der")) {
                let path = dir.join(name);
                if named_hash(name, ".der").is_some_and(|h| content_matches(&path, &h)) {
                    continue;
                }
                std::fs::create_dir_all(&damaged).map_err(io_err("cannot create", &damaged))?;
                rename_synced(&path, &damaged.join(name))?;
                lines.push(format!(
                    "moved {} to {}: its content is not the certificate its name says",
                    path.display(),
                    damaged.display()
                ));
            }
        }
    }
    // One pass over the log: which pending certificates have a record, and
    // (with `check_all`) which recorded certificates have no file.
    let mut missing = 0u64;
    let mut first_missing = None;
    scan_log(log_dir, |kind| {
        let (hash, counter) = match kind {
            RecordKind::UnitPassed(u) if u.job_id == *job_id => (u.cert_sha256, u.counter),
            RecordKind::UnitFailed(u) if u.job_id == *job_id => match u.cert_sha256 {
                Some(h) => (h, u.counter),
                None => return true,
            },
            _ => return true,
        };
        if let Some(seen) = pending_ok.get_mut(&hash) {
            *seen = true;
        } else if check_all && !cert_dir.join(format!("{}.der", hex::encode(hash))).exists() {
            missing += 1;
            first_missing.get_or_insert((counter, hash));
        }
        true
    })?;
    for (hash, recorded) in pending_ok {
        let stem = hex::encode(hash);
        let path = cert_dir.join(format!("{stem}{PENDING}"));
        if recorded {
            rename_synced(&path, &cert_dir.join(format!("{stem}.der")))?;
        } else {
            std::fs::create_dir_all(&aborted).map_err(io_err("cannot create", &aborted))?;
            rename_synced(&path, &aborted.join(format!("{stem}.der")))?;
            lines.push(format!(
                "kept the certificate {stem} of a unit that was not recorded in {}",
                aborted.display()
            ));
        }
    }
    if let Some((counter, hash)) = first_missing {
        lines.push(format!(
            "job {}: {missing} recorded certificate(s) have no file and cannot be rebuilt (the log keeps their hashes), the first {} of the unit with counter {counter}",
            hex::encode(job_id),
            hex::encode(hash)
        ));
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
