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

mod agent;
mod control;
mod execute;
mod fault;
mod handle;
mod memory;
mod options;
mod receive;
mod state;
mod wiring;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flashgate_agent::AgentEndpoint;
use flashgate_serial::SerialDevice;
use flashgate_target::Location;

pub use control::ControlServer;
pub use fault::{Fault, FaultKind, Trigger};
pub use handle::SimHandle;
pub use options::{derive_uid, SimOptions, SimTiming};
pub use state::STATE_FORMAT;
pub use wiring::{PinSource, Wiring};

use crate::part::{Part, RdpLevel};
use crate::protocol::*;
use fault::FaultBook;
use memory::Memory;

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
