//! The system bus of the STM32F103xB as the AHB-AP reaches it.
//!
//! | range | what |
//! |-------|------|
//! | 0x00000000–0x0001FFFF | flash, aliased at 0 (boot from flash) |
//! | 0x08000000–0x0801FFFF | flash, 128 KiB in 1 KiB pages |
//! | 0x1FFFF000–0x1FFFF7FF | system memory (ROM): flash size register at 0x1FFFF7E0 (128), 96-bit unique ID at 0x1FFFF7E8 |
//! | 0x1FFFF800–0x1FFFF80F | option bytes |
//! | 0x20000000–0x20004FFF | SRAM, 20 KiB (bit-band alias at 0x22000000) |
//! | 0x40000000–0x40023FFF | peripherals (bit-band alias at 0x42000000): the FPEC at 0x40022000; other registers read back what was written |
//! | 0xE0000000–0xE00FFFFF | private peripheral bus: see [`super::core`] |
//!
//! Anything else answers with a bus error, which sets the DP's STICKYERR. While readout
//! protection is in force, reads of flash (and its alias) are bus errors too. The system
//! memory here is not ST's bootloader: a vector table and zeros, with the flash size and
//! UID where RM0008 puts them. Programming follows [`super::flash`].

use std::collections::BTreeMap;

use super::core::{Core, CoreRequest};
use super::dap::{Bus, BusError, Size};
use super::flash::{Flash, FLASH_BASE, FLASH_SIZE, FPEC_BASE, OPTION_BYTES};

/// System memory base.
pub const SYSTEM_MEMORY: u32 = 0x1FFF_F000;
/// Flash size register (16 bits, KiB).
pub const FLASH_SIZE_REGISTER: u32 = 0x1FFF_F7E0;
/// Unique device ID (96 bits).
pub const UID_ADDRESS: u32 = 0x1FFF_F7E8;
/// SRAM base.
pub const SRAM_BASE: u32 = 0x2000_0000;
/// SRAM size: 20 KiB.
pub const SRAM_SIZE: u32 = 20 * 1024;

const SYSTEM_MEMORY_SIZE: u32 = 2048;
const PERIPHERALS: u32 = 0x4000_0000;
const PERIPHERALS_END: u32 = 0x4002_4000;
const SRAM_BITBAND: u32 = 0x2200_0000;
const PERIPHERAL_BITBAND: u32 = 0x4200_0000;

/// Everything behind the AHB-AP: memories, flash controller, peripherals, core.
#[derive(Debug, Clone)]
pub(crate) struct System {
    /// Simulated time, ns.
    pub now: u64,
    pub flash: Flash,
    pub core: Core,
    sram: Vec<u8>,
    system_memory: Vec<u8>,
    peripherals: BTreeMap<u32, u32>,
    uid: [u8; 12],
    /// System resets after power-on.
    pub system_resets: u64,
}

impl System {
    pub fn new(flash: Flash, uid: [u8; 12], dev_id: u32) -> Self {
        let mut system_memory = vec![0; SYSTEM_MEMORY_SIZE as usize];
        // A vector table (stack in SRAM, reset handler in ROM), then zeros.
        system_memory[..4].copy_from_slice(&0x2000_01FCu32.to_le_bytes());
        system_memory[4..8].copy_from_slice(&0x1FFF_F021u32.to_le_bytes());
        let fs = (FLASH_SIZE_REGISTER - SYSTEM_MEMORY) as usize;
        system_memory[fs..fs + 2].copy_from_slice(&((FLASH_SIZE / 1024) as u16).to_le_bytes());
        system_memory[fs + 2..fs + 8].fill(0xFF);
        let u = (UID_ADDRESS - SYSTEM_MEMORY) as usize;
        system_memory[u..u + 12].copy_from_slice(&uid);
        system_memory[u + 12..].fill(0xFF);
        let vectors = vectors(&flash.main);
        System {
            now: 0,
            flash,
            core: Core::new(dev_id, vectors),
            sram: vec![0; SRAM_SIZE as usize],
            system_memory,
            peripherals: BTreeMap::new(),
            uid,
            system_resets: 0,
        }
    }

    pub fn uid(&self) -> [u8; 12] {
        self.uid
    }

