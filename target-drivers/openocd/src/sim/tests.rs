//! The whole chip through its pins: a small JTAG probe speaking remote_bitbang, as OpenOCD
//! drives it (TCK low with TMS/TDI, sample, TCK high).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use flashgate_serial::SerialDevice;

use super::chain::debug_ir::{ABORT, APACC, BYPASS, DPACC, IDCODE};
use super::dap::{ctrl, ACK_OK_FAULT, ACK_WAIT, AHB_AP_IDR};
use super::flash::{cr, sr, KEY1, KEY2};
use super::*;

struct Probe {
    sim: JtagSim,
    ir: u8,
}

impl Probe {
    fn new(options: &str) -> Probe {
        let mut p = Probe {
            sim: JtagSim::from_options(options).unwrap(),
            ir: IDCODE,
        };
        p.reset();
        p
    }

    /// Feeds the bytes, returns the TDO samples.
    fn run(&mut self, bytes: &[u8]) -> Vec<bool> {
        let mut out = Vec::new();
        let fed = self.sim.feed(bytes, &mut out);
        assert_eq!(fed.consumed, bytes.len());
        out.iter().map(|&b| b == b'1').collect()
    }

    fn clock(bytes: &mut Vec<u8>, tms: bool, tdi: bool, sample: bool) {
        let v = u8::from(tms) * 2 + u8::from(tdi);
        bytes.push(b'0' + v);
        if sample {
            bytes.push(b'R');
        }
        bytes.push(b'4' + v);
    }

    fn reset(&mut self) {
        let mut b = Vec::new();
        for _ in 0..5 {
            Probe::clock(&mut b, true, false, false);
        }
        Probe::clock(&mut b, false, false, false);
        b.push(b'0');
        self.run(&b);
        self.ir = IDCODE;
        assert_eq!(self.sim.tap_state(), TapState::RunTestIdle);
    }

    /// From Run-Test/Idle: a scan of `bits` through IR or DR, back to Run-Test/Idle.
    fn scan(&mut self, ir: bool, value: u128, bits: usize) -> u128 {
        let mut b = Vec::new();
        let to_shift: &[bool] = if ir {
            &[true, true, false, false]
        } else {
            &[true, false, false]
        };
        for &tms in to_shift {
            Probe::clock(&mut b, tms, false, false);
        }
        for i in 0..bits {
            Probe::clock(&mut b, i == bits - 1, value >> i & 1 != 0, true);
        }
        Probe::clock(&mut b, true, false, false); // Update
        Probe::clock(&mut b, false, false, false); // Run-Test/Idle
        b.push(b'0');
        let tdo = self.run(&b);
        tdo.iter()
            .enumerate()
            .fold(0, |v, (i, &t)| v | (u128::from(t) << i))
    }

    fn select(&mut self, ir: u8) {
        if self.ir != ir {
            // The boundary-scan TAP (nearest TDI, shifted last) stays in BYPASS.
            self.scan(true, u128::from(ir) | (0x1F << 4), 9);
            self.ir = ir;
        }
    }

    /// A 35-bit DPACC/APACC/ABORT scan (plus the boundary-scan bypass bit).
    fn acc(&mut self, ir: u8, a: u8, read: bool, data: u32) -> (u8, u32) {
        self.select(ir);
        let dr = u128::from(read) | (u128::from(a >> 2) << 1) | (u128::from(data) << 3);
        let out = self.scan(false, dr, 36);
        ((out & 7) as u8, (out >> 3) as u32)
    }

    fn dp_write(&mut self, a: u8, v: u32) {
        assert_eq!(self.acc(DPACC, a, false, v).0, ACK_OK_FAULT);
    }

    fn dp_read(&mut self, a: u8) -> u32 {
        self.acc(DPACC, a, true, 0);
        self.acc(DPACC, 0xC, true, 0).1
    }

    fn ap_write(&mut self, reg: u8, v: u32) {
        self.dp_write(0x8, u32::from(reg & 0xF0));
        self.acc(APACC, reg & 0xC, false, v);
    }

