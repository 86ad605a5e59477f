//! `COSE_Encrypt` objects with one recipient (ECDH-ES key agreement, or
//! RSAES-OAEP key transport), as used for firmware images (detached, chunked
//! ciphertext) and for wrapped secrets.

use aes_gcm::aead::KeyInit;
use aes_kw::KwAes256;
use ciborium::value::Value;
use zeroize::Zeroizing;

use crate::cose::{
    self, KekDerivation, ALG_A256KWP_CONTENT, ALG_P11V2_ECDH_AES_KDF_A256KW, KDF_OTHER,
};
use crate::profile::Profile;

use super::PackageError;

/// COSE algorithm ECDH-ES + A256KW.
pub const ALG_ECDH_ES_A256KW: i64 = -31;
/// COSE algorithm A256KW.
pub const ALG_A256KW: i64 = -5;
/// COSE algorithm A256GCM.
pub const ALG_A256GCM: i64 = 3;
/// COSE algorithm RSAES-OAEP w/ SHA-1 (RFC 8230).
pub const ALG_RSAES_OAEP_SHA1: i64 = -40;
/// COSE algorithm RSAES-OAEP w/ SHA-256 (RFC 8230).
pub const ALG_RSAES_OAEP_SHA256: i64 = -41;
/// Private-use content algorithm: the body is empty and the secret is the
/// recipient's plaintext itself (RSA-OAEP profiles: no intermediate key).
pub const ALG_SECRET_IN_RECIPIENT: i64 = -65539;
/// Bytes of an RSA-OAEP ciphertext (RSA-3072).
pub const OAEP_CIPHERTEXT_LEN: usize = 384;
const TAG_COSE_ENCRYPT: u64 = 96;

/// The recipient's key agreement algorithm for a profile.
pub fn recipient_alg(profile: Profile) -> i64 {
    match profile {
        Profile::CoseRsaesOaepSha256 => ALG_RSAES_OAEP_SHA256,
        Profile::CoseRsaesOaepSha1 => ALG_RSAES_OAEP_SHA1,
        Profile::CoseEcdhEsA256kw => ALG_ECDH_ES_A256KW,
        Profile::P11v2EcdhAesKdf => ALG_P11V2_ECDH_AES_KDF_A256KW,
    }
}

/// The content algorithm of wrapped secrets for a profile.
pub fn secret_content_alg(profile: Profile) -> i64 {
    match profile {
        Profile::CoseRsaesOaepSha256 | Profile::CoseRsaesOaepSha1 => ALG_SECRET_IN_RECIPIENT,
        Profile::CoseEcdhEsA256kw => ALG_A256GCM,
        Profile::P11v2EcdhAesKdf => ALG_A256KWP_CONTENT,
    }
}

/// A parsed ECDH-ES recipient.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The recipient's protected header bytes.
    pub protected: Vec<u8>,
    /// The key id of the appliance key it is for.
    pub kid: [u8; 16],
    /// The sender's ephemeral public point.
    pub ephemeral: [u8; 65],
    /// The AES-KW wrapped CEK (40 bytes).
    pub wrapped_cek: Vec<u8>,
}

/// A parsed RSAES-OAEP recipient (RFC 8230 key transport).
#[derive(Debug, Clone)]
pub struct OaepRecipient {
    /// The recipient's protected header bytes (`{1: -41}` or `{1: -40}`).
    pub protected: Vec<u8>,
    /// Key id of the appliance transport key: the first 16 bytes of `SHA-256(SPKI DER)`.
    pub kid: [u8; 16],
    /// The RSA-OAEP ciphertext (384 bytes).
    pub encrypted_key: Vec<u8>,
}

/// The one recipient of a `COSE_Encrypt`.
#[derive(Debug, Clone)]
pub enum AnyRecipient {
    /// ECDH-ES + AES-KW (the ECDH profiles).
    Ecdh(Recipient),
    /// RSAES-OAEP (the RSA-OAEP profiles).
    Oaep(OaepRecipient),
}

impl AnyRecipient {
    /// The recipient protected header bytes.
    pub fn protected(&self) -> &[u8] {
        match self {
            Self::Ecdh(r) => &r.protected,
            Self::Oaep(r) => &r.protected,
        }
    }

    /// The recipient key id.
    pub fn kid(&self) -> &[u8; 16] {
        match self {
            Self::Ecdh(r) => &r.kid,
            Self::Oaep(r) => &r.kid,
        }
    }
}

