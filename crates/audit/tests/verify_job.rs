//! The verifier against the job's signed facts: reworks, the job window,
//! serial scheme, lock level, firmware, the job-imported record, the
//! appliance's checkpoint origin, the kept checkpoint, oversized records,
//! bundle.json, and exact duplicate search once the sort spills to disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use flashgate_audit::record::{UnitAborted, UnitPassed};
use flashgate_audit::{
    verify_bundle, verify_parts, AnomalyKind as K, BundleIndex, CertificateFile, RecordKind, Report,
};

#[track_caller]
fn assert_only(r: &Report, expected: &[K]) {
    let mut e = expected.to_vec();
    e.sort();
    e.dedup();
    let got: Vec<K> = r.anomaly_counts.keys().copied().collect();
    assert_eq!(got, e, "\n{r}");
}

fn the(r: &Report, kind: K) -> &flashgate_audit::Anomaly {
    r.anomalies
        .iter()
        .find(|a| a.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} in\n{r}"))
}

fn with_uid(kind: RecordKind, uid_: Vec<u8>, rework_of: Option<u64>) -> RecordKind {
    match kind {
        RecordKind::UnitPassed(mut p) => {
            p.uid = uid_;
            p.rework_of = rework_of;
            RecordKind::UnitPassed(p)
        }
        RecordKind::UnitFailed(mut f) => {
            f.uid = Some(uid_);
            f.rework_of = rework_of;
            RecordKind::UnitFailed(f)
        }
        other => other,
    }
}

fn passed_unit(kind: &mut RecordKind) -> &mut UnitPassed {
    match kind {
        RecordKind::UnitPassed(p) => p,
        _ => panic!("not a passed unit"),
    }
}

/// Import, run, a reservation of `units.len()` values, the units, run end;
/// checkpointed at the end. Returns (records, checkpoints, certificates).
type Parts = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<[u8; 32]>);

fn bundle_of(units: Vec<RecordKind>) -> Parts {
    let n = units.len() as u64;
    let mut certs = Vec::new();
    for u in &units {
        if let RecordKind::UnitPassed(p) = u {
            certs.push(p.cert_sha256);
        }
    }
    let mut h = vec![imported(QUOTA), run_started(), reserved(0, n)];
    h.extend(units);
    h.push(run_stopped());
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    (records, cps, certs)
}

fn run(units: Vec<RecordKind>) -> Report {
    let (records, cps, certs) = bundle_of(units);
    verify(&records, &cps, &certs, &options(QUOTA))
}

const U: &[u8] = &[0xEE, 1, 2, 3];
const QUOTA: u64 = 100_000;

#[test]
fn a_rework_after_a_failure_is_counted_not_flagged() {
    let r = run(vec![
        with_uid(failed(0, "program"), U.to_vec(), None),
        with_uid(failed(1, "challenge"), U.to_vec(), Some(0)),
        with_uid(passed(2), U.to_vec(), Some(1)),
    ]);
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.reworks, 2);
    assert!(r.to_string().contains("(2 reworks)"), "{r}");
}

#[test]
fn a_rework_of_an_aborted_unit_is_counted() {
    // The aborted unit's UID is not in the log: rework_of names its value.
    let aborted = RecordKind::UnitAborted(UnitAborted {
        job_id: JOB,
        counter: 0,
        reason: "crash".to_owned(),
    });
    let r = run(vec![aborted, with_uid(passed(1), U.to_vec(), Some(0))]);
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.reworks, 1);
}

#[test]
fn a_repeat_without_rework_of_is_invalid() {
    let r = run(vec![
        with_uid(failed(0, "program"), U.to_vec(), None),
        with_uid(passed(1), U.to_vec(), None),
    ]);
    assert_only(&r, &[K::ReworkInvalid]);
    let a = the(&r, K::ReworkInvalid);
    assert_eq!(a.seq, Some(4));
    assert!(
        a.detail.contains("record 3") && a.detail.contains("ee010203"),
        "{}",
        a.detail
    );
    assert_eq!(r.reworks, 0);
}

