//! The Cortex-M3's JTAG-DP (ADIv5.0, DPv0) and its AHB-AP (AP 0).
//!
//! A DPACC or APACC scan is 35 bits: RnW in bit 0, A[3:2] in bits 2:1 and the data in bits
//! 34:3 going in; the 3-bit ACK (OK/FAULT = 0b010, WAIT = 0b001) and the result of the
//! *previous* read coming out. A read therefore returns its value on the next scan, which is
//! why hosts end a sequence of AP reads with a read of RDBUFF.
//!
//! - **DP registers**: CTRL/STAT at 0x4 (power-up requests acknowledged at once, the three
//!   sticky flags write-one-to-clear as a JTAG-DP has them), SELECT at 0x8 (APSEL,
//!   APBANKSEL), RDBUFF at 0xC (the last AP read, no side effect). Address 0x0 is reserved on
//!   a JTAG-DP of this generation: there is no DPIDR (the JTAG IDCODE identifies the DP), it
//!   reads as zero.
//! - **ABORT** (its own instruction): DAPABORT cancels a stalled AP transaction. The
//!   STKCMPCLR/STKERRCLR/WDERRCLR/ORUNERRCLR bits exist only on an SW-DP; a JTAG-DP ignores
//!   them and the sticky flags are cleared through CTRL/STAT instead.
//! - **Sticky flags**: a bus error sets STICKYERR; a WAIT with ORUNDETECT set sets
//!   STICKYORUN. While any sticky flag is set, APACC transactions are discarded (answered
//!   OK/FAULT but not performed), as ADIv5 requires.
//! - **WAIT**: an AP transaction the bus stalls (flash read or programmed while the flash
//!   controller is busy) stays in progress; every DPACC/APACC scan until it completes gets
//!   WAIT and its request is ignored.
//! - **AHB-AP**: CSW (Size 8/16/32, AddrInc off/single, and packed when enabled — the
//!   Cortex-M3 r1p1 AHB-AP has no packed transfers and reads AddrInc[1] as zero), TAR, DRW,
//!   BD0–BD3, CFG (little-endian), BASE (0xE00FF003: ADIv5 ROM table at 0xE00FF000), IDR.
//!   TAR increments after each DRW transfer within its 4 KiB block: ADIv5 guarantees only
//!   the bottom 10 bits, the Cortex-M3 AHB-AP increments TAR[11:0], and OpenOCD relies on
//!   it (`tar_autoincr_block` = 4096 for Cortex-M3).

/// ACK of a scan whose previous transaction completed (ADIv5 JTAG-DP: OK and FAULT share it).
pub const ACK_OK_FAULT: u8 = 0b010;
/// ACK of a scan while a transaction is still in progress.
pub const ACK_WAIT: u8 = 0b001;

/// IDR of the Cortex-M3 r1p1 AHB-AP (revision 1, ARM, MEM-AP, AHB).
pub const AHB_AP_IDR: u32 = 0x1477_0011;
/// BASE of the AHB-AP: the ROM table at 0xE00FF000, present, ADIv5 format.
pub const AHB_AP_BASE: u32 = 0xE00F_F003;

/// CTRL/STAT bits.
pub mod ctrl {
    /// Overrun detection enable.
    pub const ORUNDETECT: u32 = 1 << 0;
    /// Sticky overrun.
    pub const STICKYORUN: u32 = 1 << 1;
    /// Sticky compare.
    pub const STICKYCMP: u32 = 1 << 4;
    /// Sticky error.
    pub const STICKYERR: u32 = 1 << 5;
    /// The last AP read completed without error.
    pub const READOK: u32 = 1 << 6;
    /// Debug reset request.
    pub const CDBGRSTREQ: u32 = 1 << 26;
    /// Debug reset acknowledge.
    pub const CDBGRSTACK: u32 = 1 << 27;
    /// Debug power-up request.
    pub const CDBGPWRUPREQ: u32 = 1 << 28;
    /// Debug power-up acknowledge.
    pub const CDBGPWRUPACK: u32 = 1 << 29;
    /// System power-up request.
    pub const CSYSPWRUPREQ: u32 = 1 << 30;
    /// System power-up acknowledge.
    pub const CSYSPWRUPACK: u32 = 1 << 31;
    /// The three sticky flags.
    pub const STICKY: u32 = STICKYORUN | STICKYCMP | STICKYERR;
    /// Bits a write stores: ORUNDETECT, TRNMODE, MASKLANE, TRNCNT and the three requests.
    pub const WRITABLE: u32 = 0x54FF_FF0D;
}

