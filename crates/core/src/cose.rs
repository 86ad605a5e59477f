//! The COSE pieces flashgate uses (RFC 9052/9053): ES256 `COSE_Sign1`, the
//! ECDH-ES + AES-KW recipient and its KDF context, and the `Enc_structure`.
//!
//! Host-side sealing lives here (the OEM builds packages without an HSM);
//! opening inside the token is in `appliance::import` (through `hsm`). The host-side `open`
//! functions exist so that known-answer vectors and tests can check the
//! construction independently of any token.

use ciborium::value::Value;
use coset::{iana, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
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
    /// Decryption or unwrapping failed its integrity check.
    #[error("the {what} failed its integrity check")]
    Integrity { what: &'static str },
}

/// Something that makes ES256 signatures: a key file or a token key.
pub trait Es256Signer {
    /// The uncompressed SEC1 public key.
    fn public_key(&self) -> [u8; 65];
    /// Signs a SHA-256 digest; returns r||s.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], SignerError>;
}

/// A signer failed.
#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignerError(pub String);

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
/// header, payload attached) and returns its bytes.
pub fn sign1(
    signer: &dyn Es256Signer,
    content_type: &str,
    payload: Vec<u8>,
) -> Result<Vec<u8>, SignerError> {
    let kid = key_id(&signer.public_key());
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .key_id(kid.to_vec())
        .content_type(content_type.to_owned())
        .build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .try_create_signature(b"", |tbs| {
            let digest: [u8; 32] = Sha256::digest(tbs).into();
            signer.sign_digest(&digest).map(|s| s.to_vec())
        })?
        .build();
    sign1
        .to_tagged_vec()
        .map_err(|e| SignerError(format!("cannot encode COSE_Sign1: {e}")))
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

    struct KeySigner(p256::ecdsa::SigningKey);

    impl Es256Signer for KeySigner {
        fn public_key(&self) -> [u8; 65] {
            sec1_uncompressed(&p256::PublicKey::from(self.0.verifying_key()))
        }
        fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], SignerError> {
            use p256::ecdsa::signature::hazmat::PrehashSigner;
            let sig: p256::ecdsa::Signature = self.0.sign_prehash(digest).unwrap();
            Ok(sig.to_bytes().into())
        }
    }

    fn signer() -> KeySigner {
        KeySigner(p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap())
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
                s.sign_digest(&digest).map(|x| x.to_vec())
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
