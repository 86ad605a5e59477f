//! A byte-exact simulator of the STM32 system bootloader's USART protocol (ST AN3155),
//! with the provisioning agent answering on the same UART after Go.
//!
//! [`Stm32Sim`] implements [`SerialDevice`]: bytes in, answer bytes out, and the simulated
//! time the exchange took (UART wire time at the configured baud rate and framing, flash
//! erase and programming times of the part, option-byte writes, resets, and the agent's
//! digest and signature). Serve it in process or on a pseudo-terminal; [`SimHandle`] shares
//! one chip between a server and a test that inspects it.
//!
//! What it models:
//!
//! - **Sync**: after a reset the bootloader waits for 0x7F and answers ACK (0x79); any other
//!   byte is ignored. Once synchronised, 0x7F is an ordinary (unknown) command byte.
//! - **Commands** as AN3155 specifies them, each a byte and its complement: Get (0x00),
//!   Get Version & Read Protection Status (0x01, option bytes reported as 0x00 0x00 as on
//!   current bootloaders), Get ID (0x02), Read Memory (0x11), Go (0x21), Write Memory (0x31),
//!   Erase (0x43, F1, with 0xFF global erase) or Extended Erase (0x44, F4, with 0xFFFF mass
//!   erase), Write Protect (0x63), Write Unprotect (0x73), Readout Protect (0x82), Readout
//!   Unprotect (0x92). XOR checksums are checked; a bad one, a bad complement, an unknown
//!   command or an invalid address is answered with NACK (0x1F).
//! - **Readout protection**: at RDP level 1 only Get, Get Version, Get ID and Readout
//!   Unprotect are accepted, everything else is NACKed at the command byte. Readout Protect,
//!   Readout Unprotect (which mass-erases), Write Protect, Write Unprotect and option-byte
//!   writes end with a system reset: the host must send 0x7F again. At level 2 the bootloader
//!   never answers.
//! - **Flash**: erased to 0xFF; on the F1 a half-word must be erased before programming
//!   (else the write fails and is NACKed), on the F4 programming ANDs. Write protection is
//!   honoured. OTP (F4) can only clear bits, and a locked block refuses writes.
//! - **Go**: to flash starts the application, modelled as the provisioning agent
//!   (`flashgate-agent` frames) answering with the identity key at the configured location;
//!   a blank vector table (initial stack pointer 0xFFFFFFFF) means the core faults and the
//!   link goes silent. Go to SRAM is taken as the reset stub stm32flash writes there
//!   (`-R`): a system reset.
//! - **Faults** ([`Fault`]), each firing once at a chosen command.
//! - **Fixture wiring** ([`Wiring`]): the programmer's DTR and RTS drive NRST and BOOT0
//!   ([`Stm32Sim::set_modem_line`], on a pty through the [`ControlServer`] socket). Holding
//!   NRST low keeps the chip in reset (nothing answers); releasing it starts the bootloader
//!   if BOOT0 is high, the application if low.
//! - **EnterBootloader** (agent message 0x03): the application answers and then resets into
//!   the ROM bootloader, whatever BOOT0 is (the firmware jumps to system memory).

mod control;
mod fault;
mod memory;
mod state;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use flashgate_agent::{AgentDevice, AgentEndpoint, AgentError};
use flashgate_serial::{ModemLine, SerialDevice};
use flashgate_target::Location;
use zeroize::Zeroizing;

pub use control::ControlServer;
pub use fault::{Fault, FaultKind, Trigger};
pub use state::STATE_FORMAT;

use crate::part::{Part, RdpLevel, STM32F103_MD};
use crate::protocol::*;
use fault::FaultBook;
use memory::{MemError, Memory, WriteEffect};

/// Errors of simulator configuration and state files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// An option has a value that cannot be used.
    #[error("simulator option {key}={value:?} is invalid: write {expected}")]
    BadValue {
        /// Option name.
        key: &'static str,
        /// Value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// An option name is not known.
    #[error("unknown simulator option {key:?}: use part, timing, baud, parity, seed, uid, identity, fault, reset-on-reopen, nrst, boot0, line-levels, agent-reboot or state")]
    UnknownKey {
        /// The name given.
        key: String,
    },
    /// A state file could not be read or written.
    #[error("simulator state: {detail}")]
    State {
        /// What went wrong.
        detail: String,
    },
}

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

/// Application start-up after Go until the agent listens, µs.
const APP_BOOT_US: u64 = 2_000;

/// What drives one of the chip's NRST or BOOT0 pins on the fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSource {
    /// A modem line of the programmer's port.
    Line(ModemLine),
    /// Tied high (NRST: pulled up; BOOT0: strapped to the bootloader).
    High,
    /// Tied low (BOOT0 strapped to the application).
    Low,
}

impl FromStr for PinSource {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "dtr" => Ok(PinSource::Line(ModemLine::Dtr)),
            "rts" => Ok(PinSource::Line(ModemLine::Rts)),
            "high" | "none" => Ok(PinSource::High),
            "low" => Ok(PinSource::Low),
            _ => Err(()),
        }
    }
}

