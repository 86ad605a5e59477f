//! The simulated chip's memories and their semantics: flash, option bytes, OTP, SRAM,
//! system memory and the device-signature window.

use std::fmt;

use zeroize::Zeroize;

use crate::part::{Part, RdpLevel, RdpScheme};

/// Erased flash, option-byte and OTP value.
pub(crate) const ERASED: u8 = 0xFF;

/// Why a write or erase failed inside the chip (the bootloader answers NACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemError {
    /// Address not writable (or not readable) through the bootloader.
    Address,
    /// Sector write-protected.
    WriteProtected,
    /// F1: programming a half-word that is not erased (PGERR).
    NotErased,
    /// OTP block locked.
    OtpLocked,
}

/// What a memory write did besides writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteEffect {
    /// Nothing more.
    None,
    /// Option bytes were rewritten: the bootloader resets the chip.
    Reset,
}

/// All memories of one chip.
pub(crate) struct Memory {
    pub(crate) part: &'static Part,
    pub(crate) flash: Vec<u8>,
    pub(crate) options: [u8; 16],
    /// OTP data followed by the lock bytes (empty without OTP).
    pub(crate) otp: Vec<u8>,
    pub(crate) ram: Vec<u8>,
    pub(crate) system_memory: Vec<u8>,
    pub(crate) uid: [u8; 12],
    /// Flash size register value, KiB.
    pub(crate) flash_kib: u16,
}

impl Memory {
    pub(crate) fn new(part: &'static Part, uid: [u8; 12]) -> Self {
        let otp = part
            .otp
            .map(|o| vec![ERASED; (o.data_len() + o.blocks) as usize])
            .unwrap_or_default();
        // The ROM's contents are not modelled; a fixed pattern stands in for them.
        let sys_len = (part.system_memory.end - part.system_memory.start) as usize;
        let system_memory = (0..sys_len)
            .map(|i| (i as u32).wrapping_mul(0x9E37_79B1).to_le_bytes()[3])
            .collect();
        Memory {
            part,
            flash: vec![ERASED; part.flash_size as usize],
            options: part.option_defaults,
            otp,
            ram: vec![0; (part.ram.end - part.ram.start) as usize],
            system_memory,
            uid,
            flash_kib: (part.flash_size / 1024) as u16,
        }
    }

    pub(crate) fn rdp(&self) -> RdpLevel {
        self.part.rdp_level(&self.options)
    }

    fn in_range(start: u32, end: u32, address: u32, len: u32) -> bool {
        address >= start && u64::from(address) + u64::from(len) <= u64::from(end)
    }

    /// Reads through the bootloader's view of the address space (no RDP check here).
    pub(crate) fn read(&self, address: u32, len: u32) -> Option<Vec<u8>> {
        let p = self.part;
        let slice = |base: u32, mem: &[u8]| {
            let s = (address - base) as usize;
            Some(mem[s..s + len as usize].to_vec())
        };
        if Self::in_range(p.flash_base, p.flash_base + p.flash_size, address, len) {
            return slice(p.flash_base, &self.flash);
        }
        if Self::in_range(p.ram.start, p.ram.end, address, len) {
            return slice(p.ram.start, &self.ram);
        }
        let ob = p.option_range();
        if Self::in_range(ob.start, ob.end, address, len) {
            return slice(ob.start, &self.options);
        }
        if let Some(o) = p.otp {
            let r = o.range();
            if Self::in_range(r.start, r.end, address, len) {
                return slice(r.start, &self.otp);
            }
        }
        let w = &p.signature_window;
        if Self::in_range(w.start, w.end, address, len) {
            return slice(w.start, &self.signature_window());
        }
        let sm = &p.system_memory;
        if Self::in_range(sm.start, sm.end, address, len) {
            return slice(sm.start, &self.system_memory);
        }
        None
    }

    /// Whether a Read Memory at `address` is accepted at the address phase.
    pub(crate) fn readable(&self, address: u32) -> bool {
        self.read(address, 1).is_some()
    }

