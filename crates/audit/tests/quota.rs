//! The quota ledger: reservation, exhaustion, crash recovery and refusal
//! of rolled-back logs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use flashgate_audit::bundle::{export, BundleExtras};
use flashgate_audit::{
    verify_bundle, AuditError, CounterStore, FileCounterStore, Ledger, Log, LogOptions,
    MemoryCounterStore, RollbackFinding, LOG_HIGH_WATER_ID,
};

fn ledger(dir: &Path, store: Arc<dyn CounterStore>) -> Result<Ledger, AuditError> {
    let log = Arc::new(Log::open(dir, LogOptions::new(APPLIANCE))?);
    Ledger::new(log, store)
}

fn start(dir: &Path, store: Arc<dyn CounterStore>, quota: u64) -> Ledger {
    let l = ledger(dir, store).unwrap();
    assert!(l.recover(&JOB).unwrap().was_clean());
    l.append(imported(quota)).unwrap();
    l.append(run_started()).unwrap();
    l
}

fn verify_dir(dir: &Path, certs: Vec<Vec<u8>>, quota: u64) -> flashgate_audit::Report {
    let out = dir.parent().unwrap().join(format!(
        "bundle-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    export(
        dir,
        &JOB,
        &BundleExtras {
            enrollment: vec![],
            manifest: vec![],
            certificates: certs,
            certificate_dir: None,
        },
        &out,
    )
    .unwrap();
    verify_bundle(&out, &options(quota)).unwrap()
}

#[test]
fn reserve_advances_the_counter_first_and_stops_at_the_quota() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryCounterStore::new());
    let l = start(tmp.path(), store.clone(), 10);
    assert_eq!(l.reserve(&JOB, 4, 10).unwrap(), 0..4);
    assert_eq!(store.read(&JOB).unwrap(), 4);
    assert_eq!(l.reserve(&JOB, 4, 10).unwrap(), 4..8);
    // Only two left: the block is cut short.
    assert_eq!(l.reserve(&JOB, 4, 10).unwrap(), 8..10);
    let err = l.reserve(&JOB, 1, 10).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "job {} allows 10 units and 10 have been used",
            hex::encode(JOB)
        )
    );
    // The high-water mark followed the log.
    assert!(store.read(&LOG_HIGH_WATER_ID).unwrap() >= 4);
}

#[test]
fn reserve_needs_recovery_first() {
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger(tmp.path(), Arc::new(MemoryCounterStore::new())).unwrap();
    assert!(matches!(
        l.reserve(&JOB, 1, 10),
        Err(AuditError::NotRecovered { .. })
    ));
}

#[test]
fn crash_between_counter_and_record_is_closed_as_unused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryCounterStore::new());
    {
        let l = start(tmp.path(), store.clone(), 100);
        let r = l.reserve(&JOB, 3, 100).unwrap();
        for c in r {
            l.append(passed(c)).unwrap();
        }
        l.checkpoint(&signer()).unwrap();
    }
    // The appliance advanced the counter for the next block and died
    // before the units-reserved record.
    store.advance(&JOB, 8).unwrap();

    let l = ledger(tmp.path(), store.clone()).unwrap();
    let rec = l.recover(&JOB).unwrap();
    assert_eq!(rec.counter, 8);
    assert_eq!(rec.reserved_in_log, 3);
    assert_eq!(rec.gap, Some(3..8));
    assert!(rec.aborted.is_empty());
    assert!(rec.to_string().contains("never recorded"), "{rec}");
    // Recovering again finds nothing more.
    assert!(l.recover(&JOB).unwrap().was_clean());
    assert_eq!(l.reserve(&JOB, 2, 100).unwrap(), 8..10);
    l.append(passed(8)).unwrap();
    l.append(passed(9)).unwrap();
    l.checkpoint(&signer()).unwrap();

    let report = verify_dir(
        tmp.path(),
        [0, 1, 2, 8, 9].into_iter().map(cert).collect(),
        100,
    );
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.units.unused, 5);
    assert_eq!(report.quota.used, 10);
}

#[test]
fn reserved_values_left_open_are_aborted_or_unused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryCounterStore::new());
    {
        let l = start(tmp.path(), store.clone(), 100);
        let a = l.reserve(&JOB, 10, 100).unwrap();
        // Units 0, 1 recorded, 2 missing (crashed in flight), 3 recorded.
        l.append(passed(a.start)).unwrap();
        l.append(passed(a.start + 1)).unwrap();
        l.append(failed(a.start + 3, "challenge")).unwrap();
        // A second block on another channel, nothing recorded.
        assert_eq!(l.reserve(&JOB, 4, 100).unwrap(), 10..14);
    }
    let l = ledger(tmp.path(), store.clone()).unwrap();
    let rec = l.recover(&JOB).unwrap();
    assert_eq!(rec.aborted, vec![2, 4, 10]);
    assert_eq!(rec.unused, vec![5..10, 11..14]);
    assert_eq!(rec.gap, None);
    l.checkpoint(&signer()).unwrap();
    let report = verify_dir(tmp.path(), [0, 1].into_iter().map(cert).collect(), 100);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.units.aborted, 3);
    assert_eq!(report.units.unused, 8);
    assert_eq!(
        report.units.passed + report.units.failed + report.units.aborted + report.units.unused,
        store.read(&JOB).unwrap()
    );
}

