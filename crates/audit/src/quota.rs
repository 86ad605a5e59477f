//! The quota ledger: the job's counter (an HSM token object on the
//! appliance) and the audit log, kept in agreement.
//!
//! Order of operations for a reservation: record the log's size as a
//! high-water mark, advance the counter durably, then append
//! `units-reserved`. So the counter never trails the units handed out, and
//! after a crash the difference between counter and log is at most the one
//! reservation in flight, which [`Ledger::recover`] closes. Anything else
//! (a log that is shorter than the high-water mark, reserves more than the
//! counter, or has no trace of a job whose counter moved) is refused with
//! [`AuditError::LogRolledBack`].

use std::collections::{HashMap, HashSet};

use crate::intervals::Intervals;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::checkpoint::CheckpointSigner;
use crate::error::{AuditError, RollbackFinding};
use crate::log::{Appended, Log, RecordFile, SignedCheckpoint, LOG_FILE};
use crate::record::{JobId, Record, RecordKind, UnitAborted, UnitsReserved, UnitsUnused};

/// Monotonic counters that survive the log: one per job, plus the log's
/// high-water mark under [`LOG_HIGH_WATER_ID`].
pub trait CounterStore: Send + Sync {
    /// The current value (0 for a counter never advanced).
    fn read(&self, id: &[u8; 16]) -> Result<u64, String>;
    /// Sets the value to `to`, durably, before returning. `to` is never
    /// lower than the current value; implementations refuse a lower one and
    /// treat an equal one as done.
    fn advance(&self, id: &[u8; 16], to: u64) -> Result<(), String>;
}

/// The counter id under which the ledger keeps the log's high-water mark (a
/// record count the log is known to have reached). Job ids of all `0xff`
/// bytes are therefore reserved.
pub const LOG_HIGH_WATER_ID: [u8; 16] = [0xff; 16];

/// Reason text of the `units-unused` record written for a reservation whose
/// record was lost.
pub const REASON_CRASH_GAP: &str =
    "aborted by a crash: the quota counter was advanced but the reservation was never recorded";
/// Reason text of `unit-aborted` records written by recovery.
pub const REASON_CRASH_ABORTED: &str =
    "aborted by a crash: the counter value was handed out but the unit was never recorded";
/// Reason text of `units-unused` records written by recovery.
pub const REASON_CRASH_UNUSED: &str = "reserved before a crash and never handed out";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counters in memory (tests).
#[derive(Debug, Default)]
pub struct MemoryCounterStore {
    values: Mutex<HashMap<[u8; 16], u64>>,
}

impl MemoryCounterStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a value without the monotonic check (to simulate a reset token
    /// in tests).
    pub fn force(&self, id: &[u8; 16], value: u64) {
        lock(&self.values).insert(*id, value);
    }
}

impl CounterStore for MemoryCounterStore {
    fn read(&self, id: &[u8; 16]) -> Result<u64, String> {
        Ok(lock(&self.values).get(id).copied().unwrap_or(0))
    }

    fn advance(&self, id: &[u8; 16], to: u64) -> Result<(), String> {
        let mut v = lock(&self.values);
        let cur = v.get(id).copied().unwrap_or(0);
        if to < cur {
            return Err(format!("counter would go down from {cur} to {to}"));
        }
        v.insert(*id, to);
        Ok(())
    }
}

/// Counters in files, one per id, replaced atomically (write, sync, rename,
/// sync the directory). For tests and the crash-test example; the appliance
/// keeps its counters in the HSM.
#[derive(Debug)]
pub struct FileCounterStore {
    dir: PathBuf,
    guard: Mutex<()>,
}