    /// Whether a Write Memory at `address` is accepted at the address phase.
    pub(crate) fn writable(&self, address: u32) -> bool {
        let p = self.part;
        if address % 4 != 0 {
            return false;
        }
        let in_otp = p.otp.is_some_and(|o| o.range().contains(&address));
        p.flash().contains(&address)
            || (address >= p.ram_free && p.ram.contains(&address))
            || p.option_range().contains(&address)
            || in_otp
    }

    /// The device-signature window: flash-size register and UID, the rest reads 0xFF.
    fn signature_window(&self) -> Vec<u8> {
        let p = self.part;
        let w = &p.signature_window;
        let mut out = vec![ERASED; (w.end - w.start) as usize];
        let u = (p.uid_address - w.start) as usize;
        out[u..u + 12].copy_from_slice(&self.uid);
        let f = (p.flash_size_address - w.start) as usize;
        out[f..f + 2].copy_from_slice(&self.flash_kib.to_le_bytes());
        out
    }

    /// Whether the sector at `index` is write-protected.
    pub(crate) fn sector_protected(&self, index: usize) -> bool {
        let o = self.part.wrp_offset;
        match self.part.rdp {
            // F1 medium density: WRP0..WRP3 at even offsets, one bit per 4 pages, 0 = protected.
            RdpScheme::F1 => {
                let bit = index / 4;
                let byte = self.options[o + 2 * (bit / 8)];
                byte & (1 << (bit % 8)) == 0
            }
            // F4: nWRP bits 0..11 in two bytes, 0 = protected.
            RdpScheme::F4 => {
                let word = u16::from_le_bytes([self.options[o], self.options[o + 1]]);
                index < 12 && word & (1 << index) == 0
            }
        }
    }

    /// Write Protect: protects the listed sector codes.
    pub(crate) fn write_protect(&mut self, codes: &[u8]) -> Result<(), MemError> {
        let o = self.part.wrp_offset;
        for &c in codes {
            match self.part.rdp {
                RdpScheme::F1 => {
                    if c >= 32 {
                        return Err(MemError::Address);
                    }
                    let i = o + 2 * (usize::from(c) / 8);
                    self.options[i] &= !(1 << (c % 8));
                    self.options[i + 1] = !self.options[i];
                }
                RdpScheme::F4 => {
                    if c >= 12 {
                        return Err(MemError::Address);
                    }
                    let mut word = u16::from_le_bytes([self.options[o], self.options[o + 1]]);
                    word &= !(1 << c);
                    self.options[o..o + 2].copy_from_slice(&word.to_le_bytes());
                }
            }
        }
        Ok(())
    }

    /// Write Unprotect: every sector writable again.
    pub(crate) fn write_unprotect(&mut self) {
        let o = self.part.wrp_offset;
        match self.part.rdp {
            RdpScheme::F1 => {
                for k in 0..4 {
                    self.options[o + 2 * k] = 0xFF;
                    self.options[o + 2 * k + 1] = 0x00;
                }
            }
            RdpScheme::F4 => {
                self.options[o] = 0xFF;
                self.options[o + 1] |= 0x0F;
            }
        }
    }

    /// Readout Protect: RDP to level 1.
    pub(crate) fn readout_protect(&mut self) {
        let r = self.part.rdp_offset;
        self.options[r] = 0x00;
        if self.part.rdp == RdpScheme::F1 {
            self.options[r + 1] = 0xFF;
        }
    }

    /// Readout Unprotect: mass erase, then RDP level 0 (F1: option bytes back to defaults,
    /// which also clears write protection).
    pub(crate) fn readout_unprotect(&mut self) {
        self.flash.fill(ERASED);
        match self.part.rdp {
            RdpScheme::F1 => self.options = self.part.option_defaults,
            RdpScheme::F4 => self.options[self.part.rdp_offset] = 0xAA,
        }
    }

