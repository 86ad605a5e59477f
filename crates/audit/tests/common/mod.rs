//! Helpers shared by the integration tests, the examples and the benches:
//! a test log key, a job, record builders, and a way to build bundles in
//! memory (records encoded and chained by hand, so that tests can tamper
//! with them at any level).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use flashgate_audit::checkpoint::{origin_for, sign_checkpoint};
use flashgate_audit::frame::put_frame;
use flashgate_audit::record::{
    JobImported, RunStarted, RunStopped, UnitFailed, UnitPassed, UnitsReserved, UnitsUnused,
};
use flashgate_audit::{
    verify_parts, CheckpointSigner, JobFacts, Record, RecordKind, Report, SoftwareSigner,
    VerifyOptions,
};
use flashgate_tlog::{leaf_hash, Checkpoint, Tree};
use sha2::{Digest, Sha256};

pub const JOB: [u8; 16] = [0x11; 16];
pub const OTHER_JOB: [u8; 16] = [0x33; 16];
pub const RUN: [u8; 16] = [0x22; 16];
pub const DEVICE: &str = "sim-secure-mcu";
pub const PRODUCT: &str = "widget-v2";
pub const APPLIANCE: &str = "appliance-0001";

pub fn signer() -> SoftwareSigner {
    SoftwareSigner::from_seed(b"flashgate test log key")
}

pub fn other_signer() -> SoftwareSigner {
    SoftwareSigner::from_seed(b"someone else's key")
}

pub fn facts(quota: u64) -> JobFacts {
    JobFacts {
        job_id: JOB,
        quota,
        device_types: vec![DEVICE.to_owned()],
        product: PRODUCT.to_owned(),
    }
}

pub fn options(quota: u64) -> VerifyOptions {
    VerifyOptions {
        log_key: signer().public_key(),
        facts: facts(quota),
        previous_checkpoint: None,
    }
}

pub fn imported(quota: u64) -> RecordKind {
    RecordKind::JobImported(JobImported {
        job_id: JOB,
        product: PRODUCT.to_owned(),
        quota,
        security_version: 3,
        manifest_digest: [0x44; 32],
    })
}

pub fn run_started() -> RecordKind {
    RecordKind::RunStarted(RunStarted {
        job_id: JOB,
        run_id: RUN,
        operator: "alice".to_owned(),
        channels: 4,
    })
}

pub fn run_stopped() -> RecordKind {
    RecordKind::RunStopped(RunStopped {
        job_id: JOB,
        run_id: RUN,
        reason: "operator stop".to_owned(),
    })
}

pub fn reserved(first: u64, count: u64) -> RecordKind {
    RecordKind::UnitsReserved(UnitsReserved {
        job_id: JOB,
        first,
        count,
    })
}

pub fn unused(first: u64, count: u64) -> RecordKind {
    RecordKind::UnitsUnused(UnitsUnused {
        job_id: JOB,
        first,
        count,
        reason: "run ended".to_owned(),
    })
}

/// The DER "certificate" of unit `n` (any bytes do: the log only holds its
/// hash).
pub fn cert(n: u64) -> Vec<u8> {
    let mut c = b"0\x82cert-of-unit-".to_vec();
    c.extend_from_slice(&n.to_be_bytes());
    c
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

pub fn uid(n: u64) -> Vec<u8> {
    let mut u = vec![0xA5, 0x5A];
    u.extend_from_slice(&n.to_be_bytes());
    u
}

pub fn passed(counter: u64) -> RecordKind {
    passed_with(
        counter,
        uid(counter),
        format!("SN-{counter:08}"),
        cert(counter),
    )
}

pub fn passed_with(counter: u64, uid: Vec<u8>, serial: String, cert: Vec<u8>) -> RecordKind {
    let mut timings = BTreeMap::new();
    timings.insert("program".to_owned(), 81_000);
    timings.insert("identify".to_owned(), 900);
    timings.insert("challenge".to_owned(), 2_100);
    RecordKind::UnitPassed(UnitPassed {
        job_id: JOB,
        run_id: RUN,
        counter,
        channel: (counter % 4) as u32,
        device_type: DEVICE.to_owned(),
        uid,
        serial,
        cert_sha256: sha256(&cert),
        firmware_sha256: [0x55; 32],
        lock_state: vec![0xFC],
        lock_level: "readout-protected".to_owned(),
        timings,
    })
}

pub fn failed(counter: u64, stage: &str) -> RecordKind {
    let mut timings = BTreeMap::new();
    timings.insert("program".to_owned(), 12_000);
    RecordKind::UnitFailed(UnitFailed {
        job_id: JOB,
        run_id: RUN,
        counter,
        channel: (counter % 4) as u32,
        device_type: Some(DEVICE.to_owned()),
        uid: Some(uid(1_000_000 + counter)),
        serial: None,
        cert_sha256: None,
        firmware_sha256: None,
        stage: stage.to_owned(),
        reason: "verify mismatch at 0x0800_0400".to_owned(),
        timings,
    })
}

/// A well-formed history: import, run, one reservation of `units`, that
/// many passed units (every fifth fails at "program"), run end.
pub fn history(units: u64) -> Vec<RecordKind> {
    let mut v = vec![imported(100), run_started(), reserved(0, units)];
    for c in 0..units {
        v.push(if c % 5 == 4 {
            failed(c, "program")
        } else {
            passed(c)
        });
    }
    v.push(run_stopped());
    v
}

/// The certificates of the passed units of [`history`].
pub fn history_certs(units: u64) -> Vec<[u8; 32]> {
    (0..units)
        .filter(|c| c % 5 != 4)
        .map(|c| sha256(&cert(c)))
        .collect()
}

/// Encodes records with correct seq, prev and rising time.
pub fn chain(kinds: Vec<RecordKind>) -> Vec<Vec<u8>> {
    let mut prev = [0u8; 32];
    let mut out = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        let rec = Record {
            seq: i as u64,
            time: 1_700_000_000_000 + 1000 * i as u64,
            prev,
            kind,
        };
        let bytes = rec.encode();
        prev = leaf_hash(&bytes);
        out.push(bytes);
    }
    out
}

