//! Every fault kind ends in an error of the right stage, and the chip is never locked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use flashgate_avr_isp::sim::AvrSim;
use flashgate_avr_isp::{AvrIspConfig, AvrIspTarget, ATMEGA2560, ATMEGA328P};
use flashgate_serial::{Loopback, SerialDevice};
use flashgate_target::{FlashRange, Stage, Target, TargetError};

fn run(sim: &AvrSim) -> Result<(), TargetError> {
    let mut t = driver(sim, &ATMEGA328P);
    let image = pseudo_random(2048, 5);
    provision(
        &mut t,
        &image,
        "flash:0x7E00".parse().unwrap(),
        &identity_key(7),
        vec![FlashRange::new(0, 2048)],
    )
}

/// Runs the flow with `fault` armed, checks the stage and message, and that the chip is unlocked.
fn case(fault: &str, stage: Stage, text: &str) -> TargetError {
    let sim = sim(&ATMEGA328P, &format!("fault={fault}"));
    let e = run(&sim).expect_err(fault);
    assert_eq!(e.stage(), Some(stage), "{fault}: {e}");
    assert!(e.to_string().contains(text), "{fault}: {e}");
    assert_eq!(sim.fired().len(), 1, "{fault} did not fire");
    sim.with_chip(|c| assert_eq!(c.lock(), 0xFF, "{fault}: chip locked"));
    e
}

#[test]
fn reply_byte_dropped_times_out_in_program() {
    let e = case(
        "drop@prog-page:3",
        Stage::Program,
        "did not answer during program at 0x00000100",
    );
    assert!(
        matches!(e, TargetError::Timeout { address: Some(0x100), timeout, .. } if timeout == Duration::from_secs(2))
    );
}

#[test]
fn garbled_reply_is_a_protocol_error() {
    let e = case(
        "corrupt@prog-page:5",
        Stage::Program,
        "expected STK_INSYNC (0x14) in answer to PROG_PAGE (0x64) at 0x00000200 but received 0x41",
    );
    assert!(matches!(e, TargetError::Protocol { .. }));
}

#[test]
fn corrupted_data_is_caught_by_verify() {
    let e = case(
        "corrupt-data@read-page:6",
        Stage::Verify,
        "found different data at 0x00000280",
    );
    assert!(matches!(
        e,
        TargetError::VerifyMismatch { address: 0x280, .. }
    ));
}

#[test]
fn nosync_names_the_command() {
    case(
        "nosync@load-address:6",
        Stage::Program,
        "STK_NOSYNC (0x15) to LOAD_ADDRESS (0x55) at 0x00000100",
    );
}

#[test]
fn failed_is_a_nack() {
    let e = case(
        "failed@prog-page:2",
        Stage::Program,
        "refused the program command at 0x00000080",
    );
    assert_eq!(
        e,
        TargetError::Nack {
            stage: Stage::Program,
            address: Some(0x80)
        }
    );
    let e = case(
        "failed@universal:4",
        Stage::Erase,
        "refused the erase command",
    );
    assert!(matches!(e, TargetError::Nack { .. }));
}

#[test]
fn silent_programmer_times_out_in_its_stage() {
    case(
        "silent@read-sign",
        Stage::Identify,
        "did not answer during identify",
    );
    case(
        "silent@universal:4",
        Stage::Erase,
        "did not answer during erase",
    );
    case(
        "silent@leave-progmode:2",
        Stage::Challenge,
        "did not answer during challenge",
    );
}

#[test]
fn brown_out_mid_page_write() {
    let e = case(
        "brown-out@prog-page:10",
        Stage::Program,
        "brown-out during program at 0x00000000",
    );
    assert_eq!(
        e,
        TargetError::BrownOut {
            stage: Stage::Program,
            address: Some(0)
        }
    );
    // The page under the brown-out is half written; the board recovers after a reconnect.
    let sim = sim(&ATMEGA328P, "fault=brown-out@prog-page:10");
    let mut t = driver(&sim, &ATMEGA328P);
    let image = pseudo_random(2048, 5);
    t.connect().unwrap();
    t.identify().unwrap();
    t.erase().unwrap();
    assert!(matches!(
        t.program(0, &image).unwrap_err(),
        TargetError::BrownOut { .. }
    ));
    sim.with_chip(|c| {
        let page = &c.flash()[9 * 128..10 * 128];
        assert_eq!(&page[..64], &image[9 * 128..9 * 128 + 64]);
        assert!(page[64..].iter().all(|&b| b == 0xFF));
        assert!(c.flash()[10 * 128..2048].iter().all(|&b| b == 0xFF));
    });
    t.connect().unwrap();
    t.identify().unwrap();
    t.erase().unwrap();
    t.program(0, &image).unwrap();
    t.verify(0, &image).unwrap();
}

#[test]
fn missing_target_is_contact_lost() {
    let e = case("no-target", Stage::Identify, "contact lost during identify");
    assert_eq!(
        e,
        TargetError::ContactLost {
            stage: Stage::Identify,
            address: None
        }
    );
}

#[test]
fn agent_faults_fail_the_challenge() {
    let e = case("agent-corrupt", Stage::Challenge, "frame CRC mismatch");
    assert!(matches!(e, TargetError::Agent { code: None, .. }));
    case(
        "agent-silent",
        Stage::Challenge,
        "did not answer during challenge",
    );
}

#[test]
fn sync_retries_through_a_lost_byte() {
    let sim = sim(&ATMEGA328P, "fault=drop@get-sync");
    run(&sim).unwrap();
    assert_eq!(sim.fired().len(), 1);
    sim.with_chip(|c| assert_eq!(c.lock(), 0xFC));
}

