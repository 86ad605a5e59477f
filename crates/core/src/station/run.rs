//! A live run: started in the background, watched through its events and a
//! snapshot, stopped on request, ended with its summary.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::Serialize;

use super::{FixtureSet, JobId, Station, StationError};
use crate::appliance::{ApplianceError, ImportedJob, RunLedger, WriterLock};
use crate::pipeline::{Ledger, Provisioner, RunEvent, RunOptions, RunSummary, StopHandle};

/// Events a run keeps for readers that fall behind or reconnect; older
/// ones are dropped (a reader is told how many it missed).
const EVENTS_KEPT: usize = 8192;

/// How a run goes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StartOptions {
    /// Boards to take in all (None: until the fixtures or the quota run out).
    pub units: Option<u64>,
    /// The most counter values a channel reserves at a time.
    pub block: u64,
    /// Who runs the line, as recorded in the audit log.
    pub operator: String,
}

impl StartOptions {
    /// A run by `operator`, until the fixtures or the quota run out.
    pub fn new(operator: impl Into<String>) -> Self {
        Self {
            units: None,
            block: 16,
            operator: operator.into(),
        }
    }

    /// At most `units` boards.
    #[must_use]
    pub fn units(mut self, units: Option<u64>) -> Self {
        self.units = units;
        self
    }

    /// Reserve at most `block` counter values at a time per channel.
    #[must_use]
    pub fn block(mut self, block: u64) -> Self {
        self.block = block;
        self
    }
}

/// An event with its place in the run's stream (ids count from 1).
#[derive(Debug, Clone, Serialize)]
pub struct SeqEvent {
    /// Position in the stream.
    pub id: u64,
    /// The event.
    #[serde(flatten)]
    pub event: RunEvent,
}

/// One channel, as of now.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct ChannelSnapshot {
    /// Channel number (from 0).
    pub channel: u32,
    /// The board in the fixture, if one is being programmed.
    pub board: Option<u64>,
    /// The last stage it finished.
    pub stage: Option<String>,
    /// How its last unit ended: `passed`, or `failed at STAGE`.
    pub last_result: Option<String>,
    /// Why it stopped, once it has.
    pub stopped: Option<String>,
}

/// A run, as of now.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RunSnapshot {
    /// The job.
    pub job: JobId,
    /// Per channel.
    pub channels: Vec<ChannelSnapshot>,
    /// Units passed so far.
    pub passed: u64,
    /// Units failed so far.
    pub failed: u64,
    /// The job's quota.
    pub quota: u64,
    /// Quota not yet used by a unit (values reserved ahead but unused are
    /// given back in the summary).
    pub quota_left: u64,
    /// Whether the run has ended.
    pub finished: bool,
}

struct State {
    events: VecDeque<SeqEvent>,
    next_id: u64,
    snapshot: RunSnapshot,
    summary: Option<RunSummary>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn observe(&self, e: RunEvent) {
        let mut s = self.lock();
        let snap = &mut s.snapshot;
        let channel = |snap: &mut RunSnapshot, c: u32| -> usize {
            let i = c as usize;
            if snap.channels.len() <= i {
                snap.channels.resize_with(i + 1, ChannelSnapshot::default);
                for (n, ch) in snap.channels.iter_mut().enumerate() {
                    ch.channel = u32::try_from(n).unwrap_or(u32::MAX);
                }
            }
            i
        };
        match &e {
            RunEvent::UnitStarted { channel: c, board } => {
                let i = channel(snap, *c);
                snap.channels[i].board = Some(*board);
                snap.channels[i].stage = None;
            }
            RunEvent::StageDone {
                channel: c, stage, ..
            } => {
                let i = channel(snap, *c);
                snap.channels[i].stage = Some(stage.clone());
            }
            RunEvent::UnitPassed { channel: c, .. } => {
                let i = channel(snap, *c);
                snap.channels[i].board = None;
                snap.channels[i].last_result = Some("passed".to_owned());
                snap.passed += 1;
            }
            RunEvent::UnitFailed {
                channel: c, unit, ..
            } => {
                let i = channel(snap, *c);
                snap.channels[i].board = None;
                snap.channels[i].last_result = Some(match unit.result.failure() {
                    Some(f) => format!("failed at {}", f.stage),
                    None => "failed".to_owned(),
                });
                snap.failed += 1;
            }
            RunEvent::ChannelStopped { channel: c, reason } => {
                let i = channel(snap, *c);
                snap.channels[i].board = None;
                snap.channels[i].stopped = Some(reason.clone());
            }
        }
        if let RunEvent::UnitPassed { unit, .. } | RunEvent::UnitFailed { unit, .. } = &e {
            if unit.counter.is_some() {
                snap.quota_left = snap.quota_left.saturating_sub(1);
            }
        }
        let id = s.next_id;
        s.next_id += 1;
        if s.events.len() == EVENTS_KEPT {
            s.events.pop_front();
        }
        s.events.push_back(SeqEvent { id, event: e });
        drop(s);
        self.changed.notify_all();
    }
}