/// The root of the first `size` records.
pub fn root_at(records: &[Vec<u8>], size: usize) -> [u8; 32] {
    let mut t = Tree::new();
    for r in &records[..size] {
        t.push_leaf_hash(leaf_hash(r)).unwrap();
    }
    t.root()
}

/// A signed checkpoint of the first `size` records.
pub fn checkpoint_with(signer: &dyn CheckpointSigner, records: &[Vec<u8>], size: usize) -> Vec<u8> {
    let cp = Checkpoint::new(origin_for(APPLIANCE), size as u64, root_at(records, size)).unwrap();
    sign_checkpoint(signer, &cp).unwrap()
}

pub fn checkpoint(records: &[Vec<u8>], size: usize) -> Vec<u8> {
    checkpoint_with(&signer(), records, size)
}

pub fn frames(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        put_frame(&mut out, i);
    }
    out
}

pub fn verify(
    records: &[Vec<u8>],
    checkpoints: &[Vec<u8>],
    certs: &[[u8; 32]],
    options: &VerifyOptions,
) -> Report {
    verify_parts(
        frames(records).as_slice(),
        frames(checkpoints).as_slice(),
        Some(certs),
        options,
    )
    .unwrap()
}

/// Re-encodes record `i` after `edit`, keeping its place in the chain
/// (the next record's `prev` is not updated: an edit breaks the chain).
pub fn edit(records: &mut [Vec<u8>], i: usize, edit: impl FnOnce(&mut Record)) {
    let mut r = Record::decode(&records[i]).unwrap();
    edit(&mut r);
    records[i] = r.encode();
}

/// Re-chains every record after an edit (a forger without the key can do
/// this; only the checkpoints catch it).
pub fn rechain(records: &mut [Vec<u8>]) {
    let mut prev = [0u8; 32];
    for (i, bytes) in records.iter_mut().enumerate() {
        let mut r = Record::decode(bytes).unwrap();
        r.seq = i as u64;
        r.prev = prev;
        *bytes = r.encode();
        prev = leaf_hash(bytes);
    }
}

/// Writes a realistic log of about `n` records for [`JOB`] (an import, a
/// run, blocks of 64 reserved values each followed by its units, every
/// 20th unit failing) as `records.log` and `checkpoints.log` bytes, with a
/// checkpoint every `every` records and one at the end. Returns the
/// certificate hashes of the passed units. Streams: holds no records.
pub fn generate(
    n: u64,
    every: u64,
    records: &mut impl std::io::Write,
    checkpoints: &mut impl std::io::Write,
) -> Vec<[u8; 32]> {
    let s = signer();
    let mut tree = Tree::new();
    let mut prev = [0u8; 32];
    let mut certs = Vec::new();
    let mut buf = Vec::with_capacity(512);
    let mut emit = |kind: RecordKind, tree: &mut Tree, prev: &mut [u8; 32]| {
        let seq = tree.size();
        let bytes = Record {
            seq,
            time: 1_700_000_000_000 + seq * 3,
            prev: *prev,
            kind,
        }
        .encode();
        *prev = leaf_hash(&bytes);
        tree.push_leaf_hash(*prev).unwrap();
        buf.clear();
        put_frame(&mut buf, &bytes);
        records.write_all(&buf).unwrap();
        if tree.size() % every == 0 {
            let cp = Checkpoint::new(origin_for(APPLIANCE), tree.size(), tree.root()).unwrap();
            let mut f = Vec::new();
            put_frame(&mut f, &sign_checkpoint(&s, &cp).unwrap());
            checkpoints.write_all(&f).unwrap();
        }
    };
    emit(imported(u64::MAX), &mut tree, &mut prev);
    emit(run_started(), &mut tree, &mut prev);
    let mut counter = 0u64;
    while tree.size() + 65 <= n.max(67) {
        emit(reserved(counter, 64), &mut tree, &mut prev);
        for c in counter..counter + 64 {
            if c % 20 == 19 {
                emit(failed(c, "program"), &mut tree, &mut prev);
            } else {
                let cert = cert(c);
                certs.push(sha256(&cert));
                emit(passed(c), &mut tree, &mut prev);
            }
        }
        counter += 64;
    }
    if tree.size() % every != 0 {
        let cp = Checkpoint::new(origin_for(APPLIANCE), tree.size(), tree.root()).unwrap();
        let mut f = Vec::new();
        put_frame(&mut f, &sign_checkpoint(&s, &cp).unwrap());
        checkpoints.write_all(&f).unwrap();
    }
    certs
}
