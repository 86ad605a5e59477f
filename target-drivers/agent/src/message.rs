//! The seven messages and their payload layouts (see `docs/AGENT.md`).

use flashgate_target::{
    ChallengeRequest, ChallengeResponse, FlashRange, MAX_CHALLENGE_REGIONS, NONCE_LEN,
};

use crate::frame::{encode_frame, Frame};
use crate::{AgentError, ErrorCode};

/// Protocol version spoken by this crate (in `HelloReply`).
pub const PROTOCOL_VERSION: u8 = 1;
/// Longest device type string in `HelloReply`.
pub const MAX_DEVICE_TYPE_LEN: usize = 32;
/// Longest UID in `HelloReply` (and in the signed message).
pub const MAX_UID_LEN: usize = flashgate_target::MAX_UID_LEN;

/// Frame type bytes. Requests have bit 7 clear, replies set; `ERROR` answers any request.
pub mod kind {
    /// Host → device: who are you?
    pub const HELLO: u8 = 0x01;
    /// Host → device: measure and sign.
    pub const CHALLENGE: u8 = 0x02;
    /// Host → device: reset into the ROM system bootloader after replying.
    pub const ENTER_BOOTLOADER: u8 = 0x03;
    /// Device → host: answer to `HELLO`.
    pub const HELLO_REPLY: u8 = 0x81;
    /// Device → host: answer to `CHALLENGE`.
    pub const CHALLENGE_REPLY: u8 = 0x82;
    /// Device → host: answer to `ENTER_BOOTLOADER`; the device resets once it is sent.
    pub const ENTER_BOOTLOADER_REPLY: u8 = 0x83;
    /// Device → host: the request failed.
    pub const ERROR: u8 = 0x7F;
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Host asks for identity. Empty payload.
    Hello,
    /// Device identity.
    HelloReply {
        /// [`PROTOCOL_VERSION`] of the agent.
        protocol_version: u8,
        /// Device type, 1 to 32 printable ASCII characters.
        device_type: String,
        /// Unique ID, 1 to 32 bytes.
        uid: Vec<u8>,
    },
    /// Host asks the device to measure regions and sign.
    Challenge(ChallengeRequest),
    /// Device's measurement and signature.
    ChallengeReply(ChallengeResponse),
    /// Host asks the firmware to reset into the ROM system bootloader (for example to set
    /// readout protection after the challenge). Empty payload.
    EnterBootloader,
    /// The device will reset into its bootloader as soon as this frame is sent. Empty payload.
    EnterBootloaderReply,
    /// Device could not answer.
    Error {
        /// Why.
        code: ErrorCode,
    },
}

