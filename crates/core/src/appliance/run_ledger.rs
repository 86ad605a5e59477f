//! The durable ledger of one run, and the settling of device certificates
//! written before a crash.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flashgate_audit::record::{RunStarted, RunStopped, UnitFailed, UnitPassed};
use flashgate_audit::RecordKind;
use sha2::{Digest, Sha256};

use super::{io_err, is_temp_file, rename_synced, write_atomic, Appliance, ApplianceError};
use crate::unit::ledger::{Ledger, LedgerError};
use crate::unit::{UnitRecord, UnitResult};

use super::audit::Audit;
/// The durable ledger of one run: HSM counter first, then the log; a
/// checkpoint at run start and end and every N units or T seconds.
pub struct RunLedger {
    audit: Arc<Audit>,
    job_id: [u8; 16],
    run_id: [u8; 16],
    quota: u64,
    /// Unit records counted before a checkpoint is signed: the policy's
    /// `checkpoint_every_units` less one per other channel (see
    /// [`RunLedger::maybe_checkpoint`]).
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
                every_units: units_before_checkpoint(a.checkpoint_every_units, channels),
                every: std::time::Duration::from_secs(u64::from(a.checkpoint_every_seconds)),
                since: Mutex::new((0, Instant::now())),
                cert_dir: appliance.certificate_dir(&job_id),
                used: std::sync::atomic::AtomicU64::new(recovery.counter),
            },
            recovery,
        ))
    }

    /// Counts a unit and signs a checkpoint when enough were counted.
    ///
    /// A channel counts its unit after the record is durable, and the
    /// checkpoint signs the log as it is when signed. The count stays
    /// locked until the checkpoint is signed, so a channel that finishes a
    /// unit meanwhile waits here before it can start another: when the log
    /// is signed, each other channel holds at most one durable unit not yet
    /// counted, which then counts towards the next checkpoint. The threshold
    /// is lowered by one per other channel so that no checkpoint covers more
    /// than the policy's units since the one before. (Releasing the count
    /// before signing let channels add units while the signer waited for
    /// the log, and about one checkpoint in 3,000 covered 101 of 100.)
    fn maybe_checkpoint(&self) -> Result<(), LedgerError> {
        self.checkpoint_when(|s| {
            s.0 += 1;
            s.0 >= self.every_units || s.1.elapsed() >= self.every
        })
    }

    /// Signs a checkpoint if `due` says so, holding the count (units since
    /// the last checkpoint, and when it was) from the decision until it is
    /// reset after signing.
    fn checkpoint_when(
        &self,
        due: impl FnOnce(&mut (u64, Instant)) -> bool,
    ) -> Result<(), LedgerError> {
        let mut s = self
            .since
            .lock()
            .map_err(|_| LedgerError::Store("poisoned".to_owned()))?;
        if due(&mut s) {
            self.audit
                .ledger
                .checkpoint(&self.audit.signer)
                .map_err(|e| LedgerError::Store(e.to_string()))?;
            *s = (0, Instant::now());
        }
        Ok(())
    }
}

/// The count at which [`RunLedger::maybe_checkpoint`] signs: the policy's
/// `every` units less one per channel beyond the first, at least 1.
fn units_before_checkpoint(every: u32, channels: u32) -> u64 {
    u64::from(every)
        .saturating_sub(u64::from(channels.saturating_sub(1)))
        .max(1)
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
        self.checkpoint_when(|s| {
            s.1.elapsed() >= self.every && self.audit.ledger.log().unprotected() > 0
        })
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
pub(super) fn settle_certificates(
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
        if kind.job_id() != job_id {
            return true;
        }
        let Some((counter, &hash)) = kind.issued_certificate() else {
            return true;
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
pub(super) fn scan_log(
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
