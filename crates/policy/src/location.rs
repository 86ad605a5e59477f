//! Storage locations on the target, written `<space>:<offset>`.

use std::fmt;
use std::str::FromStr;

use crate::PolicyError;

/// A storage area of the target device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Space {
    /// A dedicated secure key store (secure element or on-chip key slots).
    Keystore,
    /// Program flash.
    Flash,
    /// Data EEPROM.
    Eeprom,
    /// One-time-programmable memory.
    Otp,
}

impl Space {
    /// The name used in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Space::Keystore => "keystore",
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

/// Where an object is stored on the target: a space and an offset in it.
///
/// Displayed as `keystore:0x0100` or `flash:0x0801FC00`; parsed from that form or with a decimal
/// offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The storage area.
    pub space: Space,
    /// Byte offset (or address, for memory-mapped flash) within the space.
    pub offset: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Four digits for small offsets, eight for full 32-bit addresses.
        if self.offset <= 0xFFFF {
            write!(f, "{}:0x{:04X}", self.space, self.offset)
        } else {
            write!(f, "{}:0x{:08X}", self.space, self.offset)
        }
    }
}

impl FromStr for Location {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_location(s).map_err(|problem| PolicyError::Invalid {
            field: "location".to_owned(),
            problem,
        })
    }
}

/// Parses a location, returning the problem (without field name) on error.
pub(crate) fn parse_location(s: &str) -> Result<Location, String> {
    const SHAPE: &str = "must look like \"keystore:0x0100\" \
        (space keystore, flash, eeprom or otp; offset in hex with 0x or decimal)";
    let Some((space, offset)) = s.split_once(':') else {
        return Err(SHAPE.to_owned());
    };
    let space = match space {
        "keystore" => Space::Keystore,
        "flash" => Space::Flash,
        "eeprom" => Space::Eeprom,
        "otp" => Space::Otp,
        _ => return Err(SHAPE.to_owned()),
    };
    let offset = parse_u32(offset).ok_or_else(|| {
        format!(
            "has offset {offset:?}, which is not a decimal or 0x-prefixed hex number below 4 GiB"
        )
    })?;
    Ok(Location { space, offset })
}

/// Parses a decimal or `0x`-prefixed hexadecimal `u32`, allowing `_`.
fn parse_u32(s: &str) -> Option<u32> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    // from_str_radix accepts a leading '+', which is not a digit.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(&digits, radix).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let l: Location = "keystore:0x0100".parse().unwrap();
        assert_eq!(
            l,
            Location {
                space: Space::Keystore,
                offset: 0x100
            }
        );
        assert_eq!(l.to_string(), "keystore:0x0100");
        let l: Location = "flash:0x0801fc00".parse().unwrap();
        assert_eq!(l.to_string(), "flash:0x0801FC00");
        let l: Location = "eeprom:16".parse().unwrap();
        assert_eq!(l.to_string(), "eeprom:0x0010");
        let l: Location = "otp:0x10000".parse().unwrap();
        assert_eq!(l.to_string(), "otp:0x00010000");
        assert_eq!(
            "otp:0xFFFF_FFFF".parse::<Location>().unwrap().offset,
            u32::MAX
        );
    }

    #[test]
    fn round_trip() {
        for s in ["keystore:0x0000", "flash:0x0801FC00", "otp:0xFFFFFFFF"] {
            assert_eq!(s.parse::<Location>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "keystore",
            "keystore:",
            "rom:0x10",
            "Keystore:0x10",
            "keystore:0x",
            "keystore:0x1_0000_0000",
            "keystore:+1",
            "keystore:-1",
            "keystore: 1",
            "keystore:0x10:2",
        ] {
            let err = bad.parse::<Location>().unwrap_err();
            assert!(err.to_string().contains("location"), "{bad}: {err}");
        }
    }
}
