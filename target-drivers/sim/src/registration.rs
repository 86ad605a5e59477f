//! The simulated secure MCU as the station's registry knows it:
//! `sim[:key=value,...]` with the options of [`SimConfig`](crate::SimConfig).

use flashgate_target::{Capabilities, Driver, Fixture, FixtureSpec, RunWiring, SpecError};

use crate::SimFixture;

/// The registration.
pub static DRIVER: Driver = Driver {
    name: "sim",
    summary: "simulated secure MCUs in memory, with timing and injected faults",
    parse,
    production: Capabilities::all,
};

#[derive(Debug)]
struct Spec(SimFixture);

fn parse(options: &str) -> Result<Box<dyn FixtureSpec>, SpecError> {
    SimFixture::from_options(options)
        .map(|f| Box::new(Spec(f)) as Box<dyn FixtureSpec>)
        .map_err(|e| SpecError::Driver {
            driver: "sim",
            detail: e.to_string(),
        })
}

impl FixtureSpec for Spec {
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    fn fixtures(&self, run: &RunWiring) -> Vec<Box<dyn Fixture>> {
        // Clones share one board supply: the channels take from one pile.
        (0..run.channels)
            .map(|_| Box::new(self.0.clone()) as Box<dyn Fixture>)
            .collect()
    }
}
