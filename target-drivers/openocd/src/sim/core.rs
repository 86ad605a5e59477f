//! The Cortex-M3 r1p1 core as the debugger sees it: the private peripheral bus
//! (0xE0000000–0xE00FFFFF) with the SCS, the debug registers, FPB, DWT, ITM, TPIU, ETM, the
//! STM32 DBGMCU and the ROM table.
//!
//! The core executes no instruction. Halting, stepping and resuming only change its state;
//! core registers are kept and transferred through DCRSR/DCRDR while halted. Since the PC
//! never moves, a resumed core stops at once if a breakpoint sits at its PC (an enabled FPB
//! comparator, or a BKPT instruction in memory), as the real core would before executing
//! anything: this is how OpenOCD's `step` finds the core halted again. A reset (power
//! on, SYSRESETREQ, VECTRESET, NRST) loads SP and PC from the vector table in flash and
//! comes up halted if C_DEBUGEN is set with DEMCR.VC_CORERESET (or C_HALT).
//!
//! - **DHCSR**: writes need DBGKEY (0xA05F) in bits 31:16. S_RESET_ST and S_RETIRE_ST are
//!   sticky and cleared by a read (S_RETIRE_ST reads 1 whenever the core runs; S_RESET_ST
//!   while NRST is held). S_REGRDY is set when a DCRSR transfer completed (at once while
//!   halted, never while running).
//! - **AIRCR**: VECTKEY (0x05FA) checked on writes, reads VECTKEYSTAT (0xFA05); SYSRESETREQ
//!   resets the system (flash controller, option bytes, peripherals, core), VECTRESET the
//!   core only. Neither resets the debug registers (only power-on does).
//! - **DEMCR, DFSR** (write one to clear), **FP_CTRL** (6 code and 2 literal comparators,
//!   KEY-guarded enable), **DWT_CTRL** (4 comparators), **CPUID** (0x411FC231) and the
//!   feature ID registers; other SCS, ITM, TPIU and ETM registers read back what was
//!   written; unimplemented locations in the PPB read as zero.
//! - **ROM table** at 0xE00FF000: SCS, DWT, FPB, ITM, TPIU, ETM and the end marker, and the
//!   CoreSight component and peripheral ID registers of every component (STMicroelectronics'
//!   ROM table, part 0x410; ARM's Cortex-M3 components).

use std::collections::BTreeMap;

/// CPUID of the Cortex-M3 r1p1.
pub const CPUID: u32 = 0x411F_C231;
/// ROM table base.
pub const ROM_TABLE: u32 = 0xE00F_F000;

/// DHCSR.
pub const DHCSR: u32 = 0xE000_EDF0;
/// DCRSR.
pub const DCRSR: u32 = 0xE000_EDF4;
/// DCRDR.
pub const DCRDR: u32 = 0xE000_EDF8;
/// DEMCR.
pub const DEMCR: u32 = 0xE000_EDFC;
/// DFSR.
pub const DFSR: u32 = 0xE000_ED30;
/// AIRCR.
pub const AIRCR: u32 = 0xE000_ED0C;
/// FP_CTRL.
pub const FP_CTRL: u32 = 0xE000_2000;
/// DWT_CTRL.
pub const DWT_CTRL: u32 = 0xE000_1000;
/// DBGMCU_IDCODE.
pub const DBGMCU_IDCODE: u32 = 0xE004_2000;
/// DBGMCU_CR.
pub const DBGMCU_CR: u32 = 0xE004_2004;