impl From<Recipient> for AnyRecipient {
    fn from(r: Recipient) -> Self {
        Self::Ecdh(r)
    }
}

impl From<OaepRecipient> for AnyRecipient {
    fn from(r: OaepRecipient) -> Self {
        Self::Oaep(r)
    }
}

/// A parsed `COSE_Encrypt` with exactly one recipient.
#[derive(Debug, Clone)]
pub struct EncryptObject {
    /// The body's protected header bytes.
    pub protected: Vec<u8>,
    /// The content algorithm.
    pub alg: i64,
    /// IV (A256GCM only).
    pub iv: Option<[u8; 12]>,
    /// Ciphertext, or `None` when detached.
    pub ciphertext: Option<Vec<u8>>,
    /// The recipient.
    pub recipient: AnyRecipient,
}

fn malformed(detail: &str) -> PackageError {
    PackageError::Malformed {
        detail: detail.to_owned(),
    }
}

fn int_is(v: &Value, want: i64) -> bool {
    matches!(v, Value::Integer(i) if i128::from(*i) == i128::from(want))
}

fn alg_of(protected: &[u8]) -> Result<i64, PackageError> {
    let v: Value = ciborium::de::from_reader(protected)
        .map_err(|_| malformed("a protected header is not CBOR"))?;
    match v {
        Value::Map(entries) if entries.len() == 1 && int_is(&entries[0].0, 1) => {
            match &entries[0].1 {
                Value::Integer(i) => {
                    i64::try_from(*i).map_err(|_| malformed("algorithm out of range"))
                }
                _ => Err(malformed("algorithm is not an integer")),
            }
        }
        _ => Err(malformed(
            "a protected header must hold exactly the algorithm",
        )),
    }
}

impl EncryptObject {
    /// Parses and checks canonical encoding (re-encoding gives the same bytes).
    pub fn parse(bytes: &[u8], what: &'static str) -> Result<Self, PackageError> {
        let v: Value = ciborium::de::from_reader(bytes)
            .map_err(|_| malformed("a COSE_Encrypt is not CBOR"))?;
        let Value::Tag(TAG_COSE_ENCRYPT, inner) = v else {
            return Err(malformed("expected a tagged COSE_Encrypt"));
        };
        let Value::Array(items) = *inner else {
            return Err(malformed("a COSE_Encrypt is not an array"));
        };
        let [Value::Bytes(protected), Value::Map(unprotected), ct, Value::Array(recipients)] =
            <[Value; 4]>::try_from(items)
                .map_err(|_| malformed("a COSE_Encrypt does not have four entries"))?
        else {
            return Err(malformed("a COSE_Encrypt has entries of the wrong type"));
        };
        let alg = alg_of(&protected)?;
        let iv = match unprotected.as_slice() {
            [] => None,
            [(k, Value::Bytes(iv))] if int_is(k, 5) => Some(
                <[u8; 12]>::try_from(iv.as_slice()).map_err(|_| malformed("IV is not 12 bytes"))?,
            ),
            _ => return Err(malformed("unexpected unprotected header in a COSE_Encrypt")),
        };
        let ciphertext = match ct {
            Value::Null => None,
            Value::Bytes(b) => Some(b),
            _ => return Err(malformed("ciphertext is neither bytes nor nil")),
        };
        let [recipient] = <[Value; 1]>::try_from(recipients)
            .map_err(|_| malformed("a COSE_Encrypt must have exactly one recipient"))?;
        let recipient = parse_recipient(recipient)?;
        let object = Self {
            protected,
            alg,
            iv,
            ciphertext,
            recipient,
        };
        if object.encode() != bytes {
            return Err(PackageError::NotCanonical { what });
        }
        Ok(object)
    }

    /// Deterministic encoding.
    pub fn encode(&self) -> Vec<u8> {
        let unprotected = match &self.iv {
            Some(iv) => vec![(Value::Integer(5.into()), Value::Bytes(iv.to_vec()))],
            None => vec![],
        };
        let recipient = match &self.recipient {
            AnyRecipient::Ecdh(r) => Value::Array(vec![
                Value::Bytes(r.protected.clone()),
                Value::Map(vec![
                    (Value::Integer(4.into()), Value::Bytes(r.kid.to_vec())),
                    (
                        Value::Integer((-1).into()),
                        cose::cose_key_from_point(&r.ephemeral),
                    ),
                ]),
                Value::Bytes(r.wrapped_cek.clone()),
            ]),
            AnyRecipient::Oaep(r) => Value::Array(vec![
                Value::Bytes(r.protected.clone()),
                Value::Map(vec![(
                    Value::Integer(4.into()),
                    Value::Bytes(r.kid.to_vec()),
                )]),
                Value::Bytes(r.encrypted_key.clone()),
            ]),
        };
        let v = Value::Tag(
            TAG_COSE_ENCRYPT,
            Box::new(Value::Array(vec![
                Value::Bytes(self.protected.clone()),
                Value::Map(unprotected),
                self.ciphertext.clone().map_or(Value::Null, Value::Bytes),
                Value::Array(vec![recipient]),
            ])),
        );
        cose::encode(&v)
    }
}

