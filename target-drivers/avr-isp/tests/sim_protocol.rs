//! The simulated ArduinoISP answers byte for byte as the sketch does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use flashgate_avr_isp::sim::{
    AvrChip, AvrFault, AvrSim, AvrSimConfig, AvrTiming, ChipState, Trigger,
};
use flashgate_avr_isp::{stk, ATMEGA2560, ATMEGA328P};
use flashgate_serial::SerialDevice;

fn fast() -> AvrSim {
    AvrSim::new(&AvrSimConfig::fast(&ATMEGA328P)).unwrap()
}

/// SET_DEVICE as avrdude 7.1 sends it for an m328p.
const SET_DEVICE_328P: [u8; 22] = [
    0x42, 0x86, 0, 0, 1, 1, 1, 1, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x80, 0x04, 0x00, 0x00, 0x00,
    0x80, 0x00, 0x20,
];

#[test]
fn answers_like_the_sketch() {
    let sim = fast();
    let mut p = sim.programmer();
    let mut ask = |bytes: &[u8]| p.feed(bytes).0;
    assert_eq!(ask(&[0x30, 0x20]), [0x14, 0x10]);
    assert_eq!(ask(&[0x41, 0x80, 0x20]), [0x14, 2, 0x10]);
    assert_eq!(ask(&[0x41, 0x81, 0x20]), [0x14, 1, 0x10]);
    assert_eq!(ask(&[0x41, 0x82, 0x20]), [0x14, 18, 0x10]);
    assert_eq!(ask(&[0x41, 0x93, 0x20]), [0x14, b'S', 0x10]);
    assert_eq!(ask(&[0x41, 0x98, 0x20]), [0x14, 0, 0x10]);
    assert_eq!(ask(&[0x31, 0x20]), b"\x14AVR ISP\x10");
    assert_eq!(ask(&SET_DEVICE_328P), [0x14, 0x10]);
    assert_eq!(ask(&[0x45, 5, 4, 0xD7, 0xC2, 1, 0x20]), [0x14, 0x10]);
    // Bytes may arrive one at a time.
    assert!(ask(&[0x50]).is_empty());
    assert_eq!(ask(&[0x20]), [0x14, 0x10]);
    assert_eq!(ask(&[0x75, 0x20]), [0x14, 0x1E, 0x95, 0x0F, 0x10]);
    // UNIVERSAL returns the 4th byte the chip shifts out: Read Signature byte 1.
    assert_eq!(
        ask(&[0x56, 0x30, 0x00, 0x01, 0x00, 0x20]),
        [0x14, 0x95, 0x10]
    );
    // Lock and fuses.
    assert_eq!(
        ask(&[0x56, 0x58, 0x00, 0x00, 0x00, 0x20]),
        [0x14, 0xFF, 0x10]
    );
    assert_eq!(
        ask(&[0x56, 0x50, 0x00, 0x00, 0x00, 0x20]),
        [0x14, 0x62, 0x10]
    );
    assert_eq!(
        ask(&[0x56, 0x58, 0x08, 0x00, 0x00, 0x20]),
        [0x14, 0xD9, 0x10]
    );
    assert_eq!(
        ask(&[0x56, 0x50, 0x08, 0x00, 0x00, 0x20]),
        [0x14, 0xFF, 0x10]
    );
    // Wrong end byte: NOSYNC alone.
    assert_eq!(ask(&[0x30, 0x21]), [0x15]);
    // A stray EOP: NOSYNC; an unknown command: UNKNOWN if followed by EOP, else NOSYNC.
    assert_eq!(ask(&[0x20]), [0x15]);
    assert_eq!(ask(&[0x99, 0x20]), [0x12]);
    assert_eq!(ask(&[0x99, 0x00]), [0x15]);
    // PROG_PAGE with an unknown memory type: FAILED at once, the rest read as commands.
    assert_eq!(ask(&[0x64, 0x00, 0x02, b'X']), [0x11]);
    // READ_PAGE with an unknown memory type: INSYNC FAILED.
    assert_eq!(ask(&[0x74, 0x00, 0x02, b'X', 0x20]), [0x14, 0x11]);
    // LEAVE_PROGMODE.
    assert_eq!(ask(&[0x51, 0x20]), [0x14, 0x10]);
}

fn enter(p: &mut impl SerialDevice) {
    assert_eq!(p.feed(&SET_DEVICE_328P).0, [0x14, 0x10]);
    assert_eq!(p.feed(&[0x50, 0x20]).0, [0x14, 0x10]);
}

