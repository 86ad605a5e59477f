//! What every key is made with (usage flags, allowed mechanisms, forced
//! templates), and how an attribute a token refuses is left out and said.

use cryptoki::mechanism::MechanismType;
use cryptoki::object::Attribute;

use super::nested_template::{Forced, Template, CKA_DERIVE_TEMPLATE, CKA_UNWRAP_TEMPLATE};
use super::{KeyUse, Profile};

/// Parts of a template the token refused and that were therefore left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relaxed {
    /// `CKA_MODIFIABLE=false` (SoftHSM 2.6.1 refuses it in unwrap and derive
    /// templates with `CKR_ATTRIBUTE_READ_ONLY`): the key stays modifiable.
    pub modifiable: bool,
    /// `CKA_DERIVE_TEMPLATE` (tokens without it answer
    /// `CKR_ATTRIBUTE_TYPE_INVALID`).
    pub derive_template: bool,
    /// `CKA_UNWRAP_TEMPLATE`, likewise.
    pub unwrap_template: bool,
}

impl std::ops::BitOr for Relaxed {
    type Output = Self;
    fn bitor(self, o: Self) -> Self {
        Self {
            modifiable: self.modifiable || o.modifiable,
            derive_template: self.derive_template || o.derive_template,
            unwrap_template: self.unwrap_template || o.unwrap_template,
        }
    }
}

/// `CKA_MODIFIABLE` and `CKA_COPYABLE` false, and only `allowed` mechanisms.
pub(super) fn locked(allowed: &[MechanismType]) -> [Attribute; 3] {
    [
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::AllowedMechanisms(allowed.to_vec()),
    ]
}

/// Every usage flag of a private key.
pub(super) fn private_usage(sign: bool, derive: bool) -> [Attribute; 5] {
    [
        Attribute::Sign(sign),
        Attribute::SignRecover(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(derive),
    ]
}

/// Every usage flag of a public key.
pub(super) fn public_usage(verify: bool, derive: bool) -> [Attribute; 5] {
    [
        Attribute::Verify(verify),
        Attribute::VerifyRecover(false),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(derive),
    ]
}

/// Every usage flag of a secret key; only the named ones are true.
#[allow(clippy::fn_params_excessive_bools)]
pub(super) fn secret_usage(
    decrypt: bool,
    sign: bool,
    unwrap: bool,
    derive: bool,
) -> [Attribute; 7] {
    [
        Attribute::Encrypt(false),
        Attribute::Decrypt(decrypt),
        Attribute::Sign(sign),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(unwrap),
        Attribute::Derive(derive),
    ]
}

/// The KDF a profile applies to the ECDH shared secret (`None` for a
/// profile that does no ECDH).
pub(super) fn ecdh_kdf_mechanism(profile: Profile) -> Option<MechanismType> {
    match profile {
        Profile::CoseEcdhEsA256kw => Some(MechanismType::HKDF_DERIVE),
        Profile::P11v2EcdhAesKdf => Some(MechanismType::AES_CBC_ENCRYPT_DATA),
        Profile::CoseRsaesOaepSha256 | Profile::CoseRsaesOaepSha1 => None,
    }
}

/// What a key holding a derived or unwrapped secret must be, whatever the caller asks.
pub(super) fn forced_secret(allowed: &[MechanismType]) -> Forced {
    Forced {
        secret: true,
        allowed: allowed.to_vec(),
    }
}

/// The mechanisms a key unwrapped for `usage` may be used with.
pub(super) fn unwrapped_mechanisms(usage: KeyUse) -> &'static [MechanismType] {
    match usage {
        KeyUse::AesDecrypt => &[MechanismType::AES_GCM],
        // A content key unwraps the secret it protects: AES-GCM in the
        // standard profile, RFC 5649 in the compatibility profile.
        KeyUse::AesUnwrap => &[MechanismType::AES_GCM, MechanismType::AES_KEY_WRAP_PAD],
        KeyUse::HmacSign => &[MechanismType::SHA256_HMAC],
        KeyUse::EcSign => &[MechanismType::ECDSA],
    }
}

pub(super) fn is_rv(e: &cryptoki::error::Error, rv: cryptoki::error::RvError) -> bool {
    matches!(e, cryptoki::error::Error::Pkcs11(r, _) if *r == rv)
}

/// Runs `make` with `template`, leaving out what the token refuses on the
/// exact error it refuses it with, and says what was left out.
pub(super) fn tolerant<T>(
    mut template: Template,
    make: impl Fn(&[Attribute]) -> cryptoki::error::Result<T>,
) -> cryptoki::error::Result<(T, Relaxed)> {
    use cryptoki::error::RvError;
    let mut relaxed = Relaxed::default();
    loop {
        match make(template.attrs()) {
            Ok(v) => return Ok((v, relaxed)),
            Err(e)
                if !relaxed.modifiable
                    && is_rv(&e, RvError::AttributeReadOnly)
                    && template
                        .attrs()
                        .iter()
                        .any(|a| matches!(a, Attribute::Modifiable(false))) =>
            {
                template = template.without(|a| matches!(a, Attribute::Modifiable(_)));
                relaxed.modifiable = true;
            }
            Err(e) if template.has_array() && is_rv(&e, RvError::AttributeTypeInvalid) => {
                relaxed.derive_template |= template.has(CKA_DERIVE_TEMPLATE);
                relaxed.unwrap_template |= template.has(CKA_UNWRAP_TEMPLATE);
                template = template.without_arrays();
            }
            Err(e) => return Err(e),
        }
    }
}
