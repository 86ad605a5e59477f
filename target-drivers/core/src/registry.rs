//! How a driver crate presents itself to the station: its name, how the
//! options of its target spec parse, and what it can do when wired the way
//! the spec says. Each driver crate exports one [`Driver`]; the appliance
//! lists them in one table, so adding a protocol touches its own crate and
//! one registration line.

use std::collections::BTreeMap;

use crate::{Capabilities, Fixture, Target, TargetError};

/// Why a target spec (`driver:key=value,...`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// No driver of that name in this build.
    #[error("unknown target '{name}' (one of {known})")]
    UnknownDriver { name: String, known: String },
    /// An option is not `key=value`.
    #[error("target option '{part}' is not key=value")]
    NotKeyValue { part: String },
    /// An option was given twice.
    #[error("target option '{key}' is given twice")]
    Repeated { key: String },
    /// The driver does not know an option.
    #[error("the {driver} target has no option '{key}' (options: {known})")]
    UnknownOption {
        driver: &'static str,
        key: String,
        known: String,
    },
    /// A required option is missing.
    #[error("--target {driver}:{key}=... is required: {what}")]
    Missing {
        driver: &'static str,
        key: &'static str,
        what: &'static str,
    },
    /// An option's value does not parse.
    #[error("the {driver} target's {key}={value} is not valid: {expected}")]
    Invalid {
        driver: &'static str,
        key: &'static str,
        value: String,
        expected: String,
    },
    /// The driver's own options parser refused the spec.
    #[error("--target {driver}: {detail}")]
    Driver {
        driver: &'static str,
        detail: String,
    },
    /// More channels than the driver's fixture can drive.
    #[error("--target {driver} drives {max} channel(s) per process: use --channels {max} (one process per programmer)")]
    Channels { driver: &'static str, max: u32 },
}

/// The `key=value,...` options of a target spec, each to be taken once by
/// the driver; [`finish`](SpecOptions::finish) refuses what is left over.
#[derive(Debug, Clone, Default)]
pub struct SpecOptions {
    driver: &'static str,
    pairs: BTreeMap<String, String>,
    known: Vec<&'static str>,
}

impl SpecOptions {
    /// Parses `options` (the text after `driver:`).
    pub fn parse(driver: &'static str, options: &str) -> Result<Self, SpecError> {
        let mut pairs = BTreeMap::new();
        for part in options.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| SpecError::NotKeyValue {
                part: part.to_owned(),
            })?;
            if pairs.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(SpecError::Repeated { key: k.to_owned() });
            }
        }
        Ok(Self {
            driver,
            pairs,
            known: Vec::new(),
        })
    }

    /// The driver these options are for.
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    /// Takes option `key`, if given.
    pub fn take(&mut self, key: &'static str) -> Option<String> {
        self.known.push(key);
        self.pairs.remove(key)
    }

    /// Takes option `key`, which must be given (`what` says what it is).
    pub fn require(&mut self, key: &'static str, what: &'static str) -> Result<String, SpecError> {
        let driver = self.driver;
        self.take(key)
            .ok_or(SpecError::Missing { driver, key, what })
    }

    /// Takes option `key` and parses it; `expected` says what a valid value is.
    pub fn parse_value<T: std::str::FromStr>(
        &mut self,
        key: &'static str,
        expected: &str,
    ) -> Result<Option<T>, SpecError> {
        let driver = self.driver;
        match self.take(key) {
            None => Ok(None),
            Some(value) => value.parse().map(Some).map_err(|_| SpecError::Invalid {
                driver,
                key,
                value,
                expected: expected.to_owned(),
            }),
        }
    }

    /// Whatever the driver did not take is refused: a misspelt option must
    /// not be silently ignored on a production line.
    pub fn finish(self) -> Result<(), SpecError> {
        match self.pairs.into_keys().next() {
            None => Ok(()),
            Some(key) => Err(SpecError::UnknownOption {
                driver: self.driver,
                key,
                known: self.known.join(", "),
            }),
        }
    }
}

/// What the run asks of the fixtures a spec makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunWiring {
    /// Channels programming at once.
    pub channels: u32,
    /// Boards the operator said to take in all, if they said.
    pub boards: Option<u64>,
    /// The lock byte the job's policy names, for drivers whose lock is one
    /// byte (AVR); `None` keeps the driver's default.
    pub lock_byte: Option<u8>,
}

impl RunWiring {
    /// `channels` channels, boards until the fixtures run out, default lock byte.
    pub fn new(channels: u32) -> Self {
        Self {
            channels,
            boards: None,
            lock_byte: None,
        }
    }

    /// With a number of boards.
    #[must_use]
    pub fn with_boards(mut self, boards: Option<u64>) -> Self {
        self.boards = boards;
        self
    }

    /// With the policy's lock byte.
    #[must_use]
    pub fn with_lock_byte(mut self, lock_byte: Option<u8>) -> Self {
        self.lock_byte = lock_byte;
        self
    }
}

