//! The simulator byte by byte, as AN3155 and stm32flash expect it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use flashgate_agent::Message;
use flashgate_serial::SerialDevice;
use flashgate_stm32_uart::protocol::*;
use flashgate_stm32_uart::sim::{
    Fault, FaultKind, SimError, SimMode, SimOptions, SimTiming, Stm32Sim,
};
use flashgate_stm32_uart::{RdpLevel, STM32F103_MD, STM32F4_413};
use flashgate_target::{Location, Space};

fn chip(part: &'static flashgate_stm32_uart::Part) -> Stm32Sim {
    let mut c = Stm32Sim::new(SimOptions::new(part).instant()).unwrap();
    assert_eq!(c.feed(&[SYNC]).0, [ACK]);
    c
}

fn send(c: &mut Stm32Sim, bytes: &[u8]) -> Vec<u8> {
    c.feed(bytes).0
}

/// Read Memory through the protocol.
fn read(c: &mut Stm32Sim, address: u32, n: usize) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = send(c, &command_frame(CMD_READ));
    if got != [ACK] {
        return Err(got);
    }
    got = send(c, &address_frame(address));
    if got != [ACK] {
        return Err(got);
    }
    let l = (n - 1) as u8;
    let r = send(c, &[l, !l]);
    if r.first() != Some(&ACK) {
        return Err(r);
    }
    Ok(r[1..].to_vec())
}

/// Write Memory through the protocol; the last answer byte.
fn write(c: &mut Stm32Sim, address: u32, data: &[u8]) -> Vec<u8> {
    let r = send(c, &command_frame(CMD_WRITE));
    if r != [ACK] {
        return r;
    }
    let r = send(c, &address_frame(address));
    if r != [ACK] {
        return r;
    }
    let mut f = vec![(data.len() - 1) as u8];
    f.extend_from_slice(data);
    f.push(xor(&f));
    send(c, &f)
}

#[test]
fn get_version_id_exact_bytes() {
    let mut c = chip(&STM32F103_MD);
    assert_eq!(
        send(&mut c, &[0x00, 0xFF]),
        [
            0x79, 0x0B, 0x22, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x43, 0x63, 0x73, 0x82, 0x92,
            0x79
        ]
    );
    assert_eq!(send(&mut c, &[0x01, 0xFE]), [0x79, 0x22, 0x00, 0x00, 0x79]);
    assert_eq!(send(&mut c, &[0x02, 0xFD]), [0x79, 0x01, 0x04, 0x10, 0x79]);
    let mut c = chip(&STM32F4_413);
    assert_eq!(
        send(&mut c, &[0x00, 0xFF]),
        [
            0x79, 0x0B, 0x31, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92,
            0x79
        ]
    );
    assert_eq!(send(&mut c, &[0x02, 0xFD]), [0x79, 0x01, 0x04, 0x13, 0x79]);
}

#[test]
fn sync_and_resync() {
    let mut c = Stm32Sim::new(SimOptions::default().instant()).unwrap();
    // Before sync, everything but 0x7F is ignored.
    assert_eq!(send(&mut c, &[0x00, 0xFF, 0x55]), Vec::<u8>::new());
    assert_eq!(send(&mut c, &[SYNC]), [ACK]);
    // stm32flash's init on a chip that is already synchronised: 0x7F waits for its
    // complement, a second 0x7F is a bad complement: NACK.
    assert_eq!(send(&mut c, &[SYNC]), Vec::<u8>::new());
    assert_eq!(send(&mut c, &[SYNC]), [NACK]);
    // Its resync: an invalid command 0xFF 0x00 gets NACK.
    assert_eq!(send(&mut c, &[0xFF, 0x00]), [NACK]);
    // Unknown command with a good complement; Extended Erase on the F1.
    assert_eq!(send(&mut c, &command_frame(0x55)), [NACK]);
    assert_eq!(send(&mut c, &command_frame(CMD_EXTENDED_ERASE)), [NACK]);
    assert_eq!(c.mode(), SimMode::Bootloader);
}

