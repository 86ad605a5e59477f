//! The offline verifier on mutated bundles. A small valid bundle (records
//! and checkpoints signed by a fixed test key) is built once; each input
//! mutates its records.log or checkpoints.log. Invariants: the verifier
//! never panics, never fails on in-memory input, and a bundle whose bytes
//! changed never verifies clean.
//!
//! Input: first byte = mode (replace records, replace checkpoints, XOR
//! patches into either file, delete or duplicate a range of either file),
//! the rest = the mode's argument bytes.
#![no_main]

use std::sync::OnceLock;

use flashgate_audit::checkpoint::{origin_for, sign_checkpoint, Es256Signer, SoftwareSigner};
use flashgate_audit::frame::put_frame;
use flashgate_audit::record::{
    JobImported, RunStarted, UnitFailed, UnitPassed, UnitsReserved, UnitsUnused,
};
use flashgate_audit::{verify_parts, JobFacts, Record, RecordKind, SerialScheme, VerifyOptions};
use flashgate_tlog::{leaf_hash, Checkpoint, Tree};
use libfuzzer_sys::fuzz_target;

const JOB: [u8; 16] = [0x11; 16];
const RUN: [u8; 16] = [0x22; 16];

struct Valid {
    records: Vec<u8>,
    checkpoints: Vec<u8>,
    certs: Vec<[u8; 32]>,
    options: VerifyOptions,
}

fn cert(n: u64) -> [u8; 32] {
    let mut c = [0xC0; 32];
    c[..8].copy_from_slice(&n.to_be_bytes());
    c
}

fn build() -> Valid {
    let signer = SoftwareSigner::from_seed(b"flashgate fuzz log key");
    let mut kinds = vec![
        RecordKind::JobImported(JobImported {
            job_id: JOB,
            product: "widget".to_owned(),
            quota: 10,
            security_version: 1,
            manifest_digest: [0x44; 32],
        }),
        RecordKind::RunStarted(RunStarted {
            job_id: JOB,
            run_id: RUN,
            operator: "op".to_owned(),
            channels: 2,
        }),
        RecordKind::UnitsReserved(UnitsReserved {
            job_id: JOB,
            first: 0,
            count: 4,
        }),
    ];
    for c in 0..3u64 {
        kinds.push(RecordKind::UnitPassed(UnitPassed {
            job_id: JOB,
            run_id: RUN,
            counter: c,
            channel: (c % 2) as u32,
            device_type: "mcu".to_owned(),
            uid: vec![0xAB, c as u8],
            serial: format!("SN{c}"),
            cert_sha256: cert(c),
            firmware_sha256: [0x55; 32],
            lock_state: vec![0xFC],
            lock_level: "readout".to_owned(),
            timings: [("program".to_owned(), 100 + c)].into_iter().collect(),
            rework_of: None,
        }));
    }
    kinds.push(RecordKind::UnitFailed(UnitFailed {
        job_id: JOB,
        run_id: RUN,
        counter: 3,
        channel: 1,
        device_type: Some("mcu".to_owned()),
        uid: Some(vec![0xCD]),
        serial: None,
        cert_sha256: None,
        firmware_sha256: None,
        stage: "program".to_owned(),
        reason: "verify".to_owned(),
        timings: Default::default(),
        rework_of: None,
    }));
    kinds.push(RecordKind::UnitsUnused(UnitsUnused {
        job_id: JOB,
        first: 4,
        count: 0,
        reason: "end".to_owned(),
    }));
    let mut prev = [0u8; 32];
    let mut tree = Tree::new();
    let mut records = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        let bytes = Record {
            seq: i as u64,
            time: 1_000 + i as u64,
            prev,
            kind,
        }
        .encode();
        prev = leaf_hash(&bytes);
        let _ = tree.push_leaf_hash(prev);
        put_frame(&mut records, &bytes);
    }
    // One checkpoint covering everything: removing it leaves records
    // unprotected, so no deletion can verify clean.
    let mut checkpoints = Vec::new();
    if let Ok(cp) = Checkpoint::new(origin_for("fuzz"), tree.size(), tree.root()) {
        if let Ok(signed) = sign_checkpoint(&signer, &cp) {
            put_frame(&mut checkpoints, &signed);
        }
    }
    Valid {
        records,
        checkpoints,
        certs: (0..3).map(cert).collect(),
        options: VerifyOptions {
            log_key: signer.public_key(),
            appliance_id: "fuzz".to_owned(),
            facts: JobFacts {
                job_id: JOB,
                quota: 10,
                device_types: vec!["mcu".to_owned()],
                product: "widget".to_owned(),
                security_version: 1,
                manifest_digest: [0x44; 32],
                // Record times are 1,000 ms and up.
                not_before: 0,
                not_after: 1_000_000,
                serials: SerialScheme {
                    prefix: "SN".to_owned(),
                    start: 0,
                    end: 9,
                    width: 1,
                },
                lock_level: "readout".to_owned(),
                firmware_sha256: Some([0x55; 32]),
            },
            previous_checkpoint: None,
        },
    }
}

fn patch(target: &mut [u8], ops: &[u8]) {
    for op in ops.chunks_exact(3) {
        if target.is_empty() {
            return;
        }
        let at = usize::from(u16::from_be_bytes([op[0], op[1]])) % target.len();
        target[at] ^= op[2];
    }
}

fn range(len: usize, arg: &[u8]) -> (usize, usize) {
    if len == 0 || arg.len() < 4 {
        return (0, 0);
    }
    let a = usize::from(u16::from_be_bytes([arg[0], arg[1]])) % len;
    let n = usize::from(u16::from_be_bytes([arg[2], arg[3]])) % (len - a + 1);
    (a, n)
}

fuzz_target!(|data: &[u8]| {
    static VALID: OnceLock<Valid> = OnceLock::new();
    let valid = VALID.get_or_init(build);
    let Some((&mode, arg)) = data.split_first() else {
        return;
    };
    let mut records = valid.records.clone();
    let mut checkpoints = valid.checkpoints.clone();
    match mode % 8 {
        0 => records = arg.to_vec(),
        1 => checkpoints = arg.to_vec(),
        2 => patch(&mut records, arg),
        3 => patch(&mut checkpoints, arg),
        4 => {
            let (a, n) = range(records.len(), arg);
            records.drain(a..a + n);
        }
        5 => {
            let (a, n) = range(checkpoints.len(), arg);
            checkpoints.drain(a..a + n);
        }
        6 => {
            let (a, n) = range(records.len(), arg);
            let dup = records[a..a + n].to_vec();
            records.splice(a..a, dup);
        }
        _ => {
            let (a, n) = range(checkpoints.len(), arg);
            let dup = checkpoints[a..a + n].to_vec();
            checkpoints.splice(a..a, dup);
        }
    }
    let report = verify_parts(
        records.as_slice(),
        checkpoints.as_slice(),
        Some(&valid.certs),
        &valid.options,
    )
    .expect("in-memory input cannot fail to read");
    let unchanged = records == valid.records && checkpoints == valid.checkpoints;
    if unchanged {
        assert!(
            report.is_clean(),
            "the valid bundle must verify clean:\n{report}"
        );
    } else {
        assert!(!report.is_clean(), "a changed bundle verified clean");
    }
});
