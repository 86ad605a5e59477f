//! The parts this crate knows: memory map, bootloader details, flash timing.
//!
//! Values follow ST AN2606 (bootloader per product), the reference manuals (memory maps,
//! option bytes, unique ID) and the datasheets (erase and programming times), and agree with
//! stm32flash's device table for the same PIDs.

use std::fmt;
use std::ops::Range;

use flashgate_target::{Location, Space};

/// How a part encodes readout protection in its RDP option byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RdpScheme {
    /// STM32F1: RDP = 0xA5 with nRDP = 0x5A is unprotected, anything else is level 1.
    /// There is no level 2.
    F1,
    /// STM32F2/F4: RDP = 0xAA is level 0, 0xCC is level 2 (permanent, bootloader disabled),
    /// anything else is level 1.
    F4,
}

/// Readout protection level as the chip applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RdpLevel {
    /// Level 0: no protection.
    Level0,
    /// Level 1: flash not readable from the bootloader or a debugger; Readout Unprotect
    /// mass-erases and returns to level 0.
    Level1,
    /// Level 2: permanent; the system bootloader and debug access are disabled for good.
    Level2,
}

impl RdpLevel {
    /// `0`, `1` or `2`.
    pub const fn number(self) -> u8 {
        match self {
            RdpLevel::Level0 => 0,
            RdpLevel::Level1 => 1,
            RdpLevel::Level2 => 2,
        }
    }
}

/// One-time-programmable area (F2/F4): data blocks and their lock bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtpArea {
    /// First data byte.
    pub base: u32,
    /// Number of blocks.
    pub blocks: u32,
    /// Bytes per block.
    pub block_size: u32,
    /// Address of the lock byte of block 0 (block i: `lock_base + i`; 0x00 = locked).
    pub lock_base: u32,
}

impl OtpArea {
    /// Data bytes.
    pub const fn data_len(&self) -> u32 {
        self.blocks * self.block_size
    }

    /// The whole area, data and lock bytes.
    pub const fn range(&self) -> Range<u32> {
        self.base..self.lock_base + self.blocks
    }
}

/// Flash timing of a part (datasheet typical values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashTiming {
    /// Erase time per sector size: `(size in bytes, µs)`; pages of uniform size have one entry.
    pub sector_erase_us: &'static [(u32, u32)],
    /// Mass erase.
    pub mass_erase_us: u32,
    /// Bytes programmed per programming operation (2: F1 half-words; 4: F4 words at x32).
    pub program_unit: u32,
    /// Time of one programming operation, ns.
    pub program_unit_ns: u32,
    /// Option-byte erase and rewrite (Readout Protect, Write Protect, option writes).
    pub option_write_us: u32,
    /// System reset until the bootloader listens again.
    pub reset_us: u32,
}

/// One supported part.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    /// Short name used on command lines, e.g. `f103`.
    pub name: &'static str,
    /// Device type reported in [`DeviceInfo`](flashgate_target::DeviceInfo), e.g. `stm32f103-md`.
    pub device_type: &'static str,
    /// Human description.
    pub description: &'static str,
    /// Product ID returned by Get ID.
    pub pid: u16,
    /// Bootloader protocol version (Get, Get Version).
    pub bootloader_version: u8,
    /// Erase command the bootloader offers: [`CMD_ERASE`](crate::protocol::CMD_ERASE) or
    /// [`CMD_EXTENDED_ERASE`](crate::protocol::CMD_EXTENDED_ERASE).
    pub erase_command: u8,
    /// Flash bus address.
    pub flash_base: u32,
    /// Flash size in bytes (the largest of the PID's family; the flash-size register of a
    /// chip may report less).
    pub flash_size: u32,
    /// Sector (page) sizes from the start of flash; the last one repeats to the end.
    pub sectors: &'static [u32],
    /// SRAM.
    pub ram: Range<u32>,
    /// First SRAM byte the bootloader leaves to the host (below: its own variables).
    pub ram_free: u32,
    /// System memory (the bootloader ROM).
    pub system_memory: Range<u32>,
    /// Option bytes (16 bytes).
    pub option_bytes: u32,
    /// Option bytes as shipped (unprotected).
    pub option_defaults: [u8; 16],
    /// Offset of the RDP byte within the option bytes.
    pub rdp_offset: usize,
    /// RDP encoding.
    pub rdp: RdpScheme,
    /// Offset of the write-protection bytes (nWRP on F4, WRP0..3 with complements on F1).
    pub wrp_offset: usize,
    /// OTP area, if any.
    pub otp: Option<OtpArea>,
    /// 96-bit unique ID.
    pub uid_address: u32,
    /// Flash size register (u16, KiB).
    pub flash_size_address: u32,
    /// Readable device-signature window holding the UID and the flash-size register.
    pub signature_window: Range<u32>,
    /// Where firmware keeps its identity key unless the job says otherwise.
    pub default_identity: Location,
    /// What `keystore:` means on this part: `(first byte, size)`.
    pub keystore: (u32, u32),
    /// Flash timing.
    pub timing: FlashTiming,
    /// On-chip P-256 signature by the agent (software on the core), µs.
    pub sign_us: u32,
    /// On-chip SHA-256 per measured byte, ns.
    pub digest_ns_per_byte: u32,
}