/// DHCSR bits.
pub mod dhcsr {
    /// Debug enable.
    pub const C_DEBUGEN: u32 = 1 << 0;
    /// Halt request.
    pub const C_HALT: u32 = 1 << 1;
    /// Single step.
    pub const C_STEP: u32 = 1 << 2;
    /// Mask interrupts.
    pub const C_MASKINTS: u32 = 1 << 3;
    /// Snap stall.
    pub const C_SNAPSTALL: u32 = 1 << 5;
    /// Register transfer complete.
    pub const S_REGRDY: u32 = 1 << 16;
    /// Halted.
    pub const S_HALT: u32 = 1 << 17;
    /// Sleeping.
    pub const S_SLEEP: u32 = 1 << 18;
    /// Locked up.
    pub const S_LOCKUP: u32 = 1 << 19;
    /// An instruction retired since the last read.
    pub const S_RETIRE_ST: u32 = 1 << 24;
    /// A reset happened since the last read.
    pub const S_RESET_ST: u32 = 1 << 25;
    /// Key of a write.
    pub const DBGKEY: u32 = 0xA05F_0000;
}

/// DEMCR bits.
pub mod demcr {
    /// Halt on reset.
    pub const VC_CORERESET: u32 = 1 << 0;
    /// Trace enable.
    pub const TRCENA: u32 = 1 << 24;
    /// Implemented bits.
    pub const MASK: u32 = 0x010F_07F1;
}

/// DFSR bits.
pub mod dfsr {
    /// Halt request or step.
    pub const HALTED: u32 = 1 << 0;
    /// Breakpoint (FPB comparator or BKPT instruction).
    pub const BKPT: u32 = 1 << 1;
    /// Vector catch.
    pub const VCATCH: u32 = 1 << 3;
}

/// What a write to the PPB asks the system to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CoreRequest {
    None,
    /// AIRCR.SYSRESETREQ.
    SystemReset,
    /// AIRCR.VECTRESET.
    CoreReset,
}

/// Whether the core runs, as far as the firmware is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreState {
    /// Executing (the firmware and its agent run, if flash holds an image).
    Running,
    /// In debug state.
    Halted,
    /// NRST held low.
    InReset,
}

/// Counters of the core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Resets of the core (system, VECTRESET, NRST) after power-on.
    pub resets: u64,
    /// Times the core entered debug state.
    pub halts: u64,
    /// Times it left debug state.
    pub resumes: u64,
    /// Core register transfers through DCRSR.
    pub register_transfers: u64,
}

/// Number of REGSEL values that name a register on a Cortex-M3 without FPU.
const REGS: usize = 21;
const SPECIAL: usize = 20;
const XPSR: usize = 16;
const MSP: usize = 17;
const PSP: usize = 18;

#[derive(Debug, Clone)]
pub(crate) struct Core {
    ctrl: u32,
    halted: bool,
    reset_sticky: bool,
    retire_sticky: bool,
    regrdy: bool,
    in_reset: bool,
    regs: [u32; REGS],
    dcrdr: u32,
    demcr: u32,
    dfsr: u32,
    prigroup: u32,
    fp_enabled: bool,
    dwt_ctrl: u32,
    store: BTreeMap<u32, u32>,
    dev_id: u32,
    pub stats: CoreStats,
}

impl Core {
    /// The core after power-on, with the vector table's first two words.
    pub fn new(dev_id: u32, vectors: [u32; 2]) -> Self {
        let mut c = Core {
            ctrl: 0,
            halted: false,
            reset_sticky: true,
            retire_sticky: false,
            regrdy: false,
            in_reset: false,
            regs: [0; REGS],
            dcrdr: 0,
            demcr: 0,
            dfsr: 0,
            prigroup: 0,
            fp_enabled: false,
            dwt_ctrl: 0x4000_0000,
            store: BTreeMap::new(),
            dev_id,
            stats: CoreStats::default(),
        };
        c.load_vectors(vectors);
        c
    }

    pub fn state(&self) -> CoreState {
        if self.in_reset {
            CoreState::InReset
        } else if self.halted {
            CoreState::Halted
        } else {
            CoreState::Running
        }
    }

    fn load_vectors(&mut self, [sp, pc]: [u32; 2]) {
        self.regs[MSP] = sp & !3;
        self.regs[15] = pc & !1;
        self.regs[XPSR] = (pc & 1) << 24;
        self.regs[14] = 0xFFFF_FFFF;
        self.regs[SPECIAL] = 0;
    }

