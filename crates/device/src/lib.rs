#![forbid(unsafe_code)]
//! The device vocabulary of flashgate: the memory spaces of a device
//! ([`Space`]), a place on a device ([`Location`], written
//! `keystore:0x0100`) and how strongly a device is locked ([`LockLevel`]).
//!
//! The job policy (`flashgate-policy`) and the driver model
//! (`flashgate-target`) both re-export these types, so the location a policy
//! names is the one a driver writes to, with nothing converting between
//! them. The enums are deliberately not `#[non_exhaustive]`: every `match`
//! on them in the workspace names each variant, so adding one breaks the
//! build at every place that must decide what it means.
//!
//! The words are the job policy's (`keystore`, `flash`, `eeprom`, `otp`;
//! `none`, `readout`, `permanent`); the audit log records lock levels with
//! them (docs/AUDIT-FORMAT.md).
//!
//! ```
//! use flashgate_device::{Location, LockLevel, Space};
//!
//! let at: Location = "flash:0x0801fc00".parse().unwrap();
//! assert_eq!(at, Location::new(Space::Flash, 0x0801_FC00));
//! assert_eq!(at.to_string(), "flash:0x0801FC00");
//! assert_eq!("readout".parse::<LockLevel>().unwrap(), LockLevel::Readout);
//! assert!(LockLevel::Permanent > LockLevel::Readout);
//! ```

mod location;
mod lock;

pub use location::{parse_u32, Location, Space};
pub use lock::LockLevel;

/// Why a text is not a space, a location or a lock level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The text is not `space:offset`.
    #[error(
        "{input:?} is not a location: write a memory space, a colon and an offset, \
         such as keystore:0x0100"
    )]
    NotALocation {
        /// The text given.
        input: String,
    },

    /// The space (before the colon of a location) is not one of the four.
    #[error("{input:?} is not a memory space: write keystore, flash, eeprom or otp")]
    UnknownSpace {
        /// The text given for the space.
        input: String,
    },

    /// The offset (after the colon of a location) is not a number below 4 GiB.
    #[error(
        "{input:?} is not an offset: write a decimal or 0x-prefixed hex number below 4 GiB, \
         such as 0x0100"
    )]
    BadOffset {
        /// The text given for the offset.
        input: String,
    },

    /// The text is not one of the three lock levels.
    #[error("{input:?} is not a lock level: write none, readout or permanent")]
    UnknownLockLevel {
        /// The text given.
        input: String,
    },
}