/// How the fixture wires the programmer's modem lines to the chip.
///
/// Default: DTR to NRST, RTS to BOOT0, through a USB-UART whose outputs are inverted (an
/// asserted line is at 0 V), the wiring stm32flash's `-rts,dtr,-dtr:rts` expects. With both
/// lines cleared (as at power-up) both pins are high: the chip runs, and a reset starts the
/// bootloader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wiring {
    /// What drives NRST (active low: low holds the chip in reset).
    pub nrst: PinSource,
    /// What drives BOOT0 (high at reset: the bootloader starts).
    pub boot0: PinSource,
    /// An asserted line is low at the pin (true, a TTL USB-UART) or high (false).
    pub inverted: bool,
}

impl Default for Wiring {
    fn default() -> Self {
        Wiring {
            nrst: PinSource::Line(ModemLine::Dtr),
            boot0: PinSource::Line(ModemLine::Rts),
            inverted: true,
        }
    }
}

impl Wiring {
    /// The pin's level (true = high) with DTR and RTS asserted as given.
    pub fn level(&self, pin: PinSource, dtr: bool, rts: bool) -> bool {
        match pin {
            PinSource::High => true,
            PinSource::Low => false,
            PinSource::Line(l) => {
                let asserted = if l == ModemLine::Dtr { dtr } else { rts };
                asserted != self.inverted
            }
        }
    }
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
    /// State file: loaded by [`Stm32Sim::new`] if it exists, saved as the chip changes.
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
fn derive_uid(seed: u64) -> [u8; 12] {
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

/// What the simulated chip is doing, as seen from the UART.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimMode {
    /// Bootloader after a reset, waiting for the 0x7F sync byte.
    AwaitingSync,
    /// Bootloader synchronised, in its command loop.
    Bootloader,
    /// The application runs: the provisioning agent answers frames.
    Application,
    /// Go jumped to a blank vector table: the core faulted, nothing answers.
    Crashed,
    /// A no-answer fault fired: nothing answers until the chip is reset.
    Hung,
    /// RDP level 2: the bootloader is disabled for good.
    Disabled,
    /// NRST is held low: the chip is in reset and nothing answers.
    HeldInReset,
}

/// Counters of what the chip saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Bytes received from the host.
    pub bytes_in: u64,
    /// Bytes sent to the host.
    pub bytes_out: u64,
    /// Complete commands by code (index = command byte).
    pub commands: Vec<u64>,
    /// System resets (power-on excluded).
    pub resets: u64,
    /// Simulated time of everything so far.
    pub sim_time: Duration,
}

impl SimStats {
    /// How many times `cmd` completed.
    pub fn count(&self, cmd: u8) -> u64 {
        self.commands.get(usize::from(cmd)).copied().unwrap_or(0)
    }
}

/// A command being received.
#[derive(Debug, Clone)]
struct Collect {
    cmd: u8,
    phase: Phase,
    buf: Vec<u8>,
    need: usize,
    address: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Address,
    ReadCount,
    WriteCount,
    WriteData,
    EraseCount,
    EraseGlobal,
    EraseList,
    ExtCount,
    ExtSpecial,
    ExtList,
    WpCount,
    WpList,
}

#[derive(Debug, Clone)]
enum Mode {
    AwaitSync,
    Idle,
    Complement(u8),
    Collect(Collect),
    App,
    Crashed,
    Hung,
    Disabled,
    InReset,
}

/// The simulated chip: bootloader, memories, application agent, timing and faults.
pub struct Stm32Sim {
    mem: Memory,
    timing: SimTiming,
    identity: Location,
    reset_on_link_reset: bool,
    wiring: Wiring,
    agent_reboot: bool,
    /// DTR and RTS asserted, as the host last set them.
    lines: (bool, bool),
    mode: Mode,
    faults: FaultBook,
    agent: AgentEndpoint,
    app_booted: bool,
    stats: SimStats,
    state_file: Option<PathBuf>,
    dirty: bool,
    last_save: Instant,
    // Per-feed accumulators.
    out: Vec<u8>,
    ns: u64,
}

/// What a finished command does next.
enum After {
    Idle,
    Reset,
    App,
    Crash,
    Hang,
}