    /// NRST asserted: the core stops and stays in reset.
    pub fn hold_reset(&mut self) {
        self.in_reset = true;
        self.reset_sticky = true;
    }

    /// A reset of the core (system reset, VECTRESET, NRST released): registers from the
    /// vector table, then halted or running as the debug registers say.
    pub fn reset(&mut self, vectors: [u32; 2]) {
        self.in_reset = false;
        self.stats.resets += 1;
        self.load_vectors(vectors);
        self.reset_sticky = true;
        self.regrdy = false;
        // The SCS's architectural state is reset; the debug components keep theirs.
        self.store
            .retain(|&a, _| !(0xE000_E000..0xE000_F000).contains(&a));
        self.prigroup = 0;
        let catch = self.demcr & demcr::VC_CORERESET != 0;
        let debug = self.ctrl & dhcsr::C_DEBUGEN != 0;
        let halt_requested = self.ctrl & dhcsr::C_HALT != 0;
        let was_halted = self.halted;
        self.halted = debug && (catch || halt_requested);
        if self.halted {
            self.dfsr |= if catch { dfsr::VCATCH } else { dfsr::HALTED };
            self.stats.halts += 1;
        } else {
            self.retire_sticky = true;
            if was_halted {
                self.stats.resumes += 1;
            }
        }
    }

    /// A side-effect-free read (for merging partial writes and inspection).
    pub fn peek(&self, address: u32) -> u32 {
        match address {
            DHCSR => self.dhcsr_value(),
            _ => self.read_plain(address),
        }
    }

    fn dhcsr_value(&self) -> u32 {
        let mut v = self.ctrl;
        if self.regrdy {
            v |= dhcsr::S_REGRDY;
        }
        if self.halted {
            v |= dhcsr::S_HALT;
        }
        if self.retire_sticky || self.state() == CoreState::Running {
            v |= dhcsr::S_RETIRE_ST;
        }
        if self.reset_sticky || self.in_reset {
            v |= dhcsr::S_RESET_ST;
        }
        v
    }

    /// A 32-bit read from the PPB.
    pub fn read(&mut self, address: u32) -> u32 {
        if address == DHCSR {
            let v = self.dhcsr_value();
            self.reset_sticky = false;
            self.retire_sticky = false;
            return v;
        }
        self.read_plain(address)
    }

    fn read_plain(&self, address: u32) -> u32 {
        if let Some(v) = fixed(address, self.dev_id) {
            return v;
        }
        match address {
            DCRDR => self.dcrdr,
            DEMCR => self.demcr,
            DFSR => self.dfsr,
            AIRCR => 0xFA05_0000 | (self.prigroup << 8),
            FP_CTRL => 0x0000_0260 | u32::from(self.fp_enabled),
            DWT_CTRL => self.dwt_ctrl,
            _ => self.store.get(&address).copied().unwrap_or(0),
        }
    }

    /// A 32-bit write to the PPB.
    pub fn write(&mut self, address: u32, value: u32) -> CoreRequest {
        if fixed(address, self.dev_id).is_some() {
            return CoreRequest::None;
        }
        match address {
            DHCSR => self.write_dhcsr(value),
            DCRSR => self.transfer(value),
            DCRDR => self.dcrdr = value,
            DEMCR => self.demcr = value & demcr::MASK,
            DFSR => self.dfsr &= !(value & 0x1F),
            AIRCR => {
                if value >> 16 != 0x05FA {
                    return CoreRequest::None;
                }
                self.prigroup = (value >> 8) & 7;
                if value & (1 << 2) != 0 {
                    return CoreRequest::SystemReset;
                }
                if value & 1 != 0 {
                    return CoreRequest::CoreReset;
                }
            }
            FP_CTRL => {
                if value & 2 != 0 {
                    self.fp_enabled = value & 1 != 0;
                }
            }
            DWT_CTRL => self.dwt_ctrl = 0x4000_0000 | (value & 0x0FFF_FFFF),
            _ => {
                self.store.insert(address, value);
            }
        }
        CoreRequest::None
    }

