//! The STM32F103's scan chain: TDI → boundary-scan TAP → Cortex-M3 debug TAP → TDO.
//!
//! RM0008 (§31.5, "TAP connection") puts the boundary-scan TAP first after the TDI pin and
//! the Cortex-M3 TAP last before TDO, which is why `target/stm32f1x.cfg` declares the
//! Cortex-M3 TAP (`cpu`, IR length 4, IDCODE 0x3BA00477) before the boundary-scan TAP (`bs`,
//! IR length 5): OpenOCD lists TAPs from the one nearest TDO. After Test-Logic-Reset both
//! hold IDCODE, so a DR scan shifts out the Cortex-M3 IDCODE first.
//!
//! Both TAPs move together (one TMS line). At the rising edge of TCK the TAPs act on the
//! state they are in (Capture loads, Shift shifts) and then take the next state; at the
//! falling edge TDO changes to the bit now at the end of the debug TAP's register, and
//! Update-IR/Update-DR take effect. Outside Shift-DR/Shift-IR TDO is not driven and reads
//! high (the pull-up).

use super::tap::TapState;

/// Cortex-M3 debug TAP instruction length.
pub const DEBUG_IR_LEN: u8 = 4;
/// Boundary-scan TAP instruction length.
pub const BOUNDARY_IR_LEN: u8 = 5;

/// Cortex-M3 (SWJ-DP, JTAG-DP) instructions (ADIv5 §3.2).
pub mod debug_ir {
    /// ABORT: 35-bit scan, DAPABORT in bit 3 (data bit 0).
    pub const ABORT: u8 = 0x8;
    /// DPACC: 35-bit debug port access.
    pub const DPACC: u8 = 0xA;
    /// APACC: 35-bit access port access.
    pub const APACC: u8 = 0xB;
    /// IDCODE: 32-bit JTAG-DP identification.
    pub const IDCODE: u8 = 0xE;
    /// BYPASS: 1-bit register.
    pub const BYPASS: u8 = 0xF;
}

/// Boundary-scan TAP instructions (STM32F1 BSDL).
pub mod boundary_ir {
    /// EXTEST.
    pub const EXTEST: u8 = 0b00000;
    /// IDCODE.
    pub const IDCODE: u8 = 0b00001;
    /// SAMPLE/PRELOAD.
    pub const SAMPLE: u8 = 0b00010;
    /// BYPASS.
    pub const BYPASS: u8 = 0b11111;
}

/// What IEEE 1149.1 requires Capture-IR to load: the two least significant bits 01.
const IR_CAPTURE: u8 = 0b01;

/// The debug port behind the debug TAP's DPACC, APACC and ABORT instructions.
pub(crate) trait DapPort {
    /// Capture-DR with `ir` selected: the 35 bits to shift out (ACK in bits 2:0, the posted
    /// read result in bits 34:3).
    fn capture(&mut self, ir: u8) -> u64;
    /// Update-DR with `ir` selected and `dr` shifted in.
    fn update(&mut self, ir: u8, dr: u64);
}

#[derive(Debug, Clone)]
struct Tap {
    ir_len: u8,
    ir: u8,
    ir_shift: u8,
    dr: u64,
    dr_len: u8,
}

impl Tap {
    fn new(ir_len: u8, idcode: u8) -> Self {
        Tap {
            ir_len,
            ir: idcode,
            ir_shift: 0,
            dr: 0,
            dr_len: 1,
        }
    }

    fn shift_dr(&mut self, tdi: bool) {
        self.dr = (self.dr >> 1) | (u64::from(tdi) << (self.dr_len - 1));
    }

    fn shift_ir(&mut self, tdi: bool) {
        self.ir_shift = (self.ir_shift >> 1) | (u8::from(tdi) << (self.ir_len - 1));
    }
}

/// The two TAPs in series and their shared controller.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    state: TapState,
    tdo: bool,
    boundary: Tap,
    debug: Tap,
    /// IDCODE of the boundary-scan TAP.
    pub boundary_idcode: u32,
    /// IDCODE of the Cortex-M3 JTAG-DP.
    pub debug_idcode: u32,
}

impl Chain {
    pub fn new(debug_idcode: u32, boundary_idcode: u32) -> Self {
        Chain {
            state: TapState::TestLogicReset,
            tdo: true,
            boundary: Tap::new(BOUNDARY_IR_LEN, boundary_ir::IDCODE),
            debug: Tap::new(DEBUG_IR_LEN, debug_ir::IDCODE),
            boundary_idcode,
            debug_idcode,
        }
    }

    pub fn state(&self) -> TapState {
        self.state
    }

