//! The device side of the protocol: a reference agent that firmware models (the simulators) run.

use zeroize::Zeroizing;

use crate::crypto::answer_challenge;
use crate::frame::Decoder;
use crate::message::{Message, PROTOCOL_VERSION};
use crate::{AgentError, ErrorCode};

/// What the agent needs from the device it runs on.
pub trait AgentDevice {
    /// Device type reported in `HelloReply`.
    fn device_type(&self) -> &str;
    /// Unique ID reported in `HelloReply` and bound into the signature.
    fn uid(&self) -> &[u8];
    /// The identity scalar as stored at the location the firmware reads it from
    /// (erased storage simply reads back as all 0xFF).
    fn identity_scalar(&mut self) -> Zeroizing<[u8; 32]>;
    /// Reads the device's own flash (allowed even when readout-locked: the firmware runs on
    /// the chip). Fails with [`AgentError::RegionOutside`] outside flash.
    fn read_flash(&mut self, address: u32, buf: &mut [u8]) -> Result<(), AgentError>;
    /// Arms a reset into the ROM system bootloader, to happen once the reply is sent; false
    /// if this firmware does not offer it (the agent then answers `Error(Refused)`).
    fn enter_bootloader(&mut self) -> bool {
        false
    }
}

/// Answers one request. Replies (a host's message sent to the device) are answered with
/// `Error(UnknownType)`; every failure becomes an `Error` frame with its code.
pub fn respond(device: &mut impl AgentDevice, request: &Message) -> Message {
    match request {
        Message::Hello => Message::HelloReply {
            protocol_version: PROTOCOL_VERSION,
            device_type: device.device_type().to_owned(),
            uid: device.uid().to_vec(),
        },
        Message::Challenge(req) => {
            let scalar = device.identity_scalar();
            let uid = device.uid().to_vec();
            match answer_challenge(&scalar, &uid, |a, b| device.read_flash(a, b), req) {
                Ok(reply) => Message::ChallengeReply(reply),
                Err(e) => Message::Error { code: e.code() },
            }
        }
        Message::EnterBootloader => {
            if device.enter_bootloader() {
                Message::EnterBootloaderReply
            } else {
                Message::Error {
                    code: ErrorCode::Refused,
                }
            }
        }
        Message::HelloReply { .. }
        | Message::ChallengeReply(_)
        | Message::EnterBootloaderReply
        | Message::Error { .. } => Message::Error {
            code: ErrorCode::UnknownType,
        },
    }
}

/// The agent's receive path: bytes in from the UART, reply bytes out.
///
/// Every complete frame gets exactly one reply frame; a frame with a bad CRC or an oversize
/// length gets `Error(BadFrame)` so the host does not have to wait for a timeout.
#[derive(Debug, Default)]
pub struct AgentEndpoint {
    decoder: Decoder,
}

impl AgentEndpoint {
    /// A fresh endpoint.
    pub fn new() -> Self {
        AgentEndpoint::default()
    }

    /// Takes received bytes and returns the bytes to send back (possibly none yet).
    pub fn receive(&mut self, device: &mut impl AgentDevice, bytes: &[u8]) -> Vec<u8> {
        self.decoder.feed(bytes);
        let mut out = Vec::new();
        while let Some(frame) = self.decoder.next_frame() {
            let reply = match frame.and_then(|f| Message::decode(&f)) {
                Ok(request) => respond(device, &request),
                Err(e) => Message::Error { code: e.code() },
            };
            let bytes = reply.encode().or_else(|_| {
                Message::Error {
                    code: ErrorCode::Internal,
                }
                .encode()
            });
            out.extend(bytes.unwrap_or_default());
        }
        out
    }

    /// Drops any partial frame (after a reset of the device).
    pub fn reset(&mut self) {
        self.decoder.reset();
    }
}
