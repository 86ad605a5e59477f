//! The CM side: the appliance's configuration, enrollment, and its imported jobs.
//!
//! State lives in two places. The token holds keys and the facts that must
//! not be rolled back by editing files (job markers, security-version
//! floors); the state directory holds the enrollment record and each job's
//! package exactly as received.

mod audit;
mod config;
mod counters;
mod import;
mod lock;
mod log_reset;
mod run_ledger;

pub use audit::{Audit, HsmLogSigner};
pub use config::{ApplianceConfig, ConfigError};
pub use counters::{HsmCounterStore, COUNTER_PREFIX};
pub(crate) use import::job_key_label;
pub use import::{ImportError, ImportedJob};
pub use lock::{WriterLock, LOCK_FILE, RECOVERING};
pub use log_reset::{LogResetReport, SEALED_DIR};
pub use run_ledger::RunLedger;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::cose::SignerError;
use crate::enrollment::TransportKeys;
use crate::enrollment::{appliance_id, Enrollment, EnrollmentError, VerifiedEnrollment};
use crate::hsm::{HsmError, KeyPair, KeyUse, Profile, Token, TransportRole};

/// Label of the key-agreement key pair.
pub const KA_LABEL: &str = "flashgate-appliance-ka";
/// Label of the log-signing key pair.
pub const LOG_LABEL: &str = "flashgate-appliance-log";
/// Label prefix of the RSA transport key pairs: `flashgate-appliance-transport-<role>`.
pub const TRANSPORT_PREFIX: &str = "flashgate-appliance-transport-";
/// Label prefix of a job's keys: `fg-job:<id>:<name>`.
pub const JOB_KEY_PREFIX: &str = "fg-job:";
/// Label prefix of the marker that commits an import: `fg-imported:<id>`.
pub const IMPORTED_PREFIX: &str = "fg-imported:";
/// Label prefix of a product's security-version floor: `fg-svn:<product>`.
pub const SVN_PREFIX: &str = "fg-svn:";

/// Errors of appliance commands (other than import).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplianceError {
    /// Config problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Token problem.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// Already enrolled.
    #[error("the token '{label}' already holds appliance keys; this appliance is enrolled (see `flashgate appliance show`). To re-enroll, use a fresh token")]
    AlreadyEnrolled { label: String },
    /// Not enrolled yet.
    #[error("this appliance is not enrolled yet; run `flashgate appliance init` first")]
    NotEnrolled,
    /// The enrollment record on disk does not match the token.
    #[error("the enrollment record in {path} does not match the keys in the token; restore the record from backup or re-enroll")]
    EnrollmentMismatch { path: PathBuf },
    /// The enrollment record on disk is bad.
    #[error("{path}: {source}")]
    Enrollment {
        path: PathBuf,
        #[source]
        source: EnrollmentError,
    },
    /// File I/O.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Signing failed.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// No such job.
    #[error("no imported job has id {id}; see `flashgate job list`")]
    NoSuchJob { id: String },
    /// The audit log or the quota counter refused or failed.
    #[error("audit log: {0}")]
    Audit(String),
    /// Another process holds the writer lock.
    #[error("{holder}")]
    Busy { holder: String },
    /// The audit log can no longer be trusted; nothing may change until an
    /// operator seals it.
    #[error("the audit log cannot be trusted ({detail}), so this appliance changes no state; read-only commands still work. Export the audit bundles as evidence, then seal the log and start a new segment with `flashgate audit reset --reason TEXT`")]
    LogDamaged { detail: String },
    /// `audit reset` without a reason.
    #[error("say why the log is reset with --reason TEXT; the reason is recorded")]
    ResetWithoutReason,
    /// `audit reset` of a log that opens cleanly.
    #[error("the audit log is intact and agrees with the HSM; there is nothing to reset")]
    LogIntact,
    /// The job was removed before.
    #[error("job {id} was already removed; nothing was done")]
    AlreadyRemoved { id: String },
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ApplianceError + 'a {
    move |source| ApplianceError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The log-signing key, as a signer.
