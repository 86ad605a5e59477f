//! The steps a unit goes through, named the same way in errors, results and audit records.

use std::fmt;
use std::str::FromStr;

use crate::TargetError;

/// One step of provisioning a unit, in the order the appliance runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Power up and attach to the programming interface.
    Connect,
    /// Read device type, UID, signature and lock state.
    Identify,
    /// Chip erase.
    Erase,
    /// Check that flash reads back erased.
    BlankCheck,
    /// Write the image.
    Program,
    /// Read the image back and compare.
    Verify,
    /// Inject keys or other secret data.
    StoreSecret,
    /// Have the device generate its own key pair.
    Keygen,
    /// Challenge-response with the on-device agent.
    Challenge,
    /// Set the lock bits.
    Lock,
    /// Read the lock bits back.
    LockReadback,
}

impl Stage {
    /// Every stage, in run order.
    pub const ALL: [Stage; 11] = [
        Stage::Connect,
        Stage::Identify,
        Stage::Erase,
        Stage::BlankCheck,
        Stage::Program,
        Stage::Verify,
        Stage::StoreSecret,
        Stage::Keygen,
        Stage::Challenge,
        Stage::Lock,
        Stage::LockReadback,
    ];

    /// The lowercase name, e.g. `blank-check`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Identify => "identify",
            Stage::Erase => "erase",
            Stage::BlankCheck => "blank-check",
            Stage::Program => "program",
            Stage::Verify => "verify",
            Stage::StoreSecret => "store-secret",
            Stage::Keygen => "keygen",
            Stage::Challenge => "challenge",
            Stage::Lock => "lock",
            Stage::LockReadback => "lock-readback",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| TargetError::Parse {
                what: "stage",
                input: s.to_owned(),
                expected: "one of connect, identify, erase, blank-check, program, verify, \
                           store-secret, keygen, challenge, lock, lock-readback",
            })
    }
}
