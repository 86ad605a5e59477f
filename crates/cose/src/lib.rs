#![forbid(unsafe_code)]
//! The COSE structures of flashgate's formats (RFC 9052/9053).
//!
//! - One ES256 `COSE_Sign1`, strict: [`sign1`] writes it and
//!   [`UnverifiedSign1`] reads it, for the enrollment record, the job
//!   manifest and the audit log's checkpoints alike. Exactly the documented
//!   headers, deterministic encoding, and a low-S signature, so each signed
//!   payload has exactly one valid encoding.
//! - One signer trait, [`Es256Signer`]: any RustCrypto
//!   [`PrehashSigner`] + [`Keypair`] for P-256 (a key file, a token key).
//! - The pieces of the job package's `COSE_Encrypt`: the ECDH-ES + AES-KW
//!   recipient, its KDF context and the `Enc_structure`. Opening inside a
//!   token is the appliance's; the host-side functions here let the OEM
//!   seal without an HSM and let known-answer tests check the construction.

use ciborium::value::Value;
use coset::{iana, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
pub use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
pub use p256::ecdsa::signature::Error as SignatureError;
pub use p256::ecdsa::signature::Keypair;
pub use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Private-use COSE algorithm: ECDH-ES with the `p11v2-ecdh-aes-kdf` KDF + A256KW.
pub const ALG_P11V2_ECDH_AES_KDF_A256KW: i64 = -65537;
/// Private-use COSE algorithm: content is the plaintext wrapped with RFC 5649
/// AES key wrap with padding under the CEK (compatibility profile secrets).
pub const ALG_A256KWP_CONTENT: i64 = -65538;
/// The `other` field of SuppPubInfo in flashgate's KDF context.
pub const KDF_OTHER: &[u8] = b"flashgate job key v1";

/// Errors from COSE structures. Everything here comes from hostile input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoseError {
    /// The bytes are not the COSE structure expected.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// The bytes decode but are not in deterministic encoding.
    #[error("{what} is not in deterministic CBOR encoding")]
    NotCanonical { what: &'static str },
    /// An algorithm other than the one required.
    #[error("{what} uses algorithm {found}, expected {expected}")]
    WrongAlgorithm {
        what: &'static str,
        found: String,
        expected: &'static str,
    },
    /// The signature does not verify.
    #[error("the signature on the {what} does not verify")]
    BadSignature { what: &'static str },
    /// The signature is the high-S twin of a valid one; flashgate writes and
    /// accepts only low-S, so that each payload has one valid encoding.
    #[error(
        "the signature on the {what} is not in low-S form (its s is above half the group order)"
    )]
    HighS { what: &'static str },
    /// Decryption or unwrapping failed its integrity check.
    #[error("the {what} failed its integrity check")]
    Integrity { what: &'static str },
}

/// Something that makes ES256 signatures: a key file, a token key.
///
/// Implemented for every RustCrypto [`PrehashSigner`] of P-256 signatures
/// that knows its [`VerifyingKey`] (`p256::ecdsa::SigningKey` is one). A
/// token key implements those two traits and nothing else.
pub trait Es256Signer: PrehashSigner<Signature> + Keypair<VerifyingKey = VerifyingKey> {
    /// The uncompressed SEC1 public key (65 bytes, starting with 0x04).
    fn public_key(&self) -> [u8; 65] {
        sec1_of(&self.verifying_key())
    }

    /// The key id of [`Self::public_key`].
    fn key_id(&self) -> [u8; 16] {
        key_id(&self.public_key())
    }
}

impl<T> Es256Signer for T where
    T: PrehashSigner<Signature> + Keypair<VerifyingKey = VerifyingKey> + ?Sized
{
}

/// A signer failed, or returned a signature that does not verify.
#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignerError(pub String);

impl From<p256::ecdsa::signature::Error> for SignerError {
    fn from(e: p256::ecdsa::signature::Error) -> Self {
        // The opaque error says only "signature error"; its source (a token
        // error, say) is the sentence worth showing.
        use std::error::Error as _;
        match e.source() {
            Some(source) => SignerError(source.to_string()),
            None => SignerError(e.to_string()),
        }
    }
}

/// A token or remote signer's failure, as the `signature` crate's error.
pub fn signer_failure(
    source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> SignatureError {
    SignatureError::from_source(source)
}

/// The uncompressed SEC1 encoding of a P-256 verifying key.
#[must_use]
pub fn sec1_of(key: &VerifyingKey) -> [u8; 65] {
    sec1_uncompressed(&p256::PublicKey::from(key))
}

/// Signs a SHA-256 digest with `signer`, as a low-S `r || s` (the form
/// every flashgate signature is stored in).
pub fn sign_digest_low_s(
    signer: &dyn Es256Signer,
    digest: &[u8; 32],
) -> Result<Signature, SignerError> {
    let sig = signer.sign_prehash(digest)?;
    Ok(sig.normalize_s())
}

/// The 16-byte key id flashgate uses for a P-256 public key: the first 16
/// bytes of SHA-256 over its uncompressed SEC1 encoding.
pub fn key_id(public_key: &[u8; 65]) -> [u8; 16] {
    let d = Sha256::digest(public_key);
    let mut kid = [0u8; 16];
    kid.copy_from_slice(&d[..16]);
    kid
}

/// A plain sentence for why bytes are not the CBOR expected, for any
/// decoder error (ciborium's own texts name Rust internals).
pub fn cbor_problem<E: std::fmt::Debug>(e: &ciborium::de::Error<E>) -> String {
    match e {
        ciborium::de::Error::Io(_) => "it ends in the middle of a CBOR item (truncated)".to_owned(),
        ciborium::de::Error::Syntax(at) => format!("it is not valid CBOR (at byte {at})"),
        ciborium::de::Error::Semantic(Some(at), what) => {
            format!("it holds an unexpected CBOR item at byte {at} ({what})")
        }
        ciborium::de::Error::Semantic(None, what) => {
            format!("it holds an unexpected CBOR item ({what})")
        }
        ciborium::de::Error::RecursionLimitExceeded => {
            "it nests CBOR items deeper than any flashgate structure".to_owned()
        }
    }
}

/// A plain sentence for a `coset` decoding error.
fn coset_problem(e: &coset::CoseError) -> String {
    match e {
        coset::CoseError::DecodeFailed(d) => cbor_problem(d),
        coset::CoseError::ExtraneousData => "it has bytes after the COSE structure".to_owned(),
        coset::CoseError::DuplicateMapKey => "a header map repeats a label".to_owned(),
        coset::CoseError::UnexpectedItem(found, expected) => {
            format!("it holds {found} where {expected} belongs")
        }
        other => other.to_string(),
    }
}

/// Builds a tagged `COSE_Sign1` (ES256, kid and content type in the protected
/// header, payload attached, low-S signature) and returns its bytes.
///
/// The new structure is parsed and verified against the signer's own public
/// key before it is returned, so a misbehaving signer cannot leave a
/// structure that no reader accepts.
pub fn sign1(
    signer: &dyn Es256Signer,
    content_type: &str,
    payload: Vec<u8>,
) -> Result<Vec<u8>, SignerError> {
    let public = signer.public_key();
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .key_id(key_id(&public).to_vec())
        .content_type(content_type.to_owned())
        .build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .try_create_signature(b"", |tbs| {
            let digest: [u8; 32] = Sha256::digest(tbs).into();
            sign_digest_low_s(signer, &digest).map(|s| s.to_bytes().to_vec())
        })?
        .build();
    let bytes = sign1
        .to_tagged_vec()
        .map_err(|e| SignerError(format!("cannot encode COSE_Sign1: {e}")))?;
    UnverifiedSign1::parse(&bytes, "new signature")
        .and_then(|p| p.verify(&public))
        .map_err(|e| SignerError(format!("the new signature does not verify: {e}")))?;
    Ok(bytes)
}

/// A parsed, not yet verified `COSE_Sign1`.
#[derive(Debug)]
pub struct UnverifiedSign1 {
    inner: CoseSign1,
    what: &'static str,
}

impl UnverifiedSign1 {
    /// Parses a tagged `COSE_Sign1` and checks it is ES256 with a kid, an
    /// attached payload, and canonical encoding.
    pub fn parse(bytes: &[u8], what: &'static str) -> Result<Self, CoseError> {
        let inner = CoseSign1::from_tagged_slice(bytes).map_err(|e| CoseError::Malformed {
            what,
            detail: coset_problem(&e),
        })?;
        let again = inner
            .clone()
            .to_tagged_vec()
            .map_err(|e| CoseError::Malformed {
                what,
                detail: coset_problem(&e),
            })?;
        if again != bytes {
            return Err(CoseError::NotCanonical { what });
        }
        let alg = inner.protected.header.alg.clone();
        if alg != Some(coset::Algorithm::Assigned(iana::Algorithm::ES256)) {
            return Err(CoseError::WrongAlgorithm {
                what,
                found: format!("{alg:?}"),
                expected: "ES256",
            });
        }
        if inner.payload.is_none() {
            return Err(CoseError::Malformed {
                what,
                detail: "the payload is detached".to_owned(),
            });
        }
        if inner.protected.header.key_id.len() != 16 {
            return Err(CoseError::Malformed {
                what,
                detail: "the protected header has no 16-byte key id".to_owned(),
            });
        }
        // Exactly the documented headers: nothing unsigned beside the
        // signed content (RFC 9052 §3 allows it; our formats do not), and
        // no signed parameter a reader would have to understand (`crit`,
        // label 2) or ignore.
        if !inner.unprotected.is_empty() {
            return Err(CoseError::Malformed {
                what,
                detail: "the unprotected header is not empty".to_owned(),
            });
        }
        let h = &inner.protected.header;
        let expected = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .key_id(h.key_id.clone());
        let expected = match &h.content_type {
            Some(coset::ContentType::Text(t)) => expected.content_type(t.clone()),
            _ => expected,
        }
        .build();
        if *h != expected {
            return Err(CoseError::Malformed {
                what,
                detail: if h.crit.is_empty() {
                    "the protected header holds parameters other than alg, content type and kid"
                        .to_owned()
                } else {
                    "the protected header marks parameters critical (crit), which no flashgate format uses".to_owned()
                },
            });
        }
        Ok(Self { inner, what })
    }

    /// The key id in the protected header.
    pub fn key_id(&self) -> &[u8] {
        &self.inner.protected.header.key_id
    }

    /// The content type in the protected header, if textual.
    pub fn content_type(&self) -> Option<&str> {
        match &self.inner.protected.header.content_type {
            Some(coset::ContentType::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// The payload, before verification (for display only).
    pub fn payload_unverified(&self) -> &[u8] {
        self.inner.payload.as_deref().unwrap_or_default()
    }

    /// Verifies the signature with `public_key` and returns the payload.
    pub fn verify(self, public_key: &[u8; 65]) -> Result<Vec<u8>, CoseError> {
        let what = self.what;
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(public_key)
            .map_err(|_| CoseError::BadSignature { what })?;
        self.inner.verify_signature(b"", |sig, tbs| {
            let sig = p256::ecdsa::Signature::from_slice(sig)
                .map_err(|_| CoseError::BadSignature { what })?;
            // Only the low-S twin is valid: one encoding per signed payload.
            if sig.normalize_s() != sig {
                return Err(CoseError::HighS { what });
            }
            let digest = Sha256::digest(tbs);
            vk.verify_prehash(&digest, &sig)
                .map_err(|_| CoseError::BadSignature { what })
        })?;
        Ok(self.inner.payload.unwrap_or_default())
    }
}

/// The COSE_KDF_Context (RFC 9053 §5.2) with null PartyU/PartyV info:
/// `[alg, [nil,nil,nil], [nil,nil,nil], [key_bits, protected, other]]`.
pub fn kdf_context(
    key_wrap_alg: i64,
    key_bits: u64,
    recipient_protected: &[u8],
    other: &Value,
) -> Vec<u8> {
    let nil3 = || Value::Array(vec![Value::Null, Value::Null, Value::Null]);
    let ctx = Value::Array(vec![
        Value::Integer(key_wrap_alg.into()),
        nil3(),
        nil3(),
        Value::Array(vec![
            Value::Integer(key_bits.into()),
            Value::Bytes(recipient_protected.to_vec()),
            other.clone(),
        ]),
    ]);
    encode(&ctx)
}

/// The `Enc_structure` for a `COSE_Encrypt` body: `["Encrypt", protected, external_aad]`.
pub fn enc_structure(body_protected: &[u8], external_aad: &[u8]) -> Vec<u8> {
    encode(&Value::Array(vec![
        Value::Text("Encrypt".to_owned()),
        Value::Bytes(body_protected.to_vec()),
        Value::Bytes(external_aad.to_vec()),
    ]))
}

/// Deterministic encoding of a value built in canonical order.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = ciborium::ser::into_writer(value, &mut out);
    out
}

/// The 32-byte context block of the `p11v2-ecdh-aes-kdf` profile:
/// `SHA-256("flashgate/p11v2-ecdh-aes-kdf/v1" || 0x00 || job id || recipient kid || ephemeral point)`.
pub fn p11v2_context(
    job_id: &[u8; 16],
    recipient_kid: &[u8; 16],
    ephemeral_point: &[u8; 65],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"flashgate/p11v2-ecdh-aes-kdf/v1\0");
    h.update(job_id);
    h.update(recipient_kid);
    h.update(ephemeral_point);
    h.finalize().into()
}

/// Host-side key derivation for both profiles, given the ECDH x-coordinate.
pub fn derive_kek(z: &[u8; 32], kdf: KekDerivation<'_>) -> Zeroizing<[u8; 32]> {
    let mut kek = Zeroizing::new([0u8; 32]);
    match kdf {
        KekDerivation::Hkdf { info } => {
            let hk = hkdf::Hkdf::<Sha256>::new(None, z);
            // 32 bytes is far below HKDF's limit.
            let _ = hk.expand(info, kek.as_mut_slice());
        }
        KekDerivation::AesCbc { context } => {
            use aes::cipher::{BlockCipherEncrypt, KeyInit};
            let cipher = aes::Aes256::new(z.into());
            // AES-256-CBC, zero IV, two blocks, no padding.
            let mut b0 = aes::Block::default();
            b0.copy_from_slice(&context[..16]);
            cipher.encrypt_block(&mut b0);
            let mut b1 = aes::Block::default();
            for (i, byte) in b1.iter_mut().enumerate() {
                *byte = context[16 + i] ^ b0[i];
            }
            cipher.encrypt_block(&mut b1);
            kek[..16].copy_from_slice(&b0);
            kek[16..].copy_from_slice(&b1);
        }
    }
    kek
}

/// How the KEK is derived from the ECDH shared secret.
#[derive(Debug, Clone, Copy)]
pub enum KekDerivation<'a> {
    /// HKDF-SHA256, no salt, this info (the COSE KDF context).
    Hkdf { info: &'a [u8] },
    /// AES-256-CBC (zero IV) of this block under the shared secret.
    AesCbc { context: &'a [u8; 32] },
}

/// The recipient protected header for a profile's key agreement algorithm:
/// `{1: alg}` in deterministic CBOR.
pub fn recipient_protected(alg: i64) -> Vec<u8> {
    encode(&Value::Map(vec![(
        Value::Integer(1.into()),
        Value::Integer(alg.into()),
    )]))
}

/// The content protected header `{1: alg}`.
pub fn content_protected(alg: i64) -> Vec<u8> {
    recipient_protected(alg)
}

/// A fresh random P-256 secret scalar from the OS RNG.
pub fn random_secret_key() -> Result<p256::SecretKey, getrandom::Error> {
    loop {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice())?;
        if let Ok(sk) = p256::SecretKey::from_slice(bytes.as_slice()) {
            return Ok(sk);
        }
    }
}

/// ECDH x-coordinate between a secret scalar and a SEC1 public point.
pub fn ecdh_x(secret: &p256::SecretKey, peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, CoseError> {
    let peer = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| CoseError::Malformed {
        what: "ephemeral key",
        detail: "not a valid P-256 point".to_owned(),
    })?;
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
    let mut z = Zeroizing::new([0u8; 32]);
    z.copy_from_slice(shared.raw_secret_bytes());
    Ok(z)
}

/// The uncompressed SEC1 encoding of a public key.
pub fn sec1_uncompressed(pk: &p256::PublicKey) -> [u8; 65] {
    use p256::elliptic_curve::sec1::ToSec1Point;
    let ep = pk.to_sec1_point(false);
    let mut out = [0u8; 65];
    out.copy_from_slice(ep.as_bytes());
    out
}

/// Parses the COSE_Key of an ephemeral sender key (EC2, P-256, x and y).
pub fn ephemeral_point_from_cose_key(value: &Value) -> Result<[u8; 65], CoseError> {
    let bad = |d: &str| CoseError::Malformed {
        what: "ephemeral key",
        detail: d.to_owned(),
    };
    let Value::Map(entries) = value else {
        return Err(bad("not a map"));
    };
    let get = |label: i64| {
        entries.iter().find_map(|(k, v)| match k {
            Value::Integer(i) if i128::from(*i) == i128::from(label) => Some(v),
            _ => None,
        })
    };
    let is_int = |v: Option<&Value>, want: i64| matches!(v, Some(Value::Integer(i)) if i128::from(*i) == i128::from(want));
    if !is_int(get(1), 2) || !is_int(get(-1), 1) {
        return Err(bad("not an EC2 P-256 key"));
    }
    let (Some(Value::Bytes(x)), Some(Value::Bytes(y))) = (get(-2), get(-3)) else {
        return Err(bad("x or y coordinate missing"));
    };
    if x.len() != 32 || y.len() != 32 {
        return Err(bad("coordinates are not 32 bytes"));
    }
    let mut out = [0u8; 65];
    out[0] = 0x04;
    out[1..33].copy_from_slice(x);
    out[33..].copy_from_slice(y);
    p256::PublicKey::from_sec1_bytes(&out).map_err(|_| bad("not a point on P-256"))?;
    Ok(out)
}

/// The COSE_Key map of an ephemeral public point (EC2, P-256).
pub fn cose_key_from_point(point: &[u8; 65]) -> Value {
    Value::Map(vec![
        (Value::Integer(1.into()), Value::Integer(2.into())),
        (Value::Integer((-1).into()), Value::Integer(1.into())),
        (
            Value::Integer((-2).into()),
            Value::Bytes(point[1..33].to_vec()),
        ),
        (
            Value::Integer((-3).into()),
            Value::Bytes(point[33..].to_vec()),
        ),
    ])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type KeySigner = p256::ecdsa::SigningKey;

    fn signer() -> KeySigner {
        p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap()
    }

    /// Signs `payload` with exactly the given headers (as an attacker with
    /// the key, or a sloppy implementation, would).
    fn sign_with(s: &KeySigner, protected: coset::Header, unprotected: coset::Header) -> Vec<u8> {
        CoseSign1Builder::new()
            .protected(protected)
            .unprotected(unprotected)
            .payload(b"payload".to_vec())
            .try_create_signature(b"", |tbs| {
                let digest: [u8; 32] = Sha256::digest(tbs).into();
                s.sign_prehash(&digest)
                    .map(|x: Signature| x.to_bytes().to_vec())
            })
            .unwrap()
            .build()
            .to_tagged_vec()
            .unwrap()
    }

    fn base(s: &KeySigner) -> HeaderBuilder {
        HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .key_id(key_id(&s.public_key()).to_vec())
            .content_type("application/x-test".to_owned())
    }

    #[test]
    fn sign1_headers_are_exactly_the_documented_ones() {
        let s = signer();
        let good = sign1(&s, "application/x-test", b"payload".to_vec()).unwrap();
        let p = UnverifiedSign1::parse(&good, "job manifest").unwrap();
        assert_eq!(p.verify(&s.public_key()).unwrap(), b"payload");

        // Unsigned content beside the signed payload.
        let unsigned = HeaderBuilder::new()
            .text_value(
                "note".to_owned(),
                ciborium::value::Value::Text("added".into()),
            )
            .build();
        let bytes = sign_with(&s, base(&s).build(), unsigned);
        let e = UnverifiedSign1::parse(&bytes, "job manifest").unwrap_err();
        assert!(
            e.to_string().contains("unprotected header is not empty"),
            "{e}"
        );

        // A critical parameter, signed.
        let crit = base(&s)
            .add_critical(iana::HeaderParameter::CounterSignature)
            .build();
        let bytes = sign_with(&s, crit, coset::Header::default());
        let e = UnverifiedSign1::parse(&bytes, "job manifest").unwrap_err();
        assert!(e.to_string().contains("critical (crit)"), "{e}");

        // Any other signed parameter.
        let extra = base(&s).iv(vec![0; 12]).build();
        let bytes = sign_with(&s, extra, coset::Header::default());
        let e = UnverifiedSign1::parse(&bytes, "job manifest").unwrap_err();
        assert!(
            e.to_string()
                .contains("other than alg, content type and kid"),
            "{e}"
        );
    }

    /// A signer that returns the high-S twin of a correct signature, or a
    /// signature over other bytes.
    struct Twisted {
        key: p256::ecdsa::SigningKey,
        wrong_digest: bool,
    }

    impl Keypair for Twisted {
        type VerifyingKey = VerifyingKey;
        fn verifying_key(&self) -> VerifyingKey {
            *self.key.verifying_key()
        }
    }

    impl PrehashSigner<Signature> for Twisted {
        fn sign_prehash(&self, prehash: &[u8]) -> Result<Signature, p256::ecdsa::signature::Error> {
            let digest = if self.wrong_digest {
                &[0u8; 32][..]
            } else {
                prehash
            };
            let sig: Signature = PrehashSigner::<Signature>::sign_prehash(&self.key, digest)?;
            let sig = sig.normalize_s();
            if self.wrong_digest {
                return Ok(sig);
            }
            // -s mod n: the other valid ECDSA signature for the same digest.
            let (r, s) = sig.split_scalars();
            Signature::from_scalars(r, -*s)
        }
    }

    #[test]
    fn only_low_s_is_written_and_accepted() {
        let key = signer();
        let twisted = Twisted {
            key: key.clone(),
            wrong_digest: false,
        };
        // Whatever the signer returns, sign1 stores the low-S form.
        let bytes = sign1(&twisted, "application/x-test", b"payload".to_vec()).unwrap();
        let p = UnverifiedSign1::parse(&bytes, "job manifest").unwrap();
        assert_eq!(p.verify(&key.public_key()).unwrap(), b"payload");

        // The high-S twin of a valid signature verifies under plain ECDSA
        // but is refused here.
        let high = sign_with_twin(&key);
        let e = UnverifiedSign1::parse(&high, "job manifest")
            .unwrap()
            .verify(&key.public_key())
            .unwrap_err();
        assert!(matches!(e, CoseError::HighS { .. }), "{e}");
        assert!(e.to_string().contains("low-S"), "{e}");

        // A signer whose signature does not verify is caught before its
        // bytes are used.
        let wrong = Twisted {
            key,
            wrong_digest: true,
        };
        let e = sign1(&wrong, "application/x-test", b"payload".to_vec()).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
    }

    /// A `COSE_Sign1` carrying the high-S twin of a valid signature.
    fn sign_with_twin(key: &KeySigner) -> Vec<u8> {
        CoseSign1Builder::new()
            .protected(base(key).build())
            .payload(b"payload".to_vec())
            .create_signature(b"", |tbs| {
                let digest: [u8; 32] = Sha256::digest(tbs).into();
                let sig: Signature = key.sign_prehash(&digest).unwrap();
                let sig = sig.normalize_s();
                let (r, s) = sig.split_scalars();
                Signature::from_scalars(r, -*s).unwrap().to_bytes().to_vec()
            })
            .build()
            .to_tagged_vec()
            .unwrap()
    }

    #[test]
    fn cbor_problems_read_as_sentences() {
        let s = signer();
        let good = sign1(&s, "application/x-test", b"payload".to_vec()).unwrap();
        for (bytes, want) in [
            (&good[..good.len() - 5], "truncated"),
            (&[0xd2, 0x84, 0x1c][..], "not valid CBOR"),
        ] {
            let e = UnverifiedSign1::parse(bytes, "enrollment record")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("EndOfFile") && !e.contains("Syntax("), "{e}");
        }
        let mut deep = vec![0x81u8; 300];
        deep.push(0x00);
        let e: Result<ciborium::value::Value, _> = ciborium::de::from_reader(deep.as_slice());
        let text = cbor_problem(&e.unwrap_err());
        assert!(text.contains("nests"), "{text}");
    }

    #[test]
    fn aes_cbc_kdf_matches_two_block_cbc() {
        // CBC with zero IV: block 2 is chained through block 1.
        let z = [7u8; 32];
        let ctx = [9u8; 32];
        let k = derive_kek(&z, KekDerivation::AesCbc { context: &ctx });
        use aes::cipher::{BlockCipherEncrypt, KeyInit};
        let c = aes::Aes256::new(&z.into());
        let mut b = aes::Block::from([9u8; 16]);
        c.encrypt_block(&mut b);
        assert_eq!(&k[..16], b.as_slice());
        assert_ne!(&k[..16], &k[16..]);
    }

    #[test]
    fn kdf_context_matches_suit_layout() {
        // [-3, [nil,nil,nil], [nil,nil,nil], [128, h'a101381c', 'SUIT Payload Encryption' (a byte string)]]
        let ctx = kdf_context(
            -3,
            128,
            &[0xa1, 0x01, 0x38, 0x1c],
            &Value::Bytes(b"SUIT Payload Encryption".to_vec()),
        );
        assert_eq!(
            &ctx[..9],
            &[0x84, 0x22, 0x83, 0xf6, 0xf6, 0xf6, 0x83, 0xf6, 0xf6]
        );
    }
}
