//! The openocd driver as the station's registry knows it:
//! `openocd:interface=CFG,target=CFG[,agent=PORT][,baud=N][,openocd=PATH][,speed=KHZ]`.
//! `interface` and `target` are OpenOCD config files: a path, or a name
//! under OpenOCD's own scripts (`interface/stlink.cfg`, `target/stm32f1x.cfg`).

use std::path::PathBuf;

use flashgate_serial::{LineConfig, SerialPortTransport};
use flashgate_target::{
    BoardsFrom, Capabilities, Capability, Driver, Fixture, FixtureSpec, RunWiring, SpecError,
    SpecOptions, Stage, Target, TargetError,
};

use crate::openocd::{OpenOcdConfig, Script};
use crate::{OpenOcdOptions, OpenOcdTarget, CAPABILITIES};

/// The registration.
pub static DRIVER: Driver = Driver {
    name: "openocd",
    summary: "an ARM Cortex-M part (STM32F103) through a debug probe driven by OpenOCD; the agent on the target's UART",
    parse,
    production: || CAPABILITIES,
};

#[derive(Debug, Clone)]
struct Spec {
    config: OpenOcdConfig,
    agent: Option<(String, u32)>,
}

fn parse(options: &str) -> Result<Box<dyn FixtureSpec>, SpecError> {
    let mut o = SpecOptions::parse("openocd", options)?;
    let interface = o.require(
        "interface",
        "the OpenOCD interface config of the probe, e.g. interface/stlink.cfg",
    )?;
    let target = o
        .take("target")
        .unwrap_or_else(|| crate::part::STM32F103_MD.target_cfg.to_owned());
    let agent = o.take("agent");
    let baud = o
        .parse_value("baud", "the agent UART's baud rate, e.g. 115200")?
        .unwrap_or(115_200);
    let speed = o.parse_value("speed", "the adapter clock in kHz, e.g. 1000")?;
    let program = o.take("openocd").map(PathBuf::from);
    o.finish()?;
    let mut config = OpenOcdConfig::new(vec![Script::File(interface), Script::File(target)]);
    config.adapter_khz = speed;
    if let Some(p) = program {
        config.program = p;
    }
    Ok(Box::new(Spec {
        config,
        agent: agent.map(|a| (a, baud)),
    }))
}

impl FixtureSpec for Spec {
    fn capabilities(&self) -> Capabilities {
        if self.agent.is_some() {
            return CAPABILITIES;
        }
        let mut c = Capabilities::empty();
        for cap in CAPABILITIES
            .iter()
            .filter(|&c| c != Capability::AnswerChallenge)
        {
            c.insert(cap);
        }
        c
    }

    fn max_channels(&self) -> Option<u32> {
        // One probe, one OpenOCD, one board at a time.
        Some(1)
    }

    fn fixtures(&self, run: &RunWiring) -> Vec<Box<dyn Fixture>> {
        let spec = self.clone();
        vec![Box::new(BoardsFrom::new(
            run.boards.unwrap_or(1),
            move || {
                let agent = match &spec.agent {
                    Some((port, baud)) => Some(Box::new(
                        SerialPortTransport::open(
                            port,
                            LineConfig {
                                baud: *baud,
                                even_parity: false,
                            },
                        )
                        .map_err(|e| TargetError::Protocol {
                            stage: Stage::Connect,
                            detail: format!("the agent UART {port} is missing: {e}"),
                        })?,
                    )
                        as Box<dyn flashgate_serial::Transport>),
                    None => None,
                };
                Ok(Box::new(OpenOcdTarget::new(
                    spec.config.clone(),
                    agent,
                    OpenOcdOptions::default(),
                )?) as Box<dyn Target>)
            },
        ))]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn specs_parse_and_say_what_they_can_do() {
        let s = parse("interface=interface/stlink.cfg,agent=/dev/ttyUSB3").unwrap();
        assert!(s.capabilities().contains(Capability::AnswerChallenge));
        let s =
            parse("interface=interface/stlink.cfg,target=target/stm32f1x.cfg,speed=4000").unwrap();
        assert!(!s.capabilities().contains(Capability::AnswerChallenge));
        assert!(s.capabilities().contains(Capability::SetLock));
        for (bad, want) in [
            ("target=target/stm32f1x.cfg", "interface"),
            ("interface=i.cfg,speed=fast", "speed"),
            ("interface=i.cfg,colour=red", "colour"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