/// A parsed target spec: what its fixtures can do, and the fixtures.
pub trait FixtureSpec: Send + Sync + std::fmt::Debug {
    /// What a board on these fixtures can do, as wired (an AVR without
    /// `agent=` cannot answer a challenge).
    fn capabilities(&self) -> Capabilities;

    /// The most channels one process can drive with this spec; `None` for
    /// no limit.
    fn max_channels(&self) -> Option<u32> {
        None
    }

    /// One fixture per channel.
    fn fixtures(&self, run: &RunWiring) -> Vec<Box<dyn Fixture>>;
}

/// One driver as the station knows it.
#[derive(Clone, Copy)]
pub struct Driver {
    /// The name a policy's `target.driver` and a target spec use.
    pub name: &'static str,
    /// One line for help text.
    pub summary: &'static str,
    /// Parses the options after `name:` (most drivers through
    /// [`SpecOptions`], which refuses an option the driver did not take).
    pub parse: fn(&str) -> Result<Box<dyn FixtureSpec>, SpecError>,
    /// What the driver can do wired as a production fixture would be
    /// (agent reachable): `job build` refuses a job no such fixture can run.
    pub production: fn() -> Capabilities,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("name", &self.name).finish()
    }
}

impl Driver {
    /// Parses this driver's `options` into a fixture spec.
    pub fn spec(&self, options: &str) -> Result<Box<dyn FixtureSpec>, SpecError> {
        (self.parse)(options)
    }
}

/// Finds the driver of `target` (`name` or `name:options`) in `drivers`
/// and parses its options.
pub fn parse_target(
    drivers: &[&Driver],
    target: &str,
) -> Result<(&'static str, Box<dyn FixtureSpec>), SpecError> {
    let (name, options) = target.split_once(':').unwrap_or((target, ""));
    let driver =
        drivers
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| SpecError::UnknownDriver {
                name: name.to_owned(),
                known: drivers
                    .iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
    Ok((driver.name, driver.spec(options)?))
}

/// A fixture that makes each board with a closure: for targets reached
/// through a programmer on a port, where each board means opening the port
/// again (the operator has swapped the board in the fixture).
pub struct BoardsFrom<F> {
    make: F,
    left: u64,
}

impl<F> std::fmt::Debug for BoardsFrom<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoardsFrom")
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl<F> BoardsFrom<F>
where
    F: FnMut() -> Result<Box<dyn Target>, TargetError> + Send,
{
    /// At most `boards` boards, each made by `make`.
    pub fn new(boards: u64, make: F) -> Self {
        Self { make, left: boards }
    }
}

impl<F> Fixture for BoardsFrom<F>
where
    F: FnMut() -> Result<Box<dyn Target>, TargetError> + Send,
{
    fn next_board(&mut self) -> Result<Option<Box<dyn Target>>, TargetError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        (self.make)().map(Some)
    }

    fn boards_left(&self) -> Option<u64> {
        Some(self.left)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[derive(Debug)]
    struct Nothing;
    impl FixtureSpec for Nothing {
        fn capabilities(&self) -> Capabilities {
            Capabilities::empty()
        }
        fn max_channels(&self) -> Option<u32> {
            Some(1)
        }
        fn fixtures(&self, _: &RunWiring) -> Vec<Box<dyn Fixture>> {
            Vec::new()
        }
    }

    static NOTHING: Driver = Driver {
        name: "nothing",
        summary: "a driver with one option",
        parse: |options| {
            let mut o = SpecOptions::parse("nothing", options)?;
            o.require("port", "the programmer's serial port")?;
            let _: Option<u32> = o.parse_value("baud", "a number")?;
            o.finish()?;
            Ok(Box::new(Nothing))
        },
        production: Capabilities::empty,
    };

    #[test]
    fn specs_parse_strictly() {
        let drivers = [&NOTHING];
        let (name, spec) = parse_target(&drivers, "nothing:port=/dev/x,baud=9600").unwrap();
        assert_eq!(name, "nothing");
        assert_eq!(spec.max_channels(), Some(1));
        let e = |t: &str| parse_target(&drivers, t).unwrap_err().to_string();
        assert_eq!(e("other"), "unknown target 'other' (one of nothing)");
        assert_eq!(
            e("nothing"),
            "--target nothing:port=... is required: the programmer's serial port"
        );
        assert_eq!(
            e("nothing:port=a,bud=9600"),
            "the nothing target has no option 'bud' (options: port, baud)"
        );
        assert_eq!(
            e("nothing:port=a,baud=fast"),
            "the nothing target's baud=fast is not valid: a number"
        );
        assert_eq!(e("nothing:port"), "target option 'port' is not key=value");
        assert_eq!(
            e("nothing:port=a,port=b"),
            "target option 'port' is given twice"
        );
    }
}
