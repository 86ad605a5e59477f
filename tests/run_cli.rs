//! `flashgate run` as an operator uses it: JSON events, exit codes, and
//! Ctrl-C in the middle of a run (units in flight finish; none is left
//! half-counted).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Lab;

fn lab_with_job() -> (Lab, String) {
    Lab::with_sim_job(|t| t, 40_000)
}

#[test]
fn json_events_and_exit_codes() {
    let (lab, id) = lab_with_job();
    // All pass: exit 0, one JSON object per line, ending with the summary.
    let out = lab.fg(&[
        "run",
        "--job",
        &id,
        "--channels",
        "3",
        "--target",
        "sim:timing=zero,seed=2,flash-base=0x08000000",
        "--units",
        "9",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let passed = lines.iter().filter(|v| v["event"] == "unit-passed").count();
    assert_eq!(passed, 9);
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "run-finished");
    assert_eq!(last["summary"]["passed"], 9);
    // A fault: exit 1 ("some units failed").
    let out = lab.fg(&[
        "run",
        "--job",
        &id,
        "--target",
        "sim:timing=zero,seed=3,flash-base=0x08000000,fault=0:bit-error",
        "--units",
        "2",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed by stage:"));
    // Could not run: exit 2 with one sentence.
    let out = lab.fg(&[
        "run",
        "--job",
        "00112233445566778899aabbccddeeff",
        "--target",
        "sim",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no imported job has id"), "{err}");
    let out = lab.fg(&["run", "--job", &id, "--target", "avr-isp"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A job whose quota is used up is refused before any board is taken, with
/// exit 2 and the job's quota in the sentence.
#[test]
fn a_used_up_quota_is_refused_before_any_board() {
    let (lab, id) = Lab::with_sim_job(|t| t.replace("quota = 1000", "quota = 3"), 4_000);
    let out = lab.fg(&[
        "run",
        "--job",
        &id,
        "--target",
        "sim:timing=zero,seed=8,flash-base=0x08000000",
        "--units",
        "5",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = lab.fg(&[
        "run",
        "--job",
        &id,
        "--target",
        "sim:timing=zero,seed=9,flash-base=0x08000000",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("has used all 3 units of its quota; no board was taken"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("unit-started"), "{stdout}");
}

#[test]
fn ctrl_c_finishes_units_in_flight_and_counts_every_one() {
    let (lab, id) = lab_with_job();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args([
            "run",
            "--job",
            &id,
            "--channels",
            "4",
            "--target",
            "sim:timing=realistic,seed=4,flash-base=0x08000000",
            "--units",
            "400",
            "--json",
        ])
        .current_dir(lab.dir.path())
        .env("SOFTHSM2_CONF", lab.path("token/softhsm2.conf"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sent = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        let passed = lines
            .iter()
            .filter(|v: &&serde_json::Value| v["event"] == "unit-passed")
            .count();
        lines.push(v);
        if !sent && passed >= 3 {
            let ok = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
            sent = true;
        }
        assert!(Instant::now() < deadline, "the run did not stop");
    }
    let status = child.wait().unwrap();
    assert!(sent, "the run ended before Ctrl-C could be sent");
    assert!(matches!(status.code(), Some(0 | 1)), "{status:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "run-finished", "{last}");
    assert_eq!(last["summary"]["stopped_because"], "operator stop");
    // Every board that started has an outcome; none is half done.
    let started: Vec<u64> = lines
        .iter()
        .filter(|v| v["event"] == "unit-started")
        .map(|v| v["board"].as_u64().unwrap())
        .collect();
    let ended: Vec<u64> = lines
        .iter()
        .filter(|v| v["event"] == "unit-passed" || v["event"] == "unit-failed")
        .map(|v| v["board"].as_u64().unwrap())
        .collect();
    assert!(started.len() < 400, "the run stopped early");
    for b in &started {
        assert!(ended.contains(b), "board {b} started but has no outcome");
    }
    // Every counted unit is in the outcome events with its counter.
    let counted = last["summary"]["counted"].as_u64().unwrap();
    let with_counter = lines
        .iter()
        .filter(|v| {
            (v["event"] == "unit-passed" || v["event"] == "unit-failed")
                && !v["unit"]["counter"].is_null()
        })
        .count() as u64;
    assert!(
        counted >= with_counter,
        "counted {counted} < units with a counter {with_counter}"
    );
}
