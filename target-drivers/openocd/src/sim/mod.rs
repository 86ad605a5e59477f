//! An STM32F103xB (medium density, 128 KiB flash) seen from its JTAG port, at the level of
//! TCK/TMS/TDI/TDO, so that stock OpenOCD with its stock `target/stm32f1x.cfg` examines,
//! halts, resets, programs, verifies, locks and unlocks it.
//!
//! [`JtagSim`] takes OpenOCD's `remote_bitbang` bytes ([`JtagSim::feed`]) and answers TDO
//! reads; [`Server`] (and [`serve`]) serve it on a Unix socket. What it models, layer by
//! layer:
//!
//! - [`tap`]: the IEEE 1149.1 TAP controller.
//! - `chain`: the two TAPs of the real part, boundary scan (IR 5 bits, IDCODE 0x16410041)
//!   nearest TDI and the Cortex-M3 SWJ-DP (IR 4 bits, IDCODE 0x3BA00477) nearest TDO; IR
//!   capture …01; BYPASS, IDCODE, ABORT, DPACC, APACC.
//! - `dap`: the JTAG-DP (ADIv5.0: posted reads, RDBUFF, WAIT, sticky errors, power-up
//!   handshake) and the AHB-AP.
//! - `memory`: the system bus (flash and its boot alias, system memory with the flash size
//!   and unique ID, option bytes, SRAM, peripherals, the private peripheral bus); unmapped
//!   addresses are bus errors.
//! - `flash`: the FPEC (keys, programming, page/mass/option erase, PGERR, WRPRTERR, BSY
//!   timing) and readout protection.
//! - `core`: the Cortex-M3 debug registers (DHCSR, DCRSR/DCRDR, DEMCR, DFSR, AIRCR, FPB,
//!   DWT), the ROM table and the CoreSight IDs. The core executes no instruction, so OpenOCD
//!   must run with no work area (`set WORKAREASIZE 0`): its stm32f1x driver then programs
//!   half-word by half-word through the debug port.
//! - [`AgentUart`]: the provisioning agent answering on the chip's UART while the core runs
//!   and flash holds an image, served on a pseudo-terminal.
//! - Faults ([`SimOptions`]): the socket closing after N bytes, a flash error on the n-th
//!   half-word, a wrong IDCODE, a chip that arrives locked. A state file keeps flash, option
//!   bytes and UID across restarts.
//!
//! Time is simulated: each TCK cycle counts 1/`tck-khz` ms, and when served, the time the
//! host leaves the link idle counts too. With `timing=realistic` BSY stays set for the
//! datasheet's programming and erase times of that clock; with `timing=zero` never.

mod agent;
mod chain;
mod cli;
mod core;
mod dap;
mod flash;
mod memory;
mod options;
mod remote_bitbang;
mod state;
pub mod tap;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use self::agent::AgentUart;
pub use self::cli::{cli_options, openocd_interface_cfg, serve_cli};
pub use self::core::{CoreState, CoreStats};
pub use self::dap::DapStats;
pub use self::flash::{FlashStats, FLASH_BASE, FLASH_SIZE, OPTION_BYTES, PAGE_SIZE};
pub use self::memory::{FLASH_SIZE_REGISTER, SRAM_BASE, SRAM_SIZE, UID_ADDRESS};
pub use self::options::{
    AgentOptions, FlashFault, FlashFaultKind, SimOptions, SimTiming, BOUNDARY_IDCODE, DEBUG_IDCODE,
    DEVICE_TYPE, DEV_ID,
};
pub use self::remote_bitbang::{serve, Fed, Server, Stop};
pub use self::state::STATE_FORMAT;
pub use self::tap::TapState;

/// Register addresses, bits and keys of the simulated part, for tests and drivers that talk
/// to it below OpenOCD.
pub mod regs {
    pub use super::chain::{boundary_ir, debug_ir, BOUNDARY_IR_LEN, DEBUG_IR_LEN};
    pub use super::core::{
        demcr, dfsr, dhcsr, AIRCR, CPUID, DBGMCU_CR, DBGMCU_IDCODE, DCRDR, DCRSR, DEMCR, DFSR,
        DHCSR, DWT_CTRL, FP_CTRL, ROM_TABLE,
    };
    pub use super::dap::{csw, ctrl, ACK_OK_FAULT, ACK_WAIT, AHB_AP_BASE, AHB_AP_IDR};
    pub use super::flash::{cr, sr, FACTORY_OPTIONS, FPEC_BASE, KEY1, KEY2, RDP_UNPROTECTED};
}

