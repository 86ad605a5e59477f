//! The flash program/erase controller (FPEC) at 0x40022000, the main flash and the option
//! bytes, as RM0008 §3.3 and PM0075 describe them for medium-density parts.
//!
//! - **Keys**: FLASH_CR starts locked. KEY1 (0x45670123) then KEY2 (0xCDEF89AB) written to
//!   FLASH_KEYR unlock it; any other value answers with a bus error and locks the FPEC until
//!   the next reset. Key writes while unlocked are ignored. The same two keys in
//!   FLASH_OPTKEYR (with the FPEC unlocked) set OPTWRE.
//! - **Programming** (PG set): half-word writes only (any other size is a bus error). A
//!   half-word that does not read 0xFFFF is not programmed and sets PGERR, except that 0x0000
//!   may always be written. A write-protected page, or any page while readout protection is
//!   in force (the debugger is connected), sets WRPRTERR instead.
//! - **Erase**: PER with FLASH_AR and STRT erases the 1 KiB page holding AR (refused with
//!   WRPRTERR if protected or readout-protected); MER with STRT erases all of flash (allowed
//!   under readout protection); OPTER with STRT and OPTWRE erases the option bytes, and if
//!   readout protection is in force the FPEC mass-erases main flash first.
//! - **Option bytes** (OPTPG, OPTWRE): the low byte of each half-word written is stored and
//!   its complement computed by the FPEC into the high byte. They take effect at the next
//!   system reset (FLASH_OBR, FLASH_WRPR, readout protection): a byte whose complement does
//!   not match sets OPTERR and reads as 0xFF; RDP other than 0xA5 means level 1.
//! - **Timing**: BSY reads 1 for tPROG after a half-word, tERASE after a page or option
//!   erase, tME after a mass erase; EOP is set when BSY clears. While busy, flash reads and
//!   writes stall the bus.

use super::dap::{BusError, Size};
use super::options::{FlashFault, FlashFaultKind, SimTiming};

/// Main flash base address.
pub const FLASH_BASE: u32 = 0x0800_0000;
/// Main flash size: 128 KiB (STM32F103xB).
pub const FLASH_SIZE: u32 = 128 * 1024;
/// Page size.
pub const PAGE_SIZE: u32 = 1024;
/// Option bytes address.
pub const OPTION_BYTES: u32 = 0x1FFF_F800;
/// FPEC register base.
pub const FPEC_BASE: u32 = 0x4002_2000;

/// First unlock key.
pub const KEY1: u32 = 0x4567_0123;
/// Second unlock key.
pub const KEY2: u32 = 0xCDEF_89AB;
/// RDP option byte value of an unprotected part.
pub const RDP_UNPROTECTED: u8 = 0xA5;

/// FLASH_SR bits.
pub mod sr {
    /// Busy.
    pub const BSY: u32 = 1 << 0;
    /// Programming error.
    pub const PGERR: u32 = 1 << 2;
    /// Write protection error.
    pub const WRPRTERR: u32 = 1 << 4;
    /// End of operation.
    pub const EOP: u32 = 1 << 5;
}

/// FLASH_CR bits.
pub mod cr {
    /// Programming.
    pub const PG: u32 = 1 << 0;
    /// Page erase.
    pub const PER: u32 = 1 << 1;
    /// Mass erase.
    pub const MER: u32 = 1 << 2;
    /// Option byte programming.
    pub const OPTPG: u32 = 1 << 4;
    /// Option byte erase.
    pub const OPTER: u32 = 1 << 5;
    /// Start.
    pub const STRT: u32 = 1 << 6;
    /// Lock.
    pub const LOCK: u32 = 1 << 7;
    /// Option bytes write enable.
    pub const OPTWRE: u32 = 1 << 9;
    /// Error interrupt enable.
    pub const ERRIE: u32 = 1 << 10;
    /// End of operation interrupt enable.
    pub const EOPIE: u32 = 1 << 12;
}

/// Factory option bytes: RDP 0xA5, USER 0xFF, Data 0xFF, WRP 0xFF, each with its complement.
pub const FACTORY_OPTIONS: [u8; 16] = [
    0xA5, 0x5A, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00,
];

