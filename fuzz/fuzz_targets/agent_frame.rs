//! The provisioning-agent frame decoder and message parsers on hostile bytes
//! (a cloned or tampered board answers whatever it likes).
//!
//! Invariants:
//! - the decoder never panics and ends: every call consumes at least one
//!   byte or asks for more, and every byte fed is accounted for (skipped,
//!   part of an accepted frame, or still buffered);
//! - every accepted frame is exactly the bytes at the position where the
//!   decoder took it (`encode_frame(kind, payload)`), so its length is at
//!   most 1024 and its CRC is the one on the wire; a bad CRC or length is
//!   refused, dropping only its start byte;
//! - a frame whose bytes were changed (one byte XORed, anywhere after SOF) is
//!   never accepted as the original, and a real frame after garbage is found
//!   unless an accepted frame overlaps it;
//! - every message accepted re-encodes to the frame it came from;
//! - the reply parsers accept only their own type: `into_hello_reply` only a
//!   `HelloReply` of version 1, `into_challenge_reply` only a
//!   `ChallengeReply`, `into_enter_bootloader_reply` only an
//!   `EnterBootloaderReply`; an `Error` frame is always a device error.
//!
//! Input: first byte = mode. 0: the rest is the byte stream, fed in chunks
//! whose sizes come from the second byte. 1: `kind, payload` is framed,
//! corrupted at a chosen byte and decoded. 2: the rest is garbage followed by
//! a real frame. 3: `kind, payload` is parsed as a message directly.
#![no_main]

use flashgate_agent::{
    encode_frame, kind, AgentError, Decoder, Frame, Message, CRC_LEN, HEADER_LEN, MAX_PAYLOAD,
    PROTOCOL_VERSION, SOF,
};
use libfuzzer_sys::fuzz_target;

/// An accepted frame and where it started in the stream.
struct Taken {
    at: usize,
    frame: Frame,
}

/// Feeds `stream` in chunks of `chunk` bytes (0: all at once) and checks
/// the decoder's bookkeeping against the stream; returns the frames taken.
fn decode_stream(stream: &[u8], chunk: usize) -> Vec<Taken> {
    let mut decoder = Decoder::new();
    let mut taken = Vec::new();
    let mut in_frames = 0usize;
    let mut fed = 0usize;
    let step = if chunk == 0 {
        stream.len().max(1)
    } else {
        chunk
    };
    let mut calls = 0usize;
    for piece in stream.chunks(step) {
        decoder.feed(piece);
        fed += piece.len();
        loop {
            calls += 1;
            assert!(calls <= 2 * stream.len() + 2, "the decoder does not end");
            let consumed = decoder.skipped() as usize + in_frames;
            let Some(result) = decoder.next_frame() else {
                break;
            };
            match result {
                Ok(frame) => {
                    let at = decoder.skipped() as usize + in_frames;
                    let wire = encode_frame(frame.kind, &frame.payload)
                        .expect("an accepted frame has at most 1024 payload bytes");
                    assert!(
                        at >= consumed,
                        "a frame starts where the decoder stood or later"
                    );
                    assert_eq!(
                        stream.get(at..at + wire.len()),
                        Some(wire.as_slice()),
                        "an accepted frame is the bytes at its position, CRC included"
                    );
                    in_frames += wire.len();
                    taken.push(Taken { at, frame });
                }
                Err(e) => {
                    let at = decoder.skipped() as usize + in_frames - 1;
                    assert!(at >= consumed, "a refusal drops the start byte it stood on");
                    assert_eq!(
                        stream[at], SOF,
                        "only a start byte is dropped as a bad frame"
                    );
                    let length = usize::from(u16::from_le_bytes([stream[at + 2], stream[at + 3]]));
                    match e {
                        AgentError::Oversize { length: l } => {
                            assert_eq!(l, length);
                            assert!(length > MAX_PAYLOAD, "only a length over 1024 is oversize");
                        }
                        AgentError::BadCrc { computed, received } => {
                            assert_ne!(computed, received);
                            let end = at + HEADER_LEN + length;
                            assert_eq!(
                                received,
                                u16::from_le_bytes([stream[end], stream[end + 1]]),
                                "the CRC reported is the one on the wire"
                            );
                        }
                        other => panic!("the frame decoder reported {other:?}"),
                    }
                }
            }
        }
        assert_eq!(
            decoder.skipped() as usize + in_frames + decoder.buffered(),
            fed,
            "every byte is skipped, in a frame or buffered"
        );
    }
    for t in &taken {
        check_message(&t.frame);
    }
    taken
}