pub type LogSigner<'a> = crate::hsm::TokenKey<&'a Token>;

/// One object on the appliance's token.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TokenObject {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_CLASS`.
    pub class: cryptoki::object::ObjectClass,
    /// The attributes that say what the key can be used for.
    pub attributes: crate::hsm::KeyAttributes,
}

/// An open appliance: config, token and enrollment. One per process: it
/// holds the PKCS#11 module and the one open audit log that every run,
/// import and removal in the process appends to.
#[derive(Debug)]
pub struct Appliance {
    /// The configuration.
    pub config: ApplianceConfig,
    /// The token: the crate's own layers use it, front ends go through the
    /// station.
    pub(crate) token: Token,
    /// The audit log, opened on first use and shared from then on: two
    /// handles on one log in one process would each take the other's
    /// unfinished group commit for a torn tail.
    audit: Mutex<Option<Arc<audit::Audit>>>,
    /// Where "now" comes from.
    clock: Arc<dyn crate::clock::TimeProvider>,
}

impl Appliance {
    /// Opens the token named in the config.
    pub fn open(config: ApplianceConfig) -> Result<Self, ApplianceError> {
        Self::open_with_clock(config, Arc::new(crate::clock::SystemClock))
    }

    /// Opens the token named in the config, reading the time from `clock`.
    pub fn open_with_clock(
        config: ApplianceConfig,
        clock: Arc<dyn crate::clock::TimeProvider>,
    ) -> Result<Self, ApplianceError> {
        let token = Token::open(&config.token)?;
        Ok(Self {
            config,
            token,
            audit: Mutex::new(None),
            clock,
        })
    }

    /// Now, by the appliance's clock (Unix seconds).
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    fn key_pair(&self, label: &str) -> Result<Option<KeyPair>, ApplianceError> {
        let mut public = None;
        let mut private = None;
        for h in self.token.find_by_label(label)? {
            let class = self.token.object_class(h)?;
            if class == cryptoki::object::ObjectClass::PUBLIC_KEY {
                public = Some(h);
            } else if class == cryptoki::object::ObjectClass::PRIVATE_KEY {
                private = Some(h);
            }
        }
        Ok(match (public, private) {
            (Some(public), Some(private)) => Some(KeyPair { public, private }),
            _ => None,
        })
    }

    /// Every labelled object on the token, with its class and attributes
    /// (for `appliance show`: what a PIN holder would find there).
    pub fn token_objects(&self) -> Result<Vec<TokenObject>, ApplianceError> {
        let mut out = Vec::new();
        for (h, label) in self.token.labelled_objects()? {
            out.push(TokenObject {
                label,
                class: self.token.object_class(h)?,
                attributes: self.token.key_attributes(h)?,
            });
        }
        Ok(out)
    }

