//! The fixtures a run programs on: a driver, how it is wired, and how many
//! channels.

use flashgate_target::{Capabilities, Fixture, FixtureSpec, RunWiring, SpecError};

use super::StationError;

/// The fixtures of one run, before the job is known.
#[derive(Debug)]
pub struct FixtureSet {
    driver: String,
    spec: Box<dyn FixtureSpec>,
    channels: u32,
}

impl FixtureSet {
    /// Fixtures from a target spec (`sim:seed=3`, `avr-isp:port=/dev/ttyUSB0`)
    /// through the driver registry, on `channels` channels.
    pub fn parse(target: &str, channels: u32) -> Result<Self, StationError> {
        let (driver, spec) = flashgate_target::parse_target(crate::drivers::DRIVERS, target)?;
        Self::new(driver, spec, channels)
    }

    /// Fixtures of a driver that is not in the registry (a test fixture,
    /// line software's own handler).
    pub fn new(
        driver: impl Into<String>,
        spec: Box<dyn FixtureSpec>,
        channels: u32,
    ) -> Result<Self, StationError> {
        let driver = driver.into();
        if channels == 0 {
            return Err(StationError::NoChannels);
        }
        if let Some(max) = spec.max_channels() {
            if channels > max {
                let driver = crate::drivers::find(&driver).map_or("this", |d| d.name);
                return Err(SpecError::Channels { driver, max }.into());
            }
        }
        Ok(Self {
            driver,
            spec,
            channels,
        })
    }

    /// The driver's name.
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// What boards on these fixtures can do, as wired.
    pub fn capabilities(&self) -> Capabilities {
        self.spec.capabilities()
    }

    /// Channels.
    pub fn channels(&self) -> u32 {
        self.channels
    }

    pub(super) fn fixtures(
        &self,
        boards: Option<u64>,
        lock_byte: Option<u8>,
    ) -> Vec<Box<dyn Fixture>> {
        self.spec.fixtures(
            &RunWiring::new(self.channels)
                .with_boards(boards)
                .with_lock_byte(lock_byte),
        )
    }
}
