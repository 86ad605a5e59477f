//! The log directory: group commit, durability, crash tails, checkpoints,
//! proofs, export and verification end to end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;

use common::*;
use flashgate_audit::bundle::{export, BundleExtras};
use flashgate_audit::{
    prove_uid, verify_bundle, verify_checkpoint, verify_proof, AuditError, Es256Signer, Log,
    LogOptions, Record, RecordFile, RollbackFinding, CHECKPOINTS_FILE, LEAVES_FILE, LOG_FILE,
};

fn open(dir: &std::path::Path) -> Log {
    Log::open(dir, LogOptions::new(APPLIANCE)).unwrap()
}

fn all_records(dir: &std::path::Path) -> Vec<Record> {
    let mut f = RecordFile::open(&dir.join(LOG_FILE)).unwrap();
    let mut out = Vec::new();
    while let Some((_, b)) = f.next_bytes().unwrap() {
        out.push(Record::decode(b).unwrap());
    }
    out
}

#[test]
fn group_commit_with_64_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Arc::new(open(tmp.path()));
    const THREADS: u64 = 64;
    const EACH: u64 = 40;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = Arc::clone(&log);
            let path = tmp.path().join(LOG_FILE);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..EACH {
                    let c = t * EACH + i;
                    let a = log.append(passed(c)).unwrap();
                    // Written before append returned: the file already
                    // holds it (durability is checked by reopening below).
                    assert!(log.size() > a.seq);
                    assert!(std::fs::metadata(&path).unwrap().len() > 0);
                    got.push((a.seq, a.leaf_hash, c));
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    let syncs = log.sync_count();
    assert_eq!(log.size(), THREADS * EACH);
    assert!(
        syncs < THREADS * EACH,
        "group commit should share syncs: {syncs} syncs for {} records",
        THREADS * EACH
    );
    drop(log);

    // Reopen: every acknowledged record is there, at its sequence number,
    // with its leaf hash, contiguous from 0, each once.
    let log = open(tmp.path());
    assert_eq!(log.open_report().records, THREADS * EACH);
    assert_eq!(log.open_report().truncated_bytes, 0);
    let records = all_records(tmp.path());
    all.sort_by_key(|(seq, _, _)| *seq);
    let mut counters = HashSet::new();
    for (i, (seq, leaf, c)) in all.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        let rec = &records[i];
        assert_eq!(rec.seq, *seq);
        assert_eq!(flashgate_tlog::leaf_hash(&rec.encode()), *leaf);
        match &rec.kind {
            flashgate_audit::RecordKind::UnitPassed(p) => assert_eq!(p.counter, *c),
            k => panic!("unexpected {k:?}"),
        }
        assert!(counters.insert(*c));
    }
    // Times never go backwards.
    assert!(records.windows(2).all(|w| w[0].time <= w[1].time));
}

#[test]
fn append_many_is_contiguous() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    log.append(imported(5)).unwrap();
    let r: Vec<_> = log
        .append_many((0..5).map(passed).collect())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        r.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}

#[test]
fn truncated_tail_is_cut_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let log = open(tmp.path());
        for c in 0..10 {
            log.append(passed(c)).unwrap();
        }
    }
    // A crash in the middle of writing record 10: its first 37 bytes.
    let full = {
        let r = Record {
            seq: 10,
            time: 0,
            prev: [0; 32],
            kind: passed(10),
        };
        let mut f = Vec::new();
        flashgate_audit::frame::put_frame(&mut f, &r.encode());
        f
    };
    let path = tmp.path().join(LOG_FILE);
    let before = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&full[..37])
        .unwrap();
    let log = open(tmp.path());
    assert_eq!(log.open_report().records, 10);
    assert_eq!(log.open_report().truncated_bytes, 37);
    assert!(log.open_report().to_string().contains("cut an incomplete"));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), before);
    assert_eq!(log.append(passed(10)).unwrap().seq, 10);
    drop(log);
    let log = open(tmp.path());
    assert_eq!(log.size(), 11);
    assert_eq!(log.open_report().truncated_bytes, 0);
}

#[test]
fn zero_filled_tail_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let log = open(tmp.path());
        log.append(passed(0)).unwrap();
    }
    let path = tmp.path().join(LOG_FILE);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[0u8; 300])
        .unwrap();
    let log = open(tmp.path());
    assert_eq!(log.size(), 1);
    assert_eq!(log.open_report().truncated_bytes, 300);
}