/// A programmer that never answers.
struct Nothing;
impl SerialDevice for Nothing {
    fn feed(&mut self, _: &[u8]) -> (Vec<u8>, Duration) {
        (Vec::new(), Duration::ZERO)
    }
}

/// A serial port that answers garbage at the wrong baud rate.
struct Noise;
impl SerialDevice for Noise {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        (vec![0xF8; input.len()], Duration::ZERO)
    }
}

#[test]
fn missing_programmer_has_its_own_message() {
    let mut t = AvrIspTarget::new(
        Box::new(Loopback::instant(Nothing).named("/dev/ttyACM9")),
        None,
        AvrIspConfig::default(),
    );
    let e = t.connect().unwrap_err();
    assert_eq!(e.stage(), Some(Stage::Connect));
    assert!(
        e.to_string()
            .contains("no answer from the programmer on /dev/ttyACM9 after 5 tries"),
        "{e}"
    );
    let mut t = AvrIspTarget::new(
        Box::new(Loopback::instant(Noise)),
        None,
        AvrIspConfig::default(),
    );
    let e = t.connect().unwrap_err();
    assert!(
        e.to_string()
            .contains("answers but not in STK500v1 sync (received f8"),
        "{e}"
    );
    let e =
        AvrIspTarget::open("/dev/no-such-programmer", None, AvrIspConfig::default()).unwrap_err();
    assert_eq!(e.stage(), Some(Stage::Connect));
    assert!(
        e.to_string()
            .contains("the programmer is missing: cannot open serial port /dev/no-such-programmer"),
        "{e}"
    );
    // Operations before connect say so.
    let mut t = AvrIspTarget::new(
        Box::new(Loopback::instant(Nothing)),
        None,
        AvrIspConfig::default(),
    );
    assert!(t
        .identify()
        .unwrap_err()
        .to_string()
        .contains("call connect first"));
}

#[test]
fn link_level_drop_in_loopback() {
    let sim = sim(&ATMEGA328P, "");
    let mut isp = Loopback::instant(sim.programmer());
    // Reply bytes: sync 2, then the HW version answer's value byte.
    isp.drop_reply_byte(3);
    let mut t = AvrIspTarget::new(Box::new(isp), None, AvrIspConfig::default());
    let e = t.connect().unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::Timeout {
                stage: Stage::Connect,
                ..
            }
        ),
        "{e}"
    );
    t.connect().unwrap();
    t.identify().unwrap();
}

#[test]
fn wrong_part_is_refused_by_device_type() {
    let sim = sim(&ATMEGA2560, "");
    let mut t = driver(&sim, &ATMEGA328P);
    t.connect().unwrap();
    let info = t.identify().unwrap();
    let e = info.expect_device_type("atmega328p").unwrap_err();
    assert_eq!(
        e.to_string(),
        "the job is for atmega328p but the board reports atmega2560: load the right boards or the right job"
    );
    sim.with_chip(|c| assert_eq!(c.lock(), 0xFF));
}

/// A programmer that answers each write with the next canned reply.
struct Canned(
    std::collections::VecDeque<Vec<u8>>,
    std::collections::VecDeque<u8>,
);

impl flashgate_serial::Transport for Canned {
    fn write_all(&mut self, _: &[u8]) -> Result<(), flashgate_serial::SerialError> {
        let reply = self.0.pop_front().unwrap_or_default();
        self.1.extend(reply);
        Ok(())
    }
    fn read_exact(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<(), flashgate_serial::SerialError> {
        if self.1.len() < buf.len() {
            self.1.clear();
            return Err(flashgate_serial::SerialError::Timeout(timeout));
        }
        for b in buf.iter_mut() {
            *b = self.1.pop_front().unwrap();
        }
        Ok(())
    }
    fn clear_input(&mut self) -> Result<(), flashgate_serial::SerialError> {
        self.1.clear();
        Ok(())
    }
    fn wait(&mut self, _: Duration) {}
}

/// A refused command in a pipelined read leaves the answers to the commands after it in the
/// port: the link counts as lost, so the next operation cannot take one of them (here
/// `14 AA 10`, the start of a READ_PAGE answer) as its own answer. Found by the avr_stk500
/// fuzz target.
#[test]
fn failed_mid_pipeline_loses_the_link() {
    let ok = || vec![0x14, 0x10];
    let one = |b: u8| vec![0x14, b, 0x10];
    let mut serial_read = vec![0x14, 0x10, 0x14];
    serial_read.extend_from_slice(b"SN012345");
    serial_read.push(0x10);
    let replies = vec![
        ok(),
        one(2),
        one(1),
        one(18),
        ok(),
        ok(),
        ok(),
        ok(),
        vec![0x14, 0x1e, 0x95, 0x0f, 0x10],
        one(0xFF),
        one(0xD9),
        serial_read,
        // The read: STK_FAILED to the first LOAD_ADDRESS, then the next answers.
        vec![0x11, 0x14, 0xAA, 0x10],
    ];
    let mut t = AvrIspTarget::new(
        Box::new(Canned(replies.into(), Default::default())),
        None,
        AvrIspConfig::default(),
    );
    t.connect().unwrap();
    t.identify().unwrap();
    let mut buf = vec![0u8; 1024];
    let e = t.read(0, &mut buf).unwrap_err();
    assert!(matches!(e, TargetError::Nack { .. }), "{e}");
    let e = t
        .read_lock()
        .expect_err("a stale answer was taken as the lock byte");
    assert!(e.to_string().contains("call connect first"), "{e}");
}