#[test]
fn pages_words_and_addresses() {
    let sim = fast();
    let mut p = sim.programmer();
    enter(&mut p);
    // Chip erase through UNIVERSAL.
    assert_eq!(
        p.feed(&[0x56, 0xAC, 0x80, 0, 0, 0x20]).0,
        [0x14, 0x00, 0x10]
    );
    // Word address 0x40 = byte 0x80; 4 bytes of flash.
    assert_eq!(p.feed(&[0x55, 0x40, 0x00, 0x20]).0, [0x14, 0x10]);
    assert_eq!(
        p.feed(&[0x64, 0x00, 0x04, b'F', 1, 2, 3, 4, 0x20]).0,
        [0x14, 0x10]
    );
    assert_eq!(p.address(), 0x42);
    sim.with_chip(|c| assert_eq!(&c.flash()[0x80..0x86], &[1, 2, 3, 4, 0xFF, 0xFF]));
    // Programming clears bits only.
    assert_eq!(p.feed(&[0x55, 0x40, 0x00, 0x20]).0, [0x14, 0x10]);
    assert_eq!(
        p.feed(&[0x64, 0x00, 0x02, b'F', 0xF0, 0x0F, 0x20]).0,
        [0x14, 0x10]
    );
    sim.with_chip(|c| assert_eq!(&c.flash()[0x80..0x82], &[0x00, 0x02]));
    // Read back; an odd length still sends whole words, as the sketch does.
    assert_eq!(p.feed(&[0x55, 0x40, 0x00, 0x20]).0, [0x14, 0x10]);
    assert_eq!(
        p.feed(&[0x74, 0x00, 0x03, b'F', 0x20]).0,
        [0x14, 0x00, 0x02, 3, 4, 0x10]
    );
    // EEPROM page commands take a word address (doubled by the sketch).
    assert_eq!(p.feed(&[0x55, 0x08, 0x00, 0x20]).0, [0x14, 0x10]);
    assert_eq!(
        p.feed(&[0x64, 0x00, 0x02, b'E', 0xAB, 0xCD, 0x20]).0,
        [0x14, 0x10]
    );
    sim.with_chip(|c| assert_eq!(&c.eeprom()[0x10..0x12], &[0xAB, 0xCD]));
    assert_eq!(
        p.feed(&[0x74, 0x00, 0x02, b'E', 0x20]).0,
        [0x14, 0xAB, 0xCD, 0x10]
    );
    // An EEPROM write longer than the EEPROM is refused before its data is read.
    assert_eq!(p.feed(&[0x64, 0x08, 0x00, b'E', 0x20]).0, [0x14, 0x11]);
    // Write a flash page with an EOP missing: NOSYNC, nothing written.
    assert_eq!(p.feed(&[0x55, 0x00, 0x01, 0x20]).0, [0x14, 0x10]);
    assert_eq!(
        p.feed(&[0x64, 0x00, 0x02, b'F', 0x00, 0x00, 0x21]).0,
        [0x15]
    );
    sim.with_chip(|c| assert_eq!(&c.flash()[0x200..0x202], &[0xFF, 0xFF]));
    assert!(p.errors() > 0);
}

#[test]
fn lock_bits_rules() {
    let mut c = AvrChip::new(&ATMEGA328P);
    let now = Duration::ZERO;
    c.set_reset(true);
    assert_eq!(c.spi([0x58, 0, 0, 0], now, false), 0x00, "not enabled yet");
    c.spi([0xAC, 0x53, 0, 0], now, false);
    assert!(c.programming_enabled());
    c.spi([0xAC, 0xE0, 0x00, 0x0F], now, false);
    assert_eq!(c.spi([0x58, 0, 0, 0], now, false), 0xCF);
    // Bits can only be cleared.
    c.spi([0xAC, 0xE0, 0x00, 0xFF], now, false);
    assert_eq!(c.lock(), 0xCF);
    // LB mode 2: programming disabled, verification allowed.
    c.spi([0xAC, 0xE0, 0x00, 0xFE], now, false);
    assert_eq!(c.lock(), 0xCE);
    c.spi([0x40, 0, 0, 0x00], now, false);
    c.spi([0x4C, 0, 0, 0], now, false);
    assert_eq!(c.spi([0x20, 0, 0, 0], now, false), 0xFF);
    c.spi([0xAC, 0xA0, 0x00, 0x00], now, false);
    assert_eq!(c.fuses()[0], 0x62, "fuses locked");
    // LB mode 3: reads return 0x00.
    c.spi([0xAC, 0xE0, 0x00, 0xFC], now, false);
    assert_eq!(c.lock(), 0xCC);
    assert_eq!(c.spi([0x20, 0, 0, 0], now, false), 0x00);
    assert_eq!(c.spi([0xA0, 0, 0, 0], now, false), 0x00);
    assert!(c.stats().ignored_locked >= 2);
    // Only chip erase restores 0xFF.
    c.spi([0xAC, 0x80, 0, 0], now, true);
    // Busy for tWD_ERASE: ignored, except the poll.
    assert_eq!(c.spi([0x58, 0, 0, 0], now, true), 0xFF);
    assert_eq!(c.stats().ignored_busy, 1);
    assert_eq!(c.spi([0xF0, 0, 0, 0], now, true), 1);
    let later = Duration::from_millis(9);
    assert_eq!(c.spi([0xF0, 0, 0, 0], later, true), 0);
    assert_eq!(c.spi([0x58, 0, 0, 0], later, true), 0xFF);
    assert_eq!(c.lock(), 0xFF);
}