impl FileCounterStore {
    /// A store in `dir` (created if missing).
    pub fn new(dir: &Path) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| AuditError::io("cannot create directory", dir, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            guard: Mutex::new(()),
        })
    }

    fn path(&self, id: &[u8; 16]) -> PathBuf {
        self.dir.join(format!("{}.counter", hex::encode(id)))
    }

    fn read_file(&self, id: &[u8; 16]) -> Result<u64, String> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(b) => {
                let arr: [u8; 8] = b
                    .as_slice()
                    .try_into()
                    .map_err(|_| format!("{} is {} bytes, expected 8", path.display(), b.len()))?;
                Ok(u64::from_be_bytes(arr))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

impl CounterStore for FileCounterStore {
    fn read(&self, id: &[u8; 16]) -> Result<u64, String> {
        let _g = lock(&self.guard);
        self.read_file(id)
    }

    fn advance(&self, id: &[u8; 16], to: u64) -> Result<(), String> {
        let _g = lock(&self.guard);
        let cur = self.read_file(id)?;
        if to < cur {
            return Err(format!("counter would go down from {cur} to {to}"));
        }
        if to == cur {
            return Ok(());
        }
        let path = self.path(id);
        let tmp = path.with_extension("counter.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&to.to_be_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// What [`Ledger::recover`] found and recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The job's counter.
    pub counter: u64,
    /// Counter values the log reserved before recovery.
    pub reserved_in_log: u64,
    /// Values handed out without a record, now recorded as `unit-aborted`.
    pub aborted: Vec<u64>,
    /// Values never handed out, now recorded as `units-unused`.
    pub unused: Vec<Range<u64>>,
    /// A reservation whose record was lost, now recorded (as reserved and
    /// unused).
    pub gap: Option<Range<u64>>,
}

impl Recovery {
    /// True when the log already accounted for every counter value.
    #[must_use]
    pub fn was_clean(&self) -> bool {
        self.aborted.is_empty() && self.unused.is_empty() && self.gap.is_none()
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.was_clean() {
            return write!(
                f,
                "counter {} matches the log; nothing to recover",
                self.counter
            );
        }
        write!(
            f,
            "counter {}, log had {} reserved",
            self.counter, self.reserved_in_log
        )?;
        if let Some(g) = &self.gap {
            write!(
                f,
                "; values {}..{} were counted but never recorded (crash between counter and log): recorded as reserved and unused",
                g.start, g.end
            )?;
        }
        if !self.aborted.is_empty() {
            write!(
                f,
                "; {} units aborted by a crash (recorded)",
                self.aborted.len()
            )?;
        }
        let unused: u64 = self.unused.iter().map(|r| r.end - r.start).sum();
        if unused > 0 {
            write!(f, "; {unused} reserved values unused (recorded)")?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct LedgerState {
    recovered: HashSet<JobId>,
    high_water: u64,
}

/// The audit log and the quota counters, used together.
pub struct Ledger {
    log: Arc<Log>,
    store: Arc<dyn CounterStore>,
    state: Mutex<LedgerState>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("log", &self.log.dir())
            .finish_non_exhaustive()
    }
}

struct Block {
    first: u64,
    end: u64,
    highest_closed: Option<u64>,
}

fn hex16(id: &[u8; 16]) -> String {
    hex::encode(id)
}

impl Ledger {
    /// Ties an open log to a counter store. Checks at once that the log has
    /// not shrunk below the stored high-water mark.
    pub fn new(log: Arc<Log>, store: Arc<dyn CounterStore>) -> Result<Self, AuditError> {
        let high_water = store
            .read(&LOG_HIGH_WATER_ID)
            .map_err(|detail| AuditError::Counter {
                id: hex16(&LOG_HIGH_WATER_ID),
                detail,
            })?;
        if log.size() < high_water {
            return Err(AuditError::rolled_back(
                None,
                RollbackFinding::LogBelowHighWater {
                    log_size: log.size(),
                    high_water,
                },
            ));
        }
        Ok(Self {
            log,
            store,
            state: Mutex::new(LedgerState {
                recovered: HashSet::new(),
                high_water,
            }),
        })
    }

    /// The log.
    #[must_use]
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    fn read(&self, id: &[u8; 16]) -> Result<u64, AuditError> {
        self.store.read(id).map_err(|detail| AuditError::Counter {
            id: hex16(id),
            detail,
        })
    }

    fn advance(&self, id: &[u8; 16], to: u64) -> Result<(), AuditError> {
        self.store
            .advance(id, to)
            .map_err(|detail| AuditError::Counter {
                id: hex16(id),
                detail,
            })
    }

    fn raise_high_water(&self, st: &mut LedgerState, size: u64) -> Result<(), AuditError> {
        if size > st.high_water {
            self.advance(&LOG_HIGH_WATER_ID, size)?;
            st.high_water = size;
        }
        Ok(())
    }

    /// Compares the job's counter with the log and closes what a crash left
    /// open; must be called once per job after opening the log, before
    /// [`Ledger::reserve`].
    ///
    /// - Reserved values with no closing record: the value after the last
    ///   recorded one in each block (and every unrecorded value before it)
    ///   may have been in flight and is recorded as `unit-aborted`; the rest
    ///   of the block as `units-unused`. (Each block is used by one channel,
    ///   in counter order.)
    /// - Counter above the last reservation in the log (crash between the
    ///   counter and the record): the gap is recorded as `units-reserved`
    ///   followed by `units-unused` with [`REASON_CRASH_GAP`].
    /// - Log shorter than the high-water mark, reserving more than the
    ///   counter, or with no record of a job whose counter is above zero:
    ///   [`AuditError::LogRolledBack`], nothing is written.
    pub fn recover(&self, job: &JobId) -> Result<Recovery, AuditError> {
        let mut st = lock(&self.state);
        let counter = self.read(job)?;
        let high_water = self.read(&LOG_HIGH_WATER_ID)?.max(st.high_water);
        let size = self.log.size();
        if size < high_water {
            return Err(AuditError::rolled_back(
                Some(job),
                RollbackFinding::LogBelowHighWater {
                    log_size: size,
                    high_water,
                },
            ));
        }
        let mut blocks: Vec<Block> = Vec::new();
        let mut closed = Intervals::default();
        let mut logged = 0u64;
        let mut seen = false;
        let path = self.log.dir().join(LOG_FILE);
        let mut file = RecordFile::open(&path)?;
        for _ in 0..size {
            let corrupt = |offset: u64, detail: String| AuditError::Corrupt {
                file: path.display().to_string(),
                offset,
                detail,
            };
            let (offset, bytes) = match file.next_bytes() {
                Ok(Some(f)) => f,
                Ok(None) => return Err(corrupt(0, "the log ended early".to_owned())),
                Err(e) => return Err(corrupt(0, e.to_string())),
            };
            let rec = Record::decode(bytes).map_err(|e| corrupt(offset, e.to_string()))?;
            if rec.kind.job_id() != job {
                continue;
            }
            seen = true;
            let mut close = |c: u64| {
                closed.insert(c, c.saturating_add(1));
                if let Some(b) = find_block(&mut blocks, c) {
                    b.highest_closed = Some(b.highest_closed.map_or(c, |h| h.max(c)));
                }
            };
            match &rec.kind {
                RecordKind::UnitsReserved(r) => {
                    if r.first != logged {
                        return Err(AuditError::rolled_back(
                            Some(job),
                            RollbackFinding::ReservationGap {
                                seq: rec.seq,
                                expected_first: logged,
                                found_first: r.first,
                            },
                        ));
                    }
                    logged = r.first.saturating_add(r.count);
                    blocks.push(Block {
                        first: r.first,
                        end: logged,
                        highest_closed: None,
                    });
                }
                RecordKind::UnitPassed(r) => close(r.counter),
                RecordKind::UnitFailed(r) => close(r.counter),
                RecordKind::UnitAborted(r) => close(r.counter),
                RecordKind::UnitsUnused(r) => {
                    // Unused ranges close values without marking them as
                    // handed out.
                    closed.insert(r.first, r.first.saturating_add(r.count));
                }
                // Neither hands out nor closes counter values.
                RecordKind::JobImported(_)
                | RecordKind::JobRemoved(_)
                | RecordKind::JobRemovalStarted(_)
                | RecordKind::LogReset(_)
                | RecordKind::RunStarted(_)
                | RecordKind::RunStopped(_) => {}
            }
        }
        if counter > 0 && !seen {
            return Err(AuditError::rolled_back(
                Some(job),
                RollbackFinding::LogMissing {
                    counter,
                    log_size: size,
                },
            ));
        }
        if logged > counter {
            return Err(AuditError::rolled_back(
                Some(job),
                RollbackFinding::CounterBehindLog { counter, logged },
            ));
        }

        let mut recovery = Recovery {
            counter,
            reserved_in_log: logged,
            ..Recovery::default()
        };
        let mut records = Vec::new();
        for b in &blocks {
            // Values up to and including the one after the highest closed
            // value may have been handed out.
            let in_flight_end = b
                .highest_closed
                .map_or(b.first.saturating_add(1), |h| h.saturating_add(2))
                .min(b.end);
            for gap in closed.gaps(b.first, b.end) {
                for c in gap.start..gap.end.min(in_flight_end) {
                    recovery.aborted.push(c);
                    records.push(RecordKind::UnitAborted(UnitAborted {
                        job_id: *job,
                        counter: c,
                        reason: REASON_CRASH_ABORTED.to_owned(),
                    }));
                }
                let rest = gap.start.max(in_flight_end)..gap.end;
                if !rest.is_empty() {
                    push_unused(&mut recovery, &mut records, job, rest, REASON_CRASH_UNUSED);
                }
            }
        }
        if counter > logged {
            let gap = logged..counter;
            records.push(RecordKind::UnitsReserved(UnitsReserved {
                job_id: *job,
                first: gap.start,
                count: gap.end - gap.start,
            }));
            records.push(RecordKind::UnitsUnused(UnitsUnused {
                job_id: *job,
                first: gap.start,
                count: gap.end - gap.start,
                reason: REASON_CRASH_GAP.to_owned(),
            }));
            recovery.gap = Some(gap);
        }
        for r in self.log.append_many(records) {
            r?;
        }
        st.recovered.insert(*job);
        Ok(recovery)
    }

    /// Reserves up to `n` counter values for `job`, whose quota is `quota`:
    /// raises the log's high-water mark, advances the counter durably, then
    /// appends `units-reserved`. Returns fewer than `n` values when fewer
    /// are left, and [`AuditError::QuotaExhausted`] when none are.
    ///
    /// Reservations are serialised. The caller hands the values of a block
    /// out in order, on one channel.
    pub fn reserve(&self, job: &JobId, n: u64, quota: u64) -> Result<Range<u64>, AuditError> {
        let mut st = lock(&self.state);
        if !st.recovered.contains(job) {
            return Err(AuditError::NotRecovered { job_id: hex16(job) });
        }
        let used = self.read(job)?;
        if used >= quota {
            return Err(AuditError::QuotaExhausted {
                job_id: hex16(job),
                quota,
                used,
            });
        }
        let n = n.min(quota - used);
        if n == 0 {
            return Ok(used..used);
        }
        let size = self.log.size();
        self.raise_high_water(&mut st, size)?;
        // From here on a failure may leave the counter ahead of the log; the
        // job must be recovered again before the next reservation.
        st.recovered.remove(job);
        self.advance(job, used + n)?;
        self.log.append(RecordKind::UnitsReserved(UnitsReserved {
            job_id: *job,
            first: used,
            count: n,
        }))?;
        st.recovered.insert(*job);
        Ok(used..used + n)
    }

    /// Records reserved values that will not be used (end of run).
    pub fn release(
        &self,
        job: &JobId,
        unused: Range<u64>,
        reason: &str,
    ) -> Result<Option<Appended>, AuditError> {
        if unused.is_empty() {
            return Ok(None);
        }
        self.log
            .append(RecordKind::UnitsUnused(UnitsUnused {
                job_id: *job,
                first: unused.start,
                count: unused.end - unused.start,
                reason: reason.to_owned(),
            }))
            .map(Some)
    }

    /// Appends a record (see [`Log::append`]).
    pub fn append(&self, kind: RecordKind) -> Result<Appended, AuditError> {
        self.log.append(kind)
    }

    /// Signs a checkpoint and raises the high-water mark to its size.
    pub fn checkpoint(
        &self,
        signer: &dyn CheckpointSigner,
    ) -> Result<SignedCheckpoint, AuditError> {
        let cp = self.log.checkpoint(signer)?;
        let mut st = lock(&self.state);
        self.raise_high_water(&mut st, cp.size)?;
        Ok(cp)
    }
}

fn find_block(blocks: &mut [Block], c: u64) -> Option<&mut Block> {
    let i = blocks.partition_point(|b| b.end <= c);
    blocks.get_mut(i).filter(|b| b.first <= c)
}

fn push_unused(
    recovery: &mut Recovery,
    records: &mut Vec<RecordKind>,
    job: &JobId,
    range: Range<u64>,
    reason: &str,
) {
    records.push(RecordKind::UnitsUnused(UnitsUnused {
        job_id: *job,
        first: range.start,
        count: range.end - range.start,
        reason: reason.to_owned(),
    }));
    recovery.unused.push(range);
}
