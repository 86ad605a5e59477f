//! Secure per-unit programming, on many channels at once.
//!
//! Per unit, exactly as DESIGN.md orders it: identify -> reserve ->
//! erase / blank-check / program / verify -> derive -> certificate -> inject
//! -> challenge -> lock -> lock read-back -> record. A unit that fails at any
//! stage is never locked; once a counter value is reserved, the unit counts
//! against the quota whatever happens next.

pub mod ledger;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::object::ObjectHandle;
use flashgate_policy::{KeySource, KeyType, LockLevel as PolicyLock, Policy};
use flashgate_target::{
    Capabilities, Capability, ChallengeRequest, Fixture, FlashRange, Location, LockLevel,
    LockPermission, Space, Target, TargetError,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::appliance::{Appliance, ApplianceError, ImportError};
use crate::cose::{Es256Signer, SignerError};
use crate::identity::{self, DeviceCertificateIssuer, DeviceCertificateRequest, DeviceSecret};
pub use ledger::{Ledger, LedgerError, MemoryLedger};

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
    /// The driver cannot do what the job needs.
    #[error("the {driver} driver cannot {missing}, which this job needs; use a driver and fixture that can")]
    MissingCapability { driver: String, missing: String },
    /// The driver is not the one the job's policy names.
    #[error("this job is for the {wanted} driver, not {given}")]
    WrongDriver { wanted: String, given: String },
    /// The job has expired or is not valid yet.
    #[error("job {id} is not valid now (valid {from} .. {until}); ask the OEM for a new job")]
    OutsideValidity {
        id: String,
        from: String,
        until: String,
    },
    /// The job's images cannot be measured for the challenge.
    #[error("{0}")]
    Firmware(String),
    /// Certificate issuer set-up failed.
    #[error(transparent)]
    Certificate(#[from] identity::CertificateError),
}

/// A reported outcome of one unit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum UnitResult {
    /// Programmed, proved its key, locked as the policy asks.
    Passed,
    /// Stopped at `stage` for `reason`; never locked.
    Failed { stage: String, reason: String },
}

/// What happened to one board.
#[derive(Debug, Clone, Serialize)]
pub struct UnitRecord {
    /// Channel number (from 0).
    pub channel: u32,
    /// Quota counter value, once reserved.
    pub counter: Option<u64>,
    /// Serial number, once assigned.
    pub serial: Option<String>,
    /// Device type as identified.
    pub device_type: Option<String>,
    /// Device UID (hex).
    pub uid: Option<String>,
    /// SHA-256 of the issued certificate (hex).
    pub cert_sha256: Option<String>,
    /// The issued certificate (DER), kept for the audit bundle.
    #[serde(skip)]
    pub certificate: Option<Vec<u8>>,
    /// Digest of the firmware the unit was measured against (hex).
    pub firmware_sha256: String,
    /// Lock level read back, and the raw bytes.
    pub lock: Option<String>,
    /// Lock level read back, by name.
    #[serde(skip)]
    pub lock_level: Option<String>,
    /// Raw lock bytes read back.
    #[serde(skip)]
    pub lock_raw: Vec<u8>,
    /// Whether any secret reached the unit.
    pub secrets_injected: bool,
    /// Time per stage, in microseconds.
    pub timings_us: BTreeMap<String, u64>,
    /// Outcome.
    #[serde(flatten)]
    pub result: UnitResult,
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
    /// Counter values a channel reserves at a time.
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
    /// Why the run ended.
    pub stopped_because: String,
}

impl RunSummary {
    /// Units that failed.
    pub fn failed(&self) -> u64 {
        self.failed_by_stage.values().sum()
    }
}

/// The job-CA key in the HSM as a signer.
struct HsmSigner<'a> {
    appliance: &'a Mutex<Appliance>,
    key: ObjectHandle,
    public: [u8; 65],
}

impl Es256Signer for HsmSigner<'_> {
    fn public_key(&self) -> [u8; 65] {
        self.public
    }
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], SignerError> {
        let a = self
            .appliance
            .lock()
            .map_err(|_| SignerError("HSM lock poisoned".to_owned()))?;
        a.token
            .sign_prehash(self.key, digest)
            .map_err(|e| SignerError(e.to_string()))
    }
}