#[test]
fn read_memory_checks() {
    let mut c = chip(&STM32F103_MD);
    c.load_flash(0x0800_0100, &[1, 2, 3, 4]).unwrap();
    assert_eq!(read(&mut c, 0x0800_0100, 4).unwrap(), [1, 2, 3, 4]);
    assert_eq!(read(&mut c, 0x0800_0100, 256).unwrap().len(), 256);
    // UID and flash size in the signature window; option bytes.
    let uid = c.uid();
    assert_eq!(read(&mut c, 0x1FFF_F7E8, 12).unwrap(), uid);
    assert_eq!(read(&mut c, 0x1FFF_F7E0, 2).unwrap(), [0x80, 0x00]);
    assert_eq!(
        read(&mut c, 0x1FFF_F800, 16).unwrap(),
        STM32F103_MD.option_defaults
    );
    // Bad address checksum.
    assert_eq!(send(&mut c, &command_frame(CMD_READ)), [ACK]);
    assert_eq!(send(&mut c, &[0x08, 0, 0, 0, 0x09]), [NACK]);
    // Unmapped address.
    assert_eq!(read(&mut c, 0x4000_0000, 4), Err(vec![NACK]));
    // Past the end of flash.
    assert_eq!(read(&mut c, 0x0801_FFF0, 32), Err(vec![NACK]));
    // Bad length complement.
    assert_eq!(send(&mut c, &command_frame(CMD_READ)), [ACK]);
    assert_eq!(send(&mut c, &address_frame(0x0800_0000)), [ACK]);
    assert_eq!(send(&mut c, &[3, 3]), [NACK]);
    // F4: UID and flash size in their own window, OTP readable.
    let mut c = chip(&STM32F4_413);
    let uid = c.uid();
    assert_eq!(read(&mut c, 0x1FFF_7A10, 12).unwrap(), uid);
    assert_eq!(read(&mut c, 0x1FFF_7A22, 2).unwrap(), [0x00, 0x04]);
    assert_eq!(read(&mut c, 0x1FFF_7800, 32).unwrap(), [0xFF; 32]);
}

#[test]
fn write_memory_checks() {
    let mut c = chip(&STM32F103_MD);
    assert_eq!(write(&mut c, 0x0800_0000, &[1, 2, 3, 4]), [ACK]);
    // Bad data checksum.
    assert_eq!(send(&mut c, &command_frame(CMD_WRITE)), [ACK]);
    assert_eq!(send(&mut c, &address_frame(0x0800_0004)), [ACK]);
    assert_eq!(send(&mut c, &[3, 9, 9, 9, 9, 0x00]), [NACK]);
    assert_eq!(c.peek(0x0800_0004, 4).unwrap(), [0xFF; 4]);
    // Unaligned address; the bootloader's own SRAM; system memory.
    assert_eq!(write(&mut c, 0x0800_0102, &[0; 4]), [NACK]);
    assert_eq!(write(&mut c, 0x2000_0100, &[0; 4]), [NACK]);
    assert_eq!(write(&mut c, 0x1FFF_F000, &[0; 4]), [NACK]);
    assert_eq!(write(&mut c, 0x2000_0200, &[7; 8]), [ACK]);
    assert_eq!(c.peek(0x2000_0200, 8).unwrap(), [7; 8]);
    // F1: a written half-word cannot be programmed again (except to zero).
    assert_eq!(write(&mut c, 0x0800_0000, &[0, 2, 3, 4]), [NACK]);
    assert_eq!(write(&mut c, 0x0800_0000, &[0, 0, 0, 0]), [ACK]);
    // F4: programming ANDs.
    let mut c = chip(&STM32F4_413);
    assert_eq!(write(&mut c, 0x0800_0000, &[0xF0; 4]), [ACK]);
    assert_eq!(write(&mut c, 0x0800_0000, &[0x3C; 4]), [ACK]);
    assert_eq!(c.peek(0x0800_0000, 4).unwrap(), [0x30; 4]);
    // OTP: bits only clear; a locked block refuses.
    assert_eq!(write(&mut c, 0x1FFF_7800, &[0x0F; 4]), [ACK]);
    assert_eq!(write(&mut c, 0x1FFF_7A00, &[0x00, 0xFF, 0xFF, 0xFF]), [ACK]);
    assert_eq!(write(&mut c, 0x1FFF_7804, &[0; 4]), [NACK]);
    assert_eq!(write(&mut c, 0x1FFF_7820, &[0; 4]), [ACK]);
}

