//! Files that survive a kill: a run SIGKILLed again and again at random
//! points leaves, after the next command's recovery, a DER file for every
//! recorded certificate, every certificate file named after its SHA-256,
//! and every certificate issued to a board either recorded or kept under
//! `aborted/`. An export right after the kills verifies clean apart from the
//! aborted and unused records. Both tokens, through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use common::{Kind, Lab};
use flashgate_audit::RecordKind;
use sha2::{Digest, Sha256};

/// The `.der` files of a directory, each checked against its name.
fn der_files(dir: &std::path::Path) -> HashSet<String> {
    let mut out = HashSet::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        if !e.file_type().unwrap().is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".pending") && !name.ends_with(".tmp"),
            "left after recovery: {}",
            e.path().display()
        );
        let stem = name.strip_suffix(".der").expect("only .der files");
        let bytes = std::fs::read(e.path()).unwrap();
        assert!(!bytes.is_empty(), "{} is empty", e.path().display());
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            stem,
            "{} is not what its name says",
            e.path().display()
        );
        out.insert(stem.to_owned());
    }
    out
}

fn kills_leave_every_certificate_on_disk(kind: Kind) {
    // Small firmware: the stages after the certificate are a good part of a unit.
    let (lab, id) = Lab::with_job(
        kind,
        |t| t.replace("checkpoint_every_units = 100", "checkpoint_every_units = 7"),
        4_000,
    );

    let mut issued = 0usize;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let certs = lab.path(&format!("state/certs/{id}"));
    // Kills until one has landed between a certificate and its unit's
    // record (a pending certificate left behind), at least 10, at most 40:
    // on a loaded machine the moments drift, and a fixed count can miss.
    let mut landed = false;
    for i in 0..40u64 {
        if i >= 10 && landed {
            break;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let events = lab.path(&format!("events-{i}.jsonl"));
        let target = format!(
            "sim:timing=realistic,seed={},flash-base=0x08000000",
            200 + i
        );
        let mut child = lab
            .command(&[
                "run",
                "--job",
                &id,
                "--channels",
                "4",
                "--target",
                &target,
                "--units",
                "100000",
                "--json",
            ])
            .stdout(std::fs::File::create(&events).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill while units are in production: after the first certificate
        // (a loaded machine can take long to start), at a random moment.
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(120)
            && !std::fs::read_to_string(&events)
                .unwrap_or_default()
                .contains("\"stage\":\"certificate\"")
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng % 900));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        landed |= std::fs::read_dir(&certs).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".der.pending"))
        }) || !der_files(&certs.join("aborted")).is_empty();
        // A certificate's stage-done event is emitted only after the
        // certificate was kept durably.
        issued += std::fs::read_to_string(&events)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"stage-done\"") && l.contains("\"stage\":\"certificate\""))
            .count();
    }

    // Any command recovers; export right away.
    let doc = lab.export_and_verify(&id, "bundle");
    let report = &doc["report"];
    let units = &report["units"];
    let accounted: u64 = ["passed", "failed", "aborted", "unused"]
        .iter()
        .map(|k| units[*k].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        accounted,
        report["quota"]["used"].as_u64().unwrap(),
        "{report}"
    );
    assert!(units["aborted"].as_u64().unwrap() > 0, "{report}");

    let finals = der_files(&certs);
    let aborted = der_files(&certs.join("aborted"));
    let mut recorded = HashSet::new();
    for r in lab.records() {
        let hash = match r.kind {
            RecordKind::UnitPassed(u) => Some(u.cert_sha256),
            RecordKind::UnitFailed(u) => u.cert_sha256,
            _ => None,
        };
        if let Some(h) = hash {
            recorded.insert(hex::encode(h));
        }
    }
    for h in &recorded {
        assert!(finals.contains(h), "recorded certificate {h} has no file");
    }
    assert!(aborted.is_disjoint(&recorded));
    // Every certificate issued is recorded or kept as aborted.
    assert!(
        recorded.len() + aborted.len() >= issued,
        "{issued} certificates issued, {} recorded, {} kept as aborted",
        recorded.len(),
        aborted.len()
    );
    assert!(!aborted.is_empty(), "no kill landed after a certificate");
    eprintln!(
        "{issued} issued, {} recorded, {} aborted: {units}",
        recorded.len(),
        aborted.len()
    );
}

#[test]
fn kills_leave_every_certificate_on_disk_softhsm() {
    kills_leave_every_certificate_on_disk(Kind::SoftHsm);
}

#[test]
fn kills_leave_every_certificate_on_disk_kryoptic() {
    kills_leave_every_certificate_on_disk(Kind::Kryoptic);
}
