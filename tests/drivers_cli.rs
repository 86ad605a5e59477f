//! The whole secure flow through the real drivers, against the simulated
//! chips served on pseudo-terminals by `flashgate sim`, and read back by
//! avrdude and stm32flash (tools nobody here wrote). Skips with a message
//! where a tool is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{Kind, Lab};

fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: {tool} is not installed; this peer test did not run");
    }
    ok
}

/// `flashgate sim ...` in the background; returns it and the pty paths it printed.
fn serve(lab: &Lab, args: &[&str], lines: usize) -> (Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(args)
        .current_dir(lab.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut paths = Vec::new();
    for _ in 0..lines {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        paths.push(l.trim().to_owned());
    }
    (child, paths)
}

fn stop(mut child: Child) {
    common::terminate(&mut child);
}

fn job(
    lab: &Lab,
    policy_file: &str,
    edit: impl Fn(String) -> String,
    firmware: &[u8],
    at: &str,
) -> String {
    let text = std::fs::read_to_string(common::repo().join("policies").join(policy_file)).unwrap();
    let text = common::validity(&edit(text), common::now() - 3600, common::now() + 86_400);
    std::fs::write(lab.path("p.toml"), text).unwrap();
    std::fs::write(lab.path("fw.bin"), firmware).unwrap();
    lab.build_and_import(&format!("fw.bin@{at}"))
}

fn firmware(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 151 + 17) as u8).collect()
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
    let (sim, ptys) = serve(
        &lab,
        &[
            "sim",
            "avr-isp",
            "--part",
            "m328p",
            "--state",
            "chip.json",
            "--options",
            "timing=fast",
        ],
        2,
    );
    let target = format!("avr-isp:port={},agent={}", ptys[0], ptys[1]);
    let out = lab.fg(&["run", "--job", &id, "--target", &target, "--units", "1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let read = Command::new("avrdude")
        .args([
            "-c",
            "stk500v1",
            "-p",
            "m328p",
            "-P",
            &ptys[0],
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
    let back = std::fs::read(lab.path("out.bin")).unwrap();
    assert_eq!(
        &back[..fw.len()],
        fw.as_slice(),
        "avrdude reads back the job's firmware"
    );
    stop(sim);
}

#[test]
fn avr_isp_secure_flow_locks_the_chip() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let id = job(&lab, "avr-atmega328p.toml", |t| t, &firmware(2000), "0");
    let (sim, ptys) = serve(
        &lab,
        &[
            "sim",
            "avr-isp",
            "--part",
            "m328p",
            "--state",
            "chip.json",
            "--options",
            "timing=fast",
        ],
        2,
    );
    let target = format!("avr-isp:port={},agent={}", ptys[0], ptys[1]);
    let out = lab.fg(&[
        "run", "--job", &id, "--target", &target, "--units", "1", "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(sim);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path("chip.json")).unwrap()).unwrap();
    assert_eq!(
        state["lock"], "fc",
        "the lock byte the policy names, read back: {state}"
    );
    // A second run on the same (now locked) chip refuses it at identify and never counts it.
    let (sim, ptys) = serve(
        &lab,
        &[
            "sim",
            "avr-isp",
            "--part",
            "m328p",
            "--state",
            "chip.json",
            "--options",
            "timing=fast",
        ],
        2,
    );
    let target = format!("avr-isp:port={},agent={}", ptys[0], ptys[1]);
    let out = lab.fg(&[
        "run", "--job", &id, "--target", &target, "--units", "1", "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"stage\":\"identify\"") && text.contains("\"counter\":null"),
        "{text}"
    );
    stop(sim);
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
    let (sim, ptys) = serve(
        &lab,
        &[
            "sim",
            "stm32-uart",
            "--part",
            "f103",
            "--state",
            "chip.json",
            "--options",
            "timing=fast",
        ],
        1,
    );
    // A pty carries no parity: 8N1 here, 8E1 on real ports.
    let target = format!("stm32-uart:port={},parity=none", ptys[0]);
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
            &ptys[0],
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
    stop(sim);
}