    fn ap_read(&mut self, reg: u8) -> u32 {
        self.dp_write(0x8, u32::from(reg & 0xF0));
        self.acc(APACC, reg & 0xC, true, 0);
        self.acc(DPACC, 0xC, true, 0).1
    }

    fn power_up(&mut self) {
        self.dp_write(0x4, ctrl::CDBGPWRUPREQ | ctrl::CSYSPWRUPREQ);
        assert_eq!(self.dp_read(0x4) >> 28, 0xF);
    }

    fn read32(&mut self, address: u32) -> u32 {
        self.ap_write(0x00, 0x2200_0002);
        self.ap_write(0x04, address);
        self.ap_read(0x0C)
    }

    fn write32(&mut self, address: u32, v: u32) {
        self.ap_write(0x00, 0x2200_0002);
        self.ap_write(0x04, address);
        self.ap_write(0x0C, v);
    }

    fn write16(&mut self, address: u32, v: u16) {
        self.ap_write(0x00, 0x2200_0001);
        self.ap_write(0x04, address);
        self.ap_write(0x0C, u32::from(v) << (8 * (address & 2)));
    }

    fn sticky(&mut self) -> u32 {
        self.dp_read(0x4) & ctrl::STICKY
    }

    fn clear_sticky(&mut self) {
        self.dp_write(
            0x4,
            ctrl::CDBGPWRUPREQ | ctrl::CSYSPWRUPREQ | ctrl::STICKYERR | ctrl::STICKYORUN,
        );
    }
}

#[test]
fn idcodes_and_ir_capture_through_the_pins() {
    let mut p = Probe::new("timing=zero");
    let ids = p.scan(false, u128::MAX, 80);
    assert_eq!(ids as u32, DEBUG_IDCODE);
    assert_eq!((ids >> 32) as u32, BOUNDARY_IDCODE);
    assert_eq!(ids >> 64, 0xFFFF);
    let captured = p.scan(true, 0x1FF, 9);
    assert_eq!(
        captured,
        (0b00001 << 4) | 0b0001,
        "boundary scan 00001, debug 0001"
    );
    p.ir = BYPASS;
    assert_eq!(p.scan(false, 0b1, 3), 0b100, "two bypass bits");
    let mut wrong = Probe::new("timing=zero,idcode=0x4ba00477,bs-idcode=0x06410041");
    let ids = wrong.scan(false, u128::MAX, 64);
    assert_eq!(ids as u32, 0x4BA0_0477);
    assert_eq!((ids >> 32) as u32, 0x0641_0041);
}

#[test]
fn idcode_instruction_and_trst() {
    let mut p = Probe::new("timing=zero");
    p.select(IDCODE);
    assert_eq!(p.scan(false, 0, 33) as u32, DEBUG_IDCODE);
    p.select(BYPASS);
    assert_eq!(p.scan(false, 0, 2), 0);
    p.run(b"t");
    assert_eq!(p.sim.tap_state(), TapState::TestLogicReset);
    p.run(b"r040");
    assert_eq!(p.sim.tap_state(), TapState::RunTestIdle);
    // TRST restored IDCODE in both TAPs.
    p.ir = IDCODE;
    assert_eq!(p.scan(false, 0, 64) as u32, DEBUG_IDCODE);
}

#[test]
fn the_ahb_ap_through_the_pins() {
    let mut p = Probe::new("timing=zero");
    p.power_up();
    assert_eq!(p.ap_read(0xFC), AHB_AP_IDR);
    assert_eq!(p.ap_read(0xF8), 0xE00F_F003);
    assert_eq!(p.read32(0xE000_ED00), 0x411F_C231);
    assert_eq!(p.read32(0xE004_2000), DEV_ID);
    assert_eq!(p.read32(0xE00F_F000), 0xFFF0_F003);
    assert_eq!(p.read32(FLASH_SIZE_REGISTER) & 0xFFFF, 128);
    let uid = p.sim.uid();
    assert_eq!(
        p.read32(UID_ADDRESS),
        u32::from_le_bytes(uid[..4].try_into().unwrap())
    );
    p.write32(SRAM_BASE + 0x100, 0xCAFE_F00D);
    assert_eq!(p.read32(SRAM_BASE + 0x100), 0xCAFE_F00D);
    assert_eq!(p.sticky(), 0);
}

