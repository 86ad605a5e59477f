//! Simulation configuration and its option-string form.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use flashgate_target::{Location, LockLevel, Space, Stage};

use crate::chip::{ChipSpec, SimChip};
use crate::fault::{Fault, FaultPlan};
use crate::rng::{derive, SimRng, Stream};
use crate::target::SimTarget;
use crate::timing::SimTiming;
use crate::SimError;

/// Device type of a normal simulated board.
pub const DEVICE_TYPE: &str = "sim-secure-mcu";
/// Device type a [`Fault::WrongDevice`] board reports.
pub const WRONG_DEVICE_TYPE: &str = "sim-other-mcu";
/// Device signature of a normal board.
pub const DEVICE_SIGNATURE: [u8; 3] = [0x5E, 0xC0, 0x01];
/// Device signature of a [`Fault::WrongDevice`] board.
pub const WRONG_DEVICE_SIGNATURE: [u8; 3] = [0x5E, 0xC0, 0x02];
/// UID length in bytes.
pub const UID_LEN: usize = 12;

/// Everything that defines a simulated line of boards.
///
/// Build it in code or parse it from an option string:
///
/// ```
/// let c: flashgate_target_sim::SimConfig = "sim:seed=7,timing=realistic,fault-rate=0.02,boards=200".parse()?;
/// assert_eq!(c.boards, Some(200));
/// # Ok::<(), flashgate_target_sim::SimError>(())
/// ```
///
/// # Option string
///
/// `sim:key=value,key=value,...` (the `sim:` prefix is optional), parsed with `str::parse`:
///
/// | key | value | default |
/// |-----|-------|---------|
/// | `seed` | u64, decimal or `0x` hex | 0 |
/// | `timing` | `realistic` or `zero` (sets every timing value) | `zero` |
/// | `pace` | `on`/`off`: whether real time passes | `on` |
/// | `boards` | number of boards the fixture hands out | unlimited |
/// | `fault-rate` | probability 0..1 of one random fault per board | 0 |
/// | `fault` | `INDEX:FAULT`, repeatable, e.g. `fault=3:contact-lost@program`; replaces the random draw for that board | none |
/// | `device-type` | device type of normal boards | `sim-secure-mcu` |
/// | `flash-base` | flash bus address | 0 |
/// | `flash-size` | flash bytes; `k`/`m` suffix for KiB/MiB | `1m` |
/// | `page-size` | flash page bytes (after `timing`) | 256 |
/// | `keystore-size` | key-store bytes; `k` suffix allowed | `4k` |
/// | `identity` | identity key location, e.g. `keystore:0x0000` | `keystore:0x0000` |
/// | `bus-hz` | programming bus rate (after `timing`) | per `timing` |
/// | `agent-baud` | agent UART baud rate (after `timing`) | per `timing` |
/// | `keep` | `on`/`off`: keep every board (its chip: flash, key store) for inspection after the run; for tests, since it grows with every board | `off` |
///
/// Faults: `contact-lost@STAGE`, `timeout@STAGE`, `bit-error`, `brown-out`,
/// `wrong-signature`, `wrong-device`, `already-locked[@readout|@permanent]`; stages as in
/// [`Stage`]'s names (`connect`, `identify`, `erase`, `blank-check`, `program`, `verify`,
/// `store-secret`, `keygen`, `challenge`, `lock`, `lock-readback`).
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of everything random: UIDs, random faults, generated keys, bit-error positions.
    pub seed: u64,
    /// Timing model.
    pub timing: SimTiming,
    /// Whether real time passes (drivers sleep the simulated time off).
    pub pace: bool,
    /// How many boards the fixture hands out; `None` for no limit.
    pub boards: Option<u64>,
    /// Probability that a board without a listed fault gets one random fault.
    pub fault_rate: f64,
    /// Faults for particular boards, by board index (a board may be listed more than once).
    pub faults: Vec<(u64, Fault)>,
    /// Device type of normal boards.
    pub device_type: String,
    /// Flash bus address.
    pub flash_base: u32,
    /// Flash size in bytes (a multiple of `timing.page_size`).
    pub flash_size: u32,
    /// Key-store size in bytes.
    pub keystore_size: u32,
    /// Where the agent reads the identity key.
    pub identity: Location,
    /// Whether the fixture keeps every board for inspection after the run.
    pub keep_boards: bool,
}

