//! The fixtures a run programs on: a driver, how it is wired, and how many
//! channels; or a gang of separately wired programmers of one driver, one
//! channel each. Named sets of channels, of any mix of drivers, are in
//! [`definition`].

pub(crate) mod definition;

pub use definition::{FixtureDef, FixtureOrigin};

use flashgate_target::{Capabilities, Capability, Fixture, FixtureSpec, RunWiring, SpecError};

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

    /// A gang: one channel per target spec, all of one driver, driven in
    /// one run with one quota ledger (eight programmers on
    /// `avr-isp:port=/dev/ttyUSB0` … `ttyUSB7`). A board on any of them can
    /// do only what every one of them can.
    pub fn gang<S: AsRef<str>>(targets: &[S]) -> Result<Self, StationError> {
        let mut driver: Option<&'static str> = None;
        let mut specs = Vec::with_capacity(targets.len());
        for (i, target) in targets.iter().enumerate() {
            // Two channels on one programmer would interleave its protocol.
            if targets[..i]
                .iter()
                .any(|t| t.as_ref().trim() == target.as_ref().trim())
            {
                return Err(StationError::RepeatedTarget {
                    target: target.as_ref().trim().to_owned(),
                });
            }
            let (name, spec) =
                flashgate_target::parse_target(crate::drivers::DRIVERS, target.as_ref())?;
            match driver {
                Some(first) if first != name => {
                    return Err(StationError::MixedDrivers {
                        first: first.to_owned(),
                        other: name.to_owned(),
                    })
                }
                Some(_) => {}
                None => driver = Some(name),
            }
            specs.push(spec);
        }
        let (Some(driver), Ok(channels)) = (driver, u32::try_from(specs.len())) else {
            return Err(StationError::NoChannels);
        };
        Self::new(driver, Box::new(Gang(specs)), channels)
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

/// Several specs of one driver, one channel each.
#[derive(Debug)]
struct Gang(Vec<Box<dyn FixtureSpec>>);

impl FixtureSpec for Gang {
    fn capabilities(&self) -> Capabilities {
        Capability::ALL
            .into_iter()
            .filter(|c| self.0.iter().all(|s| s.capabilities().contains(*c)))
            .collect()
    }

    fn max_channels(&self) -> Option<u32> {
        u32::try_from(self.0.len()).ok()
    }

    fn fixtures(&self, run: &RunWiring) -> Vec<Box<dyn Fixture>> {
        self.0
            .iter()
            .flat_map(|spec| {
                spec.fixtures(
                    &RunWiring::new(1)
                        .with_boards(run.boards)
                        .with_lock_byte(run.lock_byte),
                )
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_gang_is_one_channel_per_target_of_one_driver() {
        let set = FixtureSet::gang(&["sim:seed=1", "sim:seed=2", "sim:seed=3"]).unwrap();
        assert_eq!(set.driver(), "sim");
        assert_eq!(set.channels(), 3);
        assert_eq!(set.fixtures(None, None).len(), 3);

        // What one programmer of the gang cannot do, the gang cannot.
        let without_agent = FixtureSet::gang(&["avr-isp:port=/dev/null"]).unwrap();
        let with_agent = FixtureSet::gang(&[
            "avr-isp:port=/dev/null,agent=/dev/null",
            "avr-isp:port=/dev/null",
        ])
        .unwrap();
        assert_eq!(with_agent.capabilities(), without_agent.capabilities());
        assert!(!with_agent
            .capabilities()
            .contains(Capability::AnswerChallenge));

        let e =
            FixtureSet::gang(&["avr-isp:port=/dev/null", " avr-isp:port=/dev/null"]).unwrap_err();
        assert!(matches!(e, StationError::RepeatedTarget { .. }), "{e}");
        assert!(e.to_string().contains("twice"), "{e}");

        let e = FixtureSet::gang(&["sim", "avr-isp:port=/dev/null"]).unwrap_err();
        assert!(matches!(e, StationError::MixedDrivers { .. }), "{e}");
        assert!(e.to_string().contains("sim and avr-isp"), "{e}");
        let none: [&str; 0] = [];
        assert!(matches!(
            FixtureSet::gang(&none),
            Err(StationError::NoChannels)
        ));
    }
}