#[test]
fn an_unmapped_address_is_a_sticky_bus_error() {
    let mut p = Probe::new("timing=zero");
    p.power_up();
    p.read32(0x6000_0000);
    assert_eq!(p.sticky(), ctrl::STICKYERR);
    // Discarded while sticky: TAR does not move, the SRAM write does not happen.
    p.write32(SRAM_BASE, 0x1234_5678);
    assert_eq!(p.sim.peek(SRAM_BASE, 4).unwrap(), [0; 4]);
    // ABORT's clear bits are for SW-DP; on this JTAG-DP CTRL/STAT clears.
    p.acc(ABORT, 0, false, 0x1E);
    assert_eq!(p.sticky(), ctrl::STICKYERR);
    p.clear_sticky();
    assert_eq!(p.sticky(), 0);
    p.write32(SRAM_BASE, 0x1234_5678);
    assert_eq!(p.sim.peek(SRAM_BASE, 4).unwrap(), [0x78, 0x56, 0x34, 0x12]);
}

#[test]
fn halt_registers_and_reset_halt() {
    let mut p = Probe::new("timing=zero");
    p.sim
        .load_flash(
            FLASH_BASE,
            &[0x00, 0x50, 0x00, 0x20, 0x41, 0x01, 0x00, 0x08],
        )
        .unwrap();
    p.power_up();
    p.write32(regs::DHCSR, regs::dhcsr::DBGKEY | 0b11);
    assert_eq!(p.sim.core_state(), CoreState::Halted);
    p.write32(regs::DCRSR, 15);
    assert_ne!(p.read32(regs::DHCSR) & regs::dhcsr::S_REGRDY, 0);
    assert_eq!(p.read32(regs::DCRDR), 0xFFFF_FFFE, "blank at power-on");
    // reset halt as OpenOCD does it: vector catch, SYSRESETREQ.
    p.write32(regs::DEMCR, regs::demcr::TRCENA | regs::demcr::VC_CORERESET);
    p.write32(regs::AIRCR, 0x05FA_0004);
    assert_eq!(p.sim.stats().system_resets, 1);
    assert_eq!(p.sim.core_state(), CoreState::Halted);
    let dhcsr = p.read32(regs::DHCSR);
    assert_ne!(dhcsr & regs::dhcsr::S_RESET_ST, 0);
    assert_ne!(p.read32(regs::DFSR) & regs::dfsr::VCATCH, 0);
    p.write32(regs::DCRSR, 15);
    assert_eq!(p.read32(regs::DCRDR), 0x0800_0140);
    p.write32(regs::DCRSR, 17);
    assert_eq!(p.read32(regs::DCRDR), 0x2000_5000);
    // A register written stays written (nothing executes).
    p.write32(regs::DCRDR, 0x0800_0200);
    p.write32(regs::DCRSR, 15 | (1 << 16));
    p.write32(regs::DHCSR, regs::dhcsr::DBGKEY | 1);
    assert_eq!(p.sim.core_state(), CoreState::Running);
    p.write32(regs::DHCSR, regs::dhcsr::DBGKEY | 0b11);
    assert_eq!(p.sim.core_register(15), Some(0x0800_0200));
    // VECTKEY is checked.
    p.write32(regs::AIRCR, 0x0000_0004);
    assert_eq!(p.sim.stats().system_resets, 1);
}

#[test]
fn srst_holds_and_releases_the_chip() {
    let mut p = Probe::new("timing=zero");
    p.run(b"s");
    assert_eq!(p.sim.core_state(), CoreState::InReset);
    p.power_up();
    assert_ne!(p.read32(regs::DHCSR) & regs::dhcsr::S_RESET_ST, 0);
    p.run(b"r");
    assert_eq!(p.sim.core_state(), CoreState::Running);
    assert_eq!(p.sim.stats().system_resets, 1);
}

/// Unlocks the FPEC through the pins.
fn unlock(p: &mut Probe) {
    p.write32(regs::FPEC_BASE + 0x04, KEY1);
    p.write32(regs::FPEC_BASE + 0x04, KEY2);
    assert_eq!(p.read32(regs::FPEC_BASE + 0x10) & cr::LOCK, 0);
}