use self::chain::{Chain, DapPort};
use self::dap::Dap;
use self::flash::{Flash, FACTORY_OPTIONS};
use self::memory::System;

/// Errors of simulator options, state files and serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// An option has a value that cannot be used.
    #[error("simulator option {key}={value:?} is invalid, write {expected}.")]
    BadValue {
        /// Option name.
        key: &'static str,
        /// Value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// An option name is not known.
    #[error("simulator option {key:?} is unknown, use timing, tck-khz, seed, uid, idcode, bs-idcode, dev-id, locked, drop-after-bytes, flash-error, packed, state, agent, agent-link, agent-realtime, agent-baud or identity.")]
    UnknownKey {
        /// The name given.
        key: String,
    },
    /// A state file could not be read, understood or written.
    #[error("the simulator state file is unusable: {detail}.")]
    State {
        /// What went wrong.
        detail: String,
    },
    /// The socket or the agent's pty could not be served.
    #[error("the simulator cannot be served: {detail}.")]
    Serve {
        /// What went wrong.
        detail: String,
    },
}

/// Readout protection in force (as loaded at the last reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RdpLevel {
    /// Unprotected: RDP = 0xA5.
    Level0,
    /// Flash cannot be read, programmed or page-erased through the debug port.
    Level1,
}

/// Counters of what the chip saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Protocol bytes from the host.
    pub bytes_in: u64,
    /// Protocol bytes to the host (TDO samples).
    pub bytes_out: u64,
    /// Rising edges of TCK.
    pub tck_cycles: u64,
    /// Host connections accepted.
    pub connections: u64,
    /// System resets after power-on (SYSRESETREQ, NRST).
    pub system_resets: u64,
    /// Debug port traffic.
    pub dap: DapStats,
    /// Flash controller work.
    pub flash: FlashStats,
    /// Core events.
    pub core: CoreStats,
    /// Simulated time since power-on.
    pub sim_time: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
struct Pins {
    tck: bool,
    trst: bool,
    srst: bool,
}

/// The simulated chip, from its JTAG pins to its flash.
#[derive(Debug)]
pub struct JtagSim {
    chain: Chain,
    dap: Dap,
    sys: System,
    pins: Pins,
    period_ns: u64,
    options: SimOptions,
    bytes_in: u64,
    bytes_out: u64,
    tck_cycles: u64,
    connections: u64,
    last_save: Option<Instant>,
    last_save_error: Option<SimError>,
}

/// The debug port seen from the debug TAP.
struct Port<'a> {
    dap: &'a mut Dap,
    sys: &'a mut System,
}

impl DapPort for Port<'_> {
    fn capture(&mut self, ir: u8) -> u64 {
        self.dap.capture(ir, self.sys)
    }
    fn update(&mut self, ir: u8, dr: u64) {
        self.dap.update(ir, dr, self.sys)
    }
}

/// Option bytes of a part locked at the factory line: RDP 0x00 (level 1), the rest erased.
const LOCKED_OPTIONS: [u8; 16] = {
    let mut o = FACTORY_OPTIONS;
    o[0] = 0x00;
    o[1] = 0xFF;
    o
};

impl JtagSim {
    /// A chip per `options`, after power-on: fresh from the factory (blank flash, option
    /// bytes erased to their factory values, or readout-protected with `locked`), or as saved
    /// in the state file if one is named and exists.
    pub fn new(options: SimOptions) -> Result<Self, SimError> {
        let saved = match &options.state_file {
            Some(p) if p.exists() => state::load(p)?,
            _ => state::Saved {
                uid: options.chip_uid(),
                options: if options.locked {
                    LOCKED_OPTIONS
                } else {
                    FACTORY_OPTIONS
                },
                flash: vec![0xFF; FLASH_SIZE as usize],
            },
        };
        let mut flash = Flash::new(saved.flash, saved.options, options.timing);
        flash.set_fault(options.flash_error);
        let sys = System::new(flash, saved.uid, options.dev_id);
        Ok(JtagSim {
            chain: Chain::new(options.idcode, options.boundary_idcode),
            dap: Dap::new(options.packed),
            sys,
            pins: Pins::default(),
            period_ns: options.tck_period_ns(),
            options,
            bytes_in: 0,
            bytes_out: 0,
            tck_cycles: 0,
            connections: 0,
            last_save: None,
            last_save_error: None,
        })
    }

