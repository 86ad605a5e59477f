//! Protocol-neutral challenge and reply, as passed through [`Target::challenge`](crate::Target::challenge).
//!
//! The wire encoding, the exact signed message and verification live in `flashgate-agent`.

/// Nonce length in bytes.
pub const NONCE_LEN: usize = 32;

/// Most regions one challenge may ask the device to measure.
pub const MAX_CHALLENGE_REGIONS: usize = 16;

/// A flash address range the device must measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlashRange {
    /// First byte (bus address, not an offset).
    pub address: u32,
    /// Length in bytes.
    pub length: u32,
}

impl FlashRange {
    /// The range `[address, address + length)`.
    pub const fn new(address: u32, length: u32) -> Self {
        FlashRange { address, length }
    }
}

/// What the appliance asks the device to prove.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChallengeRequest {
    /// Fresh random nonce from the appliance; never reuse one.
    pub nonce: [u8; NONCE_LEN],
    /// Flash ranges whose bytes, concatenated in this order, make the firmware digest
    /// (1 to [`MAX_CHALLENGE_REGIONS`]).
    pub regions: Vec<FlashRange>,
}

/// The device's answer: what it measured, signed with its new identity key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChallengeResponse {
    /// SHA-256 over the requested flash ranges as the device read them.
    pub firmware_digest: [u8; 32],
    /// ECDSA P-256 signature, `r || s`, each 32 bytes big-endian.
    pub signature: [u8; 64],
}