#[test]
fn damage_in_the_middle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let log = open(tmp.path());
        for c in 0..5 {
            log.append(passed(c)).unwrap();
        }
    }
    let path = tmp.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[60] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    match Log::open(tmp.path(), LogOptions::new(APPLIANCE)) {
        Err(AuditError::Corrupt { .. }) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn leaves_file_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let root = {
        let log = open(tmp.path());
        for c in 0..20 {
            log.append(passed(c)).unwrap();
        }
        log.root()
    };
    let leaves = tmp.path().join(LEAVES_FILE);
    let mut b = std::fs::read(&leaves).unwrap();
    b.truncate(7 * 32 + 5);
    b[3 * 32] ^= 1;
    std::fs::write(&leaves, b).unwrap();
    let log = open(tmp.path());
    assert_eq!(log.open_report().leaves_rewritten, 17);
    assert_eq!(std::fs::metadata(&leaves).unwrap().len(), 20 * 32);
    assert_eq!(log.root(), root);
    let proof = log.inclusion_proof(3, 20).unwrap();
    let records = all_records(tmp.path());
    flashgate_tlog::verify_inclusion(
        &flashgate_tlog::leaf_hash(&records[3].encode()),
        3,
        20,
        &proof,
        &root.1,
    )
    .unwrap();
}

#[test]
fn checkpoints_are_signed_stored_and_checked_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let s = signer();
    {
        let log = open(tmp.path());
        let first = log.checkpoint(&s).unwrap();
        assert_eq!(first.size, 0);
        for c in 0..7 {
            log.append(passed(c)).unwrap();
        }
        let cp = log.checkpoint(&s).unwrap();
        assert_eq!(cp.size, 7);
        let v = verify_checkpoint(&cp.bytes, &s.public_key()).unwrap();
        assert_eq!(v.size(), 7);
        assert_eq!(v.checkpoint().origin, format!("flashgate/{APPLIANCE}"));
        // No new records: the same checkpoint, not a second one.
        assert_eq!(log.checkpoint(&s).unwrap(), cp);
        assert_eq!(log.unprotected(), 0);
        log.append(passed(7)).unwrap();
        assert_eq!(log.unprotected(), 1);
        let proof = log.consistency_proof(7, 8).unwrap();
        flashgate_tlog::verify_consistency(7, 8, &proof, &cp.root, &log.root().1).unwrap();
    }
    let log = open(tmp.path());
    assert_eq!(log.open_report().checkpoints, 2);
    assert_eq!(log.latest_checkpoint().unwrap().size, 7);
    drop(log);

    // Cut the log below its checkpoint: opening refuses.
    let path = tmp.path().join(LOG_FILE);
    let records = all_records(tmp.path());
    let keep: usize = records[..5].iter().map(|r| r.encode().len() + 4).sum();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(keep as u64).unwrap();
    match Log::open(tmp.path(), LogOptions::new(APPLIANCE)) {
        Err(AuditError::LogRolledBack {
            finding:
                RollbackFinding::CheckpointAheadOfLog {
                    checkpoint_size: 7,
                    log_size: 5,
                },
            ..
        }) => {}
        other => panic!("expected LogRolledBack, got {other:?}"),
    }
}

#[test]
fn replaced_history_under_a_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let log = open(tmp.path());
        for c in 0..4 {
            log.append(passed(c)).unwrap();
        }
        log.checkpoint(&signer()).unwrap();
    }
    // Rewrite the log with a different but well-chained history.
    let other = chain((10..14).map(passed).collect());
    std::fs::write(tmp.path().join(LOG_FILE), frames(&other)).unwrap();
    std::fs::remove_file(tmp.path().join(LEAVES_FILE)).unwrap();
    let err = Log::open(tmp.path(), LogOptions::new(APPLIANCE)).unwrap_err();
    assert!(
        matches!(
            &err,
            AuditError::LogRolledBack {
                finding: RollbackFinding::CheckpointMismatch { checkpoint_size: 4 },
                ..
            }
        ),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("do not match the signed checkpoint"));
}

