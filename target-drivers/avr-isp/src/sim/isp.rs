//! The ArduinoISP programmer: STK500v1 exactly as the sketch answers it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashgate_serial::SerialDevice;

use crate::sim::{lock, AvrFault, AvrTiming, Shared};
use crate::stk::*;

/// Hardware version the sketch reports (`HWVER`).
pub const HW_VERSION: u8 = 2;
/// Software major version (`SWMAJ`).
pub const SW_MAJOR: u8 = 1;
/// Software minor version (`SWMIN`).
pub const SW_MINOR: u8 = 18;
/// The sketch's global block buffer (`uint8_t buff[256]`).
pub const BUFFER_SIZE: usize = 256;
/// EEPROM bytes the sketch writes per `fill` (`EECHUNK`).
const EECHUNK: usize = 32;

/// Device parameters from `Cmnd_STK_SET_DEVICE`, as the sketch keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Param {
    /// Device code.
    pub devicecode: u8,
    /// Flash page size in bytes (big-endian in the command).
    pub pagesize: u16,
    /// EEPROM size in bytes.
    pub eepromsize: u16,
    /// Flash size in bytes.
    pub flashsize: u32,
}

/// The programmer side of the simulator: an Arduino running the ArduinoISP sketch
/// (version 1.18, `HWVER 2`), wired to the simulated target.
///
/// Byte for byte what the sketch does, including its quirks:
///
/// - every command ends with `Sync_CRC_EOP` (`0x20`); a wrong end byte gives `STK_NOSYNC`
///   (`0x15`) alone, but the command's action (set address, enter programming mode, the
///   SPI instruction of `UNIVERSAL`, an EEPROM write) has already happened, as in the
///   sketch;
/// - `GET_PARAMETER` answers 2 for `0x80`, 1 for `0x81`, 18 for `0x82`, `'S'` for `0x93`
///   and 0 for anything else (`0x98` included);
/// - `SET_DEVICE_EXT` always reads 5 parameter bytes;
/// - `LOAD_ADDRESS` takes a word address, low byte first; flash `PROG_PAGE`/`READ_PAGE`
///   advance it by one per word; EEPROM ones use it doubled as a byte address and leave it;
/// - flash `PROG_PAGE` loads words and commits a page whenever the address crosses a page
///   boundary (page size from `SET_DEVICE`), then once at the end, each commit followed
///   by the 30 ms LED delay; an odd length writes one stale buffer byte, as in the sketch;
///   lengths above the sketch's 256-byte buffer (which would overrun its RAM) are refused
///   with `STK_FAILED`;
/// - EEPROM `PROG_PAGE` writes byte by byte (`C0`) with a 45 ms delay each and fails
///   without reading the data if the length exceeds the EEPROM size from `SET_DEVICE`;
/// - an unknown memory type in `PROG_PAGE` is answered `STK_FAILED` at once, the data left
///   to be read as commands; in `READ_PAGE` it gives `STK_INSYNC STK_FAILED`;
/// - `ENTER_PROGMODE` resets the target and enables programming only if not already in
///   programming mode; `LEAVE_PROGMODE` releases RESET, so the target's firmware runs;
/// - a stray `0x20` gives `STK_NOSYNC`; an unknown command followed by `0x20` gives
///   `STK_UNKNOWN`, else `STK_NOSYNC`.
///
/// Time: input bytes take their wire time, then each command its SPI instructions, the
/// sketch's delays and its reply's wire time ([`AvrTiming`]). The board keeps one clock for
/// all programmer sessions, which the chip's write times run on.
///
/// The Arduino is modelled with auto-reset disabled (the usual ArduinoISP set-up, a
/// capacitor on RESET): a host closing and reopening the port only loses a half-received
/// command ([`SerialDevice::reset_link`]); programming mode and the address survive.
#[derive(Debug)]
pub struct ArduinoIsp {
    shared: Arc<Mutex<Shared>>,
    timing: AvrTiming,
    rx: Vec<u8>,
    pmode: bool,
    error: u32,
    here: u16,
    param: Param,
    buff: Box<[u8; BUFFER_SIZE]>,
}

/// What a fault does to one command.
#[derive(Debug, Clone, Copy, Default)]
struct Effects {
    brown_out: bool,
    drop_last: bool,
    corrupt_first: bool,
    corrupt_data: bool,
}

