//! Faults the simulated programmer, chip and agent can have.

use std::fmt;
use std::str::FromStr;

use crate::sim::AvrSimError;
use crate::stk;

/// When a programmer fault fires: at the `nth` (1-based) occurrence of `command`
/// (an STK500 command byte), or of any command when `command` is `None`.
///
/// Occurrences are counted from the simulator's start, over every host session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Trigger {
    /// The STK500 command byte, or `None` for any command.
    pub command: Option<u8>,
    /// Which occurrence, from 1.
    pub nth: u32,
}

impl Trigger {
    /// The `nth` occurrence of `command`.
    pub const fn nth(command: u8, nth: u32) -> Self {
        Trigger {
            command: Some(command),
            nth,
        }
    }

    /// The first occurrence of `command`.
    pub const fn first(command: u8) -> Self {
        Trigger::nth(command, 1)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.command.map_or("any", stk::command_name);
        if self.nth == 1 {
            f.write_str(name)
        } else {
            write!(f, "{name}:{}", self.nth)
        }
    }
}

/// One fault. Each fires once.
///
/// Written as in option strings: `KIND@COMMAND[:N]` for programmer faults, where `COMMAND`
/// is `get-sync`, `get-parameter`, `set-device`, `set-device-ext`, `enter-progmode`,
/// `leave-progmode`, `load-address`, `universal`, `prog-page`, `read-page`, `read-sign` or
/// `any`, and `N` the occurrence (default 1); e.g. `drop@prog-page:3`, `nosync@load-address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AvrFault {
    /// `drop`: the last byte of the programmer's reply is lost on the line.
    DropReplyByte(Trigger),
    /// `corrupt`: the first reply byte (normally `STK_INSYNC`) arrives garbled.
    CorruptReply(Trigger),
    /// `corrupt-data`: one data byte in the middle of the reply arrives with a bit flipped
    /// (a read page, a signature byte); the status bytes are intact.
    CorruptData(Trigger),
    /// `nosync`: the programmer answers `STK_NOSYNC` and does nothing.
    NoSync(Trigger),
    /// `failed`: the programmer does nothing and answers `STK_INSYNC`, the command's data
    /// bytes (zeros) if it has any, and `STK_FAILED`, as avrdude expects a failure.
    Failed(Trigger),
    /// `silent`: the programmer swallows the command and never answers.
    NoAnswer(Trigger),
    /// `brown-out`: the target's supply dips while the command runs. During a flash
    /// `PROG_PAGE` the page being committed is left half written; the target resets and
    /// leaves programming mode, so later instructions read `0x00` until programming is
    /// enabled again. The programmer notices nothing and answers OK.
    BrownOut(Trigger),
    /// `no-target`: no chip on the ISP lines (every read is `0x00`).
    NoTarget,
    /// `agent-corrupt`: the agent's next reply has its CRC byte garbled.
    AgentCorrupt,
    /// `agent-silent`: the agent does not answer the next request.
    AgentSilent,
}

impl AvrFault {
    /// The trigger of a programmer fault.
    pub fn trigger(&self) -> Option<Trigger> {
        match self {
            AvrFault::DropReplyByte(t)
            | AvrFault::CorruptReply(t)
            | AvrFault::CorruptData(t)
            | AvrFault::NoSync(t)
            | AvrFault::Failed(t)
            | AvrFault::NoAnswer(t)
            | AvrFault::BrownOut(t) => Some(*t),
            AvrFault::NoTarget | AvrFault::AgentCorrupt | AvrFault::AgentSilent => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            AvrFault::DropReplyByte(_) => "drop",
            AvrFault::CorruptReply(_) => "corrupt",
            AvrFault::CorruptData(_) => "corrupt-data",
            AvrFault::NoSync(_) => "nosync",
            AvrFault::Failed(_) => "failed",
            AvrFault::NoAnswer(_) => "silent",
            AvrFault::BrownOut(_) => "brown-out",
            AvrFault::NoTarget => "no-target",
            AvrFault::AgentCorrupt => "agent-corrupt",
            AvrFault::AgentSilent => "agent-silent",
        }
    }
}

impl fmt::Display for AvrFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.trigger() {
            Some(t) => write!(f, "{}@{t}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

impl FromStr for AvrFault {
    type Err = AvrSimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AvrSimError::BadValue {
            key: "fault",
            value: s.to_owned(),
            expected: "drop|corrupt|corrupt-data|nosync|failed|silent|brown-out@COMMAND[:N], \
                       no-target, agent-corrupt or agent-silent",
        };
        let (kind, at) = match s.trim().split_once('@') {
            Some((k, a)) => (k, Some(a)),
            None => (s.trim(), None),
        };
        let trigger = |at: Option<&str>| -> Result<Trigger, AvrSimError> {
            let at = at.ok_or_else(bad)?;
            let (name, nth) = match at.split_once(':') {
                Some((n, k)) => (n, k.parse::<u32>().ok().filter(|k| *k > 0).ok_or_else(bad)?),
                None => (at, 1),
            };
            let command = if name == "any" {
                None
            } else {
                Some(stk::command_by_name(name).ok_or_else(bad)?)
            };
            Ok(Trigger { command, nth })
        };
        match (kind, at) {
            ("drop", a) => Ok(AvrFault::DropReplyByte(trigger(a)?)),
            ("corrupt", a) => Ok(AvrFault::CorruptReply(trigger(a)?)),
            ("corrupt-data", a) => Ok(AvrFault::CorruptData(trigger(a)?)),
            ("nosync", a) => Ok(AvrFault::NoSync(trigger(a)?)),
            ("failed", a) => Ok(AvrFault::Failed(trigger(a)?)),
            ("silent", a) => Ok(AvrFault::NoAnswer(trigger(a)?)),
            ("brown-out", a) => Ok(AvrFault::BrownOut(trigger(a)?)),
            ("no-target", None) => Ok(AvrFault::NoTarget),
            ("agent-corrupt", None) => Ok(AvrFault::AgentCorrupt),
            ("agent-silent", None) => Ok(AvrFault::AgentSilent),
            _ => Err(bad()),
        }
    }
}
