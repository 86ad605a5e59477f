//! The agent crate's error type and the error codes carried on the wire.

use std::fmt;

use flashgate_target::{Stage, TargetError};

/// Error code in an `Error` frame (payload: one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0x01: a frame arrived with a bad CRC or an oversize length.
    BadFrame,
    /// 0x02: the frame type is not one the agent knows.
    UnknownType,
    /// 0x03: the payload is too short, too long or has a field out of range.
    Malformed,
    /// 0x04: the identity key at the configured location is blank (all 0x00 or all 0xFF) or not a valid P-256 scalar.
    NoKey,
    /// 0x05: a requested region lies outside flash.
    BadRegion,
    /// 0x06: anything else that went wrong inside the agent.
    Internal,
    /// 0x07: the firmware does not (or not now) reset into its bootloader on request.
    Refused,
    /// A code this version does not know.
    Other(u8),
}

impl ErrorCode {
    /// The wire byte.
    pub const fn to_u8(self) -> u8 {
        match self {
            ErrorCode::BadFrame => 0x01,
            ErrorCode::UnknownType => 0x02,
            ErrorCode::Malformed => 0x03,
            ErrorCode::NoKey => 0x04,
            ErrorCode::BadRegion => 0x05,
            ErrorCode::Internal => 0x06,
            ErrorCode::Refused => 0x07,
            ErrorCode::Other(b) => b,
        }
    }

    /// From the wire byte.
    pub const fn from_u8(b: u8) -> Self {
        match b {
            0x01 => ErrorCode::BadFrame,
            0x02 => ErrorCode::UnknownType,
            0x03 => ErrorCode::Malformed,
            0x04 => ErrorCode::NoKey,
            0x05 => ErrorCode::BadRegion,
            0x06 => ErrorCode::Internal,
            0x07 => ErrorCode::Refused,
            other => ErrorCode::Other(other),
        }
    }

    /// Short name, as in `docs/AGENT.md`.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "BadFrame",
            ErrorCode::UnknownType => "UnknownType",
            ErrorCode::Malformed => "Malformed",
            ErrorCode::NoKey => "NoKey",
            ErrorCode::BadRegion => "BadRegion",
            ErrorCode::Internal => "Internal",
            ErrorCode::Refused => "Refused",
            ErrorCode::Other(_) => "unknown",
        }
    }

    /// What it means, then what the operator should do about it.
    fn advice(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "it received a corrupted frame: check the UART wiring, baud rate and ground",
            ErrorCode::UnknownType => "it does not know the request: check that the firmware's agent speaks protocol version 1",
            ErrorCode::Malformed => "it could not parse the request: check that the firmware's agent speaks protocol version 1",
            ErrorCode::NoKey => "it found no valid identity key: check that key injection wrote the key where the firmware reads it",
            ErrorCode::BadRegion => "a measured region lies outside its flash: check the job's challenge regions against the device",
            ErrorCode::Internal => "it failed internally: retry the board, and scrap it if this repeats",
            ErrorCode::Refused => "it will not reset into its bootloader: use firmware whose agent implements EnterBootloader, or a fixture that drives NRST and BOOT0 (reset=lines)",
            ErrorCode::Other(_) => "it sent a code this appliance does not know: check the firmware's agent version",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error 0x{:02x} ({}): {}",
            self.to_u8(),
            self.name(),
            self.advice()
        )
    }
}