#[test]
fn programming_through_the_pins() {
    let mut p = Probe::new("timing=zero");
    p.power_up();
    // Locked: a write to flash is a bus error.
    p.write16(FLASH_BASE, 0x1234);
    assert_eq!(p.sticky(), ctrl::STICKYERR);
    p.clear_sticky();
    unlock(&mut p);
    p.write32(regs::FPEC_BASE + 0x10, cr::PG);
    p.write16(FLASH_BASE + 2, 0xBEEF);
    assert_eq!(p.read32(regs::FPEC_BASE + 0x0C), sr::EOP);
    assert_eq!(p.read32(FLASH_BASE), 0xBEEF_FFFF);
    // Not erased: PGERR, as OpenOCD's stm32x_wait_status_busy reports it.
    p.write16(FLASH_BASE + 2, 0x1111);
    assert_eq!(p.read32(regs::FPEC_BASE + 0x0C) & sr::PGERR, sr::PGERR);
    assert_eq!(p.read32(FLASH_BASE), 0xBEEF_FFFF);
    // A wrong key: a bus error, and locked until reset.
    p.write32(regs::FPEC_BASE + 0x10, cr::LOCK);
    p.write32(regs::FPEC_BASE + 0x04, 0x0BAD_0BAD);
    assert_eq!(p.sticky(), ctrl::STICKYERR);
    p.clear_sticky();
    p.write32(regs::FPEC_BASE + 0x04, KEY1);
    assert_eq!(p.sticky(), ctrl::STICKYERR);
    p.clear_sticky();
    p.write32(regs::AIRCR, 0x05FA_0004);
    unlock(&mut p);
}

#[test]
fn realistic_timing_shows_bsy_and_stalls_the_bus_with_wait() {
    let mut p = Probe::new("timing=realistic");
    p.power_up();
    p.dp_write(
        0x4,
        ctrl::CDBGPWRUPREQ | ctrl::CSYSPWRUPREQ | ctrl::ORUNDETECT,
    );
    unlock(&mut p);
    // A page erase keeps BSY for 20 ms of simulated time: at 1 MHz TCK, 20000 clocks.
    p.write32(regs::FPEC_BASE + 0x10, cr::PER);
    p.write32(regs::FPEC_BASE + 0x14, FLASH_BASE);
    let t0 = p.sim.sim_time();
    p.write32(regs::FPEC_BASE + 0x10, cr::PER | cr::STRT);
    assert_eq!(p.read32(regs::FPEC_BASE + 0x0C) & sr::BSY, sr::BSY);
    // A flash read now stalls: the AHB-AP answers WAIT until the erase is done.
    p.ap_write(0x04, FLASH_BASE);
    p.acc(APACC, 0xC, true, 0);
    let (ack, _) = p.acc(DPACC, 0xC, true, 0);
    assert_eq!(ack, ACK_WAIT);
    assert!(p.sim.stats().dap.waits >= 1);
    // Idle clocks (or idle host time) let it finish.
    p.sim.idle(Duration::from_millis(25));
    let (ack, value) = p.acc(DPACC, 0xC, true, 0);
    assert_eq!(ack, ACK_OK_FAULT);
    assert_eq!(value, 0xFFFF_FFFF, "the stalled read completed");
    assert!(p.sim.sim_time() - t0 >= Duration::from_millis(20));
    // The WAIT with ORUNDETECT left STICKYORUN set; OpenOCD clears it the same way.
    assert_eq!(p.sticky(), ctrl::STICKYORUN);
    p.clear_sticky();
    assert_eq!(p.read32(regs::FPEC_BASE + 0x0C), sr::EOP);
    // The simulated clock counts TCK at tck-khz.
    let before = (p.sim.sim_time(), p.sim.stats().tck_cycles);
    p.read32(regs::FPEC_BASE + 0x0C);
    let after = (p.sim.sim_time(), p.sim.stats().tck_cycles);
    assert_eq!(
        (after.0 - before.0).as_nanos() as u64,
        (after.1 - before.1) * 1_000
    );
}