impl Stm32Sim {
    /// A chip per `options`: fresh from the factory (blank flash, RDP level 0), or as saved
    /// in the state file if one is named and exists.
    pub fn new(options: SimOptions) -> Result<Self, SimError> {
        let mem = match &options.state_file {
            Some(p) if p.exists() => {
                let mem = state::load(p)?;
                if !std::ptr::eq(mem.part, options.part) {
                    return Err(SimError::State {
                        detail: format!(
                            "{} holds a {}, not a {}",
                            p.display(),
                            mem.part.device_type,
                            options.part.device_type
                        ),
                    });
                }
                mem
            }
            _ => Memory::new(options.part, options.chip_uid()),
        };
        let mode = if mem.rdp() == RdpLevel::Level2 {
            Mode::Disabled
        } else {
            Mode::AwaitSync
        };
        let identity = options.identity.unwrap_or(options.part.default_identity);
        Ok(Stm32Sim {
            mem,
            timing: options.timing,
            identity,
            reset_on_link_reset: options.reset_on_link_reset,
            wiring: options.wiring,
            agent_reboot: options.agent_reboot,
            lines: (false, false),
            mode,
            faults: FaultBook::new(&options.faults),
            agent: AgentEndpoint::new(),
            app_booted: false,
            stats: SimStats {
                commands: vec![0; 256],
                ..SimStats::default()
            },
            state_file: options.state_file,
            dirty: false,
            last_save: Instant::now(),
            out: Vec::new(),
            ns: 0,
        })
    }

    /// A chip from an option string (see [`SimOptions`]).
    pub fn from_options(options: &str) -> Result<Self, SimError> {
        Stm32Sim::new(options.parse()?)
    }

    // ---- inspection ----