impl ArduinoIsp {
    pub(crate) fn new(shared: Arc<Mutex<Shared>>, timing: AvrTiming) -> Self {
        ArduinoIsp {
            shared,
            timing,
            rx: Vec::new(),
            pmode: false,
            error: 0,
            here: 0,
            param: Param::default(),
            buff: Box::new([0; BUFFER_SIZE]),
        }
    }

    /// The board's simulated clock (shared by every programmer made for the board).
    pub fn now(&self) -> Duration {
        lock(&self.shared).isp_time
    }

    /// Whether the sketch is in programming mode.
    pub fn pmode(&self) -> bool {
        self.pmode
    }

    /// The sketch's error counter (lights its error LED when non-zero).
    pub fn errors(&self) -> u32 {
        self.error
    }

    /// The parameters from the last `SET_DEVICE`.
    pub fn param(&self) -> Param {
        self.param
    }

    /// The current word address (`here`).
    pub fn address(&self) -> u16 {
        self.here
    }

    /// Length of the command at the front of `rx`, if all of it has arrived.
    fn complete_len(&self) -> Option<usize> {
        let cmd = *self.rx.first()?;
        let len = match cmd {
            GET_SYNC | GET_SIGN_ON | ENTER_PROGMODE | LEAVE_PROGMODE | READ_SIGN => 2,
            GET_PARAMETER | PROG_DATA => 3,
            SET_DEVICE => 22,
            SET_DEVICE_EXT => 7,
            LOAD_ADDRESS | PROG_FLASH => 4,
            UNIVERSAL => 6,
            READ_PAGE => 5,
            EOP => 1,
            PROG_PAGE => {
                if self.rx.len() < 4 {
                    return None;
                }
                let length = usize::from(u16::from_be_bytes([self.rx[1], self.rx[2]]));
                match self.rx[3] {
                    MEM_FLASH => 4 + length + 1,
                    MEM_EEPROM if length > usize::from(self.param.eepromsize) => 5,
                    MEM_EEPROM => 4 + length + 1,
                    _ => 4,
                }
            }
            _ => 2,
        };
        (self.rx.len() >= len).then_some(len)
    }

    /// Runs one complete command from the front of `rx`; `None` if more bytes are needed.
    fn step(&mut self, s: &mut Shared) -> Option<Vec<u8>> {
        let len = self.complete_len()?;
        let bytes: Vec<u8> = self.rx.drain(..len).collect();
        let mut fx = Effects::default();
        for fault in s.take_faults(bytes[0]) {
            match fault {
                AvrFault::NoAnswer(_) => return Some(Vec::new()),
                AvrFault::NoSync(_) => return Some(vec![NOSYNC]),
                AvrFault::Failed(_) => {
                    // Shaped as avrdude expects a failure: the data bytes, then STK_FAILED.
                    let mut v = vec![INSYNC];
                    v.resize(1 + reply_data_len(&bytes), 0);
                    v.push(FAILED);
                    return Some(v);
                }
                AvrFault::BrownOut(_) => fx.brown_out = true,
                AvrFault::DropReplyByte(_) => fx.drop_last = true,
                AvrFault::CorruptReply(_) => fx.corrupt_first = true,
                AvrFault::CorruptData(_) => fx.corrupt_data = true,
                AvrFault::NoTarget | AvrFault::AgentCorrupt | AvrFault::AgentSilent => {}
            }
        }
        let mut out = self.execute(s, &bytes, fx.brown_out);
        if fx.brown_out && bytes[0] != PROG_PAGE {
            s.chip.brown_out();
        }
        if fx.corrupt_data && out.len() >= 3 {
            let mid = out.len() / 2;
            out[mid] ^= 0x01;
        } else if fx.corrupt_data || fx.corrupt_first {
            if let Some(b) = out.first_mut() {
                *b ^= 0x55;
            }
        }
        if fx.drop_last {
            out.pop();
        }
        Some(out)
    }

    /// One SPI instruction, after its transfer time.
    fn spi(&mut self, s: &mut Shared, cmd: [u8; 4]) -> u8 {
        s.isp_time += self.timing.spi(1);
        s.chip.spi(cmd, s.isp_time, self.timing.chip_write_times)
    }

    fn empty_reply(&mut self, eop: u8) -> Vec<u8> {
        if eop == EOP {
            vec![INSYNC, OK]
        } else {
            self.error += 1;
            vec![NOSYNC]
        }
    }

    fn breply(&mut self, b: u8, eop: u8) -> Vec<u8> {
        if eop == EOP {
            vec![INSYNC, b, OK]
        } else {
            self.error += 1;
            vec![NOSYNC]
        }
    }

