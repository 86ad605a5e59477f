//! Where things go on a device, written `space:offset`.

use std::fmt;
use std::str::FromStr;

use crate::ParseError;

/// A memory space of the device that can hold secrets and certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// A dedicated key store (a secure element or on-chip key slots), readable only while
    /// the device is unlocked.
    KeyStore,
    /// Program flash, at an offset from its start (a driver whose flash is memory-mapped
    /// also takes the bus address; see the driver).
    Flash,
    /// Data EEPROM.
    Eeprom,
    /// One-time-programmable memory.
    Otp,
}

impl Space {
    /// Every space, in declaration order.
    pub const ALL: [Space; 4] = [Space::KeyStore, Space::Flash, Space::Eeprom, Space::Otp];

    /// The word used in job policies and messages, e.g. `keystore`.
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
    type Err = ParseError;

    /// Parses the exact word [`Space::as_str`] gives (lower case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Space::ALL
            .into_iter()
            .find(|space| space.as_str() == s)
            .ok_or_else(|| ParseError::UnknownSpace {
                input: s.to_owned(),
            })
    }
}

/// A place on the device: a space and an offset in it.
///
/// Displayed as `keystore:0x0100` or `flash:0x0801FC00`: upper-case hex, four digits up to
/// 0xFFFF and eight above (the form job policies and the documentation use). Parsed from
/// that form, from lower-case hex (`0x` or `0X`), or from a decimal offset; `_` may separate
/// digits (`otp:0xFFFF_FFFF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The memory space.
    pub space: Space,
    /// Byte offset (or address, for memory-mapped flash) within the space.
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
        // Four digits for small offsets, eight for full 32-bit addresses.
        if self.offset <= 0xFFFF {
            write!(f, "{}:0x{:04X}", self.space, self.offset)
        } else {
            write!(f, "{}:0x{:08X}", self.space, self.offset)
        }
    }
}

impl FromStr for Location {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((space, offset)) = s.split_once(':') else {
            return Err(ParseError::NotALocation {
                input: s.to_owned(),
            });
        };
        let space = space.parse()?;
        let offset = parse_u32(offset).ok_or_else(|| ParseError::BadOffset {
            input: offset.to_owned(),
        })?;
        Ok(Location { space, offset })
    }
}