    /// A chip from an option string (see [`SimOptions`]).
    pub fn from_options(options: &str) -> Result<Self, SimError> {
        JtagSim::new(options.parse()?)
    }

    // ---- the pins ----

    /// Rising edge of TCK.
    fn rising(&mut self, tms: bool, tdi: bool) {
        self.tck_cycles += 1;
        self.sys.now += self.period_ns;
        let mut port = Port {
            dap: &mut self.dap,
            sys: &mut self.sys,
        };
        self.chain.rising(tms, tdi, &mut port);
    }

    /// Falling edge of TCK.
    fn falling(&mut self) {
        let mut port = Port {
            dap: &mut self.dap,
            sys: &mut self.sys,
        };
        self.chain.falling(&mut port);
    }

    /// Drives the four JTAG signals (what one remote_bitbang write byte does).
    pub fn set_pins(&mut self, tck: bool, tms: bool, tdi: bool) {
        match (self.pins.tck, tck) {
            (false, true) => self.rising(tms, tdi),
            (true, false) => self.falling(),
            _ => {}
        }
        self.pins.tck = tck;
    }

    /// TDO now.
    pub fn tdo(&self) -> bool {
        self.chain.tdo()
    }

    /// Drives TRST and SRST (NRST), true = asserted.
    pub fn set_resets(&mut self, trst: bool, srst: bool) {
        if trst && !self.pins.trst {
            self.chain.trst();
        }
        self.pins.trst = trst;
        if srst != self.pins.srst {
            if srst {
                self.sys.hold_reset();
            } else {
                self.sys.system_reset();
            }
            self.pins.srst = srst;
        }
    }

    /// The host was silent for `duration`: the simulated clock advances (realistic timing).
    pub fn idle(&mut self, duration: Duration) {
        if self.options.timing.realistic {
            let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
            self.sys.now = self.sys.now.saturating_add(ns);
        }
    }

    // ---- inspection ----

    /// The options the chip was made with.
    pub fn options(&self) -> &SimOptions {
        &self.options
    }

    /// All of flash, as the silicon holds it.
    pub fn flash(&self) -> &[u8] {
        &self.sys.flash.main
    }

    /// The 16 option bytes as stored.
    pub fn option_bytes(&self) -> [u8; 16] {
        self.sys.flash.options
    }

    /// Readout protection in force now.
    pub fn rdp(&self) -> RdpLevel {
        if self.sys.flash.loaded.readout_protected {
            RdpLevel::Level1
        } else {
            RdpLevel::Level0
        }
    }

    /// Readout protection the stored option bytes give after the next reset.
    pub fn rdp_after_reset(&self) -> RdpLevel {
        let o = self.sys.flash.options;
        if o[0] == flash::RDP_UNPROTECTED && o[1] == !flash::RDP_UNPROTECTED {
            RdpLevel::Level0
        } else {
            RdpLevel::Level1
        }
    }

    /// The unique ID.
    pub fn uid(&self) -> [u8; 12] {
        self.sys.uid()
    }

    /// Whether flash holds an image (its initial stack pointer is not erased).
    pub fn has_image(&self) -> bool {
        self.sys.has_image()
    }

    /// Memory at a bus address, ignoring protection; `None` outside flash, option bytes,
    /// system memory and SRAM.
    pub fn peek(&self, address: u32, len: usize) -> Option<Vec<u8>> {
        self.sys.peek(address, len)
    }

    /// Running, halted or held in reset.
    pub fn core_state(&self) -> CoreState {
        self.sys.core.state()
    }

    /// A core register by its DCRSR REGSEL number (0–12, 13 current SP, 14 LR, 15 PC,
    /// 16 xPSR, 17 MSP, 18 PSP, 20 CONTROL/FAULTMASK/BASEPRI/PRIMASK).
    pub fn core_register(&self, regsel: usize) -> Option<u32> {
        self.sys.core.register(regsel)
    }

    /// The TAP controller's state.
    pub fn tap_state(&self) -> TapState {
        self.chain.state()
    }