#[test]
fn erase_commands() {
    let mut c = chip(&STM32F103_MD);
    c.load_flash(0x0800_0000, &[0; 3 * 1024]).unwrap();
    // Erase pages 0 and 2.
    assert_eq!(send(&mut c, &command_frame(CMD_ERASE)), [ACK]);
    assert_eq!(send(&mut c, &[1, 0, 2, 1 ^ 2]), [ACK]);
    assert_eq!(c.peek(0x0800_0000, 1).unwrap(), [0xFF]);
    assert_eq!(c.peek(0x0800_0400, 1).unwrap(), [0x00]);
    assert_eq!(c.peek(0x0800_0800, 1).unwrap(), [0xFF]);
    // Bad checksum.
    assert_eq!(send(&mut c, &command_frame(CMD_ERASE)), [ACK]);
    assert_eq!(send(&mut c, &[0, 1, 0]), [NACK]);
    // Page out of range.
    assert_eq!(send(&mut c, &command_frame(CMD_ERASE)), [ACK]);
    assert_eq!(send(&mut c, &[0, 200, 200]), [NACK]);
    // Global erase: 0xFF then 0x00.
    assert_eq!(send(&mut c, &command_frame(CMD_ERASE)), [ACK]);
    assert_eq!(send(&mut c, &[0xFF, 0x00]), [ACK]);
    assert!(c.flash().iter().all(|&b| b == 0xFF));

    let mut c = chip(&STM32F4_413);
    c.load_flash(0x0800_0000, &vec![0; 0x3_0000]).unwrap();
    assert_eq!(send(&mut c, &command_frame(CMD_ERASE)), [NACK]);
    // Sector 4 (64 KiB at 0x08010000).
    assert_eq!(send(&mut c, &command_frame(CMD_EXTENDED_ERASE)), [ACK]);
    assert_eq!(send(&mut c, &[0, 0, 0, 4, 4]), [ACK]);
    assert_eq!(c.peek(0x0800_FFFF, 2).unwrap(), [0x00, 0xFF]);
    assert_eq!(c.peek(0x0801_FFFF, 2).unwrap(), [0xFF, 0x00]);
    // Bank erase codes do not exist on the single-bank 0x413.
    assert_eq!(send(&mut c, &command_frame(CMD_EXTENDED_ERASE)), [ACK]);
    assert_eq!(send(&mut c, &[0xFF, 0xFE, 0x01]), [NACK]);
    // Mass erase 0xFFFF with checksum 0x00.
    assert_eq!(send(&mut c, &command_frame(CMD_EXTENDED_ERASE)), [ACK]);
    assert_eq!(send(&mut c, &[0xFF, 0xFF, 0x00]), [ACK]);
    assert!(c.flash().iter().all(|&b| b == 0xFF));
}

#[test]
fn write_protection_and_option_writes_reset() {
    let mut c = chip(&STM32F103_MD);
    // Protect WRP bit 0 (pages 0-3): ACK, ACK, then a reset.
    assert_eq!(send(&mut c, &command_frame(CMD_WRITE_PROTECT)), [ACK]);
    assert_eq!(send(&mut c, &[0, 0, 0]), [ACK]);
    assert_eq!(c.mode(), SimMode::AwaitingSync);
    assert_eq!(send(&mut c, &[SYNC]), [ACK]);
    assert_eq!(c.option_bytes()[8], 0xFE);
    assert_eq!(write(&mut c, 0x0800_0000, &[0; 4]), [NACK]);
    assert_eq!(write(&mut c, 0x0800_1000, &[0; 4]), [ACK]);
    assert_eq!(send(&mut c, &command_frame(CMD_ERASE)), [ACK]);
    assert_eq!(send(&mut c, &[0xFF, 0x00]), [NACK], "mass erase refused");
    assert_eq!(
        send(&mut c, &command_frame(CMD_WRITE_UNPROTECT)),
        [ACK, ACK]
    );
    assert_eq!(c.mode(), SimMode::AwaitingSync);
    assert_eq!(send(&mut c, &[SYNC]), [ACK]);
    assert_eq!(write(&mut c, 0x0800_0000, &[0; 4]), [ACK]);
    // Writing the option bytes (RDP byte 0x00) resets into level 1.
    let mut ob = c.option_bytes();
    ob[0] = 0x00;
    ob[1] = 0xFF;
    assert_eq!(write(&mut c, 0x1FFF_F800, &ob), [ACK]);
    assert_eq!(c.rdp(), RdpLevel::Level1);
    assert_eq!(c.mode(), SimMode::AwaitingSync);
}

#[test]
fn readout_protect_resets_and_level2_is_silent() {
    let mut c = chip(&STM32F4_413);
    assert_eq!(
        send(&mut c, &command_frame(CMD_READOUT_PROTECT)),
        [ACK, ACK]
    );
    assert_eq!(c.rdp(), RdpLevel::Level1);
    assert_eq!(c.option_bytes()[1], 0x00);
    assert_eq!(send(&mut c, &command_frame(CMD_GET_ID)), Vec::<u8>::new());
    assert_eq!(send(&mut c, &[SYNC]), [ACK]);
    assert_eq!(send(&mut c, &command_frame(CMD_READOUT_PROTECT)), [NACK]);
    c.set_rdp(RdpLevel::Level2);
    assert_eq!(c.mode(), SimMode::Disabled);
    assert_eq!(send(&mut c, &[SYNC]), Vec::<u8>::new());
}

