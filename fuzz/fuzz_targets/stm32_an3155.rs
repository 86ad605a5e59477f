//! The stm32-uart driver's host side against a ROM bootloader (and, after
//! Go, an agent) that answers whatever the fuzz input says: AN3155 reply
//! decoding (ACK 0x79 / NACK 0x1F, Get, Get Version, Get ID, Read Memory).
//!
//! Invariants, for every operation of the driver (connect, identify, erase,
//! erase_range, program, read, store_secret, challenge, set_lock, read_lock):
//! - it returns, with `Ok` or a `TargetError` that names a stage; it never
//!   panics and never reads without end (the link counts reads);
//! - it claims success only when every reply it read is what AN3155 says
//!   the bootloader sends for what the driver wrote (checked by an
//!   independent reading of the conversation): ACK after each command byte,
//!   address, length, data and erase frame; Get and Get ID as `ACK N
//!   N+1-bytes ACK`; Get Version as `ACK 3-bytes ACK`; Read Memory data of
//!   the length asked. A NACK is success only where it has a meaning: to a
//!   sync byte (the bootloader was already synchronised), and to the Read
//!   Memory command while identify or read_lock probes the option bytes
//!   (readout protection is active). A sync attempt that got no ACK or NACK
//!   is followed only by another sync;
//! - it never takes a reply sent before the operation began as an answer;
//! - an agent exchange after Go succeeds only on a CRC-valid frame of the
//!   reply type the request asks for.
//!
//! Input: a count and list of operations, then the replies, one chunk per
//! host write (see `common/script.rs`).
#![no_main]

#[path = "common/script.rs"]
mod script;

use flashgate_stm32_uart::protocol::*;
use flashgate_stm32_uart::{LinkState, Stm32Options, Stm32UartTarget};
use flashgate_target::{
    ChallengeRequest, FlashRange, Location, LockLevel, LockPermission, Space, Target, TargetError,
};
use libfuzzer_sys::fuzz_target;
use script::{check_agent_replies, Device, Event, Link};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Bootloader,
    SyncFailed,
    AwaitAddress(u8),
    AwaitLength,
    AwaitData,
    AwaitErase,
    Application,
}

