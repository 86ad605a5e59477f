//! Secure per-unit programming, on many channels at once.
//!
//! Per unit, in the order docs/FORMATS.md §10 gives: identify -> reserve ->
//! erase / blank-check / program / verify -> derive -> certificate -> inject
//! -> challenge -> lock -> lock read-back -> record. A unit that fails at any
//! stage is never locked; once a counter value is reserved, the unit counts
//! against the quota whatever happens next.

mod blank;
mod uid_index;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::object::ObjectHandle;
use flashgate_policy::{KeySource, KeyType, Policy};
use flashgate_target::{
    Capabilities, ChallengeRequest, Fixture, FlashRange, Location, LockLevel, LockPermission,
    Target, TargetError,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::appliance::{Appliance, ApplianceError, ImportError};
use crate::cose::{Es256Signer, SignerError};
use crate::identity::{self, DeviceCertificateIssuer, DeviceCertificateRequest, DeviceSecret};
pub use crate::unit::ledger::{Ledger, LedgerError, MemoryLedger};
pub use crate::unit::{FailureKind, UnitFailure, UnitRecord, UnitResult, UnitStage};
pub use blank::blank_check_ranges;
pub use uid_index::{Attempt, AttemptState, UidIndex, UidIndexError};

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
    /// The driver cannot run the job.
    #[error(transparent)]
    Driver(#[from] crate::drivers::DriverMismatch),
    /// The job has expired or is not valid yet.
    #[error("job {id} is not valid now (valid {from} .. {until}); ask the OEM for a new job")]
    OutsideValidity {
        id: String,
        from: String,
        until: String,
    },
    /// The job's quota is used up: no board would be counted.
    #[error("job {id} has used all {quota} units of its quota; no board was taken. Ask the OEM for a new job to provision more units")]
    QuotaUsedUp { id: String, quota: u64 },
    /// The job's images cannot be measured for the challenge.
    #[error("{0}")]
    Firmware(String),
    /// Certificate issuer set-up failed.
    #[error(transparent)]
    Certificate(#[from] identity::CertificateError),
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
    /// The most counter values a channel reserves at a time. A channel
    /// reserves about one second of its own production, at least one value,
    /// never more than this, than the boards its fixture can still deliver
    /// or than its share of `units`.
    pub block: u64,
}

/// What one channel did, summed as it goes (nothing per unit is kept).
#[derive(Debug, Default)]
struct ChannelTotals {
    boards: u64,
    passed: u64,
    failed_by_stage: BTreeMap<String, u64>,
    stage_sum: BTreeMap<String, (u64, u64)>,
    with_counter: u64,
    fixtures_failed: u64,
    fixture_error: Option<String>,
}

impl ChannelTotals {
    fn add(&mut self, r: &UnitRecord) {
        self.boards += 1;
        self.with_counter += u64::from(r.counter.is_some());
        match &r.result {
            UnitResult::Passed => self.passed += 1,
            UnitResult::Failed(f) => {
                *self
                    .failed_by_stage
                    .entry(f.stage.as_str().to_owned())
                    .or_default() += 1;
            }
        }
        for (s, us) in &r.timings_us {
            let e = self.stage_sum.entry(s.clone()).or_default();
            e.0 += us;
            e.1 += 1;
        }
    }

    fn merge(&mut self, o: ChannelTotals) {
        self.boards += o.boards;
        self.passed += o.passed;
        self.with_counter += o.with_counter;
        self.fixtures_failed += o.fixtures_failed;
        if self.fixture_error.is_none() {
            self.fixture_error = o.fixture_error;
        }
        for (k, v) in o.failed_by_stage {
            *self.failed_by_stage.entry(k).or_default() += v;
        }
        for (k, (sum, n)) in o.stage_sum {
            let e = self.stage_sum.entry(k).or_default();
            e.0 += sum;
            e.1 += n;
        }
    }
}

/// One channel's share of a run.
struct Channel<'a> {
    channel: u32,
    channels: u32,
    options: &'a RunOptions,
    taken: &'a AtomicU64,
    stop: &'a StopHandle,
    sink: &'a (dyn Fn(RunEvent) + Send + Sync),
    why: &'a Mutex<Option<String>>,
}

const STOP_QUOTA: &str = "quota used up";

fn set_reason(why: &Mutex<Option<String>>, reason: &str) {
    if let Ok(mut w) = why.lock() {
        w.get_or_insert_with(|| reason.to_owned());
    }
}

fn stop_reason(f: &UnitFailure) -> String {
    match f.kind {
        FailureKind::QuotaExhausted => STOP_QUOTA.to_owned(),
        FailureKind::SerialRangeExhausted => "serial range used up".to_owned(),
        FailureKind::OutsideWindow => "job window closed".to_owned(),
        FailureKind::Target
        | FailureKind::BoardRefused
        | FailureKind::ChallengeFailed
        | FailureKind::LockMismatch
        | FailureKind::Ledger
        | FailureKind::Hsm
        | FailureKind::Provisioning => format!("{}: {}", f.kind, f.reason),
    }
}

/// How many counter values a channel reserves next: about one second of
/// its measured production (one value before anything is measured), at most
/// `options.block`, no more than the fixture's boards still to come, and
/// near the end of a limited run no more than the channel's share of what
/// is left (unused values can never be given back).
fn reservation_size(
    options: &RunOptions,
    board: u64,
    channels: u32,
    unit_time: Option<Duration>,
    boards_left: Option<u64>,
) -> u64 {
    let by_rate = unit_time.map_or(1, |t| {
        let per_second = Duration::from_secs(1).as_nanos() / t.as_nanos().max(1);
        u64::try_from(per_second).unwrap_or(u64::MAX)
    });
    let mut want = by_rate.clamp(1, options.block.max(1));
    if let Some(left) = boards_left {
        // This board plus those still to come.
        want = want.min(left.saturating_add(1));
    }
    if let Some(limit) = options.units {
        let share = limit
            .saturating_sub(board)
            .div_ceil(u64::from(channels.max(1)));
        want = want.min(share.max(1));
    }
    want
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
    /// Channels whose fixture failed to hand over a board.
    pub fixtures_failed: u64,
    /// The first such failure, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixture_error: Option<String>,
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
    appliance: &'a Appliance,
    key: ObjectHandle,
    public: [u8; 65],
}

impl Es256Signer for HsmSigner<'_> {
    fn public_key(&self) -> [u8; 65] {
        self.public
    }
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], SignerError> {
        self.appliance
            .token
            .sign_prehash(self.key, digest)
            .map_err(|e| SignerError(e.to_string()))
    }
}