#[test]
fn readout_protection_through_the_pins() {
    let mut p = Probe::new("timing=zero,locked=1");
    p.sim.load_flash(FLASH_BASE, &[1, 2, 3, 4]).unwrap();
    assert_eq!(p.sim.rdp(), RdpLevel::Level1);
    p.power_up();
    p.read32(FLASH_BASE);
    assert_eq!(p.sticky(), ctrl::STICKYERR);
    p.clear_sticky();
    p.read32(0);
    assert_eq!(p.sticky(), ctrl::STICKYERR, "the boot alias too");
    p.clear_sticky();
    assert_eq!(p.read32(regs::FPEC_BASE + 0x1C) & 2, 2, "OBR.RDPRT");
    assert_eq!(p.read32(OPTION_BYTES) & 0xFFFF, 0xFF00);
    // Unprotect: erase the option bytes (a mass erase), program RDP = 0xA5, reset.
    unlock(&mut p);
    p.write32(regs::FPEC_BASE + 0x08, KEY1);
    p.write32(regs::FPEC_BASE + 0x08, KEY2);
    p.write32(regs::FPEC_BASE + 0x10, cr::OPTER | cr::OPTWRE);
    p.write32(regs::FPEC_BASE + 0x10, cr::OPTER | cr::OPTWRE | cr::STRT);
    p.write32(regs::FPEC_BASE + 0x10, cr::OPTPG | cr::OPTWRE);
    p.write16(OPTION_BYTES, 0x00A5);
    assert_eq!(p.sim.rdp(), RdpLevel::Level1, "until the reset");
    assert_eq!(p.sim.rdp_after_reset(), RdpLevel::Level0);
    p.write32(regs::AIRCR, 0x05FA_0004);
    assert_eq!(p.sim.rdp(), RdpLevel::Level0);
    assert_eq!(
        p.read32(FLASH_BASE),
        0xFFFF_FFFF,
        "mass-erased and readable"
    );
    assert_eq!(p.sticky(), 0);
}

#[test]
fn an_injected_flash_error_fires_on_the_nth_halfword() {
    let mut p = Probe::new("timing=zero,flash-error=wrprterr#2");
    p.power_up();
    unlock(&mut p);
    p.write32(regs::FPEC_BASE + 0x10, cr::PG);
    p.write16(FLASH_BASE, 0x1111);
    assert_eq!(p.read32(regs::FPEC_BASE + 0x0C), sr::EOP);
    p.write16(FLASH_BASE + 2, 0x2222);
    assert_eq!(
        p.read32(regs::FPEC_BASE + 0x0C) & sr::WRPRTERR,
        sr::WRPRTERR
    );
    assert_eq!(p.sim.flash()[2..4], [0xFF, 0xFF]);
}

#[test]
fn remote_bitbang_bytes() {
    let mut sim = JtagSim::new(SimOptions::zero()).unwrap();
    let mut out = Vec::new();
    // Reads are answered in order; blink and unknown bytes are ignored; Q stops the batch.
    let fed = sim.feed(b"2626262626RBb\nR04R26R04Q0R", &mut out);
    assert_eq!(out, b"1111");
    assert!(fed.quit);
    assert_eq!(fed.consumed, 24);
    // Sleep commands of later OpenOCD versions advance the clock.
    let t = sim.sim_time();
    sim.feed(b"Zzz", &mut out);
    assert_eq!(sim.sim_time() - t, Duration::from_micros(1_002));
    let s = sim.stats();
    assert_eq!((s.bytes_in, s.bytes_out), (27, 4));
}

#[test]
fn drop_after_bytes_cuts_the_batch() {
    let mut sim = JtagSim::from_options("timing=zero,drop-after-bytes=10").unwrap();
    let mut out = Vec::new();
    let fed = sim.feed(b"0R4R", &mut out);
    assert_eq!((fed.consumed, fed.dropped), (4, false));
    let fed = sim.feed(b"0404040404", &mut out);
    assert_eq!((fed.consumed, fed.dropped), (6, true));
    let fed = sim.feed(b"R", &mut out);
    assert_eq!(
        (fed.consumed, fed.dropped),
        (0, true),
        "the target stays gone"
    );
    assert_eq!(out, b"11");
}