    fn execute(&mut self, s: &mut Shared, bytes: &[u8], brown_out: bool) -> Vec<u8> {
        let cmd = bytes[0];
        match cmd {
            GET_SYNC => {
                self.error = 0;
                self.empty_reply(bytes[1])
            }
            GET_SIGN_ON => {
                if bytes[1] == EOP {
                    let mut v = vec![INSYNC];
                    v.extend_from_slice(b"AVR ISP");
                    v.push(OK);
                    v
                } else {
                    self.error += 1;
                    vec![NOSYNC]
                }
            }
            GET_PARAMETER => {
                let v = match bytes[1] {
                    PARM_HW_VER => HW_VERSION,
                    PARM_SW_MAJOR => SW_MAJOR,
                    PARM_SW_MINOR => SW_MINOR,
                    PARM_PROGMODE => b'S',
                    _ => 0,
                };
                self.breply(v, bytes[2])
            }
            SET_DEVICE => {
                let b = &bytes[1..21];
                self.param = Param {
                    devicecode: b[0],
                    pagesize: u16::from_be_bytes([b[12], b[13]]),
                    eepromsize: u16::from_be_bytes([b[14], b[15]]),
                    flashsize: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
                };
                self.empty_reply(bytes[21])
            }
            SET_DEVICE_EXT => self.empty_reply(bytes[6]),
            ENTER_PROGMODE => {
                if !self.pmode {
                    self.start_pmode(s);
                }
                self.empty_reply(bytes[1])
            }
            LEAVE_PROGMODE => {
                self.error = 0;
                // end_pmode: release the target's RESET; its firmware starts.
                s.chip.set_reset(false);
                self.pmode = false;
                self.empty_reply(bytes[1])
            }
            LOAD_ADDRESS => {
                self.here = u16::from_le_bytes([bytes[1], bytes[2]]);
                self.empty_reply(bytes[3])
            }
            PROG_FLASH => self.empty_reply(bytes[3]),
            PROG_DATA => self.empty_reply(bytes[2]),
            PROG_PAGE => self.program_page(s, bytes, brown_out),
            READ_PAGE => self.read_page(s, bytes),
            UNIVERSAL => {
                let ch = self.spi(s, [bytes[1], bytes[2], bytes[3], bytes[4]]);
                self.breply(ch, bytes[5])
            }
            READ_SIGN => {
                if bytes[1] != EOP {
                    self.error += 1;
                    return vec![NOSYNC];
                }
                let mut v = vec![INSYNC];
                for i in 0..3 {
                    v.push(self.spi(s, [0x30, 0x00, i, 0x00]));
                }
                v.push(OK);
                v
            }
            EOP => {
                self.error += 1;
                vec![NOSYNC]
            }
            _ => {
                self.error += 1;
                if bytes[1] == EOP {
                    vec![UNKNOWN]
                } else {
                    vec![NOSYNC]
                }
            }
        }
    }

    fn start_pmode(&mut self, s: &mut Shared) {
        // reset_target(true); delay(20); reset_target(false); 100 µs; reset_target(true); delay(50).
        s.chip.set_reset(true);
        s.chip.set_reset(false);
        s.chip.set_reset(true);
        s.isp_time += self.timing.pmode_enter;
        self.spi(s, [0xAC, 0x53, 0x00, 0x00]);
        self.pmode = true;
    }

    fn current_page(&self) -> u16 {
        match self.param.pagesize {
            32 => self.here & 0xFFF0,
            64 => self.here & 0xFFE0,
            128 => self.here & 0xFFC0,
            256 => self.here & 0xFF80,
            _ => self.here,
        }
    }

    fn program_page(&mut self, s: &mut Shared, bytes: &[u8], brown_out: bool) -> Vec<u8> {
        let length = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        match bytes[3] {
            MEM_FLASH => {
                let eop = bytes[4 + length];
                if length > BUFFER_SIZE {
                    // The sketch would overrun its RAM here; refuse instead.
                    self.error += 1;
                    return if eop == EOP {
                        vec![INSYNC, FAILED]
                    } else {
                        vec![NOSYNC]
                    };
                }
                self.buff[..length].copy_from_slice(&bytes[4..4 + length]);
                if eop != EOP {
                    self.error += 1;
                    return vec![NOSYNC];
                }
                let result = self.write_flash_pages(s, length, brown_out);
                vec![INSYNC, result]
            }
            MEM_EEPROM => {
                let result = if length > usize::from(self.param.eepromsize) {
                    self.error += 1;
                    FAILED
                } else {
                    self.write_eeprom(s, &bytes[4..4 + length])
                };
                let eop = if length > usize::from(self.param.eepromsize) {
                    bytes[4]
                } else {
                    bytes[4 + length]
                };
                if eop == EOP {
                    vec![INSYNC, result]
                } else {
                    self.error += 1;
                    vec![NOSYNC]
                }
            }
            _ => vec![FAILED],
        }
    }