#[test]
fn a_rework_naming_another_attempt_is_invalid() {
    let r = run(vec![
        with_uid(failed(0, "program"), U.to_vec(), None),
        failed(1, "program"),
        with_uid(passed(2), U.to_vec(), Some(1)),
    ]);
    assert_only(&r, &[K::ReworkInvalid]);
    assert!(the(&r, K::ReworkInvalid).detail.contains("used 0"), "{r}");
    // A first attempt naming a value that was not aborted.
    let r = run(vec![
        failed(0, "program"),
        with_uid(passed(1), U.to_vec(), Some(0)),
    ]);
    assert_only(&r, &[K::ReworkInvalid]);
}

#[test]
fn a_rework_of_a_passed_unit_is_invalid_and_a_second_pass_a_duplicate() {
    let r = run(vec![
        with_uid(passed(0), U.to_vec(), None),
        with_uid(failed(1, "program"), U.to_vec(), Some(0)),
    ]);
    assert_only(&r, &[K::ReworkInvalid]);
    assert!(the(&r, K::ReworkInvalid)
        .detail
        .contains("after it passed at record 3"));

    let r = run(vec![
        with_uid(passed(0), U.to_vec(), None),
        with_uid(passed(1), U.to_vec(), Some(0)),
    ]);
    assert_only(&r, &[K::DuplicateUid]);
    let a = the(&r, K::DuplicateUid);
    assert_eq!(a.seq, Some(4));
    assert!(a.detail.contains("record 3"), "{}", a.detail);
}

#[test]
fn units_outside_the_job_window_are_caught() {
    let (records, cps, certs) = bundle_of((0..4).map(passed).collect());
    let mut opts = options(QUOTA);
    // Records are dated 1,700,000,000,000 ms + 1 s per record: units are
    // records 3 to 6. The window ends at the start of record 5.
    opts.facts.not_after = 1_700_000_005;
    let r = verify(&records, &cps, &certs, &opts);
    assert_only(&r, &[K::UnitOutsideWindow]);
    assert_eq!(r.anomaly_counts[&K::UnitOutsideWindow], 2);
    assert_eq!(the(&r, K::UnitOutsideWindow).seq, Some(5));
    opts.facts.not_after = NOT_AFTER;
    opts.facts.not_before = 1_700_000_004;
    let r = verify(&records, &cps, &certs, &opts);
    assert_eq!(r.anomaly_counts.get(&K::UnitOutsideWindow), Some(&1));
    assert_eq!(the(&r, K::UnitOutsideWindow).seq, Some(3));
}

#[test]
fn certificates_dated_outside_the_window_or_not_x509_are_caught() {
    let early = cert_from(1, NOT_BEFORE - 86_400);
    let garbage = b"not a certificate".to_vec();
    let mut units: Vec<RecordKind> = (0..3).map(passed).collect();
    passed_unit(&mut units[1]).cert_sha256 = sha256(&early);
    passed_unit(&mut units[2]).cert_sha256 = sha256(&garbage);
    let (records, cps, _) = bundle_of(units);
    let files = vec![
        CertificateFile::from_der(&cert(0)),
        CertificateFile::from_der(&early),
        CertificateFile::from_der(&garbage),
    ];
    let r = verify_parts(
        frames(&records).as_slice(),
        frames(&cps).as_slice(),
        Some(files),
        &options(QUOTA),
    )
    .unwrap();
    assert_only(&r, &[K::CertificateOutsideWindow, K::CertificateMalformed]);
    assert_eq!(the(&r, K::CertificateOutsideWindow).seq, Some(4));
    assert_eq!(the(&r, K::CertificateMalformed).seq, Some(5));
}

#[test]
fn a_certificate_file_is_read_as_strict_der_with_nothing_after_it() {
    use flashgate_audit::CertificateStart;
    let good = cert(0);
    assert_eq!(
        CertificateFile::from_der(&good).start,
        CertificateStart::NotBefore(CERT_NOT_BEFORE as i64)
    );
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(
        CertificateFile::from_der(&trailing).start,
        CertificateStart::Malformed
    );
    assert_eq!(
        CertificateFile::from_der(&good[..good.len() - 1]).start,
        CertificateStart::Malformed
    );
}

