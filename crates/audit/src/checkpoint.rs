//! Signed checkpoints: the C2SP tlog-checkpoint text of the log (origin
//! `flashgate/<appliance id>`, size, root) as the payload of a tagged
//! `COSE_Sign1` (ES256, key id and content type in the protected header, an
//! empty unprotected header, low-S `r || s` signature).
//!
//! Parsing gives an [`UnverifiedCheckpoint`]; only
//! [`UnverifiedCheckpoint::verify`] with the pinned log key turns it into a
//! [`VerifiedCheckpoint`].

use coset::{iana, CoseSign1, CoseSign1Builder, Header, HeaderBuilder, TaggedCborSerializable};
use flashgate_tlog::Checkpoint;
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use sha2::{Digest, Sha256};

/// The content type of a signed checkpoint's payload.
pub const CHECKPOINT_CONTENT_TYPE: &str = "application/vnd.flashgate.checkpoint";

/// The largest signed checkpoint accepted, in bytes.
pub const MAX_CHECKPOINT_LEN: usize = 4096;

/// Signs checkpoints with the appliance's log key (an HSM key on the
/// appliance; [`SoftwareSigner`] in tests and development).
pub trait CheckpointSigner: Send + Sync {
    /// The uncompressed SEC1 public key (65 bytes, starting with 0x04).
    fn public_key(&self) -> [u8; 65];
    /// Signs a SHA-256 digest with ECDSA P-256; returns `r || s`.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], String>;
}

/// A log key held in memory. For tests and development only: the appliance
/// keeps its log key in the HSM.
#[derive(Clone)]
pub struct SoftwareSigner {
    key: p256::ecdsa::SigningKey,
}

impl std::fmt::Debug for SoftwareSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareSigner")
            .field("kid", &hex::encode(key_id(&self.public_key())))
            .finish_non_exhaustive()
    }
}

impl SoftwareSigner {
    /// A key from a 32-byte big-endian scalar; fails if it is zero or not
    /// below the group order.
    pub fn from_scalar(scalar: &[u8; 32]) -> Result<Self, String> {
        p256::ecdsa::SigningKey::from_slice(scalar)
            .map(|key| Self { key })
            .map_err(|e| format!("not a P-256 private scalar: {e}"))
    }

    /// A key derived deterministically from a seed (for tests): the scalar
    /// is SHA-256 of a counter and the seed, retried until valid.
    pub fn from_seed(seed: &[u8]) -> Self {
        let mut i = 0u32;
        loop {
            let mut h = Sha256::new();
            h.update(i.to_be_bytes());
            h.update(seed);
            let scalar: [u8; 32] = h.finalize().into();
            if let Ok(s) = Self::from_scalar(&scalar) {
                return s;
            }
            i = i.wrapping_add(1);
        }
    }
}

impl CheckpointSigner for SoftwareSigner {
    fn public_key(&self) -> [u8; 65] {
        let point = self.key.verifying_key().to_sec1_point(false);
        let mut out = [0u8; 65];
        if point.as_bytes().len() == 65 {
            out.copy_from_slice(point.as_bytes());
        }
        out
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], String> {
        let sig: p256::ecdsa::Signature = self
            .key
            .sign_prehash(digest)
            .map_err(|e| format!("signing failed: {e}"))?;
        let mut out = [0u8; 64];
        out.copy_from_slice(&sig.to_bytes());
        Ok(out)
    }
}

/// The 16-byte key id of a P-256 public key: the first 16 bytes of SHA-256
/// over its uncompressed SEC1 encoding.
#[must_use]
pub fn key_id(public_key: &[u8; 65]) -> [u8; 16] {
    let d = Sha256::digest(public_key);
    let mut kid = [0u8; 16];
    kid.copy_from_slice(&d[..16]);
    kid
}

/// The checkpoint origin of an appliance's log.
#[must_use]
pub fn origin_for(appliance_id: &str) -> String {
    format!("flashgate/{appliance_id}")
}

