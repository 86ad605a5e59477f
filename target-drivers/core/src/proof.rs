//! The host side of the challenge: the exact bytes a device signs, and the
//! check of its reply. A successful check is the only source of a
//! [`ProvenDevice`], and a [`LockPermission`](crate::LockPermission) can only
//! be made from one: no code path can lock a chip that did not prove its key.

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::ChallengeResponse;

/// Domain-separation prefix of the signed message, NUL included (19 bytes).
///
/// The version in it changes whenever the signed message changes, so a signature made for
/// one layout can never be accepted under another.
pub const DOMAIN: &[u8; 19] = b"flashgate-agent-v1\0";

/// Longest device UID, in bytes.
pub const MAX_UID_LEN: usize = 32;

/// Why a challenge reply was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChallengeError {
    /// The UID is empty or longer than [`MAX_UID_LEN`].
    #[error("the device UID is {length} bytes; 1 to {MAX_UID_LEN} are allowed")]
    UidLength { length: usize },
    /// The public key is not a P-256 point.
    #[error("the public key is not a valid SEC1-encoded P-256 point: check the certificate the key was taken from")]
    BadPublicKey,
    /// The signature does not verify with the certified key.
    #[error("the signature does not verify with the key the appliance certified")]
    BadSignature,
    /// The device measured other firmware than the appliance programmed.
    #[error("the device measured other firmware than was programmed")]
    FirmwareDigestMismatch {
        /// Digest computed by the appliance.
        expected: [u8; 32],
        /// Digest reported by the device.
        found: [u8; 32],
    },
}

/// The exact bytes the device signs:
/// `DOMAIN || nonce (32) || uid_len (1) || uid || firmware_digest (32)`.
///
/// The signature is ECDSA P-256 with SHA-256 over these bytes, i.e. over
/// `e = SHA-256(message)` ([`signed_message_hash`]).
pub fn signed_message(
    nonce: &[u8; 32],
    uid: &[u8],
    firmware_digest: &[u8; 32],
) -> Result<Vec<u8>, ChallengeError> {
    if uid.is_empty() || uid.len() > MAX_UID_LEN {
        return Err(ChallengeError::UidLength { length: uid.len() });
    }
    let mut m = Vec::with_capacity(DOMAIN.len() + 32 + 1 + uid.len() + 32);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(nonce);
    m.push(uid.len() as u8);
    m.extend_from_slice(uid);
    m.extend_from_slice(firmware_digest);
    Ok(m)
}

/// `SHA-256(signed_message(..))`: the value ECDSA signs.
pub fn signed_message_hash(
    nonce: &[u8; 32],
    uid: &[u8],
    firmware_digest: &[u8; 32],
) -> Result<[u8; 32], ChallengeError> {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(signed_message(
        nonce,
        uid,
        firmware_digest,
    )?));
    Ok(out)
}

/// A device that answered a fresh challenge with the key the appliance
/// certified for it, over the firmware the appliance programmed. Made only
/// by [`verify_challenge_reply`]; consumed by
/// [`LockPermission::after`](crate::LockPermission::after).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a proven device is what a lock permission is made from"]
pub struct ProvenDevice {
    uid: Vec<u8>,
}

impl ProvenDevice {
    /// The UID the device signed.
    pub fn uid(&self) -> &[u8] {
        &self.uid
    }
}

/// Checks a challenge reply.
///
/// `public_key_sec1` is the key from the certificate the appliance issued for this unit
/// (SEC1, compressed or uncompressed). The signature is checked first, so a unit holding the
/// wrong key reports [`ChallengeError::BadSignature`]; then the reported firmware digest must
/// equal `expected_firmware_digest`, computed by the appliance from its own image.
pub fn verify_challenge_reply(
    public_key_sec1: &[u8],
    nonce: &[u8; 32],
    uid: &[u8],
    expected_firmware_digest: &[u8; 32],
    reply: &ChallengeResponse,
) -> Result<ProvenDevice, ChallengeError> {
    let key =
        VerifyingKey::from_sec1_bytes(public_key_sec1).map_err(|_| ChallengeError::BadPublicKey)?;
    let sig = Signature::from_slice(&reply.signature).map_err(|_| ChallengeError::BadSignature)?;
    let hash = signed_message_hash(nonce, uid, &reply.firmware_digest)?;
    key.verify_prehash(&hash, &sig)
        .map_err(|_| ChallengeError::BadSignature)?;
    if reply.firmware_digest != *expected_firmware_digest {
        return Err(ChallengeError::FirmwareDigestMismatch {
            expected: *expected_firmware_digest,
            found: reply.firmware_digest,
        });
    }
    Ok(ProvenDevice { uid: uid.to_vec() })
}