/// An imported job, opened for programming: its keys found in the token and
/// its firmware decrypted (in the HSM) into zeroizing memory.
pub struct Provisioner {
    appliance: Arc<Appliance>,
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
    uids: UidIndex,
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
    pub fn open(
        appliance: Arc<Appliance>,
        id: &str,
        ledger: Arc<dyn Ledger>,
    ) -> Result<Self, RunError> {
        let (job, images) = appliance.open_job_firmware(id)?;
        let uids = UidIndex::new(&appliance.job_dir(id).join("uids"));
        check_validity(&job.policy, id, appliance.now())?;
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
            appliance,
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
            uids,
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
        f(&self.appliance).map_err(|e| e.to_string())
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
        let why = Arc::new(Mutex::new(None));
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
                    Channel {
                        channel,
                        channels,
                        options: &options,
                        taken: &taken,
                        stop: &stop,
                        sink: &*sink,
                        why: &why,
                    },
                    fixture,
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
        let mut all = ChannelTotals::default();
        for t in tasks {
            let Ok(totals) = t.await else { continue };
            all.merge(totals);
        }
        ticker.abort();
        summary.passed = all.passed;
        summary.failed_by_stage = all.failed_by_stage;
        summary.fixtures_failed = all.fixtures_failed;
        summary.fixture_error = all.fixture_error.clone();
        summary.mean_stage_us = all
            .stage_sum
            .into_iter()
            .map(|(s, (sum, n))| (s, sum / n.max(1)))
            .collect();
        let with_counter = all.with_counter;
        let used = self.ledger.used();
        summary.counted = used - used_before;
        summary.reserved_unused = summary.counted.saturating_sub(with_counter);
        summary.quota_left = self.policy.job().quota.saturating_sub(used);
        summary.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let why = why.lock().ok().and_then(|w| w.clone());
        let stopped = if let Some(why) = why {
            why
        } else if stop.is_stopped() {
            "operator stop".to_owned()
        } else if options
            .units
            .is_some_and(|l| taken.load(Ordering::SeqCst) >= l)
        {
            "unit count reached".to_owned()
        } else if all.fixtures_failed > 0 && all.boards == 0 {
            "no board could be reached".to_owned()
        } else {
            "no more boards".to_owned()
        };
        summary.stopped_because = match self.ledger.run_finished(&stopped) {
            Ok(()) => stopped,
            Err(e) => format!("{stopped} (the run end could not be recorded: {e})"),
        };
        summary
    }