    /// The part.
    pub fn part(&self) -> &'static Part {
        self.mem.part
    }

    /// What the chip is doing.
    pub fn mode(&self) -> SimMode {
        match self.mode {
            Mode::AwaitSync => SimMode::AwaitingSync,
            Mode::Idle | Mode::Complement(_) | Mode::Collect(_) => SimMode::Bootloader,
            Mode::App => SimMode::Application,
            Mode::Crashed => SimMode::Crashed,
            Mode::Hung => SimMode::Hung,
            Mode::Disabled => SimMode::Disabled,
            Mode::InReset => SimMode::HeldInReset,
        }
    }

    /// Readout protection level in force.
    pub fn rdp(&self) -> RdpLevel {
        self.mem.rdp()
    }

    /// The 16 option bytes.
    pub fn option_bytes(&self) -> [u8; 16] {
        self.mem.options
    }

    /// Unique ID.
    pub fn uid(&self) -> [u8; 12] {
        self.mem.uid
    }

    /// All of flash.
    pub fn flash(&self) -> &[u8] {
        &self.mem.flash
    }

    /// OTP data and lock bytes (empty on parts without OTP).
    pub fn otp(&self) -> &[u8] {
        &self.mem.otp
    }

    /// Memory at a bus address, ignoring readout protection (looking at the silicon);
    /// `None` outside the modelled regions.
    pub fn peek(&self, address: u32, len: u32) -> Option<Vec<u8>> {
        self.mem.read(address, len)
    }

    /// Where the agent reads its identity key.
    pub fn identity(&self) -> Location {
        self.identity
    }

    /// Faults that fired so far.
    pub fn fired_faults(&self) -> &[Fault] {
        &self.faults.fired
    }

    /// Counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Simulated time of everything so far.
    pub fn sim_time(&self) -> Duration {
        self.stats.sim_time
    }

    // ---- set-up (tests, fixtures) ----

    /// Writes flash directly (as if programmed earlier), ignoring protection.
    pub fn load_flash(&mut self, address: u32, data: &[u8]) -> Result<(), SimError> {
        let p = self.mem.part;
        let off = address
            .checked_sub(p.flash_base)
            .map(|o| o as usize)
            .filter(|o| o + data.len() <= self.mem.flash.len())
            .ok_or_else(|| SimError::State {
                detail: format!("0x{address:08x}+{} lies outside flash", data.len()),
            })?;
        self.mem.flash[off..off + data.len()].copy_from_slice(data);
        self.dirty = true;
        Ok(())
    }

    /// Sets the RDP option byte directly to a level (as a board that arrives locked);
    /// takes effect like after a reset.
    pub fn set_rdp(&mut self, level: RdpLevel) {
        let r = self.mem.part.rdp_offset;
        match level {
            RdpLevel::Level0 => {
                self.mem.options[r..r + 2]
                    .copy_from_slice(&self.mem.part.option_defaults[r..r + 2]);
            }
            RdpLevel::Level1 => self.mem.readout_protect(),
            RdpLevel::Level2 => self.mem.options[r] = 0xCC,
        }
        self.dirty = true;
        self.system_reset();
    }

    /// Adds a fault.
    pub fn inject(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    /// Resets the chip into the bootloader, waiting for sync (the resets the bootloader
    /// itself triggers, the fixture's reset on reopen, EnterBootloader). While NRST is held
    /// low the chip stays in reset.
    pub fn system_reset(&mut self) {
        self.stats.resets += 1;
        self.mode = if !self.nrst_high() {
            Mode::InReset
        } else if self.mem.rdp() == RdpLevel::Level2 {
            Mode::Disabled
        } else {
            Mode::AwaitSync
        };
        self.agent.reset();
        self.app_booted = false;
        // SRAM content is not guaranteed across reset; the bootloader's variables change.
        self.persist(true);
    }

    /// The levels at NRST and BOOT0 (true = high).
    pub fn pins(&self) -> (bool, bool) {
        let (dtr, rts) = self.lines;
        (
            self.wiring.level(self.wiring.nrst, dtr, rts),
            self.wiring.level(self.wiring.boot0, dtr, rts),
        )
    }

    fn nrst_high(&self) -> bool {
        self.pins().0
    }

    /// The host asserted (`true`) or cleared a modem line of the fixture. NRST going low
    /// holds the chip in reset; going high starts it, in the bootloader if BOOT0 is high,
    /// else in the application.
    pub fn set_modem_line(&mut self, line: ModemLine, asserted: bool) {
        let was = self.nrst_high();
        match line {
            ModemLine::Dtr => self.lines.0 = asserted,
            ModemLine::Rts => self.lines.1 = asserted,
        }
        let (now, boot0) = self.pins();
        if was && !now {
            self.mode = Mode::InReset;
            self.agent.reset();
            self.app_booted = false;
        } else if !was && now {
            self.system_reset();
            if !boot0 && matches!(self.mode, Mode::AwaitSync) {
                self.mode = self.start_application(self.mem.part.flash_base);
            }
        }
    }

    /// What the core does when it starts the application at `address`: a blank vector
    /// table (initial stack pointer 0xFFFFFFFF) faults.
    fn start_application(&mut self, address: u32) -> Mode {
        self.agent.reset();
        self.app_booted = false;
        let sp = self.mem.read(address, 4).unwrap_or_default();
        if sp.iter().all(|&b| b == 0xFF) {
            Mode::Crashed
        } else {
            Mode::App
        }
    }

    /// Saves the state file now (if one is configured and anything changed).
    pub fn save(&mut self) -> Result<(), SimError> {
        if let Some(p) = self.state_file.clone() {
            if self.dirty {
                state::save(&self.mem, &p)?;
                self.dirty = false;
                self.last_save = Instant::now();
            }
        }
        Ok(())
    }

    /// Writes the chip's non-volatile state to `path` (JSON, see [`STATE_FORMAT`]).
    pub fn save_state(&self, path: &Path) -> Result<(), SimError> {
        state::save(&self.mem, path)
    }

    /// The chip's non-volatile state as JSON.
    pub fn state_json(&self) -> Result<String, SimError> {
        state::to_json(&self.mem)
    }

    fn persist(&mut self, now: bool) {
        if self.dirty
            && self.state_file.is_some()
            && (now || self.last_save.elapsed() >= Duration::from_millis(500))
        {
            // A failed save must not take the link down; the next change tries again.
            let _ = self.save();
        }
    }

    // ---- the byte machine ----

    fn charge_us(&mut self, us: u64) {
        if self.timing.flash {
            self.ns = self.ns.saturating_add(us * 1_000);
        }
    }

    fn reply(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn byte(&mut self, b: u8) {
        match std::mem::replace(&mut self.mode, Mode::Idle) {
            Mode::AwaitSync => {
                self.mode = Mode::AwaitSync;
                if b == SYNC {
                    self.stats.commands[usize::from(SYNC)] += 1;
                    match self.faults.check(SYNC, &|_| false) {
                        None => {
                            self.reply(&[ACK]);
                            self.mode = Mode::Idle;
                        }
                        Some(FaultKind::Nack | FaultKind::CorruptChecksum) => self.reply(&[NACK]),
                        Some(FaultKind::DropReplyByte) => self.mode = Mode::Idle,
                        Some(FaultKind::NoAnswer | FaultKind::BrownOut) => self.mode = Mode::Hung,
                    }
                }
            }
            Mode::Idle => self.mode = Mode::Complement(b),
            Mode::Complement(cmd) => {
                if b != cmd ^ 0xFF {
                    self.reply(&[NACK]);
                } else {
                    self.command(cmd);
                }
            }
            Mode::Collect(mut c) => {
                c.buf.push(b);
                if c.buf.len() < c.need {
                    self.mode = Mode::Collect(c);
                } else {
                    self.phase(c);
                }
            }
            Mode::App => {
                self.mode = Mode::App;
                self.app_bytes(&[b]);
            }
            m @ (Mode::Crashed | Mode::Hung | Mode::Disabled | Mode::InReset) => self.mode = m,
        }
    }

    fn collect(&mut self, cmd: u8, phase: Phase, need: usize, address: u32) {
        self.mode = Mode::Collect(Collect {
            cmd,
            phase,
            buf: Vec::with_capacity(need),
            need,
            address,
        });
    }

    /// A command byte with a good complement.
    fn command(&mut self, cmd: u8) {
        let protected = self.mem.rdp() != RdpLevel::Level0;
        let known = matches!(
            cmd,
            CMD_GET
                | CMD_GET_VERSION
                | CMD_GET_ID
                | CMD_READ
                | CMD_GO
                | CMD_WRITE
                | CMD_WRITE_PROTECT
                | CMD_WRITE_UNPROTECT
                | CMD_READOUT_PROTECT
                | CMD_READOUT_UNPROTECT
        ) || cmd == self.mem.part.erase_command;
        let allowed_protected = matches!(
            cmd,
            CMD_GET | CMD_GET_VERSION | CMD_GET_ID | CMD_READOUT_UNPROTECT
        );
        if !known || (protected && !allowed_protected) {
            self.reply(&[NACK]);
            return;
        }
        match cmd {
            CMD_GET | CMD_GET_VERSION | CMD_GET_ID => self.finish(cmd, 0, Vec::new()),
            CMD_READ | CMD_GO | CMD_WRITE => {
                self.reply(&[ACK]);
                self.collect(cmd, Phase::Address, 5, 0);
            }
            CMD_ERASE => {
                self.reply(&[ACK]);
                self.collect(cmd, Phase::EraseCount, 1, 0);
            }
            CMD_EXTENDED_ERASE => {
                self.reply(&[ACK]);
                self.collect(cmd, Phase::ExtCount, 2, 0);
            }
            CMD_WRITE_PROTECT => {
                self.reply(&[ACK]);
                self.collect(cmd, Phase::WpCount, 1, 0);
            }
            _ => {
                // Write Unprotect, Readout Protect, Readout Unprotect: ACK, work, ACK, reset.
                self.reply(&[ACK]);
                self.finish(cmd, 0, Vec::new());
            }
        }
    }

    /// A phase of a command has all its bytes.
    fn phase(&mut self, c: Collect) {
        let b = &c.buf;
        let nack = |s: &mut Self| s.reply(&[NACK]);
        match c.phase {
            Phase::Address => {
                if xor(&b[..4]) != b[4] {
                    return nack(self);
                }
                let address = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let ok = match c.cmd {
                    CMD_READ => self.mem.readable(address),
                    CMD_WRITE => self.mem.writable(address),
                    _ => {
                        self.mem.part.flash().contains(&address)
                            || self.mem.part.ram.contains(&address)
                    }
                };
                if !ok {
                    return nack(self);
                }
                match c.cmd {
                    CMD_READ => {
                        self.reply(&[ACK]);
                        self.collect(c.cmd, Phase::ReadCount, 2, address);
                    }
                    CMD_WRITE => {
                        self.reply(&[ACK]);
                        self.collect(c.cmd, Phase::WriteCount, 1, address);
                    }
                    _ => self.finish(CMD_GO, address, Vec::new()),
                }
            }
            Phase::ReadCount => {
                if b[1] != b[0] ^ 0xFF {
                    return nack(self);
                }
                let n = usize::from(b[0]) + 1;
                if self.mem.read(c.address, n as u32).is_none() {
                    return nack(self);
                }
                self.finish(CMD_READ, c.address, vec![b[0]]);
            }
            Phase::WriteCount => {
                let n = usize::from(b[0]) + 1;
                let mut buf = Vec::with_capacity(n + 2);
                buf.push(b[0]);
                self.mode = Mode::Collect(Collect {
                    cmd: CMD_WRITE,
                    phase: Phase::WriteData,
                    buf,
                    need: n + 2,
                    address: c.address,
                });
            }
            Phase::WriteData => self.finish(CMD_WRITE, c.address, c.buf),
            Phase::EraseCount => {
                if b[0] == 0xFF {
                    self.mode = Mode::Collect(Collect {
                        phase: Phase::EraseGlobal,
                        need: 2,
                        ..c
                    });
                } else {
                    let n = usize::from(b[0]) + 1;
                    self.mode = Mode::Collect(Collect {
                        phase: Phase::EraseList,
                        need: 1 + n + 1,
                        ..c
                    });
                }
            }
            Phase::EraseGlobal | Phase::EraseList | Phase::ExtSpecial | Phase::ExtList => {
                self.finish(c.cmd, 0, c.buf)
            }
            Phase::ExtCount => {
                let n = u16::from_be_bytes([b[0], b[1]]);
                if n >= 0xFFF0 {
                    self.mode = Mode::Collect(Collect {
                        phase: Phase::ExtSpecial,
                        need: 3,
                        ..c
                    });
                } else {
                    let n = usize::from(n) + 1;
                    self.mode = Mode::Collect(Collect {
                        phase: Phase::ExtList,
                        need: 2 + 2 * n + 1,
                        ..c
                    });
                }
            }
            Phase::WpCount => {
                let n = usize::from(b[0]) + 1;
                self.mode = Mode::Collect(Collect {
                    phase: Phase::WpList,
                    need: 1 + n + 1,
                    ..c
                });
            }
            Phase::WpList => self.finish(CMD_WRITE_PROTECT, 0, c.buf),
        }
    }

    /// The sectors an erase command names, or `None` if its checksum or contents are bad.
    /// `Some(None)` is a mass erase.
    fn erase_targets(&self, cmd: u8, buf: &[u8]) -> Option<Option<Vec<usize>>> {
        if cmd == CMD_ERASE {
            if buf[0] == 0xFF {
                return (buf.len() == 2 && buf[1] == 0x00).then_some(None);
            }
            let (body, cs) = buf.split_at(buf.len() - 1);
            if xor(body) != cs[0] {
                return None;
            }
            return Some(Some(body[1..].iter().map(|&p| usize::from(p)).collect()));
        }
        let (body, cs) = buf.split_at(buf.len() - 1);
        if xor(body) != cs[0] {
            return None;
        }
        let n = u16::from_be_bytes([body[0], body[1]]);
        match n {
            0xFFFF => Some(None),
            // Bank erases: the 0x413 has a single bank.
            0xFFF0..=0xFFFE => None,
            _ => Some(Some(
                body[2..]
                    .chunks(2)
                    .map(|p| usize::from(u16::from_be_bytes([p[0], p[1]])))
                    .collect(),
            )),
        }
    }

    /// Whether a command touches `address` (for address-triggered faults).
    fn touches(&self, cmd: u8, address: u32, buf: &[u8], probe: u32) -> bool {
        match cmd {
            CMD_READ => {
                let n = buf.first().map_or(1, |&n| u32::from(n) + 1);
                probe >= address && u64::from(probe) < u64::from(address) + u64::from(n)
            }
            CMD_WRITE => {
                let n = buf.len().saturating_sub(2) as u64;
                probe >= address && u64::from(probe) < u64::from(address) + n
            }
            CMD_GO => probe == address,
            CMD_ERASE | CMD_EXTENDED_ERASE => match self.erase_targets(cmd, buf) {
                Some(None) => self.mem.part.flash().contains(&probe),
                Some(Some(list)) => self
                    .mem
                    .part
                    .sector_of(probe)
                    .is_some_and(|s| list.contains(&s)),
                None => false,
            },
            _ => false,
        }
    }

    /// The whole command is in: faults, then the work and the final answer.
    fn finish(&mut self, cmd: u8, address: u32, buf: Vec<u8>) {
        let mut book = std::mem::take(&mut self.faults);
        let fault = {
            let this = &*self;
            book.check(cmd, &|probe: u32| this.touches(cmd, address, &buf, probe))
        };
        self.faults = book;
        self.stats.commands[usize::from(cmd)] += 1;
        let start = self.out.len();
        let after = match fault {
            Some(FaultKind::Nack | FaultKind::CorruptChecksum) => {
                self.reply(&[NACK]);
                After::Idle
            }
            Some(FaultKind::NoAnswer) => After::Hang,
            Some(FaultKind::BrownOut) => {
                self.brown_out(cmd, address, &buf);
                After::Reset
            }
            Some(FaultKind::DropReplyByte) | None => {
                let after = self.execute(cmd, address, &buf);
                if fault == Some(FaultKind::DropReplyByte) && self.out.len() > start {
                    self.out.pop();
                }
                after
            }
        };
        match after {
            After::Idle => self.mode = Mode::Idle,
            After::Reset => {
                self.charge_us(u64::from(self.mem.part.timing.reset_us));
                self.system_reset();
            }
            After::App => {
                self.mode = Mode::App;
                self.app_booted = false;
            }
            After::Crash => self.mode = Mode::Crashed,
            After::Hang => self.mode = Mode::Hung,
        }
        self.persist(false);
    }

    fn brown_out(&mut self, cmd: u8, address: u32, buf: &[u8]) {
        match cmd {
            CMD_WRITE if buf.len() >= 2 && xor(buf) == 0 => {
                let data = &buf[1..buf.len() - 1];
                let half = data.len().div_ceil(2);
                let units = half.div_ceil(self.mem.part.timing.program_unit as usize);
                self.charge_us(
                    units as u64 * u64::from(self.mem.part.timing.program_unit_ns) / 1_000,
                );
                let _ = self.mem.write(address, data, half);
                self.dirty = true;
            }
            CMD_ERASE | CMD_EXTENDED_ERASE => match self.erase_targets(cmd, buf) {
                Some(None) => {
                    self.charge_us(u64::from(self.mem.part.timing.mass_erase_us) / 2);
                    let _ = self.mem.mass_erase(true);
                    self.dirty = true;
                }
                Some(Some(list)) => {
                    let half = list.len().div_ceil(2);
                    let _ = self.mem.erase_sectors(&list, half);
                    self.dirty = true;
                }
                None => {}
            },
            _ => {}
        }
    }

    /// Carries out a complete command and appends its answer.
    fn execute(&mut self, cmd: u8, address: u32, buf: &[u8]) -> After {
        let p = self.mem.part;
        match cmd {
            CMD_GET => {
                let mut r = vec![ACK, 11, p.bootloader_version];
                r.extend_from_slice(&[
                    CMD_GET,
                    CMD_GET_VERSION,
                    CMD_GET_ID,
                    CMD_READ,
                    CMD_GO,
                    CMD_WRITE,
                    p.erase_command,
                    CMD_WRITE_PROTECT,
                    CMD_WRITE_UNPROTECT,
                    CMD_READOUT_PROTECT,
                    CMD_READOUT_UNPROTECT,
                    ACK,
                ]);
                self.reply(&r);
                After::Idle
            }
            CMD_GET_VERSION => {
                self.reply(&[ACK, p.bootloader_version, 0x00, 0x00, ACK]);
                After::Idle
            }
            CMD_GET_ID => {
                let pid = p.pid.to_be_bytes();
                self.reply(&[ACK, 0x01, pid[0], pid[1], ACK]);
                After::Idle
            }
            CMD_READ => {
                let n = u32::from(buf[0]) + 1;
                match self.mem.read(address, n) {
                    Some(data) => {
                        self.reply(&[ACK]);
                        self.reply(&data);
                    }
                    None => self.reply(&[NACK]),
                }
                After::Idle
            }
            CMD_GO => {
                self.reply(&[ACK]);
                if p.ram.contains(&address) {
                    // stm32flash's reset stub (or any RAM code): modelled as a system reset.
                    return After::Reset;
                }
                let sp = self.mem.read(address, 4).unwrap_or_default();
                if sp.iter().all(|&b| b == 0xFF) {
                    After::Crash
                } else {
                    if self.timing.agent_work {
                        self.ns = self.ns.saturating_add(APP_BOOT_US * 1_000);
                    }
                    After::App
                }
            }
            CMD_WRITE => {
                if xor(buf) != 0 {
                    self.reply(&[NACK]);
                    return After::Idle;
                }
                let data = &buf[1..buf.len() - 1];
                let flash = p.flash().contains(&address);
                if flash {
                    let units = data.len().div_ceil(p.timing.program_unit as usize) as u64;
                    self.charge_us(units * u64::from(p.timing.program_unit_ns) / 1_000);
                }
                match self.mem.write(address, data, data.len()) {
                    Ok(WriteEffect::None) => {
                        self.dirty |= !p.ram.contains(&address);
                        self.reply(&[ACK]);
                        After::Idle
                    }
                    Ok(WriteEffect::Reset) => {
                        self.dirty = true;
                        self.charge_us(u64::from(p.timing.option_write_us));
                        self.reply(&[ACK]);
                        After::Reset
                    }
                    Err(MemError::Address | MemError::WriteProtected)
                    | Err(MemError::NotErased | MemError::OtpLocked) => {
                        self.reply(&[NACK]);
                        After::Idle
                    }
                }
            }
            CMD_ERASE | CMD_EXTENDED_ERASE => {
                let result = match self.erase_targets(cmd, buf) {
                    None => Err(MemError::Address),
                    Some(None) => {
                        self.charge_us(u64::from(p.timing.mass_erase_us));
                        self.mem.mass_erase(false)
                    }
                    Some(Some(list)) => {
                        let layout = p.sector_layout();
                        let us: u64 = list
                            .iter()
                            .filter_map(|&s| layout.get(s))
                            .map(|&(_, size)| u64::from(p.sector_erase_us(size)))
                            .sum();
                        self.charge_us(us);
                        self.mem.erase_sectors(&list, list.len())
                    }
                };
                self.dirty = true;
                self.reply(&[if result.is_ok() { ACK } else { NACK }]);
                After::Idle
            }
            CMD_WRITE_PROTECT => {
                if xor(buf) != 0 {
                    self.reply(&[NACK]);
                    return After::Idle;
                }
                match self.mem.write_protect(&buf[1..buf.len() - 1]) {
                    Ok(()) => {
                        self.dirty = true;
                        self.charge_us(u64::from(p.timing.option_write_us));
                        self.reply(&[ACK]);
                        After::Reset
                    }
                    Err(_) => {
                        self.reply(&[NACK]);
                        After::Idle
                    }
                }
            }
            CMD_WRITE_UNPROTECT => {
                self.mem.write_unprotect();
                self.dirty = true;
                self.charge_us(u64::from(p.timing.option_write_us));
                self.reply(&[ACK]);
                After::Reset
            }
            CMD_READOUT_PROTECT => {
                self.mem.readout_protect();
                self.dirty = true;
                self.charge_us(u64::from(p.timing.option_write_us));
                self.reply(&[ACK]);
                After::Reset
            }
            CMD_READOUT_UNPROTECT => {
                self.charge_us(u64::from(p.timing.mass_erase_us));
                self.mem.readout_unprotect();
                self.dirty = true;
                self.charge_us(u64::from(p.timing.option_write_us));
                self.reply(&[ACK]);
                After::Reset
            }
            _ => {
                self.reply(&[NACK]);
                After::Idle
            }
        }
    }

    /// Bytes for the running application: the provisioning agent.
    fn app_bytes(&mut self, bytes: &[u8]) {
        if !self.app_booted {
            self.app_booted = true;
        }
        let mut endpoint = std::mem::take(&mut self.agent);
        let mut view = AgentView {
            sim: &*self,
            measured: 0,
            reboot: false,
        };
        let reply = endpoint.receive(&mut view, bytes);
        let (measured, reboot) = (view.measured, view.reboot);
        self.agent = endpoint;
        if self.timing.agent_work {
            let p = self.mem.part;
            let mut ns = measured * u64::from(p.digest_ns_per_byte);
            if reply.get(1) == Some(&flashgate_agent::kind::CHALLENGE_REPLY) {
                ns += u64::from(p.sign_us) * 1_000;
            }
            self.ns = self.ns.saturating_add(ns);
        }
        self.out.extend_from_slice(&reply);
        if reboot {
            // The reply is out; the firmware resets into system memory.
            self.charge_us(u64::from(self.mem.part.timing.reset_us));
            self.system_reset();
        }
    }
}

impl fmt::Debug for Stm32Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stm32Sim")
            .field("part", &self.mem.part.device_type)
            .field("uid", &hex::encode(self.mem.uid))
            .field("mode", &self.mode())
            .field("rdp", &self.mem.rdp())
            .field("fired_faults", &self.faults.fired)
            .finish_non_exhaustive()
    }
}

