//! The simulated AVR: memories, fuses, lock bits and the serial programming instruction set.

use std::time::Duration;

use zeroize::Zeroize;

use crate::part::Part;

/// Erased flash, EEPROM, fuse-less lock byte.
pub const ERASED: u8 = 0xFF;

/// What a flash or EEPROM read returns over the programming interface while verification
/// is disabled (lock bit LB2 programmed, i.e. LB mode 3).
///
/// The datasheets only say that "verification is disabled"; this simulator returns `0x00`
/// for every such read, so a locked chip can never pass a blank check (which looks for
/// `0xFF`) or be mistaken for an erased one. Firmware on the chip (the provisioning agent)
/// still reads its own flash normally.
pub const LOCKED_READ: u8 = 0x00;

/// What a read returns when no chip answers on the ISP lines (no target, target in reset but
/// not in programming mode): MISO stays low, which is why avrdude reports a signature of
/// `0x000000` for a missing target.
pub const NO_ANSWER: u8 = 0x00;

/// Bits of the lock byte that exist (BLB12, BLB11, BLB02, BLB01, LB2, LB1); bits 7:6 read 1.
pub const LOCK_BITS: u8 = 0x3F;

/// Bit of the high fuse that keeps EEPROM through a chip erase when programmed (0).
pub const EESAVE: u8 = 0x08;

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChipStats {
    /// SPI instructions executed (while present).
    pub instructions: u64,
    /// Flash pages written.
    pub page_writes: u64,
    /// EEPROM byte or page writes.
    pub eeprom_writes: u64,
    /// Chip erases.
    pub chip_erases: u64,
    /// Instructions ignored because a write or erase was still in progress.
    pub ignored_busy: u64,
    /// Writes ignored because lock bits forbid them.
    pub ignored_locked: u64,
    /// Instructions ignored because programming was not enabled.
    pub ignored_not_enabled: u64,
}

/// One simulated AVR chip.
///
/// It executes the AVR serial programming instruction set (`AC 53`, `AC 80`, `40`/`48`,
/// `4C`, `4D`, `20`/`28`, `C0`/`C1`/`C2`, `A0`, `30`, `38`, `58 00`, `AC E0`, fuse reads and
/// writes, `F0` poll) with these rules:
///
/// - flash erases to `0xFF` and a page write only clears bits (`new = old & buffer`); the page
///   buffer reads `0xFF` where nothing was loaded and is cleared after each write;
/// - an EEPROM write replaces the byte (the chip erases and writes it);
/// - the lock byte's unused bits 7:6 read 1 (writing `0x0F` reads back `0xCF`); lock bits
///   can only be cleared, and only a chip erase sets them again;
/// - LB mode 2 or 3 (LB1 or LB2 programmed): flash and EEPROM writes and fuse writes are
///   ignored; with LB2 programmed (mode 3, lock byte `xxxxxx00`) verification is disabled
///   too and flash/EEPROM reads return [`LOCKED_READ`];
/// - a chip erase clears flash, EEPROM (unless EESAVE is programmed) and the lock bits;
/// - writes and erases take the part's time; instructions other than the `F0` poll that
///   arrive before it has passed are ignored (as on a real part that is busy), and counted.
///
/// Inspection methods (`flash`, `eeprom`, `lock`, ...) look at the silicon and bypass the
/// lock. `Debug` shows no memory contents.
pub struct AvrChip {
    part: &'static Part,
    flash: Vec<u8>,
    eeprom: Vec<u8>,
    lock: u8,
    fuses: [u8; 3],
    calibration: u8,
    page_buffer: Vec<u8>,
    eeprom_buffer: Vec<Option<u8>>,
    ext_addr: u8,
    /// Programming Enable accepted since the last reset.
    enabled: bool,
    /// RESET held low by the programmer.
    in_reset: bool,
    /// A chip is on the ISP lines at all.
    present: bool,
    busy_until: Duration,
    stats: ChipStats,
}

impl std::fmt::Debug for AvrChip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvrChip")
            .field("part", &self.part.name)
            .field("lock", &format_args!("0x{:02x}", self.lock))
            .field("fuses", &self.fuses)
            .field("enabled", &self.enabled)
            .field("in_reset", &self.in_reset)
            .field("present", &self.present)
            .finish_non_exhaustive()
    }
}

impl Drop for AvrChip {
    fn drop(&mut self) {
        // Flash and EEPROM may hold identity keys.
        self.flash.zeroize();
        self.eeprom.zeroize();
        self.page_buffer.zeroize();
    }
}

impl AvrChip {
    /// A factory-fresh chip: everything erased, factory fuses, lock `0xFF`, running (not in reset).
    pub fn new(part: &'static Part) -> Self {
        AvrChip {
            part,
            flash: vec![ERASED; part.flash_size as usize],
            eeprom: vec![ERASED; part.eeprom_size as usize],
            lock: ERASED,
            fuses: part.default_fuses,
            calibration: 0x9C,
            page_buffer: vec![ERASED; part.flash_page as usize],
            eeprom_buffer: vec![None; part.eeprom_page as usize],
            ext_addr: 0,
            enabled: false,
            in_reset: false,
            present: true,
            busy_until: Duration::ZERO,
            stats: ChipStats::default(),
        }
    }