    /// A system reset (SYSRESETREQ, NRST released): the flash controller locks and loads
    /// the option bytes, peripherals return to their reset values, the core resets. SRAM
    /// keeps its content.
    pub fn system_reset(&mut self) {
        self.system_resets += 1;
        self.flash.reset();
        self.peripherals.clear();
        self.core.reset(vectors(&self.flash.main));
        self.check_breakpoint();
    }

    /// NRST asserted.
    pub fn hold_reset(&mut self) {
        self.core.hold_reset();
    }

    fn request(&mut self, r: CoreRequest) {
        match r {
            CoreRequest::None => {}
            CoreRequest::SystemReset => self.system_reset(),
            CoreRequest::CoreReset => self.core.reset(vectors(&self.flash.main)),
        }
        self.check_breakpoint();
    }

    /// A running core whose PC holds a breakpoint halts before executing anything.
    fn check_breakpoint(&mut self) {
        if let Some(pc) = self.core.running_pc() {
            let bkpt = self.peek(pc & !1, 2).is_some_and(|b| b[1] == 0xBE);
            if bkpt || self.core.fpb_hit(pc) {
                self.core.breakpoint();
            }
        }
    }

    /// Whether flash holds an image (its initial stack pointer is not erased).
    pub fn has_image(&self) -> bool {
        self.flash.main[..4] != [0xFF; 4]
    }

    /// Memory as the silicon holds it, ignoring protection (inspection); `None` outside
    /// flash, option bytes, system memory and SRAM.
    pub fn peek(&self, address: u32, len: usize) -> Option<Vec<u8>> {
        let slice = |mem: &[u8], base: u32| -> Option<Vec<u8>> {
            let o = address.checked_sub(base)? as usize;
            mem.get(o..o.checked_add(len)?).map(<[u8]>::to_vec)
        };
        match address {
            FLASH_BASE..=0x0801_FFFF => slice(&self.flash.main, FLASH_BASE),
            SYSTEM_MEMORY..=0x1FFF_F7FF => slice(&self.system_memory, SYSTEM_MEMORY),
            OPTION_BYTES..=0x1FFF_F80F => slice(&self.flash.options, OPTION_BYTES),
            SRAM_BASE..=0x2000_4FFF => slice(&self.sram, SRAM_BASE),
            _ => None,
        }
    }

    /// A peripheral register (no peripheral here has read side effects).
    fn periph_read(&mut self, word: u32) -> u32 {
        if (FPEC_BASE..FPEC_BASE + 0x400).contains(&word) {
            return self.flash.read_reg(word - FPEC_BASE, self.now);
        }
        self.peripherals.get(&word).copied().unwrap_or(0)
    }

    fn periph_write(&mut self, word: u32, value: u32) -> Result<(), BusError> {
        if (FPEC_BASE..FPEC_BASE + 0x400).contains(&word) {
            return self.flash.write_reg(word - FPEC_BASE, value, self.now);
        }
        self.peripherals.insert(word, value);
        Ok(())
    }

    /// A word-wide register read through a narrower access: the lanes `address` selects.
    fn narrow(word: u32, address: u32, size: Size) -> u32 {
        (word >> (8 * (address & 3))) & size.mask()
    }

    /// A narrower write into a word-wide register: the other lanes keep `old`.
    fn merge(old: u32, address: u32, size: Size, value: u32) -> u32 {
        let shift = 8 * (address & 3);
        let mask = size.mask() << shift;
        (old & !mask) | ((value << shift) & mask)
    }
}

/// SP and PC of the vector table at the start of flash (boot from flash).
fn vectors(flash: &[u8]) -> [u32; 2] {
    let w = |o: usize| u32::from_le_bytes([flash[o], flash[o + 1], flash[o + 2], flash[o + 3]]);
    [w(0), w(4)]
}

fn read_le(mem: &[u8], offset: u32, size: Size) -> Result<u32, BusError> {
    let o = offset as usize;
    mem.get(o..o + size.bytes() as usize)
        .map(|b| b.iter().rev().fold(0, |v, &x| (v << 8) | u32::from(x)))
        .ok_or(BusError::Fault)
}

fn write_le(mem: &mut [u8], offset: u32, size: Size, value: u32) -> Result<(), BusError> {
    let o = offset as usize;
    let b = mem
        .get_mut(o..o + size.bytes() as usize)
        .ok_or(BusError::Fault)?;
    for (i, x) in b.iter_mut().enumerate() {
        *x = (value >> (8 * i)) as u8;
    }
    Ok(())
}