impl Drop for Stm32Sim {
    fn drop(&mut self) {
        let _ = self.save();
    }
}

impl SerialDevice for Stm32Sim {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        self.out.clear();
        self.ns = 0;
        let mut app_in = 0u64;
        let mut bl_in = 0u64;
        let mut app_out = 0usize;
        for &b in input {
            let app = matches!(self.mode, Mode::App);
            if app {
                app_in += 1;
            } else {
                bl_in += 1;
            }
            let before = self.out.len();
            self.byte(b);
            if app {
                app_out += self.out.len() - before;
            }
        }
        let bl_out = self.out.len() - app_out;
        let ns = self.ns
            + self.timing.wire_ns(bl_in + bl_out as u64)
            + self.timing.agent_ns(app_in + app_out as u64);
        self.stats.bytes_in += input.len() as u64;
        self.stats.bytes_out += self.out.len() as u64;
        let d = Duration::from_nanos(ns);
        self.stats.sim_time += d;
        (std::mem::take(&mut self.out), d)
    }

    fn reset_link(&mut self) {
        if self.reset_on_link_reset {
            self.system_reset();
        } else if matches!(self.mode, Mode::Complement(_) | Mode::Collect(_)) {
            self.mode = Mode::Idle;
        }
        self.persist(true);
    }
}

