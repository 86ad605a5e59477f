//! Where units are counted. The pipeline reserves counter values before any
//! identity is issued and records every unit's outcome through [`Ledger`];
//! the durable implementation (HSM counter and signed audit log) plugs in
//! behind the same trait.

use std::ops::Range;
use std::sync::Mutex;

use super::UnitRecord;

/// Why the ledger refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The job's quota is used up.
    #[error("the job's quota is used up: it allows {quota} units and {used} have been used; ask the OEM for a new job")]
    QuotaExhausted { quota: u64, used: u64 },
    /// The durable store failed.
    #[error("the unit ledger failed: {0}")]
    Store(String),
}

/// Counts units against a job's quota and records what happened to each.
pub trait Ledger: Send + Sync {
    /// Reserves up to `n` counter values, durably, before they are used.
    /// Returns fewer when the quota has fewer left; fails when none are left.
    fn reserve(&self, n: u64) -> Result<Range<u64>, LedgerError>;
    /// A certificate was issued for the unit holding `counter`, before it
    /// goes to the device: durable ledgers keep it as pending (durable
    /// before this returns), so that a crash at any later stage leaves the
    /// OEM its hash and serial. The unit's record makes it final.
    fn certificate_issued(&self, counter: u64, der: &[u8]) -> Result<(), LedgerError>;
    /// Records a unit's outcome (durable before it returns).
    fn record(&self, unit: &UnitRecord) -> Result<(), LedgerError>;
    /// Returns counter values reserved but never used (run end).
    fn release_unused(&self, unused: Range<u64>) -> Result<(), LedgerError>;
    /// Counter values used so far (reserved, whether or not used).
    fn used(&self) -> u64;
    /// The run ended (recorded, with a checkpoint, by durable ledgers).
    fn run_finished(&self, reason: &str) -> Result<(), LedgerError> {
        let _ = reason;
        Ok(())
    }
    /// Called about once a second during a run, so that time-based
    /// checkpoints happen on an idle line too.
    fn tick(&self) -> Result<(), LedgerError> {
        Ok(())
    }
}

/// An in-memory ledger: counts correctly within one process but survives
/// nothing. For tests and scale runs; the appliance uses the durable one.
#[derive(Debug)]
pub struct MemoryLedger {
    quota: u64,
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    next: u64,
    records: Vec<UnitRecord>,
    unused: Vec<Range<u64>>,
}

impl MemoryLedger {
    /// A ledger for a job with this quota, starting at counter 0.
    pub fn new(quota: u64) -> Self {
        Self {
            quota,
            state: Mutex::new(MemoryState::default()),
        }
    }

    /// The recorded units so far.
    pub fn records(&self) -> Vec<UnitRecord> {
        self.state
            .lock()
            .map(|s| s.records.clone())
            .unwrap_or_default()
    }

    /// Ranges released unused.
    pub fn unused(&self) -> Vec<Range<u64>> {
        self.state
            .lock()
            .map(|s| s.unused.clone())
            .unwrap_or_default()
    }
}

impl Ledger for MemoryLedger {
    fn reserve(&self, n: u64) -> Result<Range<u64>, LedgerError> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| LedgerError::Store("poisoned".to_owned()))?;
        if s.next >= self.quota {
            return Err(LedgerError::QuotaExhausted {
                quota: self.quota,
                used: s.next,
            });
        }
        let end = (s.next + n).min(self.quota);
        let r = s.next..end;
        s.next = end;
        Ok(r)
    }

    fn certificate_issued(&self, _counter: u64, _der: &[u8]) -> Result<(), LedgerError> {
        // The record keeps the certificate; nothing survives the process anyway.
        Ok(())
    }

    fn record(&self, unit: &UnitRecord) -> Result<(), LedgerError> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| LedgerError::Store("poisoned".to_owned()))?;
        s.records.push(unit.clone());
        Ok(())
    }

    fn release_unused(&self, unused: Range<u64>) -> Result<(), LedgerError> {
        if unused.is_empty() {
            return Ok(());
        }
        let mut s = self
            .state
            .lock()
            .map_err(|_| LedgerError::Store("poisoned".to_owned()))?;
        s.unused.push(unused);
        Ok(())
    }

    fn used(&self) -> u64 {
        self.state.lock().map(|s| s.next).unwrap_or(0)
    }
}
