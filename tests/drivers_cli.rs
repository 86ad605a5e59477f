//! The whole secure flow through the real drivers, against the simulated
//! chips served on pseudo-terminals by `flashgate sim`, and read back by
//! avrdude and stm32flash (tools nobody here wrote). Skips with a message
//! where a tool is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::sim::{firmware, have, Sim, STATE};
use common::{Kind, Lab};

fn job(
    lab: &Lab,
    policy_file: &str,
    edit: impl Fn(String) -> String,
    firmware: &[u8],
    at: &str,
) -> String {
    let text = std::fs::read_to_string(common::repo().join("policies").join(policy_file)).unwrap();
    lab.import_policy(&edit(text), firmware, at)
}

/// The ATmega328P's flash as avrdude reads it through the ArduinoISP on `pty`.
fn avrdude_reads_flash(lab: &Lab, pty: &str) -> Vec<u8> {
    let read = Command::new("avrdude")
        .args([
            "-c",
            "stk500v1",
            "-p",
            "m328p",
            "-P",
            pty,
            "-b",
            "19200",
            "-U",
            "flash:r:out.bin:r",
        ])
        .current_dir(lab.dir.path())
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    std::fs::read(lab.path("out.bin")).unwrap()
}

#[test]
fn avr_isp_secure_flow_then_avrdude_reads_the_unlocked_chip() {
    if !have("avrdude") {
        return;
    }
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let fw = firmware(3000);
    // No lock, so that avrdude can read back what flashgate programmed.
    let id = job(
        &lab,
        "avr-atmega328p.toml",
        |t| {
            t.replace("level = \"readout\"", "level = \"none\"")
                .replace("avr_lock_byte = 0xFC", "")
        },
        &fw,
        "0",
    );
    let sim = Sim::avr_isp(&lab, "m328p", "timing=fast");
    let target = format!("avr-isp:port={},agent={}", sim.pty(), sim.agent_pty());
    let out = lab.fg(&["run", "--job", &id, "--target", &target, "--units", "1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let back = avrdude_reads_flash(&lab, sim.pty());
    assert_eq!(
        &back[..fw.len()],
        fw.as_slice(),
        "avrdude reads back the job's firmware"
    );
}

/// A gang of three ArduinoISPs, each its own chip on its own ptys, in one
/// run with one quota: every chip programmed, then read back by avrdude.
#[test]
fn a_gang_of_avr_isp_programmers_in_one_run() {
    if !have("avrdude") {
        return;
    }
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let fw = firmware(2000);
    let id = job(
        &lab,
        "avr-atmega328p.toml",
        |t| {
            t.replace("level = \"readout\"", "level = \"none\"")
                .replace("avr_lock_byte = 0xFC", "")
        },
        &fw,
        "0",
    );
    let sims: Vec<Sim> = (1..=3)
        .map(|n| {
            Sim::avr_isp_in(
                &lab,
                "m328p",
                &format!("timing=fast,serial={n:016x}"),
                &format!("chip-{n}.json"),
            )
        })
        .collect();
    let mut args = vec!["run".to_owned(), "--job".to_owned(), id.clone()];
    for sim in &sims {
        args.push("--target".to_owned());
        args.push(format!(
            "avr-isp:port={},agent={}",
            sim.pty(),
            sim.agent_pty()
        ));
    }
    args.extend(["--units".to_owned(), "3".to_owned(), "--json".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.fg(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = stdout
        .lines()
        .filter(|l| l.contains("\"unit-passed\""))
        .count();
    assert_eq!(passed, 3, "{stdout}");
    for ch in 0..3 {
        assert!(
            stdout.contains(&format!("\"channel\":{ch}")),
            "channel {ch} took part: {stdout}"
        );
    }
    // Several --target take one channel each; --channels with them is refused.
    let mut with_channels = args.clone();
    with_channels.extend(["--channels", "2"]);
    let refused = lab.fg(&with_channels);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("leave out --channels"));

    for sim in &sims {
        let back = avrdude_reads_flash(&lab, sim.pty());
        assert_eq!(
            &back[..fw.len()],
            fw.as_slice(),
            "each chip holds the job's firmware"
        );
    }
}

#[test]
fn avr_isp_secure_flow_locks_the_chip() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let id = job(&lab, "avr-atmega328p.toml", |t| t, &firmware(2000), "0");
    let mut sim = Sim::avr_isp(&lab, "m328p", "timing=fast");
    let target = format!("avr-isp:port={},agent={}", sim.pty(), sim.agent_pty());
    let out = lab.fg(&[
        "run", "--job", &id, "--target", &target, "--units", "1", "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sim.stop();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path(STATE)).unwrap()).unwrap();
    assert_eq!(
        state["lock"], "fc",
        "the lock byte the policy names, read back: {state}"
    );
    // A second run on the same (now locked) chip refuses it at identify and never counts it.
    let mut sim = Sim::avr_isp(&lab, "m328p", "timing=fast");
    let target = format!("avr-isp:port={},agent={}", sim.pty(), sim.agent_pty());
    let out = lab.fg(&[
        "run", "--job", &id, "--target", &target, "--units", "1", "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"stage\":\"identify\"") && text.contains("\"counter\":null"),
        "{text}"
    );
    sim.stop();
    // A programmer port that is not there: no board was reached, so the run
    // exits 2 with the reason, not 0 with "unit count reached".
    let out = lab.fg(&[
        "run",
        "--job",
        &id,
        "--target",
        "avr-isp:port=/nonexistent/programmer,agent=/nonexistent/agent",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no board could be reached"), "{err}");
}

#[test]
fn stm32_uart_secure_flow_then_stm32flash_reads_the_unlocked_chip() {
    if !have("stm32flash") {
        return;
    }
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let fw = firmware(6000);
    let id = job(
        &lab,
        "stm32f103.toml",
        |t| t.replace("level = \"readout\"", "level = \"none\""),
        &fw,
        "0x08000000",
    );
    let sim = Sim::stm32_uart(&lab, "f103", "timing=fast");
    // A pty carries no parity: 8N1 here, 8E1 on real ports.
    let target = format!("stm32-uart:port={},parity=none", sim.pty());
    let out = lab.fg(&["run", "--job", &id, "--target", &target, "--units", "1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let read = Command::new("stm32flash")
        .args([
            "-m",
            "8n1",
            "-r",
            "out.bin",
            "-S",
            &format!("0x08000000:{}", fw.len()),
            sim.pty(),
        ])
        .current_dir(lab.dir.path())
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stdout)
    );
    assert_eq!(
        std::fs::read(lab.path("out.bin")).unwrap(),
        fw,
        "stm32flash reads back the job's firmware"
    );
}
