//! A simulated ArduinoISP programmer with an AVR target, and the target's provisioning agent.
//!
//! ```text
//!  host ──(serial, STK500v1)──▶ ArduinoIsp ──(SPI, AVR serial programming)──▶ AvrChip
//!  host ──(serial, flashgate-agent frames)──▶ AgentUart ───────(same chip)──────┘
//! ```
//!
//! [`AvrSim`] owns one board. Its two serial lines are `flashgate_serial::SerialDevice`s: serve them in
//! process over `flashgate_serial::Loopback` or on pseudo-terminals with
//! `flashgate_serial::pty::PtyServer`, where avrdude (`-c stk500v1 -b 19200`) can talk to
//! the programmer. The board's state can be saved to and loaded from a file ([`ChipState`]).
//!
//! Configure it in code ([`AvrSimConfig`]) or from an option string such as
//! `avr:part=m328p,timing=realistic,seed=7,fault=drop@prog-page:3` (keys listed on
//! [`AvrSimConfig`]).

mod agent;
mod chip;
mod fault;
mod isp;
mod state;
mod timing;

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flashgate_target::{Location, Space};

pub use agent::AgentUart;
pub use chip::{AvrChip, ChipStats, EESAVE, ERASED, LOCKED_READ, LOCK_BITS, NO_ANSWER};
pub use fault::{AvrFault, Trigger};
pub use isp::{ArduinoIsp, Param, BUFFER_SIZE, HW_VERSION, SW_MAJOR, SW_MINOR};
pub use state::{ChipState, FuseState};
pub use timing::AvrTiming;

use crate::part::{Part, ATMEGA328P};
use crate::uid::{board_uid, serial_offset, SERIAL_LEN};

/// Why a simulation could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AvrSimError {
    /// A part name the simulator does not know.
    #[error("unknown AVR part {name:?}: use m328p (atmega328p) or m2560 (atmega2560)")]
    UnknownPart {
        /// The name given.
        name: String,
    },
    /// An option key the simulator does not know.
    #[error("unknown avr sim option {key:?}: use part, timing, seed, serial, identity, eesave, baud or fault")]
    UnknownKey {
        /// The key given.
        key: String,
    },
    /// An option value that cannot be read.
    #[error("avr sim option {key}={value:?} is not valid: write {expected}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// Values that do not fit together.
    #[error("invalid avr simulation: {detail}")]
    Invalid {
        /// What is wrong.
        detail: String,
    },
    /// A state file that cannot be read or written.
    #[error("avr sim state: {detail}")]
    State {
        /// What is wrong.
        detail: String,
    },
}

/// Everything that defines a simulated board.
///
/// # Option string
///
/// `avr:key=value,...` (the prefix is optional), parsed with `str::parse`:
///
/// | key | value | default |
/// |-----|-------|---------|
/// | `part` | `m328p`/`atmega328p`, `m2560`/`atmega2560` | `m328p` |
/// | `timing` | `realistic` or `fast` | `realistic` |
/// | `baud` | host link baud rate (after `timing`) | 19200 |
/// | `seed` | u64, decimal or `0x` hex: the board serial and calibration byte | 0 |
/// | `serial` | 16 hex digits, or `blank` for an erased serial | from `seed` |
/// | `identity` | where the agent reads its key: `flash:0x7E00`, `eeprom:0x0000` | `flash:0x7E00` |
/// | `eesave` | `on`/`off`: EESAVE fuse programmed (chip erase keeps EEPROM) | `off` |
/// | `fault` | a fault ([`AvrFault`] syntax), repeatable | none |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvrSimConfig {
    /// The target part.
    pub part: &'static Part,
    /// Timing model.
    pub timing: AvrTiming,
    /// Seed of the board serial and calibration byte.
    pub seed: u64,
    /// Board serial in the last EEPROM bytes; `None` derives one from `seed`; all `0xFF`
    /// leaves it erased.
    pub serial: Option<[u8; SERIAL_LEN]>,
    /// Where the agent reads the identity key.
    pub identity: Location,
    /// EESAVE programmed.
    pub eesave: bool,
    /// Faults, each firing once.
    pub faults: Vec<AvrFault>,
}

/// Default identity key location: the last 512 bytes of an ATmega328P's flash.
pub const DEFAULT_IDENTITY: Location = Location::new(Space::Flash, 0x7E00);

impl Default for AvrSimConfig {
    /// ATmega328P, realistic timing, seed 0, identity at `flash:0x7E00`, no faults.
    fn default() -> Self {
        AvrSimConfig {
            part: &ATMEGA328P,
            timing: AvrTiming::realistic(),
            seed: 0,
            serial: None,
            identity: DEFAULT_IDENTITY,
            eesave: false,
            faults: Vec::new(),
        }
    }
}

impl AvrSimConfig {
    /// A default configuration for `part` with fast timing (tests).
    pub fn fast(part: &'static Part) -> Self {
        AvrSimConfig {
            part,
            timing: AvrTiming::fast(),
            ..AvrSimConfig::default()
        }
    }