/// STM32F10x medium density (PID 0x410): STM32F103x8/xB.
pub static STM32F103_MD: Part = Part {
    name: "f103",
    device_type: "stm32f103-md",
    description: "STM32F10xxx medium density (F103x8/xB), 128 KiB flash in 1 KiB pages",
    pid: 0x410,
    bootloader_version: 0x22,
    erase_command: crate::protocol::CMD_ERASE,
    flash_base: 0x0800_0000,
    flash_size: 128 * 1024,
    sectors: &[1024],
    ram: 0x2000_0000..0x2000_5000,
    ram_free: 0x2000_0200,
    system_memory: 0x1FFF_F000..0x1FFF_F800,
    option_bytes: 0x1FFF_F800,
    option_defaults: [
        0xA5, 0x5A, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF,
        0x00,
    ],
    rdp_offset: 0,
    rdp: RdpScheme::F1,
    wrp_offset: 8,
    otp: None,
    uid_address: 0x1FFF_F7E8,
    flash_size_address: 0x1FFF_F7E0,
    signature_window: 0x1FFF_F7E0..0x1FFF_F7F4,
    default_identity: Location::new(Space::Flash, 0x1_FC00),
    keystore: (0x0801_FC00, 1024),
    timing: FlashTiming {
        sector_erase_us: &[(1024, 20_000)],
        mass_erase_us: 40_000,
        program_unit: 2,
        program_unit_ns: 50_000,
        option_write_us: 40_000,
        reset_us: 5_000,
    },
    sign_us: 150_000,
    digest_ns_per_byte: 1_000,
};

/// STM32F40x/41x (PID 0x413): STM32F405/407/415/417, 1 MiB flash in sectors.
pub static STM32F4_413: Part = Part {
    name: "f4",
    device_type: "stm32f4-413",
    description:
        "STM32F40xxx/41xxx, 1 MiB flash in 16/16/16/16/64/128... KiB sectors, 512-byte OTP",
    pid: 0x413,
    bootloader_version: 0x31,
    erase_command: crate::protocol::CMD_EXTENDED_ERASE,
    flash_base: 0x0800_0000,
    flash_size: 1024 * 1024,
    sectors: &[
        16 * 1024,
        16 * 1024,
        16 * 1024,
        16 * 1024,
        64 * 1024,
        128 * 1024,
    ],
    ram: 0x2000_0000..0x2002_0000,
    ram_free: 0x2000_3000,
    system_memory: 0x1FFF_0000..0x1FFF_7800,
    option_bytes: 0x1FFF_C000,
    option_defaults: [
        0xEC, 0xAA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFF,
    ],
    rdp_offset: 1,
    rdp: RdpScheme::F4,
    wrp_offset: 8,
    otp: Some(OtpArea {
        base: 0x1FFF_7800,
        blocks: 16,
        block_size: 32,
        lock_base: 0x1FFF_7A00,
    }),
    uid_address: 0x1FFF_7A10,
    flash_size_address: 0x1FFF_7A22,
    signature_window: 0x1FFF_7A10..0x1FFF_7A24,
    default_identity: Location::new(Space::Otp, 0),
    keystore: (0x1FFF_7800, 512),
    timing: FlashTiming {
        sector_erase_us: &[
            (16 * 1024, 250_000),
            (64 * 1024, 550_000),
            (128 * 1024, 1_000_000),
        ],
        mass_erase_us: 8_000_000,
        program_unit: 4,
        program_unit_ns: 16_000,
        option_write_us: 20_000,
        reset_us: 5_000,
    },
    sign_us: 40_000,
    digest_ns_per_byte: 250,
};