    /// The level on TDO now.
    pub fn tdo(&self) -> bool {
        self.tdo
    }

    /// The current instructions: (debug TAP, boundary-scan TAP).
    #[cfg(test)]
    pub fn instructions(&self) -> (u8, u8) {
        (self.debug.ir, self.boundary.ir)
    }

    /// TRST: the controllers go to Test-Logic-Reset at once.
    pub fn trst(&mut self) {
        self.state = TapState::TestLogicReset;
        self.reset_instructions();
        self.tdo = true;
    }

    fn reset_instructions(&mut self) {
        self.debug.ir = debug_ir::IDCODE;
        self.boundary.ir = boundary_ir::IDCODE;
    }

    /// Rising edge of TCK with `tms` and `tdi`.
    pub fn rising(&mut self, tms: bool, tdi: bool, port: &mut impl DapPort) {
        match self.state {
            TapState::CaptureDr => self.capture_dr(port),
            TapState::ShiftDr => {
                // The debug TAP samples what the boundary-scan TAP drives on its TDO now.
                let middle = self.boundary.dr & 1 != 0;
                self.boundary.shift_dr(tdi);
                self.debug.shift_dr(middle);
            }
            TapState::CaptureIr => {
                self.boundary.ir_shift = IR_CAPTURE;
                self.debug.ir_shift = IR_CAPTURE;
            }
            TapState::ShiftIr => {
                let middle = self.boundary.ir_shift & 1 != 0;
                self.boundary.shift_ir(tdi);
                self.debug.shift_ir(middle);
            }
            _ => {}
        }
        self.state = self.state.next(tms);
        if self.state == TapState::TestLogicReset {
            self.reset_instructions();
        }
    }

    /// Falling edge of TCK.
    pub fn falling(&mut self, port: &mut impl DapPort) {
        self.tdo = match self.state {
            TapState::ShiftDr => self.debug.dr & 1 != 0,
            TapState::ShiftIr => self.debug.ir_shift & 1 != 0,
            TapState::UpdateDr => {
                if is_dap_instruction(self.debug.ir) {
                    port.update(self.debug.ir, self.debug.dr & ((1 << 35) - 1));
                }
                true
            }
            TapState::UpdateIr => {
                self.debug.ir = self.debug.ir_shift;
                self.boundary.ir = self.boundary.ir_shift;
                true
            }
            _ => true,
        };
    }

    fn capture_dr(&mut self, port: &mut impl DapPort) {
        let (dr, len) = match self.debug.ir {
            debug_ir::IDCODE => (u64::from(self.debug_idcode), 32),
            ir if is_dap_instruction(ir) => (port.capture(ir), 35),
            // BYPASS and the reserved codes select the bypass register, which captures 0.
            _ => (0, 1),
        };
        self.debug.dr = dr;
        self.debug.dr_len = len;
        let (dr, len) = match self.boundary.ir {
            boundary_ir::IDCODE => (u64::from(self.boundary_idcode), 32),
            // EXTEST and SAMPLE/PRELOAD would select the boundary register; the pins are not
            // modelled, so they behave as BYPASS.
            _ => (0, 1),
        };
        self.boundary.dr = dr;
        self.boundary.dr_len = len;
    }
}

