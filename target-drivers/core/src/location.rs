//! Where secrets go on a device, written `space:offset` in job policies.

use std::fmt;
use std::str::FromStr;

use crate::TargetError;

/// A memory space of the device that can hold secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Dedicated key store (readable only while unlocked).
    KeyStore,
    /// Main flash; the offset is relative to the flash base address.
    Flash,
    /// Data EEPROM.
    Eeprom,
    /// One-time-programmable area.
    Otp,
}

impl Space {
    /// The lowercase name, e.g. `keystore`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Space::KeyStore => "keystore",
            Space::Flash => "flash",
            Space::Eeprom => "eeprom",
            Space::Otp => "otp",
        }
    }
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Space {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keystore" => Ok(Space::KeyStore),
            "flash" => Ok(Space::Flash),
            "eeprom" => Ok(Space::Eeprom),
            "otp" => Ok(Space::Otp),
            _ => Err(TargetError::Parse {
                what: "memory space",
                input: s.to_owned(),
                expected: "one of keystore, flash, eeprom, otp",
            }),
        }
    }
}

/// A place on the device: a space and an offset from the start of that space.
///
/// Written `keystore:0x0100` (hex with `0x`, or decimal). For [`Space::Flash`] the offset is
/// relative to the flash base, so `flash:0x0` is the first flash byte whatever its bus address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// Memory space.
    pub space: Space,
    /// Offset from the start of the space.
    pub offset: u32,
}

impl Location {
    /// A location in `space` at `offset`.
    pub const fn new(space: Space, offset: u32) -> Self {
        Location { space, offset }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:0x{:04x}", self.space, self.offset)
    }
}

impl FromStr for Location {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |expected| TargetError::Parse {
            what: "location",
            input: s.to_owned(),
            expected,
        };
        let (space, offset) = s
            .split_once(':')
            .ok_or_else(|| bad("space:offset, e.g. keystore:0x0100"))?;
        let space: Space = space
            .trim()
            .parse()
            .map_err(|_| bad("a space of keystore, flash, eeprom or otp before the colon"))?;
        let offset = offset.trim();
        let parsed = match offset
            .strip_prefix("0x")
            .or_else(|| offset.strip_prefix("0X"))
        {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => offset.parse::<u32>(),
        };
        let offset =
            parsed.map_err(|_| bad("an offset in hex (0x0100) or decimal that fits in 32 bits"))?;
        Ok(Location { space, offset })
    }
}