/// Why a signed checkpoint is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Not a tagged `COSE_Sign1`, or larger than [`MAX_CHECKPOINT_LEN`].
    #[error("not a signed checkpoint: {0}")]
    Malformed(String),
    /// A `COSE_Sign1`, but not exactly the form flashgate writes (ES256, key
    /// id and content type only in the protected header, empty unprotected
    /// header, attached payload, deterministic encoding).
    #[error("the signed checkpoint is not in the expected form: {0}")]
    UnexpectedForm(String),
    /// The payload is not valid checkpoint text.
    #[error("the checkpoint text is invalid: {0}")]
    Text(#[from] flashgate_tlog::Error),
    /// Signed with another key than the pinned one.
    #[error(
        "the checkpoint is signed by key id {found}, but the pinned log key has id {expected}"
    )]
    WrongKey {
        /// The key id in the checkpoint, hex.
        found: String,
        /// The pinned key's id, hex.
        expected: String,
    },
    /// The signature does not verify under the pinned key.
    #[error("the checkpoint signature does not verify under the pinned log key")]
    BadSignature,
    /// The pinned key is not a P-256 point.
    #[error("the pinned log key is not a valid P-256 public key")]
    BadPublicKey,
    /// Signing failed.
    #[error("signing the checkpoint failed: {0}")]
    Signer(String),
}

fn expected_protected(kid: &[u8]) -> Header {
    HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .key_id(kid.to_vec())
        .content_type(CHECKPOINT_CONTENT_TYPE.to_owned())
        .build()
}

/// Encodes a `COSE_Sign1` exactly as flashgate writes it.
fn canonical(kid: &[u8], payload: &[u8], signature: &[u8]) -> Result<Vec<u8>, CheckpointError> {
    CoseSign1Builder::new()
        .protected(expected_protected(kid))
        .payload(payload.to_vec())
        .signature(signature.to_vec())
        .build()
        .to_tagged_vec()
        .map_err(|e| CheckpointError::Malformed(e.to_string()))
}

/// Signs a checkpoint; returns the tagged `COSE_Sign1` bytes that are stored.
///
/// The signature is normalised to low-S (both forms verify under ECDSA; the
/// verifier accepts only the low one, so the stored bytes are the only
/// valid encoding) and checked against the signer's public key before it is
/// returned, so a misbehaving signer cannot leave an invalid checkpoint.
pub fn sign_checkpoint(
    signer: &dyn CheckpointSigner,
    checkpoint: &Checkpoint,
) -> Result<Vec<u8>, CheckpointError> {
    checkpoint.validate()?;
    let public_key = signer.public_key();
    let kid = key_id(&public_key);
    let payload = checkpoint.to_text().into_bytes();
    let mut sign_error = None;
    let sign1 = CoseSign1Builder::new()
        .protected(expected_protected(&kid))
        .payload(payload)
        .create_signature(b"", |tbs| {
            let digest: [u8; 32] = Sha256::digest(tbs).into();
            match signer.sign_digest(&digest) {
                Ok(sig) => match p256::ecdsa::Signature::from_slice(&sig) {
                    Ok(s) => s.normalize_s().to_bytes().to_vec(),
                    Err(_) => {
                        sign_error = Some("the signer returned an invalid r || s".to_owned());
                        Vec::new()
                    }
                },
                Err(e) => {
                    sign_error = Some(e);
                    Vec::new()
                }
            }
        })
        .build();
    if let Some(e) = sign_error {
        return Err(CheckpointError::Signer(e));
    }
    let bytes = sign1
        .to_tagged_vec()
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    UnverifiedCheckpoint::parse(&bytes)?
        .verify(&public_key)
        .map_err(|e| CheckpointError::Signer(format!("the new signature does not verify: {e}")))?;
    Ok(bytes)
}

/// A parsed signed checkpoint whose signature has not been checked.
#[derive(Debug, Clone)]
pub struct UnverifiedCheckpoint {
    sign1: CoseSign1,
    checkpoint: Checkpoint,
}