/// Message parsing and the reply parsers on one frame.
fn check_message(frame: &Frame) {
    let Ok(message) = Message::decode(frame) else {
        return;
    };
    assert_eq!(
        message.kind(),
        frame.kind,
        "a message keeps its frame's type"
    );
    assert_eq!(
        message.encode().ok(),
        encode_frame(frame.kind, &frame.payload).ok(),
        "an accepted message re-encodes to its frame"
    );
    let is_error = frame.kind == kind::ERROR;
    let device_error = |e: &AgentError| matches!(e, AgentError::Device { .. });
    match message.clone().into_hello_reply() {
        Ok(_) => {
            assert_eq!(
                frame.kind,
                kind::HELLO_REPLY,
                "only a HelloReply is a hello reply"
            );
            assert_eq!(
                frame.payload[0], PROTOCOL_VERSION,
                "only version 1 is accepted"
            );
        }
        Err(e) => assert_eq!(
            device_error(&e),
            is_error,
            "an Error frame is a device error"
        ),
    }
    match message.clone().into_challenge_reply() {
        Ok(reply) => {
            assert_eq!(
                frame.kind,
                kind::CHALLENGE_REPLY,
                "only a ChallengeReply answers a challenge"
            );
            assert_eq!(&frame.payload[..32], &reply.firmware_digest);
            assert_eq!(&frame.payload[32..], &reply.signature);
        }
        Err(e) => assert_eq!(
            device_error(&e),
            is_error,
            "an Error frame is a device error"
        ),
    }
    match message.into_enter_bootloader_reply() {
        Ok(()) => assert_eq!(frame.kind, kind::ENTER_BOOTLOADER_REPLY),
        Err(e) => assert_eq!(
            device_error(&e),
            is_error,
            "an Error frame is a device error"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let Some((&chunk, stream)) = rest.split_first() else {
                return;
            };
            decode_stream(stream, usize::from(chunk % 16));
        }
        1 => {
            // kind, position, mask, payload
            let [k, pos, mask, payload @ ..] = rest else {
                return;
            };
            let Ok(wire) = encode_frame(*k, payload) else {
                return;
            };
            let mut bad = wire.clone();
            let at = 1 + usize::from(*pos) % (wire.len() - 1);
            bad[at] ^= if *mask == 0 { 1 } else { *mask };
            let original = Frame {
                kind: *k,
                payload: payload.to_vec(),
            };
            for t in decode_stream(&bad, 0) {
                assert_ne!(
                    t.frame, original,
                    "a changed frame was accepted as the original"
                );
            }
            let clean = decode_stream(&wire, 0);
            assert_eq!(clean.len(), 1, "a clean frame decodes to itself alone");
            assert_eq!(clean[0].frame, original);
        }
        2 => {
            // n = garbage length, garbage, kind, payload
            let Some((&n, rest)) = rest.split_first() else {
                return;
            };
            let n = usize::from(n).min(rest.len());
            let (garbage, frame) = rest.split_at(n);
            let Some((&k, payload)) = frame.split_first() else {
                return;
            };
            let Ok(wire) = encode_frame(k, payload) else {
                return;
            };
            let mut stream = garbage.to_vec();
            stream.extend_from_slice(&wire);
            let start = garbage.len();
            let end = stream.len();
            let taken = decode_stream(&stream, 0);
            let overlapped = taken.iter().any(|t| {
                let t_end = t.at + HEADER_LEN + t.frame.payload.len() + CRC_LEN;
                t.at < end && t_end > start && t.at != start
            });
            if !overlapped {
                assert!(
                    taken
                        .iter()
                        .any(|t| t.at == start && t.frame.kind == k && t.frame.payload == payload),
                    "a real frame after garbage was lost"
                );
            }
        }
        _ => {
            let Some((&k, payload)) = rest.split_first() else {
                return;
            };
            if payload.len() <= MAX_PAYLOAD {
                check_message(&Frame {
                    kind: k,
                    payload: payload.to_vec(),
                });
            }
        }
    }
});
