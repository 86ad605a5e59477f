//! What defines one simulated chip: its part, timing model, identity, faults and fixture
//! wiring, and the option string that sets them.

use std::path::PathBuf;
use std::str::FromStr;

use flashgate_target::Location;

use super::wiring::{PinSource, Wiring};
use super::{fault, Fault, SimError};
use crate::part::{Part, STM32F103_MD};

/// Timing model of the simulated link and chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimTiming {
    /// Bootloader UART baud rate; 0 = bytes take no time.
    pub baud: u32,
    /// Even parity (8E1, 11 bits a byte, as the bootloader uses on a real port) or none
    /// (8N1, 10 bits a byte).
    pub parity: bool,
    /// Whether erase, programming, option-byte and reset times of the part count.
    pub flash: bool,
    /// Application (agent) UART baud rate, 8N1; 0 = instant.
    pub agent_baud: u32,
    /// Whether application start-up, flash measurement and signing take time.
    pub agent_work: bool,
}

impl SimTiming {
    /// 115200 baud 8E1, datasheet flash times, agent at 115200 8N1 with on-chip signing time.
    pub const fn realistic() -> Self {
        SimTiming {
            baud: 115_200,
            parity: true,
            flash: true,
            agent_baud: 115_200,
            agent_work: true,
        }
    }

    /// Nothing takes time (tests and fast peer runs).
    pub const fn instant() -> Self {
        SimTiming {
            baud: 0,
            parity: true,
            flash: false,
            agent_baud: 0,
            agent_work: false,
        }
    }

    /// Bits on the wire per byte of the bootloader link.
    pub const fn bits_per_byte(&self) -> u32 {
        if self.parity {
            11
        } else {
            10
        }
    }

    /// Wire time of `bytes` on the bootloader link, ns.
    pub fn wire_ns(&self, bytes: u64) -> u64 {
        bits_ns(bytes * u64::from(self.bits_per_byte()), self.baud)
    }

    /// Wire time of `bytes` on the application link (8N1), ns.
    pub fn agent_ns(&self, bytes: u64) -> u64 {
        bits_ns(bytes * 10, self.agent_baud)
    }
}

fn bits_ns(bits: u64, baud: u32) -> u64 {
    if baud == 0 {
        return 0;
    }
    let ns = (u128::from(bits) * 1_000_000_000).div_ceil(u128::from(baud));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Everything that defines one simulated chip.
///
/// Option string (for `flashgate sim stm32-uart` and tests), comma-separated `key=value`:
///
/// | key | value | default |
/// |-----|-------|---------|
/// | `part` | `f103`, `f4` (or `stm32f103-md`, `stm32f4-413`, `0x410`, `0x413`) | `f103` |
/// | `timing` | `realistic` or `instant` | `realistic` |
/// | `baud` | bootloader baud rate (after `timing`) | 115200 |
/// | `parity` | `even` (8E1) or `none` (8N1) wire time | `even` |
/// | `agent-baud` | application UART baud rate | 115200 |
/// | `seed` | number the UID is derived from | 0 |
/// | `uid` | 24 hex digits | from `seed` |
/// | `identity` | where the agent reads its key, e.g. `flash:0x1fc00`, `otp:0x0` | per part |
/// | `fault` | `KIND@COMMAND[#N][:ADDRESS]`, repeatable (see [`Fault`]) | none |
/// | `reset-on-reopen` | `on`: the fixture resets the chip into the bootloader whenever the host closes/reopens or resets the link; `off`: the chip keeps running | `on` |
/// | `nrst` | what drives NRST: `dtr`, `rts` or `none` (pulled up) | `dtr` |
/// | `boot0` | what drives BOOT0: `rts`, `dtr`, `high` or `low` | `rts` |
/// | `line-levels` | `inverted` (an asserted line is low at the pin) or `direct` | `inverted` |
/// | `agent-reboot` | `on`: the agent answers EnterBootloader and resets into the bootloader; `off`: it refuses | `on` |
/// | `state` | state file to load at start (if it exists) and save to | none |
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// The part.
    pub part: &'static Part,
    /// Timing model.
    pub timing: SimTiming,
    /// Seed of the UID when `uid` is not given.
    pub seed: u64,
    /// Unique ID; derived from `seed` when `None`.
    pub uid: Option<[u8; 12]>,
    /// Where the agent reads its identity key; the part's default when `None`.
    pub identity: Option<Location>,
    /// Faults, each firing once.
    pub faults: Vec<Fault>,
    /// See the `reset-on-reopen` option.
    pub reset_on_link_reset: bool,
    /// How DTR and RTS reach NRST and BOOT0.
    pub wiring: Wiring,
    /// Whether the agent offers EnterBootloader.
    pub agent_reboot: bool,
    /// State file: loaded by [`Stm32Sim::new`](super::Stm32Sim::new) if it exists, saved as
    /// the chip changes.
    pub state_file: Option<PathBuf>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions::new(&STM32F103_MD)
    }
}