    fn write_flash_pages(&mut self, s: &mut Shared, length: usize, brown_out: bool) -> u8 {
        let mut x = 0usize;
        let mut page = self.current_page();
        // A brown-out strikes once half of the first page's words are loaded: that page is
        // committed half written, then the target resets.
        let words = length.div_ceil(2);
        let brown_at = brown_out.then_some(words.div_ceil(2));
        let mut loaded = 0usize;
        while x < length {
            if page != self.current_page() {
                self.commit(s, page);
                page = self.current_page();
            }
            if brown_at == Some(loaded) {
                self.commit(s, page);
                s.chip.brown_out();
            }
            let [hi, lo] = self.here.to_be_bytes();
            let low = self.buff[x % BUFFER_SIZE];
            let high = self.buff[(x + 1) % BUFFER_SIZE];
            self.spi(s, [0x40, hi, lo, low]);
            self.spi(s, [0x48, hi, lo, high]);
            x += 2;
            loaded += 1;
            self.here = self.here.wrapping_add(1);
        }
        self.commit(s, page);
        OK
    }

    fn commit(&mut self, s: &mut Shared, page: u16) {
        let [hi, lo] = page.to_be_bytes();
        self.spi(s, [0x4C, hi, lo, 0]);
        s.isp_time += self.timing.commit_delay;
    }

    fn write_eeprom(&mut self, s: &mut Shared, data: &[u8]) -> u8 {
        let start = usize::from(self.here) * 2;
        for (chunk_index, chunk) in data.chunks(EECHUNK).enumerate() {
            self.buff[..chunk.len()].copy_from_slice(chunk);
            for (i, &b) in chunk.iter().enumerate() {
                let addr = start + chunk_index * EECHUNK + i;
                let [hi, lo] = (addr as u16).to_be_bytes();
                self.spi(s, [0xC0, hi, lo, b]);
                s.isp_time += self.timing.eeprom_byte_delay;
            }
        }
        OK
    }

    fn read_page(&mut self, s: &mut Shared, bytes: &[u8]) -> Vec<u8> {
        let length = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        let memtype = bytes[3];
        if bytes[4] != EOP {
            self.error += 1;
            return vec![NOSYNC];
        }
        let mut out = vec![INSYNC];
        let result = match memtype {
            MEM_FLASH => {
                let mut x = 0;
                while x < length {
                    let [hi, lo] = self.here.to_be_bytes();
                    out.push(self.spi(s, [0x20, hi, lo, 0]));
                    out.push(self.spi(s, [0x28, hi, lo, 0]));
                    self.here = self.here.wrapping_add(1);
                    x += 2;
                }
                OK
            }
            MEM_EEPROM => {
                let start = usize::from(self.here) * 2;
                for x in 0..length {
                    let [hi, lo] = ((start + x) as u16).to_be_bytes();
                    out.push(self.spi(s, [0xA0, hi, lo, 0xFF]));
                }
                OK
            }
            _ => FAILED,
        };
        out.push(result);
        out
    }
}

/// How many data bytes the sketch sends between `STK_INSYNC` and the status byte.
fn reply_data_len(bytes: &[u8]) -> usize {
    match bytes[0] {
        GET_PARAMETER | UNIVERSAL => 1,
        READ_SIGN => 3,
        READ_PAGE => {
            let length = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
            match bytes[3] {
                MEM_FLASH => length.div_ceil(2) * 2,
                MEM_EEPROM => length,
                _ => 0,
            }
        }
        _ => 0,
    }
}

impl SerialDevice for ArduinoIsp {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        let shared = Arc::clone(&self.shared);
        let mut s = lock(&shared);
        let start = s.isp_time;
        s.isp_time += self.timing.serial(input.len());
        self.rx.extend_from_slice(input);
        let mut out = Vec::new();
        while let Some(reply) = self.step(&mut s) {
            s.isp_time += self.timing.serial(reply.len());
            out.extend(reply);
        }
        (out, s.isp_time - start)
    }

    fn reset_link(&mut self) {
        self.rx.clear();
    }

    fn idle(&mut self, duration: Duration) {
        lock(&self.shared).isp_time += duration;
    }
}
