//! A private key in the token as an ES256 signer: the one adapter from the
//! token to [`flashgate_cose::Es256Signer`], for the log key, the job-CA key
//! and an OEM key kept in a token.

use std::borrow::Borrow;

use cryptoki::object::ObjectHandle;
use flashgate_cose::{Keypair, PrehashSigner, Signature, VerifyingKey};

use super::{HsmError, Token};

/// A P-256 private key in `token`, with its public key.
///
/// `T` is how the token is held: borrowed (`&Token`), shared
/// (`Rc<Token>`) or owned (a session of its own).
pub struct TokenKey<T> {
    token: T,
    key: ObjectHandle,
    public: VerifyingKey,
}

impl<T: Borrow<Token>> TokenKey<T> {
    /// The private key `key` in `token`, whose public point is `public`
    /// (uncompressed SEC1).
    pub fn new(token: T, key: ObjectHandle, public: &[u8; 65]) -> Result<Self, HsmError> {
        let public = VerifyingKey::from_sec1_bytes(public)
            .map_err(|_| HsmError::Unexpected("the token's public key is not a P-256 point"))?;
        Ok(Self { token, key, public })
    }
}

impl<T> std::fmt::Debug for TokenKey<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field(
                "kid",
                &hex::encode(flashgate_cose::key_id(&flashgate_cose::sec1_of(
                    &self.public,
                ))),
            )
            .finish_non_exhaustive()
    }
}

impl<T> Keypair for TokenKey<T> {
    type VerifyingKey = VerifyingKey;
    fn verifying_key(&self) -> VerifyingKey {
        self.public
    }
}

impl<T: Borrow<Token>> PrehashSigner<Signature> for TokenKey<T> {
    fn sign_prehash(&self, prehash: &[u8]) -> Result<Signature, flashgate_cose::SignatureError> {
        let digest: &[u8; 32] = prehash
            .try_into()
            .map_err(|_| flashgate_cose::signer_failure("the digest to sign is not 32 bytes"))?;
        let raw = self
            .token
            .borrow()
            .sign_prehash(self.key, digest)
            .map_err(flashgate_cose::signer_failure)?;
        Signature::from_slice(&raw).map_err(flashgate_cose::signer_failure)
    }
}