fn parse_recipient(v: Value) -> Result<AnyRecipient, PackageError> {
    let Value::Array(items) = v else {
        return Err(malformed("a recipient is not an array"));
    };
    let [Value::Bytes(protected), Value::Map(unprotected), Value::Bytes(wrapped_cek)] =
        <[Value; 3]>::try_from(items)
            .map_err(|_| malformed("a recipient does not have three entries"))?
    else {
        return Err(malformed("a recipient has entries of the wrong type"));
    };
    if matches!(
        alg_of(&protected)?,
        ALG_RSAES_OAEP_SHA1 | ALG_RSAES_OAEP_SHA256
    ) {
        let [(k, Value::Bytes(kid))] = <[(Value, Value); 1]>::try_from(unprotected)
            .map_err(|_| malformed("an RSA-OAEP recipient header must hold exactly the kid"))?
        else {
            return Err(malformed("a recipient kid is not bytes"));
        };
        if !int_is(&k, 4) {
            return Err(malformed(
                "an RSA-OAEP recipient header must hold exactly the kid",
            ));
        }
        let kid = <[u8; 16]>::try_from(kid.as_slice())
            .map_err(|_| malformed("a recipient kid is not 16 bytes"))?;
        if wrapped_cek.len() != OAEP_CIPHERTEXT_LEN {
            return Err(malformed("an RSA-OAEP ciphertext is not 384 bytes"));
        }
        return Ok(AnyRecipient::Oaep(OaepRecipient {
            protected,
            kid,
            encrypted_key: wrapped_cek,
        }));
    }
    let [(k1, Value::Bytes(kid)), (k2, key)] = <[(Value, Value); 2]>::try_from(unprotected)
        .map_err(|_| malformed("a recipient header must hold the kid and the ephemeral key"))?
    else {
        return Err(malformed(
            "a recipient header must hold the kid (label 4, 16 bytes) and then the ephemeral key (label -1)",
        ));
    };
    if !int_is(&k1, 4) || !int_is(&k2, -1) {
        return Err(malformed(
            "a recipient header must hold the kid and the ephemeral key",
        ));
    }
    let kid = <[u8; 16]>::try_from(kid.as_slice())
        .map_err(|_| malformed("a recipient kid is not 16 bytes"))?;
    let ephemeral = cose::ephemeral_point_from_cose_key(&key)?;
    if wrapped_cek.len() != 40 {
        return Err(malformed("a wrapped content key is not 40 bytes"));
    }
    Ok(AnyRecipient::Ecdh(Recipient {
        protected,
        kid,
        ephemeral,
        wrapped_cek,
    }))
}

/// What the recipient layer needs to know to seal or open, besides keys.
#[derive(Debug, Clone, Copy)]
pub struct RecipientContext<'a> {
    /// The profile.
    pub profile: Profile,
    /// The job id (bound by the compatibility profile's KDF).
    pub job_id: &'a [u8; 16],
    /// The appliance key-agreement key id.
    pub kid: &'a [u8; 16],
}

impl RecipientContext<'_> {
    /// The KDF input for this recipient, by profile.
    pub fn kdf_input(&self, protected: &[u8], ephemeral: &[u8; 65]) -> KdfInput {
        match self.profile {
            Profile::CoseEcdhEsA256kw => KdfInput::Hkdf(cose::kdf_context(
                ALG_A256KW,
                256,
                protected,
                &Value::Bytes(KDF_OTHER.to_vec()),
            )),
            // The RSA-OAEP profiles have no KDF; callers never ask for one.
            Profile::P11v2EcdhAesKdf
            | Profile::CoseRsaesOaepSha256
            | Profile::CoseRsaesOaepSha1 => {
                KdfInput::AesCbc(cose::p11v2_context(self.job_id, self.kid, ephemeral))
            }
        }
    }
}

