//! A damaged log bricks nothing: state changes are refused with the
//! instruction, read-only commands work, `audit reset` seals the damaged
//! log and starts a new segment, and the appliance runs again. Both tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Kind, Lab};
use flashgate_audit::record::REASON_CARRIED_OVER;
use flashgate_audit::RecordKind;

fn damaged_log_is_sealed_and_replaced(kind: Kind) {
    let (lab, id) = Lab::with_job(
        kind,
        |t| t.replace("checkpoint_every_units = 100", "checkpoint_every_units = 2"),
        20_000,
    );
    lab.build_job("job2.fgj", "policy.toml", 10_000);
    let target = |seed: u64| format!("sim:seed={seed},flash-base=0x08000000");
    lab.ok(&["run", "--job", &id, "--target", &target(1), "--units", "6"]);
    lab.ok(&["run", "--job", &id, "--target", &target(2), "--units", "4"]);

    // Damage a record in the middle of the log (a byte of its CBOR).
    let log = lab.path("state/audit/audit.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&log, &bytes).unwrap();
    let damaged_len = bytes.len() as u64;

    // State changes are refused with what to do; nothing changes.
    for args in [
        vec![
            "run",
            "--job",
            &id,
            "--target",
            "sim:seed=3,flash-base=0x08000000",
            "--units",
            "1",
        ],
        vec!["job", "import", "job2.fgj"],
        vec!["job", "remove", &id],
    ] {
        let err = lab.fails(&args);
        assert!(
            err.contains("flashgate audit reset --reason"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "nothing was appended");
    assert!(lab
        .job_objects()
        .iter()
        .any(|l| l == &format!("fg-job:{id}:ca")));
    // Read-only commands still work.
    assert!(lab.ok(&["job", "list"]).contains(&id));
    lab.ok(&["audit", "export", "--job", &id, "-o", "damaged-bundle"]);

    // No terminal and no --yes: not reset.
    let err = lab.fails(&["audit", "reset", "--reason", "a disk error"]);
    assert!(err.contains("--yes"), "{err}");
    let out = lab.ok(&["audit", "reset", "--reason", "a disk error", "--yes"]);
    assert!(
        out.contains("sealed it as segment 1") && out.contains("lost"),
        "{out}"
    );

    // The sealed segment is the damaged log, read-only.
    let sealed = lab.path("state/audit/sealed/1");
    assert_eq!(std::fs::read(sealed.join("audit.log")).unwrap(), bytes);
    assert!(std::fs::metadata(sealed.join("audit.log"))
        .unwrap()
        .permissions()
        .readonly());
    assert!(sealed.join("checkpoints.log").exists());
    let moved = std::fs::read_dir(sealed.join("certs").join(&id))
        .unwrap()
        .count();
    assert_eq!(moved, 10, "the sealed records' certificates go with them");

    // The new segment: log-reset, the job again, its used values carried over.
    let recs = lab.records();
    let RecordKind::LogReset(reset) = &recs[0].kind else {
        panic!("the first record is {:?}", recs[0].kind);
    };
    assert_eq!(recs[0].seq, 0);
    assert_eq!(reset.segment, 1);
    assert_eq!(reset.reason, "a disk error");
    let cp = reset
        .checkpoint
        .expect("a verified checkpoint before the damage");
    assert!(cp.size > 0);
    assert!(reset.lost_records > 0 && reset.lost_bytes > 0 && reset.lost_bytes < damaged_len);
    assert!(reset.high_water > cp.size);
    assert!(matches!(&recs[1].kind, RecordKind::JobImported(j) if hex::encode(j.job_id) == id));
    let RecordKind::UnitsReserved(r) = &recs[2].kind else {
        panic!()
    };
    let RecordKind::UnitsUnused(u) = &recs[3].kind else {
        panic!()
    };
    assert_eq!((r.first, u.first, u.count), (0, 0, r.count));
    assert_eq!(u.reason, REASON_CARRIED_OVER);
    assert!(r.count >= 10);

    // Runs, imports work again; a second reset is refused (the log is intact).
    lab.ok(&["run", "--job", &id, "--target", &target(4), "--units", "2"]);
    lab.ok(&["job", "import", "job2.fgj"]);
    let err = lab.fails(&["audit", "reset", "--reason", "again", "--yes"]);
    assert!(err.contains("intact"), "{err}");

    // Export carries the sealed segment; the new segment verifies.
    let out = lab.ok(&["audit", "export", "--job", &id, "-o", "bundle"]);
    assert!(out.contains("1 sealed segment"), "{out}");
    assert_eq!(
        std::fs::read(lab.path("bundle/sealed/1/audit.log")).unwrap(),
        bytes
    );
    let doc = lab.verify_bundle("bundle");
    let report = &doc["report"];
    assert_eq!(report["units"]["passed"], 2, "{report}");
}

#[test]
fn a_damaged_log_is_sealed_and_replaced_softhsm() {
    damaged_log_is_sealed_and_replaced(Kind::SoftHsm);
}

#[test]
fn a_damaged_log_is_sealed_and_replaced_kryoptic() {
    damaged_log_is_sealed_and_replaced(Kind::Kryoptic);
}