    fn write_dhcsr(&mut self, value: u32) {
        if value & 0xFFFF_0000 != dhcsr::DBGKEY {
            return;
        }
        use dhcsr::*;
        self.ctrl = value & (C_DEBUGEN | C_HALT | C_STEP | C_MASKINTS | C_SNAPSTALL);
        if self.in_reset {
            return;
        }
        let debug = self.ctrl & C_DEBUGEN != 0;
        if debug && self.ctrl & C_HALT != 0 {
            if !self.halted {
                self.halted = true;
                self.retire_sticky = true; // It ran until now.
                self.dfsr |= dfsr::HALTED;
                self.stats.halts += 1;
            }
        } else if self.halted {
            self.stats.resumes += 1;
            self.retire_sticky = true;
            if debug && self.ctrl & C_STEP != 0 {
                // One instruction (not executed: nothing changes) and back in debug state.
                self.dfsr |= dfsr::HALTED;
                self.stats.halts += 1;
            } else {
                self.halted = false;
                self.regrdy = false;
            }
        }
    }

    fn transfer(&mut self, value: u32) {
        if !self.halted || self.in_reset {
            self.regrdy = false;
            return;
        }
        self.stats.register_transfers += 1;
        let sel = (value & 0x7F) as usize;
        let write = value & (1 << 16) != 0;
        let index = match sel {
            13 => {
                // SP is the banked stack pointer CONTROL.SPSEL selects in thread mode.
                let handler = self.regs[XPSR] & 0x1FF != 0;
                let spsel = self.regs[SPECIAL] & (1 << 25) != 0;
                Some(if spsel && !handler { PSP } else { MSP })
            }
            0..=12 | 14..=18 | SPECIAL => Some(sel),
            _ => None,
        };
        match (index, write) {
            (Some(i), false) => self.dcrdr = self.regs[i],
            (Some(i), true) => {
                self.regs[i] = match i {
                    MSP | PSP => self.dcrdr & !3,
                    XPSR => self.dcrdr & 0xFF00_FDFF,
                    // CONTROL[1:0], FAULTMASK, BASEPRI[7:4] (four priority bits), PRIMASK.
                    SPECIAL => self.dcrdr & 0x0301_F001,
                    _ => self.dcrdr,
                }
            }
            (None, false) => self.dcrdr = 0,
            (None, true) => {}
        }
        self.regrdy = true;
    }

    /// The PC of a running core that may stop at a breakpoint (halting debug enabled).
    pub fn running_pc(&self) -> Option<u32> {
        let debug = self.ctrl & dhcsr::C_DEBUGEN != 0;
        (debug && self.state() == CoreState::Running).then_some(self.regs[15])
    }

    /// Whether an enabled FPB code comparator matches `pc` (FPB revision 1: code region
    /// only, REPLACE selecting the half-word).
    pub fn fpb_hit(&self, pc: u32) -> bool {
        if !self.fp_enabled || pc >= 0x2000_0000 {
            return false;
        }
        (0..6).any(|i| {
            let comp = self.store.get(&(FP_CTRL + 8 + 4 * i)).copied().unwrap_or(0);
            let replace = comp >> 30;
            comp & 1 != 0
                && (comp & 0x1FFF_FFFC) == (pc & 0x1FFF_FFFC)
                && if pc & 2 == 0 {
                    replace & 1 != 0
                } else {
                    replace & 2 != 0
                }
        })
    }

    /// The running core reaches a breakpoint at its PC: debug state, DFSR.BKPT.
    pub fn breakpoint(&mut self) {
        if self.running_pc().is_some() {
            self.halted = true;
            self.dfsr |= dfsr::BKPT;
            self.stats.halts += 1;
        }
    }