#[test]
fn go_starts_the_agent() {
    let mut c = chip(&STM32F103_MD);
    c.load_flash(
        0x0800_0000,
        &[0x00, 0x50, 0x00, 0x20, 0x01, 0x01, 0x00, 0x08],
    )
    .unwrap();
    assert_eq!(send(&mut c, &command_frame(CMD_GO)), [ACK]);
    // Go only to flash or SRAM.
    assert_eq!(send(&mut c, &address_frame(0x4000_0000)), [NACK]);
    assert_eq!(send(&mut c, &command_frame(CMD_GO)), [ACK]);
    assert_eq!(send(&mut c, &address_frame(0x0800_0000)), [ACK]);
    assert_eq!(c.mode(), SimMode::Application);
    let reply = send(&mut c, &Message::Hello.encode().unwrap());
    let mut dec = flashgate_agent::Decoder::new();
    dec.feed(&reply);
    let m = Message::decode(&dec.next_frame().unwrap().unwrap()).unwrap();
    let (device_type, uid) = m.into_hello_reply().unwrap();
    assert_eq!(device_type, "stm32f103-md");
    assert_eq!(uid, c.uid());
    assert_eq!(
        c.identity(),
        Location::new(Space::Flash, 0x1_FC00),
        "default key place on the F103"
    );
    // A reset of the fixture brings the bootloader back.
    c.reset_link();
    assert_eq!(c.mode(), SimMode::AwaitingSync);
}

#[test]
fn reset_on_reopen_off_keeps_the_chip_running() {
    let mut o = SimOptions::default().instant();
    o.reset_on_link_reset = false;
    let mut c = Stm32Sim::new(o).unwrap();
    assert_eq!(send(&mut c, &[SYNC]), [ACK]);
    assert_eq!(send(&mut c, &command_frame(CMD_READ)), [ACK]);
    c.reset_link();
    // The half command is dropped, the bootloader stays synchronised.
    assert_eq!(c.mode(), SimMode::Bootloader);
    assert_eq!(send(&mut c, &command_frame(CMD_GET_ID)).len(), 5);
}

#[test]
fn timing_of_a_write_block() {
    let mut o = SimOptions::new(&STM32F103_MD);
    o.timing = SimTiming::realistic();
    let mut c = Stm32Sim::new(o).unwrap();
    let (_, t) = c.feed(&[SYNC]);
    assert_eq!(
        t,
        Duration::from_nanos((2 * 11 * 1_000_000_000u64).div_ceil(115_200))
    );
    c.feed(&command_frame(CMD_WRITE));
    c.feed(&address_frame(0x0800_0000));
    let mut f = vec![255u8];
    f.extend_from_slice(&[0x5A; 256]);
    f.push(xor(&f));
    let (r, t) = c.feed(&f);
    assert_eq!(r, [ACK]);
    // 258 bytes in, 1 out, 8E1 at 115200, then 128 half-words at 50 us.
    let wire = (259u64 * 11 * 1_000_000_000).div_ceil(115_200);
    assert_eq!(t, Duration::from_nanos(wire + 128 * 50_000));
    // Mass erase on the F4: 8 s.
    let mut o = SimOptions::new(&STM32F4_413);
    o.timing.baud = 0;
    let mut c = Stm32Sim::new(o).unwrap();
    c.feed(&[SYNC]);
    c.feed(&command_frame(CMD_EXTENDED_ERASE));
    let (r, t) = c.feed(&[0xFF, 0xFF, 0x00]);
    assert_eq!(r, [ACK]);
    assert_eq!(t, Duration::from_secs(8));
}

#[test]
fn faults_fire_once_where_told() {
    let mut c = Stm32Sim::new(
        SimOptions::default()
            .instant()
            .with_fault(Fault::at(FaultKind::DropReplyByte, CMD_GET_ID, 1))
            .with_fault("bad-checksum@read:0x08000010".parse().unwrap()),
    )
    .unwrap();
    send(&mut c, &[SYNC]);
    assert_eq!(send(&mut c, &command_frame(CMD_GET_ID)).len(), 5);
    assert_eq!(send(&mut c, &command_frame(CMD_GET_ID)), [ACK, 1, 4, 0x10]);
    assert_eq!(send(&mut c, &command_frame(CMD_GET_ID)).len(), 5);
    assert!(read(&mut c, 0x0800_0000, 16).is_ok());
    assert_eq!(read(&mut c, 0x0800_0000, 32), Err(vec![NACK]));
    assert!(read(&mut c, 0x0800_0000, 32).is_ok());
    assert_eq!(c.fired_faults().len(), 2);
}