/// The option bytes as loaded at the last reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loaded {
    pub readout_protected: bool,
    pub opterr: bool,
    pub user: u8,
    pub data: [u8; 2],
    pub wrp: u32,
}

impl Loaded {
    fn from(options: &[u8; 16]) -> Self {
        let mut opterr = false;
        let mut byte = |i: usize| {
            let (v, n) = (options[2 * i], options[2 * i + 1]);
            if v ^ n == 0xFF {
                v
            } else {
                opterr = true;
                0xFF
            }
        };
        let rdp = byte(0);
        let user = byte(1);
        let data = [byte(2), byte(3)];
        let wrp = u32::from_le_bytes([byte(4), byte(5), byte(6), byte(7)]);
        Loaded {
            readout_protected: rdp != RDP_UNPROTECTED,
            opterr,
            user,
            data,
            wrp,
        }
    }

    fn obr(&self) -> u32 {
        u32::from(self.opterr)
            | (u32::from(self.readout_protected) << 1)
            | (u32::from(self.user) << 2)
            | (u32::from(self.data[0]) << 10)
            | (u32::from(self.data[1]) << 18)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// Locked, expecting KEY1 (step 0) or KEY2 (step 1).
    Locked(u8),
    Unlocked,
    /// A wrong key was written: locked until reset.
    LockedOut,
}

/// Counters of the flash controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlashStats {
    /// Half-words programmed into main flash.
    pub halfwords: u64,
    /// Programming attempts refused with PGERR.
    pub pgerr: u64,
    /// Operations refused with WRPRTERR.
    pub wrprterr: u64,
    /// Pages erased.
    pub page_erases: u64,
    /// Mass erases (including those an option erase under readout protection caused).
    pub mass_erases: u64,
    /// Option byte erases.
    pub option_erases: u64,
    /// Option half-words programmed.
    pub option_writes: u64,
    /// FLASH_SR reads that found BSY set.
    pub busy_reads: u64,
    /// Bus transfers to flash stalled because the FPEC was busy.
    pub stalls: u64,
}

/// Main flash, option bytes and the FPEC.
#[derive(Debug, Clone)]
pub(crate) struct Flash {
    pub main: Vec<u8>,
    pub options: [u8; 16],
    pub loaded: Loaded,
    acr: u32,
    cr: u32,
    sr: u32,
    ar: u32,
    keys: Keys,
    opt_step: u8,
    busy_until: u64,
    eop_due: bool,
    timing: SimTiming,
    fault: Option<FlashFault>,
    programs: u64,
    pub stats: FlashStats,
    /// Main flash changed since the last save.
    pub dirty: bool,
    /// Option bytes changed since the last save.
    pub options_dirty: bool,
}

impl Flash {
    pub fn new(main: Vec<u8>, options: [u8; 16], timing: SimTiming) -> Self {
        let loaded = Loaded::from(&options);
        Flash {
            main,
            options,
            loaded,
            acr: 0x30,
            cr: cr::LOCK,
            sr: 0,
            ar: 0,
            keys: Keys::Locked(0),
            opt_step: 0,
            busy_until: 0,
            eop_due: false,
            timing,
            fault: None,
            programs: 0,
            stats: FlashStats::default(),
            dirty: false,
            options_dirty: false,
        }
    }

    pub fn set_fault(&mut self, fault: Option<FlashFault>) {
        self.fault = fault;
    }

    /// System reset: the FPEC locks, the option bytes are loaded again.
    pub fn reset(&mut self) {
        self.acr = 0x30;
        self.cr = cr::LOCK;
        self.sr = 0;
        self.ar = 0;
        self.keys = Keys::Locked(0);
        self.opt_step = 0;
        self.busy_until = 0;
        self.eop_due = false;
        self.loaded = Loaded::from(&self.options);
    }

    /// Whether an operation is under way at `now`.
    pub fn busy(&self, now: u64) -> bool {
        now < self.busy_until
    }

    fn settle(&mut self, now: u64) {
        if self.eop_due && now >= self.busy_until {
            self.eop_due = false;
            self.sr |= sr::EOP;
            self.cr &= !cr::STRT;
        }
    }