impl Bus for System {
    fn read(&mut self, address: u32, size: Size) -> Result<u32, BusError> {
        match address {
            0..=0x0001_FFFF => self.flash.read_main(address, size, self.now),
            FLASH_BASE..=0x0801_FFFF => self.flash.read_main(address - FLASH_BASE, size, self.now),
            SYSTEM_MEMORY..=0x1FFF_F7FF => {
                read_le(&self.system_memory, address - SYSTEM_MEMORY, size)
            }
            OPTION_BYTES..=0x1FFF_F80F => Ok(self.flash.read_options(address - OPTION_BYTES, size)),
            SRAM_BASE..=0x2000_4FFF => read_le(&self.sram, address - SRAM_BASE, size),
            SRAM_BITBAND..=0x2209_FFFF => {
                let (byte, bit) = bitband(address - SRAM_BITBAND);
                Ok(u32::from((self.sram[byte as usize] >> bit) & 1))
            }
            PERIPHERALS..PERIPHERALS_END => {
                let word = self.periph_read(address & !3);
                Ok(System::narrow(word, address, size))
            }
            PERIPHERAL_BITBAND..=0x4247_FFFF => {
                let (byte, bit) = bitband(address - PERIPHERAL_BITBAND);
                let a = PERIPHERALS + byte;
                let word = self.periph_read(a & !3);
                Ok((word >> (8 * (a & 3) + bit)) & 1)
            }
            0xE000_0000..=0xE00F_FFFF => {
                let word = self.core.read(address & !3);
                Ok(System::narrow(word, address, size))
            }
            _ => Err(BusError::Fault),
        }
    }

    fn write(&mut self, address: u32, size: Size, value: u32) -> Result<(), BusError> {
        match address {
            0..=0x0001_FFFF => self.flash.write_main(address, size, value, self.now),
            FLASH_BASE..=0x0801_FFFF => {
                self.flash
                    .write_main(address - FLASH_BASE, size, value, self.now)
            }
            OPTION_BYTES..=0x1FFF_F80F => {
                self.flash
                    .write_options(address - OPTION_BYTES, size, value, self.now)
            }
            SRAM_BASE..=0x2000_4FFF => write_le(&mut self.sram, address - SRAM_BASE, size, value),
            SRAM_BITBAND..=0x2209_FFFF => {
                let (byte, bit) = bitband(address - SRAM_BITBAND);
                let b = &mut self.sram[byte as usize];
                *b = (*b & !(1 << bit)) | (((value & 1) as u8) << bit);
                Ok(())
            }
            PERIPHERALS..PERIPHERALS_END => {
                let word = address & !3;
                let merged = if size == Size::Word {
                    value
                } else {
                    System::merge(self.periph_read(word), address, size, value)
                };
                self.periph_write(word, merged)
            }
            PERIPHERAL_BITBAND..=0x4247_FFFF => {
                let (byte, bit) = bitband(address - PERIPHERAL_BITBAND);
                let a = PERIPHERALS + byte;
                let shift = 8 * (a & 3) + bit;
                let old = self.periph_read(a & !3);
                self.periph_write(a & !3, (old & !(1 << shift)) | ((value & 1) << shift))
            }
            0xE000_0000..=0xE00F_FFFF => {
                let word = address & !3;
                let merged = if size == Size::Word {
                    value
                } else {
                    System::merge(self.core.peek(word), address, size, value)
                };
                let r = self.core.write(word, merged);
                self.request(r);
                Ok(())
            }
            // System memory is ROM; the rest is not mapped.
            _ => Err(BusError::Fault),
        }
    }

    fn now(&self) -> u64 {
        self.now
    }
}

