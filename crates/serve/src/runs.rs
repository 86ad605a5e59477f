//! The runs this service started: each one a set of station runs (one per
//! job of the fixture set's drivers), their events merged into one
//! numbered, bounded stream for live clients, their state for status
//! requests, their summaries once they end.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use flashgate_core::pipeline::{RunEvent, RunSummary, StopHandle};
use flashgate_core::station::{JobId, RunHandle};
use serde::Serialize;
use tokio::sync::watch;

use crate::event_segment::Segment;
use crate::metrics::Metrics;

/// Events a run keeps for live clients that fall behind or reconnect. A
/// client further behind than this is dropped (it reconnects and reads the
/// status instead).
pub const EVENTS_KEPT: usize = 8192;

/// One event of a run's merged stream, encoded once for every client.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    /// Its place in the run's stream, from 1.
    pub id: u64,
    /// The event type (`unit-passed`, ...; docs/EVENTS.md).
    pub name: Arc<str>,
    /// The event as JSON, with `job` and the fixture set's channel number.
    pub data: Arc<str>,
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<StreamEvent>,
    next_id: u64,
    /// Set with `done`, under this lock, so that the sealer sees it.
    ended: bool,
}

/// The most events in one segment.
const SEGMENT_EVENTS: usize = 2048;

/// How long the sealer gathers events into one segment: 20 ms for a few
/// readers, 1 ms more per reader (up to a second, for a thousand), so that
/// the writes to readers, not the events, set the cost. Each write costs
/// the station a TLS record and a TCP send whatever its size: at a
/// thousand readers, segments of a second took about half the CPU time of
/// segments of a quarter of a second for the same bytes.
fn gather_time(readers: usize) -> Duration {
    Duration::from_millis(20 + readers.min(980) as u64)
}

/// One channel of a run, as of now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChannelStatus {
    /// The fixture set's channel number (from 0).
    pub channel: u32,
    /// The job this channel programs.
    pub job: String,
    /// The board in the fixture, while one is being programmed.
    pub board: Option<u64>,
    /// The last stage it finished.
    pub stage: Option<String>,
    /// How its last unit ended: `passed`, or `failed at STAGE`.
    pub last_result: Option<String>,
    /// Why it stopped, once it has.
    pub stopped: Option<String>,
}

/// One job's part of a run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobProgress {
    /// The job.
    pub job: String,
    /// Units passed in this run.
    pub passed: u64,
    /// Units failed in this run.
    pub failed: u64,
    /// The job's quota.
    pub quota: u64,
    /// Quota not yet used.
    pub quota_left: u64,
}

/// A run, as of now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunStatus {
    /// The run's id at this station.
    pub id: String,
    /// The fixture set it runs on.
    pub fixtures: String,
    /// Who started it (certificate subject and fingerprint).
    pub started_by: String,
    /// When, in Unix seconds.
    pub started_at: u64,
    /// Who asked it to stop, if anyone did.
    pub stop_requested_by: Option<String>,
    /// Whether every part has ended.
    pub finished: bool,
    /// Units passed, over all jobs.
    pub passed: u64,
    /// Units failed, over all jobs.
    pub failed: u64,
    /// Per job.
    pub jobs: Vec<JobProgress>,
    /// Per channel.
    pub channels: Vec<ChannelStatus>,
    /// The id of the last event so far (for `Last-Event-ID`).
    pub last_event_id: u64,
}

/// A job's summary once its part of the run has ended.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    /// The job.
    pub job: String,
    /// Its totals (docs/EVENTS.md, "Summary").
    #[schema(value_type = Object)]
    pub summary: RunSummary,
}

struct Part {
    job: JobId,
    offset: u32,
    stop: StopHandle,
    /// Until the part ends; then its summary.
    handle: Option<RunHandle>,
    summary: Option<RunSummary>,
    last: Option<flashgate_core::station::RunSnapshot>,
}