#[test]
fn saved_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chip.json");
    let options = format!("timing=zero,seed=42,state={}", path.display());
    let uid = {
        let mut p = Probe::new(&options);
        p.power_up();
        unlock(&mut p);
        p.write32(regs::FPEC_BASE + 0x10, cr::PG);
        p.write16(FLASH_BASE + 0x400, 0xA55A);
        // Lock: option erase, RDP = 0x00.
        p.write32(regs::FPEC_BASE + 0x08, KEY1);
        p.write32(regs::FPEC_BASE + 0x08, KEY2);
        p.write32(regs::FPEC_BASE + 0x10, cr::OPTER | cr::OPTWRE);
        p.write32(regs::FPEC_BASE + 0x10, cr::OPTER | cr::OPTWRE | cr::STRT);
        p.write32(regs::FPEC_BASE + 0x10, cr::OPTPG | cr::OPTWRE);
        p.write16(OPTION_BYTES, 0x0000);
        p.sim.persist(false).unwrap();
        assert!(path.exists(), "saved at once after an option-byte change");
        p.sim.save().unwrap();
        p.sim.uid()
    };
    let mut other = dir.path().to_owned();
    other.push("chip.json.tmp");
    assert!(!other.exists());
    // Another seed: the saved UID wins, and the chip powers on locked.
    let options = format!("timing=zero,seed=7,state={}", path.display());
    let mut p = Probe::new(&options);
    assert_eq!(p.sim.uid(), uid);
    assert_eq!(p.sim.rdp(), RdpLevel::Level1);
    assert_eq!(p.sim.flash()[0x400..0x402], [0x5A, 0xA5]);
    p.power_up();
    p.read32(FLASH_BASE + 0x400);
    assert_eq!(p.sticky(), ctrl::STICKYERR);
    let json = p.sim.state_json().unwrap();
    assert!(json.contains(STATE_FORMAT));
    // A broken state file is refused with a sentence.
    std::fs::write(&path, "{}").unwrap();
    let e = JtagSim::from_options(&options).unwrap_err().to_string();
    assert!(e.starts_with("the simulator state file is unusable"), "{e}");
}

#[test]
fn the_agent_answers_only_while_the_core_runs_an_image() {
    use flashgate_agent::{Message, PROTOCOL_VERSION};
    let sim = SimHandle::from_options("timing=zero,seed=3".parse().unwrap()).unwrap();
    let mut uart = AgentUart::new(sim.clone());
    let hello = Message::Hello.encode().unwrap();
    // Blank flash: the core faults at once, nothing answers.
    assert!(uart.feed(&hello).0.is_empty());
    sim.lock()
        .load_flash(
            FLASH_BASE,
            &[0x00, 0x50, 0x00, 0x20, 0x01, 0x01, 0x00, 0x08],
        )
        .unwrap();
    let (reply, took) = uart.feed(&hello);
    assert_eq!(took, Duration::ZERO);
    let mut dec = flashgate_agent::Decoder::default();
    dec.feed(&reply);
    let frame = dec.next_frame().unwrap().unwrap();
    let uid = sim.lock().uid();
    assert_eq!(
        Message::decode(&frame).unwrap(),
        Message::HelloReply {
            protocol_version: PROTOCOL_VERSION,
            device_type: DEVICE_TYPE.to_owned(),
            uid: uid.to_vec(),
        }
    );
    // Halted by the debugger: silent.
    {
        // Halt through the bus directly (as the debugger would, without the pins).
        let mut chip = sim.lock();
        chip.sys.core.write(regs::DHCSR, regs::dhcsr::DBGKEY | 0b11);
        assert_eq!(chip.core_state(), CoreState::Halted);
    }
    assert!(uart.feed(&hello).0.is_empty());
    sim.lock()
        .sys
        .core
        .write(regs::DHCSR, regs::dhcsr::DBGKEY | 0b01);
    assert!(!uart.feed(&hello).0.is_empty());
    // Realistic timing charges the wire time of both frames.
    let sim = SimHandle::from_options(SimOptions::default()).unwrap();
    sim.lock().load_flash(FLASH_BASE, &[0; 8]).unwrap();
    let mut uart = AgentUart::new(sim);
    let (reply, took) = uart.feed(&hello);
    let wire = |n: usize| Duration::from_nanos((n as u64 * 10_000_000_000).div_ceil(115_200));
    assert_eq!(took, wire(hello.len()) + wire(reply.len()));
}