/// Byte offset and bit number in the bit-band region for an alias offset.
fn bitband(alias_offset: u32) -> (u32, u32) {
    (alias_offset / 32, (alias_offset / 4) % 8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::super::flash::{cr, FACTORY_OPTIONS, KEY1, KEY2};
    use super::super::options::SimTiming;
    use super::*;

    fn system() -> System {
        let mut main = vec![0xFF; FLASH_SIZE as usize];
        main[..8].copy_from_slice(&[0x00, 0x50, 0x00, 0x20, 0x01, 0x01, 0x00, 0x08]);
        let flash = Flash::new(main, FACTORY_OPTIONS, SimTiming::zero());
        System::new(flash, *b"0123456789AB", 0x2003_6410)
    }

    #[test]
    fn the_memory_map() {
        let mut s = system();
        assert_eq!(s.read(FLASH_BASE, Size::Word), Ok(0x2000_5000));
        assert_eq!(s.read(0, Size::Word), Ok(0x2000_5000), "boot alias");
        assert_eq!(s.read(FLASH_SIZE_REGISTER, Size::Half), Ok(128));
        assert_eq!(
            s.read(UID_ADDRESS, Size::Word),
            Ok(u32::from_le_bytes(*b"0123"))
        );
        assert_eq!(
            s.read(UID_ADDRESS + 8, Size::Word),
            Ok(u32::from_le_bytes(*b"89AB"))
        );
        assert_eq!(s.read(OPTION_BYTES, Size::Half), Ok(0x5AA5));
        assert_eq!(s.read(0xE004_2000, Size::Word), Ok(0x2003_6410));
        assert_eq!(s.read(0xE000_ED00, Size::Word), Ok(0x411F_C231));
        assert_eq!(s.read(0x4002_201C, Size::Word), Ok(0x03FF_FFFC));
        for unmapped in [
            0x0802_0000,
            0x1000_0000,
            0x2000_5000,
            0x6000_0000,
            0xE010_0000,
        ] {
            assert_eq!(
                s.read(unmapped, Size::Word),
                Err(BusError::Fault),
                "0x{unmapped:08x}"
            );
        }
        assert_eq!(
            s.write(SYSTEM_MEMORY, Size::Word, 0),
            Err(BusError::Fault),
            "ROM"
        );
    }

    #[test]
    fn sram_and_bit_band() {
        let mut s = system();
        s.write(SRAM_BASE + 4, Size::Word, 0x8000_0001).unwrap();
        assert_eq!(s.read(SRAM_BITBAND + 4 * 32, Size::Word), Ok(1));
        assert_eq!(s.read(SRAM_BITBAND + 4 * 32 + 31 * 4, Size::Word), Ok(1));
        s.write(SRAM_BITBAND + 4 * 32 + 4, Size::Word, 1).unwrap();
        assert_eq!(s.read(SRAM_BASE + 4, Size::Word), Ok(0x8000_0003));
        s.write(SRAM_BASE + 6, Size::Half, 0x1234).unwrap();
        assert_eq!(s.read(SRAM_BASE + 4, Size::Word), Ok(0x1234_0003));
        assert_eq!(s.read(SRAM_BASE + 7, Size::Byte), Ok(0x12));
    }

    #[test]
    fn peripherals_read_back_and_take_narrow_writes() {
        let mut s = system();
        s.write(0x4002_1018, Size::Word, 0x0000_0014).unwrap(); // RCC_APB2ENR
        s.write(0x4002_101A, Size::Half, 0xAB).unwrap();
        assert_eq!(s.read(0x4002_1018, Size::Word), Ok(0x00AB_0014));
        s.write(PERIPHERAL_BITBAND + 0x2_1018 * 32 + 3 * 4, Size::Word, 1)
            .unwrap();
        assert_eq!(s.read(0x4002_1018, Size::Word), Ok(0x00AB_001C));
        assert_eq!(s.read(0xE004_2004, Size::Byte), Ok(0));
    }

    #[test]
    fn sysresetreq_resets_the_fpec_and_the_core() {
        let mut s = system();
        s.write(0x4002_2004, Size::Word, KEY1).unwrap();
        s.write(0x4002_2004, Size::Word, KEY2).unwrap();
        assert_eq!(s.read(0x4002_2010, Size::Word), Ok(0));
        s.write(0x4002_2010, Size::Word, cr::PG).unwrap();
        s.write(FLASH_BASE + 0x10, Size::Half, 0x4321).unwrap();
        s.write(SRAM_BASE, Size::Word, 0x5555_AAAA).unwrap();
        s.write(0xE000_ED0C, Size::Word, 0x05FA_0004).unwrap();
        assert_eq!(s.system_resets, 1);
        assert_eq!(s.read(0x4002_2010, Size::Word), Ok(cr::LOCK));
        assert_eq!(s.read(FLASH_BASE + 0x10, Size::Half), Ok(0x4321));
        assert_eq!(
            s.read(SRAM_BASE, Size::Word),
            Ok(0x5555_AAAA),
            "SRAM survives"
        );
    }
}