/// Every part, in lookup order.
pub static PARTS: [&Part; 2] = [&STM32F103_MD, &STM32F4_413];

impl Part {
    /// A part by short name (`f103`, `f4`), device type (`stm32f103-md`, `stm32f4-413`) or
    /// PID (`0x410`, `0x413`).
    pub fn lookup(name: &str) -> Option<&'static Part> {
        let n = name.trim().to_ascii_lowercase();
        let pid = n
            .strip_prefix("0x")
            .and_then(|h| u16::from_str_radix(h, 16).ok());
        PARTS.iter().copied().find(|p| {
            p.name == n
                || p.device_type == n
                || pid == Some(p.pid)
                || (n == "f103-md" && p.pid == 0x410)
                || (n == "f407" && p.pid == 0x413)
        })
    }

    /// The part with this PID.
    pub fn by_pid(pid: u16) -> Option<&'static Part> {
        PARTS.iter().copied().find(|p| p.pid == pid)
    }

    /// Flash address range.
    pub fn flash(&self) -> Range<u32> {
        self.flash_base..self.flash_base + self.flash_size
    }

    /// Option-byte address range.
    pub fn option_range(&self) -> Range<u32> {
        self.option_bytes..self.option_bytes + 16
    }

    /// Sectors (pages) as `(address, size)`, covering all of flash.
    pub fn sector_layout(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut at = self.flash_base;
        let end = u64::from(self.flash_base) + u64::from(self.flash_size);
        let mut i = 0;
        while u64::from(at) < end {
            let size = self
                .sectors
                .get(i)
                .or(self.sectors.last())
                .copied()
                .unwrap_or(1024);
            out.push((at, size));
            at = at.saturating_add(size);
            i += 1;
        }
        out
    }

    /// Index of the sector holding `address`.
    pub fn sector_of(&self, address: u32) -> Option<usize> {
        self.sector_layout()
            .iter()
            .position(|&(a, s)| address >= a && u64::from(address) < u64::from(a) + u64::from(s))
    }

    /// Erase time of one sector of `size` bytes, µs.
    pub fn sector_erase_us(&self, size: u32) -> u32 {
        self.timing
            .sector_erase_us
            .iter()
            .find(|(s, _)| *s == size)
            .or(self.timing.sector_erase_us.last())
            .map(|(_, us)| *us)
            .unwrap_or(0)
    }

    /// Decodes the RDP option byte (and, on F1, its complement).
    pub fn rdp_level(&self, option_bytes: &[u8; 16]) -> RdpLevel {
        let rdp = option_bytes[self.rdp_offset];
        match self.rdp {
            RdpScheme::F1 => {
                if rdp == 0xA5 && option_bytes[self.rdp_offset + 1] == 0x5A {
                    RdpLevel::Level0
                } else {
                    RdpLevel::Level1
                }
            }
            RdpScheme::F4 => match rdp {
                0xAA => RdpLevel::Level0,
                0xCC => RdpLevel::Level2,
                _ => RdpLevel::Level1,
            },
        }
    }

    /// The raw RDP bytes recorded in a lock read-back: `[RDP, nRDP]` on F1, `[RDP]` on F4.
    pub fn rdp_raw(&self, option_bytes: &[u8; 16]) -> Vec<u8> {
        match self.rdp {
            RdpScheme::F1 => option_bytes[self.rdp_offset..self.rdp_offset + 2].to_vec(),
            RdpScheme::F4 => vec![option_bytes[self.rdp_offset]],
        }
    }

    /// The bus address of a secret location on this part, checked to hold `len` bytes.
    ///
    /// `flash:` offsets are relative to the flash base; an offset at or above the flash base
    /// is taken as a bus address (so `flash:0x0801FC00` and `flash:0x1FC00` are the same
    /// place). `keystore:` is the part's key-store area ([`Part::keystore`]: the reserved last
    /// flash page on the F103, the OTP area on the F4); `otp:` is the OTP data area.
    pub fn location_address(&self, at: Location, len: usize) -> Result<u32, String> {
        let len = u32::try_from(len).map_err(|_| "the secret is too long".to_owned())?;
        let (base, size, what) = match at.space {
            Space::Flash => (self.flash_base, self.flash_size, "flash"),
            Space::KeyStore => (self.keystore.0, self.keystore.1, "key store"),
            Space::Otp => match self.otp {
                Some(o) => (o.base, o.data_len(), "OTP area"),
                None => {
                    return Err(format!(
                        "the {} has no OTP area: put secrets in flash (e.g. {}) or keystore:0x0000",
                        self.device_type, self.default_identity
                    ))
                }
            },
            Space::Eeprom => {
                return Err(format!(
                    "the {} has no EEPROM: put secrets in {} or keystore:0x0000",
                    self.device_type, self.default_identity
                ))
            }
        };
        let offset = if at.space == Space::Flash && at.offset >= self.flash_base {
            at.offset - self.flash_base
        } else {
            at.offset
        };
        if u64::from(offset) + u64::from(len) > u64::from(size) {
            return Err(format!(
                "{at}+{len} lies outside the {what} of the {} ({size} bytes): fix the location in the job",
                self.device_type
            ));
        }
        Ok(base + offset)
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (PID 0x{:03x})", self.device_type, self.pid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn layouts() {
        let f1 = Part::lookup("f103").unwrap();
        assert_eq!(f1.sector_layout().len(), 128);
        assert_eq!(f1.sector_of(0x0801_FC00), Some(127));
        let f4 = Part::lookup("0x413").unwrap();
        let l = f4.sector_layout();
        assert_eq!(l.len(), 12);
        assert_eq!(l[4], (0x0801_0000, 64 * 1024));
        assert_eq!(l[11], (0x080E_0000, 128 * 1024));
        assert_eq!(f4.sector_erase_us(64 * 1024), 550_000);
        assert_eq!(Part::lookup("stm32f4-413").unwrap().pid, 0x413);
        assert!(Part::lookup("f0").is_none());
    }

    #[test]
    fn locations() {
        let f1 = &STM32F103_MD;
        assert_eq!(
            f1.location_address(Location::new(Space::Flash, 0x1_FC00), 32),
            Ok(0x0801_FC00)
        );
        assert_eq!(
            f1.location_address(Location::new(Space::Flash, 0x0801_FC00), 32),
            Ok(0x0801_FC00)
        );
        assert_eq!(
            f1.location_address(Location::new(Space::KeyStore, 0), 32),
            Ok(0x0801_FC00)
        );
        assert!(f1
            .location_address(Location::new(Space::Otp, 0), 32)
            .is_err());
        assert!(f1
            .location_address(Location::new(Space::Flash, 0x1_FFF0), 32)
            .is_err());
        let f4 = &STM32F4_413;
        assert_eq!(
            f4.location_address(Location::new(Space::Otp, 0x20), 32),
            Ok(0x1FFF_7820)
        );
    }

    #[test]
    fn rdp_decoding() {
        let f1 = &STM32F103_MD;
        let mut ob = f1.option_defaults;
        assert_eq!(f1.rdp_level(&ob), RdpLevel::Level0);
        ob[0] = 0x00;
        ob[1] = 0xFF;
        assert_eq!(f1.rdp_level(&ob), RdpLevel::Level1);
        let f4 = &STM32F4_413;
        let mut ob = f4.option_defaults;
        assert_eq!(f4.rdp_level(&ob), RdpLevel::Level0);
        ob[1] = 0xCC;
        assert_eq!(f4.rdp_level(&ob), RdpLevel::Level2);
        ob[1] = 0x00;
        assert_eq!(f4.rdp_level(&ob), RdpLevel::Level1);
    }
}