    fn channel_loop(&self, ch: Channel<'_>, mut fixture: Box<dyn Fixture>) -> ChannelTotals {
        let Channel {
            channel,
            channels,
            options,
            taken,
            stop,
            sink,
            why,
        } = ch;
        let mut block: Range<u64> = 0..0;
        let mut totals = ChannelTotals::default();
        // Time per unit on this channel, to size reservations to about a
        // second of production (a crash then burns little quota).
        let mut unit_time: Option<Duration> = None;
        let quota = self.policy.job().quota;
        let reason = loop {
            if stop.is_stopped() {
                break "stopped".to_owned();
            }
            // A used-up quota stops the channel before it takes a board.
            if block.is_empty() && self.ledger.used() >= quota {
                set_reason(why, STOP_QUOTA);
                break STOP_QUOTA.to_owned();
            }
            let board = taken.fetch_add(1, Ordering::SeqCst);
            if options.units.is_some_and(|limit| board >= limit) {
                break "unit count reached".to_owned();
            }
            let target = match fixture.next_board() {
                Ok(Some(t)) => t,
                Ok(None) => break "no more boards".to_owned(),
                Err(e) => {
                    totals.fixtures_failed += 1;
                    totals.fixture_error = Some(e.to_string());
                    break format!("fixture failed: {e}");
                }
            };
            sink(RunEvent::UnitStarted { channel, board });
            let want = reservation_size(options, board, channels, unit_time, fixture.boards_left());
            let started = Instant::now();
            let record = self.provision(channel, board, target, &mut block, want, sink);
            if record.counter.is_some() {
                let t = started.elapsed();
                unit_time = Some(unit_time.map_or(t, |m| (m * 3 + t) / 4));
            }
            totals.add(&record);
            let stops = match &record.result {
                UnitResult::Failed(f) if f.kind.stops_the_run() => Some(stop_reason(f)),
                UnitResult::Failed(_) | UnitResult::Passed => None,
            };
            if let Some(r) = &stops {
                // This channel stops; the others finish the values they reserved.
                set_reason(why, r);
            }
            let event = match record.result {
                UnitResult::Passed => RunEvent::UnitPassed {
                    channel,
                    board,
                    unit: record,
                },
                UnitResult::Failed(_) => RunEvent::UnitFailed {
                    channel,
                    board,
                    unit: record,
                },
            };
            sink(event);
            if let Some(r) = stops {
                break r;
            }
        };
        if let Err(e) = self.ledger.release_unused(block) {
            sink(RunEvent::ChannelStopped {
                channel,
                reason: format!("could not release unused counter values: {e}"),
            });
        }
        sink(RunEvent::ChannelStopped { channel, reason });
        totals
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
            rework_of: None,
            timings_us: BTreeMap::new(),
            result: UnitResult::Passed,
        };
        let mut uid = Vec::new();
        let result = self.stages(
            &mut rec,
            &mut uid,
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
        if let Err(f) = result {
            rec.result = UnitResult::Failed(f);
        }
        if let Some(counter) = rec.counter {
            if let Err(e) = self.ledger.record(&rec) {
                // The unit is counted (its counter value was reserved durably);
                // a lost record is found by the ledger's recovery.
                rec.result = UnitResult::Failed(UnitFailure::new(
                    UnitStage::Record,
                    FailureKind::Ledger,
                    e.to_string(),
                ));
            } else {
                let state = match rec.result {
                    UnitResult::Passed => AttemptState::Passed,
                    UnitResult::Failed(_) => AttemptState::Failed,
                };
                // The record is durable; a lost index update leaves the
                // entry `reserved`, which is settled as an aborted attempt.
                let _ = self.uids.note(&uid, Attempt { counter, state });
            }
        }
        rec
    }

