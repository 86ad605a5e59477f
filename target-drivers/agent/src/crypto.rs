//! The signed message, the firmware digest, and both ends of the signature.

use flashgate_target::{
    ChallengeRequest, ChallengeResponse, FlashRange, ProvenDevice, MAX_CHALLENGE_REGIONS,
};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};

use crate::AgentError;

/// How many flash bytes are read at a time while measuring (keeps device RAM small).
const MEASURE_CHUNK: usize = 256;

/// The exact bytes the device signs (see [`flashgate_target::signed_message`]).
pub fn signed_message(
    nonce: &[u8; 32],
    uid: &[u8],
    firmware_digest: &[u8; 32],
) -> Result<Vec<u8>, AgentError> {
    flashgate_target::signed_message(nonce, uid, firmware_digest).map_err(AgentError::from)
}

/// `SHA-256(signed_message(..))`: the value ECDSA signs.
pub fn signed_message_hash(
    nonce: &[u8; 32],
    uid: &[u8],
    firmware_digest: &[u8; 32],
) -> Result<[u8; 32], AgentError> {
    flashgate_target::signed_message_hash(nonce, uid, firmware_digest).map_err(AgentError::from)
}

/// `SHA-256` of the bytes of `regions`, concatenated in order, as returned by `read`.
///
/// Both sides use this: the device with a reader over its flash, the appliance with a reader
/// over the image it programmed. `read(address, buf)` fills `buf` from `address`.
pub fn firmware_digest(
    regions: &[FlashRange],
    mut read: impl FnMut(u32, &mut [u8]) -> Result<(), AgentError>,
) -> Result<[u8; 32], AgentError> {
    if regions.is_empty() || regions.len() > MAX_CHALLENGE_REGIONS {
        return Err(AgentError::FieldLength {
            field: "challenge regions",
            length: regions.len(),
            min: 1,
            max: MAX_CHALLENGE_REGIONS,
        });
    }
    let mut h = Sha256::new();
    let mut buf = [0u8; MEASURE_CHUNK];
    for r in regions {
        let outside = AgentError::RegionOutside {
            address: r.address,
            length: r.length,
        };
        if u64::from(r.address) + u64::from(r.length) > 1 << 32 {
            return Err(outside);
        }
        let mut done = 0u32;
        while done < r.length {
            let n = (r.length - done).min(MEASURE_CHUNK as u32) as usize;
            read(r.address + done, &mut buf[..n])?;
            h.update(&buf[..n]);
            done += n as u32;
        }
    }
    Ok(to32(&h.finalize()))
}

/// [`firmware_digest`] over an image held in memory that starts at bus address `base`.
/// Every region must lie inside the image.
pub fn firmware_digest_of_image(
    base: u32,
    image: &[u8],
    regions: &[FlashRange],
) -> Result<[u8; 32], AgentError> {
    firmware_digest(regions, |address, buf| {
        let start = address.checked_sub(base).map(|o| o as usize);
        match start.and_then(|s| image.get(s..s + buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(AgentError::RegionOutside {
                address,
                length: buf.len() as u32,
            }),
        }
    })
}

/// The device side: measures the requested regions and signs with the identity scalar.
///
/// `identity_scalar` is the raw 32-byte big-endian P-256 private scalar as stored on the device.
/// A blank (all 0x00 or all 0xFF) or out-of-range scalar gives [`AgentError::InvalidKey`],
/// which the agent reports as [`ErrorCode::NoKey`](crate::ErrorCode::NoKey).
/// Signing is deterministic (RFC 6979).
pub fn answer_challenge(
    identity_scalar: &[u8; 32],
    uid: &[u8],
    read_flash: impl FnMut(u32, &mut [u8]) -> Result<(), AgentError>,
    request: &ChallengeRequest,
) -> Result<ChallengeResponse, AgentError> {
    let key = signing_key(identity_scalar)?;
    let firmware_digest = firmware_digest(&request.regions, read_flash)?;
    let hash = signed_message_hash(&request.nonce, uid, &firmware_digest)?;
    let sig: Signature = key
        .sign_prehash(&hash)
        .map_err(|_| AgentError::InvalidKey)?;
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&sig.to_bytes());
    Ok(ChallengeResponse {
        firmware_digest,
        signature,
    })
}

/// The host side: checks a challenge reply ([`flashgate_target::verify_challenge_reply`]);
/// the [`ProvenDevice`] it returns is what a lock permission is made from.
///
/// `public_key_sec1` is the key from the certificate the appliance issued for this unit
/// (SEC1, compressed or uncompressed). The signature is checked first, so a unit holding the
/// wrong key reports [`AgentError::BadSignature`]; then the reported firmware digest must equal
/// `expected_firmware_digest`, computed by the appliance from its own image.
pub fn verify_challenge_reply(
    public_key_sec1: &[u8],
    nonce: &[u8; 32],
    uid: &[u8],
    expected_firmware_digest: &[u8; 32],
    reply: &ChallengeResponse,
) -> Result<ProvenDevice, AgentError> {
    flashgate_target::verify_challenge_reply(
        public_key_sec1,
        nonce,
        uid,
        expected_firmware_digest,
        reply,
    )
    .map_err(AgentError::from)
}

/// The uncompressed SEC1 public key (`04 || x || y`) of an identity scalar.
pub fn public_key(identity_scalar: &[u8; 32]) -> Result<[u8; 65], AgentError> {
    let key = signing_key(identity_scalar)?;
    let point = key.verifying_key().to_sec1_point(false);
    let mut out = [0u8; 65];
    if point.as_bytes().len() != out.len() {
        return Err(AgentError::InvalidKey);
    }
    out.copy_from_slice(point.as_bytes());
    Ok(out)
}

/// Whether a stored scalar can be used as an identity key.
pub fn is_valid_scalar(identity_scalar: &[u8; 32]) -> bool {
    signing_key(identity_scalar).is_ok()
}

fn signing_key(scalar: &[u8; 32]) -> Result<SigningKey, AgentError> {
    // Erased flash/key store reads as all 0xFF, cleared RAM as all 0x00: name both as "no key".
    if scalar.iter().all(|&b| b == 0xFF) || scalar.iter().all(|&b| b == 0x00) {
        return Err(AgentError::InvalidKey);
    }
    SigningKey::from_slice(scalar).map_err(|_| AgentError::InvalidKey)
}

fn to32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(b);
    a
}
