//! Every verifier detection, each on a bundle crafted to have exactly that
//! anomaly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use flashgate_audit::{AnomalyKind as K, Es256Signer, Report};

const UNITS: u64 = 10;

/// A clean bundle: history of 10 units, checkpoints at 5 and at the end.
type Parts = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<[u8; 32]>);

fn clean() -> Parts {
    let records = chain(history(UNITS));
    let cps = vec![checkpoint(&records, 5), checkpoint(&records, records.len())];
    (records, cps, history_certs(UNITS))
}

fn kinds(r: &Report) -> Vec<K> {
    r.anomaly_counts.keys().copied().collect()
}

#[track_caller]
fn assert_only(r: &Report, expected: &[K]) {
    let mut e = expected.to_vec();
    e.sort();
    e.dedup();
    assert_eq!(kinds(r), e, "\n{r}");
}

#[test]
fn clean_bundle_is_clean_and_counted() {
    let (records, cps, certs) = clean();
    let r = verify(&records, &cps, &certs, &options(100));
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.records, records.len() as u64);
    assert_eq!(r.units.passed, 8);
    assert_eq!(r.units.failed, 2);
    assert_eq!(r.failures_by_stage.get("program"), Some(&2));
    assert_eq!(r.quota.used, 10);
    assert_eq!(r.quota.left, 90);
    assert_eq!(r.operators.get("alice").map(|c| c.passed), Some(8));
    assert_eq!(
        r.channels
            .values()
            .map(|c| c.passed + c.failed)
            .sum::<u64>(),
        10
    );
    assert_eq!(r.last_checkpoint_size, Some(records.len() as u64));
    assert_eq!(r.unprotected_records, 0);
    assert!(r.first_time.is_some() && r.last_time > r.first_time);
    // Text and JSON forms.
    let text = r.to_string();
    assert!(text.contains("CLEAN"), "{text}");
    assert!(text.contains("8 passed, 2 failed"), "{text}");
    let json: Report = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json, r);
}

#[test]
fn records_of_other_jobs_are_chained_but_not_counted() {
    let mut kinds_ = history(4);
    kinds_.insert(
        2,
        flashgate_audit::RecordKind::JobRemoved(flashgate_audit::record::JobRemoved {
            job_id: OTHER_JOB,
        }),
    );
    let records = chain(kinds_);
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &history_certs(4), &options(100));
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.records, records.len() as u64);
    assert_eq!(r.job_records, records.len() as u64 - 1);
}

#[test]
fn edited_record_is_caught() {
    let (mut records, cps, certs) = clean();
    // Change the serial of unit 2 (record 5) in place.
    edit(&mut records, 5, |r| {
        if let flashgate_audit::RecordKind::UnitPassed(p) = &mut r.kind {
            p.lock_state = vec![0xFF]; // "was never locked"
        }
    });
    let r = verify(&records, &cps, &certs, &options(100));
    assert_only(&r, &[K::BrokenChain, K::CheckpointRootMismatch]);
    let broken = r
        .anomalies
        .iter()
        .find(|a| a.kind == K::BrokenChain)
        .unwrap();
    assert_eq!(broken.seq, Some(6));
}

#[test]
fn edited_and_rechained_record_is_caught_by_the_checkpoint_alone() {
    let (mut records, cps, certs) = clean();
    edit(&mut records, 7, |r| r.time += 1);
    rechain(&mut records);
    let r = verify(&records, &cps, &certs, &options(100));
    assert_only(&r, &[K::CheckpointRootMismatch]);
}

#[test]
fn byte_flip_makes_a_malformed_record() {
    let (mut records, cps, certs) = clean();
    records[4][0] = 0xbf; // indefinite-length map
    let r = verify(&records, &cps, &certs, &options(100));
    assert!(r.has(K::MalformedRecord), "{r}");
    assert!(r.has(K::CheckpointRootMismatch), "{r}");
}

#[test]
fn deleted_record_is_caught() {
    let (mut records, cps, certs) = clean();
    records.remove(6);
    let r = verify(&records, &cps, &certs, &options(100));
    assert!(r.has(K::SequenceGap), "{r}");
    assert!(r.has(K::BrokenChain), "{r}");
    assert!(r.has(K::CheckpointBeyondLog), "{r}");
    assert!(r.has(K::CountersUnaccounted), "{r}");
    assert!(r.has(K::CertificateNotInLog), "{r}");
}

#[test]
fn duplicated_record_is_caught() {
    let (mut records, cps, certs) = clean();
    let dup = records[6].clone();
    records.insert(7, dup);
    let r = verify(&records, &cps, &certs, &options(100));
    assert!(r.has(K::SequenceRepeated), "{r}");
    assert!(r.has(K::CounterReused), "{r}");
    assert!(r.has(K::DuplicateUid), "{r}");
    assert!(r.has(K::CheckpointRootMismatch), "{r}");
}