    /// `appliance init`: creates both key pairs in the token and writes the
    /// signed enrollment record to the state directory. Returns its bytes.
    pub fn enroll(&self) -> Result<(Vec<u8>, VerifiedEnrollment), ApplianceError> {
        if !self.token.find_by_label(KA_LABEL)?.is_empty()
            || !self.token.find_by_label(LOG_LABEL)?.is_empty()
        {
            return Err(ApplianceError::AlreadyEnrolled {
                label: self.config.token.label.clone(),
            });
        }
        let mut profiles = self.token.mechanisms().supported_profiles();
        // Measured on this token with throwaway keys, never assumed; first,
        // so that a failing probe leaves no appliance keys behind.
        let mut probe = crate::hsm::probe::probe(&self.token)?;
        // The RSA-OAEP transport when the token can run it (measured on
        // throwaway keys), strongest first, with its own extraction paths.
        let support = self.token.transport_support();
        if let Some(support) = support {
            let profile = Profile::rsa_oaep(support.hash);
            let findings = self
                .token
                .probe_transport(support)?
                .into_iter()
                .map(|(path, extracted, detail)| crate::hsm::probe::Finding {
                    path: format!("{}/{path}", profile.name()),
                    outcome: if extracted {
                        crate::hsm::probe::Outcome::Possible
                    } else {
                        crate::hsm::probe::Outcome::Refused
                    },
                    detail,
                })
                .collect();
            probe.add(profile, findings);
        }
        let transport = match support {
            Some(support) => {
                let mut spki = Vec::new();
                for role in TransportRole::ALL {
                    let label = transport_label(role);
                    let pair = self
                        .token
                        .generate_transport_key(role, Some(&label), support)?;
                    spki.push(self.token.rsa_public_key_info(pair.public)?);
                }
                profiles.insert(0, Profile::rsa_oaep(support.hash));
                let [image, master, ca] = <[Vec<u8>; 3]>::try_from(spki)
                    .map_err(|_| HsmError::Unexpected("three transport keys expected"))?;
                Some(TransportKeys { image, master, ca })
            }
            None => None,
        };
        let ka = self
            .token
            .generate_p256(KA_LABEL, KA_LABEL.as_bytes(), KeyUse::AesUnwrap)?;
        let log = self
            .token
            .generate_p256(LOG_LABEL, LOG_LABEL.as_bytes(), KeyUse::EcSign)?;
        let ka_public = self.token.ec_point(ka.public)?;
        let log_public = self.token.ec_point(log.public)?;
        let mut record = Enrollment {
            appliance_id: appliance_id(&ka_public, &log_public),
            ka_public,
            log_public,
            token: self.token.description().clone(),
            profiles,
            created: self.now(),
            pin_holder_extraction: Vec::new(),
            extraction_paths: Vec::new(),
            transport,
        };
        record.set_extraction(&probe);
        let signer = LogSigner::new(&self.token, log.private, &log_public)?;
        let bytes = record.sign(&signer)?;
        let verified =
            VerifiedEnrollment::parse(&bytes).map_err(|source| ApplianceError::Enrollment {
                path: self.enrollment_path(),
                source,
            })?;
        fs::create_dir_all(&self.config.state_dir)
            .map_err(io_err("cannot create", &self.config.state_dir))?;
        write_atomic(&self.enrollment_path(), &bytes)?;
        Ok((bytes, verified))
    }

    /// Where the enrollment record lives.
    pub fn enrollment_path(&self) -> PathBuf {
        self.config.state_dir.join("enrollment.cbor")
    }

    /// The enrollment record, checked against the keys in the token.
    pub fn enrollment(&self) -> Result<VerifiedEnrollment, ApplianceError> {
        let path = self.enrollment_path();
        let (Some(ka), Some(log)) = (self.key_pair(KA_LABEL)?, self.key_pair(LOG_LABEL)?) else {
            return Err(ApplianceError::NotEnrolled);
        };
        let bytes = fs::read(&path).map_err(io_err("cannot read", &path))?;
        let e = VerifiedEnrollment::parse(&bytes).map_err(|source| ApplianceError::Enrollment {
            path: path.clone(),
            source,
        })?;
        if e.record().ka_public != self.token.ec_point(ka.public)?
            || e.record().log_public != self.token.ec_point(log.public)?
        {
            return Err(ApplianceError::EnrollmentMismatch { path });
        }
        Ok(e)
    }

    /// The key-agreement private key handle.
    pub(crate) fn ka_private(&self) -> Result<cryptoki::object::ObjectHandle, ApplianceError> {
        self.key_pair(KA_LABEL)?
            .map(|k| k.private)
            .ok_or(ApplianceError::NotEnrolled)
    }

    /// The private transport key of `role`, if enrolled with one.
    pub(crate) fn transport_private(
        &self,
        role: TransportRole,
    ) -> Result<Option<cryptoki::object::ObjectHandle>, ApplianceError> {
        Ok(self.key_pair(&transport_label(role))?.map(|k| k.private))
    }

