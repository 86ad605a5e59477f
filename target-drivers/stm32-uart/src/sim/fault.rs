//! Faults of the simulated link and chip.

use std::fmt;
use std::str::FromStr;

use crate::protocol::*;
use crate::sim::SimError;

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The last byte of the device's answer to the command is lost on the wire
    /// (an ACK, or the last data byte of a Read Memory).
    DropReplyByte,
    /// A byte the host sent arrives corrupted, so the command's checksum fails: the device
    /// answers NACK and does nothing.
    CorruptChecksum,
    /// The device refuses the command with NACK and does nothing.
    Nack,
    /// The device stops answering altogether (it hangs) until it is reset.
    NoAnswer,
    /// The supply dips while the command runs: a Write Memory programs half its block, an
    /// erase erases half its sectors, then the chip resets without answering (a new 0x7F
    /// sync is needed).
    BrownOut,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::DropReplyByte,
        FaultKind::CorruptChecksum,
        FaultKind::Nack,
        FaultKind::NoAnswer,
        FaultKind::BrownOut,
    ];

    /// Name in option strings.
    pub const fn as_str(self) -> &'static str {
        match self {
            FaultKind::DropReplyByte => "drop-byte",
            FaultKind::CorruptChecksum => "bad-checksum",
            FaultKind::Nack => "nack",
            FaultKind::NoAnswer => "no-answer",
            FaultKind::BrownOut => "brown-out",
        }
    }
}

/// Which command a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Trigger {
    /// Command code ([`SYNC`] for the autobaud byte); `None` for any command.
    pub command: Option<u8>,
    /// Only commands whose address range (Read, Write, Go) or erased sectors contain this
    /// address.
    pub address: Option<u32>,
    /// Fire at the n-th matching command (0 = the first).
    pub nth: u32,
}

/// One fault: fires once, at the end of the matching command (when the device has received
/// all of it and is about to act and answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// When.
    pub trigger: Trigger,
}

impl Fault {
    /// `kind` at the `nth` (0-based) occurrence of `command`.
    pub const fn at(kind: FaultKind, command: u8, nth: u32) -> Self {
        Fault {
            kind,
            trigger: Trigger {
                command: Some(command),
                address: None,
                nth,
            },
        }
    }

    /// `kind` at the first `command` touching `address`.
    pub const fn at_address(kind: FaultKind, command: u8, address: u32) -> Self {
        Fault {
            kind,
            trigger: Trigger {
                command: Some(command),
                address: Some(address),
                nth: 0,
            },
        }
    }
}

const NAMES: [(&str, u8); 13] = [
    ("sync", SYNC),
    ("get", CMD_GET),
    ("get-version", CMD_GET_VERSION),
    ("get-id", CMD_GET_ID),
    ("read", CMD_READ),
    ("go", CMD_GO),
    ("write", CMD_WRITE),
    ("erase", CMD_ERASE),
    ("extended-erase", CMD_EXTENDED_ERASE),
    ("write-protect", CMD_WRITE_PROTECT),
    ("write-unprotect", CMD_WRITE_UNPROTECT),
    ("readout-protect", CMD_READOUT_PROTECT),
    ("readout-unprotect", CMD_READOUT_UNPROTECT),
];

fn command_by_name(s: &str) -> Option<u8> {
    NAMES.iter().find(|(n, _)| *n == s).map(|(_, c)| *c)
}

fn name_of(cmd: u8) -> &'static str {
    NAMES
        .iter()
        .find(|(_, c)| *c == cmd)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

/// `KIND@COMMAND[#N][:ADDRESS]`, e.g. `brown-out@write#3`, `nack@read:0x08000400`,
/// `no-answer@sync`, `drop-byte@any#10`.
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@", self.kind.as_str())?;
        match self.trigger.command {
            Some(c) => f.write_str(name_of(c))?,
            None => f.write_str("any")?,
        }
        if self.trigger.nth != 0 {
            write!(f, "#{}", self.trigger.nth)?;
        }
        if let Some(a) = self.trigger.address {
            write!(f, ":0x{a:08x}")?;
        }
        Ok(())
    }
}

impl FromStr for Fault {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            SimError::BadValue {
            key: "fault",
            value: s.to_owned(),
            expected: "KIND@COMMAND[#N][:ADDRESS] with KIND one of drop-byte, bad-checksum, nack, \
                       no-answer, brown-out and COMMAND one of sync, get, get-version, get-id, read, \
                       go, write, erase, extended-erase, write-protect, write-unprotect, \
                       readout-protect, readout-unprotect, any",
        }
        };
        let (kind, rest) = s.split_once('@').ok_or_else(bad)?;
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(bad)?;
        let (rest, address) = match rest.split_once(':') {
            Some((r, a)) => (r, Some(parse_u32(a).ok_or_else(bad)?)),
            None => (rest, None),
        };
        let (cmd, nth) = match rest.split_once('#') {
            Some((c, n)) => (c, n.parse::<u32>().map_err(|_| bad())?),
            None => (rest, 0),
        };
        let command = if cmd == "any" {
            None
        } else {
            Some(command_by_name(cmd).ok_or_else(bad)?)
        };
        Ok(Fault {
            kind,
            trigger: Trigger {
                command,
                address,
                nth,
            },
        })
    }
}

pub(crate) fn parse_u32(v: &str) -> Option<u32> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Faults still to fire, with per-fault match counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultBook {
    pending: Vec<(Fault, u32)>,
    pub(crate) fired: Vec<Fault>,
}

impl FaultBook {
    pub(crate) fn new(faults: &[Fault]) -> Self {
        FaultBook {
            pending: faults.iter().map(|f| (*f, 0)).collect(),
            fired: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, fault: Fault) {
        self.pending.push((fault, 0));
    }

    /// Called once per completed command: the fault that fires now, if any.
    /// `touches` says whether the command's range contains an address.
    pub(crate) fn check(
        &mut self,
        command: u8,
        touches: &dyn Fn(u32) -> bool,
    ) -> Option<FaultKind> {
        let mut hit = None;
        for (i, (f, seen)) in self.pending.iter_mut().enumerate() {
            if f.trigger.command.is_some_and(|c| c != command)
                || (f.trigger.command.is_none() && command == SYNC)
            {
                continue;
            }
            if f.trigger.address.is_some_and(|a| !touches(a)) {
                continue;
            }
            if *seen == f.trigger.nth && hit.is_none() {
                hit = Some(i);
            }
            *seen += 1;
        }
        let i = hit?;
        let (f, _) = self.pending.remove(i);
        self.fired.push(f);
        Some(f.kind)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in [
            "brown-out@write#3",
            "nack@read:0x08000400",
            "no-answer@sync",
            "drop-byte@any#10",
            "bad-checksum@extended-erase",
        ] {
            let f: Fault = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        assert!("boom@write".parse::<Fault>().is_err());
        assert!("nack@frobnicate".parse::<Fault>().is_err());
        assert!("nack@write#x".parse::<Fault>().is_err());
    }

    #[test]
    fn nth_counts_matches_only() {
        let mut b = FaultBook::new(&[Fault::at(FaultKind::Nack, CMD_WRITE, 1)]);
        let none = |_: u32| false;
        assert_eq!(b.check(CMD_READ, &none), None);
        assert_eq!(b.check(CMD_WRITE, &none), None);
        assert_eq!(b.check(CMD_WRITE, &none), Some(FaultKind::Nack));
        assert_eq!(b.check(CMD_WRITE, &none), None);
        assert_eq!(b.fired.len(), 1);
    }
}