/// The chip as its own firmware sees it; counts the bytes it measures.
struct AgentView<'a> {
    sim: &'a Stm32Sim,
    measured: u64,
    reboot: bool,
}

impl AgentDevice for AgentView<'_> {
    fn device_type(&self) -> &str {
        self.sim.mem.part.device_type
    }

    fn uid(&self) -> &[u8] {
        &self.sim.mem.uid
    }

    fn identity_scalar(&mut self) -> Zeroizing<[u8; 32]> {
        let mut s = Zeroizing::new([0xFF; 32]);
        let read = self
            .sim
            .mem
            .part
            .location_address(self.sim.identity, 32)
            .ok()
            .and_then(|a| self.sim.mem.read(a, 32));
        if let Some(bytes) = read {
            let bytes = Zeroizing::new(bytes);
            s.copy_from_slice(&bytes);
        }
        s
    }

    fn read_flash(&mut self, address: u32, buf: &mut [u8]) -> Result<(), AgentError> {
        let length = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let flash = self.sim.mem.part.flash();
        if address < flash.start || u64::from(address) + u64::from(length) > u64::from(flash.end) {
            return Err(AgentError::RegionOutside { address, length });
        }
        let s = (address - flash.start) as usize;
        buf.copy_from_slice(&self.sim.mem.flash[s..s + buf.len()]);
        self.measured += u64::from(length);
        Ok(())
    }

    fn enter_bootloader(&mut self) -> bool {
        self.reboot = self.sim.agent_reboot;
        self.reboot
    }
}

/// One simulated chip shared between whoever serves it (a pty server, an in-process link)
/// and whoever inspects it.
#[derive(Debug, Clone)]
pub struct SimHandle(Arc<Mutex<Stm32Sim>>);

impl SimHandle {
    /// Shares `sim`.
    pub fn new(sim: Stm32Sim) -> Self {
        SimHandle(Arc::new(Mutex::new(sim)))
    }

    /// A chip from options.
    pub fn from_options(options: SimOptions) -> Result<Self, SimError> {
        Ok(SimHandle::new(Stm32Sim::new(options)?))
    }

    /// The chip, locked for inspection or set-up.
    pub fn lock(&self) -> MutexGuard<'_, Stm32Sim> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SerialDevice for SimHandle {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        self.lock().feed(input)
    }

    fn reset_link(&mut self) {
        self.lock().reset_link();
    }

    fn idle(&mut self, duration: Duration) {
        self.lock().idle(duration);
    }
}