    /// The log-signing key as a signer.
    pub fn log_signer(&self) -> Result<LogSigner<'_>, ApplianceError> {
        let kp = self
            .key_pair(LOG_LABEL)?
            .ok_or(ApplianceError::NotEnrolled)?;
        Ok(LogSigner::new(
            &self.token,
            kp.private,
            &self.token.ec_point(kp.public)?,
        )?)
    }

    /// Directory of one job.
    pub fn job_dir(&self, id_hex: &str) -> PathBuf {
        self.config.state_dir.join("jobs").join(id_hex)
    }

    /// Finishes or undoes anything a crash left half done: job keys without
    /// a commit marker are destroyed, job directories without one removed,
    /// and a committed job whose directory is gone has its keys destroyed.
    /// Returns what was cleaned, for the log.
    pub fn recover(&self) -> Result<Vec<String>, ApplianceError> {
        let mut cleaned = Vec::new();
        let objects = self.token.labelled_objects()?;
        let committed: std::collections::HashSet<String> = objects
            .iter()
            .filter_map(|(_, l)| l.strip_prefix(IMPORTED_PREFIX).map(str::to_owned))
            .collect();
        for (h, label) in &objects {
            let Some(rest) = label.strip_prefix(JOB_KEY_PREFIX) else {
                continue;
            };
            let id = rest.split(':').next().unwrap_or_default();
            // Only keys of an import that never committed are destroyed. A
            // committed job whose package is missing keeps its keys: a wrong
            // state_dir must never cost a job (`job remove` settles it).
            if !committed.contains(id) {
                self.token.destroy(*h)?;
                cleaned.push(format!(
                    "destroyed key {label} of an import that did not complete"
                ));
            }
        }
        // A security-version floor raised by an import that never committed.
        for (h, label) in &objects {
            if !label.starts_with(SVN_PREFIX) {
                continue;
            }
            let value = self.token.data_value(*h)?;
            if let Some(job) = value.get(4..20) {
                if !committed.contains(&hex::encode(job)) {
                    self.token.destroy(*h)?;
                    cleaned.push(format!(
                        "removed an uncommitted security-version floor {label}"
                    ));
                }
            }
        }
        let jobs = self.config.state_dir.join("jobs");
        if let Ok(rd) = fs::read_dir(&jobs) {
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !committed.contains(&name) || !entry.path().join("package.fgj").exists() {
                    fs::remove_dir_all(entry.path())
                        .map_err(io_err("cannot remove", &entry.path()))?;
                    cleaned.push(format!("removed incomplete job directory {name}"));
                }
            }
        }
        Ok(cleaned)
    }

    /// The imported jobs, oldest first.
    pub fn jobs(&self) -> Result<Vec<ImportedJob>, ApplianceError> {
        let jobs = self.config.state_dir.join("jobs");
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&jobs) else {
            return Ok(out);
        };
        for entry in rd.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if self
                .token
                .find_by_label(&format!("{IMPORTED_PREFIX}{id}"))?
                .is_empty()
            {
                continue;
            }
            if let Ok(job) = ImportedJob::load(&entry.path(), &self.config.trust.keys) {
                out.push(job);
            }
        }
        out.sort_by_key(ImportedJob::imported_at);
        Ok(out)
    }

    /// Removes a job, write-ahead: a marker file and a `job-removal-started`
    /// record first, then the keys and the directory are destroyed, then
    /// `job-removed` is recorded and the marker goes. A crash in between is
    /// completed by [`Appliance::recover_all`]; a failure before the intent
    /// is recorded leaves the job intact. The commit marker stays, so the
    /// same job can never be imported again. The caller holds the writer lock.
    pub fn remove_job(&self, id: &str) -> Result<(), ApplianceError> {
        if self
            .token
            .find_by_label(&format!("{IMPORTED_PREFIX}{id}"))?
            .is_empty()
        {
            return Err(ApplianceError::NoSuchJob { id: id.to_owned() });
        }
        let job_id = crate::package::Manifest::job_id_from_hex(id)
            .ok_or_else(|| ApplianceError::NoSuchJob { id: id.to_owned() })?;
        if self.job_keys(id)?.is_empty() && !self.job_dir(id).exists() {
            return Err(ApplianceError::AlreadyRemoved { id: id.to_owned() });
        }
        // The log must take records before anything is destroyed.
        let audit = self.audit()?;
        let marker = self.removal_marker(id);
        if let Some(dir) = marker.parent() {
            fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        }
        write_atomic(&marker, b"")?;
        if let Err(e) = audit.append_and_checkpoint(flashgate_audit::RecordKind::JobRemovalStarted(
            flashgate_audit::record::JobRemovalStarted { job_id },
        )) {
            let _ = fs::remove_file(&marker);
            return Err(e);
        }
        crash_point("remove-after-intent");
        self.destroy_job(id, true)?;
        self.record_removed(&audit, job_id)?;
        crash_point("remove-after-record");
        remove_file_synced(&marker)
    }

    /// The job's key objects.
    fn job_keys(&self, id: &str) -> Result<Vec<cryptoki::object::ObjectHandle>, ApplianceError> {
        let prefix = format!("{JOB_KEY_PREFIX}{id}:");
        Ok(self
            .token
            .labelled_objects()?
            .into_iter()
            .filter(|(_, l)| l.starts_with(&prefix))
            .map(|(h, _)| h)
            .collect())
    }

    /// Destroys a job's keys, then its directory.
    fn destroy_job(&self, id: &str, crash_points: bool) -> Result<(), ApplianceError> {
        for h in self.job_keys(id)? {
            self.token.destroy(h)?;
        }
        if crash_points {
            crash_point("remove-after-keys");
        }
        let dir = self.job_dir(id);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err("cannot remove", &dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        if crash_points {
            crash_point("remove-after-dir");
        }
        Ok(())
    }

    /// Where the intent of an unfinished removal is marked.
    fn removal_marker(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("removing").join(id)
    }

    /// Settles what a crash left half done, under the writer lock: imports
    /// ([`Appliance::recover`]), removals, leftover temporary files, and,
    /// when the appliance is enrolled, the audit log: the import records,
    /// aborted and unused counter values and pending certificates of every
    /// job. With `log_required` false, a log that cannot be opened is
    /// reported as a line instead of failing (read-only commands).
    pub fn recover_all(&self, log_required: bool) -> Result<Vec<String>, ApplianceError> {
        let mut lines = self.recover()?;
        remove_temp_files(&self.config.state_dir, &mut lines);
        if !self.enrollment_path().exists() {
            return Ok(lines);
        }
        let audit = match self.audit() {
            Ok(a) => a,
            Err(e) if !log_required => {
                lines.push(format!("the audit log was not recovered: {e}"));
                return Ok(lines);
            }
            Err(e) => return Err(e),
        };
        self.finish_removals(&audit, &mut lines)?;
        self.recover_log(&audit, &mut lines)?;
        Ok(lines)
    }

    /// Completes removals whose intent was recorded; drops markers of
    /// removals that never got that far (the job stays).
    fn finish_removals(
        &self,
        audit: &Audit,
        lines: &mut Vec<String>,
    ) -> Result<(), ApplianceError> {
        let dir = self.config.state_dir.join("removing");
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in rd.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let Some(job_id) = crate::package::Manifest::job_id_from_hex(&id) else {
                remove_file_synced(&path)?;
                continue;
            };
            match self.removal_state(audit, &job_id)? {
                RemovalState::NotStarted => {
                    lines.push(format!(
                        "job {id}: a removal stopped before it was recorded; the job is kept"
                    ));
                }
                RemovalState::Started => {
                    self.destroy_job(&id, false)?;
                    self.record_removed(audit, job_id)?;
                    lines.push(format!("job {id}: completed a removal a crash interrupted"));
                }
                RemovalState::Done => {
                    self.destroy_job(&id, false)?;
                }
            }
            remove_file_synced(&path)?;
        }
        Ok(())
    }

    fn record_removed(&self, audit: &Audit, job_id: [u8; 16]) -> Result<(), ApplianceError> {
        audit.append_and_checkpoint(flashgate_audit::RecordKind::JobRemoved(
            flashgate_audit::record::JobRemoved { job_id },
        ))
    }

    /// The security-version floor of a product (0 if none was imported).
    pub fn svn_floor(&self, product: &str) -> Result<u32, ApplianceError> {
        let mut floor = 0;
        for h in self
            .token
            .find_by_label(&format!("{SVN_PREFIX}{product}"))?
        {
            // Value: u32be(security version) || job id (16 bytes).
            let v = self.token.data_value(h)?;
            if let Some(b) = v.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                floor = floor.max(u32::from_be_bytes(b));
            }
        }
        Ok(floor)
    }
}

