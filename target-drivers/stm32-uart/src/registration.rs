//! The stm32-uart driver as the station's registry knows it:
//! `stm32-uart:port=PATH[,baud=N][,parity=even|none][,reset=lines|agent|none][,lines=SEQ][,control=SOCKET]`.

use std::path::PathBuf;

use flashgate_serial::{is_pty_path, LineConfig, SerialPortTransport};
use flashgate_target::{
    BoardsFrom, Capabilities, Capability, Driver, Fixture, FixtureSpec, RunWiring, SpecError,
    SpecOptions, Stage, Target, TargetError,
};

use crate::fixture::{FixtureLink, LineSequences};
use crate::{BootloaderEntry, Stm32Options, Stm32UartTarget, CAPABILITIES};

/// The registration.
pub static DRIVER: Driver = Driver {
    name: "stm32-uart",
    summary: "an STM32 through its ROM bootloader (AN3155) on a UART; the agent on the same UART after Go",
    parse,
    production: || CAPABILITIES,
};

/// How the fixture gets the board back into its bootloader.
#[derive(Debug, Clone)]
enum Reset {
    /// DTR/RTS to NRST/BOOT0; on a pty through the simulator's control socket, if given.
    Lines {
        lines: LineSequences,
        control: Option<PathBuf>,
    },
    /// The agent's EnterBootloader.
    Agent,
    /// No way: the board cannot be locked after the challenge.
    None,
}

#[derive(Debug)]
struct Spec {
    port: String,
    line: LineConfig,
    reset: Reset,
    pty: bool,
}