#[test]
fn deleted_log_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryCounterStore::new());
    {
        let l = start(tmp.path(), store.clone(), 100);
        l.reserve(&JOB, 5, 100).unwrap();
        l.checkpoint(&signer()).unwrap();
    }
    std::fs::remove_dir_all(tmp.path()).unwrap();
    let err = ledger(tmp.path(), store.clone()).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::LogRolledBack {
                finding: RollbackFinding::LogBelowHighWater { log_size: 0, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("older copy was restored"), "{err}");

    // Without a high-water mark (say, it was never written), the counter
    // alone still proves the log is missing.
    store.force(&LOG_HIGH_WATER_ID, 0);
    let l = ledger(tmp.path(), store).unwrap();
    let err = l.recover(&JOB).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::LogRolledBack {
                finding: RollbackFinding::LogMissing { counter: 5, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("holds no record of this job"),
        "{err}"
    );
}

#[test]
fn truncated_log_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryCounterStore::new());
    {
        let l = start(tmp.path(), store.clone(), 100);
        for _ in 0..3 {
            let r = l.reserve(&JOB, 2, 100).unwrap();
            for c in r {
                l.append(passed(c)).unwrap();
            }
        }
    }
    // Cut the log back to its first 4 records (no checkpoint was signed:
    // only the high-water mark can tell).
    let path = tmp.path().join(flashgate_audit::LOG_FILE);
    let mut f = flashgate_audit::RecordFile::open(&path).unwrap();
    let mut keep = 0;
    for _ in 0..4 {
        let (off, b) = f.next_bytes().unwrap().unwrap();
        keep = off + 4 + b.len() as u64;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(keep)
        .unwrap();
    let err = ledger(tmp.path(), store).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::LogRolledBack {
                finding: RollbackFinding::LogBelowHighWater { log_size: 4, .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn older_copy_restored_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("log");
    let backup = tmp.path().join("backup");
    let store = Arc::new(FileCounterStore::new(&tmp.path().join("counters")).unwrap());
    {
        let l = start(&live, store.clone(), 100);
        let r = l.reserve(&JOB, 2, 100).unwrap();
        for c in r {
            l.append(passed(c)).unwrap();
        }
        l.checkpoint(&signer()).unwrap();
        // Back up the log here.
        std::fs::create_dir_all(&backup).unwrap();
        for f in [
            flashgate_audit::LOG_FILE,
            flashgate_audit::LEAVES_FILE,
            flashgate_audit::CHECKPOINTS_FILE,
        ] {
            std::fs::copy(live.join(f), backup.join(f)).unwrap();
        }
        let r = l.reserve(&JOB, 2, 100).unwrap();
        for c in r {
            l.append(passed(c)).unwrap();
        }
        l.checkpoint(&signer()).unwrap();
    }
    // Restore the backup over the live log: consistent in itself, signed,
    // but older than what the counter store has seen.
    for f in [
        flashgate_audit::LOG_FILE,
        flashgate_audit::LEAVES_FILE,
        flashgate_audit::CHECKPOINTS_FILE,
    ] {
        std::fs::copy(backup.join(f), live.join(f)).unwrap();
    }
    let err = ledger(&live, store.clone()).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::LogRolledBack {
                finding: RollbackFinding::LogBelowHighWater { .. },
                ..
            }
        ),
        "{err}"
    );
    // Even with the high-water mark gone, the counter shows more reserved
    // than the restored log knows... (the log still reserves 2, the
    // counter says 4: that is a gap, which the high-water mark is there to
    // tell apart). The counter behind the log is refused outright:
    let store2 = Arc::new(MemoryCounterStore::new());
    store2.force(&JOB, 1);
    let l = ledger(&live, store2).unwrap();
    let err = l.recover(&JOB).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::LogRolledBack {
                finding: RollbackFinding::CounterBehindLog {
                    counter: 1,
                    logged: 2
                },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("refusing to run job"), "{err}");
}

#[test]
fn file_counter_store_is_monotonic_and_persistent() {
    let tmp = tempfile::tempdir().unwrap();
    let s = FileCounterStore::new(tmp.path()).unwrap();
    assert_eq!(s.read(&JOB).unwrap(), 0);
    s.advance(&JOB, 5).unwrap();
    s.advance(&JOB, 5).unwrap();
    assert!(s.advance(&JOB, 4).is_err());
    let s = FileCounterStore::new(tmp.path()).unwrap();
    assert_eq!(s.read(&JOB).unwrap(), 5);
    assert_eq!(s.read(&OTHER_JOB).unwrap(), 0);
}

#[test]
fn release_records_the_unused_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryCounterStore::new());
    let l = start(tmp.path(), store, 100);
    let r = l.reserve(&JOB, 8, 100).unwrap();
    l.append(passed(r.start)).unwrap();
    let a = l.release(&JOB, r.start + 1..r.end, "run ended").unwrap();
    assert!(a.is_some());
    assert!(l.release(&JOB, 3..3, "nothing").unwrap().is_none());
    l.append(run_stopped()).unwrap();
    l.checkpoint(&signer()).unwrap();
    let report = verify_dir(tmp.path(), vec![cert(0)], 100);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.units.unused, 7);
}