/// Why framing, parsing, signing or verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A frame's CRC did not match its contents.
    #[error("frame CRC mismatch (computed 0x{computed:04x}, frame carries 0x{received:04x}): check the UART wiring, baud rate and ground")]
    BadCrc {
        /// CRC over the received bytes.
        computed: u16,
        /// CRC in the frame.
        received: u16,
    },

    /// A frame announced more payload than the protocol allows.
    #[error("frame announces {length} payload bytes, more than the 1024 allowed: the link is out of sync or the peer speaks another protocol")]
    Oversize {
        /// Announced length.
        length: usize,
    },

    /// The frame type is not known.
    #[error(
        "unknown frame type 0x{kind:02x}: check that both sides speak agent protocol version 1"
    )]
    UnknownType {
        /// The type byte.
        kind: u8,
    },

    /// A payload does not have the layout its type requires.
    #[error("malformed 0x{kind:02x} payload: {detail}: check that both sides speak agent protocol version 1")]
    Malformed {
        /// The type byte.
        kind: u8,
        /// What is wrong.
        detail: &'static str,
    },

    /// A message field is too long or too short to encode.
    #[error("{field} has {length} entries/bytes but must have {min} to {max}: fix the caller")]
    FieldLength {
        /// Which field.
        field: &'static str,
        /// Its length.
        length: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },

    /// The agent answered with an Error frame.
    #[error("the agent answered {code}")]
    Device {
        /// The code it sent.
        code: ErrorCode,
    },

    /// The agent answered with a frame of the wrong type.
    #[error("expected a 0x{expected:02x} reply but the agent sent 0x{found:02x}: check that the firmware's agent speaks protocol version 1")]
    UnexpectedReply {
        /// Type expected.
        expected: u8,
        /// Type received.
        found: u8,
    },

    /// The agent speaks another protocol version.
    #[error("the agent speaks protocol version {found} but this appliance speaks version 1: update the firmware's agent or the appliance")]
    Version {
        /// Version the agent reported.
        found: u8,
    },

    /// The device measured a different firmware than the job's image.
    #[error("the device measured firmware digest {} but the job expects {}: the flash does not hold the job's image, so do not lock this board", hex32(.found), hex32(.expected))]
    FirmwareDigestMismatch {
        /// Digest computed by the appliance.
        expected: [u8; 32],
        /// Digest reported by the device.
        found: [u8; 32],
    },

    /// The signature does not verify with the public key.
    #[error("the challenge signature does not verify with the key in the issued certificate: the identity key was not injected correctly, so do not lock this board")]
    BadSignature,

    /// The public key given for verification is not a valid P-256 point.
    #[error("the public key is not a valid SEC1-encoded P-256 point: check the certificate the key was taken from")]
    BadPublicKey,

    /// The identity scalar is blank or not a valid P-256 scalar.
    #[error("the identity key is blank or not a valid P-256 scalar: inject a valid key")]
    InvalidKey,

    /// A region to measure lies outside the memory being measured (device flash or image).
    #[error("region 0x{address:08x}+{length} lies outside the measured memory: choose challenge regions inside the programmed image")]
    RegionOutside {
        /// Start of the region.
        address: u32,
        /// Length of the region.
        length: u32,
    },
}

impl AgentError {
    /// The code a device-side agent sends back for this error, if it is one the peer caused.
    pub fn code(&self) -> ErrorCode {
        match self {
            AgentError::BadCrc { .. } | AgentError::Oversize { .. } => ErrorCode::BadFrame,
            AgentError::UnknownType { .. } => ErrorCode::UnknownType,
            AgentError::Malformed { .. } | AgentError::FieldLength { .. } => ErrorCode::Malformed,
            AgentError::InvalidKey => ErrorCode::NoKey,
            AgentError::RegionOutside { .. } => ErrorCode::BadRegion,
            AgentError::Device { code } => *code,
            AgentError::UnexpectedReply { .. }
            | AgentError::Version { .. }
            | AgentError::FirmwareDigestMismatch { .. }
            | AgentError::BadSignature
            | AgentError::BadPublicKey => ErrorCode::Internal,
        }
    }

    /// This error as a driver error at `stage` (normally [`Stage::Challenge`]).
    pub fn at_stage(self, stage: Stage) -> TargetError {
        let code = match &self {
            AgentError::Device { code } => Some(code.to_u8()),
            _ => None,
        };
        TargetError::Agent {
            stage,
            code,
            detail: self.to_string(),
        }
    }
}

fn hex32(b: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

impl From<flashgate_target::ChallengeError> for AgentError {
    fn from(e: flashgate_target::ChallengeError) -> Self {
        use flashgate_target::ChallengeError as C;
        match e {
            C::UidLength { length } => AgentError::FieldLength {
                field: "uid",
                length,
                min: 1,
                max: flashgate_target::MAX_UID_LEN,
            },
            C::BadPublicKey => AgentError::BadPublicKey,
            C::FirmwareDigestMismatch { expected, found } => {
                AgentError::FirmwareDigestMismatch { expected, found }
            }
            // A new reason is still a refusal of the reply.
            C::BadSignature | _ => AgentError::BadSignature,
        }
    }
}