/// A run started through the service.
pub struct ServiceRun {
    /// Its id.
    pub id: String,
    /// The fixture set.
    pub fixtures: String,
    /// Who started it.
    pub started_by: String,
    /// When (Unix seconds).
    pub started_at: u64,
    parts: Mutex<Vec<Part>>,
    stop_requested_by: Mutex<Option<String>>,
    ring: Mutex<Ring>,
    /// Wakes the sealer when an event arrives or the run ends.
    arrived: Condvar,
    /// The sealed segments that cover the kept events, oldest first.
    segments: Mutex<VecDeque<Arc<Segment>>>,
    /// The last event id sealed into a segment, for readers waiting.
    pub sealed: watch::Sender<u64>,
    /// Live readers of the events.
    readers: AtomicUsize,
    /// The last event id.
    pub latest: watch::Sender<u64>,
    /// True once every part has ended.
    pub done: watch::Sender<bool>,
}

impl std::fmt::Debug for ServiceRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRun")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ServiceRun {
    /// Takes over started station runs (each with the set's channel number
    /// of its first channel) and forwards their events, each on a thread
    /// of its own.
    pub fn spawn(
        id: String,
        fixtures: String,
        started_by: String,
        runs: Vec<(RunHandle, u32)>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let parts = runs
            .into_iter()
            .map(|(handle, offset)| Part {
                job: handle.job(),
                offset,
                stop: handle.stopper(),
                handle: Some(handle),
                summary: None,
                last: None,
            })
            .collect::<Vec<_>>();
        let count = parts.len();
        let run = Arc::new(Self {
            id,
            fixtures,
            started_by,
            started_at: flashgate_core::clock::TimeProvider::now(
                &flashgate_core::clock::SystemClock,
            ),
            parts: Mutex::new(parts),
            stop_requested_by: Mutex::new(None),
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                next_id: 1,
                ended: false,
            }),
            arrived: Condvar::new(),
            segments: Mutex::new(VecDeque::new()),
            sealed: watch::channel(0).0,
            readers: AtomicUsize::new(0),
            latest: watch::channel(0).0,
            done: watch::channel(false).0,
        });
        {
            let run = run.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("seal-{}", run.id))
                .spawn(move || run.seal_segments());
            if let Err(e) = spawned {
                tracing::error!("cannot seal a run's events: {e}");
            }
        }
        for index in 0..count {
            let run = run.clone();
            let metrics = metrics.clone();
            let name = format!("events-{}-{index}", run.id);
            let spawned = std::thread::Builder::new()
                .name(name)
                .spawn(move || run.forward(index, &metrics));
            if let Err(e) = spawned {
                tracing::error!("cannot watch a run's events: {e}");
            }
        }
        run
    }

    fn forward(self: &Arc<Self>, index: usize, metrics: &Metrics) {
        let (cursor, job, offset) = {
            let parts = lock(&self.parts);
            let p = &parts[index];
            match &p.handle {
                Some(h) => (h.events(), p.job, p.offset),
                None => return,
            }
        };
        for e in cursor {
            metrics.observe(&job, &e.event);
            self.push(&job, offset, &e.event);
        }
        let handle = lock(&self.parts)[index].handle.take();
        if let Some(h) = handle {
            let last = h.snapshot();
            let summary = h.wait();
            let mut parts = lock(&self.parts);
            parts[index].last = Some(last);
            parts[index].summary = Some(summary);
            let all = parts.iter().all(|p| p.summary.is_some());
            drop(parts);
            if all {
                self.push_finished();
                lock(&self.ring).ended = true;
                self.done.send_replace(true);
                self.arrived.notify_all();
            }
        }
    }

    fn push(&self, job: &JobId, offset: u32, event: &RunEvent) {
        let Ok(mut value) = serde_json::to_value(event) else {
            return;
        };
        let name = value
            .get("event")
            .and_then(|v| v.as_str())
            .unwrap_or("event")
            .to_owned();
        if let Some(obj) = value.as_object_mut() {
            if let Some(c) = obj.get("channel").and_then(serde_json::Value::as_u64) {
                obj.insert("channel".into(), (c + u64::from(offset)).into());
            }
            obj.insert("job".into(), job.to_string().into());
        }
        self.append(name, value.to_string());
    }

    fn push_finished(&self) {
        let summaries = self.summaries().unwrap_or_default();
        let data =
            serde_json::json!({ "event": "run-finished", "run": self.id, "summaries": summaries });
        self.append("run-finished".to_owned(), data.to_string());
    }

    fn append(&self, name: String, data: String) {
        let mut ring = lock(&self.ring);
        let id = ring.next_id;
        ring.next_id += 1;
        if ring.events.len() == EVENTS_KEPT {
            ring.events.pop_front();
        }
        ring.events.push_back(StreamEvent {
            id,
            name: name.into(),
            data: data.into(),
        });
        drop(ring);
        self.latest.send_replace(id);
        self.arrived.notify_all();
    }

    /// Seals the events into segments as they come, a gathering time at a
    /// time, until the run has ended and every event is sealed.
    fn seal_segments(&self) {
        let mut sealed = 0u64;
        loop {
            let mut ring = lock(&self.ring);
            while ring.next_id - 1 <= sealed && !ring.ended {
                ring = self
                    .arrived
                    .wait(ring)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if ring.next_id - 1 <= sealed {
                drop(ring);
                self.release_segments();
                return;
            }
            let ended = ring.ended;
            drop(ring);
            if !ended {
                std::thread::sleep(gather_time(self.readers.load(Ordering::Relaxed)));
            }
            loop {
                let ring = lock(&self.ring);
                let first_kept = ring.events.front().map_or(ring.next_id, |e| e.id);
                let from = (sealed + 1).max(first_kept);
                let skip = usize::try_from(from - first_kept).unwrap_or(usize::MAX);
                let events: Vec<StreamEvent> = ring
                    .events
                    .iter()
                    .skip(skip)
                    .take(SEGMENT_EVENTS)
                    .cloned()
                    .collect();
                drop(ring);
                let Some(last) = events.last().map(|e| e.id) else {
                    break;
                };
                let segment = Arc::new(Segment::of_events(&events));
                let mut segments = lock(&self.segments);
                segments.push_back(segment);
                while segments.front().is_some_and(|s| s.last < first_kept) {
                    segments.pop_front();
                }
                drop(segments);
                sealed = last;
                self.sealed.send_replace(last);
            }
        }
    }

    /// The segment to send a reader that has seen up to `seen` (less than
    /// what is sealed): a sealed one when `seen` ends one, else the events
    /// after `seen` (to the end of the segment they are in, if it is still
    /// held), sealed for this reader; `Err(first kept)` when what follows
    /// `seen` is no longer kept. The shared segments only save work: the
    /// kept events alone give every reader the same stream.
    pub fn segment_after(&self, seen: u64) -> Result<Arc<Segment>, u64> {
        let found = {
            let segments = lock(&self.segments);
            let at = segments.partition_point(|s| s.last <= seen);
            segments.get(at).cloned()
        };
        let n = match found {
            Some(s) if s.first == seen + 1 => return Ok(s),
            Some(s) if s.first <= seen => usize::try_from(s.last - seen).unwrap_or(usize::MAX),
            _ => SEGMENT_EVENTS,
        };
        let events = self.events_after(seen, n)?;
        if events.first().map(|e| e.id) != Some(seen + 1) {
            return Err(self.first_kept());
        }
        Ok(Arc::new(Segment::of_events(&events)))
    }

    /// Lets the shared segments go once the run has ended and nobody is
    /// reading: a kept run then holds its events once, not twice.
    fn release_segments(&self) {
        if self.finished() && self.readers.load(Ordering::SeqCst) == 0 {
            lock(&self.segments).clear();
        }
    }

    /// Counts a reader for as long as the guard lives.
    pub fn reader(self: &Arc<Self>) -> ReaderGuard {
        self.readers.fetch_add(1, Ordering::SeqCst);
        ReaderGuard(self.clone())
    }

    /// Up to `max` events after `last_seen`, or `Err(first kept)` when the
    /// reader fell behind what is kept.
    pub fn events_after(&self, last_seen: u64, max: usize) -> Result<Vec<StreamEvent>, u64> {
        let ring = lock(&self.ring);
        let first = ring.events.front().map_or(ring.next_id, |e| e.id);
        if last_seen + 1 < first {
            return Err(first);
        }
        let skip = usize::try_from(last_seen + 1 - first).unwrap_or(usize::MAX);
        Ok(ring.events.iter().skip(skip).take(max).cloned().collect())
    }

    /// Asks every part to finish its units in flight and stop.
    pub fn stop(&self, by: &str) {
        lock(&self.stop_requested_by).get_or_insert_with(|| by.to_owned());
        for p in lock(&self.parts).iter() {
            p.stop.stop();
        }
    }

    /// Whether every part has ended.
    pub fn finished(&self) -> bool {
        *self.done.borrow()
    }

    /// The summaries, once every part has ended.
    pub fn summaries(&self) -> Option<Vec<JobSummary>> {
        let parts = lock(&self.parts);
        parts
            .iter()
            .map(|p| {
                p.summary.clone().map(|summary| JobSummary {
                    job: p.job.to_string(),
                    summary,
                })
            })
            .collect()
    }

    /// The run as of now.
    pub fn status(&self) -> RunStatus {
        let parts = lock(&self.parts);
        let mut channels = Vec::new();
        let mut jobs = Vec::new();
        for p in parts.iter() {
            let snap = match (&p.handle, &p.last) {
                (Some(h), _) => h.snapshot(),
                (None, Some(s)) => s.clone(),
                (None, None) => continue,
            };
            let job = p.job.to_string();
            for c in &snap.channels {
                channels.push(ChannelStatus {
                    channel: c.channel + p.offset,
                    job: job.clone(),
                    board: c.board,
                    stage: c.stage.clone(),
                    last_result: c.last_result.clone(),
                    stopped: c.stopped.clone(),
                });
            }
            jobs.push(JobProgress {
                job,
                passed: snap.passed,
                failed: snap.failed,
                quota: snap.quota,
                quota_left: p.summary.as_ref().map_or(snap.quota_left, |s| s.quota_left),
            });
        }
        drop(parts);
        channels.sort_by_key(|c| c.channel);
        RunStatus {
            id: self.id.clone(),
            fixtures: self.fixtures.clone(),
            started_by: self.started_by.clone(),
            started_at: self.started_at,
            stop_requested_by: lock(&self.stop_requested_by).clone(),
            finished: self.finished(),
            passed: jobs.iter().map(|j| j.passed).sum(),
            failed: jobs.iter().map(|j| j.failed).sum(),
            jobs,
            channels,
            last_event_id: *self.latest.borrow(),
        }
    }
}