/// Parses an address or offset as policies and command lines write it:
/// decimal or `0x`-prefixed hexadecimal, `_` allowed between digits.
pub fn parse_u32(s: &str) -> Option<u32> {
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
    fn every_space_round_trips() {
        // Adding a space breaks this match: add it to `Space::ALL` too.
        for space in Space::ALL {
            match space {
                Space::KeyStore | Space::Flash | Space::Eeprom | Space::Otp => {}
            }
            assert_eq!(space.to_string().parse::<Space>().unwrap(), space);
            assert_eq!(space.to_string(), space.as_str());
        }
        let words: Vec<&str> = Space::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(words, ["keystore", "flash", "eeprom", "otp"]);
    }

    #[test]
    fn every_location_round_trips() {
        for space in Space::ALL {
            for offset in [0, 0x40, 0xFFFF, 0x1_0000, 0x0801_FC00, u32::MAX] {
                let l = Location::new(space, offset);
                let text = l.to_string();
                assert_eq!(text.parse::<Location>().unwrap(), l, "{text}");
            }
        }
    }

    #[test]
    fn display_is_upper_case_with_four_or_eight_digits() {
        let show = |space, offset| Location::new(space, offset).to_string();
        assert_eq!(show(Space::KeyStore, 0x100), "keystore:0x0100");
        assert_eq!(show(Space::KeyStore, 0), "keystore:0x0000");
        assert_eq!(show(Space::Flash, 0x7E00), "flash:0x7E00");
        assert_eq!(show(Space::Eeprom, 0xFFFF), "eeprom:0xFFFF");
        assert_eq!(show(Space::Otp, 0x1_0000), "otp:0x00010000");
        assert_eq!(show(Space::Flash, 0x0801_FC00), "flash:0x0801FC00");
        assert_eq!(show(Space::Otp, u32::MAX), "otp:0xFFFFFFFF");
    }

    #[test]
    fn parses_hex_decimal_and_separators() {
        let at = |s: &str| s.parse::<Location>().unwrap();
        assert_eq!(at("keystore:0x0100"), Location::new(Space::KeyStore, 0x100));
        assert_eq!(
            at("flash:0x0801fc00"),
            Location::new(Space::Flash, 0x0801_FC00)
        );
        assert_eq!(at("otp:0X1f"), Location::new(Space::Otp, 0x1F));
        assert_eq!(at("eeprom:16"), Location::new(Space::Eeprom, 16));
        assert_eq!(at("flash:4096"), Location::new(Space::Flash, 4096));
        assert_eq!(at("otp:0xFFFF_FFFF"), Location::new(Space::Otp, u32::MAX));
        assert_eq!(
            at("flash:4_294_967_295"),
            Location::new(Space::Flash, u32::MAX)
        );
    }

    #[test]
    fn refuses_what_is_not_a_location_with_a_sentence() {
        let err = |s: &str| s.parse::<Location>().unwrap_err();
        for bad in ["", "keystore", "0x0100", "keystore 0x0100"] {
            assert_eq!(
                err(bad),
                ParseError::NotALocation {
                    input: bad.to_owned()
                }
            );
        }
        assert_eq!(
            err("keystore").to_string(),
            "\"keystore\" is not a location: write a memory space, a colon and an offset, \
             such as keystore:0x0100"
        );
    }

    #[test]
    fn refuses_unknown_spaces_with_a_sentence() {
        for (bad, space) in [
            ("rom:0x10", "rom"),
            ("Keystore:0x10", "Keystore"),
            ("key-store:0", "key-store"),
            (" flash:0", " flash"),
            (":0", ""),
        ] {
            assert_eq!(
                bad.parse::<Location>().unwrap_err(),
                ParseError::UnknownSpace {
                    input: space.to_owned()
                },
                "{bad}"
            );
        }
        assert_eq!(
            "rom:0x10".parse::<Location>().unwrap_err().to_string(),
            "\"rom\" is not a memory space: write keystore, flash, eeprom or otp"
        );
        assert_eq!(
            "FLASH".parse::<Space>().unwrap_err().to_string(),
            "\"FLASH\" is not a memory space: write keystore, flash, eeprom or otp"
        );
    }

    #[test]
    fn refuses_bad_offsets_with_a_sentence() {
        for (bad, offset) in [
            ("keystore:", ""),
            ("keystore:0x", "0x"),
            ("keystore:0x_", "0x_"),
            ("keystore:0x1_0000_0000", "0x1_0000_0000"),
            ("flash:0x100000000", "0x100000000"),
            ("flash:4294967296", "4294967296"),
            ("keystore:+1", "+1"),
            ("keystore:-1", "-1"),
            ("keystore: 1", " 1"),
            ("keystore:1 ", "1 "),
            ("keystore:0x10:2", "0x10:2"),
            ("keystore:0x1g", "0x1g"),
            ("keystore:1e3", "1e3"),
        ] {
            assert_eq!(
                bad.parse::<Location>().unwrap_err(),
                ParseError::BadOffset {
                    input: offset.to_owned()
                },
                "{bad}"
            );
        }
        assert_eq!(
            "keystore:0x1_0000_0000"
                .parse::<Location>()
                .unwrap_err()
                .to_string(),
            "\"0x1_0000_0000\" is not an offset: write a decimal or 0x-prefixed hex number \
             below 4 GiB, such as 0x0100"
        );
    }

    #[test]
    fn orders_by_space_then_offset() {
        let mut v = vec![
            Location::new(Space::Otp, 0),
            Location::new(Space::KeyStore, 0x40),
            Location::new(Space::Flash, 0),
            Location::new(Space::KeyStore, 0),
        ];
        v.sort();
        assert_eq!(
            v,
            [
                Location::new(Space::KeyStore, 0),
                Location::new(Space::KeyStore, 0x40),
                Location::new(Space::Flash, 0),
                Location::new(Space::Otp, 0),
            ]
        );
    }
}