impl Default for SimConfig {
    /// Seed 0, no time, pacing on, unlimited boards, no faults, 1 MiB flash at 0,
    /// 4 KiB key store, identity at `keystore:0x0000`.
    fn default() -> Self {
        SimConfig {
            seed: 0,
            timing: SimTiming::zero(),
            pace: true,
            boards: None,
            fault_rate: 0.0,
            faults: Vec::new(),
            device_type: DEVICE_TYPE.to_owned(),
            flash_base: 0,
            flash_size: 1 << 20,
            keystore_size: 4096,
            identity: Location::new(Space::KeyStore, 0),
            keep_boards: false,
        }
    }
}

impl SimConfig {
    /// Checks that the values fit together.
    pub fn validate(&self) -> Result<(), SimError> {
        let invalid = |detail: String| Err(SimError::Invalid { detail });
        let t = &self.timing;
        if t.page_size == 0 || !t.page_size.is_power_of_two() {
            return invalid(format!("page size {} is not a power of two", t.page_size));
        }
        if t.transfer_size == 0 {
            return invalid("transfer size must not be 0".to_owned());
        }
        if self.flash_size == 0 || self.flash_size % t.page_size != 0 {
            return invalid(format!(
                "flash size {} is not a positive multiple of the page size {}",
                self.flash_size, t.page_size
            ));
        }
        if u64::from(self.flash_base) + u64::from(self.flash_size) > 1 << 32 {
            return invalid("flash base + size exceeds the 32-bit address space".to_owned());
        }
        if self.flash_base % t.page_size != 0 {
            return invalid("flash base must be page aligned".to_owned());
        }
        if !(0.0..=1.0).contains(&self.fault_rate) {
            return invalid(format!(
                "fault rate {} is not between 0 and 1",
                self.fault_rate
            ));
        }
        let space = match self.identity.space {
            Space::KeyStore => self.keystore_size,
            Space::Flash => self.flash_size,
            Space::Eeprom | Space::Otp => 0,
        };
        if u64::from(self.identity.offset) + 32 > u64::from(space) {
            return invalid(format!(
                "identity key location {} does not hold 32 bytes on this device (key store {} bytes, flash {} bytes)",
                self.identity, self.keystore_size, self.flash_size
            ));
        }
        if self.device_type.is_empty()
            || self.device_type.len() > flashgate_agent::MAX_DEVICE_TYPE_LEN
            || !self.device_type.bytes().all(|b| (0x21..=0x7E).contains(&b))
        {
            return invalid(
                "device type must be 1 to 32 printable characters without spaces".to_owned(),
            );
        }
        Ok(())
    }

    /// The UID of board `index`: 4 bytes of lot number from the seed, then 8 bytes of serial.
    ///
    /// The serial is a bijection of the index for a given seed, so boards of one fixture
    /// never share a UID.
    pub fn uid(&self, index: u64) -> [u8; UID_LEN] {
        let lot = (derive(self.seed, Stream::Lot, 0) as u32).to_be_bytes();
        let serial = derive(self.seed, Stream::Serial, index).to_be_bytes();
        let mut uid = [0u8; UID_LEN];
        uid[..4].copy_from_slice(&lot);
        uid[4..].copy_from_slice(&serial);
        uid
    }

    /// The faults of board `index`: those listed for it, or else, with probability
    /// `fault_rate`, one drawn from the seed.
    pub fn faults_for(&self, index: u64) -> FaultPlan {
        let listed: Vec<Fault> = self
            .faults
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, f)| *f)
            .collect();
        if !listed.is_empty() {
            return FaultPlan { faults: listed };
        }
        let mut rng = SimRng::new(derive(self.seed, Stream::Fault, index));
        if self.fault_rate <= 0.0 || rng.next_f64() >= self.fault_rate {
            return FaultPlan::none();
        }
        let stage = Stage::ALL[rng.below(Stage::ALL.len() as u64) as usize];
        let fault = match rng.below(Fault::KINDS as u64) {
            0 => Fault::ContactLost(stage),
            1 => Fault::Timeout(stage),
            2 => Fault::BitError,
            3 => Fault::BrownOut,
            4 => Fault::WrongSignature,
            5 => Fault::WrongDevice,
            _ => Fault::AlreadyLocked(LockLevel::Readout),
        };
        FaultPlan::one(fault)
    }

    /// Board `index` with the given faults, as a chip handle.
    pub fn chip(&self, index: u64, plan: FaultPlan) -> Arc<Mutex<SimChip>> {
        let wrong = plan.faults.contains(&Fault::WrongDevice);
        let (device_type, signature) = if wrong {
            (
                WRONG_DEVICE_TYPE.to_owned(),
                WRONG_DEVICE_SIGNATURE.to_vec(),
            )
        } else {
            (self.device_type.clone(), DEVICE_SIGNATURE.to_vec())
        };
        Arc::new(Mutex::new(SimChip::new(ChipSpec {
            index,
            device_type,
            signature,
            uid: self.uid(index).to_vec(),
            flash_base: self.flash_base,
            flash_size: self.flash_size,
            page_size: self.timing.page_size,
            keystore_size: self.keystore_size,
            identity: self.identity,
            faults: plan.faults,
            rng_seed: derive(self.seed, Stream::Chip, index),
        })))
    }

    /// A driver for board `index` with the given faults, outside any fixture.
    pub fn target(&self, index: u64, plan: FaultPlan) -> SimTarget {
        SimTarget::new(self.chip(index, plan), self.timing, self.pace)
    }
}