#[test]
fn atmega2560_extended_address_instruction() {
    let mut c = AvrChip::new(&ATMEGA2560);
    let now = Duration::ZERO;
    c.set_reset(true);
    c.spi([0xAC, 0x53, 0, 0], now, false);
    c.spi([0x4D, 0x00, 0x01, 0x00], now, false);
    c.spi([0x40, 0x00, 0x00, 0x12], now, false);
    c.spi([0x48, 0x00, 0x00, 0x34], now, false);
    c.spi([0x4C, 0x00, 0x00, 0], now, false);
    assert_eq!(&c.flash()[0x20000..0x20002], &[0x12, 0x34]);
    assert_eq!(c.spi([0x28, 0x00, 0x00, 0], now, false), 0x34);
    c.spi([0x4D, 0x00, 0x00, 0x00], now, false);
    assert_eq!(c.spi([0x28, 0x00, 0x00, 0], now, false), 0xFF);
}

#[test]
fn timing_is_reported() {
    let config = AvrSimConfig {
        timing: AvrTiming::realistic(),
        ..AvrSimConfig::default()
    };
    let sim = AvrSim::new(&config).unwrap();
    let mut p = sim.programmer();
    let (_, t) = p.feed(&[0x30, 0x20]);
    // 2 bytes in, 2 out at 19200 baud.
    assert_eq!(t, Duration::from_nanos(2_083_334));
    p.feed(&SET_DEVICE_328P);
    let (_, t) = p.feed(&[0x50, 0x20]);
    assert!(t > Duration::from_millis(70), "{t:?}");
    let mut page = vec![0x64, 0x00, 0x80, b'F'];
    page.extend_from_slice(&[0u8; 128]);
    page.push(0x20);
    let (r, t) = p.feed(&page);
    assert_eq!(r, [0x14, 0x10]);
    // 133 bytes in + 2 out, 129 SPI instructions at 125 kHz, 30 ms delay.
    let want = Duration::from_nanos(135 * 520_834)
        + Duration::from_micros(129 * 256)
        + Duration::from_millis(30);
    assert!(
        t.abs_diff(want) < Duration::from_micros(100),
        "{t:?} vs {want:?}"
    );
    assert_eq!(sim.programmer_time(), p.now());
}

#[test]
fn faults_parse_and_fire_once() {
    let f: AvrFault = "drop@prog-page:3".parse().unwrap();
    assert_eq!(f, AvrFault::DropReplyByte(Trigger::nth(stk::PROG_PAGE, 3)));
    assert_eq!(f.to_string(), "drop@prog-page:3");
    assert_eq!(
        "nosync@any:7".parse::<AvrFault>().unwrap().to_string(),
        "nosync@any:7"
    );
    assert_eq!(
        "agent-silent".parse::<AvrFault>().unwrap(),
        AvrFault::AgentSilent
    );
    for bad in [
        "drop",
        "drop@nothing",
        "drop@prog-page:0",
        "no-target@sync",
        "x",
    ] {
        assert!(bad.parse::<AvrFault>().is_err(), "{bad}");
    }
    let sim = fast();
    sim.arm(AvrFault::NoSync(Trigger::first(stk::GET_SYNC)));
    let mut p = sim.programmer();
    assert_eq!(p.feed(&[0x30, 0x20]).0, [0x15]);
    assert_eq!(p.feed(&[0x30, 0x20]).0, [0x14, 0x10]);
    assert_eq!(sim.fired().len(), 1);
    assert!(sim.pending_faults().is_empty());
}

#[test]
fn options_and_state_round_trip() {
    let c: AvrSimConfig = "avr:part=m2560,timing=fast,seed=0x10,serial=0102030405060708,identity=eeprom:0x0020,eesave=on,fault=silent@read-sign"
        .parse()
        .unwrap();
    assert_eq!(c.part.name, "atmega2560");
    assert_eq!(c.board_serial(), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(c.faults.len(), 1);
    assert!("avr:part=m8".parse::<AvrSimConfig>().is_err());
    assert!("avr:identity=eeprom:0x03F0"
        .parse::<AvrSimConfig>()
        .is_err());
    assert!("avr:colour=red".parse::<AvrSimConfig>().is_err());
    let sim = AvrSim::new(&c).unwrap();
    assert_eq!(sim.uid(), vec![0x1E, 0x98, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
    sim.with_chip_mut(|chip| {
        chip.load_flash(0x30000, &[0xDE, 0xAD]);
        chip.set_lock(0x0C);
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    sim.save_state(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"lock\": \"cc\""), "{text}");
    assert!(text.contains("\"0x30000\": \"dead"), "{text}");
    assert!(text.contains("\"high\": \"91\""), "{text}");
    let back = AvrSim::from_state(&ChipState::load(&path).unwrap(), &c).unwrap();
    assert_eq!(back.state(), sim.state());
    // A state for another part is refused.
    assert!(AvrSim::from_state(&sim.state(), &AvrSimConfig::fast(&ATMEGA328P)).is_err());
    let mut st = sim.state();
    st.lock = "zz".into();
    assert!(st.to_chip().is_err());
}
