//! The avr-isp driver as the station's registry knows it:
//! `avr-isp:port=PATH[,agent=PATH][,part=m328p|m2560]`.

use flashgate_target::{
    BoardsFrom, Capabilities, Driver, Fixture, FixtureSpec, RunWiring, SpecError, SpecOptions,
    Target,
};

use crate::{capabilities, AvrIspConfig, AvrIspTarget, Part, ATMEGA328P};

/// The registration.
pub static DRIVER: Driver = Driver {
    name: "avr-isp",
    summary: "an AVR through an ArduinoISP (STK500v1) programmer; the agent on the target's UART",
    parse,
    production: || capabilities(&AvrIspConfig::for_part(&ATMEGA328P), true),
};

#[derive(Debug)]
struct Spec {
    port: String,
    agent: Option<String>,
    part: &'static Part,
}

fn parse(options: &str) -> Result<Box<dyn FixtureSpec>, SpecError> {
    let mut o = SpecOptions::parse("avr-isp", options)?;
    let port = o.require("port", "the ArduinoISP programmer's serial port")?;
    let agent = o.take("agent");
    let part = match o.take("part") {
        None => &ATMEGA328P,
        Some(p) => Part::find(&p).ok_or_else(|| SpecError::Invalid {
            driver: "avr-isp",
            key: "part",
            value: p,
            expected: "m328p or m2560".to_owned(),
        })?,
    };
    o.finish()?;
    Ok(Box::new(Spec { port, agent, part }))
}

impl FixtureSpec for Spec {
    fn capabilities(&self) -> Capabilities {
        capabilities(&AvrIspConfig::for_part(self.part), self.agent.is_some())
    }

    fn max_channels(&self) -> Option<u32> {
        Some(1)
    }

    fn fixtures(&self, run: &RunWiring) -> Vec<Box<dyn Fixture>> {
        let mut config = AvrIspConfig::for_part(self.part);
        if let Some(b) = run.lock_byte {
            config.lock_readout = b;
        }
        let (port, agent) = (self.port.clone(), self.agent.clone());
        // A hand-loaded programmer: one board unless the operator said how many.
        vec![Box::new(BoardsFrom::new(
            run.boards.unwrap_or(1),
            move || {
                AvrIspTarget::open(&port, agent.as_deref(), config.clone())
                    .map(|t| Box::new(t) as Box<dyn Target>)
            },
        ))]
    }
}
