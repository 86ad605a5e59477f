//! The shipped STM32 policy, unchanged, locks the board end to end with
//! `flashgate run` against `flashgate sim stm32-uart` on a pseudo-terminal:
//! back into the bootloader after the challenge once through the fixture's
//! control lines (the simulator's control socket) and once through the
//! agent's EnterBootloader, on an F103 and an F4. stm32flash then finds the
//! chip's memory refused. Without a way back, the run is refused before any
//! board.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Kind, Lab};
use flashgate_stm32_uart::sim::{SimOptions, Stm32Sim};
use flashgate_stm32_uart::{Part, RdpLevel};

/// `flashgate sim ...`, killed (and its socket gone) when dropped.
struct Sim {
    child: Option<Child>,
    paths: Vec<String>,
}

impl Sim {
    fn start(lab: &Lab, args: &[&str], lines: usize) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flashgate"))
            .args(args)
            .current_dir(lab.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut sim = Sim {
            child: Some(child),
            paths: Vec::new(),
        };
        for _ in 0..lines {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            assert!(!l.trim().is_empty(), "the simulator printed no path");
            sim.paths.push(l.trim().to_owned());
        }
        sim
    }

    /// SIGTERM, so that it saves its state and removes its socket.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            common::terminate(&mut child);
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

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

fn firmware(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 151 + 17) as u8).collect()
}

/// Builds and imports a job from `policy` (validity moved to now, nothing else).
fn job(lab: &Lab, policy: &str) -> String {
    let text = common::validity(policy, common::now() - 3600, common::now() + 86_400);
    std::fs::write(lab.path("p.toml"), text).unwrap();
    std::fs::write(lab.path("fw.bin"), firmware(6000)).unwrap();
    lab.build_and_import("fw.bin@0x08000000")
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
    let lines = if matches!(way, Way::Lines) { 2 } else { 1 };
    let mut sim = Sim::start(
        &lab,
        &[
            "sim",
            "stm32-uart",
            "--part",
            part,
            "--state",
            "chip.json",
            "--options",
            &options,
        ],
        lines,
    );
    let pty = sim.paths[0].clone();
    let target = match way {
        Way::Lines => {
            assert_eq!(Path::new(&sim.paths[1]), sock, "the socket path is printed");
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
    o.state_file = Some(lab.path("chip.json"));
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
    let mut sim = Sim::start(
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
    for target in [
        format!("stm32-uart:port={},parity=none", sim.paths[0]),
        format!("stm32-uart:port={},parity=none,reset=none", sim.paths[0]),
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
    let mut sim = Sim::start(
        &lab,
        &[
            "sim",
            "stm32-uart",
            "--part",
            "f103",
            "--state",
            "chip.json",
            "--options",
            "timing=fast,agent-reboot=off",
        ],
        1,
    );
    let target = format!("stm32-uart:port={},parity=none,reset=agent", sim.paths[0]);
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
    o.state_file = Some(lab.path("chip.json"));
    assert_eq!(Stm32Sim::new(o).unwrap().rdp(), RdpLevel::Level0);
}