#[test]
fn another_appliances_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let log = open(tmp.path());
        log.checkpoint(&signer()).unwrap();
    }
    assert!(matches!(
        Log::open(tmp.path(), LogOptions::new("other")),
        Err(AuditError::Corrupt { .. })
    ));
    let _ = std::fs::remove_file(tmp.path().join(CHECKPOINTS_FILE));
}

#[test]
fn clock_going_back_still_gives_rising_times() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Arc::new(std::sync::atomic::AtomicU64::new(5_000));
    let t2 = Arc::clone(&t);
    let log = Log::open(
        tmp.path(),
        LogOptions::new(APPLIANCE).clock(Arc::new(move || {
            t2.load(std::sync::atomic::Ordering::SeqCst)
        })),
    )
    .unwrap();
    log.append(passed(0)).unwrap();
    t.store(1_000, std::sync::atomic::Ordering::SeqCst);
    log.append(passed(1)).unwrap();
    let r = all_records(tmp.path());
    assert_eq!(r[0].time, 5_000);
    assert_eq!(r[1].time, 5_000);
}

/// The whole path: a log written through the API, exported, verified from
/// disk, and a unit proved.
#[test]
fn export_verify_and_prove_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let s = signer();
    let log = open(&logdir);
    // Another job's records are in the same log.
    log.append(flashgate_audit::RecordKind::JobRemoved(
        flashgate_audit::record::JobRemoved { job_id: OTHER_JOB },
    ))
    .unwrap();
    for k in history(UNITS_E2E) {
        log.append(k).unwrap();
        if log.size() % 4 == 0 {
            log.checkpoint(&s).unwrap();
        }
    }
    log.checkpoint(&s).unwrap();
    let out = tmp.path().join("bundle");
    let extras = BundleExtras {
        enrollment: b"enrollment".to_vec(),
        manifest: b"manifest".to_vec(),
        certificates: (0..UNITS_E2E).filter(|c| c % 5 != 4).map(cert).collect(),
        certificate_dir: None,
    };
    let index = export(&logdir, &JOB, &extras, &out).unwrap();
    assert_eq!(index.records, log.size());
    // Exporting into a non-empty directory is refused.
    assert!(export(&logdir, &JOB, &extras, &out).is_err());

    let report = verify_bundle(&out, &options(100)).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.units.passed, 10);
    assert_eq!(report.units.failed, 2);

    // Prove unit 7 from the log directory and from the bundle.
    for dir in [&logdir, &out] {
        let proof = prove_uid(dir, &uid(7), Some(&JOB)).unwrap();
        let json = serde_json::to_string(&proof).unwrap();
        let back: flashgate_audit::InclusionProof = serde_json::from_str(&json).unwrap();
        let proven = verify_proof(&back, &s.public_key()).unwrap();
        match proven.record.kind {
            flashgate_audit::RecordKind::UnitPassed(p) => assert_eq!(p.counter, 7),
            k => panic!("{k:?}"),
        }
        // A tampered proof fails.
        let mut bad = back.clone();
        bad.record[10] ^= 1;
        assert!(verify_proof(&bad, &s.public_key()).is_err());
        let mut bad = back.clone();
        bad.index += 1;
        assert!(verify_proof(&bad, &s.public_key()).is_err());
        assert!(verify_proof(&back, &other_signer().public_key()).is_err());
    }
    assert!(matches!(
        prove_uid(&out, b"no such uid", None),
        Err(AuditError::NotFound(_))
    ));

    // Tampering with the bundle on disk: an extra, misnamed certificate and
    // an index that no longer matches.
    std::fs::write(out.join("certs").join("00.der"), b"x").unwrap();
    std::fs::write(out.join("manifest.cose"), b"other manifest").unwrap();
    let r = verify_bundle(&out, &options(100)).unwrap();
    assert!(
        r.has(flashgate_audit::AnomalyKind::CertificateMisnamed),
        "{r}"
    );
    assert!(
        r.has(flashgate_audit::AnomalyKind::CertificateNotInLog),
        "{r}"
    );
    assert!(
        r.has(flashgate_audit::AnomalyKind::BundleIndexMismatch),
        "{r}"
    );

    // A records.log that is not there is an error, not a report.
    std::fs::remove_file(out.join("records.log")).unwrap();
    assert!(verify_bundle(&out, &options(100)).is_err());
}

const UNITS_E2E: u64 = 12;
