//! Key agreement and unwrapping inside the token: the ECDH KEK, the
//! unwrapped keys' templates, and AES-GCM decryption of firmware.

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::hkdf::{HkdfParams, HkdfSalt};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use zeroize::Zeroizing;

use super::nested_template::{Template, CKA_DERIVE_TEMPLATE, CKA_UNWRAP_TEMPLATE};
use super::templates::{
    forced_secret, locked, private_usage, secret_usage, tolerant, unwrapped_mechanisms,
};
use super::{EcdhKdf, HsmError, KeyUse, Relaxed, Token};

impl Token {
    /// ECDH (`CKD_NULL`) with the ephemeral public point, then the profile's
    /// KDF, giving a transient (session) AES-256 key that can only unwrap.
    pub fn ecdh_kek(
        &self,
        private: ObjectHandle,
        ephemeral_point: &[u8; 65],
        kdf: EcdhKdf<'_>,
    ) -> Result<ObjectHandle, HsmError> {
        self.ecdh_kek_sized(private, ephemeral_point, kdf, 32)
    }

    /// [`Token::ecdh_kek`] with a KEK of `kek_len` bytes (16 for A128KW).
    pub fn ecdh_kek_sized(
        &self,
        private: ObjectHandle,
        ephemeral_point: &[u8; 65],
        kdf: EcdhKdf<'_>,
        kek_len: u64,
    ) -> Result<ObjectHandle, HsmError> {
        self.ecdh_kek_relaxed(private, ephemeral_point, kdf, kek_len)
            .map(|(h, _)| h)
    }

    /// The ECDH shared secret's template: derive-only, for the profile's KDF.
    pub(super) fn ecdh_shared_template(kdf: EcdhKdf<'_>) -> Template {
        let (shared_type, next) = match kdf {
            EcdhKdf::Hkdf { .. } => (KeyType::GENERIC_SECRET, MechanismType::HKDF_DERIVE),
            EcdhKdf::AesCbc { .. } => (KeyType::AES, MechanismType::AES_CBC_ENCRYPT_DATA),
        };
        let mut attrs = vec![
            Attribute::Token(false),
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(shared_type),
            Attribute::ValueLen(32.into()),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ];
        attrs.extend(secret_usage(false, false, false, true));
        attrs.extend(locked(&[next]));
        // What the KDF makes of it must be a secret that can only unwrap.
        Template::new(attrs).with_array(
            CKA_DERIVE_TEMPLATE,
            &forced_secret(&[MechanismType::AES_KEY_WRAP]),
        )
    }

    /// The key-encryption key's template: unwrap-only (RFC 3394), and what
    /// it unwraps comes out sensitive and non-extractable.
    fn kek_template(kek_len: u64) -> Template {
        let mut attrs = vec![
            Attribute::Token(false),
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(kek_len.into()),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ];
        attrs.extend(secret_usage(false, false, true, false));
        attrs.extend(locked(&[MechanismType::AES_KEY_WRAP]));
        Template::new(attrs).with_array(CKA_UNWRAP_TEMPLATE, &forced_secret(&[]))
    }