#[test]
fn reordered_records_are_caught() {
    let (mut records, cps, certs) = clean();
    records.swap(6, 7);
    let r = verify(&records, &cps, &certs, &options(100));
    assert!(r.has(K::SequenceGap), "{r}");
    assert!(r.has(K::SequenceRepeated), "{r}");
    assert!(r.has(K::BrokenChain), "{r}");
    assert!(r.has(K::CheckpointRootMismatch), "{r}");
}

#[test]
fn records_after_the_last_checkpoint_are_unprotected() {
    let records = chain(history(UNITS));
    let n = records.len();
    let cps = vec![checkpoint(&records, n - 3)];
    let r = verify(&records, &cps, &history_certs(UNITS), &options(100));
    assert_only(&r, &[K::UnprotectedRecords]);
    assert_eq!(r.unprotected_records, 3);
    assert_eq!(r.anomalies[0].seq, Some(n as u64 - 3));
}

#[test]
fn no_checkpoint_leaves_everything_unprotected() {
    let records = chain(history(UNITS));
    let r = verify(&records, &[], &history_certs(UNITS), &options(100));
    assert_only(&r, &[K::UnprotectedRecords]);
    assert_eq!(r.unprotected_records, records.len() as u64);
}

#[test]
fn truncation_after_the_last_checkpoint_is_caught() {
    let (mut records, cps, certs) = clean();
    records.truncate(records.len() - 2);
    let r = verify(&records, &cps, &certs, &options(100));
    assert!(r.has(K::CheckpointBeyondLog), "{r}");
}

#[test]
fn a_cut_last_frame_is_caught() {
    let (records, cps, certs) = clean();
    let mut bytes = frames(&records);
    bytes.truncate(bytes.len() - 5);
    let r = flashgate_audit::verify_parts(
        bytes.as_slice(),
        frames(&cps).as_slice(),
        Some(&certs),
        &options(100),
    )
    .unwrap();
    assert!(r.has(K::TruncatedRecords), "{r}");
    assert!(r.has(K::CheckpointBeyondLog), "{r}");
}

#[test]
fn fork_against_a_previous_checkpoint_is_caught() {
    let (records, cps, certs) = clean();
    // The OEM kept a checkpoint of a different history of size 6.
    let mut other = chain(history(UNITS));
    edit(&mut other, 3, |r| r.time += 5);
    rechain(&mut other);
    let mut opts = options(100);
    opts.previous_checkpoint = Some(checkpoint(&other, 6));
    let r = verify(&records, &cps, &certs, &opts);
    assert_only(&r, &[K::PreviousCheckpointMismatch]);

    // The same history's checkpoint is consistent.
    opts.previous_checkpoint = Some(checkpoint(&records, 6));
    assert!(verify(&records, &cps, &certs, &opts).is_clean());
}

#[test]
fn rollback_below_a_previous_checkpoint_is_caught() {
    // The OEM kept a checkpoint of 16 records; the bundle has been rolled
    // back to the first 10, with a genuine checkpoint of those 10.
    let full = chain(history(UNITS));
    let old: Vec<Vec<u8>> = full[..10].to_vec();
    let mut opts = options(100);
    opts.previous_checkpoint = Some(checkpoint(&full, full.len()));
    let cps = vec![checkpoint(&old, old.len())];
    let r = verify(&old, &cps, &history_certs(7), &opts);
    assert!(r.has(K::PreviousCheckpointBeyondLog), "{r}");
}

#[test]
fn invalid_previous_checkpoint_is_reported() {
    let (records, cps, certs) = clean();
    let mut opts = options(100);
    opts.previous_checkpoint = Some(checkpoint_with(&other_signer(), &records, 4));
    let r = verify(&records, &cps, &certs, &opts);
    assert_only(&r, &[K::PreviousCheckpointInvalid]);
}

#[test]
fn over_quota_is_caught() {
    let (records, cps, certs) = clean();
    let r = verify(&records, &cps, &certs, &options(7));
    // The manifest's quota differs from the imported one, and 10 > 7.
    assert!(r.has(K::QuotaExceeded), "{r}");
    assert_eq!(r.quota.used, 10);
    assert_eq!(r.quota.left, 0);

    // Same quota in log and manifest, and a second reservation past it.
    let mut h = history(UNITS);
    h[0] = imported(12);
    let stop = h.pop().unwrap();
    h.push(reserved(10, 5));
    for c in 10..15 {
        h.push(passed(c));
    }
    h.push(stop);
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    let mut certs = history_certs(UNITS);
    certs.extend((10..15).map(|c| sha256(&cert(c))));
    let r = verify(&records, &cps, &certs, &options(12));
    assert_only(&r, &[K::QuotaExceeded]);
    let a = &r.anomalies[0];
    assert_eq!(a.seq, Some(13));
    assert!(a.detail.contains("allows 12 units"), "{}", a.detail);
}

