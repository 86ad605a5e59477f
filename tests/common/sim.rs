//! A simulated chip served by `flashgate sim` on pseudo-terminals for a
//! test, and the peer tools (avrdude, stm32flash) that talk to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{terminate, Lab};

/// The state file every simulator here loads and saves, in the lab
/// directory.
pub const STATE: &str = "chip.json";

/// `flashgate sim KIND --part PART --state chip.json --options OPTIONS` in
/// the lab directory, with the paths it printed. Stopped and waited for
/// when dropped: SIGTERM, so that it saves its state and removes its
/// control socket.
pub struct Sim {
    child: Option<Child>,
    ptys: Vec<String>,
    control: Option<PathBuf>,
}

impl Sim {
    /// An ArduinoISP wired to an AVR: the programmer's pty and the agent
    /// UART's.
    pub fn avr_isp(lab: &Lab, part: &str, options: &str) -> Sim {
        Sim::start(lab, "avr-isp", part, options, 2, STATE)
    }

    /// As [`Sim::avr_isp`], keeping its chip in `state` (for several chips
    /// in one lab).
    pub fn avr_isp_in(lab: &Lab, part: &str, options: &str, state: &str) -> Sim {
        Sim::start(lab, "avr-isp", part, options, 2, state)
    }

    /// The STM32 bootloader on one pty, and its control socket when
    /// `options` names one (`control=PATH`).
    pub fn stm32_uart(lab: &Lab, part: &str, options: &str) -> Sim {
        Sim::start(lab, "stm32-uart", part, options, 1, STATE)
    }

    /// As [`Sim::stm32_uart`], keeping its chip in `state` (for several
    /// chips in one lab).
    pub fn stm32_uart_in(lab: &Lab, part: &str, options: &str, state: &str) -> Sim {
        Sim::start(lab, "stm32-uart", part, options, 1, state)
    }

    fn start(lab: &Lab, kind: &str, part: &str, options: &str, ptys: usize, state: &str) -> Sim {
        let mut child = lab
            .command(&[
                "sim",
                kind,
                "--part",
                part,
                "--state",
                state,
                "--options",
                options,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start flashgate sim");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // Owned before the first read, so that a failed start is still stopped.
        let mut sim = Sim {
            child: Some(child),
            ptys: Vec::new(),
            control: None,
        };
        let mut line = || {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            assert!(!l.trim().is_empty(), "flashgate sim {kind} printed no path");
            l.trim().to_owned()
        };
        for _ in 0..ptys {
            sim.ptys.push(line());
        }
        if options.split(',').any(|o| o.starts_with("control=")) {
            sim.control = Some(PathBuf::from(line()));
        }
        sim
    }

    /// The pty a driver talks to (avr-isp: the programmer's).
    pub fn pty(&self) -> &str {
        &self.ptys[0]
    }

    /// The agent UART's pty (avr-isp only).
    pub fn agent_pty(&self) -> &str {
        &self.ptys[1]
    }

    /// The control socket it printed, when started with `control=`.
    pub fn control(&self) -> Option<&Path> {
        self.control.as_deref()
    }

    /// Stops it now and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a peer tool is installed; says that its test is skipped if not.
pub fn have(tool: &str) -> bool {
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

/// `len` deterministic bytes of firmware, which a peer tool reads back.
pub fn firmware(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 151 + 17) as u8).collect()
}