fn is_dap_instruction(ir: u8) -> bool {
    matches!(ir, debug_ir::ABORT | debug_ir::DPACC | debug_ir::APACC)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Records what the debug port was asked.
    #[derive(Default)]
    struct Recorder {
        captured: Vec<u8>,
        updated: Vec<(u8, u64)>,
    }

    impl DapPort for Recorder {
        fn capture(&mut self, ir: u8) -> u64 {
            self.captured.push(ir);
            0b010 | (0x1234_5678 << 3)
        }
        fn update(&mut self, ir: u8, dr: u64) {
            self.updated.push((ir, dr));
        }
    }

    /// Drives the chain as OpenOCD's bitbang driver does: TCK low with TMS/TDI, sample TDO,
    /// TCK high.
    fn clock(chain: &mut Chain, port: &mut Recorder, tms: bool, tdi: bool) -> bool {
        chain.falling(port);
        let tdo = chain.tdo();
        chain.rising(tms, tdi, port);
        tdo
    }

    fn goto(chain: &mut Chain, port: &mut Recorder, to: TapState) {
        for tms in chain.state().path_to(to) {
            clock(chain, port, tms, false);
        }
    }

    /// Shifts `bits` (LSB first) through the current Shift state and leaves it in Exit1.
    fn shift(chain: &mut Chain, port: &mut Recorder, value: u128, bits: usize) -> u128 {
        let mut out = 0u128;
        for i in 0..bits {
            let tdo = clock(chain, port, i == bits - 1, value >> i & 1 != 0);
            out |= u128::from(tdo) << i;
        }
        out
    }

    fn fresh() -> (Chain, Recorder) {
        let mut c = Chain::new(0x3BA0_0477, 0x1641_0041);
        let mut p = Recorder::default();
        for _ in 0..5 {
            clock(&mut c, &mut p, true, false);
        }
        (c, p)
    }

    #[test]
    fn idcodes_come_out_nearest_tdo_first() {
        let (mut c, mut p) = fresh();
        goto(&mut c, &mut p, TapState::ShiftDr);
        let out = shift(&mut c, &mut p, u128::MAX, 96);
        assert_eq!(out as u32, 0x3BA0_0477);
        assert_eq!((out >> 32) as u32, 0x1641_0041);
        // Then the ones shifted in at TDI come through.
        assert_eq!((out >> 64) as u32, 0xFFFF_FFFF);
    }

    #[test]
    fn ir_capture_is_01_for_both_taps() {
        let (mut c, mut p) = fresh();
        goto(&mut c, &mut p, TapState::ShiftIr);
        let out = shift(&mut c, &mut p, u128::MAX, 9 + 4);
        // Debug TAP (4 bits) first, then the boundary-scan TAP (5 bits), then TDI's ones.
        assert_eq!(out & 0xF, 0b0001);
        assert_eq!((out >> 4) & 0x1F, 0b00001);
        assert_eq!(out >> 9, 0xF);
        goto(&mut c, &mut p, TapState::RunTestIdle);
        // All ones were shifted in: both TAPs now hold BYPASS.
        assert_eq!(c.instructions(), (debug_ir::BYPASS, boundary_ir::BYPASS));
    }

    #[test]
    fn bypass_is_one_bit_each() {
        let (mut c, mut p) = fresh();
        goto(&mut c, &mut p, TapState::ShiftIr);
        shift(&mut c, &mut p, 0x1FF, 9);
        goto(&mut c, &mut p, TapState::ShiftDr);
        // Two bypass bits (captured 0) delay TDI by two clocks.
        let out = shift(&mut c, &mut p, 0b1011_0100, 10);
        assert_eq!(out & 0b11, 0);
        assert_eq!(out >> 2, 0b1011_0100 & 0xFF);
    }

    #[test]
    fn dpacc_scan_reaches_the_port_with_35_bits() {
        let (mut c, mut p) = fresh();
        // DPACC in the debug TAP, BYPASS in the boundary-scan TAP: IR = bs(5) << 4 | dbg(4).
        goto(&mut c, &mut p, TapState::ShiftIr);
        shift(&mut c, &mut p, (0x1F << 4) | u128::from(debug_ir::DPACC), 9);
        goto(&mut c, &mut p, TapState::RunTestIdle);
        goto(&mut c, &mut p, TapState::ShiftDr);
        // 35 bits for the debug TAP, then one more for the boundary-scan bypass bit (which is
        // nearest TDI, so it is shifted last).
        let request: u64 = (0xCAFE_F00D << 3) | (0b01 << 1) | 1;
        let out = shift(&mut c, &mut p, u128::from(request), 36);
        goto(&mut c, &mut p, TapState::RunTestIdle);
        assert_eq!(p.captured, [debug_ir::DPACC]);
        assert_eq!(out & 0b111, 0b010);
        assert_eq!((out >> 3) as u32, 0x1234_5678);
        assert_eq!(p.updated, [(debug_ir::DPACC, request)]);
    }

    #[test]
    fn trst_and_tlr_restore_idcode() {
        let (mut c, mut p) = fresh();
        goto(&mut c, &mut p, TapState::ShiftIr);
        shift(&mut c, &mut p, 0x1FF, 9);
        goto(&mut c, &mut p, TapState::RunTestIdle);
        c.trst();
        assert_eq!(c.state(), TapState::TestLogicReset);
        assert_eq!(c.instructions(), (debug_ir::IDCODE, boundary_ir::IDCODE));
        goto(&mut c, &mut p, TapState::ShiftIr);
        shift(&mut c, &mut p, 0x1FF, 9);
        goto(&mut c, &mut p, TapState::TestLogicReset);
        assert_eq!(c.instructions(), (debug_ir::IDCODE, boundary_ir::IDCODE));
    }

    #[test]
    fn tdo_is_high_outside_shift_states() {
        let (mut c, mut p) = fresh();
        goto(&mut c, &mut p, TapState::RunTestIdle);
        c.falling(&mut p);
        assert!(c.tdo());
        goto(&mut c, &mut p, TapState::PauseDr);
        c.falling(&mut p);
        assert!(c.tdo());
    }
}