#[test]
fn duplicate_uid_is_caught() {
    let mut h = history(UNITS);
    h[5] = passed_with(2, uid(1), "SN-00000002".to_owned(), cert(2));
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &history_certs(UNITS), &options(100));
    assert_only(&r, &[K::DuplicateUid]);
    assert_eq!(r.anomalies[0].seq, Some(5));
    assert!(
        r.anomalies[0].detail.contains("record 4"),
        "{}",
        r.anomalies[0].detail
    );
}

#[test]
fn duplicate_serial_and_certificate_are_caught() {
    let mut h = history(UNITS);
    h[5] = passed_with(2, uid(2), "SN-00000001".to_owned(), cert(1));
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    let certs: Vec<[u8; 32]> = history_certs(UNITS)
        .into_iter()
        .filter(|c| *c != sha256(&cert(2)))
        .collect();
    let r = verify(&records, &cps, &certs, &options(100));
    // The repeated serial is also not the one counter 2 gets.
    assert_only(
        &r,
        &[
            K::DuplicateSerial,
            K::DuplicateCertificate,
            K::SerialMismatch,
        ],
    );
}

#[test]
fn forged_checkpoint_signature_is_caught() {
    let (records, mut cps, certs) = clean();
    // Flip a bit in the last byte (inside the signature).
    let last = cps[1].len() - 1;
    cps[1][last] ^= 1;
    let r = verify(&records, &cps, &certs, &options(100));
    assert!(r.has(K::CheckpointBadSignature), "{r}");
    assert!(r.has(K::UnprotectedRecords), "{r}");

    // A checkpoint whose text was changed to claim a smaller tree, the
    // signature kept.
    let (records, mut cps, certs) = clean();
    let text = format!("flashgate/{APPLIANCE}\n5\n");
    let pos = cps[1]
        .windows(text.len())
        .position(|w| w.starts_with(format!("flashgate/{APPLIANCE}\n").as_bytes()))
        .unwrap();
    let size_at = pos + format!("flashgate/{APPLIANCE}\n").len();
    cps[1][size_at] = b'9';
    let r = verify(&records, &cps, &certs, &options(100));
    assert!(r.has(K::CheckpointBadSignature), "{r}");
}

#[test]
fn checkpoint_by_another_key_is_caught() {
    let (records, _, certs) = clean();
    let cps = vec![checkpoint_with(&other_signer(), &records, records.len())];
    let r = verify(&records, &cps, &certs, &options(100));
    assert!(r.has(K::CheckpointWrongKey), "{r}");
    assert!(r.has(K::UnprotectedRecords), "{r}");

    // Pinning the wrong key flags every checkpoint.
    let (records, cps, certs) = clean();
    let mut opts = options(100);
    opts.log_key = other_signer().public_key();
    let r = verify(&records, &cps, &certs, &opts);
    assert_eq!(r.anomaly_counts.get(&K::CheckpointWrongKey), Some(&2));
}

#[test]
fn garbage_checkpoint_is_malformed() {
    let (records, mut cps, certs) = clean();
    cps.push(b"not a checkpoint".to_vec());
    let r = verify(&records, &cps, &certs, &options(100));
    assert_only(&r, &[K::MalformedCheckpoint]);
}

#[test]
fn checkpoint_sizes_going_down_or_repeated_are_caught() {
    let (records, cps, certs) = clean();
    let down = vec![cps[1].clone(), cps[0].clone()];
    let r = verify(&records, &down, &certs, &options(100));
    assert_only(&r, &[K::CheckpointSizeDecreased]);

    let again = vec![cps[0].clone(), cps[1].clone(), cps[1].clone()];
    let r = verify(&records, &again, &certs, &options(100));
    assert_only(&r, &[K::CheckpointRepeated]);
}

#[test]
fn checkpoint_of_another_log_is_caught() {
    let (records, mut cps, certs) = clean();
    let cp = flashgate_tlog::Checkpoint::new(
        "flashgate/another-appliance",
        records.len() as u64,
        root_at(&records, records.len()),
    )
    .unwrap();
    cps.push(flashgate_audit::sign_checkpoint(&signer(), &cp).unwrap());
    let r = verify(&records, &cps, &certs, &options(100));
    assert!(r.has(K::CheckpointOrigin), "{r}");
}

#[test]
fn time_running_backwards_is_caught() {
    let mut records = chain(history(UNITS));
    edit(&mut records, 8, |r| r.time -= 60_000);
    rechain(&mut records);
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &history_certs(UNITS), &options(100));
    assert_only(&r, &[K::TimeWentBackwards]);
    assert_eq!(r.anomalies[0].seq, Some(8));
}

