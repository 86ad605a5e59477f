//! The whole secure flow through OpenOCD: `flashgate run` on three
//! channels, each an `openocd:` target on its own JTAG simulator (stock
//! OpenOCD, its own `target/stm32f1x.cfg`), with the shipped policy
//! `policies/stm32f103-openocd.toml` unchanged: program, key, certificate,
//! challenge through the agent's UART, RDP level 1. Then a stock OpenOCD
//! session on a simulator restarted from its saved state confirms the lock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};

use common::{Kind, Lab};

/// `flashgate sim stm32-jtag` on a socket in the lab, its agent on a pty.
struct JtagChip {
    child: Child,
    socket: PathBuf,
    pty: String,
    interface: PathBuf,
}

impl JtagChip {
    fn start(lab: &Lab, name: &str, options: &str) -> Self {
        let socket = lab.path(&format!("{name}.sock"));
        let state = lab.path(&format!("{name}.json"));
        let mut child = lab
            .command(&[
                "sim",
                "stm32-jtag",
                "--socket",
                socket.to_str().unwrap(),
                "--state",
                state.to_str().unwrap(),
                "--options",
                options,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = || {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            l.trim().to_owned()
        };
        let announced = line();
        assert_eq!(
            announced,
            socket.to_str().unwrap(),
            "the socket is announced"
        );
        let pty = if options.contains("agent=on") {
            line()
        } else {
            String::new()
        };
        let interface = lab.path(&format!("{name}-interface.cfg"));
        std::fs::write(
            &interface,
            flashgate_openocd::sim::openocd_interface_cfg(&socket),
        )
        .unwrap();
        Self {
            child,
            socket,
            pty,
            interface,
        }
    }

    fn target(&self) -> String {
        format!(
            "openocd:interface={},agent={}",
            self.interface.display(),
            self.pty
        )
    }
}

impl Drop for JtagChip {
    fn drop(&mut self) {
        common::terminate(&mut self.child);
    }
}

#[test]
fn three_openocd_channels_run_the_secure_flow_and_the_lock_holds() {
    assert!(
        std::path::Path::new("/usr/bin/openocd").exists(),
        "OpenOCD is not installed: apt-get install openocd (scripts/setup.sh does)"
    );
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let text =
        std::fs::read_to_string(common::repo().join("policies/stm32f103-openocd.toml")).unwrap();
    let fw: Vec<u8> = (0..6000u32).map(|i| (i * 7 + 3) as u8).collect();
    let id = lab.import_policy(&text, &fw, "0x08000000");
    let chips: Vec<JtagChip> = (0..3)
        .map(|i| {
            JtagChip::start(
                &lab,
                &format!("jtag-{i}"),
                &format!("timing=zero,agent=on,seed={}", 20 + i),
            )
        })
        .collect();
    let mut args = vec![
        "run".to_owned(),
        "--job".to_owned(),
        id.clone(),
        "--units".to_owned(),
        "3".to_owned(),
    ];
    for c in &chips {
        args.push("--target".to_owned());
        args.push(c.target());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.fg(&refs);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    let passed = lab
        .records()
        .iter()
        .filter(|r| matches!(r.kind, flashgate_audit::RecordKind::UnitPassed(_)))
        .count();
    assert_eq!(passed, 3, "{text}");

    // The chips' saved state, under a stock OpenOCD of its own.
    let socket = chips[0].socket.clone();
    drop(chips);
    let chip = JtagChip::start(&lab, "jtag-0", "timing=zero");
    assert_eq!(chip.socket, socket);
    let out = std::process::Command::new("/usr/bin/openocd")
        .args(["-f"])
        .arg(&chip.interface)
        .args([
            "-c",
            "gdb_port disabled",
            "-c",
            "telnet_port disabled",
            "-c",
            "tcl_port disabled",
            "-f",
            "target/stm32f1x.cfg",
            "-c",
            "init",
            "-c",
            "reset halt",
            "-c",
            "stm32f1x options_read 0",
            "-c",
            "if {[catch {read_memory 0x08000000 32 4} e]} {echo READ-REFUSED} else {echo \"READ-OK $e\"}",
            "-c",
            "shutdown",
        ])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("read protection: on"), "{log}");
    assert!(log.contains("READ-REFUSED"), "{log}");
}