#[test]
fn serial_lock_and_firmware_are_checked_against_the_job() {
    let mut units: Vec<RecordKind> = (0..4).map(passed).collect();
    passed_unit(&mut units[1]).serial = "SN-00000009".to_owned();
    passed_unit(&mut units[2]).lock_level = "none".to_owned();
    passed_unit(&mut units[3]).firmware_sha256 = [0x66; 32];
    let r = run(units);
    assert_only(
        &r,
        &[K::SerialMismatch, K::LockBelowPolicy, K::FirmwareMismatch],
    );
    assert_eq!(the(&r, K::SerialMismatch).seq, Some(4));
    assert!(the(&r, K::SerialMismatch)
        .detail
        .contains("\"SN-00000001\""));
    assert_eq!(the(&r, K::LockBelowPolicy).seq, Some(5));
    assert_eq!(the(&r, K::FirmwareMismatch).seq, Some(6));

    // Above the policy's level is fine; a name no level has is below it.
    let mut units: Vec<RecordKind> = (0..2).map(passed).collect();
    passed_unit(&mut units[0]).lock_level = "permanent".to_owned();
    passed_unit(&mut units[1]).lock_level = "readout-protected".to_owned();
    let r = run(units);
    assert_only(&r, &[K::LockBelowPolicy]);
    assert_eq!(the(&r, K::LockBelowPolicy).seq, Some(4));
}

#[test]
fn without_a_known_firmware_digest_units_must_agree() {
    let mut units: Vec<RecordKind> = (0..3).map(passed).collect();
    for u in &mut units {
        passed_unit(u).firmware_sha256 = [0x77; 32];
    }
    let (records, cps, certs) = bundle_of(units.clone());
    let mut opts = options(QUOTA);
    opts.facts.firmware_sha256 = None;
    assert!(verify(&records, &cps, &certs, &opts).is_clean());
    passed_unit(&mut units[2]).firmware_sha256 = [0x78; 32];
    let (records, cps, certs) = bundle_of(units);
    let r = verify(&records, &cps, &certs, &opts);
    assert_only(&r, &[K::FirmwareMismatch]);
    assert!(the(&r, K::FirmwareMismatch).detail.contains("record 3"));
}

#[test]
fn job_imported_is_checked_against_the_manifest() {
    let (records, cps, certs) = bundle_of(vec![passed(0)]);
    let mut opts = options(QUOTA);
    opts.facts.manifest_digest = [0x45; 32];
    let r = verify(&records, &cps, &certs, &opts);
    assert_only(&r, &[K::JobFactsMismatch]);
    assert!(the(&r, K::JobFactsMismatch)
        .detail
        .contains("manifest digest"));
    let mut opts = options(QUOTA);
    opts.facts.security_version = 4;
    let r = verify(&records, &cps, &certs, &opts);
    assert_only(&r, &[K::JobFactsMismatch]);
    assert!(the(&r, K::JobFactsMismatch)
        .detail
        .contains("security version 3"));
}

#[test]
fn checkpoints_must_name_this_appliance_and_carry_no_extensions() {
    let (records, _, certs) = bundle_of(vec![passed(0)]);
    let size = records.len() as u64;
    let root = root_at(&records, records.len());
    let sign =
        |cp: &flashgate_tlog::Checkpoint| flashgate_audit::sign_checkpoint(&signer(), cp).unwrap();
    // Consistently another appliance's origin, signed by the pinned key.
    let other = flashgate_tlog::Checkpoint::new("flashgate/appliance-0002", size, root).unwrap();
    let r = verify(&records, &[sign(&other)], &certs, &options(QUOTA));
    assert_only(&r, &[K::CheckpointOrigin]);
    // The right origin with an extension line: refused, so nothing covers the records.
    let mut ext = flashgate_tlog::Checkpoint::new(
        flashgate_audit::checkpoint::origin_for(APPLIANCE),
        size,
        root,
    )
    .unwrap();
    ext.extensions.push("witness note".to_owned());
    let r = verify(&records, &[sign(&ext)], &certs, &options(QUOTA));
    assert_only(&r, &[K::MalformedCheckpoint, K::UnprotectedRecords]);
    assert!(the(&r, K::MalformedCheckpoint).detail.contains("extension"));
    // The same as the kept checkpoint.
    let mut opts = options(QUOTA);
    opts.previous_checkpoint = Some(sign(&ext));
    let r = verify(
        &records,
        &[checkpoint(&records, records.len())],
        &certs,
        &opts,
    );
    assert_only(&r, &[K::PreviousCheckpointInvalid]);
}

