//! The audit log as operators and OEM security teams use it: export and
//! offline verification (clean, tampered, wrong key, earlier checkpoint),
//! inclusion proofs, refusing a log that disagrees with the HSM, and an
//! appliance killed with SIGKILL at random points of a run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Kind, Lab};

/// A sim target whose boards have UIDs no other run in the test uses (the
/// verifier rightly flags a UID provisioned twice).
fn sim(seed: u64) -> String {
    format!("sim:timing=zero,seed={seed},flash-base=0x08000000")
}

fn lab_with_job() -> (Lab, String) {
    Lab::with_sim_job(
        |t| t.replace("checkpoint_every_units = 100", "checkpoint_every_units = 5"),
        30_000,
    )
}

fn verify(lab: &Lab, bundle: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec![
        "audit",
        "verify",
        bundle,
        "--oem",
        "oem/signing-key.pub.pem",
    ];
    args.extend_from_slice(extra);
    let out = lab.fg(&args);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn export_verify_tamper_and_prove() {
    let (lab, id) = lab_with_job();
    let out = lab.fg(&[
        "run",
        "--job",
        &id,
        "--channels",
        "3",
        "--target",
        &sim(21),
        "--units",
        "12",
        "--json",
        "--operator",
        "alice",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uid = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "unit-passed")
        .map(|v| v["unit"]["uid"].as_str().unwrap().to_owned())
        .unwrap();
    lab.ok(&["audit", "export", "--job", &id, "-o", "bundle"]);
    let (code, text) = verify(&lab, "bundle", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("CLEAN") && text.contains("12 passed") && text.contains("alice"),
        "{text}"
    );
    let fp = lab
        .ok(&["appliance", "show"])
        .lines()
        .find(|l| l.starts_with("fingerprint:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let (code, text) = verify(&lab, "bundle", &["--fingerprint", &fp, "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("--json prints JSON");
    assert_eq!(v["format"], "flashgate-audit-verify/1", "{v}");
    assert_eq!(v["verdict"], "clean", "{v}");
    assert_eq!(v["fingerprint"], fp.as_str(), "{v}");
    assert!(
        v["appliance_id"].as_str().is_some_and(|a| !a.is_empty()),
        "{v}"
    );
    assert_eq!(v["report"]["units"]["passed"], 12, "{v}");
    assert_eq!(v["report"]["reworks"], 0, "{v}");

    // An edited record: anomalies, exit 1.
    copy_dir(&lab.path("bundle"), &lab.path("edited"));
    let records = lab.path("edited/records.log");
    let mut bytes = std::fs::read(&records).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&records, bytes).unwrap();
    let (code, text) = verify(&lab, "edited", &[]);
    assert_eq!(code, Some(1), "{text}");

    // Another OEM's key, or a pinned fingerprint that does not match: exit 2.
    let other = Lab::new(Kind::SoftHsm);
    std::fs::copy(
        other.path("oem/signing-key.pub.pem"),
        lab.path("other-oem.pem"),
    )
    .unwrap();
    let out = lab.fg(&["audit", "verify", "bundle", "--oem", "other-oem.pem"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed by this OEM key"));
    // The manifest altered after signing (it still names the OEM's key):
    // said as such, not as "another key".
    copy_dir(&lab.path("bundle"), &lab.path("altered"));
    let manifest = lab.path("altered/manifest.cose");
    let mut bytes = std::fs::read(&manifest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&manifest, bytes).unwrap();
    let (code, text) = verify(&lab, "altered", &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("altered after the OEM signed it"), "{text}");
    let (code, _) = verify(&lab, "bundle", &["--fingerprint", "00"]);
    assert_eq!(code, Some(2));
    // With --json, exit 2 still prints the verdict and the sentence.
    let out = lab.fg(&[
        "audit",
        "verify",
        "bundle",
        "--oem",
        "other-oem.pem",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on exit 2");
    assert_eq!(v["verdict"], "could-not-verify", "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not signed by this OEM key")),
        "{v}"
    );
    assert_eq!(v["report"], serde_json::Value::Null, "{v}");
    // Another appliance's enrollment record swapped into the bundle: the
    // manifest names the record the job was built for, so this is refused
    // even without a pinned fingerprint.
    other.enroll();
    copy_dir(&lab.path("bundle"), &lab.path("swapped"));
    std::fs::copy(
        other.path("enrollment.cbor"),
        lab.path("swapped/enrollment.cbor"),
    )
    .unwrap();
    let (code, text) = verify(&lab, "swapped", &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("not the one this job was built for"),
        "{text}"
    );

    // A checkpoint kept from this bundle is consistent with a later one.
    let first_cp = last_checkpoint(&lab.path("bundle/checkpoints.log"));
    std::fs::write(lab.path("kept.cose"), &first_cp).unwrap();
    lab.ok(&["run", "--job", &id, "--target", &sim(22), "--units", "3"]);
    lab.ok(&["audit", "export", "--job", &id, "-o", "bundle2"]);
    let (code, text) = verify(&lab, "bundle2", &["--previous-checkpoint", "kept.cose"]);
    assert_eq!(code, Some(0), "{text}");
    // So is the earlier bundle's whole checkpoints.log (its last entry counts) ...
    let (code, text) = verify(
        &lab,
        "bundle2",
        &["--previous-checkpoint", "bundle/checkpoints.log"],
    );
    assert_eq!(code, Some(0), "{text}");
    // ... and a later bundle's log is not a checkpoint of this one's past.
    let (code, text) = verify(
        &lab,
        "bundle",
        &["--previous-checkpoint", "bundle2/checkpoints.log"],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("previous-checkpoint-beyond-log"), "{text}");

    // One unit proved on its own.
    let proof = lab.ok(&["audit", "prove", "--uid", &uid]);
    std::fs::write(lab.path("proof.json"), proof).unwrap();
    let ok = lab.ok(&[
        "audit",
        "check-proof",
        "proof.json",
        "--appliance",
        "enrollment.cbor",
    ]);
    assert!(ok.contains("proof OK"), "{ok}");
    let mut p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path("proof.json")).unwrap()).unwrap();
    p["index"] = serde_json::json!(p["index"].as_u64().unwrap() + 1);
    std::fs::write(lab.path("bad-proof.json"), p.to_string()).unwrap();
    let err = lab.fails(&[
        "audit",
        "check-proof",
        "bad-proof.json",
        "--appliance",
        "enrollment.cbor",
    ]);
    assert!(!err.is_empty());
}

/// On either token, a run's bundle verifies clean against every check of
/// the job's manifest (window, serials, lock level, firmware, certificates);
/// one wrong count in bundle.json is exactly one anomaly, and said so.
#[test]
fn bundles_from_both_tokens_verify_and_bundle_json_is_checked() {
    for kind in common::both() {
        let lab = Lab::new(kind);
        lab.enroll();
        let policy = lab.policy("policy.toml", |t| t);
        lab.build_job("job.fgj", &policy, 20_000);
        lab.ok(&["job", "import", "job.fgj"]);
        let id = lab.first_job_id();
        lab.ok(&["run", "--job", &id, "--target", &sim(81), "--units", "3"]);
        lab.ok(&["audit", "export", "--job", &id, "-o", "bundle"]);
        let (code, text) = verify(&lab, "bundle", &["--json"]);
        assert_eq!(code, Some(0), "{kind:?}: {text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["verdict"], "clean", "{kind:?}: {v}");
        assert_eq!(v["report"]["units"]["passed"], 3, "{kind:?}: {v}");

        let index = lab.path("bundle/bundle.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        json["records"] = serde_json::json!(json["records"].as_u64().unwrap() + 1);
        std::fs::write(&index, json.to_string()).unwrap();
        let (code, text) = verify(&lab, "bundle", &[]);
        assert_eq!(code, Some(1), "{kind:?}: {text}");
        assert!(text.contains("verdict: 1 ANOMALY\n"), "{kind:?}: {text}");
        assert!(text.contains("[bundle-index-mismatch]"), "{kind:?}: {text}");
    }
}

/// The last framed checkpoint of a `checkpoints.log` (`u32be len || bytes`).
fn last_checkpoint(path: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 0;
    let mut last = Vec::new();
    while at + 4 <= bytes.len() {
        let n = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        last = bytes[at + 4..at + 4 + n].to_vec();
        at += 4 + n;
    }
    last
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

#[test]
fn a_log_that_disagrees_with_the_hsm_is_refused() {
    let (lab, id) = lab_with_job();
    lab.ok(&["run", "--job", &id, "--target", &sim(31), "--units", "4"]);
    let audit = lab.path("state/audit");
    copy_dir(&audit, &lab.path("old-audit"));
    lab.ok(&["run", "--job", &id, "--target", &sim(32), "--units", "4"]);

    // An older copy restored over the log.
    std::fs::rename(&audit, lab.path("current-audit")).unwrap();
    copy_dir(&lab.path("old-audit"), &audit);
    let err = lab.fails(&["run", "--job", &id, "--target", &sim(33), "--units", "1"]);
    assert!(err.contains("audit log"), "{err}");
    // Truncated.
    std::fs::remove_dir_all(&audit).unwrap();
    copy_dir(&lab.path("current-audit"), &audit);
    let log = audit.join("audit.log");
    let bytes = std::fs::read(&log).unwrap();
    std::fs::write(&log, &bytes[..bytes.len() / 2]).unwrap();
    let err = lab.fails(&["run", "--job", &id, "--target", &sim(33), "--units", "1"]);
    assert!(err.contains("audit log"), "{err}");
    // Deleted.
    std::fs::remove_dir_all(&audit).unwrap();
    let err = lab.fails(&["run", "--job", &id, "--target", &sim(33), "--units", "1"]);
    assert!(err.contains("audit log"), "{err}");
    // Put back as it was: the job runs again.
    copy_dir(&lab.path("current-audit"), &audit);
    lab.ok(&["run", "--job", &id, "--target", &sim(34), "--units", "2"]);
}

#[test]
fn sigkill_at_random_points_never_loses_a_unit() {
    let (lab, id) = lab_with_job();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in 0..12u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(40 + rng % 400);
        let mut child = Command::new(env!("CARGO_BIN_EXE_flashgate"))
            .args([
                "run",
                "--job",
                &id,
                "--channels",
                "4",
                "--target",
                &sim(100 + i),
                "--units",
                "100000",
                "--json",
            ])
            .current_dir(lab.dir.path())
            .env("SOFTHSM2_CONF", lab.path("token/softhsm2.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // A normal run recovers what the kills left (aborted and unused values recorded).
    let out = lab.fg(&["run", "--job", &id, "--target", &sim(99), "--units", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.ok(&["audit", "export", "--job", &id, "-o", "bundle"]);
    let (code, text) = verify(&lab, "bundle", &["--json"]);
    assert_eq!(code, Some(0), "{text}");
    let out: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(out["verdict"], "clean", "{out}");
    let report = &out["report"];
    // Every counter value is accounted for: passed + failed + aborted + unused = quota used.
    let units = &report["units"];
    let accounted = ["passed", "failed", "aborted", "unused"]
        .iter()
        .map(|k| units[*k].as_u64().unwrap_or(0))
        .sum::<u64>();
    let used = report["quota"]["used"].as_u64().unwrap();
    assert_eq!(accounted, used, "{report}");
    assert!(used > 0);
    eprintln!("after the kills: {units}");
}

/// Checkpoints every T seconds come from a timer, not only when a unit is
/// recorded: a slow unit is covered by a checkpoint before it finishes.
#[test]
fn time_based_checkpoints_while_a_unit_is_in_flight() {
    let (lab, id) = Lab::with_sim_job(
        |t| {
            t.replace(
                "checkpoint_every_units = 100",
                "checkpoint_every_units = 1000000",
            )
            .replace(
                "checkpoint_every_seconds = 60",
                "checkpoint_every_seconds = 1",
            )
        },
        30_000,
    );
    // About 5 s for one unit: a 100 kHz bus.
    lab.ok(&[
        "run",
        "--job",
        &id,
        "--target",
        "sim:timing=realistic,bus-hz=100000,seed=61,flash-base=0x08000000",
        "--units",
        "1",
    ]);
    lab.ok(&["audit", "export", "--job", &id, "-o", "bundle"]);
    let bytes = std::fs::read(lab.path("bundle/checkpoints.log")).unwrap();
    let (mut at, mut n) = (0, 0);
    while at + 4 <= bytes.len() {
        at += 4 + u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        n += 1;
    }
    // import, run start, the timer's (covering the reservation), the unit's, run end
    assert!(n >= 5, "{n} checkpoints");
    let (code, text) = verify(&lab, "bundle", &[]);
    assert_eq!(code, Some(0), "{text}");
}

/// An import commits before its record is written. If the record could not
/// be written, the job's first run writes it, so the log never shows units
/// of a job it never saw imported.
#[test]
fn an_import_whose_record_was_lost_is_recorded_before_its_first_run() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let policy = lab.policy("policy.toml", |t| t);
    lab.build_job("job.fgj", &policy, 20_000);
    // The import stops (a test build's crash point) after its commit,
    // before its record.
    let out = Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(["job", "import", "job.fgj"])
        .current_dir(lab.dir.path())
        .env("SOFTHSM2_CONF", lab.path("token/softhsm2.conf"))
        .env("FLASHGATE_TEST_CRASH_AT", "import-before-record")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let id = lab.first_job_id();
    lab.ok(&["run", "--job", &id, "--target", &sim(71), "--units", "2"]);
    lab.ok(&["audit", "export", "--job", &id, "-o", "bundle"]);
    let (code, text) = verify(&lab, "bundle", &[]);
    assert_eq!(code, Some(0), "{text}");
    // And a second run does not record the import again.
    lab.ok(&["run", "--job", &id, "--target", &sim(72), "--units", "1"]);
    lab.ok(&["audit", "export", "--job", &id, "-o", "bundle2"]);
    let (code, text) = verify(&lab, "bundle2", &["--json"]);
    assert_eq!(code, Some(0), "{text}");
}