#[test]
fn state_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chip.json");
    let mut o = SimOptions::new(&STM32F4_413).instant();
    o.state_file = Some(path.clone());
    o.seed = 42;
    let uid;
    {
        let mut c = Stm32Sim::new(o.clone()).unwrap();
        uid = c.uid();
        send(&mut c, &[SYNC]);
        assert_eq!(write(&mut c, 0x0800_0000, &[1, 2, 3, 4]), [ACK]);
        assert_eq!(write(&mut c, 0x1FFF_7800, &[5; 8]), [ACK]);
        assert_eq!(
            send(&mut c, &command_frame(CMD_READOUT_PROTECT)),
            [ACK, ACK]
        );
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"format\": \"flashgate-stm32-uart-sim/1\""));
    // A different seed does not matter: the file wins.
    o.seed = 7;
    let c = Stm32Sim::new(o).unwrap();
    assert_eq!(c.uid(), uid);
    assert_eq!(c.peek(0x0800_0000, 4).unwrap(), [1, 2, 3, 4]);
    assert_eq!(&c.otp()[..8], &[5; 8]);
    assert_eq!(c.rdp(), RdpLevel::Level1);
    drop(c);
    // The file of an F4 is refused for an F103.
    let mut o = SimOptions::new(&STM32F103_MD);
    o.state_file = Some(path);
    assert!(matches!(Stm32Sim::new(o), Err(SimError::State { .. })));
}

#[test]
fn option_strings() {
    let o: SimOptions = "part=f4,timing=instant,baud=921600,parity=none,seed=0x10,identity=otp:0x20,fault=nack@write#2,reset-on-reopen=off"
        .parse()
        .unwrap();
    assert_eq!(o.part.pid, 0x413);
    assert_eq!(o.timing.baud, 921_600);
    assert!(!o.timing.parity);
    assert!(!o.timing.flash);
    assert_eq!(o.seed, 16);
    assert_eq!(o.identity, Some(Location::new(Space::Otp, 0x20)));
    assert_eq!(o.faults, vec![Fault::at(FaultKind::Nack, CMD_WRITE, 2)]);
    assert!(!o.reset_on_link_reset);
    let o: SimOptions = "uid=00112233445566778899aabb".parse().unwrap();
    assert_eq!(o.chip_uid()[11], 0xBB);
    for bad in [
        "part=f0",
        "timing=slow",
        "parity=odd",
        "identity=otp:0",
        "fault=zap@write",
        "colour=blue",
        "uid=0011",
    ] {
        assert!(bad.parse::<SimOptions>().is_err(), "{bad}");
    }
    // Seeds give distinct, plausible UIDs.
    let a = SimOptions::default().chip_uid();
    let b = SimOptions {
        seed: 1,
        ..SimOptions::default()
    };
    assert_ne!(a, b.chip_uid());
    assert_eq!(&a[5..8], b"SIM");
}

#[test]
fn cli_options_check() {
    let (o, serve) = flashgate_stm32_uart::cli_options(
        "f103",
        Some("/tmp/x.json".into()),
        "timing=instant,realtime=off,link=/tmp/ttySTM,control=/tmp/stm.sock,nrst=rts,boot0=dtr",
    )
    .unwrap();
    assert_eq!(o.part.pid, 0x410);
    assert_eq!(
        serve.control.as_deref(),
        Some(std::path::Path::new("/tmp/stm.sock"))
    );
    assert_eq!(
        o.wiring.nrst,
        flashgate_stm32_uart::sim::PinSource::Line(flashgate_serial::ModemLine::Rts)
    );
    let pty = serve.pty;
    assert!(!pty.realtime);
    assert_eq!(
        pty.link.as_deref(),
        Some(std::path::Path::new("/tmp/ttySTM"))
    );
    assert_eq!(
        o.state_file.as_deref(),
        Some(std::path::Path::new("/tmp/x.json"))
    );
    assert!(flashgate_stm32_uart::cli_options("avr", None, "").is_err());
    assert!(flashgate_stm32_uart::serve_cli("f103", None, "bogus=1").is_err());
}