#[test]
fn a_whole_checkpoints_log_can_be_the_kept_checkpoint() {
    let (records, cps, certs) = bundle_of((0..3).map(passed).collect());
    // An earlier export's checkpoints.log, ending at 5 records.
    let kept_log = frames(&[checkpoint(&records, 2), checkpoint(&records, 5)]);
    let mut opts = options(QUOTA);
    opts.previous_checkpoint = Some(kept_log.clone());
    assert!(verify(&records, &cps, &certs, &opts).is_clean());
    // A fork at 5: only the log's last entry is compared, and it differs.
    let mut other = records.clone();
    edit(&mut other, 4, |r| r.time += 1);
    rechain(&mut other);
    opts.previous_checkpoint = Some(frames(&[checkpoint(&records, 2), checkpoint(&other, 5)]));
    let r = verify(&records, &cps, &certs, &opts);
    assert_only(&r, &[K::PreviousCheckpointMismatch]);
    assert_eq!(
        flashgate_audit::kept_checkpoint(&kept_log, &opts.log_key),
        Ok(checkpoint(&records, 5))
    );
}

#[test]
fn an_oversized_record_is_malformed_and_reading_goes_on() {
    let (mut records, _, certs) = bundle_of((0..3).map(passed).collect());
    // A complete entry of 70,000 bytes in place of record 4.
    records[4] = vec![0xA5; 70_000];
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &certs, &options(QUOTA));
    assert!(r.has(K::MalformedRecord), "{r}");
    assert!(!r.has(K::TruncatedRecords), "{r}");
    assert_eq!(the(&r, K::MalformedRecord).seq, Some(4));
    assert!(the(&r, K::MalformedRecord).detail.contains("70000 bytes"));
    // Every record was read, and the signed root over them (the big entry's
    // leaf included) matches.
    assert_eq!(r.records, records.len() as u64);
    assert!(!r.has(K::CheckpointRootMismatch), "{r}");
    assert!(!r.has(K::UnprotectedRecords), "{r}");
    // An entry the file ends inside is still truncation.
    let mut bytes = frames(&records);
    bytes.truncate(bytes.len() - frames(&records[5..]).len() - 10);
    let r = verify_parts(
        bytes.as_slice(),
        frames(&cps).as_slice(),
        Some(&certs),
        &options(QUOTA),
    )
    .unwrap();
    assert!(r.has(K::TruncatedRecords), "{r}");
}

/// Writes a bundle directory as `export` would, from parts.
fn write_bundle(
    dir: &std::path::Path,
    records: &[Vec<u8>],
    cps: &[Vec<u8>],
    ders: &[Vec<u8>],
) -> BundleIndex {
    use std::collections::BTreeMap;
    let entry = |bytes: &[u8]| flashgate_audit::bundle::FileEntry {
        sha256: hex::encode(sha256(bytes)),
        bytes: bytes.len() as u64,
    };
    let mut files = BTreeMap::new();
    for (name, bytes) in [
        ("records.log", frames(records)),
        ("checkpoints.log", frames(cps)),
        ("enrollment.cbor", b"enrollment".to_vec()),
        ("manifest.cose", b"manifest".to_vec()),
    ] {
        std::fs::write(dir.join(name), &bytes).unwrap();
        files.insert(name.to_owned(), entry(&bytes));
    }
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let mut certificates = Vec::new();
    for der in ders {
        let name = hex::encode(sha256(der));
        std::fs::write(dir.join("certs").join(format!("{name}.der")), der).unwrap();
        certificates.push(name);
    }
    certificates.sort();
    let index = BundleIndex {
        format: flashgate_audit::bundle::BUNDLE_FORMAT.to_owned(),
        job_id: hex::encode(JOB),
        records: records.len() as u64,
        checkpoints: cps.len() as u64,
        files,
        certificates,
    };
    write_index(dir, &index);
    index
}