    /// The board serial this configuration gives.
    pub fn board_serial(&self) -> [u8; SERIAL_LEN] {
        self.serial
            .unwrap_or_else(|| splitmix(self.seed ^ 0x5EED_A1B2_C3D4_E5F6).to_be_bytes())
    }

    /// Checks that the values fit together.
    pub fn validate(&self) -> Result<(), AvrSimError> {
        let size = match self.identity.space {
            Space::Flash => self.part.flash_size,
            Space::Eeprom => self.part.eeprom_size - SERIAL_LEN as u32,
            Space::KeyStore | Space::Otp => 0,
        };
        if u64::from(self.identity.offset) + 32 > u64::from(size) {
            return Err(AvrSimError::Invalid {
                detail: format!(
                    "identity key location {} does not hold 32 bytes on an {} (flash {} bytes, EEPROM {} bytes less the {}-byte serial)",
                    self.identity, self.part.name, self.part.flash_size, self.part.eeprom_size, SERIAL_LEN
                ),
            });
        }
        Ok(())
    }
}

impl FromStr for AvrSimConfig {
    type Err = AvrSimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s.trim();
        let body = body.strip_prefix("avr:").unwrap_or(body);
        let body = if body == "avr" { "" } else { body };
        let mut c = AvrSimConfig::default();
        let mut pairs = Vec::new();
        for item in body.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| AvrSimError::BadValue {
                key: "option",
                value: item.to_owned(),
                expected: "key=value",
            })?;
            pairs.push((k.trim(), v.trim()));
        }
        // `timing` sets the whole model; apply it first so single overrides win.
        for (k, v) in &pairs {
            if *k == "timing" {
                c.timing = match *v {
                    "realistic" => AvrTiming::realistic(),
                    "fast" | "zero" => AvrTiming::fast(),
                    _ => return Err(bad("timing", v, "realistic or fast")),
                };
            }
        }
        for (k, v) in pairs {
            match k {
                "timing" => {}
                "part" => {
                    c.part = Part::find(v)
                        .ok_or_else(|| AvrSimError::UnknownPart { name: v.to_owned() })?
                }
                "baud" => {
                    c.timing.baud = int(v)
                        .and_then(|b| u32::try_from(b).ok())
                        .ok_or_else(|| bad("baud", v, "a baud rate"))?
                }
                "seed" => c.seed = int(v).ok_or_else(|| bad("seed", v, "an integer"))?,
                "serial" => {
                    c.serial = Some(if v == "blank" {
                        [ERASED; SERIAL_LEN]
                    } else {
                        let b = hex::decode(v).ok().filter(|b| b.len() == SERIAL_LEN);
                        let b = b.ok_or_else(|| bad("serial", v, "16 hex digits or blank"))?;
                        let mut a = [0u8; SERIAL_LEN];
                        a.copy_from_slice(&b);
                        a
                    })
                }
                "identity" => {
                    c.identity = v.parse().map_err(|_| {
                        bad(
                            "identity",
                            v,
                            "a location such as flash:0x7E00 or eeprom:0x0000",
                        )
                    })?
                }
                "eesave" => {
                    c.eesave = match v {
                        "on" | "true" | "yes" | "1" => true,
                        "off" | "false" | "no" | "0" => false,
                        _ => return Err(bad("eesave", v, "on or off")),
                    }
                }
                "fault" => c.faults.push(v.parse()?),
                other => {
                    return Err(AvrSimError::UnknownKey {
                        key: other.to_owned(),
                    })
                }
            }
        }
        c.validate()?;
        Ok(c)
    }
}

fn bad(key: &'static str, value: &str, expected: &'static str) -> AvrSimError {
    AvrSimError::BadValue {
        key,
        value: value.to_owned(),
        expected,
    }
}

fn int(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// SplitMix64 output function (simulation only, not cryptographic).
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// State shared by the programmer, the agent and the test's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) chip: AvrChip,
    pub(crate) identity: Location,
    pending: Vec<AvrFault>,
    fired: Vec<AvrFault>,
    counts: [u32; 256],
    any_count: u32,
    pub(crate) isp_time: std::time::Duration,
    pub(crate) agent_time: std::time::Duration,
}

impl Shared {
    /// Counts one occurrence of `command` and returns the programmer faults it triggers.
    pub(crate) fn take_faults(&mut self, command: u8) -> Vec<AvrFault> {
        let n = &mut self.counts[usize::from(command)];
        *n += 1;
        let nth = *n;
        self.any_count += 1;
        let any = self.any_count;
        let (hit, keep): (Vec<AvrFault>, Vec<AvrFault>) =
            self.pending.iter().partition(|f| match f.trigger() {
                Some(Trigger {
                    command: Some(c),
                    nth: k,
                }) => c == command && k == nth,
                Some(Trigger {
                    command: None,
                    nth: k,
                }) => k == any,
                None => false,
            });
        self.pending = keep;
        self.fired.extend(hit.iter().copied());
        hit
    }

    /// Fires an agent fault if pending.
    pub(crate) fn take_agent_fault(&mut self, fault: AvrFault) -> bool {
        match self.pending.iter().position(|f| *f == fault) {
            Some(i) => {
                self.pending.remove(i);
                self.fired.push(fault);
                true
            }
            None => false,
        }
    }
}

