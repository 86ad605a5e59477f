//! Faults a simulated board can have.

use std::fmt;
use std::str::FromStr;

use flashgate_target::{LockLevel, Stage};

use crate::SimError;

/// One fault of one board. Each fires once, at the first operation it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Contact is lost during the stage (mid-write for program); the board stays disconnected
    /// until `connect` is called again.
    ContactLost(Stage),
    /// The device stops answering during the stage; the driver reports a timeout after
    /// `SimTiming::timeout_us`.
    Timeout(Stage),
    /// One bit of one programmed byte comes out flipped; programming reports success and
    /// verify catches it.
    BitError,
    /// The supply browns out in the middle of a page write: the page is left half written
    /// and the board resets (disconnected).
    BrownOut,
    /// The agent signs with a key other than the injected one, so the signature does not
    /// verify against the issued certificate.
    WrongSignature,
    /// The board is another device type (`sim-other-mcu`, another signature).
    WrongDevice,
    /// The board arrives locked at this level, with firmware and a key already on it.
    AlreadyLocked(LockLevel),
}

impl Fault {
    /// The kinds a random fault is drawn from (stages and levels filled in by the draw).
    pub(crate) const KINDS: usize = 7;

    /// The stage whose error reports this fault.
    ///
    /// `BitError` surfaces in verify, `WrongSignature` in challenge (when the appliance verifies
    /// the reply), `WrongDevice` and `AlreadyLocked` in identify (when the appliance checks
    /// the [`DeviceInfo`](flashgate_target::DeviceInfo)).
    pub fn stage(&self) -> Stage {
        match self {
            Fault::ContactLost(s) | Fault::Timeout(s) => *s,
            Fault::BitError => Stage::Verify,
            Fault::BrownOut => Stage::Program,
            Fault::WrongSignature => Stage::Challenge,
            Fault::WrongDevice | Fault::AlreadyLocked(_) => Stage::Identify,
        }
    }
}

/// Written as in option strings: `contact-lost@program`, `timeout@erase`, `bit-error`,
/// `brown-out`, `wrong-signature`, `wrong-device`, `already-locked@readout`.
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::ContactLost(s) => write!(f, "contact-lost@{s}"),
            Fault::Timeout(s) => write!(f, "timeout@{s}"),
            Fault::BitError => f.write_str("bit-error"),
            Fault::BrownOut => f.write_str("brown-out"),
            Fault::WrongSignature => f.write_str("wrong-signature"),
            Fault::WrongDevice => f.write_str("wrong-device"),
            Fault::AlreadyLocked(l) => write!(f, "already-locked@{l}"),
        }
    }
}

impl FromStr for Fault {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SimError::BadValue {
            key: "fault",
            value: s.to_owned(),
            expected: "contact-lost@STAGE, timeout@STAGE, bit-error, brown-out, wrong-signature, \
                       wrong-device or already-locked[@readout|@permanent]",
        };
        let (name, arg) = match s.split_once('@') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let stage = |a: Option<&str>| -> Result<Stage, SimError> {
            a.ok_or_else(bad)?.parse().map_err(|_| bad())
        };
        match (name, arg) {
            ("contact-lost", a) => Ok(Fault::ContactLost(stage(a)?)),
            ("timeout", a) => Ok(Fault::Timeout(stage(a)?)),
            ("bit-error", None) => Ok(Fault::BitError),
            ("brown-out", None) => Ok(Fault::BrownOut),
            ("wrong-signature", None) => Ok(Fault::WrongSignature),
            ("wrong-device", None) => Ok(Fault::WrongDevice),
            ("already-locked", None) => Ok(Fault::AlreadyLocked(LockLevel::Readout)),
            ("already-locked", Some(l)) => match l.parse() {
                Ok(LockLevel::None) | Err(_) => Err(bad()),
                Ok(level) => Ok(Fault::AlreadyLocked(level)),
            },
            _ => Err(bad()),
        }
    }
}

/// The faults planned for one board.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Faults, each firing once.
    pub faults: Vec<Fault>,
}

impl FaultPlan {
    /// No faults.
    pub fn none() -> Self {
        FaultPlan::default()
    }

    /// A plan with one fault.
    pub fn one(fault: Fault) -> Self {
        FaultPlan {
            faults: vec![fault],
        }
    }
}