impl UnverifiedCheckpoint {
    /// Parses the bytes of a signed checkpoint and checks its form; does not
    /// check the signature.
    pub fn parse(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() > MAX_CHECKPOINT_LEN {
            return Err(CheckpointError::Malformed(format!(
                "{} bytes, at most {MAX_CHECKPOINT_LEN} allowed",
                bytes.len()
            )));
        }
        let sign1 = CoseSign1::from_tagged_slice(bytes)
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        let kid = sign1.protected.header.key_id.clone();
        if kid.len() != 16 {
            return Err(CheckpointError::UnexpectedForm(
                "the protected header has no 16-byte key id".to_owned(),
            ));
        }
        let Some(payload) = sign1.payload.as_deref() else {
            return Err(CheckpointError::UnexpectedForm(
                "the payload is detached".to_owned(),
            ));
        };
        if sign1.signature.len() != 64 {
            return Err(CheckpointError::UnexpectedForm(format!(
                "the signature is {} bytes, expected 64",
                sign1.signature.len()
            )));
        }
        if sign1.protected.header != expected_protected(&kid) {
            return Err(CheckpointError::UnexpectedForm(format!(
                "the protected header must hold exactly ES256, the key id and content type {CHECKPOINT_CONTENT_TYPE:?}"
            )));
        }
        if sign1.unprotected != Header::default() {
            return Err(CheckpointError::UnexpectedForm(
                "the unprotected header is not empty".to_owned(),
            ));
        }
        if canonical(&kid, payload, &sign1.signature)? != bytes {
            return Err(CheckpointError::UnexpectedForm(
                "not in deterministic encoding".to_owned(),
            ));
        }
        let checkpoint = Checkpoint::parse(payload)?;
        Ok(Self { sign1, checkpoint })
    }

    /// The key id in the protected header.
    #[must_use]
    pub fn key_id(&self) -> &[u8] {
        &self.sign1.protected.header.key_id
    }

    /// The checkpoint text, not yet authenticated.
    #[must_use]
    pub fn checkpoint_unverified(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Checks the key id and the signature against the pinned log key.
    pub fn verify(self, public_key: &[u8; 65]) -> Result<VerifiedCheckpoint, CheckpointError> {
        let expected = key_id(public_key);
        if self.key_id() != expected {
            return Err(CheckpointError::WrongKey {
                found: hex::encode(self.key_id()),
                expected: hex::encode(expected),
            });
        }
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(public_key)
            .map_err(|_| CheckpointError::BadPublicKey)?;
        self.sign1.verify_signature(b"", |sig, tbs| {
            let sig = p256::ecdsa::Signature::from_slice(sig)
                .map_err(|_| CheckpointError::BadSignature)?;
            if sig.normalize_s() != sig {
                return Err(CheckpointError::BadSignature);
            }
            vk.verify_prehash(&Sha256::digest(tbs), &sig)
                .map_err(|_| CheckpointError::BadSignature)
        })?;
        Ok(VerifiedCheckpoint {
            checkpoint: self.checkpoint,
        })
    }
}

/// A checkpoint whose signature verified under the pinned log key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    checkpoint: Checkpoint,
}

impl VerifiedCheckpoint {
    /// The authenticated checkpoint.
    #[must_use]
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The tree size.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.checkpoint.size
    }

    /// The root hash.
    #[must_use]
    pub fn root(&self) -> &flashgate_tlog::Hash {
        &self.checkpoint.root
    }
}

/// Parses and verifies a signed checkpoint in one step.
pub fn verify_checkpoint(
    bytes: &[u8],
    public_key: &[u8; 65],
) -> Result<VerifiedCheckpoint, CheckpointError> {
    UnverifiedCheckpoint::parse(bytes)?.verify(public_key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip() {
        let s = SoftwareSigner::from_seed(b"k");
        let cp = Checkpoint::new("flashgate/a1", 3, [7; 32]).unwrap();
        let bytes = sign_checkpoint(&s, &cp).unwrap();
        let v = verify_checkpoint(&bytes, &s.public_key()).unwrap();
        assert_eq!(v.checkpoint(), &cp);
        let other = SoftwareSigner::from_seed(b"other");
        assert!(matches!(
            verify_checkpoint(&bytes, &other.public_key()),
            Err(CheckpointError::WrongKey { .. })
        ));
    }

    #[test]
    fn high_s_twin_is_refused() {
        let s = SoftwareSigner::from_seed(b"k");
        let cp = Checkpoint::new("flashgate/a1", 3, [7; 32]).unwrap();
        let bytes = sign_checkpoint(&s, &cp).unwrap();
        let u = UnverifiedCheckpoint::parse(&bytes).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&u.sign1.signature).unwrap();
        let (r, s_) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s_).to_bytes()).unwrap();
        let payload = u.sign1.payload.clone().unwrap();
        let twin = canonical(u.key_id(), &payload, &high.to_bytes()).unwrap();
        assert_ne!(twin, bytes);
        assert_eq!(
            verify_checkpoint(&twin, &s.public_key()),
            Err(CheckpointError::BadSignature)
        );
    }
}