/// CSW bits of the AHB-AP.
pub mod csw {
    /// Size field.
    pub const SIZE: u32 = 0x7;
    /// AddrInc field.
    pub const ADDRINC: u32 = 0x3 << 4;
    /// AddrInc: single.
    pub const INC_SINGLE: u32 = 1 << 4;
    /// AddrInc: packed.
    pub const INC_PACKED: u32 = 2 << 4;
    /// DbgStatus (DeviceEn): AHB transfers are permitted.
    pub const DBG_STATUS: u32 = 1 << 6;
    /// TrInProg: a transfer is in progress.
    pub const TR_IN_PROG: u32 = 1 << 7;
    /// HPROT bit 0 (data access), fixed at one on the Cortex-M3.
    pub const HPROT0: u32 = 1 << 24;
    /// HPROT bits 4:1 and MasterType: writable.
    pub const PROT: u32 = 0x3E00_0000;
    /// Value after power-on.
    pub const RESET: u32 = 0x0300_0040;
}

/// Width of a bus transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 8 bits.
    Byte,
    /// 16 bits.
    Half,
    /// 32 bits.
    Word,
}

impl Size {
    /// Bytes in a transfer.
    pub const fn bytes(self) -> u32 {
        match self {
            Size::Byte => 1,
            Size::Half => 2,
            Size::Word => 4,
        }
    }

    /// The value mask.
    pub const fn mask(self) -> u32 {
        match self {
            Size::Byte => 0xFF,
            Size::Half => 0xFFFF,
            Size::Word => 0xFFFF_FFFF,
        }
    }

    fn from_csw(csw: u32) -> Option<Size> {
        match csw & csw::SIZE {
            0 => Some(Size::Byte),
            1 => Some(Size::Half),
            2 => Some(Size::Word),
            _ => None,
        }
    }
}

/// Why a bus transfer did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusError {
    /// The slave answered with an error (unmapped address, protected memory, refused write).
    Fault,
    /// The slave stalls the bus until the simulated time `until` (ns).
    Stall {
        /// When the transfer can complete.
        until: u64,
    },
}

/// The system bus seen from the AHB-AP. Values are right-aligned; addresses aligned to the
/// transfer size.
pub(crate) trait Bus {
    fn read(&mut self, address: u32, size: Size) -> Result<u32, BusError>;
    fn write(&mut self, address: u32, size: Size, value: u32) -> Result<(), BusError>;
    /// Simulated time, ns.
    fn now(&self) -> u64;
}

/// Counters of the debug port's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DapStats {
    /// DPACC reads and writes.
    pub dp_accesses: u64,
    /// APACC reads and writes performed.
    pub ap_accesses: u64,
    /// APACC transactions discarded because a sticky flag was set.
    pub ap_discarded: u64,
    /// Scans answered WAIT.
    pub waits: u64,
    /// Bus errors (each sets STICKYERR).
    pub bus_faults: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    until: u64,
    reg: u8,
    read: bool,
    data: u32,
}

/// The AHB-AP's registers.
#[derive(Debug, Clone)]
pub(crate) struct AhbAp {
    csw: u32,
    tar: u32,
    packed: bool,
}

impl AhbAp {
    fn new(packed: bool) -> Self {
        AhbAp {
            csw: csw::RESET,
            tar: 0,
            packed,
        }
    }