    /// Whether the agent answers on the UART now: the core runs and flash holds an image.
    pub fn agent_running(&self) -> bool {
        self.core_state() == CoreState::Running && self.has_image()
    }

    /// Simulated time since power-on.
    pub fn sim_time(&self) -> Duration {
        Duration::from_nanos(self.sys.now)
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        SimStats {
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            tck_cycles: self.tck_cycles,
            connections: self.connections,
            system_resets: self.sys.system_resets,
            dap: self.dap.stats,
            flash: self.sys.flash.stats,
            core: self.sys.core.stats,
            sim_time: self.sim_time(),
        }
    }

    /// The last state-file save that failed, if the latest attempt failed.
    pub fn last_save_error(&self) -> Option<&SimError> {
        self.last_save_error.as_ref()
    }

    // ---- set-up (tests, fixtures) ----

    /// Writes flash directly (as if programmed earlier), ignoring protection.
    pub fn load_flash(&mut self, address: u32, data: &[u8]) -> Result<(), SimError> {
        let off = address
            .checked_sub(FLASH_BASE)
            .map(|o| o as usize)
            .filter(|o| o + data.len() <= FLASH_SIZE as usize)
            .ok_or_else(|| SimError::State {
                detail: format!("0x{address:08x}+{} lies outside flash", data.len()),
            })?;
        self.sys.flash.main[off..off + data.len()].copy_from_slice(data);
        self.sys.flash.dirty = true;
        Ok(())
    }

    /// Programs the RDP option byte directly (level 1 with `true`, 0xA5 without) and resets
    /// the system so that it takes effect.
    pub fn set_locked(&mut self, locked: bool) {
        self.sys.flash.options = if locked {
            LOCKED_OPTIONS
        } else {
            FACTORY_OPTIONS
        };
        self.sys.flash.options_dirty = true;
        self.sys.system_reset();
    }

    /// A system reset, as NRST pulsed low.
    pub fn system_reset(&mut self) {
        self.sys.system_reset();
    }

    // ---- saved state ----

    fn saved(&self) -> state::Saved {
        state::Saved {
            uid: self.sys.uid(),
            options: self.sys.flash.options,
            flash: self.sys.flash.main.clone(),
        }
    }

    /// Saves the state file now if one is configured and anything changed.
    pub fn save(&mut self) -> Result<(), SimError> {
        let Some(path) = self.options.state_file.clone() else {
            return Ok(());
        };
        if !(self.sys.flash.dirty || self.sys.flash.options_dirty) {
            return Ok(());
        }
        let result = state::save(&self.saved(), &path);
        self.last_save = Some(Instant::now());
        match &result {
            Ok(()) => {
                self.sys.flash.dirty = false;
                self.sys.flash.options_dirty = false;
                self.last_save_error = None;
            }
            Err(e) => self.last_save_error = Some(e.clone()),
        }
        result
    }

    /// Saves when due: at once after an option-byte change or with `now`, otherwise at most
    /// twice a second while flash changes.
    pub fn persist(&mut self, now: bool) -> Result<(), SimError> {
        let due = now
            || self.sys.flash.options_dirty
            || self
                .last_save
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(500));
        if due {
            self.save()
        } else {
            Ok(())
        }
    }

    /// Writes the chip's non-volatile state to `path` (see [`STATE_FORMAT`]).
    pub fn save_state(&self, path: &Path) -> Result<(), SimError> {
        state::save(&self.saved(), path)
    }

    /// The chip's non-volatile state as JSON.
    pub fn state_json(&self) -> Result<String, SimError> {
        state::to_json(&self.saved())
    }

    /// The state file, if any.
    pub fn state_file(&self) -> Option<&Path> {
        self.options.state_file.as_deref()
    }
}

/// One simulated chip shared between its server, its agent's UART and whoever inspects it.
#[derive(Debug, Clone)]
pub struct SimHandle(Arc<Mutex<JtagSim>>);

impl SimHandle {
    /// Shares `sim`.
    pub fn new(sim: JtagSim) -> Self {
        SimHandle(Arc::new(Mutex::new(sim)))
    }

    /// A chip from options.
    pub fn from_options(options: SimOptions) -> Result<Self, SimError> {
        Ok(SimHandle::new(JtagSim::new(options)?))
    }

    /// The chip, locked for inspection or set-up.
    pub fn lock(&self) -> MutexGuard<'_, JtagSim> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
