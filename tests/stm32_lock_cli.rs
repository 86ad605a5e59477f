//! The shipped STM32 policy, unchanged, locks the board end to end with
//! `flashgate run` against `flashgate sim stm32-uart` on a pseudo-terminal:
//! back into the bootloader after the challenge once through the fixture's
//! control lines (the simulator's control socket) and once through the
//! agent's EnterBootloader, on an F103 and an F4. stm32flash then finds the
//! chip's memory refused. Without a way back, the run is refused before any
//! board.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::sim::{firmware, have, Sim, STATE};
use common::{Kind, Lab};
use flashgate_stm32_uart::sim::{SimOptions, Stm32Sim};
use flashgate_stm32_uart::{Part, RdpLevel};

/// Builds and imports a job from `policy` (validity moved to now, nothing else).
fn job(lab: &Lab, policy: &str) -> String {
    lab.import_policy(policy, &firmware(6000), "0x08000000")
}

fn shipped_policy() -> String {
    std::fs::read_to_string(common::repo().join("policies/stm32f103.toml")).unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Way {
    Lines,
    Agent,
}

/// One run of one unit with `way` back to the bootloader; asserts the lock read back and
/// stm32flash's refusal, and returns the chip's state file.
fn lock_one(part: &str, policy: &str, sim_extra: &str, way: Way) {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let id = job(&lab, policy);
    let sock = lab.path("fixture.sock");
    let mut options = format!("timing=fast{sim_extra}");
    if let Way::Lines = way {
        options.push_str(&format!(",control={}", sock.display()));
    }
    let mut sim = Sim::stm32_uart(&lab, part, &options);
    let pty = sim.pty().to_owned();
    let target = match way {
        Way::Lines => {
            assert_eq!(
                sim.control(),
                Some(sock.as_path()),
                "the socket path is printed"
            );
            format!(
                "stm32-uart:port={pty},parity=none,reset=lines,lines=-rts/dtr/-dtr:rts,control={}",
                sock.display()
            )
        }
        Way::Agent => format!("stm32-uart:port={pty},parity=none,reset=agent"),
    };
    let out = lab.fg(&[
        "run", "--job", &id, "--target", &target, "--units", "1", "--json",
    ]);
    let events = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{part} {way:?}: {events}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: serde_json::Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "unit-passed")
        .unwrap_or_else(|| panic!("no unit-passed event: {events}"));
    let lock = passed["unit"]["lock"].as_str().unwrap_or_default();
    assert!(
        lock.starts_with("readout"),
        "{part} {way:?}: the lock read back is RDP level 1: {passed}"
    );

    // stm32flash, on the same simulated chip: the bootloader refuses the read.
    if have("stm32flash") {
        let read = Command::new("stm32flash")
            .args(["-m", "8n1", "-r", "out.bin", "-S", "0x08000000:256", &pty])
            .current_dir(lab.dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&read.stdout),
            String::from_utf8_lossy(&read.stderr)
        );
        assert!(
            !read.status.success(),
            "stm32flash read a locked chip: {text}"
        );
        assert!(
            text.contains("Failed to read memory") || text.contains("Read Memory"),
            "stm32flash talked to the bootloader and was refused the read: {text}"
        );
        let leaked = std::fs::read(lab.path("out.bin")).unwrap_or_default();
        assert!(
            leaked.is_empty() || leaked != firmware(256),
            "no firmware came out"
        );
    }
    sim.stop();
    assert!(!sock.exists(), "the control socket is removed at exit");

    // The saved chip: RDP level 1, the job's firmware still in flash.
    let part = Part::lookup(part).unwrap();
    let mut o = SimOptions::new(part);
    o.state_file = Some(lab.path(STATE));
    let chip = Stm32Sim::new(o).unwrap();
    assert_eq!(chip.rdp(), RdpLevel::Level1);
    assert_eq!(&chip.flash()[..6000], firmware(6000).as_slice());
}

#[test]
fn shipped_stm32f103_policy_locks_through_the_fixture_lines() {
    lock_one("f103", &shipped_policy(), "", Way::Lines);
}

#[test]
fn shipped_stm32f103_policy_locks_through_the_agent() {
    lock_one("f103", &shipped_policy(), "", Way::Agent);
}

/// The shipped policy names `stm32f103-md`, which an F4 is not: the closest
/// honest F4 job is the same policy for `stm32f4-413`, with its firmware
/// reading the identity key where the policy puts it (flash, not OTP).
fn f4_policy() -> String {
    let p = shipped_policy();
    let f4 = p.replace(
        "device_types = [\"stm32f103-md\"]",
        "device_types = [\"stm32f4-413\"]",
    );
    assert_ne!(p, f4);
    f4
}

#[test]
fn stm32f4_locks_through_the_fixture_lines() {
    lock_one("f4", &f4_policy(), ",identity=flash:0x0801FC00", Way::Lines);
}

#[test]
fn stm32f4_locks_through_the_agent() {
    lock_one("f4", &f4_policy(), ",identity=flash:0x0801FC00", Way::Agent);
}

#[test]
fn without_a_way_back_the_run_is_refused_before_any_board() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let id = job(&lab, &shipped_policy());
    let mut sim = Sim::stm32_uart(&lab, "f103", "timing=fast");
    for target in [
        format!("stm32-uart:port={},parity=none", sim.pty()),
        format!("stm32-uart:port={},parity=none,reset=none", sim.pty()),
    ] {
        let out = lab.fg(&["run", "--job", &id, "--target", &target, "--units", "1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{target}: {err}");
        assert!(
            err.contains("reset=lines") && err.contains("control=") && err.contains("reset=agent"),
            "{err}"
        );
    }
    // A firmware that refuses EnterBootloader: the unit fails at lock, unlocked.
    sim.stop();
    let mut sim = Sim::stm32_uart(&lab, "f103", "timing=fast,agent-reboot=off");
    let target = format!("stm32-uart:port={},parity=none,reset=agent", sim.pty());
    let out = lab.fg(&[
        "run", "--job", &id, "--target", &target, "--units", "1", "--json",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("\"stage\":\"lock\"") && text.contains("Refused"),
        "{text}"
    );
    sim.stop();
    let mut o = SimOptions::new(Part::lookup("f103").unwrap());
    o.state_file = Some(lab.path(STATE));
    assert_eq!(Stm32Sim::new(o).unwrap().rdp(), RdpLevel::Level0);
}