/// An imported job, opened for programming: its keys found in the token and
/// its firmware decrypted (in the HSM) into zeroizing memory.
pub struct Provisioner {
    appliance: Mutex<Appliance>,
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
    pub fn open(appliance: Appliance, id: &str, ledger: Arc<dyn Ledger>) -> Result<Self, RunError> {
        let (job, images) = appliance.open_job_firmware(id)?;
        check_validity(&job.policy, id)?;
        let master = handle(&appliance, id, "master")?;
        let ca = handle(&appliance, id, "ca")?;
        let issuer = DeviceCertificateIssuer::new(&job.manifest.job_ca_cert)?;
        let ca_public = crate::oem::certs::certificate_public_key(&job.manifest.job_ca_cert)
            .ok_or(identity::CertificateError::Check(
                "the job CA certificate has no P-256 key",
            ))?;
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
            appliance: Mutex::new(appliance),
            job_id: job.manifest.job_id,
            policy: job.policy,
            images,
            regions,
            firmware_digest,
            master,
            ca,
            ca_public,
            issuer,
            ledger,
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
        let a = self
            .appliance
            .lock()
            .map_err(|_| "HSM lock poisoned".to_owned())?;
        f(&a).map_err(|e| e.to_string())
    }

    /// Programs boards from `fixtures` (one per channel) until they run out,
    /// `options.units` boards were taken, the quota is used up or `stop` is
    /// asked. Each channel runs on its own blocking thread under tokio.
    pub async fn run(
        self: Arc<Self>,
        fixtures: Vec<Box<dyn Fixture>>,
        options: RunOptions,
        stop: StopHandle,
        sink: Arc<dyn Fn(RunEvent) + Send + Sync>,
    ) -> RunSummary {
        let start = Instant::now();
        let taken = Arc::new(AtomicU64::new(0));
        let used_before = self.ledger.used();
        let why = Arc::new(Mutex::new(String::from("no more boards")));
        let mut tasks = Vec::new();
        let channels = u32::try_from(fixtures.len()).unwrap_or(u32::MAX);
        for (channel, fixture) in fixtures.into_iter().enumerate() {
            let me = self.clone();
            let (taken, stop, sink, options, why) = (
                taken.clone(),
                stop.clone(),
                sink.clone(),
                options.clone(),
                why.clone(),
            );
            let channel = u32::try_from(channel).unwrap_or(u32::MAX);
            tasks.push(tokio::task::spawn_blocking(move || {
                me.channel_loop(
                    channel, channels, fixture, &options, &taken, &stop, &*sink, &why,
                )
            }));
        }
        // Time-based checkpoints, also while no unit is being recorded.
        let ticker = {
            let me = self.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    let me = me.clone();
                    let _ = tokio::task::spawn_blocking(move || me.ledger.tick()).await;
                }
            })
        };
        let mut summary = RunSummary::default();
        let mut stage_sum: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut with_counter = 0u64;
        for t in tasks {
            let Ok(records) = t.await else { continue };
            for r in records {
                with_counter += u64::from(r.counter.is_some());
                match &r.result {
                    UnitResult::Passed => summary.passed += 1,
                    UnitResult::Failed { stage, .. } => {
                        *summary.failed_by_stage.entry(stage.clone()).or_default() += 1
                    }
                }
                for (s, us) in &r.timings_us {
                    let e = stage_sum.entry(s.clone()).or_default();
                    e.0 += us;
                    e.1 += 1;
                }
            }
        }
        ticker.abort();
        summary.mean_stage_us = stage_sum
            .into_iter()
            .map(|(s, (sum, n))| (s, sum / n.max(1)))
            .collect();
        let used = self.ledger.used();
        summary.counted = used - used_before;
        summary.reserved_unused = summary.counted.saturating_sub(with_counter);
        summary.quota_left = self.policy.job().quota.saturating_sub(used);
        summary.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let why = why.lock().map(|w| w.clone()).unwrap_or_default();
        let stopped = if why == "quota used up" {
            why
        } else if stop.is_stopped() {
            "operator stop".to_owned()
        } else if options
            .units
            .is_some_and(|l| taken.load(Ordering::SeqCst) >= l)
        {
            "unit count reached".to_owned()
        } else {
            why
        };
        summary.stopped_because = match self.ledger.run_finished(&stopped) {
            Ok(()) => stopped,
            Err(e) => format!("{stopped} (the run end could not be recorded: {e})"),
        };
        summary
    }

    #[allow(clippy::too_many_arguments)]
    fn channel_loop(
        &self,
        channel: u32,
        channels: u32,
        mut fixture: Box<dyn Fixture>,
        options: &RunOptions,
        taken: &AtomicU64,
        stop: &StopHandle,
        sink: &(dyn Fn(RunEvent) + Send + Sync),
        why: &Mutex<String>,
    ) -> Vec<UnitRecord> {
        let mut block: Range<u64> = 0..0;
        let mut records = Vec::new();
        let reason = loop {
            if stop.is_stopped() {
                break "stopped".to_owned();
            }
            let board = taken.fetch_add(1, Ordering::SeqCst);
            if options.units.is_some_and(|limit| board >= limit) {
                break "unit count reached".to_owned();
            }
            let target = match fixture.next_board() {
                Ok(Some(t)) => t,
                Ok(None) => break "no more boards".to_owned(),
                Err(e) => break format!("fixture failed: {e}"),
            };
            sink(RunEvent::UnitStarted { channel, board });
            // Near the end of a limited run, reserve no more than this
            // channel's share of what is left, so that few values are left
            // unused (they can never be given back).
            let want = match options.units {
                Some(limit) => {
                    let share = limit
                        .saturating_sub(board)
                        .div_ceil(u64::from(channels.max(1)));
                    options.block.min(share.max(1))
                }
                None => options.block,
            };
            let record = self.provision(channel, board, target, &mut block, want, sink);
            let quota_hit =
                matches!(&record.result, UnitResult::Failed { stage, .. } if stage == "reserve");
            if quota_hit {
                // This channel stops; the others finish the values they reserved.
                if let Ok(mut w) = why.lock() {
                    *w = "quota used up".to_owned();
                }
            }
            match record.result {
                UnitResult::Passed => sink(RunEvent::UnitPassed {
                    channel,
                    board,
                    unit: record.clone(),
                }),
                UnitResult::Failed { .. } => sink(RunEvent::UnitFailed {
                    channel,
                    board,
                    unit: record.clone(),
                }),
            }
            records.push(record);
            if quota_hit {
                break "quota used up".to_owned();
            }
        };
        if let Err(e) = self.ledger.release_unused(block) {
            sink(RunEvent::ChannelStopped {
                channel,
                reason: format!("could not release unused counter values: {e}"),
            });
        }
        sink(RunEvent::ChannelStopped { channel, reason });
        records
    }

    /// One board through every stage.
    fn provision(
        &self,
        channel: u32,
        board: u64,
        mut target: Box<dyn Target>,
        block: &mut Range<u64>,
        block_size: u64,
        sink: &(dyn Fn(RunEvent) + Send + Sync),
    ) -> UnitRecord {
        let mut rec = UnitRecord {
            channel,
            counter: None,
            serial: None,
            device_type: None,
            uid: None,
            cert_sha256: None,
            certificate: None,
            firmware_sha256: hex::encode(self.firmware_digest),
            lock: None,
            lock_level: None,
            lock_raw: Vec::new(),
            secrets_injected: false,
            timings_us: BTreeMap::new(),
            result: UnitResult::Passed,
        };
        let result = self.stages(
            &mut rec,
            &mut *target,
            block,
            block_size,
            &mut |stage, us| {
                sink(RunEvent::StageDone {
                    channel,
                    board,
                    stage: stage.to_owned(),
                    us,
                });
            },
        );
        if let Err((stage, reason)) = result {
            rec.result = UnitResult::Failed { stage, reason };
        }
        if rec.counter.is_some() {
            if let Err(e) = self.ledger.record(&rec) {
                // The unit is counted (its counter value was reserved durably);
                // a lost record is found by the ledger's recovery.
                rec.result = UnitResult::Failed {
                    stage: "record".to_owned(),
                    reason: e.to_string(),
                };
            }
        }
        rec
    }

    #[allow(clippy::too_many_lines)]
    fn stages(
        &self,
        rec: &mut UnitRecord,
        t: &mut dyn Target,
        block: &mut Range<u64>,
        block_size: u64,
        done: &mut dyn FnMut(&str, u64),
    ) -> Result<(), (String, String)> {
        let mut timed = |rec: &mut UnitRecord, stage: &str, start: Instant| {
            let us = micros(start.elapsed());
            rec.timings_us.insert(stage.to_owned(), us);
            done(stage, us);
        };
        let terr = |e: TargetError| {
            (
                e.stage().map_or("connect".to_owned(), |s| s.to_string()),
                e.to_string(),
            )
        };
        let hsm_err = |stage: &str| {
            let stage = stage.to_owned();
            move |e: String| (stage.clone(), e)
        };

        // Identify.
        let s = Instant::now();
        t.connect().map_err(terr)?;
        let info = t.identify().map_err(terr)?;
        rec.device_type = Some(info.device_type.clone());
        rec.uid = Some(hex::encode(&info.uid));
        if !self.policy.target().allows(&info.device_type) {
            return Err((
                "identify".to_owned(),
                format!(
                    "device type {} is not one this job allows ({}); check the board in the fixture",
                    info.device_type,
                    self.policy.target().device_types.join(", ")
                ),
            ));
        }
        info.expect_unlocked().map_err(terr)?;
        timed(rec, "identify", s);

        // Reserve: the counter moves durably before any identity exists.
        let s = Instant::now();
        if block.is_empty() {
            *block = self
                .ledger
                .reserve(block_size)
                .map_err(|e| ("reserve".to_owned(), e.to_string()))?;
        }
        let counter = block.start;
        block.start += 1;
        rec.counter = Some(counter);
        let serial = self.policy.serial_for(counter).ok_or_else(|| {
            (
                "reserve".to_owned(),
                format!("counter {counter} is past the serial range"),
            )
        })?;
        rec.serial = Some(serial.clone());
        timed(rec, "reserve", s);

        // Erase, blank check, program, verify.
        let s = Instant::now();
        t.erase().map_err(terr)?;
        timed(rec, "erase", s);
        let s = Instant::now();
        for r in &self.regions {
            t.blank_check(r.address, r.length).map_err(terr)?;
        }
        timed(rec, "blank-check", s);
        let s = Instant::now();
        for (addr, data) in &self.images {
            t.program(*addr, data).map_err(terr)?;
        }
        timed(rec, "program", s);
        let s = Instant::now();
        for (addr, data) in &self.images {
            t.verify(*addr, data).map_err(terr)?;
        }
        timed(rec, "verify", s);

        // The seed message carries the UID with a one-byte length.
        if info.uid.len() > 255 {
            return Err((
                "derive".to_owned(),
                format!(
                    "the device UID is {} bytes; at most 255 are supported",
                    info.uid.len()
                ),
            ));
        }
        // Derive the unit's secrets (seed by HMAC in the HSM).
        let s = Instant::now();
        let seed = self
            .hsm(|a| {
                a.token.hmac_sha256(
                    self.master,
                    &identity::seed_message(&self.job_id, &info.uid),
                )
            })
            .map_err(hsm_err("derive"))?;
        let mut secrets: Vec<(Location, DeviceSecret)> = Vec::new();
        let mut identity_public = None;
        for spec in self.policy.keys() {
            let location = to_target_location(spec.location);
            let secret = match spec.source {
                KeySource::Derived => identity::expand_key(&seed, &self.job_id, spec),
                KeySource::Random => self.random_secret(spec).map_err(hsm_err("derive"))?,
                _ => {
                    // On-chip: the target makes the key; only the public half leaves it.
                    rec.secrets_injected = true;
                    let public = t.generate_key(location).map_err(terr)?;
                    if spec.role.is_some() {
                        identity_public = Some(public);
                    }
                    continue;
                }
            };
            if spec.role.is_some() {
                let mut scalar = Zeroizing::new([0u8; 32]);
                scalar.copy_from_slice(&secret.value);
                identity_public = Some(
                    flashgate_agent::public_key(&scalar)
                        .map_err(|e| ("derive".to_owned(), e.to_string()))?,
                );
            }
            if spec.key_type != KeyType::P256 && secret.value.is_empty() {
                return Err(("derive".to_owned(), "empty key".to_owned()));
            }
            secrets.push((location, secret));
        }
        drop(seed);
        let identity_public = identity_public.ok_or_else(|| {
            (
                "derive".to_owned(),
                "the policy names no identity key".to_owned(),
            )
        })?;
        timed(rec, "derive", s);

        // Certificate, signed in the HSM by the job CA key and checked back.
        let s = Instant::now();
        let mut cert_serial = [0u8; 16];
        self.hsm(|a| a.token.random(&mut cert_serial))
            .map_err(hsm_err("certificate"))?;
        let signer = HsmSigner {
            appliance: &self.appliance,
            key: self.ca,
            public: self.ca_public,
        };
        let cert = self
            .issuer
            .issue(
                &signer,
                self.policy.certificate(),
                &DeviceCertificateRequest {
                    serial: &serial,
                    uid: &info.uid,
                    public_key: &identity_public,
                    certificate_serial: cert_serial,
                    now: crate::appliance::unix_now(),
                },
            )
            .map_err(|e| ("certificate".to_owned(), e.to_string()))?;
        rec.cert_sha256 = Some(hex::encode(Sha256::digest(&cert)));
        rec.certificate = Some(cert.clone());
        // Kept durably before the device gets it: a crash from here on
        // still leaves the OEM the certificate.
        self.ledger
            .certificate_issued(counter, &cert)
            .map_err(|e| ("certificate".to_owned(), e.to_string()))?;
        timed(rec, "certificate", s);

        // Inject, then wipe the host copies.
        let s = Instant::now();
        rec.secrets_injected = true;
        for (location, secret) in &secrets {
            t.store_secret(*location, &secret.value).map_err(terr)?;
        }
        drop(secrets);
        t.store_secret(
            to_target_location(self.policy.certificate().location),
            &cert,
        )
        .map_err(terr)?;
        timed(rec, "inject", s);

        // Challenge: a fresh nonce from the HSM RNG.
        let s = Instant::now();
        if self.policy.lock().require_challenge {
            let mut nonce = [0u8; 32];
            self.hsm(|a| a.token.random(&mut nonce))
                .map_err(hsm_err("challenge"))?;
            let reply = t
                .challenge(&ChallengeRequest {
                    nonce,
                    regions: self.regions.clone(),
                })
                .map_err(terr)?;
            flashgate_agent::verify_challenge_reply(
                &identity_public,
                &nonce,
                &info.uid,
                &self.firmware_digest,
                &reply,
            )
            .map_err(|e| {
                (
                    "challenge".to_owned(),
                    format!("the device did not prove its key: {e}"),
                )
            })?;
            timed(rec, "challenge", s);
        }

        // Lock, only now, and read it back.
        let want = match self.policy.lock().level {
            PolicyLock::None => None,
            PolicyLock::Permanent => Some(LockLevel::Permanent),
            _ => Some(LockLevel::Readout),
        };
        if let Some(level) = want {
            let s = Instant::now();
            t.set_lock(LockPermission::allow(level)).map_err(terr)?;
            timed(rec, "lock", s);
            let s = Instant::now();
            let state = t.read_lock().map_err(terr)?;
            rec.lock = Some(format!("{} ({})", state.level, hex::encode(&state.raw)));
            rec.lock_level = Some(state.level.to_string());
            rec.lock_raw = state.raw.clone();
            if state.level != level {
                return Err((
                    "lock-readback".to_owned(),
                    format!("lock read back as {}, expected {level}", state.level),
                ));
            }
            timed(rec, "lock-readback", s);
        }
        Ok(())
    }

    fn random_secret(&self, spec: &flashgate_policy::KeySpec) -> Result<DeviceSecret, String> {
        let len = if spec.key_type == KeyType::P256 {
            32
        } else {
            spec.key_type.secret_len()
        };
        let mut value = Zeroizing::new(vec![0u8; len]);
        loop {
            self.hsm(|a| a.token.random(&mut value))?;
            if spec.key_type != KeyType::P256 || p256::SecretKey::from_slice(&value).is_ok() {
                break;
            }
        }
        Ok(DeviceSecret {
            name: spec.name.as_str().to_owned(),
            key_type: spec.key_type,
            value,
        })
    }
}