    /// [`Token::ecdh_kek_sized`], also saying what the token refused of the
    /// templates (the same for the shared secret and the KEK).
    pub(super) fn ecdh_kek_relaxed(
        &self,
        private: ObjectHandle,
        ephemeral_point: &[u8; 65],
        kdf: EcdhKdf<'_>,
        kek_len: u64,
    ) -> Result<(ObjectHandle, Relaxed), HsmError> {
        let session = self.session()?;
        let ecdh = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), ephemeral_point));
        let (shared, relaxed_shared) = tolerant(Self::ecdh_shared_template(kdf), |t| {
            session.derive_key(&ecdh, private, t)
        })
        .map_err(|e| HsmError::op("derive the ECDH shared secret", e))?;
        let result = tolerant(Self::kek_template(kek_len), |t| match kdf {
            EcdhKdf::Hkdf { info } => {
                let params =
                    HkdfParams::new(MechanismType::SHA256_HMAC, Some(HkdfSalt::Null), Some(info));
                session.derive_key(&Mechanism::HkdfDerive(params), shared, t)
            }
            EcdhKdf::AesCbc { context } => {
                let params = AesCbcDeriveParams::new([0u8; 16], context);
                session.derive_key(&Mechanism::AesCbcEncryptData(params), shared, t)
            }
        });
        let _ = session.destroy_object(shared);
        let (kek, relaxed_kek) =
            result.map_err(|e| HsmError::op("derive the key-encryption key", e))?;
        Ok((kek, relaxed_shared | relaxed_kek))
    }

    /// `C_UnwrapKey` with RFC 3394 AES key wrap (no padding).
    pub fn unwrap_aes_kw(
        &self,
        kek: ObjectHandle,
        wrapped: &[u8],
        usage: KeyUse,
        persist: Option<(&str, &[u8])>,
    ) -> Result<ObjectHandle, HsmError> {
        self.unwrap(&Mechanism::AesKeyWrap, kek, wrapped, usage, persist)
    }

    /// `C_UnwrapKey` with RFC 5649 AES key wrap with padding.
    pub fn unwrap_aes_kwp(
        &self,
        kek: ObjectHandle,
        wrapped: &[u8],
        usage: KeyUse,
        persist: Option<(&str, &[u8])>,
    ) -> Result<ObjectHandle, HsmError> {
        self.unwrap(&Mechanism::AesKeyWrapPad, kek, wrapped, usage, persist)
    }

    /// `C_UnwrapKey` with AES-GCM (128-bit tag).
    pub fn unwrap_aes_gcm(
        &self,
        kek: ObjectHandle,
        iv: &[u8; 12],
        aad: &[u8],
        wrapped: &[u8],
        usage: KeyUse,
        persist: Option<(&str, &[u8])>,
    ) -> Result<ObjectHandle, HsmError> {
        let mut iv = *iv;
        let params = GcmParams::new(&mut iv, aad, 128.into())
            .map_err(|e| HsmError::op("prepare AES-GCM parameters", e))?;
        self.unwrap(&Mechanism::AesGcm(params), kek, wrapped, usage, persist)
    }

    fn unwrap(
        &self,
        mechanism: &Mechanism<'_>,
        kek: ObjectHandle,
        wrapped: &[u8],
        usage: KeyUse,
        persist: Option<(&str, &[u8])>,
    ) -> Result<ObjectHandle, HsmError> {
        self.unwrap_relaxed(mechanism, kek, wrapped, usage, persist)
            .map(|(h, _)| h)
    }

    /// The template of a key unwrapped for `usage`. Every usage flag is set
    /// explicitly: some tokens default the ones a template leaves out to
    /// true (SoftHSM does for unwrapped secrets).
    fn unwrapped_template(usage: KeyUse, persist: Option<(&str, &[u8])>) -> Template {
        let mut attrs = vec![
            Attribute::Token(persist.is_some()),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ];
        if let Some((label, id)) = persist {
            attrs.push(Attribute::Label(label.as_bytes().to_vec()));
            attrs.push(Attribute::Id(id.to_vec()));
        }
        match usage {
            KeyUse::AesDecrypt | KeyUse::AesUnwrap | KeyUse::HmacSign => {
                attrs.push(Attribute::Class(ObjectClass::SECRET_KEY));
                attrs.push(Attribute::KeyType(if usage == KeyUse::HmacSign {
                    KeyType::GENERIC_SECRET
                } else {
                    KeyType::AES
                }));
                attrs.extend(secret_usage(
                    usage == KeyUse::AesDecrypt,
                    usage == KeyUse::HmacSign,
                    usage == KeyUse::AesUnwrap,
                    false,
                ));
            }
            KeyUse::EcSign => {
                attrs.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
                attrs.push(Attribute::KeyType(KeyType::EC));
                attrs.extend(private_usage(true, false));
            }
        }
        attrs.extend(locked(unwrapped_mechanisms(usage)));
        let template = Template::new(attrs);
        if usage == KeyUse::AesUnwrap {
            template.with_array(CKA_UNWRAP_TEMPLATE, &forced_secret(&[]))
        } else {
            template
        }
    }

    /// [`Token::unwrap`], also saying what the token refused of the template.
    pub(super) fn unwrap_relaxed(
        &self,
        mechanism: &Mechanism<'_>,
        kek: ObjectHandle,
        wrapped: &[u8],
        usage: KeyUse,
        persist: Option<(&str, &[u8])>,
    ) -> Result<(ObjectHandle, Relaxed), HsmError> {
        let session = self.writing_session(persist.is_some())?;
        super::latency::timed("unwrap", || {
            tolerant(Self::unwrapped_template(usage, persist), |t| {
                session.unwrap_key(mechanism, kek, wrapped, t)
            })
        })
        .map_err(|e| HsmError::op("unwrap a key", e))
    }

    /// AES-256-GCM decryption of one chunk inside the token.
    pub fn aes_gcm_decrypt(
        &self,
        key: ObjectHandle,
        iv: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let session = self.session()?;
        let mut iv = *iv;
        let params = GcmParams::new(&mut iv, aad, 128.into())
            .map_err(|e| HsmError::op("prepare AES-GCM parameters", e))?;
        session
            .decrypt(&Mechanism::AesGcm(params), key, ciphertext)
            .map(Zeroizing::new)
            .map_err(|e| HsmError::op("decrypt with AES-GCM", e))
    }
}