fn invalid(key: &'static str, value: &str, expected: &str) -> SpecError {
    SpecError::Invalid {
        driver: "stm32-uart",
        key,
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

fn parse(options: &str) -> Result<Box<dyn FixtureSpec>, SpecError> {
    let mut o = SpecOptions::parse("stm32-uart", options)?;
    let port = o.require("port", "the serial port of the target's bootloader UART")?;
    let baud = o
        .parse_value("baud", "a baud rate, e.g. 115200")?
        .unwrap_or(115_200);
    // Real ports carry the bootloader's 8E1; a pty carries no parity.
    let even_parity = match o.take("parity").as_deref() {
        None | Some("even") => true,
        Some("none") => false,
        Some(other) => {
            return Err(invalid(
                "parity",
                other,
                "even (a real port) or none (a pty)",
            ))
        }
    };
    let pty = is_pty_path(std::path::Path::new(&port));
    let reset = o.take("reset");
    let lines = o.take("lines");
    let control = o.take("control");
    let reset = match reset.as_deref() {
        None | Some("lines") => {
            let lines = match &lines {
                None => LineSequences::default(),
                Some(text) => text.parse().map_err(|e: crate::fixture::LinesError| {
                    invalid("lines", text, &format!("{e} (e.g. lines=-rts/dtr/-dtr:rts)"))
                })?,
            };
            if let (Some(c), false) = (&control, pty) {
                return Err(invalid(
                    "control",
                    c,
                    "control= is the simulator's socket for a pseudo-terminal; a real port drives DTR and RTS itself, so leave it out",
                ));
            }
            Reset::Lines {
                lines,
                control: control.map(PathBuf::from),
            }
        }
        Some(r @ ("agent" | "none")) => {
            if let Some((key, value)) = lines
                .map(|v| ("lines", v))
                .or(control.map(|v| ("control", v)))
            {
                return Err(invalid(
                    key,
                    &value,
                    &format!("{key}= only applies to reset=lines: leave it out with reset={r}"),
                ));
            }
            if r == "agent" {
                Reset::Agent
            } else {
                Reset::None
            }
        }
        Some(other) => {
            return Err(invalid(
                "reset",
                other,
                "lines (the fixture's DTR/RTS drive NRST and BOOT0), agent (the firmware's EnterBootloader) or none",
            ))
        }
    };
    o.finish()?;
    Ok(Box::new(Spec {
        port,
        line: LineConfig { baud, even_parity },
        reset,
        pty,
    }))
}

impl Spec {
    /// Whether the driver can get back to the bootloader after the challenge.
    fn can_return(&self) -> bool {
        match &self.reset {
            Reset::Lines { control, .. } => !self.pty || control.is_some(),
            Reset::Agent => true,
            Reset::None => false,
        }
    }
}

impl FixtureSpec for Spec {
    fn capabilities(&self) -> Capabilities {
        if self.can_return() {
            return CAPABILITIES;
        }
        // Readout protection is set in the bootloader, which the board cannot re-enter.
        let mut c = Capabilities::empty();
        for cap in CAPABILITIES.iter().filter(|&c| c != Capability::SetLock) {
            c.insert(cap);
        }
        c
    }

    fn max_channels(&self) -> Option<u32> {
        Some(1)
    }

    fn fixtures(&self, run: &RunWiring) -> Vec<Box<dyn Fixture>> {
        let (port, line, reset) = (self.port.clone(), self.line, self.reset.clone());
        let pty = self.pty;
        let options = Stm32Options {
            baud: line.baud,
            bootloader_entry: if matches!(reset, Reset::Agent) {
                BootloaderEntry::Agent
            } else {
                BootloaderEntry::Reset
            },
            ..Default::default()
        };
        vec![Box::new(BoardsFrom::new(
            run.boards.unwrap_or(1),
            move || {
                let missing =
                    |what: &str, e: flashgate_serial::SerialError| TargetError::Protocol {
                        stage: Stage::Connect,
                        detail: format!("the {what} is missing: {e}"),
                    };
                let port = SerialPortTransport::open(&port, line)
                    .map_err(|e| missing("bootloader port", e))?;
                let link = match &reset {
                    Reset::Lines {
                        lines,
                        control: Some(c),
                    } => FixtureLink::with_control_socket(port, lines.clone(), c)
                        .map_err(|e| missing("simulator's control socket", e))?,
                    // A pty without its control socket has no lines to drive.
                    Reset::Lines { .. } if pty => FixtureLink::plain(port),
                    Reset::Lines { lines, .. } => FixtureLink::with_port_lines(port, lines.clone()),
                    Reset::Agent | Reset::None => FixtureLink::plain(port),
                };
                Ok(
                    Box::new(Stm32UartTarget::with_options(link, options.clone()))
                        as Box<dyn Target>,
                )
            },
        ))]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn caps(options: &str) -> Result<Capabilities, String> {
        parse(options)
            .map(|s| s.capabilities())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn set_lock_is_claimed_only_with_a_way_back_to_the_bootloader() {
        let real = "port=/dev/ttyUSB7";
        assert!(caps(real).unwrap().contains(Capability::SetLock));
        assert!(caps(&format!("{real},reset=agent"))
            .unwrap()
            .contains(Capability::SetLock));
        assert!(caps(&format!("{real},reset=lines,lines=rts&dtr/-dtr:-rts"))
            .unwrap()
            .contains(Capability::SetLock));
        let none = caps(&format!("{real},reset=none")).unwrap();
        assert!(!none.contains(Capability::SetLock));
        assert!(none.contains(Capability::AnswerChallenge) && none.contains(Capability::ReadLock));
        let pty = "port=/dev/pts/999,parity=none";
        assert!(!caps(pty).unwrap().contains(Capability::SetLock));
        assert!(caps(&format!("{pty},control=/tmp/x.sock"))
            .unwrap()
            .contains(Capability::SetLock));
    }

    #[test]
    fn bad_reset_options_are_refused() {
        for (options, want) in [
            ("port=/dev/ttyUSB0,reset=dtr", "lines (the fixture"),
            ("port=/dev/ttyUSB0,lines=-rts/dtx", "\"dtx\" is not a line"),
            ("port=/dev/ttyUSB0,control=/tmp/c", "leave it out"),
            (
                "port=/dev/ttyUSB0,reset=agent,lines=rts",
                "only applies to reset=lines",
            ),
            (
                "port=/dev/pts/9,reset=none,control=/tmp/c",
                "only applies to reset=lines",
            ),
        ] {
            let e = caps(options).unwrap_err();
            assert!(e.contains(want), "{options}: {e}");
        }
    }
}