    /// The part.
    pub fn part(&self) -> &'static Part {
        self.part
    }

    // ---- inspection and set-up (tests, state files) ----

    /// Flash contents (all of it, ignoring the lock).
    pub fn flash(&self) -> &[u8] {
        &self.flash
    }

    /// EEPROM contents (ignoring the lock).
    pub fn eeprom(&self) -> &[u8] {
        &self.eeprom
    }

    /// The lock byte as a read returns it (bits 7:6 always 1).
    pub fn lock(&self) -> u8 {
        self.lock
    }

    /// Fuses: low, high, extended.
    pub fn fuses(&self) -> [u8; 3] {
        self.fuses
    }

    /// The calibration byte (`38 00 00 00`).
    pub fn calibration(&self) -> u8 {
        self.calibration
    }

    /// Counters.
    pub fn stats(&self) -> ChipStats {
        self.stats
    }

    /// Whether the programmer holds RESET low (the firmware, and so the agent, is not running).
    pub fn in_reset(&self) -> bool {
        self.in_reset
    }

    /// Whether programming is enabled (Programming Enable accepted since the last reset).
    pub fn programming_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a chip is on the ISP lines.
    pub fn present(&self) -> bool {
        self.present
    }

    /// Removes the chip from the ISP lines (or puts it back).
    pub fn set_present(&mut self, present: bool) {
        self.present = present;
    }

    /// Overwrites flash at `offset` (no AND: this models the silicon, e.g. loading a state).
    /// Bytes outside flash are ignored.
    pub fn load_flash(&mut self, offset: usize, data: &[u8]) {
        copy_clipped(&mut self.flash, offset, data);
    }

    /// Overwrites EEPROM at `offset`; bytes outside are ignored.
    pub fn load_eeprom(&mut self, offset: usize, data: &[u8]) {
        copy_clipped(&mut self.eeprom, offset, data);
    }

    /// Sets the lock byte (unused bits forced to 1).
    pub fn set_lock(&mut self, lock: u8) {
        self.lock = lock | !LOCK_BITS;
    }

    /// Sets the fuses (unused extended-fuse bits forced to 1).
    pub fn set_fuses(&mut self, fuses: [u8; 3]) {
        self.fuses = [fuses[0], fuses[1], fuses[2] | !self.part.efuse_mask];
    }

    /// Sets the calibration byte.
    pub fn set_calibration(&mut self, value: u8) {
        self.calibration = value;
    }

    // ---- the pins ----

    /// The programmer drives RESET: `true` holds the chip in reset. A rising or falling edge
    /// resets the programming state (Programming Enable must be sent again).
    pub fn set_reset(&mut self, held: bool) {
        if held != self.in_reset {
            self.reset_state();
        }
        self.in_reset = held;
    }

    /// A reset pulse while RESET is held (as `start_pmode` gives one).
    pub fn pulse_reset(&mut self) {
        self.reset_state();
    }

    /// The supply dropped and the chip reset: programming is no longer enabled.
    pub fn brown_out(&mut self) {
        self.reset_state();
    }

    fn reset_state(&mut self) {
        self.enabled = false;
        self.ext_addr = 0;
        self.page_buffer.fill(ERASED);
        self.eeprom_buffer.fill(None);
    }

    /// Lock bits mode 2 or 3 (or the undocumented LB2-only setting): no writes over ISP.
    pub fn programming_locked(&self) -> bool {
        self.lock & 0x03 != 0x03
    }

    /// LB2 programmed (mode 3): reads over ISP return [`LOCKED_READ`].
    pub fn verification_locked(&self) -> bool {
        self.lock & 0x02 == 0
    }

    /// EESAVE programmed: chip erase keeps EEPROM.
    pub fn eesave(&self) -> bool {
        self.fuses[1] & EESAVE == 0
    }

    /// Whether a write or erase started before `now` is still running.
    pub fn busy(&self, now: Duration) -> bool {
        now < self.busy_until
    }

    // ---- the serial programming instruction set ----

    /// Executes one 4-byte instruction that completes at simulated time `now` and returns
    /// the byte the chip shifts out during the fourth byte.
    pub fn spi(&mut self, cmd: [u8; 4], now: Duration, write_times: bool) -> u8 {
        if !self.present {
            return NO_ANSWER;
        }
        let [a, b, c, d] = cmd;
        if a == 0xAC && b == 0x53 {
            // Programming Enable works whenever the chip is held in reset.
            if self.in_reset {
                self.enabled = true;
            }
            return NO_ANSWER;
        }
        if !self.enabled {
            self.stats.ignored_not_enabled += 1;
            return NO_ANSWER;
        }
        self.stats.instructions += 1;
        if a == 0xF0 {
            // Poll RDY/BSY: bit 0 set while busy.
            return u8::from(self.busy(now));
        }
        if self.busy(now) {
            self.stats.ignored_busy += 1;
            return ERASED;
        }
        let wait = |t: Duration| if write_times { t } else { Duration::ZERO };
        match a {
            0xAC => match b {
                0x80..=0x9F => {
                    self.chip_erase();
                    self.busy_until = now + wait(self.part.chip_erase);
                }
                0xE0..=0xFF => {
                    // Lock bits can only be cleared.
                    self.lock &= d | !LOCK_BITS;
                    self.busy_until = now + wait(self.part.fuse_write);
                }
                0xA0 | 0xA8 | 0xA4 => {
                    if self.programming_locked() {
                        self.stats.ignored_locked += 1;
                    } else {
                        match b {
                            0xA0 => self.fuses[0] = d,
                            0xA8 => self.fuses[1] = d,
                            _ => self.fuses[2] = d | !self.part.efuse_mask,
                        }
                        self.busy_until = now + wait(self.part.fuse_write);
                    }
                }
                _ => {}
            },
            0x40 | 0x48 => {
                let words = (self.part.flash_page / 2) as usize;
                let word = usize::from(u16::from_be_bytes([b, c])) % words;
                let i = word * 2 + usize::from(a == 0x48);
                self.page_buffer[i] = d;
            }
            0x4C => {
                let word = (u32::from(self.ext_addr) << 16) | u32::from(u16::from_be_bytes([b, c]));
                let page_bytes = self.part.flash_page;
                let start = ((word * 2) / page_bytes * page_bytes) % self.part.flash_size;
                if self.programming_locked() {
                    self.stats.ignored_locked += 1;
                } else {
                    let start = start as usize;
                    for (cell, v) in self.flash[start..start + page_bytes as usize]
                        .iter_mut()
                        .zip(&self.page_buffer)
                    {
                        *cell &= v;
                    }
                    self.stats.page_writes += 1;
                    self.busy_until = now + wait(self.part.flash_write);
                }
                self.page_buffer.fill(ERASED);
            }
            0x4D => self.ext_addr = c,
            0x20 | 0x28 => {
                if self.verification_locked() {
                    return LOCKED_READ;
                }
                let word = (u32::from(self.ext_addr) << 16) | u32::from(u16::from_be_bytes([b, c]));
                let i = ((word * 2) % self.part.flash_size) as usize + usize::from(a == 0x28);
                return self.flash[i];
            }
            0xA0 => {
                if self.verification_locked() {
                    return LOCKED_READ;
                }
                return self.eeprom[self.eeprom_index(b, c)];
            }
            0xC0 => {
                if self.programming_locked() {
                    self.stats.ignored_locked += 1;
                } else {
                    let i = self.eeprom_index(b, c);
                    self.eeprom[i] = d;
                    self.stats.eeprom_writes += 1;
                    self.busy_until = now + wait(self.part.eeprom_write);
                }
            }
            0xC1 => {
                let i = usize::from(c) % self.eeprom_buffer.len();
                self.eeprom_buffer[i] = Some(d);
            }
            0xC2 => {
                if self.programming_locked() {
                    self.stats.ignored_locked += 1;
                } else {
                    let page = self.part.eeprom_page as usize;
                    let start = self.eeprom_index(b, c) / page * page;
                    for (k, v) in self.eeprom_buffer.iter().enumerate() {
                        if let Some(v) = v {
                            self.eeprom[start + k] = *v;
                        }
                    }
                    self.stats.eeprom_writes += 1;
                    self.busy_until = now + wait(self.part.eeprom_write);
                }
                self.eeprom_buffer.fill(None);
            }
            0x30 => {
                return match c & 0x03 {
                    i @ 0..=2 => self.part.signature[usize::from(i)],
                    _ => ERASED,
                };
            }
            0x38 => return self.calibration,
            0x58 => {
                return match b {
                    0x00 => self.lock,
                    0x08 => self.fuses[1],
                    _ => ERASED,
                }
            }
            0x50 => {
                return match b {
                    0x00 => self.fuses[0],
                    0x08 => self.fuses[2],
                    _ => ERASED,
                }
            }
            _ => {}
        }
        NO_ANSWER
    }

    fn eeprom_index(&self, hi: u8, lo: u8) -> usize {
        usize::from(u16::from_be_bytes([hi, lo])) % self.eeprom.len()
    }

    fn chip_erase(&mut self) {
        self.flash.fill(ERASED);
        if !self.eesave() {
            self.eeprom.fill(ERASED);
        }
        self.lock = ERASED;
        self.stats.chip_erases += 1;
    }
}

fn copy_clipped(dst: &mut [u8], offset: usize, data: &[u8]) {
    if offset >= dst.len() {
        return;
    }
    let n = data.len().min(dst.len() - offset);
    dst[offset..offset + n].copy_from_slice(&data[..n]);
}