    /// The core register REGSEL `sel` names (for inspection).
    pub fn register(&self, sel: usize) -> Option<u32> {
        self.regs.get(sel).copied()
    }
}

/// Read-only registers: identification, ROM table, component IDs.
fn fixed(address: u32, dev_id: u32) -> Option<u32> {
    let v = match address {
        0xE000_E004 => 0x0000_0001, // ICTR: 33–64 interrupt lines.
        0xE000_ED00 => CPUID,
        0xE000_ED40 => 0x0000_0030, // ID_PFR0
        0xE000_ED44 => 0x0000_0200, // ID_PFR1
        0xE000_ED48 => 0x0010_0000, // ID_DFR0
        0xE000_ED4C => 0x0000_0000, // ID_AFR0
        0xE000_ED50 => 0x0010_0030, // ID_MMFR0
        0xE000_ED54 => 0x0000_0000,
        0xE000_ED58 => 0x0100_0000,
        0xE000_ED5C => 0x0000_0000,
        0xE000_ED60 => 0x0114_1110, // ID_ISAR0
        0xE000_ED64 => 0x0211_1000,
        0xE000_ED68 => 0x2111_2231,
        0xE000_ED6C => 0x0111_1110,
        0xE000_ED70 => 0x0131_0102,
        0xE004_0000 => 0x0000_000F, // TPIU_SSPSR: port widths 1 to 4.
        DBGMCU_IDCODE => dev_id,
        _ => return rom_or_ids(address),
    };
    Some(v)
}

/// The ROM table entries (offsets from 0xE00FF000 to the components, present, 32-bit).
const ROM_ENTRIES: [u32; 7] = [
    0xFFF0_F003, // SCS  0xE000E000
    0xFFF0_2003, // DWT  0xE0001000
    0xFFF0_3003, // FPB  0xE0002000
    0xFFF0_1003, // ITM  0xE0000000
    0xFFF4_1003, // TPIU 0xE0040000
    0xFFF4_2003, // ETM  0xE0041000
    0x0000_0000, // end
];

/// (component base, PIDR4..PIDR0 as one number, CIDR).
const COMPONENTS: [(u32, u64, u32); 7] = [
    (0xE000_0000, 0x04_001B_B001, 0xB105_E00D), // ITM
    (0xE000_1000, 0x04_001B_B002, 0xB105_E00D), // DWT
    (0xE000_2000, 0x04_000B_B003, 0xB105_E00D), // FPB
    (0xE000_E000, 0x04_000B_B000, 0xB105_E00D), // SCS
    (0xE004_0000, 0x04_001B_B923, 0xB105_900D), // TPIU
    (0xE004_1000, 0x04_001B_B924, 0xB105_900D), // ETM
    (ROM_TABLE, 0x00_000A_0410, 0xB105_100D),   // ROM table: STMicroelectronics, 0x410
];

