//! The AVR parts this crate knows, with the figures the simulator and the driver need.
//!
//! Figures follow avrdude 7.1's `avrdude.conf` (`m328p`, `m2560`) and the datasheets:
//! signature, memory geometry, the STK500 device code and the write times the programmer
//! must wait out when it cannot poll (avrdude's `min_write_delay`/`chip_erase_delay`).

use std::fmt;
use std::time::Duration;

/// One AVR part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Device type as flashgate names it, e.g. `atmega328p`.
    pub name: &'static str,
    /// avrdude's part id, e.g. `m328p`.
    pub avrdude_id: &'static str,
    /// Device signature bytes 0, 1, 2.
    pub signature: [u8; 3],
    /// Flash size in bytes.
    pub flash_size: u32,
    /// Flash page size in bytes.
    pub flash_page: u32,
    /// EEPROM size in bytes.
    pub eeprom_size: u32,
    /// EEPROM page size in bytes (Load EEPROM Memory Page / Write EEPROM Memory Page).
    pub eeprom_page: u32,
    /// tWD_FLASH: one flash page write.
    pub flash_write: Duration,
    /// tWD_EEPROM: one EEPROM byte or page write.
    pub eeprom_write: Duration,
    /// tWD_ERASE: chip erase.
    pub chip_erase: Duration,
    /// tWD_FUSE: one fuse or lock byte write.
    pub fuse_write: Duration,
    /// STK500 device code sent in `Cmnd_STK_SET_DEVICE`.
    pub stk500_devcode: u8,
    /// PAGEL and BS2 pins, sent in `Cmnd_STK_SET_DEVICE_EXT` (meaningless over ISP, sent as avrdude does).
    pub pagel: u8,
    /// See [`pagel`](Part::pagel).
    pub bs2: u8,
    /// Factory fuse values: low, high, extended.
    pub default_fuses: [u8; 3],
    /// Bits of the extended fuse that exist; the others read as 1.
    pub efuse_mask: u8,
}

impl Part {
    /// Flash size in 16-bit words.
    pub const fn flash_words(&self) -> u32 {
        self.flash_size / 2
    }

    /// Whether flash above 128 KiB needs the Load Extended Address instruction (`4D 00 ext 00`).
    pub const fn needs_extended_address(&self) -> bool {
        self.flash_words() > 0x1_0000
    }

    /// Number of flash pages.
    pub const fn flash_pages(&self) -> u32 {
        self.flash_size / self.flash_page
    }

    /// Looks a part up by flashgate name (`atmega328p`) or avrdude id (`m328p`), any case.
    pub fn find(name: &str) -> Option<&'static Part> {
        let n = name.trim().to_ascii_lowercase();
        PARTS.iter().find(|p| p.name == n || p.avrdude_id == n)
    }

    /// The part with this signature.
    pub fn by_signature(signature: &[u8]) -> Option<&'static Part> {
        PARTS.iter().find(|p| p.signature[..] == *signature)
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

const fn us(v: u64) -> Duration {
    Duration::from_micros(v)
}

/// ATmega328P: 32 KiB flash in 128-byte pages, 1 KiB EEPROM in 4-byte pages.
pub const ATMEGA328P: Part = Part {
    name: "atmega328p",
    avrdude_id: "m328p",
    signature: [0x1E, 0x95, 0x0F],
    flash_size: 32 * 1024,
    flash_page: 128,
    eeprom_size: 1024,
    eeprom_page: 4,
    flash_write: us(4_500),
    eeprom_write: us(3_600),
    chip_erase: us(9_000),
    fuse_write: us(4_500),
    stk500_devcode: 0x86,
    pagel: 0xD7,
    bs2: 0xC2,
    default_fuses: [0x62, 0xD9, 0xFF],
    efuse_mask: 0x07,
};

/// ATmega2560: 256 KiB flash in 256-byte pages (extended addressing above 128 KiB),
/// 4 KiB EEPROM in 8-byte pages.
pub const ATMEGA2560: Part = Part {
    name: "atmega2560",
    avrdude_id: "m2560",
    signature: [0x1E, 0x98, 0x01],
    flash_size: 256 * 1024,
    flash_page: 256,
    eeprom_size: 4096,
    eeprom_page: 8,
    flash_write: us(4_500),
    eeprom_write: us(9_000),
    chip_erase: us(9_000),
    fuse_write: us(9_000),
    stk500_devcode: 0xB2,
    pagel: 0xD7,
    bs2: 0xA0,
    default_fuses: [0x62, 0x99, 0xFF],
    efuse_mask: 0x07,
};

/// Every part this crate knows.
pub static PARTS: [Part; 2] = [ATMEGA328P, ATMEGA2560];
