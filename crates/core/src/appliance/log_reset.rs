//! `audit reset`: sealing a log that can no longer be trusted as evidence
//! and starting a new segment that carries every job's counters over.

use std::path::PathBuf;
use std::sync::Mutex;

use flashgate_audit::record::{
    LogReset, SealedCheckpoint, UnitsReserved, UnitsUnused, REASON_CARRIED_OVER,
};
use flashgate_audit::{CounterStore, RecordKind, LOG_HIGH_WATER_ID};
use sha2::{Digest, Sha256};

use super::{io_err, rename_synced, sync_dir, write_atomic, Appliance, ApplianceError};

use super::audit::job_imported_record;
use super::counters::HsmCounterStore;
impl Appliance {
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
