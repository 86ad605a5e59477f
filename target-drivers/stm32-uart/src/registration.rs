//! The stm32-uart driver as the station's registry knows it:
//! `stm32-uart:port=PATH[,baud=N][,parity=even|none]`.

use flashgate_serial::{LineConfig, SerialPortTransport};
use flashgate_target::{
    BoardsFrom, Capabilities, Driver, Fixture, FixtureSpec, RunWiring, SpecError, SpecOptions,
    Stage, Target, TargetError,
};

use crate::{Stm32Options, Stm32UartTarget, CAPABILITIES};

/// The registration.
pub static DRIVER: Driver = Driver {
    name: "stm32-uart",
    summary: "an STM32 through its ROM bootloader (AN3155) on a UART; the agent on the same UART after Go",
    parse,
    production: || CAPABILITIES,
};

#[derive(Debug)]
struct Spec {
    port: String,
    line: LineConfig,
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
            return Err(SpecError::Invalid {
                driver: "stm32-uart",
                key: "parity",
                value: other.to_owned(),
                expected: "even (a real port) or none (a pty)".to_owned(),
            })
        }
    };
    o.finish()?;
    Ok(Box::new(Spec {
        port,
        line: LineConfig { baud, even_parity },
    }))
}

impl FixtureSpec for Spec {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn max_channels(&self) -> Option<u32> {
        Some(1)
    }

    fn fixtures(&self, run: &RunWiring) -> Vec<Box<dyn Fixture>> {
        let (port, line) = (self.port.clone(), self.line);
        let options = Stm32Options {
            baud: line.baud,
            ..Default::default()
        };
        vec![Box::new(BoardsFrom::new(
            run.boards.unwrap_or(1),
            move || {
                let link =
                    SerialPortTransport::open(&port, line).map_err(|e| TargetError::Protocol {
                        stage: Stage::Connect,
                        detail: format!("the bootloader port is missing: {e}"),
                    })?;
                Ok(
                    Box::new(Stm32UartTarget::with_options(link, options.clone()))
                        as Box<dyn Target>,
                )
            },
        ))]
    }
}