fn write_index(dir: &std::path::Path, index: &BundleIndex) {
    std::fs::write(
        dir.join("bundle.json"),
        serde_json::to_vec_pretty(index).unwrap(),
    )
    .unwrap();
}

#[test]
fn bundle_json_counts_are_checked_against_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let units: Vec<RecordKind> = (0..3).map(passed).collect();
    let (records, cps, _) = bundle_of(units);
    let ders: Vec<Vec<u8>> = (0..3).map(cert).collect();
    let index = write_bundle(dir, &records, &cps, &ders);
    let r = verify_bundle(dir, &options(QUOTA)).unwrap();
    assert!(r.is_clean(), "{r}");

    for tamper in [
        |i: &mut BundleIndex| i.records += 1,
        |i: &mut BundleIndex| i.checkpoints = 0,
        |i: &mut BundleIndex| {
            i.certificates.pop();
        },
        |i: &mut BundleIndex| i.certificates.reverse(),
        |i: &mut BundleIndex| i.certificates[0] = hex::encode([7u8; 32]),
    ] {
        let mut bad = index.clone();
        tamper(&mut bad);
        write_index(dir, &bad);
        let r = verify_bundle(dir, &options(QUOTA)).unwrap();
        assert_only(&r, &[K::BundleIndexMismatch]);
    }
}

#[test]
fn certificate_files_of_a_bundle_directory_are_read_for_their_window() {
    let tmp = tempfile::tempdir().unwrap();
    let late = cert_from(2, NOT_AFTER + 1);
    let mut units: Vec<RecordKind> = (0..3).map(passed).collect();
    passed_unit(&mut units[2]).cert_sha256 = sha256(&late);
    let (records, cps, _) = bundle_of(units);
    write_bundle(tmp.path(), &records, &cps, &[cert(0), cert(1), late]);
    let r = verify_bundle(tmp.path(), &options(QUOTA)).unwrap();
    assert_only(&r, &[K::CertificateOutsideWindow]);
    assert_eq!(the(&r, K::CertificateOutsideWindow).seq, Some(5));
}

#[test]
fn duplicates_far_apart_are_found_after_the_sort_spills() {
    // Enough units that each sort writes several runs (4 MB of entries
    // each): duplicates near the start and the end meet only in the merge.
    const N: u64 = 60_000;
    let mut units: Vec<RecordKind> = (0..N).map(passed).collect();
    let last = passed_unit(&mut units[N as usize - 1]);
    last.uid = uid(3);
    last.serial = "SN-00000005".to_owned();
    last.cert_sha256 = sha256(&cert(7));
    let (records, cps, certs) = bundle_of(units);
    let r = verify(&records, &cps, &certs, &options(QUOTA));
    assert_only(
        &r,
        &[
            K::DuplicateUid,
            K::DuplicateSerial,
            K::DuplicateCertificate,
            K::SerialMismatch,
        ],
    );
    let at = Some(N + 2);
    assert_eq!(the(&r, K::DuplicateUid).seq, at);
    assert!(the(&r, K::DuplicateUid).detail.contains("record 6"));
    assert_eq!(the(&r, K::DuplicateSerial).seq, at);
    assert!(the(&r, K::DuplicateSerial).detail.contains("record 8"));
    assert_eq!(the(&r, K::DuplicateCertificate).seq, at);
    assert!(the(&r, K::DuplicateCertificate)
        .detail
        .contains("record 10"));
    assert_eq!(r.anomaly_total(), 4);
}