/// Label of the transport key pair of `role`.
pub fn transport_label(role: TransportRole) -> String {
    format!("{TRANSPORT_PREFIX}{}", role.name())
}

/// Where a job's removal stands in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemovalState {
    /// No `job-removal-started` record.
    NotStarted,
    /// The intent is recorded, its completion is not.
    Started,
    /// `job-removed` follows the intent.
    Done,
}

/// In debug and test builds, `FLASHGATE_TEST_CRASH_AT=<point>` aborts the
/// process at that point, to test what recovery makes of it. Release builds
/// ignore it.
pub(crate) fn crash_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("FLASHGATE_TEST_CRASH_AT").is_ok_and(|v| v == point) {
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// Suffix of the temporary files [`write_atomic`] renames into place.
const TMP_SUFFIX: &str = ".tmp";

/// Writes a file atomically: a temporary file with a unique name in the
/// same directory, write, fsync, rename over `path`, fsync the directory.
/// A crash leaves either the old file or the new one, never a part, and a
/// leftover temporary file that recovery removes.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ApplianceError> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{name}.{}.{}{TMP_SUFFIX}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("cannot create", &tmp))?;
        f.write_all(bytes).map_err(io_err("cannot write", &tmp))?;
        f.sync_all().map_err(io_err("cannot sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("cannot rename", path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Renames `from` to `to` and syncs the directories involved.
pub(crate) fn rename_synced(from: &Path, to: &Path) -> Result<(), ApplianceError> {
    fs::rename(from, to).map_err(io_err("cannot rename", from))?;
    let (a, b) = (from.parent(), to.parent());
    if let Some(a) = a {
        sync_dir(a)?;
    }
    if let Some(b) = b.filter(|b| Some(*b) != a) {
        sync_dir(b)?;
    }
    Ok(())
}

fn remove_file_synced(path: &Path) -> Result<(), ApplianceError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot remove", path)(e)),
    }
    path.parent().map_or(Ok(()), sync_dir)
}

/// Fsyncs a directory, so that the names in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ApplianceError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync", dir))
}

/// True for a leftover temporary file of [`write_atomic`].
pub(crate) fn is_temp_file(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

/// Removes what interrupted atomic writes left in the state directory, the
/// job directories and the certificate directories.
fn remove_temp_files(state_dir: &Path, lines: &mut Vec<String>) {
    let mut dirs = vec![state_dir.to_owned(), state_dir.join("fixtures")];
    for sub in ["jobs", "certs"] {
        if let Ok(rd) = fs::read_dir(state_dir.join(sub)) {
            for e in rd.flatten() {
                dirs.push(e.path());
                dirs.push(e.path().join("aborted"));
            }
        }
    }
    for dir in dirs {
        let Ok(rd) = fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_temp_file(&name) && fs::remove_file(e.path()).is_ok() {
                lines.push(format!(
                    "removed {} left by an interrupted write",
                    e.path().display()
                ));
            }
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    crate::clock::TimeProvider::now(&crate::clock::SystemClock)
}
