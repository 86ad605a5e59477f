//! How strongly a device is locked.

use std::fmt;
use std::str::FromStr;

use crate::ParseError;

/// How strongly a device is locked: what a job policy asks for after provisioning, what a
/// driver sets, and what it reads back.
///
/// Ordered from weakest to strongest: `None < Readout < Permanent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockLevel {
    /// Not locked: flash and key store readable and writable over the programming interface.
    None,
    /// Readout protection: memory readout and debug refused; a full erase (which destroys
    /// the keys too) returns the device to [`LockLevel::None`].
    Readout,
    /// Permanent protection: cannot be undone, erase is refused.
    Permanent,
}

impl LockLevel {
    /// Every lock level, weakest first.
    pub const ALL: [LockLevel; 3] = [LockLevel::None, LockLevel::Readout, LockLevel::Permanent];

    /// The word used in job policies, messages and the audit log, e.g. `readout`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LockLevel::None => "none",
            LockLevel::Readout => "readout",
            LockLevel::Permanent => "permanent",
        }
    }
}

impl fmt::Display for LockLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockLevel {
    type Err = ParseError;

    /// Parses the exact word [`LockLevel::as_str`] gives (lower case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LockLevel::ALL
            .into_iter()
            .find(|level| level.as_str() == s)
            .ok_or_else(|| ParseError::UnknownLockLevel {
                input: s.to_owned(),
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_level_round_trips() {
        // Adding a level breaks this match: add it to `LockLevel::ALL` too.
        for level in LockLevel::ALL {
            match level {
                LockLevel::None | LockLevel::Readout | LockLevel::Permanent => {}
            }
            assert_eq!(level.to_string().parse::<LockLevel>().unwrap(), level);
            assert_eq!(level.to_string(), level.as_str());
        }
        let words: Vec<&str> = LockLevel::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(words, ["none", "readout", "permanent"]);
    }

    #[test]
    fn weakest_first() {
        assert!(LockLevel::None < LockLevel::Readout);
        assert!(LockLevel::Readout < LockLevel::Permanent);
        let mut sorted = LockLevel::ALL;
        sorted.sort();
        assert_eq!(sorted, LockLevel::ALL);
    }

    #[test]
    fn refuses_unknown_levels_with_a_sentence() {
        for bad in [
            "",
            "max",
            "Readout",
            "READOUT",
            " readout",
            "readout-protected",
            "locked",
        ] {
            assert_eq!(
                bad.parse::<LockLevel>().unwrap_err(),
                ParseError::UnknownLockLevel {
                    input: bad.to_owned()
                }
            );
        }
        assert_eq!(
            "max".parse::<LockLevel>().unwrap_err().to_string(),
            "\"max\" is not a lock level: write none, readout or permanent"
        );
    }
}