#[test]
fn json_output_has_the_documented_fields() {
    let r = run(vec![passed(0)]);
    let out = flashgate_audit::VerifyOutput::verified("a-1".to_owned(), "ff".to_owned(), r);
    let v: serde_json::Value = serde_json::from_str(&out.to_json()).unwrap();
    assert_eq!(v["format"], "flashgate-audit-verify/1");
    assert_eq!(v["verdict"], "clean");
    assert_eq!(v["appliance_id"], "a-1");
    assert_eq!(v["fingerprint"], "ff");
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["report"]["units"]["passed"], 1);
    let out = flashgate_audit::VerifyOutput::failed("the bundle is gone.".to_owned());
    let v: serde_json::Value = serde_json::from_str(&out.to_json()).unwrap();
    assert_eq!(v["verdict"], "could-not-verify");
    assert_eq!(v["error"], "the bundle is gone.");
    assert_eq!(v["report"], serde_json::Value::Null);
}

/// Removal is write-ahead: `job-removed` must follow `job-removal-started`,
/// an intent must be completed, and nothing but the completion may come
/// between them.
#[test]
fn removal_must_be_written_ahead_and_completed() {
    use flashgate_audit::record::{JobRemovalStarted, JobRemoved};
    let intent = || RecordKind::JobRemovalStarted(JobRemovalStarted { job_id: JOB });
    let done = || RecordKind::JobRemoved(JobRemoved { job_id: JOB });
    let history = |tail: Vec<RecordKind>| {
        let mut h = vec![
            imported(QUOTA),
            run_started(),
            reserved(0, 1),
            passed(0),
            run_stopped(),
        ];
        h.extend(tail);
        let records = chain(h);
        let cps = vec![checkpoint(&records, records.len())];
        let certs = vec![sha256(&cert(0))];
        verify(&records, &cps, &certs, &options(QUOTA))
    };
    assert_only(&history(vec![intent(), done()]), &[]);
    let r = history(vec![done()]);
    assert_only(&r, &[K::RemovalWithoutIntent]);
    assert_eq!(the(&r, K::RemovalWithoutIntent).seq, Some(5));
    let r = history(vec![intent()]);
    assert_only(&r, &[K::RemovalIncomplete]);
    assert_eq!(the(&r, K::RemovalIncomplete).seq, Some(5));
    let r = history(vec![intent(), run_started(), done()]);
    assert_only(&r, &[K::RecordAfterJobRemoved]);
    assert_eq!(the(&r, K::RecordAfterJobRemoved).seq, Some(6));
}

/// A `log-reset` opens a segment (seq 0) and is reported; anywhere else it
/// is an anomaly. Values carried over from the sealed segment are counted
/// apart from units left unused.
#[test]
fn a_log_reset_opens_a_segment_and_only_there() {
    use flashgate_audit::record::{LogReset, UnitsUnused, REASON_CARRIED_OVER};
    let reset = || {
        RecordKind::LogReset(LogReset {
            segment: 1,
            checkpoint: None,
            lost_records: 3,
            lost_bytes: 120,
            high_water: 9,
            reason: "disk error".to_owned(),
        })
    };
    let carried = RecordKind::UnitsUnused(UnitsUnused {
        job_id: JOB,
        first: 0,
        count: 2,
        reason: REASON_CARRIED_OVER.to_owned(),
    });
    let records = chain(vec![
        reset(),
        imported(QUOTA),
        reserved(0, 2),
        carried,
        run_started(),
        reserved(2, 1),
        passed(2),
        run_stopped(),
    ]);
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &[sha256(&cert(2))], &options(QUOTA));
    let lr = r.log_reset.as_ref().expect("the reset is reported");
    assert_eq!((lr.segment, lr.lost_records, lr.lost_bytes), (1, 3, 120));
    assert_eq!(lr.reason, "disk error");
    assert_eq!(
        (r.units.carried_over, r.units.unused, r.units.passed),
        (2, 0, 1)
    );

    let records = chain(vec![imported(QUOTA), reset()]);
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &[], &options(QUOTA));
    assert_only(&r, &[K::LogResetMisplaced]);
    assert_eq!(the(&r, K::LogResetMisplaced).seq, Some(1));
    assert!(r.log_reset.is_none());
}