    fn csw_value(&self, in_progress: bool) -> u32 {
        let mut v = self.csw | csw::DBG_STATUS | csw::HPROT0;
        if in_progress {
            v |= csw::TR_IN_PROG;
        }
        v
    }

    fn write_csw(&mut self, value: u32) {
        let inc = if self.packed {
            csw::ADDRINC
        } else {
            csw::INC_SINGLE
        };
        self.csw = value & (csw::SIZE | inc | csw::PROT);
    }

    /// One AP register access; `Ok(Some(v))` for a read.
    fn access(
        &mut self,
        reg: u8,
        read: bool,
        data: u32,
        bus: &mut impl Bus,
    ) -> Result<Option<u32>, BusError> {
        match (reg, read) {
            (0x00, true) => Ok(Some(self.csw_value(false))),
            (0x00, false) => {
                self.write_csw(data);
                Ok(None)
            }
            (0x04, true) => Ok(Some(self.tar)),
            (0x04, false) => {
                self.tar = data;
                Ok(None)
            }
            (0x0C, _) => self.drw(read, data, bus),
            (0x10 | 0x14 | 0x18 | 0x1C, _) => {
                let address = (self.tar & !0xF) | u32::from(reg - 0x10);
                let size = Size::from_csw(self.csw).ok_or(BusError::Fault)?;
                transfer(bus, address, size, read, data)
            }
            (0xF4, true) => Ok(Some(0)), // CFG: little-endian, 32-bit addresses and data.
            (0xF8, true) => Ok(Some(AHB_AP_BASE)),
            (0xFC, true) => Ok(Some(AHB_AP_IDR)),
            (_, true) => Ok(Some(0)),
            (_, false) => Ok(None),
        }
    }

    fn drw(&mut self, read: bool, data: u32, bus: &mut impl Bus) -> Result<Option<u32>, BusError> {
        let size = Size::from_csw(self.csw).ok_or(BusError::Fault)?;
        let inc = self.csw & csw::ADDRINC;
        if inc == csw::INC_PACKED && self.packed && size != Size::Word {
            // Packed: several transfers of `size` fill (or drain) one 32-bit DRW.
            let mut value = 0;
            let start = self.tar;
            for k in 0..(4 / size.bytes()) {
                let address = start.wrapping_add(k * size.bytes());
                if let Some(v) = transfer(bus, address, size, read, data)? {
                    value |= v;
                }
            }
            self.tar = increment(self.tar, 4);
            return Ok(read.then_some(value));
        }
        let result = transfer(bus, self.tar, size, read, data)?;
        if inc == csw::INC_SINGLE || inc == csw::INC_PACKED {
            self.tar = increment(self.tar, size.bytes());
        }
        Ok(result)
    }
}

/// TAR after an increment of `by`: bits 31:12 stay, as on the Cortex-M3 AHB-AP.
fn increment(tar: u32, by: u32) -> u32 {
    (tar & !0xFFF) | (tar.wrapping_add(by) & 0xFFF)
}

/// A transfer at `address` with the data on the byte lanes the address selects.
fn transfer(
    bus: &mut impl Bus,
    address: u32,
    size: Size,
    read: bool,
    data: u32,
) -> Result<Option<u32>, BusError> {
    let aligned = address & !(size.bytes() - 1);
    let lane = 8 * (aligned & 3);
    if read {
        let v = bus.read(aligned, size)?;
        Ok(Some((v & size.mask()) << lane))
    } else {
        bus.write(aligned, size, (data >> lane) & size.mask())?;
        Ok(None)
    }
}

/// The JTAG-DP and its one AP.
#[derive(Debug, Clone)]
pub(crate) struct Dap {
    ctrl: u32,
    sticky: u32,
    read_ok: bool,
    select: u32,
    read_result: u32,
    rdbuff: u32,
    waited: bool,
    pending: Option<Pending>,
    ap: AhbAp,
    pub stats: DapStats,
}

