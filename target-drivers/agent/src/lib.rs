//! The flashgate provisioning-agent protocol, both sides.
//!
//! After programming and key injection the appliance talks to a small agent in the device's
//! firmware over the target's UART. The agent measures flash regions the appliance names,
//! and signs a fresh nonce, its UID and that measurement with the identity key just injected.
//! The appliance checks the signature against the certificate it issued and the measurement
//! against its own image; only then may the unit be locked.
//!
//! The wire format and the signed message are specified byte for byte in `docs/AGENT.md`.
//!
//! - framing: [`encode_frame`], [`Decoder`], [`Frame`]
//! - messages: [`Message`]
//! - host side: [`verify_challenge_reply`], [`firmware_digest_of_image`]
//! - device side: [`answer_challenge`], [`AgentEndpoint`], [`AgentDevice`]

mod crypto;
mod device;
mod error;
mod frame;
mod message;
pub mod uart;

pub use crypto::{
    answer_challenge, firmware_digest, firmware_digest_of_image, is_valid_scalar, public_key,
    signed_message, signed_message_hash, verify_challenge_reply,
};
pub use device::{respond, AgentDevice, AgentEndpoint};
pub use error::{AgentError, ErrorCode};
pub use flashgate_target::DOMAIN;
pub use frame::{
    encode_frame, frame_crc, Decoder, Frame, CRC_LEN, HEADER_LEN, MAX_FRAME, MAX_PAYLOAD, SOF,
};
pub use message::{kind, Message, MAX_DEVICE_TYPE_LEN, MAX_UID_LEN, PROTOCOL_VERSION};

#[cfg(test)]
mod tests;
