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
    verify_parts, CheckpointSigner, Es256Signer, JobFacts, Record, RecordKind, Report,
    SerialScheme, SoftwareSigner, VerifyOptions,
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

/// The job window of [`facts`], Unix seconds: 2020-09-13 to 2096-10-02,
/// around both the fixed record times of [`chain`] and the wall clock.
pub const NOT_BEFORE: u64 = 1_600_000_000;
pub const NOT_AFTER: u64 = 4_000_000_000;
/// The notBefore of the certificates [`cert`] makes (2023-11-14).
pub const CERT_NOT_BEFORE: u64 = 1_700_000_000;
pub const FIRMWARE: [u8; 32] = [0x55; 32];
pub const MANIFEST_DIGEST: [u8; 32] = [0x44; 32];

pub fn facts(quota: u64) -> JobFacts {
    JobFacts {
        job_id: JOB,
        quota,
        device_types: vec![DEVICE.to_owned()],
        product: PRODUCT.to_owned(),
        security_version: 3,
        manifest_digest: MANIFEST_DIGEST,
        not_before: NOT_BEFORE,
        not_after: NOT_AFTER,
        serials: SerialScheme {
            prefix: "SN-".to_owned(),
            start: 0,
            end: 99_999_999,
            width: 8,
        },
        lock_level: "readout".to_owned(),
        firmware_sha256: Some(FIRMWARE),
    }
}

pub fn options(quota: u64) -> VerifyOptions {
    VerifyOptions {
        log_key: signer().public_key(),
        appliance_id: APPLIANCE.to_owned(),
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
        manifest_digest: MANIFEST_DIGEST,
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

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// `YYMMDDHHMMSSZ` of a Unix time (civil date from days, Gregorian).
fn utc_time(unix: u64) -> Vec<u8> {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{:02}{m:02}{d:02}{:02}{:02}{:02}Z",
        y % 100,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
    .into_bytes()
}

/// A structurally valid X.509 v3 DER certificate for unit `n`, valid from
/// `not_before` (Unix seconds) for a year. Its signature is not a real one:
/// the verifier reads the validity and never checks certificate signatures.
pub fn cert_from(n: u64, not_before: u64) -> Vec<u8> {
    let ecdsa_sha256 = der(0x06, &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02]);
    let alg = der(0x30, &ecdsa_sha256);
    let name = der(
        0x30,
        &der(
            0x31,
            &der(
                0x30,
                &[der(0x06, &[0x55, 0x04, 0x03]), der(0x0C, b"test")].concat(),
            ),
        ),
    );
    let mut serial = vec![0x01];
    serial.extend_from_slice(&n.to_be_bytes());
    let validity = der(
        0x30,
        &[
            der(0x17, &utc_time(not_before)),
            der(0x17, &utc_time(not_before + 365 * 86_400)),
        ]
        .concat(),
    );
    let mut point = vec![0x00, 0x04];
    point.extend_from_slice(&[0x42; 64]);
    let spki = der(
        0x30,
        &[
            der(
                0x30,
                &[
                    der(0x06, &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01]),
                    der(0x06, &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07]),
                ]
                .concat(),
            ),
            der(0x03, &point),
        ]
        .concat(),
    );
    let tbs = der(
        0x30,
        &[
            der(0xA0, &der(0x02, &[0x02])),
            der(0x02, &serial),
            alg.clone(),
            name.clone(),
            validity,
            name,
            spki,
        ]
        .concat(),
    );
    let sig = der(
        0x03,
        &[
            vec![0x00],
            der(
                0x30,
                &[der(0x02, &[0x01; 32]), der(0x02, &[0x02; 32])].concat(),
            ),
        ]
        .concat(),
    );
    der(0x30, &[tbs, alg, sig].concat())
}

/// The DER certificate of unit `n`, valid from [`CERT_NOT_BEFORE`].
pub fn cert(n: u64) -> Vec<u8> {
    cert_from(n, CERT_NOT_BEFORE)
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
        firmware_sha256: FIRMWARE,
        lock_state: vec![0xFC],
        lock_level: "readout".to_owned(),
        timings,
        rework_of: None,
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
        rework_of: None,
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
    let mut certs = Vec::new();
    generate_with(n, every, records, checkpoints, |der| {
        certs.push(sha256(der))
    });
    certs
}

/// [`generate`], handing each passed unit's DER certificate to `on_cert`.
pub fn generate_with(
    n: u64,
    every: u64,
    records: &mut impl std::io::Write,
    checkpoints: &mut impl std::io::Write,
    mut on_cert: impl FnMut(&[u8]),
) {
    let s = signer();
    let mut tree = Tree::new();
    let mut prev = [0u8; 32];
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
                on_cert(&cert(c));
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
}