#[test]
fn a_resumed_core_stops_at_a_breakpoint_on_its_pc() {
    let mut p = Probe::new("timing=zero");
    p.power_up();
    p.write32(regs::DHCSR, regs::dhcsr::DBGKEY | 0b11);
    p.write32(regs::DCRDR, 0x0800_0102);
    p.write32(regs::DCRSR, 15 | (1 << 16));
    // An FPB comparator on the upper half-word of 0x08000100.
    p.write32(regs::FP_CTRL, 3);
    p.write32(regs::FP_CTRL + 8, 0x0800_0100 | (2 << 30) | 1);
    p.write32(regs::DFSR, 0x1F);
    p.write32(regs::DHCSR, regs::dhcsr::DBGKEY | 1);
    assert_eq!(p.sim.core_state(), CoreState::Halted);
    assert_eq!(p.read32(regs::DFSR), regs::dfsr::BKPT);
    // The lower half-word does not match; without the comparator the core runs.
    p.write32(regs::FP_CTRL + 8, 0x0800_0100 | (1 << 30) | 1);
    p.write32(regs::DHCSR, regs::dhcsr::DBGKEY | 1);
    assert_eq!(p.sim.core_state(), CoreState::Running);
    // A BKPT instruction at the PC (OpenOCD's soft breakpoints outside the code region).
    p.write32(regs::DHCSR, regs::dhcsr::DBGKEY | 0b11);
    p.write32(SRAM_BASE + 0x10, 0x0000_BE00);
    p.write32(regs::DCRDR, SRAM_BASE + 0x10);
    p.write32(regs::DCRSR, 15 | (1 << 16));
    p.write32(regs::DHCSR, regs::dhcsr::DBGKEY | 1);
    assert_eq!(p.sim.core_state(), CoreState::Halted);
}

fn wait_for(path: &std::path::Path) {
    let t = std::time::Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn serve_on_a_socket_until_stopped() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let stop = Stop::new();
    let thread = {
        let (socket, stop) = (socket.clone(), stop.clone());
        std::thread::spawn(move || serve(SimOptions::zero(), &socket, &stop))
    };
    wait_for(&socket);
    let mut bytes = b"262626262604260404".to_vec();
    for _ in 0..32 {
        bytes.extend_from_slice(b"0R4");
    }
    bytes.push(b'Q');
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.write_all(&bytes).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap(); // The server closes after Q.
    let idcode = out
        .iter()
        .rev()
        .fold(0u32, |v, &b| (v << 1) | u32::from(b == b'1'));
    assert_eq!(idcode, DEBUG_IDCODE);
    stop.stop();
    let sim = thread.join().unwrap().unwrap();
    assert!(!socket.exists(), "removed after itself");
    assert_eq!(sim.lock().stats().connections, 1);
}

#[test]
fn a_stale_socket_is_replaced_and_other_files_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    std::fs::write(&path, "not a socket").unwrap();
    let sim = SimHandle::from_options(SimOptions::zero()).unwrap();
    let e = Server::start(sim.clone(), &path).unwrap_err().to_string();
    assert!(e.contains("is not a stale socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    std::fs::remove_file(&path).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket is left behind");
    let server = Server::start(sim, &path).unwrap();
    assert!(server.is_running());
    assert!(server.agent_pty().is_none());
    server.stop().unwrap();
    assert!(!path.exists());
}

#[test]
fn the_cli_takes_the_state_path_and_checks_options() {
    let o = cli_options(Some("/tmp/chip.json".into()), "timing=zero").unwrap();
    assert_eq!(
        o.state_file.as_deref(),
        Some(std::path::Path::new("/tmp/chip.json"))
    );
    assert_eq!(o.timing, SimTiming::zero());
    assert!(cli_options(None, "timing=warp").is_err());
}
