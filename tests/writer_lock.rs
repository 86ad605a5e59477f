//! One writer per appliance: while a run holds the writer lock, a second
//! run, a removal and an import are refused at once with the holder's pid,
//! read-only commands still work, and the run finishes cleanly. A removal
//! killed at each of its steps is completed by the next command. Each ends
//! with a log that verifies and an HSM counter equal to what the log
//! accounts for. Both tokens, through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{Kind, Lab};
use flashgate_audit::RecordKind;

/// A lab of `kind`, enrolled, with job.fgj imported and job2.fgj built.
fn lab(kind: Kind) -> (Lab, String) {
    let (lab, id) = Lab::with_job(kind, |t| t, 30_000);
    let policy2 = lab.policy("policy2.toml", |t| t.replace("quota = 1000", "quota = 900"));
    lab.build_job("job2.fgj", &policy2, 20_000);
    (lab, id)
}

/// `flashgate ARGS` in the lab, not yet started.
fn command(lab: &Lab, args: &[&str]) -> Command {
    let mut c = lab.command(args);
    c.env_remove("FLASHGATE_TEST_CRASH_AT");
    c
}

/// Starts a run with JSON events and waits for its first `unit-started`
/// (the run holds the lock from before its first unit to its end). The
/// caller waits for the child.
#[allow(clippy::zombie_processes)]
fn start_run(
    lab: &Lab,
    id: &str,
    target: &str,
    units: &str,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = command(
        lab,
        &[
            "run", "--job", id, "--target", target, "--units", units, "--json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the run ended before its first unit"
        );
        if line.contains("\"unit-started\"") {
            return (child, out);
        }
    }
}

/// The job's quota counter as the token holds it (read with pkcs11-tool,
/// independently of flashgate).
fn hsm_counter(lab: &Lab, id: &str) -> u64 {
    let (k, v) = lab.token_env();
    let out = Command::new("pkcs11-tool")
        .env(k, v)
        .arg("--module")
        .arg(lab.kind.module())
        .args([
            "--token-label",
            "appliance",
            "--login",
            "--pin",
            common::PIN,
            "--read-object",
            "--type",
            "data",
            "--label",
            &format!("fg-count:{id}"),
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    if out.stdout.len() != 8 {
        return 0;
    }
    u64::from_be_bytes(out.stdout.try_into().unwrap())
}

/// Counter values the log reserves for `id`.
fn reserved_in_log(lab: &Lab, id: &str) -> u64 {
    lab.records()
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::UnitsReserved(u) if hex::encode(u.job_id) == id => Some(u.count),
            _ => None,
        })
        .sum()
}

fn second_writers_are_refused(kind: Kind) {
    let (lab, id) = lab(kind);
    let target = "sim:timing=realistic,bus-hz=400000,seed=5,flash-base=0x08000000";
    let (mut run, mut out) = start_run(&lab, &id, target, "4");
    let pid = run.id();
    let sentence = format!(
        "job {id} is being run by another flashgate process (pid {pid}); wait for it or stop it"
    );

    let err = lab.fails(&[
        "run",
        "--job",
        &id,
        "--target",
        "sim:seed=6,flash-base=0x08000000",
        "--units",
        "1",
    ]);
    assert!(err.contains(&sentence), "{err}");
    let err = lab.fails(&["job", "remove", &id]);
    assert!(err.contains(&sentence), "{err}");
    let err = lab.fails(&["job", "import", "job2.fgj"]);
    assert!(err.contains(&sentence), "{err}");

    // Read-only commands neither wait nor recover under the live run.
    assert!(lab.ok(&["job", "list"]).contains(&id));
    lab.ok(&["appliance", "show"]);
    lab.ok(&["audit", "export", "--job", &id, "-o", "during-run"]);

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = run.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("recovered:"), "nothing crashed: {stderr}");

    // The keys under the run are still there; the refused import works now.
    assert!(lab
        .job_objects()
        .iter()
        .any(|l| l == &format!("fg-job:{id}:ca")));
    lab.ok(&["job", "import", "job2.fgj"]);

    let doc = lab.export_and_verify(&id, "bundle");
    let report = &doc["report"];
    assert_eq!(report["units"]["passed"], 4, "{report}");
    assert_eq!(
        report["units"]["aborted"].as_u64().unwrap_or(0),
        0,
        "{report}"
    );
    let used = report["quota"]["used"].as_u64().unwrap();
    assert_eq!(hsm_counter(&lab, &id), used, "{report}");
    assert_eq!(reserved_in_log(&lab, &id), used);
}

#[test]
fn a_run_refuses_a_second_run_a_remove_and_an_import_softhsm() {
    second_writers_are_refused(Kind::SoftHsm);
}

#[test]
fn a_run_refuses_a_second_run_a_remove_and_an_import_kryoptic() {
    second_writers_are_refused(Kind::Kryoptic);
}

fn removal_killed_at_each_step(kind: Kind) {
    for point in [
        "remove-after-intent",
        "remove-after-keys",
        "remove-after-dir",
        "remove-after-record",
    ] {
        let (lab, id) = lab(kind);
        lab.ok(&["job", "import", "job2.fgj"]);
        let id2 = lab
            .ok(&["job", "list"])
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .find(|j| *j != id)
            .unwrap();
        lab.ok(&[
            "run",
            "--job",
            &id,
            "--target",
            "sim:seed=9,flash-base=0x08000000",
            "--units",
            "3",
        ]);

        let out = command(&lab, &["job", "remove", &id])
            .env("FLASHGATE_TEST_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: the remove was to crash");
        assert!(
            String::from_utf8_lossy(&out.stderr).is_empty(),
            "{point}: the remove failed instead of crashing: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // The next command (read-only) completes the removal.
        let list = lab.ok(&["job", "list"]);
        assert!(!list.contains(&id), "{point}: {list}");
        assert!(
            !lab.job_objects()
                .iter()
                .any(|l| l.starts_with(&format!("fg-job:{id}:"))),
            "{point}: keys left"
        );
        assert!(!lab.path(&format!("state/jobs/{id}")).exists(), "{point}");
        assert!(
            !lab.path(&format!("state/removing/{id}")).exists(),
            "{point}"
        );
        let kinds: Vec<&'static str> = lab
            .records()
            .iter()
            .filter(|r| hex::encode(r.kind.job_id()) == id)
            .map(|r| r.kind.name())
            .filter(|k| k.starts_with("job-remov"))
            .collect();
        assert_eq!(kinds, ["job-removal-started", "job-removed"], "{point}");

        // Removing it again is refused and appends nothing.
        let before = lab.records().len();
        let err = lab.fails(&["job", "remove", &id]);
        assert!(err.contains("already removed"), "{point}: {err}");
        assert_eq!(lab.records().len(), before, "{point}");

        // The log verifies (through the other job's bundle, which holds it
        // all) and the removed job's counter is what its records reserve.
        lab.export_and_verify(&id2, "bundle");
        assert_eq!(
            hsm_counter(&lab, &id),
            reserved_in_log(&lab, &id),
            "{point}"
        );
        assert!(hsm_counter(&lab, &id) > 0);
        // The other job runs on.
        lab.ok(&[
            "run",
            "--job",
            &id2,
            "--target",
            "sim:seed=10,flash-base=0x08000000",
            "--units",
            "1",
        ]);
    }
}

#[test]
fn a_removal_killed_at_each_step_is_completed_softhsm() {
    removal_killed_at_each_step(Kind::SoftHsm);
}

#[test]
fn a_removal_killed_at_each_step_is_completed_kryoptic() {
    removal_killed_at_each_step(Kind::Kryoptic);
}