/// Checks the conversation of one successful operation, begun in `state`.
/// `nack_read` allows a NACK to the Read Memory command byte (the
/// option-byte probe).
fn check_conversation(events: &[Event], op: u32, nack_read: bool, mut state: State) {
    let mut agent: Vec<Event> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let w = match &events[i] {
            Event::Write(w) => w.clone(),
            Event::Reset => {
                state = State::Bootloader;
                i += 1;
                continue;
            }
            Event::Clear => {
                if state == State::Application {
                    agent.push(Event::Clear);
                }
                i += 1;
                continue;
            }
            Event::Read(..) | Event::Timeout => {
                panic!(
                    "the driver read a reply before writing anything: {:?}",
                    events[i]
                )
            }
        };
        // The replies to this write: everything read until the next write.
        let mut r = Vec::new();
        let mut timed_out = false;
        i += 1;
        while i < events.len() {
            match &events[i] {
                Event::Read(bytes, ops) => {
                    assert!(
                        ops.iter().all(|&o| o == op),
                        "a reply queued before this operation was taken as its answer"
                    );
                    r.extend_from_slice(bytes);
                }
                Event::Timeout => timed_out = true,
                _ => break,
            }
            i += 1;
        }
        if state == State::Application {
            agent.push(Event::Write(w));
            agent.push(Event::Read(r, Vec::new()));
            continue;
        }
        if w == [SYNC] && matches!(state, State::Bootloader | State::SyncFailed) {
            state = if !timed_out && (r == [ACK] || r == [NACK]) {
                State::Bootloader
            } else {
                State::SyncFailed
            };
            continue;
        }
        assert_ne!(
            state,
            State::SyncFailed,
            "the driver went on after a sync byte got no ACK or NACK"
        );
        assert!(!timed_out, "success claimed after a time-out: {w:02x?}");
        let ack_then = |r: &[u8], n: usize, what: &str| {
            assert_eq!(r.first(), Some(&ACK), "success claimed without ACK {what}");
            assert_eq!(
                r.len(),
                1 + n,
                "success claimed on a reply of the wrong length {what}"
            );
        };
        state = match state {
            State::AwaitAddress(cmd) => {
                assert!(
                    w.len() == 5 && xor(&w[..4]) == w[4],
                    "malformed address frame {w:02x?}"
                );
                ack_then(&r, 0, "after the address");
                match cmd {
                    CMD_READ => State::AwaitLength,
                    CMD_WRITE => State::AwaitData,
                    _ => State::Application,
                }
            }
            State::AwaitLength => {
                assert!(
                    w.len() == 2 && w[1] == !w[0],
                    "malformed length frame {w:02x?}"
                );
                ack_then(&r, usize::from(w[0]) + 1, "after the length, then the data");
                State::Bootloader
            }
            State::AwaitData => {
                let n = usize::from(w[0]) + 1;
                assert!(
                    w.len() == n + 2 && xor(&w[..n + 1]) == w[n + 1],
                    "malformed data frame"
                );
                ack_then(&r, 0, "after the data");
                State::Bootloader
            }
            State::AwaitErase => {
                ack_then(&r, 0, "after the erase");
                State::Bootloader
            }
            State::Bootloader => {
                assert!(
                    w.len() == 2 && w[1] == !w[0],
                    "malformed command frame {w:02x?}"
                );
                let cmd = w[0];
                if cmd == CMD_READ && nack_read && r == [NACK] {
                    State::Bootloader
                } else {
                    match cmd {
                        CMD_GET | CMD_GET_ID => {
                            assert!(
                                r.len() >= 2,
                                "success claimed on a short reply to 0x{cmd:02x}"
                            );
                            let n = usize::from(r[1]) + 1;
                            ack_then(&r[..1], 0, "to the command");
                            assert_eq!(
                                r.len(),
                                n + 3,
                                "success claimed on a reply of the wrong length to 0x{cmd:02x}"
                            );
                            assert_eq!(
                                r[n + 2],
                                ACK,
                                "success claimed without the final ACK to 0x{cmd:02x}"
                            );
                            State::Bootloader
                        }
                        CMD_GET_VERSION => {
                            ack_then(&r[..1.min(r.len())], 0, "to Get Version");
                            assert_eq!(
                                r.len(),
                                5,
                                "success claimed on a reply of the wrong length to Get Version"
                            );
                            assert_eq!(
                                r[4], ACK,
                                "success claimed without the final ACK to Get Version"
                            );
                            State::Bootloader
                        }
                        CMD_READOUT_PROTECT | CMD_READOUT_UNPROTECT => {
                            assert_eq!(
                                r,
                                [ACK, ACK],
                                "success claimed without two ACKs to 0x{cmd:02x}"
                            );
                            State::Bootloader
                        }
                        CMD_READ | CMD_WRITE | CMD_GO => {
                            ack_then(&r, 0, "to the command");
                            State::AwaitAddress(cmd)
                        }
                        CMD_ERASE | CMD_EXTENDED_ERASE => {
                            ack_then(&r, 0, "to the command");
                            State::AwaitErase
                        }
                        other => panic!("the driver sent command 0x{other:02x}"),
                    }
                }
            }
            State::SyncFailed | State::Application => unreachable!(),
        };
    }
    assert_ne!(
        state,
        State::SyncFailed,
        "success claimed after a failed sync"
    );
    assert!(
        !matches!(
            state,
            State::AwaitAddress(_) | State::AwaitLength | State::AwaitData | State::AwaitErase
        ),
        "success claimed in the middle of a command"
    );
    check_agent_replies(&agent);
}

fuzz_target!(|data: &[u8]| {
    let device = Device::new(data, 1);
    let options = Stm32Options {
        sync_attempts: 2,
        ..Stm32Options::default()
    };
    let mut stm: Stm32UartTarget<Link> = Stm32UartTarget::with_options(device.link(0), options);
    let count = device.take().unwrap_or(0) % 12;
    let ops: Vec<u8> = (0..count).filter_map(|_| device.take()).collect();
    let image: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    // After a Go the application owns the link until the driver resets it.
    let mut start = State::Bootloader;
    for (n, &op) in ops.iter().enumerate() {
        let n = n as u32 + 1;
        device.begin(n);
        let from = device.mark(0);
        let (result, nack_read): (Result<(), TargetError>, bool) = match op % 10 {
            0 => (stm.connect(), false),
            1 => (stm.identify().map(drop), true),
            2 => (stm.erase(), false),
            3 => (stm.erase_range(0x0800_0400, 0x800), false),
            4 => (stm.program(0x0800_007F, &image), false),
            5 => {
                let mut buf = vec![0u8; 600];
                (stm.read(0x0800_0101, &mut buf), false)
            }
            6 => (
                stm.store_secret(Location::new(Space::Flash, 0x1000), &image[..32]),
                false,
            ),
            7 => (
                stm.challenge(&ChallengeRequest {
                    nonce: [0x5A; 32],
                    regions: vec![FlashRange::new(0x0800_0000, 64)],
                })
                .map(drop),
                false,
            ),
            8 => (
                stm.set_lock(LockPermission::unchecked(LockLevel::Readout)),
                false,
            ),
            _ => (stm.read_lock().map(drop), true),
        };
        match result {
            Ok(()) => check_conversation(&device.events(0, from), n, nack_read, start),
            Err(e) => assert!(e.stage().is_some(), "a driver error without a stage: {e}"),
        }
        start = if stm.link_state() == LinkState::Application {
            State::Application
        } else {
            State::Bootloader
        };
    }
});