    /// Writes `data` at `address` (Write Memory). `limit` programs only that many bytes
    /// (a brown-out stops the write part-way).
    pub(crate) fn write(
        &mut self,
        address: u32,
        data: &[u8],
        limit: usize,
    ) -> Result<WriteEffect, MemError> {
        let p = self.part;
        let len = u32::try_from(data.len()).map_err(|_| MemError::Address)?;
        if Self::in_range(p.flash_base, p.flash_base + p.flash_size, address, len) {
            return self
                .write_flash(address, data, limit)
                .map(|()| WriteEffect::None);
        }
        if address >= p.ram_free && Self::in_range(p.ram.start, p.ram.end, address, len) {
            let s = (address - p.ram.start) as usize;
            let n = limit.min(data.len());
            self.ram[s..s + n].copy_from_slice(&data[..n]);
            return Ok(WriteEffect::None);
        }
        let ob = p.option_range();
        if Self::in_range(ob.start, ob.end, address, len) {
            // The option area is erased, then the given bytes programmed.
            let s = (address - ob.start) as usize;
            self.options = [ERASED; 16];
            let n = limit.min(data.len());
            self.options[s..s + n].copy_from_slice(&data[..n]);
            return Ok(WriteEffect::Reset);
        }
        if let Some(o) = p.otp {
            let r = o.range();
            if Self::in_range(r.start, r.end, address, len) {
                let s = (address - r.start) as usize;
                for (i, &d) in data.iter().enumerate().take(limit) {
                    let at = s + i;
                    if (at as u32) < o.data_len() {
                        let block = at as u32 / o.block_size;
                        if self.otp[(o.data_len() + block) as usize] == 0x00 {
                            return Err(MemError::OtpLocked);
                        }
                    }
                    self.otp[at] &= d;
                }
                return Ok(WriteEffect::None);
            }
        }
        Err(MemError::Address)
    }

    fn write_flash(&mut self, address: u32, data: &[u8], limit: usize) -> Result<(), MemError> {
        let p = self.part;
        let off = (address - p.flash_base) as usize;
        // Write protection of every sector touched.
        let last = address + data.len().saturating_sub(1) as u32;
        let (first_s, last_s) = (p.sector_of(address), p.sector_of(last));
        if let (Some(a), Some(b)) = (first_s, last_s) {
            if (a..=b).any(|s| self.sector_protected(s)) {
                return Err(MemError::WriteProtected);
            }
        }
        let unit = p.timing.program_unit as usize;
        let n = limit.min(data.len());
        for (u, chunk) in data[..n].chunks(unit).enumerate() {
            let at = off + u * unit;
            let cell = &mut self.flash[at..at + chunk.len()];
            if p.rdp == RdpScheme::F1 {
                // STM32F1: a half-word must be erased before it is programmed, except that
                // 0x0000 may always be written; otherwise PGERR and nothing is written.
                let erased = cell.iter().all(|&b| b == ERASED);
                let zero = chunk.iter().all(|&b| b == 0);
                if !erased && !zero {
                    return Err(MemError::NotErased);
                }
                cell.copy_from_slice(chunk);
            } else {
                for (c, d) in cell.iter_mut().zip(chunk) {
                    *c &= d;
                }
            }
        }
        Ok(())
    }

    /// Erases the listed sectors; with `limit`, only the first `limit` of them (brown-out).
    pub(crate) fn erase_sectors(
        &mut self,
        sectors: &[usize],
        limit: usize,
    ) -> Result<(), MemError> {
        let layout = self.part.sector_layout();
        if sectors.iter().any(|&s| s >= layout.len()) {
            return Err(MemError::Address);
        }
        if sectors.iter().any(|&s| self.sector_protected(s)) {
            return Err(MemError::WriteProtected);
        }
        for &s in sectors.iter().take(limit) {
            let (a, size) = layout[s];
            let o = (a - self.part.flash_base) as usize;
            self.flash[o..o + size as usize].fill(ERASED);
        }
        Ok(())
    }

    /// Mass erase (refused while any sector is write-protected).
    pub(crate) fn mass_erase(&mut self, limit_fraction_half: bool) -> Result<(), MemError> {
        let n = self.part.sector_layout().len();
        if (0..n).any(|s| self.sector_protected(s)) {
            return Err(MemError::WriteProtected);
        }
        let end = if limit_fraction_half {
            self.flash.len() / 2
        } else {
            self.flash.len()
        };
        self.flash[..end].fill(ERASED);
        Ok(())
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // Flash and OTP may hold identity keys.
        self.flash.zeroize();
        self.otp.zeroize();
        self.ram.zeroize();
    }
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory")
            .field("part", &self.part.device_type)
            .field("rdp", &self.rdp())
            .finish_non_exhaustive()
    }
}