/// A live reader of a run's events, counted while it lives.
#[derive(Debug)]
pub struct ReaderGuard(Arc<ServiceRun>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::SeqCst);
        self.0.release_segments();
    }
}

/// Every run of this service's lifetime, newest last; ended runs beyond
/// the most recent [`RUNS_KEPT`] are forgotten (their records are in the
/// audit log).
#[derive(Debug, Default)]
pub struct RunTable {
    runs: Mutex<BTreeMap<u64, Arc<ServiceRun>>>,
    next: Mutex<u64>,
}

/// Ended runs kept for status and summary requests.
pub const RUNS_KEPT: usize = 64;

impl RunTable {
    /// A fresh run id: the start time and a counter, unique per station.
    pub fn next_id(&self) -> (u64, String) {
        let mut n = lock(&self.next);
        *n += 1;
        (
            *n,
            format!(
                "{}-{}",
                flashgate_core::clock::TimeProvider::now(&flashgate_core::clock::SystemClock),
                *n
            ),
        )
    }

    /// Adds a run.
    pub fn insert(&self, key: u64, run: Arc<ServiceRun>) {
        let mut runs = lock(&self.runs);
        runs.insert(key, run);
        while runs.len() > RUNS_KEPT {
            let oldest_done = runs.iter().find(|(_, r)| r.finished()).map(|(k, _)| *k);
            match oldest_done {
                Some(k) => runs.remove(&k),
                None => break,
            };
        }
    }

    /// A run by id.
    pub fn get(&self, id: &str) -> Option<Arc<ServiceRun>> {
        lock(&self.runs).values().find(|r| r.id == id).cloned()
    }

    /// Every run, oldest first.
    pub fn all(&self) -> Vec<Arc<ServiceRun>> {
        lock(&self.runs).values().cloned().collect()
    }

    /// Runs not yet ended.
    pub fn live(&self) -> Vec<Arc<ServiceRun>> {
        self.all().into_iter().filter(|r| !r.finished()).collect()
    }
}

impl ServiceRun {
    /// The id of the oldest event still kept (the next id when none is).
    pub fn first_kept(&self) -> u64 {
        let ring = lock(&self.ring);
        ring.events.front().map_or(ring.next_id, |e| e.id)
    }
}