impl Message {
    /// The frame type byte.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello => kind::HELLO,
            Message::HelloReply { .. } => kind::HELLO_REPLY,
            Message::Challenge(_) => kind::CHALLENGE,
            Message::ChallengeReply(_) => kind::CHALLENGE_REPLY,
            Message::EnterBootloader => kind::ENTER_BOOTLOADER,
            Message::EnterBootloaderReply => kind::ENTER_BOOTLOADER_REPLY,
            Message::Error { .. } => kind::ERROR,
        }
    }

    /// The payload bytes.
    pub fn payload(&self) -> Result<Vec<u8>, AgentError> {
        let mut p = Vec::new();
        match self {
            Message::Hello | Message::EnterBootloader | Message::EnterBootloaderReply => {}
            Message::HelloReply {
                protocol_version,
                device_type,
                uid,
            } => {
                check_len("device type", device_type.len(), 1, MAX_DEVICE_TYPE_LEN)?;
                if !device_type.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
                    return Err(AgentError::Malformed {
                        kind: kind::HELLO_REPLY,
                        detail: "device type must be printable ASCII",
                    });
                }
                check_len("uid", uid.len(), 1, MAX_UID_LEN)?;
                p.push(*protocol_version);
                p.push(device_type.len() as u8);
                p.extend_from_slice(device_type.as_bytes());
                p.push(uid.len() as u8);
                p.extend_from_slice(uid);
            }
            Message::Challenge(req) => {
                check_len(
                    "challenge regions",
                    req.regions.len(),
                    1,
                    MAX_CHALLENGE_REGIONS,
                )?;
                p.extend_from_slice(&req.nonce);
                p.push(req.regions.len() as u8);
                for r in &req.regions {
                    p.extend_from_slice(&r.address.to_le_bytes());
                    p.extend_from_slice(&r.length.to_le_bytes());
                }
            }
            Message::ChallengeReply(reply) => {
                p.extend_from_slice(&reply.firmware_digest);
                p.extend_from_slice(&reply.signature);
            }
            Message::Error { code } => p.push(code.to_u8()),
        }
        Ok(p)
    }

    /// The complete frame, ready to send.
    pub fn encode(&self) -> Result<Vec<u8>, AgentError> {
        encode_frame(self.kind(), &self.payload()?)
    }

    /// Parses a frame's payload according to its type. Trailing bytes are an error.
    pub fn decode(frame: &Frame) -> Result<Message, AgentError> {
        let k = frame.kind;
        let mut r = Reader {
            kind: k,
            rest: &frame.payload,
        };
        let msg = match k {
            kind::HELLO => Message::Hello,
            kind::ENTER_BOOTLOADER => Message::EnterBootloader,
            kind::ENTER_BOOTLOADER_REPLY => Message::EnterBootloaderReply,
            kind::HELLO_REPLY => {
                let protocol_version = r.u8()?;
                let n = r.u8()? as usize;
                if n == 0 || n > MAX_DEVICE_TYPE_LEN {
                    return Err(r.bad("device type length must be 1 to 32"));
                }
                let t = r.take(n)?;
                if !t.iter().all(|b| (0x20..=0x7E).contains(b)) {
                    return Err(r.bad("device type must be printable ASCII"));
                }
                let device_type = String::from_utf8_lossy(t).into_owned();
                let n = r.u8()? as usize;
                if n == 0 || n > MAX_UID_LEN {
                    return Err(r.bad("uid length must be 1 to 32"));
                }
                let uid = r.take(n)?.to_vec();
                Message::HelloReply {
                    protocol_version,
                    device_type,
                    uid,
                }
            }
            kind::CHALLENGE => {
                let nonce = r.array::<NONCE_LEN>()?;
                let n = r.u8()? as usize;
                if n == 0 || n > MAX_CHALLENGE_REGIONS {
                    return Err(r.bad("region count must be 1 to 16"));
                }
                let mut regions = Vec::with_capacity(n);
                for _ in 0..n {
                    let address = u32::from_le_bytes(r.array()?);
                    let length = u32::from_le_bytes(r.array()?);
                    regions.push(FlashRange { address, length });
                }
                Message::Challenge(ChallengeRequest { nonce, regions })
            }
            kind::CHALLENGE_REPLY => Message::ChallengeReply(ChallengeResponse {
                firmware_digest: r.array()?,
                signature: r.array()?,
            }),
            kind::ERROR => Message::Error {
                code: ErrorCode::from_u8(r.u8()?),
            },
            other => return Err(AgentError::UnknownType { kind: other }),
        };
        if !r.rest.is_empty() {
            return Err(r.bad("payload is longer than its type allows"));
        }
        Ok(msg)
    }

    /// The reply as a `ChallengeReply`; an `Error` frame or another type becomes an error.
    pub fn into_challenge_reply(self) -> Result<ChallengeResponse, AgentError> {
        match self {
            Message::ChallengeReply(reply) => Ok(reply),
            Message::Error { code } => Err(AgentError::Device { code }),
            other => Err(AgentError::UnexpectedReply {
                expected: kind::CHALLENGE_REPLY,
                found: other.kind(),
            }),
        }
    }

    /// The reply as an `EnterBootloaderReply`; an `Error` frame (e.g. `Refused`) or another
    /// type becomes an error.
    pub fn into_enter_bootloader_reply(self) -> Result<(), AgentError> {
        match self {
            Message::EnterBootloaderReply => Ok(()),
            Message::Error { code } => Err(AgentError::Device { code }),
            other => Err(AgentError::UnexpectedReply {
                expected: kind::ENTER_BOOTLOADER_REPLY,
                found: other.kind(),
            }),
        }
    }

    /// The reply as a `HelloReply` `(device_type, uid)`, checking the protocol version.
    pub fn into_hello_reply(self) -> Result<(String, Vec<u8>), AgentError> {
        match self {
            Message::HelloReply {
                protocol_version: PROTOCOL_VERSION,
                device_type,
                uid,
            } => Ok((device_type, uid)),
            Message::HelloReply {
                protocol_version, ..
            } => Err(AgentError::Version {
                found: protocol_version,
            }),
            Message::Error { code } => Err(AgentError::Device { code }),
            other => Err(AgentError::UnexpectedReply {
                expected: kind::HELLO_REPLY,
                found: other.kind(),
            }),
        }
    }
}

fn check_len(field: &'static str, length: usize, min: usize, max: usize) -> Result<(), AgentError> {
    if (min..=max).contains(&length) {
        Ok(())
    } else {
        Err(AgentError::FieldLength {
            field,
            length,
            min,
            max,
        })
    }
}

/// Bounds-checked payload reader.
struct Reader<'a> {
    kind: u8,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bad(&self, detail: &'static str) -> AgentError {
        AgentError::Malformed {
            kind: self.kind,
            detail,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], AgentError> {
        if self.rest.len() < n {
            return Err(self.bad("payload is shorter than its type requires"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, AgentError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AgentError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}