    #[allow(clippy::too_many_lines)]
    fn stages(
        &self,
        rec: &mut UnitRecord,
        uid: &mut Vec<u8>,
        t: &mut dyn Target,
        block: &mut Range<u64>,
        block_size: u64,
        done: &mut dyn FnMut(&str, u64),
    ) -> Result<(), UnitFailure> {
        let mut timed = |rec: &mut UnitRecord, stage: UnitStage, start: Instant| {
            let us = micros(start.elapsed());
            rec.timings_us.insert(stage.as_str().to_owned(), us);
            done(stage.as_str(), us);
        };
        let terr = |e: TargetError| UnitFailure::target(&e);
        let hsm_err =
            |stage: UnitStage| move |e: String| UnitFailure::new(stage, FailureKind::Hsm, e);

        // Identify.
        let s = Instant::now();
        t.connect().map_err(terr)?;
        let info = t.identify().map_err(terr)?;
        rec.device_type = Some(info.device_type.clone());
        rec.uid = Some(hex::encode(&info.uid));
        uid.clone_from(&info.uid);
        if !self.policy.target().allows(&info.device_type) {
            return Err(UnitFailure::new(
                UnitStage::Identify,
                FailureKind::BoardRefused,
                format!(
                    "device type {} is not one this job allows ({}); check the board in the fixture",
                    info.device_type,
                    self.policy.target().device_types.join(", ")
                ),
            ));
        }
        info.expect_unlocked().map_err(terr)?;
        let Some(_claim) = self.uids.claim(&info.uid) else {
            return Err(UnitFailure::new(
                UnitStage::Identify,
                FailureKind::BoardRefused,
                format!(
                    "another channel is provisioning a board with the same UID {} right now; check the fixtures for a cloned or misreported UID",
                    hex::encode(&info.uid)
                ),
            ));
        };
        let previous = self.uids.lookup(&info.uid).map_err(|e| {
            UnitFailure::new(UnitStage::Identify, FailureKind::Ledger, e.to_string())
        })?;
        match previous {
            Some(Attempt {
                counter,
                state: AttemptState::Passed,
            }) => {
                return Err(UnitFailure::new(
                    UnitStage::Identify,
                    FailureKind::BoardRefused,
                    format!(
                        "this board (UID {}) was already provisioned by this job as serial {} (counter {counter}); take it out of the line, it is not counted again",
                        hex::encode(&info.uid),
                        self.policy.serial_for(counter).unwrap_or_default()
                    ),
                ))
            }
            // A failed or aborted earlier attempt: this is a rework.
            Some(a) => rec.rework_of = Some(a.counter),
            None => {}
        }
        timed(rec, UnitStage::Identify, s);

        // The job CA signs only inside the job window: checked for every
        // unit, before anything is counted.
        let now = self.appliance.now();
        let window = self.policy.job();
        if now < window.not_before || now >= window.not_after {
            return Err(UnitFailure::new(
                UnitStage::Reserve,
                FailureKind::OutsideWindow,
                format!(
                    "the job window ({} .. {}) is closed; no more units can be provisioned for this job, ask the OEM for a new one",
                    crate::display::time(window.not_before),
                    crate::display::time(window.not_after)
                ),
            ));
        }

        // Reserve: the counter moves durably before any identity exists.
        let s = Instant::now();
        if block.is_empty() {
            *block = self.ledger.reserve(block_size).map_err(|e| {
                let kind = match e {
                    LedgerError::QuotaExhausted { .. } => FailureKind::QuotaExhausted,
                    LedgerError::Store(_) => FailureKind::Ledger,
                };
                UnitFailure::new(UnitStage::Reserve, kind, e.to_string())
            })?;
        }
        let counter = block.start;
        block.start += 1;
        rec.counter = Some(counter);
        // Noted before any identity is issued: a crash from here on leaves
        // the UID `reserved`, i.e. an aborted attempt that may be reworked.
        self.uids
            .note(
                &info.uid,
                Attempt {
                    counter,
                    state: AttemptState::Reserved,
                },
            )
            .map_err(|e| {
                UnitFailure::new(UnitStage::Reserve, FailureKind::Ledger, e.to_string())
            })?;
        let serial = self.policy.serial_for(counter).ok_or_else(|| {
            UnitFailure::new(
                UnitStage::Reserve,
                FailureKind::SerialRangeExhausted,
                format!(
                    "counter {counter} is past the policy's serial range; the job cannot provision more units, ask the OEM for a new job"
                ),
            )
        })?;
        rec.serial = Some(serial.clone());
        timed(rec, UnitStage::Reserve, s);

        // Erase, blank check, program, verify.
        let s = Instant::now();
        t.erase().map_err(terr)?;
        timed(rec, UnitStage::Erase, s);
        // Blank check of the flash the policy names (by default what the
        // images do not cover; verify reads the images themselves).
        let blank = self.policy.target().blank_check;
        if blank != flashgate_policy::BlankCheck::None {
            let s = Instant::now();
            for r in blank_check_ranges(blank, &info.flash, &self.regions) {
                t.blank_check(r.address, r.length).map_err(terr)?;
            }
            timed(rec, UnitStage::BlankCheck, s);
        }
        let s = Instant::now();
        for (addr, data) in &self.images {
            t.program(*addr, data).map_err(terr)?;
        }
        timed(rec, UnitStage::Program, s);
        let s = Instant::now();
        for (addr, data) in &self.images {
            t.verify(*addr, data).map_err(terr)?;
        }
        timed(rec, UnitStage::Verify, s);

        // The seed message carries the UID with a one-byte length.
        if info.uid.len() > 255 {
            return Err(UnitFailure::new(
                UnitStage::Derive,
                FailureKind::BoardRefused,
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
            .map_err(hsm_err(UnitStage::Derive))?;
        let mut secrets: Vec<(Location, DeviceSecret)> = Vec::new();
        let mut identity_public = None;
        let provisioning =
            |e: String| UnitFailure::new(UnitStage::Derive, FailureKind::Provisioning, e);
        for spec in self.policy.keys() {
            let location = spec.location;
            let secret = match spec.source {
                KeySource::Derived => identity::expand_key(&seed, &self.job_id, spec),
                KeySource::Random => self
                    .random_secret(spec)
                    .map_err(hsm_err(UnitStage::Derive))?,
                KeySource::OnChip => {
                    // The target makes the key; only the public half leaves it.
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
                        .map_err(|e| provisioning(e.to_string()))?,
                );
            }
            if spec.key_type != KeyType::P256 && secret.value.is_empty() {
                return Err(provisioning("empty key".to_owned()));
            }
            secrets.push((location, secret));
        }
        drop(seed);
        let identity_public = identity_public
            .ok_or_else(|| provisioning("the policy names no identity key".to_owned()))?;
        timed(rec, UnitStage::Derive, s);

        // Certificate, signed in the HSM by the job CA key and checked back.
        let s = Instant::now();
        let mut cert_serial = [0u8; 16];
        self.hsm(|a| a.token.random(&mut cert_serial))
            .map_err(hsm_err(UnitStage::Certificate))?;
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
                    now,
                },
            )
            .map_err(|e| {
                UnitFailure::new(
                    UnitStage::Certificate,
                    FailureKind::Provisioning,
                    e.to_string(),
                )
            })?;
        rec.cert_sha256 = Some(hex::encode(Sha256::digest(&cert)));
        rec.certificate = Some(cert.clone());
        // Kept durably before the device gets it: a crash from here on
        // still leaves the OEM the certificate.
        self.ledger
            .certificate_issued(counter, &cert)
            .map_err(|e| {
                UnitFailure::new(UnitStage::Certificate, FailureKind::Ledger, e.to_string())
            })?;
        timed(rec, UnitStage::Certificate, s);

        // Inject, then wipe the host copies.
        let s = Instant::now();
        rec.secrets_injected = true;
        for (location, secret) in &secrets {
            t.store_secret(*location, &secret.value).map_err(terr)?;
        }
        drop(secrets);
        t.store_secret(self.policy.certificate().location, &cert)
            .map_err(terr)?;
        timed(rec, UnitStage::Inject, s);

        // Challenge: a fresh nonce from the HSM RNG.
        let s = Instant::now();
        let mut proof = None;
        if self.policy.lock().require_challenge {
            let mut nonce = [0u8; 32];
            self.hsm(|a| a.token.random(&mut nonce))
                .map_err(hsm_err(UnitStage::Challenge))?;
            let reply = t
                .challenge(&ChallengeRequest {
                    nonce,
                    regions: self.regions.clone(),
                })
                .map_err(terr)?;
            let p = flashgate_agent::verify_challenge_reply(
                &identity_public,
                &nonce,
                &info.uid,
                &self.firmware_digest,
                &reply,
            )
            .map_err(|e| {
                UnitFailure::new(
                    UnitStage::Challenge,
                    FailureKind::ChallengeFailed,
                    format!("the device did not prove its key: {e}"),
                )
            })?;
            proof = Some(p);
            timed(rec, UnitStage::Challenge, s);
        }

        // Lock, only now, and read it back.
        let want = match self.policy.lock().level {
            LockLevel::None => None,
            level @ (LockLevel::Readout | LockLevel::Permanent) => Some(level),
        };
        if let Some(level) = want {
            // Only a device that proved its key can be locked (the policy
            // parser refuses a lock without a challenge).
            let Some(proof) = proof else {
                return Err(UnitFailure::new(
                    UnitStage::Lock,
                    FailureKind::Provisioning,
                    "the policy locks without a challenge, which no lock permission allows; ask the OEM for a job with lock.require_challenge = true",
                ));
            };
            let s = Instant::now();
            t.set_lock(LockPermission::after(proof, level))
                .map_err(terr)?;
            timed(rec, UnitStage::Lock, s);
            let s = Instant::now();
            let state = t.read_lock().map_err(terr)?;
            rec.lock = Some(format!("{} ({})", state.level, hex::encode(&state.raw)));
            rec.lock_level = Some(state.level.to_string());
            rec.lock_raw = state.raw.clone();
            if state.level != level {
                return Err(UnitFailure::new(
                    UnitStage::LockReadback,
                    FailureKind::LockMismatch,
                    format!("lock read back as {}, expected {level}", state.level),
                ));
            }
            timed(rec, UnitStage::LockReadback, s);
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
    crate::drivers::required(policy)
}

/// Fails, before any unit is touched, when `driver` is not the policy's or
/// lacks a capability the job needs.
pub fn check_driver(
    policy: &Policy,
    driver: &str,
    capabilities: Capabilities,
) -> Result<(), RunError> {
    crate::drivers::check(policy, driver, capabilities).map_err(RunError::from)
}

/// Fails, before any board is taken, when the job has no quota left.
pub fn check_quota(policy: &Policy, id: &str, used: u64) -> Result<(), RunError> {
    let quota = policy.job().quota;
    if used >= quota {
        return Err(RunError::QuotaUsedUp {
            id: id.to_owned(),
            quota,
        });
    }
    Ok(())
}

/// Fails when the job is outside its validity window at `now`.
pub fn check_validity(policy: &Policy, id: &str, now: u64) -> Result<(), RunError> {
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

/// A fixture that makes each board with a closure (kept here for callers
/// of the pipeline; it lives with the driver model).
pub use flashgate_target::BoardsFrom;

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