    fn start(&mut self, now: u64, ns: u64) {
        self.busy_until = now.saturating_add(ns);
        self.eop_due = true;
        self.settle(now);
    }

    fn stall(&mut self, now: u64) -> Result<(), BusError> {
        if self.busy(now) {
            self.stats.stalls += 1;
            Err(BusError::Stall {
                until: self.busy_until,
            })
        } else {
            Ok(())
        }
    }

    fn page_protected(&self, offset: u32) -> bool {
        // Medium density: one WRP bit per 4 pages; a cleared bit protects.
        let bit = (offset / PAGE_SIZE / 4).min(31);
        self.loaded.wrp & (1 << bit) == 0
    }

    // ---- bus side ----

    /// A read of main flash at `offset` from the debug port.
    pub fn read_main(&mut self, offset: u32, size: Size, now: u64) -> Result<u32, BusError> {
        if self.loaded.readout_protected {
            return Err(BusError::Fault);
        }
        self.stall(now)?;
        Ok(read_le(&self.main, offset, size))
    }

    /// A write to main flash at `offset` from the debug port: programming.
    pub fn write_main(
        &mut self,
        offset: u32,
        size: Size,
        value: u32,
        now: u64,
    ) -> Result<(), BusError> {
        if self.cr & cr::PG == 0 || self.keys != Keys::Unlocked || size != Size::Half {
            return Err(BusError::Fault);
        }
        self.stall(now)?;
        self.settle(now);
        self.programs += 1;
        if let Some(f) = self.fault {
            if u64::from(f.nth) == self.programs {
                self.fault = None;
                self.sr |= match f.kind {
                    FlashFaultKind::Pgerr => sr::PGERR,
                    FlashFaultKind::Wrprterr => sr::WRPRTERR,
                };
                return Ok(());
            }
        }
        if self.loaded.readout_protected || self.page_protected(offset) {
            self.stats.wrprterr += 1;
            self.sr |= sr::WRPRTERR;
            return Ok(());
        }
        let value = value as u16;
        let o = offset as usize;
        let old = u16::from_le_bytes([self.main[o], self.main[o + 1]]);
        if old != 0xFFFF && value != 0 {
            self.stats.pgerr += 1;
            self.sr |= sr::PGERR;
            return Ok(());
        }
        self.main[o..o + 2].copy_from_slice(&value.to_le_bytes());
        self.stats.halfwords += 1;
        self.dirty = true;
        self.start(now, self.timing.program_ns);
        Ok(())
    }

    /// A read of the option bytes (always allowed).
    pub fn read_options(&self, offset: u32, size: Size) -> u32 {
        read_le(&self.options, offset, size)
    }

    /// A write to the option bytes: option programming.
    pub fn write_options(
        &mut self,
        offset: u32,
        size: Size,
        value: u32,
        now: u64,
    ) -> Result<(), BusError> {
        let enabled = self.cr & cr::OPTPG != 0 && self.cr & cr::OPTWRE != 0;
        if !enabled || self.keys != Keys::Unlocked || size != Size::Half {
            return Err(BusError::Fault);
        }
        self.stall(now)?;
        self.settle(now);
        let o = offset as usize;
        if self.options[o] != 0xFF || self.options[o + 1] != 0xFF {
            self.stats.pgerr += 1;
            self.sr |= sr::PGERR;
            return Ok(());
        }
        let byte = value as u8;
        self.options[o] = byte;
        self.options[o + 1] = !byte;
        self.stats.option_writes += 1;
        self.options_dirty = true;
        self.start(now, self.timing.program_ns);
        Ok(())
    }

    /// A read of an FPEC register (word offset from 0x40022000).
    pub fn read_reg(&mut self, offset: u32, now: u64) -> u32 {
        self.settle(now);
        match offset {
            0x00 => self.acr,
            0x0C if self.busy(now) => {
                self.stats.busy_reads += 1;
                self.sr | sr::BSY
            }
            0x0C => self.sr,
            0x10 => self.cr,
            0x14 => self.ar,
            0x1C => self.loaded.obr(),
            0x20 => self.loaded.wrp,
            _ => 0, // KEYR and OPTKEYR are write-only.
        }
    }