/// KDF input bytes, by profile.
#[derive(Debug, Clone)]
pub enum KdfInput {
    /// HKDF info (the COSE KDF context).
    Hkdf(Vec<u8>),
    /// The 32-byte AES-CBC context block.
    AesCbc([u8; 32]),
}

impl KdfInput {
    /// As a host-side derivation.
    pub fn as_host(&self) -> KekDerivation<'_> {
        match self {
            Self::Hkdf(info) => KekDerivation::Hkdf { info },
            Self::AesCbc(c) => KekDerivation::AesCbc { context: c },
        }
    }
}

/// Why a secret could not be sealed to a recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The recipient's key (from the enrollment record) cannot be used.
    #[error("the appliance enrollment record cannot be used: {0}")]
    BadRecipient(String),
    /// The OS RNG failed.
    #[error("the random number generator failed: {0}")]
    Random(String),
}

/// Host-side: wraps `cek` to the appliance public key `recipient_public`.
pub fn seal_recipient(
    ctx: RecipientContext<'_>,
    recipient_public: &[u8; 65],
    cek: &[u8; 32],
) -> Result<Recipient, SealError> {
    let eph = cose::random_secret_key().map_err(|e| SealError::Random(e.to_string()))?;
    let ephemeral = cose::sec1_uncompressed(&eph.public_key());
    let z = cose::ecdh_x(&eph, recipient_public).map_err(|_| {
        SealError::BadRecipient("the appliance key is not a P-256 point".to_owned())
    })?;
    let protected = cose::recipient_protected(recipient_alg(ctx.profile));
    let input = ctx.kdf_input(&protected, &ephemeral);
    let kek = cose::derive_kek(&z, input.as_host());
    let kw = KwAes256::new(&(*kek).into());
    let mut buf = [0u8; 40];
    let wrapped = kw
        .wrap_key(cek, &mut buf)
        .map_err(|_| SealError::Random("AES key wrap failed".to_owned()))?
        .to_vec();
    Ok(Recipient {
        protected,
        kid: *ctx.kid,
        ephemeral,
        wrapped_cek: wrapped,
    })
}

/// Host-side: opens a recipient with the appliance private key (tests,
/// known-answer vectors and independent verification; the appliance itself
/// does this in the token).
pub fn open_recipient(
    ctx: RecipientContext<'_>,
    private: &p256::SecretKey,
    recipient: &Recipient,
) -> Result<Zeroizing<[u8; 32]>, PackageError> {
    let z = cose::ecdh_x(private, &recipient.ephemeral)?;
    let input = ctx.kdf_input(&recipient.protected, &recipient.ephemeral);
    let kek = cose::derive_kek(&z, input.as_host());
    let kw = KwAes256::new(&(*kek).into());
    let mut out = Zeroizing::new([0u8; 32]);
    kw.unwrap_key(&recipient.wrapped_cek, out.as_mut_slice())
        .map_err(|_| {
            PackageError::Cose(cose::CoseError::Integrity {
                what: "wrapped content key",
            })
        })?;
    Ok(out)
}

/// Host-side: encrypts `secret` (a CEK or a secret itself) with RSA-OAEP to
/// the transport key `spki_der`, as the recipient of an RSA-OAEP profile.
pub fn seal_oaep_recipient(
    profile: Profile,
    spki_der: &[u8],
    secret: &[u8],
) -> Result<OaepRecipient, SealError> {
    use rsa::pkcs8::DecodePublicKey;
    let hash = profile
        .oaep_hash()
        .ok_or_else(|| SealError::BadRecipient(format!("{profile} is not an RSA-OAEP profile")))?;
    let key = rsa::PublicKey::from_public_key_der(spki_der).map_err(|_| {
        SealError::BadRecipient("a transport key is not an RSA public key".to_owned())
    })?;
    let encrypted_key = hash
        .encrypt(&key, secret)
        .map_err(|e| SealError::Random(format!("RSA-OAEP encryption failed: {e}")))?;
    Ok(OaepRecipient {
        protected: cose::recipient_protected(recipient_alg(profile)),
        kid: transport_kid(spki_der),
        encrypted_key,
    })
}

/// Key id of a transport key: the first 16 bytes of SHA-256 over its
/// SubjectPublicKeyInfo DER.
pub fn transport_kid(spki_der: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(spki_der);
    let mut kid = [0u8; 16];
    kid.copy_from_slice(&d[..16]);
    kid
}