impl Dap {
    pub fn new(packed: bool) -> Self {
        Dap {
            ctrl: 0,
            sticky: 0,
            read_ok: false,
            select: 0,
            read_result: 0,
            rdbuff: 0,
            waited: false,
            pending: None,
            ap: AhbAp::new(packed),
            stats: DapStats::default(),
        }
    }

    /// CTRL/STAT as a read returns it.
    pub fn ctrl_stat(&self) -> u32 {
        let mut v = self.ctrl | self.sticky;
        if self.read_ok {
            v |= ctrl::READOK;
        }
        if self.ctrl & ctrl::CDBGRSTREQ != 0 {
            v |= ctrl::CDBGRSTACK;
        }
        if self.ctrl & ctrl::CDBGPWRUPREQ != 0 {
            v |= ctrl::CDBGPWRUPACK;
        }
        if self.ctrl & ctrl::CSYSPWRUPREQ != 0 {
            v |= ctrl::CSYSPWRUPACK;
        }
        v
    }

    /// Whether an AP transaction is stalled.
    #[cfg(test)]
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// Capture-DR of DPACC, APACC or ABORT.
    pub fn capture(&mut self, ir: u8, bus: &mut impl Bus) -> u64 {
        use super::chain::debug_ir;
        self.settle(bus);
        let ack = if self.pending.is_some() && ir != debug_ir::ABORT {
            self.stats.waits += 1;
            if self.ctrl & ctrl::ORUNDETECT != 0 {
                self.sticky |= ctrl::STICKYORUN;
            }
            self.waited = true;
            ACK_WAIT
        } else {
            self.waited = false;
            ACK_OK_FAULT
        };
        u64::from(ack) | (u64::from(self.read_result) << 3)
    }

    /// Update-DR of DPACC, APACC or ABORT.
    pub fn update(&mut self, ir: u8, dr: u64, bus: &mut impl Bus) {
        use super::chain::debug_ir;
        let read = dr & 1 != 0;
        let a = (((dr >> 1) & 0b11) as u8) << 2;
        let data = (dr >> 3) as u32;
        match ir {
            // DAPABORT: the stalled transfer is abandoned.
            debug_ir::ABORT if data & 1 != 0 => self.pending = None,
            debug_ir::ABORT => {}
            _ if self.waited => {} // The request of a scan answered WAIT is ignored.
            debug_ir::DPACC => self.dp_access(a, read, data),
            debug_ir::APACC => self.ap_access(a, read, data, bus),
            _ => {}
        }
    }

    fn dp_access(&mut self, a: u8, read: bool, data: u32) {
        self.stats.dp_accesses += 1;
        match (a, read) {
            (0x4, true) => self.read_result = self.ctrl_stat(),
            (0x4, false) => {
                self.sticky &= !(data & ctrl::STICKY);
                self.ctrl = data & ctrl::WRITABLE;
            }
            (0x8, true) => self.read_result = self.select,
            (0x8, false) => self.select = data & 0xFF00_00F0,
            (0xC, true) => self.read_result = self.rdbuff,
            (_, true) => self.read_result = 0,
            (_, false) => {}
        }
    }

    fn ap_access(&mut self, a: u8, read: bool, data: u32, bus: &mut impl Bus) {
        if self.sticky != 0 {
            self.stats.ap_discarded += 1;
            if read {
                self.read_result = 0;
            }
            return;
        }
        let reg = (self.select & 0xF0) as u8 | a;
        self.run(reg, read, data, bus);
    }

    fn run(&mut self, reg: u8, read: bool, data: u32, bus: &mut impl Bus) {
        self.stats.ap_accesses += 1;
        let result = if self.select >> 24 != 0 {
            // No AP behind this APSEL: reads as zero, writes ignored.
            Ok(read.then_some(0))
        } else if self.ctrl & ctrl::CDBGPWRUPREQ == 0 && touches_bus(reg) {
            // The debug domain is powered down: the AP cannot reach the bus.
            Err(BusError::Fault)
        } else {
            self.ap.access(reg, read, data, bus)
        };
        match result {
            Ok(Some(v)) => {
                self.read_result = v;
                self.rdbuff = v;
                self.read_ok = true;
            }
            Ok(None) => {}
            Err(BusError::Fault) => {
                self.stats.bus_faults += 1;
                self.sticky |= ctrl::STICKYERR;
                if read {
                    self.read_ok = false;
                    self.read_result = 0;
                    self.rdbuff = 0;
                }
            }
            Err(BusError::Stall { until }) => {
                self.pending = Some(Pending {
                    until,
                    reg,
                    read,
                    data,
                });
            }
        }
    }