/// The capabilities a driver must have for a job with this policy.
pub fn required_capabilities(policy: &Policy) -> Capabilities {
    let mut c = Capabilities::from([
        Capability::ProgramFlash,
        Capability::ReadFlash,
        Capability::ReadUid,
    ]);
    // The certificate is always stored; keys unless they are made on the chip.
    c.insert(Capability::StoreSecret);
    if policy.keys().iter().any(|k| k.source == KeySource::OnChip) {
        c.insert(Capability::OnChipKeygen);
    }
    if policy.lock().require_challenge {
        c.insert(Capability::AnswerChallenge);
    }
    if policy.lock().level != PolicyLock::None {
        c.insert(Capability::SetLock);
        c.insert(Capability::ReadLock);
    }
    c
}

/// Fails, before any unit is touched, when `driver` is not the policy's or
/// lacks a capability the job needs.
pub fn check_driver(
    policy: &Policy,
    driver: &str,
    capabilities: Capabilities,
) -> Result<(), RunError> {
    let wanted = policy.target().driver.as_str();
    if wanted != driver {
        return Err(RunError::WrongDriver {
            wanted: wanted.to_owned(),
            given: driver.to_owned(),
        });
    }
    let missing = capabilities.missing(&required_capabilities(policy));
    if !missing.is_empty() {
        return Err(RunError::MissingCapability {
            driver: driver.to_owned(),
            missing: missing
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(())
}

/// Fails when the job is outside its validity window now.
pub fn check_validity(policy: &Policy, id: &str) -> Result<(), RunError> {
    let now = crate::appliance::unix_now();
    let j = policy.job();
    if now < j.not_before || now >= j.not_after {
        return Err(RunError::OutsideValidity {
            id: id.to_owned(),
            from: crate::display::time(j.not_before),
            until: crate::display::time(j.not_after),
        });
    }
    Ok(())
}

fn to_target_location(l: flashgate_policy::Location) -> Location {
    let space = match l.space {
        flashgate_policy::Space::Flash => Space::Flash,
        flashgate_policy::Space::Eeprom => Space::Eeprom,
        flashgate_policy::Space::Otp => Space::Otp,
        _ => Space::KeyStore,
    };
    Location {
        space,
        offset: l.offset,
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

/// A fixture that makes each board with a closure: for targets reached
/// through a programmer on a port, where each board means opening the port
/// again (the operator has swapped the board in the fixture).
pub struct BoardsFrom<F> {
    make: F,
    left: u64,
}

impl<F> std::fmt::Debug for BoardsFrom<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoardsFrom")
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl<F> BoardsFrom<F>
where
    F: FnMut() -> Result<Box<dyn Target>, TargetError> + Send,
{
    /// At most `boards` boards, each made by `make`.
    pub fn new(boards: u64, make: F) -> Self {
        Self { make, left: boards }
    }
}

impl<F> Fixture for BoardsFrom<F>
where
    F: FnMut() -> Result<Box<dyn Target>, TargetError> + Send,
{
    fn next_board(&mut self) -> Result<Option<Box<dyn Target>>, TargetError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        (self.make)().map(Some)
    }
}

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