fn rom_or_ids(address: u32) -> Option<u32> {
    if (ROM_TABLE..ROM_TABLE + 4 * ROM_ENTRIES.len() as u32).contains(&address) {
        return Some(ROM_ENTRIES[((address - ROM_TABLE) / 4) as usize]);
    }
    if address == ROM_TABLE + 0xFCC {
        return Some(1); // MEMTYPE: system memory present on the bus.
    }
    let base = address & !0xFFF;
    let offset = address & 0xFFF;
    if offset < 0xFD0 || offset & 3 != 0 {
        return None;
    }
    let &(_, pid, cid) = COMPONENTS.iter().find(|c| c.0 == base)?;
    let n = (offset - 0xFD0) / 4;
    Some(match n {
        0 => ((pid >> 32) & 0xFF) as u32, // PIDR4
        1..=3 => 0,                       // PIDR5-7
        4..=7 => ((pid >> (8 * (n - 4))) & 0xFF) as u32,
        _ => (cid >> (8 * (n - 8))) & 0xFF,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::dhcsr::*;
    use super::*;

    const BLANK: [u32; 2] = [0xFFFF_FFFF, 0xFFFF_FFFF];

    fn core() -> Core {
        let mut c = Core::new(0x2003_6410, [0x2000_5000, 0x0800_0101]);
        c.read(DHCSR); // Clear the power-on S_RESET_ST.
        c
    }

    #[test]
    fn dhcsr_key_halt_and_resume() {
        let mut c = core();
        // Without the key nothing happens.
        c.write(DHCSR, C_DEBUGEN | C_HALT);
        assert_eq!(c.state(), CoreState::Running);
        c.write(DHCSR, DBGKEY | C_DEBUGEN | C_HALT);
        assert_eq!(c.state(), CoreState::Halted);
        let v = c.read(DHCSR);
        assert_eq!(
            v & (S_HALT | C_DEBUGEN | C_HALT),
            S_HALT | C_DEBUGEN | C_HALT
        );
        assert_eq!(v & S_RETIRE_ST, S_RETIRE_ST, "it ran before the halt");
        assert_eq!(c.read(DHCSR) & S_RETIRE_ST, 0, "cleared by the read");
        assert_eq!(c.read(DFSR) & dfsr::HALTED, dfsr::HALTED);
        c.write(DFSR, dfsr::HALTED);
        assert_eq!(c.read(DFSR), 0);
        c.write(DHCSR, DBGKEY | C_DEBUGEN);
        assert_eq!(c.state(), CoreState::Running);
        assert_ne!(c.read(DHCSR) & S_RETIRE_ST, 0);
        assert_ne!(c.read(DHCSR) & S_RETIRE_ST, 0, "while running, always");
    }

    #[test]
    fn register_transfers_only_while_halted() {
        let mut c = core();
        c.write(DCRSR, 15);
        assert_eq!(c.read(DHCSR) & S_REGRDY, 0);
        c.write(DHCSR, DBGKEY | C_DEBUGEN | C_HALT);
        c.write(DCRSR, 15);
        assert_ne!(c.read(DHCSR) & S_REGRDY, 0);
        assert_eq!(c.read(DCRDR), 0x0800_0100, "PC from the reset vector");
        c.write(DCRSR, 16);
        assert_eq!(c.read(DCRDR), 0x0100_0000, "Thumb bit");
        c.write(DCRSR, 13);
        assert_eq!(c.read(DCRDR), 0x2000_5000);
        c.write(DCRDR, 0x1234_5678);
        c.write(DCRSR, 3 | (1 << 16));
        c.write(DCRDR, 0);
        c.write(DCRSR, 3);
        assert_eq!(c.read(DCRDR), 0x1234_5678, "kept");
        c.write(DCRDR, 0x0000_0002 << 24);
        c.write(DCRSR, 20 | (1 << 16)); // CONTROL.SPSEL
        c.write(DCRDR, 0x2000_1000);
        c.write(DCRSR, 13 | (1 << 16));
        c.write(DCRSR, 18);
        assert_eq!(c.read(DCRDR), 0x2000_1000, "SP is PSP now");
    }

    #[test]
    fn reset_with_vector_catch_comes_up_halted() {
        let mut c = core();
        c.write(DHCSR, DBGKEY | C_DEBUGEN);
        c.write(DEMCR, demcr::TRCENA | demcr::VC_CORERESET);
        assert_eq!(c.write(AIRCR, 0x05FA_0004), CoreRequest::SystemReset);
        c.reset(BLANK);
        assert_eq!(c.state(), CoreState::Halted);
        let v = c.read(DHCSR);
        assert_ne!(v & S_RESET_ST, 0);
        assert_eq!(c.read(DHCSR) & S_RESET_ST, 0);
        assert_ne!(c.read(DFSR) & dfsr::VCATCH, 0);
        c.write(DCRSR, 15);
        assert_eq!(c.read(DCRDR), 0xFFFF_FFFE, "blank flash");
        c.write(DCRSR, 17);
        assert_eq!(c.read(DCRDR), 0xFFFF_FFFC);
        // DEMCR survives the reset; without the catch the core runs.
        assert_eq!(c.read(DEMCR), demcr::TRCENA | demcr::VC_CORERESET);
        c.write(DEMCR, demcr::TRCENA);
        c.write(DHCSR, DBGKEY | C_DEBUGEN);
        c.reset(BLANK);
        assert_eq!(c.state(), CoreState::Running);
    }

    #[test]
    fn aircr_needs_its_key() {
        let mut c = core();
        assert_eq!(c.write(AIRCR, 0x0000_0004), CoreRequest::None);
        assert_eq!(c.write(AIRCR, 0x05FA_0001), CoreRequest::CoreReset);
        assert_eq!(c.read(AIRCR), 0xFA05_0000);
        c.write(AIRCR, 0x05FA_0300);
        assert_eq!(c.read(AIRCR), 0xFA05_0300);
    }

    #[test]
    fn nrst_holds_the_core() {
        let mut c = core();
        c.hold_reset();
        assert_eq!(c.state(), CoreState::InReset);
        assert_ne!(c.read(DHCSR) & S_RESET_ST, 0);
        assert_ne!(c.read(DHCSR) & S_RESET_ST, 0, "held");
        c.reset(BLANK);
        assert_eq!(c.state(), CoreState::Running);
    }

    #[test]
    fn fpb_dwt_and_ids() {
        let mut c = core();
        assert_eq!(c.read(FP_CTRL), 0x260);
        c.write(FP_CTRL, 1);
        assert_eq!(c.read(FP_CTRL) & 1, 0, "KEY needed");
        c.write(FP_CTRL, 3);
        assert_eq!(c.read(FP_CTRL), 0x261);
        assert_eq!(c.read(DWT_CTRL) >> 28, 4);
        assert_eq!(c.read(0xE000_ED00), CPUID);
        c.write(0xE000_ED00, 0);
        assert_eq!(c.read(0xE000_ED00), CPUID, "read-only");
        assert_eq!(c.read(DBGMCU_IDCODE), 0x2003_6410);
        c.write(DBGMCU_CR, 0x307);
        assert_eq!(c.read(DBGMCU_CR), 0x307);
        c.write(0xE000_2008, 0x0800_0001);
        assert_eq!(c.read(0xE000_2008), 0x0800_0001, "FP_COMP0");
        assert_eq!(c.read(0xE000_1FBC), 0, "no DEVARCH on this core");
    }

    #[test]
    fn rom_table_and_component_ids() {
        let mut c = core();
        let entries: Vec<u32> = (0..7).map(|i| c.read(ROM_TABLE + 4 * i)).collect();
        assert_eq!(entries, ROM_ENTRIES);
        let id = |c: &mut Core, base: u32| {
            let b = |o: u32| u64::from(c.peek(base + o) & 0xFF);
            let pid = b(0xFE0) | b(0xFE4) << 8 | b(0xFE8) << 16 | b(0xFEC) << 24 | b(0xFD0) << 32;
            let cid = (0..4).fold(0u32, |v, i| {
                v | (c.peek(base + 0xFF0 + 4 * i) & 0xFF) << (8 * i)
            });
            (pid, cid)
        };
        assert_eq!(id(&mut c, ROM_TABLE), (0x00_000A_0410, 0xB105_100D));
        for (entry, want) in ROM_ENTRIES[..6]
            .iter()
            .zip([0x000, 0x002, 0x003, 0x001, 0x923, 0x924])
        {
            let base = ROM_TABLE.wrapping_add(entry & 0xFFFF_F000);
            let (pid, cid) = id(&mut c, base);
            assert_eq!(pid & 0xFFF, want, "part number at 0x{base:08x}");
            assert_eq!((pid >> 12) & 0x7F, 0x3B, "JEP106 ARM");
            assert_eq!(cid & 0xFFFF_0FFF, 0xB105_000D);
        }
        assert_eq!(c.read(ROM_TABLE + 0xFCC), 1);
    }
}