/// A run in progress (or ended). Dropping the handle does not stop the run:
/// call [`stop`](RunHandle::stop) and [`wait`](RunHandle::wait).
pub struct RunHandle {
    job: JobId,
    shared: Arc<Shared>,
    stop: StopHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    used_before: u64,
    recovered: Option<String>,
    certificate_dir: PathBuf,
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle")
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

impl RunHandle {
    /// The job.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// Counter values the job had used before this run.
    pub fn used_before(&self) -> u64 {
        self.used_before
    }

    /// What recovery found of an earlier run that crashed, if anything.
    pub fn recovered(&self) -> Option<&str> {
        self.recovered.as_deref()
    }

    /// Where the run's device certificates go.
    pub fn certificate_dir(&self) -> &std::path::Path {
        &self.certificate_dir
    }

    /// The run as of now.
    pub fn snapshot(&self) -> RunSnapshot {
        self.shared.lock().snapshot.clone()
    }

    /// Asks every channel to finish its unit in flight and stop.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle that stops this run from elsewhere (a signal handler, a
    /// service call).
    pub fn stopper(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The events from the first one still kept.
    pub fn events(&self) -> EventCursor {
        self.events_after(0)
    }

    /// The events after `last_seen` (a reconnecting reader's last id).
    pub fn events_after(&self, last_seen: u64) -> EventCursor {
        EventCursor {
            shared: self.shared.clone(),
            next: last_seen + 1,
            missed: 0,
        }
    }

    /// Waits for the run to end and returns its summary.
    pub fn wait(mut self) -> RunSummary {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let s = self.shared.lock();
        s.summary.clone().unwrap_or_else(|| RunSummary {
            stopped_because: "internal error: the run ended without a summary".to_owned(),
            ..RunSummary::default()
        })
    }
}

/// Reads a run's events in order, blocking for the next one; ends after
/// the last event of a run that has ended.
#[derive(Debug)]
pub struct EventCursor {
    shared: Arc<Shared>,
    next: u64,
    missed: u64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunShared")
    }
}

impl EventCursor {
    /// Events this reader fell too far behind to see.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The events available now, without waiting (for a poller).
    pub fn ready(&mut self) -> Vec<SeqEvent> {
        let shared = self.shared.clone();
        let s = shared.lock();
        self.take_from(&s, usize::MAX)
    }

