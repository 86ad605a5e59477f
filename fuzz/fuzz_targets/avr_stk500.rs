//! The avr-isp driver's host side against a programmer (and an agent UART)
//! that answer whatever the fuzz input says: STK500v1 reply decoding.
//!
//! Invariants, for every operation of the driver (connect, identify, erase,
//! program, read, verify, store_secret, challenge, set_lock, read_lock):
//! - it returns, with `Ok` or a `TargetError` that names a stage; it never
//!   panics and never reads without end (the link counts reads);
//! - it claims success only when every reply it read since it last cleared
//!   the link is `STK_INSYNC`, the data the command asks for, `STK_OK`, in
//!   the order the commands were sent and nothing else (checked by an
//!   independent reading of the commands the driver wrote);
//! - it never takes a reply sent before the operation began as an answer
//!   to this operation's commands;
//! - an agent exchange succeeds only on a CRC-valid frame of the reply type
//!   the request asks for.
//!
//! Input: a byte of driver options, a count and list of operations, then
//! the programmer's and the agent's replies, one chunk per host write (see
//! `common/script.rs`).
#![no_main]

#[path = "common/script.rs"]
mod script;

use flashgate_avr_isp::stk::*;
use flashgate_avr_isp::{AvrIspConfig, AvrIspTarget};
use flashgate_target::{
    ChallengeRequest, FlashRange, Location, LockLevel, LockPermission, Space, Target, TargetError,
};
use libfuzzer_sys::fuzz_target;
use script::{check_agent_replies, Device, Event};

const ISP: usize = 0;
const AGENT: usize = 1;

/// The events after the last clear or reset: what an operation's success
/// rests on (earlier sync attempts are thrown away by the host itself).
pub fn since_last_clear(events: &[Event]) -> &[Event] {
    let start = events
        .iter()
        .rposition(|e| matches!(e, Event::Clear | Event::Reset))
        .map_or(0, |i| i + 1);
    &events[start..]
}

/// Reply data length of each STK500v1 command, and the command's length on
/// the wire, from the command bytes at the start of `w` (as avrdude's
/// stk500.c and the ArduinoISP sketch frame them).
fn command_at(w: &[u8]) -> Option<(usize, usize)> {
    let op = *w.first()?;
    let (len, data) = match op {
        GET_SYNC | ENTER_PROGMODE | LEAVE_PROGMODE => (2, 0),
        READ_SIGN => (2, 3),
        GET_PARAMETER => (3, 1),
        LOAD_ADDRESS => (4, 0),
        UNIVERSAL => (6, 1),
        SET_DEVICE => (22, 0),
        SET_DEVICE_EXT => (usize::from(*w.get(1)?) + 2, 0),
        PROG_PAGE => (
            5 + usize::from(u16::from_be_bytes([*w.get(1)?, *w.get(2)?])),
            0,
        ),
        READ_PAGE => (5, usize::from(u16::from_be_bytes([*w.get(1)?, *w.get(2)?]))),
        _ => return None,
    };
    (w.len() >= len && w[len - 1] == EOP).then_some((len, data))
}

/// The replies a successful operation must have read: for the commands in
/// `events` (after the last clear), `INSYNC data OK` each, exactly.
fn check_stk_replies(events: &[Event], op: u32) {
    let events = since_last_clear(events);
    let mut written = Vec::new();
    let mut read = Vec::new();
    for e in events {
        match e {
            Event::Write(w) => written.extend_from_slice(w),
            Event::Read(r, ops) => {
                assert!(
                    ops.iter().all(|&o| o == op),
                    "a reply queued before this operation was taken as its answer"
                );
                read.extend_from_slice(r);
            }
            Event::Timeout => panic!("an operation that timed out reported success"),
            Event::Clear | Event::Reset => unreachable!(),
        }
    }
    let mut w = written.as_slice();
    let mut r = read.as_slice();
    while !w.is_empty() {
        let Some((len, data)) = command_at(w) else {
            panic!("the driver wrote a malformed STK500v1 command: {w:02x?}");
        };
        let cmd = w[0];
        w = &w[len..];
        assert!(
            r.len() >= data + 2,
            "success claimed without the whole reply to 0x{cmd:02x}"
        );
        assert_eq!(
            r[0], INSYNC,
            "success claimed on a reply to 0x{cmd:02x} without STK_INSYNC"
        );
        assert_eq!(
            r[data + 1],
            OK,
            "success claimed on a reply to 0x{cmd:02x} without STK_OK"
        );
        r = &r[data + 2..];
    }
    assert!(
        r.is_empty(),
        "success claimed with unexplained reply bytes {r:02x?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let device = Device::new(data, 2);
    let options = device.take().unwrap_or(0);
    let config = AvrIspConfig {
        read_pipeline: usize::from(options % 8),
        signature_check_pages: u32::from(options >> 4) % 4 + 1,
        sync_attempts: 2,
        ..AvrIspConfig::default()
    };
    let mut avr = AvrIspTarget::new(
        Box::new(device.link(ISP)),
        Some(Box::new(device.link(AGENT))),
        config,
    );
    let count = device.take().unwrap_or(0) % 12;
    let ops: Vec<u8> = (0..count).filter_map(|_| device.take()).collect();
    let image: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    for (n, &op) in ops.iter().enumerate() {
        let n = n as u32 + 1;
        device.begin(n);
        let isp_from = device.mark(ISP);
        let agent_from = device.mark(AGENT);
        let result: Result<(), TargetError> = match op % 10 {
            0 => avr.connect(),
            1 => avr.identify().map(drop),
            2 => avr.erase(),
            3 => avr.program(0x7F, &image),
            4 => {
                let mut buf = vec![0u8; 600];
                avr.read(0x101, &mut buf)
            }
            5 => avr.verify(0x7F, &image),
            6 => avr.store_secret(Location::new(Space::Eeprom, 0x11), &image[..32]),
            7 => avr
                .challenge(&ChallengeRequest {
                    nonce: [0x5A; 32],
                    regions: vec![FlashRange::new(0, 64)],
                })
                .map(drop),
            8 => avr.set_lock(LockPermission::unchecked(LockLevel::Readout)),
            _ => avr.read_lock().map(drop),
        };
        match result {
            Ok(()) => {
                check_stk_replies(&device.events(ISP, isp_from), n);
                check_agent_replies(&device.events(AGENT, agent_from));
            }
            Err(e) => assert!(e.stage().is_some(), "a driver error without a stage: {e}"),
        }
    }
});