    /// Completes a stalled transfer whose time has come.
    fn settle(&mut self, bus: &mut impl Bus) {
        if let Some(p) = self.pending {
            if bus.now() >= p.until {
                self.pending = None;
                self.stats.ap_accesses -= 1; // Counted once, when first issued.
                self.run(p.reg, p.read, p.data, bus);
            }
        }
    }

    /// CSW as a read returns it (for inspection).
    #[cfg(test)]
    pub fn csw(&self) -> u32 {
        self.ap.csw_value(self.pending.is_some())
    }

    /// TAR (for inspection).
    #[cfg(test)]
    pub fn tar(&self) -> u32 {
        self.ap.tar
    }
}

fn touches_bus(reg: u8) -> bool {
    matches!(reg, 0x0C | 0x10 | 0x14 | 0x18 | 0x1C)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::super::chain::debug_ir::{ABORT, APACC, DPACC};
    use super::*;

    /// 64 KiB of RAM at 0; a fault above; a stall window for the WAIT test.
    struct Ram {
        mem: Vec<u8>,
        now: u64,
        stall_until: u64,
        log: Vec<(u32, Size, bool)>,
    }

    impl Ram {
        fn new() -> Self {
            Ram {
                mem: (0..0x1_0000).map(|i| i as u8).collect(),
                now: 0,
                stall_until: 0,
                log: Vec::new(),
            }
        }
    }

    impl Bus for Ram {
        fn read(&mut self, address: u32, size: Size) -> Result<u32, BusError> {
            if self.now < self.stall_until {
                return Err(BusError::Stall {
                    until: self.stall_until,
                });
            }
            self.log.push((address, size, true));
            let a = address as usize;
            let b = self
                .mem
                .get(a..a + size.bytes() as usize)
                .ok_or(BusError::Fault)?;
            Ok(b.iter().rev().fold(0, |v, &x| (v << 8) | u32::from(x)))
        }
        fn write(&mut self, address: u32, size: Size, value: u32) -> Result<(), BusError> {
            if self.now < self.stall_until {
                return Err(BusError::Stall {
                    until: self.stall_until,
                });
            }
            self.log.push((address, size, false));
            let a = address as usize;
            let b = self
                .mem
                .get_mut(a..a + size.bytes() as usize)
                .ok_or(BusError::Fault)?;
            for (i, x) in b.iter_mut().enumerate() {
                *x = (value >> (8 * i)) as u8;
            }
            Ok(())
        }
        fn now(&self) -> u64 {
            self.now
        }
    }

    /// One 35-bit scan: returns (ack, previous read result).
    fn scan(dap: &mut Dap, bus: &mut Ram, ir: u8, a: u8, read: bool, data: u32) -> (u8, u32) {
        let out = dap.capture(ir, bus);
        let dr = u64::from(read) | (u64::from(a >> 2) << 1) | (u64::from(data) << 3);
        dap.update(ir, dr, bus);
        ((out & 7) as u8, (out >> 3) as u32)
    }

    fn dp_write(d: &mut Dap, b: &mut Ram, a: u8, v: u32) -> u8 {
        scan(d, b, DPACC, a, false, v).0
    }
    fn dp_read(d: &mut Dap, b: &mut Ram, a: u8) -> u32 {
        scan(d, b, DPACC, a, true, 0);
        scan(d, b, DPACC, 0xC, true, 0).1
    }
    fn ap_write(d: &mut Dap, b: &mut Ram, reg: u8, v: u32) {
        dp_write(d, b, 0x8, u32::from(reg & 0xF0));
        scan(d, b, APACC, reg & 0xC, false, v);
    }
    fn ap_read(d: &mut Dap, b: &mut Ram, reg: u8) -> u32 {
        dp_write(d, b, 0x8, u32::from(reg & 0xF0));
        scan(d, b, APACC, reg & 0xC, true, 0);
        scan(d, b, DPACC, 0xC, true, 0).1
    }

    fn powered() -> (Dap, Ram) {
        let mut d = Dap::new(false);
        let mut b = Ram::new();
        dp_write(&mut d, &mut b, 0x4, ctrl::CDBGPWRUPREQ | ctrl::CSYSPWRUPREQ);
        (d, b)
    }

    #[test]
    fn power_up_is_acknowledged() {
        let mut d = Dap::new(false);
        let mut b = Ram::new();
        assert_eq!(dp_read(&mut d, &mut b, 0x4), 0);
        dp_write(&mut d, &mut b, 0x4, ctrl::CDBGPWRUPREQ | ctrl::CSYSPWRUPREQ);
        let v = dp_read(&mut d, &mut b, 0x4);
        assert_eq!(v & 0xF000_0000, 0xF000_0000);
    }

    #[test]
    fn reads_are_posted_and_rdbuff_repeats_the_last_ap_read() {
        let (mut d, mut b) = powered();
        dp_write(&mut d, &mut b, 0x8, 0xF0);
        let (ack, _) = scan(&mut d, &mut b, APACC, 0xC, true, 0); // IDR
        assert_eq!(ack, ACK_OK_FAULT);
        let (_, idr) = scan(&mut d, &mut b, APACC, 0x8, true, 0); // BASE, returns IDR
        assert_eq!(idr, AHB_AP_IDR);
        let (_, base) = scan(&mut d, &mut b, DPACC, 0xC, true, 0);
        assert_eq!(base, AHB_AP_BASE);
        // RDBUFF keeps the last AP read and has no side effect.
        let (_, again) = scan(&mut d, &mut b, DPACC, 0xC, true, 0);
        assert_eq!(again, AHB_AP_BASE);
        assert_eq!(ap_read(&mut d, &mut b, 0xF4), 0);
        // DP address 0 is reserved on this JTAG-DP.
        assert_eq!(dp_read(&mut d, &mut b, 0x0), 0);
    }

    #[test]
    fn select_reads_back_and_other_aps_are_absent() {
        let (mut d, mut b) = powered();
        dp_write(&mut d, &mut b, 0x8, 0x0100_00F0);
        assert_eq!(dp_read(&mut d, &mut b, 0x8), 0x0100_00F0);
        scan(&mut d, &mut b, APACC, 0xC, true, 0);
        assert_eq!(scan(&mut d, &mut b, DPACC, 0xC, true, 0).1, 0);
        dp_write(&mut d, &mut b, 0x8, 0);
        assert_eq!(ap_read(&mut d, &mut b, 0xFC), AHB_AP_IDR);
    }

    #[test]
    fn csw_sizes_and_no_packed_on_this_ap() {
        let (mut d, mut b) = powered();
        ap_write(&mut d, &mut b, 0x00, 0xA200_0012);
        // MasterType, HPROT1, size 32, single increment; HPROT0 and DbgStatus read as one;
        // DbgSwEnable (bit 31) is not implemented.
        assert_eq!(ap_read(&mut d, &mut b, 0x00), 0x2300_0052);
        ap_write(&mut d, &mut b, 0x00, 0x2200_0020); // packed, 8-bit
        assert_eq!(ap_read(&mut d, &mut b, 0x00) & 0x37, 0x00);
        let mut p = Dap::new(true);
        dp_write(&mut p, &mut b, 0x4, ctrl::CDBGPWRUPREQ);
        ap_write(&mut p, &mut b, 0x00, 0x2200_0020);
        assert_eq!(ap_read(&mut p, &mut b, 0x00) & 0x37, 0x20);
    }

    #[test]
    fn byte_and_halfword_lanes() {
        let (mut d, mut b) = powered();
        ap_write(&mut d, &mut b, 0x00, 0x2200_0001); // 16-bit, no increment
        ap_write(&mut d, &mut b, 0x04, 0x102);
        assert_eq!(ap_read(&mut d, &mut b, 0x0C), 0x0302_0000);
        ap_write(&mut d, &mut b, 0x0C, 0xBEEF_0000);
        assert_eq!(&b.mem[0x100..0x104], &[0x00, 0x01, 0xEF, 0xBE]);
        ap_write(&mut d, &mut b, 0x00, 0x2200_0000); // 8-bit
        ap_write(&mut d, &mut b, 0x04, 0x201);
        assert_eq!(ap_read(&mut d, &mut b, 0x0C), 0x0000_0100);
        ap_write(&mut d, &mut b, 0x0C, 0x0000_AA00);
        assert_eq!(b.mem[0x201], 0xAA);
    }

    #[test]
    fn tar_increments_within_4_kib() {
        let (mut d, mut b) = powered();
        ap_write(&mut d, &mut b, 0x00, 0x2200_0012); // 32-bit, single increment
        ap_write(&mut d, &mut b, 0x04, 0x0FFC);
        ap_read(&mut d, &mut b, 0x0C);
        assert_eq!(d.tar(), 0x0000, "wraps at the 4 KiB boundary");
        ap_write(&mut d, &mut b, 0x04, 0x13FC);
        ap_read(&mut d, &mut b, 0x0C);
        assert_eq!(d.tar(), 0x1400, "crosses a 1 KiB boundary");
        ap_write(&mut d, &mut b, 0x00, 0x2200_0011); // 16-bit
        ap_read(&mut d, &mut b, 0x0C);
        assert_eq!(d.tar(), 0x1402);
        ap_write(&mut d, &mut b, 0x00, 0x2200_0002); // off
        ap_read(&mut d, &mut b, 0x0C);
        assert_eq!(d.tar(), 0x1402);
    }

    #[test]
    fn packed_halfwords_when_enabled() {
        let mut d = Dap::new(true);
        let mut b = Ram::new();
        dp_write(&mut d, &mut b, 0x4, ctrl::CDBGPWRUPREQ);
        ap_write(&mut d, &mut b, 0x00, 0x2200_0021); // 16-bit packed
        ap_write(&mut d, &mut b, 0x04, 0x40);
        assert_eq!(ap_read(&mut d, &mut b, 0x0C), 0x4342_4140);
        assert_eq!(d.tar(), 0x44);
        let halves = b.log.iter().filter(|e| e.1 == Size::Half).count();
        assert_eq!(halves, 2);
    }

    #[test]
    fn banked_data_registers() {
        let (mut d, mut b) = powered();
        ap_write(&mut d, &mut b, 0x00, 0x2200_0012);
        ap_write(&mut d, &mut b, 0x04, 0x1238);
        assert_eq!(ap_read(&mut d, &mut b, 0x18), 0x3B3A_3938);
        assert_eq!(
            ap_read(&mut d, &mut b, 0x14),
            0x3736_3534,
            "BD1 is TAR[31:4] + 4"
        );
        assert_eq!(d.tar(), 0x1238, "BDn never increment TAR");
    }

    #[test]
    fn a_bus_error_is_sticky_and_discards_ap_accesses_until_cleared() {
        let (mut d, mut b) = powered();
        ap_write(&mut d, &mut b, 0x00, 0x2200_0012);
        ap_write(&mut d, &mut b, 0x04, 0x0002_0000); // beyond the RAM
        ap_read(&mut d, &mut b, 0x0C);
        let cs = dp_read(&mut d, &mut b, 0x4);
        assert_ne!(cs & ctrl::STICKYERR, 0);
        assert_eq!(cs & ctrl::READOK, 0);
        // Discarded: TAR does not change.
        ap_write(&mut d, &mut b, 0x04, 0x10);
        assert_eq!(d.tar(), 0x0002_0000);
        assert_eq!(d.stats.ap_discarded, 1);
        // ABORT's clear bits are SW-DP only: on a JTAG-DP nothing is cleared.
        scan(&mut d, &mut b, ABORT, 0, false, 0x1E);
        assert_ne!(dp_read(&mut d, &mut b, 0x4) & ctrl::STICKYERR, 0);
        // Writing one to STICKYERR in CTRL/STAT clears it.
        dp_write(&mut d, &mut b, 0x4, ctrl::CDBGPWRUPREQ | ctrl::STICKYERR);
        assert_eq!(dp_read(&mut d, &mut b, 0x4) & ctrl::STICKY, 0);
        ap_write(&mut d, &mut b, 0x04, 0x10);
        assert_eq!(d.tar(), 0x10);
        assert_eq!(ap_read(&mut d, &mut b, 0x0C), 0x1312_1110);
        assert_ne!(dp_read(&mut d, &mut b, 0x4) & ctrl::READOK, 0);
    }

    #[test]
    fn no_bus_access_without_debug_power() {
        let mut d = Dap::new(false);
        let mut b = Ram::new();
        ap_read(&mut d, &mut b, 0x0C);
        assert_ne!(dp_read(&mut d, &mut b, 0x4) & ctrl::STICKYERR, 0);
        assert!(b.log.is_empty());
    }

    #[test]
    fn a_stalled_transfer_answers_wait_then_completes() {
        let (mut d, mut b) = powered();
        dp_write(&mut d, &mut b, 0x4, ctrl::CDBGPWRUPREQ | ctrl::ORUNDETECT);
        ap_write(&mut d, &mut b, 0x00, 0x2200_0012);
        ap_write(&mut d, &mut b, 0x04, 0x20);
        b.stall_until = 1_000;
        let (ack, _) = scan(&mut d, &mut b, APACC, 0xC, true, 0);
        assert_eq!(ack, ACK_OK_FAULT, "the read is accepted");
        assert!(d.in_progress());
        assert_ne!(d.csw() & csw::TR_IN_PROG, 0);
        // The next scan gets WAIT and its request (a TAR write) is ignored.
        let (ack, _) = scan(&mut d, &mut b, APACC, 0x4, false, 0x999);
        assert_eq!(ack, ACK_WAIT);
        b.now = 1_000;
        let (ack, value) = scan(&mut d, &mut b, DPACC, 0xC, true, 0);
        assert_eq!(ack, ACK_OK_FAULT);
        assert_eq!(value, 0x2322_2120, "the completed read is posted");
        assert_eq!(d.tar(), 0x24, "the ignored TAR write did not happen");
        // WAIT with ORUNDETECT set STICKYORUN.
        let cs = dp_read(&mut d, &mut b, 0x4);
        assert_ne!(cs & ctrl::STICKYORUN, 0);
        assert_eq!(d.stats.waits, 1);
    }

    #[test]
    fn dapabort_cancels_a_stalled_transfer() {
        let (mut d, mut b) = powered();
        ap_write(&mut d, &mut b, 0x00, 0x2200_0012);
        ap_write(&mut d, &mut b, 0x04, 0x20);
        b.stall_until = u64::MAX;
        scan(&mut d, &mut b, APACC, 0xC, false, 0xDEAD_BEEF);
        assert_eq!(scan(&mut d, &mut b, DPACC, 0x4, true, 0).0, ACK_WAIT);
        let (ack, _) = scan(&mut d, &mut b, ABORT, 0, false, 1);
        assert_eq!(ack, ACK_OK_FAULT);
        assert!(!d.in_progress());
        assert_eq!(scan(&mut d, &mut b, DPACC, 0x4, true, 0).0, ACK_OK_FAULT);
        assert_eq!(
            &b.mem[0x20..0x24],
            &[0x20, 0x21, 0x22, 0x23],
            "never written"
        );
    }
}