impl SimOptions {
    /// Defaults for `part`: realistic timing, seed 0, no faults, reset on reopen.
    pub fn new(part: &'static Part) -> Self {
        SimOptions {
            part,
            timing: SimTiming::realistic(),
            seed: 0,
            uid: None,
            identity: None,
            faults: Vec::new(),
            reset_on_link_reset: true,
            wiring: Wiring::default(),
            agent_reboot: true,
            state_file: None,
        }
    }

    /// The same with instant timing.
    #[must_use]
    pub fn instant(mut self) -> Self {
        self.timing = SimTiming::instant();
        self
    }

    /// The same with one more fault.
    #[must_use]
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// The UID the chip reports.
    pub fn chip_uid(&self) -> [u8; 12] {
        self.uid.unwrap_or_else(|| derive_uid(self.seed))
    }
}

/// A plausible STM32 UID from a seed: X/Y wafer coordinates, wafer number, lot `SIM` + digits.
/// The JTAG simulator derives its chips' UIDs with it too.
pub fn derive_uid(seed: u64) -> [u8; 12] {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let b = z.to_le_bytes();
    let digits = (z >> 40) % 10_000;
    let d = format!("{digits:04}");
    let d = d.as_bytes();
    [
        b[0],
        b[1] & 0x03,
        b[2],
        b[3] & 0x03,
        b[4] % 25 + 1,
        b'S',
        b'I',
        b'M',
        d[0],
        d[1],
        d[2],
        d[3],
    ]
}

impl FromStr for SimOptions {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |key: &'static str, value: &str, expected: &'static str| SimError::BadValue {
            key,
            value: value.to_owned(),
            expected,
        };
        let mut pairs = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| bad("option", item, "key=value"))?;
            pairs.push((k.trim(), v.trim()));
        }
        let part = match pairs.iter().find(|(k, _)| *k == "part") {
            Some((_, v)) => Part::lookup(v).ok_or_else(|| bad("part", v, "f103 or f4"))?,
            None => &STM32F103_MD,
        };
        let mut o = SimOptions::new(part);
        for (k, v) in &pairs {
            if *k == "timing" {
                o.timing = match *v {
                    "realistic" => SimTiming::realistic(),
                    "instant" | "fast" | "zero" => SimTiming::instant(),
                    _ => return Err(bad("timing", v, "realistic or instant")),
                };
            }
        }
        for (k, v) in pairs {
            match k {
                "part" | "timing" => {}
                "baud" => {
                    o.timing.baud =
                        fault::parse_u32(v).ok_or_else(|| bad("baud", v, "a baud rate"))?
                }
                "agent-baud" => {
                    o.timing.agent_baud =
                        fault::parse_u32(v).ok_or_else(|| bad("agent-baud", v, "a baud rate"))?
                }
                "parity" => {
                    o.timing.parity = match v {
                        "even" | "8e1" => true,
                        "none" | "8n1" => false,
                        _ => return Err(bad("parity", v, "even or none")),
                    }
                }
                "seed" => {
                    o.seed = match v.strip_prefix("0x") {
                        Some(h) => u64::from_str_radix(h, 16).ok(),
                        None => v.parse().ok(),
                    }
                    .ok_or_else(|| bad("seed", v, "an integer"))?
                }
                "uid" => {
                    o.uid = Some(
                        hex::decode(v)
                            .ok()
                            .and_then(|b| b.try_into().ok())
                            .ok_or_else(|| bad("uid", v, "24 hex digits"))?,
                    )
                }
                "identity" => {
                    let at: Location = v
                        .parse()
                        .map_err(|_| bad("identity", v, "a location such as flash:0x1fc00"))?;
                    part.location_address(at, 32).map_err(|_| {
                        bad("identity", v, "a location on this part that holds 32 bytes")
                    })?;
                    o.identity = Some(at);
                }
                "fault" => o.faults.push(v.parse()?),
                "reset-on-reopen" => {
                    o.reset_on_link_reset = match v {
                        "on" | "true" | "yes" | "1" => true,
                        "off" | "false" | "no" | "0" => false,
                        _ => return Err(bad("reset-on-reopen", v, "on or off")),
                    }
                }
                "nrst" => {
                    o.wiring.nrst = match v.parse() {
                        Ok(p @ (PinSource::Line(_) | PinSource::High)) => p,
                        _ => return Err(bad("nrst", v, "dtr, rts or none")),
                    }
                }
                "boot0" => {
                    o.wiring.boot0 = v
                        .parse()
                        .map_err(|()| bad("boot0", v, "rts, dtr, high or low"))?
                }
                "line-levels" => {
                    o.wiring.inverted = match v {
                        "inverted" => true,
                        "direct" => false,
                        _ => return Err(bad("line-levels", v, "inverted or direct")),
                    }
                }
                "agent-reboot" => {
                    o.agent_reboot = match v {
                        "on" | "true" | "yes" | "1" => true,
                        "off" | "false" | "no" | "0" => false,
                        _ => return Err(bad("agent-reboot", v, "on or off")),
                    }
                }
                "state" => o.state_file = Some(PathBuf::from(v)),
                other => {
                    return Err(SimError::UnknownKey {
                        key: other.to_owned(),
                    })
                }
            }
        }
        Ok(o)
    }
}