#[test]
fn wrong_device_type_is_caught() {
    let mut h = history(UNITS);
    if let flashgate_audit::RecordKind::UnitPassed(p) = &mut h[4] {
        p.device_type = "stm32f103".to_owned();
    }
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &history_certs(UNITS), &options(100));
    assert_only(&r, &[K::DeviceTypeNotAllowed]);
    assert!(r.anomalies[0].detail.contains("stm32f103"));
}

#[test]
fn missing_and_extra_certificates_are_caught() {
    let (records, cps, mut certs) = clean();
    let gone = certs.remove(3);
    certs.push(sha256(b"a certificate nobody issued"));
    let r = verify(&records, &cps, &certs, &options(100));
    assert_only(&r, &[K::CertificateMissing, K::CertificateNotInLog]);
    let missing = r
        .anomalies
        .iter()
        .find(|a| a.kind == K::CertificateMissing)
        .unwrap();
    assert!(missing.detail.contains(&hex::encode(gone)));
}

#[test]
fn counter_accounting_is_checked() {
    // A unit outside any reservation, a value used twice, and values never
    // accounted for.
    let mut h = vec![imported(100), run_started(), reserved(0, 6)];
    h.push(passed(0));
    h.push(passed(1));
    h.push(passed_with(1, uid(77), "SN-00000001".to_owned(), cert(77)));
    h.push(passed(9));
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    let certs: Vec<[u8; 32]> = [0, 1, 77, 9].iter().map(|c| sha256(&cert(*c))).collect();
    let r = verify(&records, &cps, &certs, &options(100));
    assert_only(
        &r,
        &[
            K::CounterNotReserved,
            K::CounterReused,
            K::CountersUnaccounted,
            // Counter 1 twice: its serial twice.
            K::DuplicateSerial,
        ],
    );
    let open = r
        .anomalies
        .iter()
        .find(|a| a.kind == K::CountersUnaccounted)
        .unwrap();
    assert!(open.detail.starts_with("4 reserved"), "{}", open.detail);
    assert!(open.detail.contains("first: 2, 3, 4, 5"), "{}", open.detail);
}

#[test]
fn unused_and_aborted_values_account_for_reservations() {
    let mut h = vec![imported(100), run_started(), reserved(0, 8)];
    h.push(passed(0));
    h.push(RecordKind::UnitAborted(
        flashgate_audit::record::UnitAborted {
            job_id: JOB,
            counter: 1,
            reason: flashgate_audit::REASON_CRASH_ABORTED.to_owned(),
        },
    ));
    h.push(unused(2, 6));
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &[sha256(&cert(0))], &options(100));
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.units.aborted, 1);
    assert_eq!(r.units.unused, 6);
    assert_eq!(r.quota.used, 8);
}

use flashgate_audit::RecordKind;

#[test]
fn reservations_must_follow_each_other() {
    let mut h = vec![imported(100), run_started(), reserved(0, 2)];
    h.push(passed(0));
    h.push(passed(1));
    h.push(reserved(5, 1));
    h.push(passed(5));
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    let certs: Vec<[u8; 32]> = [0, 1, 5].iter().map(|c| sha256(&cert(*c))).collect();
    let r = verify(&records, &cps, &certs, &options(100));
    assert_only(&r, &[K::ReservationNotContiguous]);
}

#[test]
fn job_facts_are_checked() {
    let mut h = history(UNITS);
    h.remove(0);
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &history_certs(UNITS), &options(100));
    assert_only(&r, &[K::JobNotImported]);

    let (records, cps, certs) = clean();
    let mut opts = options(100);
    opts.facts.product = "gadget".to_owned();
    let r = verify(&records, &cps, &certs, &opts);
    assert_only(&r, &[K::JobFactsMismatch]);
}

#[test]
fn units_of_unknown_runs_and_after_removal_are_caught() {
    let mut h = history(3);
    h.remove(1); // no run-started
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &history_certs(3), &options(100));
    assert_only(&r, &[K::UnknownRun]);

    let mut h = history(3);
    let stop = h.pop().unwrap();
    h.insert(
        4,
        RecordKind::JobRemovalStarted(flashgate_audit::record::JobRemovalStarted { job_id: JOB }),
    );
    h.insert(
        5,
        RecordKind::JobRemoved(flashgate_audit::record::JobRemoved { job_id: JOB }),
    );
    h.push(stop);
    let records = chain(h);
    let cps = vec![checkpoint(&records, records.len())];
    let r = verify(&records, &cps, &history_certs(3), &options(100));
    assert_only(&r, &[K::RecordAfterJobRemoved]);
}

#[test]
fn signer_public_key_matches_pinned_key() {
    assert_eq!(signer().public_key()[0], 4);
    assert_ne!(signer().public_key(), other_signer().public_key());
}