pub(crate) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A test that panicked while holding the board leaves valid state behind.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One simulated board: an ArduinoISP with an AVR target and the target's agent.
///
/// Clones share the board. [`programmer`](AvrSim::programmer) and [`agent`](AvrSim::agent)
/// make the two serial devices; the `with_chip*` methods inspect or change the silicon.
#[derive(Debug, Clone)]
pub struct AvrSim {
    shared: Arc<Mutex<Shared>>,
    timing: AvrTiming,
}

impl AvrSim {
    /// A factory-fresh board with the configured serial, fuses and faults.
    pub fn new(config: &AvrSimConfig) -> Result<Self, AvrSimError> {
        config.validate()?;
        let mut chip = AvrChip::new(config.part);
        let serial = config.board_serial();
        chip.load_eeprom(serial_offset(config.part) as usize, &serial);
        chip.set_calibration(0x80 | (serial[SERIAL_LEN - 1] & 0x3F));
        if config.eesave {
            let [l, h, e] = chip.fuses();
            chip.set_fuses([l, h & !EESAVE, e]);
        }
        Ok(AvrSim::with_chip_state(chip, config))
    }

    /// A board with a chip in the given state (from a state file); the configuration's
    /// part must match it. Serial and EESAVE come from the state, not the configuration.
    pub fn from_state(state: &ChipState, config: &AvrSimConfig) -> Result<Self, AvrSimError> {
        config.validate()?;
        let chip = state.to_chip()?;
        if chip.part() != config.part {
            return Err(AvrSimError::Invalid {
                detail: format!(
                    "the state holds an {} but the simulation is for an {}",
                    chip.part().name,
                    config.part.name
                ),
            });
        }
        Ok(AvrSim::with_chip_state(chip, config))
    }

    fn with_chip_state(mut chip: AvrChip, config: &AvrSimConfig) -> Self {
        let mut pending = config.faults.clone();
        let mut fired = Vec::new();
        if let Some(i) = pending.iter().position(|f| *f == AvrFault::NoTarget) {
            fired.push(pending.remove(i));
            chip.set_present(false);
        }
        AvrSim {
            shared: Arc::new(Mutex::new(Shared {
                chip,
                identity: config.identity,
                pending,
                fired,
                counts: [0; 256],
                any_count: 0,
                isp_time: std::time::Duration::ZERO,
                agent_time: std::time::Duration::ZERO,
            })),
            timing: config.timing,
        }
    }

    /// The programmer's serial line (host side of the ArduinoISP).
    pub fn programmer(&self) -> ArduinoIsp {
        ArduinoIsp::new(Arc::clone(&self.shared), self.timing)
    }

    /// The target's UART with the provisioning agent.
    pub fn agent(&self) -> AgentUart {
        AgentUart::new(Arc::clone(&self.shared), self.timing)
    }

    /// The timing model.
    pub fn timing(&self) -> AvrTiming {
        self.timing
    }

    /// Runs `f` on the chip.
    pub fn with_chip<R>(&self, f: impl FnOnce(&AvrChip) -> R) -> R {
        f(&lock(&self.shared).chip)
    }

    /// Runs `f` on the chip, mutably (set-up, e.g. a pre-locked board).
    pub fn with_chip_mut<R>(&self, f: impl FnOnce(&mut AvrChip) -> R) -> R {
        f(&mut lock(&self.shared).chip)
    }

    /// Arms one more fault.
    pub fn arm(&self, fault: AvrFault) {
        let mut s = lock(&self.shared);
        if fault == AvrFault::NoTarget {
            s.chip.set_present(false);
            s.fired.push(fault);
        } else {
            s.pending.push(fault);
        }
    }

    /// Faults that fired so far, in order.
    pub fn fired(&self) -> Vec<AvrFault> {
        lock(&self.shared).fired.clone()
    }

    /// Faults still waiting for their trigger.
    pub fn pending_faults(&self) -> Vec<AvrFault> {
        lock(&self.shared).pending.clone()
    }

    /// The board's UID as the driver derives it: `signature || EEPROM serial`.
    pub fn uid(&self) -> Vec<u8> {
        self.with_chip(|c| {
            let at = serial_offset(c.part()) as usize;
            board_uid(&c.part().signature, &c.eeprom()[at..at + SERIAL_LEN])
        })
    }

    /// The board's simulated clock: time on the programmer's serial line so far, over every
    /// programmer made for it (the chip's write and erase times run on this clock).
    pub fn programmer_time(&self) -> std::time::Duration {
        lock(&self.shared).isp_time
    }

    /// Simulated time on the agent's serial line so far (all agents made).
    pub fn agent_time(&self) -> std::time::Duration {
        lock(&self.shared).agent_time
    }

    /// Where the agent reads its identity key.
    pub fn identity(&self) -> Location {
        lock(&self.shared).identity
    }

    /// The chip's state.
    pub fn state(&self) -> ChipState {
        self.with_chip(ChipState::of)
    }

    /// Writes the chip's state to `path`.
    pub fn save_state(&self, path: &Path) -> Result<(), AvrSimError> {
        self.state().save(path)
    }
}