    /// A write to an FPEC register.
    pub fn write_reg(&mut self, offset: u32, value: u32, now: u64) -> Result<(), BusError> {
        self.settle(now);
        match offset {
            0x00 => self.acr = (value & 0x1F) | 0x20,
            0x04 => return self.write_key(value),
            0x08 if self.keys == Keys::Unlocked => {
                self.opt_step = match (self.opt_step, value) {
                    (0, KEY1) => 1,
                    (1, KEY2) => {
                        self.cr |= cr::OPTWRE;
                        0
                    }
                    _ => 0,
                };
            }
            0x0C => self.sr &= !(value & (sr::PGERR | sr::WRPRTERR | sr::EOP)),
            0x10 => return self.write_cr(value, now),
            0x14 if self.keys == Keys::Unlocked => self.ar = value,
            _ => {}
        }
        Ok(())
    }

    fn write_key(&mut self, value: u32) -> Result<(), BusError> {
        self.keys = match (self.keys, value) {
            (Keys::Unlocked, _) => Keys::Unlocked,
            (Keys::Locked(0), KEY1) => Keys::Locked(1),
            (Keys::Locked(1), KEY2) => {
                self.cr &= !cr::LOCK;
                Keys::Unlocked
            }
            _ => {
                self.keys = Keys::LockedOut;
                return Err(BusError::Fault);
            }
        };
        Ok(())
    }

    fn write_cr(&mut self, value: u32, now: u64) -> Result<(), BusError> {
        if self.keys != Keys::Unlocked {
            return Ok(());
        }
        if value & cr::STRT != 0 {
            self.stall(now)?;
        }
        const BITS: u32 =
            cr::PG | cr::PER | cr::MER | cr::OPTPG | cr::OPTER | cr::ERRIE | cr::EOPIE;
        let optwre = self.cr & value & cr::OPTWRE;
        let strt = self.cr & cr::STRT;
        self.cr = (value & BITS) | optwre | strt;
        if value & cr::LOCK != 0 {
            self.cr |= cr::LOCK;
            self.cr &= !cr::OPTWRE;
            self.keys = Keys::Locked(0);
            self.opt_step = 0;
            return Ok(());
        }
        if value & cr::STRT != 0 {
            self.start_operation(now);
        }
        Ok(())
    }

    fn start_operation(&mut self, now: u64) {
        let t = self.timing;
        if self.cr & cr::OPTER != 0 {
            if self.cr & cr::OPTWRE == 0 {
                return;
            }
            let mut ns = t.page_erase_ns;
            if self.loaded.readout_protected {
                // Removing readout protection: the FPEC erases main flash first.
                self.mass_erase();
                ns += t.mass_erase_ns;
            }
            self.options = [0xFF; 16];
            self.options_dirty = true;
            self.stats.option_erases += 1;
            self.cr |= cr::STRT;
            self.start(now, ns);
        } else if self.cr & cr::MER != 0 {
            self.mass_erase();
            self.cr |= cr::STRT;
            self.start(now, t.mass_erase_ns);
        } else if self.cr & cr::PER != 0 {
            // AR holds a flash address, in the main block or its alias at 0.
            let address = if self.ar >= FLASH_BASE {
                self.ar - FLASH_BASE
            } else {
                self.ar
            };
            let offset = address & !(PAGE_SIZE - 1);
            if offset >= FLASH_SIZE {
                return;
            }
            if self.loaded.readout_protected || self.page_protected(offset) {
                self.stats.wrprterr += 1;
                self.sr |= sr::WRPRTERR;
                return;
            }
            let o = offset as usize;
            self.main[o..o + PAGE_SIZE as usize].fill(0xFF);
            self.stats.page_erases += 1;
            self.dirty = true;
            self.cr |= cr::STRT;
            self.start(now, t.page_erase_ns);
        }
    }

    fn mass_erase(&mut self) {
        self.main.fill(0xFF);
        self.stats.mass_erases += 1;
        self.dirty = true;
    }

    /// Whether the FPEC is unlocked (for inspection).
    #[cfg(test)]
    pub fn unlocked(&self) -> bool {
        self.keys == Keys::Unlocked
    }

    /// Whether a wrong key locked the FPEC until reset (for inspection).
    #[cfg(test)]
    pub fn locked_out(&self) -> bool {
        self.keys == Keys::LockedOut
    }
}