/// Parses an option string; the keys are listed on [`SimConfig`].
impl FromStr for SimConfig {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s.strip_prefix("sim:").unwrap_or(s);
        let body = if body == "sim" { "" } else { body };
        let mut c = SimConfig::default();
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in body.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| SimError::BadValue {
                key: "option",
                value: item.to_owned(),
                expected: "key=value",
            })?;
            pairs.push((k.trim(), v.trim()));
        }
        // `timing` sets the whole model; apply it first so single overrides win whatever the order.
        for (k, v) in &pairs {
            if *k == "timing" {
                c.timing = match *v {
                    "realistic" => SimTiming::realistic(),
                    "zero" => SimTiming::zero(),
                    _ => return Err(bad("timing", v, "realistic or zero")),
                };
            }
        }
        for (k, v) in pairs {
            match k {
                "timing" => {}
                "seed" => c.seed = int(v).ok_or_else(|| bad("seed", v, "an integer"))?,
                "pace" => c.pace = on_off("pace", v)?,
                "keep" => c.keep_boards = on_off("keep", v)?,
                "boards" => {
                    c.boards = Some(int(v).ok_or_else(|| bad("boards", v, "a number of boards"))?)
                }
                "fault-rate" => {
                    c.fault_rate = v
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| bad("fault-rate", v, "a probability between 0 and 1"))?
                }
                "fault" => {
                    let (i, f) = v
                        .split_once(':')
                        .ok_or_else(|| bad("fault", v, "INDEX:FAULT, e.g. 3:brown-out"))?;
                    let index =
                        int(i).ok_or_else(|| bad("fault", v, "INDEX:FAULT, e.g. 3:brown-out"))?;
                    c.faults.push((index, f.parse()?));
                }
                "device-type" => c.device_type = v.to_owned(),
                "flash-base" => c.flash_base = u32_size("flash-base", v)?,
                "flash-size" => c.flash_size = u32_size("flash-size", v)?,
                "page-size" => c.timing.page_size = u32_size("page-size", v)?,
                "keystore-size" => c.keystore_size = u32_size("keystore-size", v)?,
                "identity" => {
                    c.identity = v
                        .parse()
                        .map_err(|_| bad("identity", v, "a location such as keystore:0x0000"))?
                }
                "bus-hz" => {
                    c.timing.bus_hz = int(v).ok_or_else(|| bad("bus-hz", v, "a rate in Hz"))?
                }
                "agent-baud" => {
                    c.timing.agent_baud = int(v)
                        .and_then(|b| u32::try_from(b).ok())
                        .ok_or_else(|| bad("agent-baud", v, "a baud rate"))?
                }
                other => {
                    return Err(SimError::UnknownKey {
                        key: other.to_owned(),
                    })
                }
            }
        }
        c.validate()?;
        Ok(c)
    }
}

fn bad(key: &'static str, value: &str, expected: &'static str) -> SimError {
    SimError::BadValue {
        key,
        value: value.to_owned(),
        expected,
    }
}

fn on_off(key: &'static str, v: &str) -> Result<bool, SimError> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(bad(key, v, "on or off")),
    }
}

fn int(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

fn u32_size(key: &'static str, v: &str) -> Result<u32, SimError> {
    let (num, mult) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1024),
        Some((i, 'm' | 'M')) => (&v[..i], 1024 * 1024),
        _ => (v, 1),
    };
    int(num)
        .and_then(|n| n.checked_mul(mult))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            bad(
                key,
                v,
                "a size in bytes (decimal, 0x hex, or with a k/m suffix) below 4 GiB",
            )
        })
}
