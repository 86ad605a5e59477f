//! Signed checkpoints: the C2SP tlog-checkpoint text of the log (origin
//! `flashgate/<appliance id>`, size, root) as the payload of flashgate's one
//! `COSE_Sign1` form ([`flashgate_cose`]: ES256, key id and content type in
//! the protected header, an empty unprotected header, low-S `r || s`).
//!
//! Parsing gives an [`UnverifiedCheckpoint`]; only
//! [`UnverifiedCheckpoint::verify`] with the pinned log key turns it into a
//! [`VerifiedCheckpoint`].

pub use flashgate_cose::{key_id, Es256Signer};
use flashgate_cose::{CoseError, UnverifiedSign1};
use flashgate_tlog::Checkpoint;
use sha2::{Digest, Sha256};

/// The content type of a signed checkpoint's payload.
pub const CHECKPOINT_CONTENT_TYPE: &str = "application/vnd.flashgate.checkpoint";

/// The largest signed checkpoint accepted, in bytes.
pub const MAX_CHECKPOINT_LEN: usize = 4096;

/// What signs checkpoints: the appliance's log key (an HSM key on the
/// appliance; [`SoftwareSigner`] in tests and development). Shared by the
/// log's writers, so it must be usable from any thread.
pub trait CheckpointSigner: Es256Signer + Send + Sync {}

impl<T: Es256Signer + Send + Sync + ?Sized> CheckpointSigner for T {}

/// A log key held in memory. For tests and development only: the appliance
/// keeps its log key in the HSM.
#[derive(Clone)]
pub struct SoftwareSigner {
    key: p256::ecdsa::SigningKey,
}

impl std::fmt::Debug for SoftwareSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareSigner")
            .field("kid", &hex::encode(self.key_id()))
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

impl flashgate_cose::Keypair for SoftwareSigner {
    type VerifyingKey = flashgate_cose::VerifyingKey;
    fn verifying_key(&self) -> flashgate_cose::VerifyingKey {
        *self.key.verifying_key()
    }
}

impl flashgate_cose::PrehashSigner<flashgate_cose::Signature> for SoftwareSigner {
    fn sign_prehash(
        &self,
        prehash: &[u8],
    ) -> Result<flashgate_cose::Signature, p256::ecdsa::signature::Error> {
        self.key.sign_prehash(prehash)
    }
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
    /// The signature does not verify under the pinned key (or is the high-S
    /// twin of one that does).
    #[error("the checkpoint signature does not verify under the pinned log key")]
    BadSignature,
    /// The pinned key is not a P-256 point.
    #[error("the pinned log key is not a valid P-256 public key")]
    BadPublicKey,
    /// Signing failed.
    #[error("signing the checkpoint failed: {0}")]
    Signer(String),
}

impl From<CoseError> for CheckpointError {
    fn from(e: CoseError) -> Self {
        match e {
            CoseError::Malformed { detail, .. } => Self::Malformed(detail),
            CoseError::NotCanonical { .. } => {
                Self::UnexpectedForm("not in deterministic encoding".to_owned())
            }
            CoseError::WrongAlgorithm { found, .. } => {
                Self::UnexpectedForm(format!("algorithm {found}, expected ES256"))
            }
            CoseError::BadSignature { .. } | CoseError::HighS { .. } => Self::BadSignature,
            // Anything else keeps its own sentence.
            other => Self::Malformed(other.to_string()),
        }
    }
}

/// Signs a checkpoint; returns the tagged `COSE_Sign1` bytes that are stored.
///
/// [`flashgate_cose::sign1`] stores the low-S form and checks the new
/// signature against the signer's public key, so a misbehaving signer
/// cannot leave an invalid checkpoint.
pub fn sign_checkpoint(
    signer: &dyn CheckpointSigner,
    checkpoint: &Checkpoint,
) -> Result<Vec<u8>, CheckpointError> {
    checkpoint.validate()?;
    let payload = checkpoint.to_text().into_bytes();
    flashgate_cose::sign1(signer, CHECKPOINT_CONTENT_TYPE, payload)
        .map_err(|e| CheckpointError::Signer(e.0))
}

/// A parsed signed checkpoint whose signature has not been checked.
#[derive(Debug)]
pub struct UnverifiedCheckpoint {
    sign1: UnverifiedSign1,
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
        let sign1 = UnverifiedSign1::parse(bytes, "signed checkpoint")?;
        if sign1.content_type() != Some(CHECKPOINT_CONTENT_TYPE) {
            return Err(CheckpointError::UnexpectedForm(format!(
                "the protected header must hold exactly ES256, the key id and content type {CHECKPOINT_CONTENT_TYPE:?}"
            )));
        }
        let checkpoint = Checkpoint::parse(sign1.payload_unverified())?;
        Ok(Self { sign1, checkpoint })
    }

    /// The key id in the protected header.
    #[must_use]
    pub fn key_id(&self) -> &[u8] {
        self.sign1.key_id()
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
        p256::ecdsa::VerifyingKey::from_sec1_bytes(public_key)
            .map_err(|_| CheckpointError::BadPublicKey)?;
        self.sign1.verify(public_key)?;
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
    use coset::{CoseSign1, TaggedCborSerializable};

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
        let mut sign1 = CoseSign1::from_tagged_slice(&bytes).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&sign1.signature).unwrap();
        let (r, s_) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s_).to_bytes()).unwrap();
        sign1.signature = high.to_bytes().to_vec();
        let twin = sign1.to_tagged_vec().unwrap();
        assert_ne!(twin, bytes);
        assert_eq!(
            verify_checkpoint(&twin, &s.public_key()),
            Err(CheckpointError::BadSignature)
        );
    }

    #[test]
    fn another_content_type_is_refused() {
        let s = SoftwareSigner::from_seed(b"k");
        let cp = Checkpoint::new("flashgate/a1", 3, [7; 32]).unwrap();
        let bytes = flashgate_cose::sign1(
            &s,
            "application/vnd.flashgate.manifest+cbor",
            cp.to_text().into_bytes(),
        )
        .unwrap();
        let e = UnverifiedCheckpoint::parse(&bytes).unwrap_err();
        assert!(matches!(e, CheckpointError::UnexpectedForm(_)), "{e}");
    }
}