/// `size` little-endian bytes at `offset` of `mem`.
fn read_le(mem: &[u8], offset: u32, size: Size) -> u32 {
    let o = offset as usize;
    mem.get(o..o + size.bytes() as usize)
        .map(|b| b.iter().rev().fold(0, |v, &x| (v << 8) | u32::from(x)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn fpec(timing: SimTiming) -> Flash {
        Flash::new(vec![0xFF; FLASH_SIZE as usize], FACTORY_OPTIONS, timing)
    }

    fn unlock(f: &mut Flash) {
        f.write_reg(0x04, KEY1, 0).unwrap();
        f.write_reg(0x04, KEY2, 0).unwrap();
        assert!(f.unlocked());
        assert_eq!(f.read_reg(0x10, 0) & cr::LOCK, 0);
    }

    fn unlock_options(f: &mut Flash) {
        f.write_reg(0x08, KEY1, 0).unwrap();
        f.write_reg(0x08, KEY2, 0).unwrap();
        assert_ne!(f.read_reg(0x10, 0) & cr::OPTWRE, 0);
    }

    #[test]
    fn registers_after_reset() {
        let mut f = fpec(SimTiming::zero());
        assert_eq!(f.read_reg(0x10, 0), cr::LOCK);
        assert_eq!(f.read_reg(0x0C, 0), 0);
        assert_eq!(f.read_reg(0x1C, 0), 0x03FF_FFFC, "OBR of a factory part");
        assert_eq!(f.read_reg(0x20, 0), 0xFFFF_FFFF);
        assert_eq!(f.read_reg(0x00, 0), 0x30);
    }

    #[test]
    fn the_key_sequence_and_a_wrong_key() {
        let mut f = fpec(SimTiming::zero());
        // Locked: CR writes are ignored, programming is a bus error.
        f.write_reg(0x10, cr::PG, 0).unwrap();
        assert_eq!(f.read_reg(0x10, 0), cr::LOCK);
        assert_eq!(f.write_main(0, Size::Half, 0x1234, 0), Err(BusError::Fault));
        unlock(&mut f);
        // Keys written again while unlocked are harmless (OpenOCD does this).
        f.write_reg(0x04, KEY1, 0).unwrap();
        f.write_reg(0x04, KEY2, 0).unwrap();
        assert!(f.unlocked());
        f.write_reg(0x10, cr::LOCK, 0).unwrap();
        assert!(!f.unlocked());
        // A wrong key: bus error, and locked until reset even with the right keys.
        f.write_reg(0x04, KEY1, 0).unwrap();
        assert_eq!(f.write_reg(0x04, 0x1111_1111, 0), Err(BusError::Fault));
        assert!(f.locked_out());
        assert_eq!(f.write_reg(0x04, KEY1, 0), Err(BusError::Fault));
        f.reset();
        unlock(&mut f);
    }

    #[test]
    fn program_needs_erased_halfwords() {
        let mut f = fpec(SimTiming::zero());
        unlock(&mut f);
        f.write_reg(0x10, cr::PG, 0).unwrap();
        f.write_main(0x100, Size::Half, 0x1234, 0).unwrap();
        assert_eq!(&f.main[0x100..0x102], &[0x34, 0x12]);
        assert_eq!(f.read_reg(0x0C, 0), sr::EOP);
        f.write_reg(0x0C, sr::EOP, 0).unwrap();
        // Not erased: PGERR and no change.
        f.write_main(0x100, Size::Half, 0x0F0F, 0).unwrap();
        assert_eq!(f.read_reg(0x0C, 0), sr::PGERR);
        assert_eq!(&f.main[0x100..0x102], &[0x34, 0x12]);
        // 0x0000 may always be written.
        f.write_reg(0x0C, sr::PGERR, 0).unwrap();
        f.write_main(0x100, Size::Half, 0x0000, 0).unwrap();
        assert_eq!(f.read_reg(0x0C, 0), sr::EOP);
        assert_eq!(&f.main[0x100..0x102], &[0, 0]);
        // Words and bytes are bus errors.
        assert_eq!(f.write_main(0x200, Size::Word, 0, 0), Err(BusError::Fault));
        assert_eq!(f.write_main(0x200, Size::Byte, 0, 0), Err(BusError::Fault));
        // Without PG, a write is a bus error too.
        f.write_reg(0x10, 0, 0).unwrap();
        assert_eq!(f.write_main(0x200, Size::Half, 0, 0), Err(BusError::Fault));
    }

    #[test]
    fn page_and_mass_erase() {
        let mut f = fpec(SimTiming::zero());
        f.main[0x400..0x800].fill(0);
        f.main[0x7FF] = 0x12;
        f.main[0x800] = 0;
        unlock(&mut f);
        f.write_reg(0x10, cr::PER, 0).unwrap();
        f.write_reg(0x14, FLASH_BASE + 0x456, 0).unwrap();
        f.write_reg(0x10, cr::PER | cr::STRT, 0).unwrap();
        assert!(f.main[0x400..0x800].iter().all(|&b| b == 0xFF));
        assert_eq!(f.main[0x800], 0, "only one page");
        f.write_reg(0x10, cr::MER, 0).unwrap();
        f.write_reg(0x10, cr::MER | cr::STRT, 0).unwrap();
        assert!(f.main.iter().all(|&b| b == 0xFF));
        assert_eq!(f.stats.page_erases, 1);
        assert_eq!(f.stats.mass_erases, 1);
    }

    #[test]
    fn busy_timing_and_the_stall() {
        let mut f = fpec(SimTiming::realistic());
        unlock(&mut f);
        f.write_reg(0x10, cr::PG, 0).unwrap();
        f.write_main(0, Size::Half, 0xAAAA, 1_000).unwrap();
        let t = SimTiming::realistic().program_ns;
        assert_eq!(t, 52_500);
        assert_eq!(f.read_reg(0x0C, 1_000 + t - 1), sr::BSY);
        assert_eq!(
            f.write_main(2, Size::Half, 0xBBBB, 1_000 + t - 1),
            Err(BusError::Stall { until: 1_000 + t })
        );
        assert_eq!(
            f.read_main(0, Size::Half, 2_000),
            Err(BusError::Stall { until: 1_000 + t })
        );
        assert_eq!(f.read_reg(0x0C, 1_000 + t), sr::EOP);
        assert_eq!(f.read_main(0, Size::Half, 1_000 + t), Ok(0xAAAA));
        // Page erase: 20 ms.
        f.write_reg(0x10, cr::PER, 0).unwrap();
        f.write_reg(0x14, FLASH_BASE, 0).unwrap();
        f.write_reg(0x10, cr::PER | cr::STRT, 100_000).unwrap();
        assert_eq!(f.read_reg(0x0C, 100_000 + 19_999_999) & sr::BSY, sr::BSY);
        assert_ne!(f.read_reg(0x10, 100_000) & cr::STRT, 0);
        assert_eq!(f.read_reg(0x0C, 100_000 + 20_000_000) & sr::BSY, 0);
        assert_eq!(f.read_reg(0x10, 100_000 + 20_000_000) & cr::STRT, 0);
    }

    #[test]
    fn readout_protection_lifecycle() {
        let mut f = fpec(SimTiming::zero());
        f.main[..4].copy_from_slice(&[1, 2, 3, 4]);
        // Lock: erase the options, program RDP = 0x00 (the FPEC writes the complement).
        unlock(&mut f);
        unlock_options(&mut f);
        f.write_reg(0x10, cr::OPTER | cr::OPTWRE, 0).unwrap();
        f.write_reg(0x10, cr::OPTER | cr::STRT | cr::OPTWRE, 0)
            .unwrap();
        assert_eq!(f.options, [0xFF; 16]);
        f.write_reg(0x10, cr::OPTPG | cr::OPTWRE, 0).unwrap();
        f.write_options(0, Size::Half, 0x0000, 0).unwrap();
        assert_eq!(&f.options[..2], &[0x00, 0xFF]);
        f.write_reg(0x10, cr::LOCK, 0).unwrap();
        // Not in force until a reset.
        assert_eq!(f.read_main(0, Size::Word, 0), Ok(0x0403_0201));
        f.reset();
        assert!(f.loaded.readout_protected);
        assert_eq!(
            f.read_reg(0x1C, 0) & 0b11,
            0b11,
            "RDPRT, and OPTERR (erased bytes)"
        );
        assert_eq!(f.read_main(0, Size::Word, 0), Err(BusError::Fault));
        // Programming and page erase are refused; the option bytes stay readable.
        unlock(&mut f);
        f.write_reg(0x10, cr::PG, 0).unwrap();
        f.write_main(0x1000, Size::Half, 0x1234, 0).unwrap();
        assert_eq!(f.read_reg(0x0C, 0), sr::WRPRTERR);
        f.write_reg(0x0C, sr::WRPRTERR, 0).unwrap();
        f.write_reg(0x10, cr::PER, 0).unwrap();
        f.write_reg(0x14, FLASH_BASE, 0).unwrap();
        f.write_reg(0x10, cr::PER | cr::STRT, 0).unwrap();
        assert_eq!(f.read_reg(0x0C, 0), sr::WRPRTERR);
        assert_eq!(f.main[0], 1);
        assert_eq!(f.read_options(0, Size::Half), 0xFF00);
        // Unprotect: option erase mass-erases flash; RDP = 0xA5; effective after reset.
        unlock_options(&mut f);
        f.write_reg(0x10, cr::OPTER | cr::OPTWRE, 0).unwrap();
        f.write_reg(0x10, cr::OPTER | cr::STRT | cr::OPTWRE, 0)
            .unwrap();
        assert!(f.main.iter().all(|&b| b == 0xFF));
        f.write_reg(0x10, cr::OPTPG | cr::OPTWRE, 0).unwrap();
        for (i, hw) in [0x00A5u32, 0x00FF, 0x00FF, 0x00FF, 0xFF, 0xFF, 0xFF, 0xFF]
            .into_iter()
            .enumerate()
        {
            f.write_options(2 * i as u32, Size::Half, hw, 0).unwrap();
        }
        assert_eq!(f.options, FACTORY_OPTIONS);
        f.reset();
        assert!(!f.loaded.readout_protected);
        assert_eq!(f.read_reg(0x1C, 0), 0x03FF_FFFC);
        assert_eq!(f.read_main(0, Size::Word, 0), Ok(0xFFFF_FFFF));
    }

    #[test]
    fn write_protection_bits() {
        let mut o = FACTORY_OPTIONS;
        o[8] = 0xFE; // WRP0 bit 0 cleared: pages 0-3 protected.
        o[9] = 0x01;
        let mut f = Flash::new(vec![0xFF; FLASH_SIZE as usize], o, SimTiming::zero());
        assert_eq!(f.read_reg(0x20, 0), 0xFFFF_FFFE);
        unlock(&mut f);
        f.write_reg(0x10, cr::PG, 0).unwrap();
        f.write_main(0xFFE, Size::Half, 0, 0).unwrap();
        assert_eq!(f.read_reg(0x0C, 0), sr::WRPRTERR);
        f.write_reg(0x0C, sr::WRPRTERR, 0).unwrap();
        f.write_main(0x1000, Size::Half, 0, 0).unwrap();
        assert_eq!(f.read_reg(0x0C, 0), sr::EOP);
    }

    #[test]
    fn an_injected_programming_error() {
        let mut f = fpec(SimTiming::zero());
        f.set_fault(Some(FlashFault {
            kind: FlashFaultKind::Pgerr,
            nth: 2,
        }));
        unlock(&mut f);
        f.write_reg(0x10, cr::PG, 0).unwrap();
        f.write_main(0, Size::Half, 0x1111, 0).unwrap();
        f.write_reg(0x0C, sr::EOP, 0).unwrap();
        f.write_main(2, Size::Half, 0x2222, 0).unwrap();
        assert_eq!(f.read_reg(0x0C, 0), sr::PGERR);
        assert_eq!(&f.main[2..4], &[0xFF, 0xFF]);
        f.write_reg(0x0C, sr::PGERR, 0).unwrap();
        f.write_main(2, Size::Half, 0x2222, 0).unwrap();
        assert_eq!(f.read_reg(0x0C, 0), sr::EOP, "fires once");
    }
}