    fn take_from(&mut self, s: &State, max: usize) -> Vec<SeqEvent> {
        let first = s.events.front().map_or(s.next_id, |e| e.id);
        if self.next < first {
            self.missed += first - self.next;
            self.next = first;
        }
        let skip = usize::try_from(self.next - first).unwrap_or(usize::MAX);
        let out: Vec<SeqEvent> = s.events.iter().skip(skip).take(max).cloned().collect();
        self.next += out.len() as u64;
        out
    }
}

impl Iterator for EventCursor {
    type Item = SeqEvent;
    fn next(&mut self) -> Option<SeqEvent> {
        let shared = self.shared.clone();
        let mut s = shared.lock();
        loop {
            if let Some(e) = self.take_from(&s, 1).pop() {
                return Some(e);
            }
            if s.summary.is_some() {
                return None;
            }
            s = shared
                .changed
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Takes the job off the live set when the run ends, however it ends.
struct Live {
    live: Arc<Mutex<std::collections::BTreeSet<JobId>>>,
    job: JobId,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.job);
    }
}

/// Loads imported job `id` for a run.
pub(super) fn load_job(station: &Station, id: &JobId) -> Result<ImportedJob, StationError> {
    let appliance = &station.appliance;
    let hex_id = id.to_string();
    Ok(
        ImportedJob::load(&appliance.job_dir(&hex_id), &appliance.config.trust.keys)
            .map_err(|_| ApplianceError::NoSuchJob { id: hex_id })?,
    )
}

pub(super) fn start(
    station: &Station,
    id: &JobId,
    fixtures: FixtureSet,
    options: StartOptions,
) -> Result<RunHandle, StationError> {
    let job = load_job(station, id)?;
    check(station, id, job, &fixtures, options)?.start()
}

/// A run whose checks all passed, not recorded yet: the job is marked live
/// and its fixtures made, so that several runs can all be checked before
/// any of them is recorded as started.
pub(super) struct Checked {
    live: Live,
    id: JobId,
    job: ImportedJob,
    appliance: Arc<crate::appliance::Appliance>,
    writer: Option<Arc<WriterLock>>,
    options: StartOptions,
    boards: Vec<Box<dyn flashgate_target::Fixture>>,
    channels: u32,
    runtime: tokio::runtime::Runtime,
    stop: StopHandle,
    hold: Option<Arc<dyn Send + Sync>>,
}

/// Every check of a run of `job` on `fixtures`, before anything is
/// recorded: not already running, the driver against the policy, the
/// validity window, the quota.
pub(super) fn check(
    station: &Station,
    id: &JobId,
    job: ImportedJob,
    fixtures: &FixtureSet,
    options: StartOptions,
) -> Result<Checked, StationError> {
    if !station
        .live
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(*id)
    {
        return Err(StationError::JobRunning { id: *id });
    }
    let live = Live {
        live: station.live.clone(),
        job: *id,
    };
    let appliance = station.appliance.clone();
    let hex_id = id.to_string();
    let policy = job.policy();
    crate::pipeline::check_driver(policy, fixtures.driver(), fixtures.capabilities())?;
    crate::pipeline::check_validity(policy, &hex_id, appliance.now())?;
    crate::pipeline::check_quota(policy, &hex_id, appliance.quota_used(id.as_bytes())?)?;
    let boards = fixtures.fixtures(options.units, policy.lock().avr_lock_byte);
    let channels = fixtures.channels();
    let runtime = crate::pipeline::runtime(channels).map_err(StationError::Spawn)?;
    Ok(Checked {
        live,
        id: *id,
        job,
        appliance,
        writer: station.writer.clone(),
        options,
        boards,
        channels,
        runtime,
        stop: StopHandle::default(),
        hold: None,
    })
}

impl Checked {
    /// Stopped by `stop` (shared with the other runs of a line), and
    /// keeping `hold` alive until the run ends.
    pub(super) fn sharing(mut self, stop: StopHandle, hold: Arc<dyn Send + Sync>) -> Self {
        self.stop = stop;
        self.hold = Some(hold);
        self
    }

    /// Records the run as started and starts its channels.
    pub(super) fn start(self) -> Result<RunHandle, StationError> {
        let Checked {
            live,
            id,
            job,
            appliance,
            writer,
            options,
            boards,
            channels,
            runtime,
            stop,
            hold,
        } = self;
        let hex_id = id.to_string();
        let policy = job.policy();
        // Everything is checked: only now is the run recorded as started.
        let (ledger, recovery) = RunLedger::start(
            &appliance,
            *id.as_bytes(),
            policy,
            &options.operator,
            channels,
        )?;
        let ledger = Arc::new(ledger);
        let provisioner = match Provisioner::open(appliance.clone(), &hex_id, ledger.clone()) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                // The start is on record: so is why nothing was programmed.
                let _ = ledger.run_finished(&format!("the job could not be opened: {e}"));
                return Err(e.into());
            }
        };
        let quota = policy.job().quota;
        let used_before = recovery.counter;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                events: VecDeque::new(),
                next_id: 1,
                snapshot: RunSnapshot {
                    job: id,
                    channels: (0..channels)
                        .map(|c| ChannelSnapshot {
                            channel: c,
                            ..ChannelSnapshot::default()
                        })
                        .collect(),
                    passed: 0,
                    failed: 0,
                    quota,
                    quota_left: quota.saturating_sub(used_before),
                    finished: false,
                },
                summary: None,
            }),
            changed: Condvar::new(),
        });
        let sink_shared = shared.clone();
        let sink: Arc<dyn Fn(RunEvent) + Send + Sync> = Arc::new(move |e| sink_shared.observe(e));
        let (run_shared, run_stop) = (shared.clone(), stop.clone());
        let run_options = RunOptions {
            units: options.units,
            block: options.block,
        };
        let thread = std::thread::Builder::new()
            .name(format!("run-{hex_id}"))
            .spawn(move || {
                // The writer lock, the live mark and what the caller holds
                // last as long as the run.
                let _writer = writer;
                let _live = live;
                let _hold = hold;
                let summary =
                    runtime.block_on(provisioner.run(boards, run_options, run_stop, sink));
                let mut s = run_shared.lock();
                s.snapshot.finished = true;
                s.snapshot.quota_left = summary.quota_left;
                s.summary = Some(summary);
                drop(s);
                run_shared.changed.notify_all();
            })
            .map_err(StationError::Spawn)?;
        Ok(RunHandle {
            job: id,
            shared,
            stop,
            thread: Some(thread),
            used_before,
            recovered: (!recovery.was_clean()).then(|| recovery.to_string()),
            certificate_dir: appliance.certificate_dir(id.as_bytes()),
        })
    }
}
