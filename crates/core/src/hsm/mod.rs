//! The PKCS#11 token: opening it, probing what it can do, and the few
//! operations flashgate needs. Secrets created here are token objects with
//! `CKA_SENSITIVE=true` and `CKA_EXTRACTABLE=false`; nothing in this module
//! returns key material except plaintext the caller asked to decrypt, and that
//! comes back in a [`Zeroizing`] buffer.
//!
//! Every key flashgate makes is also locked down as far as the token allows,
//! because the PIN holder is assumed hostile: `CKA_MODIFIABLE` and
//! `CKA_COPYABLE` false, `CKA_ALLOWED_MECHANISMS` naming only the key's
//! mechanism, every usage flag set explicitly, and (where the token knows
//! them) derive and unwrap templates that force what comes out of a key to be
//! secret too. What the token refuses is measured by [`probe`].

mod config;
mod error;
mod nested_template;
pub mod probe;
mod profile;
mod rsa;
mod signer;

pub use self::rsa::TransportSupport;
pub use crate::profile::{OaepHash, Profile, TransportRole, TRANSPORT_BITS};
pub use config::{PinSource, TokenConfig};
pub use error::HsmError;
pub use profile::Mechanisms;
pub use signer::TokenKey;

use nested_template::{Forced, Template, CKA_DERIVE_TEMPLATE, CKA_UNWRAP_TEMPLATE};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::hkdf::{HkdfParams, HkdfSalt};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// DER encoding of the P-256 curve OID (1.2.840.10045.3.1.7), as `CKA_EC_PARAMS` wants it.
const P256_EC_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// What the token says about itself, as recorded in the enrollment record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDescription {
    /// `manufacturerID` from `C_GetTokenInfo`.
    pub manufacturer: String,
    /// `model`.
    pub model: String,
    /// `serialNumber`.
    pub serial: String,
    /// `label`.
    pub label: String,
}

/// The configured token, logged in, with a pool of sessions that share the
/// login (PKCS#11 logins are per application): safe to use from many
/// threads at once, each operation on a session of its own.
pub struct Token {
    // Field order matters: the sessions must close before the library finalises.
    sessions: Mutex<Vec<Session>>,
    pkcs11: Pkcs11,
    slot: Slot,
    description: TokenDescription,
    mechanisms: Mechanisms,
}

/// A session taken from the token's pool; given back on drop.
struct PooledSession<'a> {
    session: Option<Session>,
    pool: &'a Mutex<Vec<Session>>,
}

impl std::ops::Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Present from construction until drop.
        #[allow(clippy::expect_used)]
        self.session
            .as_ref()
            .expect("a pooled session is present until dropped")
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(s);
        }
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// How a key created by unwrapping or derivation may be used. Tokens want
/// exactly the usage a key will be put to, so each purpose is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// AES-256 key that decrypts (firmware content keys).
    AesDecrypt,
    /// AES-256 key that unwraps other keys (transient key-encryption keys).
    AesUnwrap,
    /// 32-byte generic secret used for HMAC-SHA256 (device-master key).
    HmacSign,
    /// P-256 private key that signs (job CA key).
    EcSign,
}

/// The key-derivation step after ECDH, by profile.
#[derive(Debug, Clone, Copy)]
pub enum EcdhKdf<'a> {
    /// `CKM_HKDF_DERIVE` (SHA-256, salt null) with this info.
    Hkdf { info: &'a [u8] },
    /// `CKM_AES_CBC_ENCRYPT_DATA` with a zero IV over this 32-byte block.
    AesCbc { context: &'a [u8; 32] },
}

/// Handles of a P-256 key pair in the token.
#[derive(Debug, Clone, Copy)]
pub struct KeyPair {
    /// The public key object.
    pub public: ObjectHandle,
    /// The private key object.
    pub private: ObjectHandle,
}

/// Security-relevant attributes of an object, read back from the token.
/// A flag the object's class does not have reads as false.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(clippy::struct_excessive_bools)]
pub struct KeyAttributes {
    pub token: bool,
    pub sensitive: bool,
    pub extractable: bool,
    pub sign: bool,
    pub decrypt: bool,
    pub derive: bool,
    pub unwrap: bool,
    pub wrap: bool,
    pub encrypt: bool,
    pub verify: bool,
    pub sign_recover: bool,
    pub verify_recover: bool,
    /// `CKA_MODIFIABLE`: whether `C_SetAttributeValue` may change the object.
    pub modifiable: bool,
    /// `CKA_COPYABLE`: whether `C_CopyObject` may copy it.
    pub copyable: bool,
    /// `CKA_ALLOWED_MECHANISMS`; `None` when the object has no such list
    /// (any mechanism its usage flags permit).
    pub allowed_mechanisms: Option<Vec<MechanismType>>,
}

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
fn locked(allowed: &[MechanismType]) -> [Attribute; 3] {
    [
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::AllowedMechanisms(allowed.to_vec()),
    ]
}

/// Every usage flag of a private key.
fn private_usage(sign: bool, derive: bool) -> [Attribute; 5] {
    [
        Attribute::Sign(sign),
        Attribute::SignRecover(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(derive),
    ]
}

/// Every usage flag of a public key.
fn public_usage(verify: bool, derive: bool) -> [Attribute; 5] {
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
fn secret_usage(decrypt: bool, sign: bool, unwrap: bool, derive: bool) -> [Attribute; 7] {
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
fn ecdh_kdf_mechanism(profile: Profile) -> Option<MechanismType> {
    match profile {
        Profile::CoseEcdhEsA256kw => Some(MechanismType::HKDF_DERIVE),
        Profile::P11v2EcdhAesKdf => Some(MechanismType::AES_CBC_ENCRYPT_DATA),
        Profile::CoseRsaesOaepSha256 | Profile::CoseRsaesOaepSha1 => None,
    }
}

/// What a key holding a derived or unwrapped secret must be, whatever the caller asks.
fn forced_secret(allowed: &[MechanismType]) -> Forced {
    Forced {
        secret: true,
        allowed: allowed.to_vec(),
    }
}

/// The mechanisms a key unwrapped for `usage` may be used with.
fn unwrapped_mechanisms(usage: KeyUse) -> &'static [MechanismType] {
    match usage {
        KeyUse::AesDecrypt => &[MechanismType::AES_GCM],
        // A content key unwraps the secret it protects: AES-GCM in the
        // standard profile, RFC 5649 in the compatibility profile.
        KeyUse::AesUnwrap => &[MechanismType::AES_GCM, MechanismType::AES_KEY_WRAP_PAD],
        KeyUse::HmacSign => &[MechanismType::SHA256_HMAC],
        KeyUse::EcSign => &[MechanismType::ECDSA],
    }
}

fn is_rv(e: &cryptoki::error::Error, rv: cryptoki::error::RvError) -> bool {
    matches!(e, cryptoki::error::Error::Pkcs11(r, _) if *r == rv)
}

/// Runs `make` with `template`, leaving out what the token refuses on the
/// exact error it refuses it with, and says what was left out.
fn tolerant<T>(
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

impl Token {
    /// Loads the module, finds the token by label and logs in as user.
    pub fn open(config: &TokenConfig) -> Result<Self, HsmError> {
        let pin = config.pin.read()?;
        let pkcs11 = Pkcs11::new(&config.module).map_err(|source| HsmError::ModuleLoad {
            path: config.module.clone(),
            detail: source.to_string(),
        })?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Some modules (Kryoptic) stay initialised for the life of the
            // process after a finalize; the module is usable as it is.
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(e) => {
                return Err(HsmError::ModuleInit {
                    path: config.module.clone(),
                    detail: match &e {
                        cryptoki::error::Error::Pkcs11(rv, _) => format!("{rv}"),
                        other => other.to_string(),
                    },
                })
            }
        }
        let slot = find_slot(&pkcs11, &config.label)?;
        let info = pkcs11
            .get_token_info(slot)
            .map_err(|e| HsmError::op("read the token information", e))?;
        let description = TokenDescription {
            manufacturer: info.manufacturer_id().trim().to_owned(),
            model: info.model().trim().to_owned(),
            serial: info.serial_number().trim().to_owned(),
            label: info.label().trim().to_owned(),
        };
        let mechanisms = Mechanisms::new(
            pkcs11
                .get_mechanism_list(slot)
                .map_err(|e| HsmError::op("list the token's mechanisms", e))?,
        );
        let session = pkcs11
            .open_rw_session(slot)
            .map_err(|e| HsmError::op("open a session", e))?;
        let auth = cryptoki::types::AuthPin::from(pin.as_str());
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) => {}
            // PKCS#11 logins are per application: another open Token of
            // this process (a reader beside a running station) holds it.
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => {
                use cryptoki::error::{Error, RvError};
                return Err(match e {
                    Error::Pkcs11(RvError::PinIncorrect, _) => HsmError::WrongPin {
                        label: config.label.clone(),
                    },
                    Error::Pkcs11(RvError::PinLocked, _) => HsmError::PinLocked {
                        label: config.label.clone(),
                    },
                    other => HsmError::op("log in to the token", other),
                });
            }
        }
        Ok(Self {
            sessions: Mutex::new(vec![session]),
            pkcs11,
            slot,
            description,
            mechanisms,
        })
    }

    /// A session of the pool (a new one when all are in use); it goes back
    /// to the pool when the guard drops. Sessions are never closed before
    /// the token is, so the login and session objects stay.
    fn session(&self) -> Result<PooledSession<'_>, HsmError> {
        // A panic elsewhere leaves the idle sessions as valid as they were.
        let idle = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let session = match idle {
            Some(s) => s,
            None => self
                .pkcs11
                .open_rw_session(self.slot)
                .map_err(|e| HsmError::op("open a session", e))?,
        };
        Ok(PooledSession {
            session: Some(session),
            pool: &self.sessions,
        })
    }

    /// Another session on the same token, sharing this one's login (PKCS#11
    /// logins are per application). For work that runs beside this session:
    /// the quota counter and the log key during a run.
    pub fn another_session(&self) -> Result<Self, HsmError> {
        let session = self
            .pkcs11
            .open_rw_session(self.slot)
            .map_err(|e| HsmError::op("open a session", e))?;
        Ok(Self {
            sessions: Mutex::new(vec![session]),
            pkcs11: self.pkcs11.clone(),
            slot: self.slot,
            description: self.description.clone(),
            mechanisms: self.mechanisms.clone(),
        })
    }

    /// Manufacturer, model, serial and label of the token.
    pub fn description(&self) -> &TokenDescription {
        &self.description
    }

    /// The mechanisms the token offers.
    pub fn mechanisms(&self) -> &Mechanisms {
        &self.mechanisms
    }

    /// Fails with the name of the first mechanism `profile` needs that the token lacks.
    pub fn require(&self, profile: Profile) -> Result<(), HsmError> {
        match self.mechanisms.missing_for(profile).first() {
            None => Ok(()),
            Some(m) => Err(HsmError::MissingMechanism {
                mechanism: *m,
                profile: profile.name(),
            }),
        }
    }

    /// Every object whose `CKA_LABEL` equals `label`.
    pub fn find_by_label(&self, label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
        let session = self.session()?;
        session
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| HsmError::op("search the token", e))
    }

    /// Every token object, with its label (for status listings and clean-up).
    pub fn labelled_objects(&self) -> Result<Vec<(ObjectHandle, String)>, HsmError> {
        let session = self.session()?;
        let handles = session
            .find_objects(&[Attribute::Token(true)])
            .map_err(|e| HsmError::op("search the token", e))?;
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            let attrs = session
                .get_attributes(h, &[AttributeType::Label])
                .map_err(|e| HsmError::op("read an object label", e))?;
            let label = attrs
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Label(l) => Some(String::from_utf8_lossy(&l).into_owned()),
                    _ => None,
                })
                .unwrap_or_default();
            out.push((h, label));
        }
        Ok(out)
    }

    /// Generates a P-256 key pair that never leaves the token.
    /// `usage` is [`KeyUse::EcSign`] for a signing key; any other value makes
    /// a derive-only (key-agreement) key.
    pub fn generate_p256(
        &self,
        label: &str,
        id: &[u8],
        usage: KeyUse,
    ) -> Result<KeyPair, HsmError> {
        self.p256_pair(Some((label, id)), usage).map(|(k, _)| k)
    }

    /// The mechanisms the key-agreement key's shared secret feeds, one per
    /// ECDH profile the token can run.
    fn ecdh_next_steps(&self) -> Vec<MechanismType> {
        self.mechanisms
            .supported_profiles()
            .into_iter()
            .filter_map(ecdh_kdf_mechanism)
            .collect()
    }

    /// [`Token::generate_p256`], as session objects when `persist` is `None`.
    fn p256_pair(
        &self,
        persist: Option<(&str, &[u8])>,
        usage: KeyUse,
    ) -> Result<(KeyPair, Relaxed), HsmError> {
        let session = self.session()?;
        let sign = usage == KeyUse::EcSign;
        let mechanism = if sign {
            MechanismType::ECDSA
        } else {
            MechanismType::ECDH1_DERIVE
        };
        let mut public = vec![
            Attribute::Token(persist.is_some()),
            Attribute::Private(false),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(P256_EC_PARAMS.to_vec()),
        ];
        public.extend(public_usage(sign, !sign));
        public.extend(locked(&[mechanism]));
        let mut private = vec![
            Attribute::Token(persist.is_some()),
            Attribute::Private(true),
            Attribute::KeyType(KeyType::EC),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ];
        private.extend(private_usage(sign, !sign));
        private.extend(locked(&[mechanism]));
        if let Some((label, id)) = persist {
            for t in [&mut public, &mut private] {
                t.push(Attribute::Label(label.as_bytes().to_vec()));
                t.push(Attribute::Id(id.to_vec()));
            }
        }
        let mut private = Template::new(private);
        if !sign {
            private =
                private.with_array(CKA_DERIVE_TEMPLATE, &forced_secret(&self.ecdh_next_steps()));
        }
        let ((public, private), relaxed) = tolerant(private, |private| {
            session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, private)
        })
        .map_err(|e| HsmError::op("generate a P-256 key pair", e))?;
        Ok((KeyPair { public, private }, relaxed))
    }

    /// Imports a P-256 private scalar as a non-extractable, derive-only
    /// session key with the key-agreement key's attributes. Only for
    /// known-answer tests with published keys: real appliance keys are
    /// generated inside the token.
    pub fn import_p256_derive_key(&self, scalar: &[u8; 32]) -> Result<ObjectHandle, HsmError> {
        let session = self.session()?;
        let mut attrs = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::EcParams(P256_EC_PARAMS.to_vec()),
            Attribute::Value(scalar.to_vec()),
        ];
        attrs.extend(private_usage(false, true));
        attrs.extend(locked(&[MechanismType::ECDH1_DERIVE]));
        let template = Template::new(attrs)
            .with_array(CKA_DERIVE_TEMPLATE, &forced_secret(&self.ecdh_next_steps()));
        tolerant(template, |t| session.create_object(t))
            .map(|(h, _)| h)
            .map_err(|e| HsmError::op("import an EC private key", e))
    }

    /// The uncompressed SEC1 point (65 bytes) of an EC public key object.
    pub fn ec_point(&self, public: ObjectHandle) -> Result<[u8; 65], HsmError> {
        let session = self.session()?;
        let attrs = session
            .get_attributes(public, &[AttributeType::EcPoint])
            .map_err(|e| HsmError::op("read an EC public key", e))?;
        let raw = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or(HsmError::Unexpected("the token returned no CKA_EC_POINT"))?;
        // CKA_EC_POINT is a DER OCTET STRING wrapping the point (some tokens omit the wrapper).
        let point: &[u8] = match raw.as_slice() {
            [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
            p if p.len() == 65 => p,
            _ => {
                return Err(HsmError::Unexpected(
                    "CKA_EC_POINT is not an uncompressed P-256 point",
                ))
            }
        };
        let mut out = [0u8; 65];
        out.copy_from_slice(point);
        Ok(out)
    }

    /// ECDSA P-256 over a SHA-256 digest computed by the caller; returns r||s.
    pub fn sign_prehash(&self, key: ObjectHandle, digest: &[u8; 32]) -> Result<[u8; 64], HsmError> {
        let session = self.session()?;
        let sig = session
            .sign(&Mechanism::Ecdsa, key, digest)
            .map_err(|e| HsmError::op("sign with ECDSA", e))?;
        sig.as_slice().try_into().map_err(|_| {
            HsmError::Unexpected("the token returned an ECDSA signature that is not 64 bytes")
        })
    }

    /// HMAC-SHA256 with a generic-secret key held in the token.
    pub fn hmac_sha256(
        &self,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        let session = self.session()?;
        let mac = Zeroizing::new(
            session
                .sign(&Mechanism::Sha256Hmac, key, data)
                .map_err(|e| HsmError::op("compute HMAC-SHA256", e))?,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        if mac.len() != 32 {
            return Err(HsmError::Unexpected(
                "the token returned an HMAC that is not 32 bytes",
            ));
        }
        out.copy_from_slice(&mac);
        Ok(out)
    }

    /// Random bytes from the token's RNG.
    pub fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        let session = self.session()?;
        session
            .generate_random_slice(out)
            .map_err(|e| HsmError::op("draw random bytes", e))
    }

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
    fn ecdh_shared_template(kdf: EcdhKdf<'_>) -> Template {
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
    fn ecdh_kek_relaxed(
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
    fn unwrap_relaxed(
        &self,
        mechanism: &Mechanism<'_>,
        kek: ObjectHandle,
        wrapped: &[u8],
        usage: KeyUse,
        persist: Option<(&str, &[u8])>,
    ) -> Result<(ObjectHandle, Relaxed), HsmError> {
        let session = self.session()?;
        tolerant(Self::unwrapped_template(usage, persist), |t| {
            session.unwrap_key(mechanism, kek, wrapped, t)
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

    /// Creates a token data object (`CKO_DATA`) with a label and a value.
    pub fn create_data(&self, label: &str, value: &[u8]) -> Result<ObjectHandle, HsmError> {
        let session = self.session()?;
        session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Application(b"flashgate".to_vec()),
                Attribute::Value(value.to_vec()),
            ])
            .map_err(|e| HsmError::op("create a data object", e))
    }

    /// The `CKA_VALUE` of a data object.
    pub fn data_value(&self, object: ObjectHandle) -> Result<Vec<u8>, HsmError> {
        let session = self.session()?;
        let attrs = session
            .get_attributes(object, &[AttributeType::Value])
            .map_err(|e| HsmError::op("read a data object", e))?;
        attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })
            .ok_or(HsmError::Unexpected("the token returned no CKA_VALUE"))
    }

    /// Destroys an object.
    pub fn destroy(&self, object: ObjectHandle) -> Result<(), HsmError> {
        let session = self.session()?;
        session
            .destroy_object(object)
            .map_err(|e| HsmError::op("destroy an object", e))
    }

    /// Reads back the attributes that decide whether a key can leave the token.
    pub fn key_attributes(&self, key: ObjectHandle) -> Result<KeyAttributes, HsmError> {
        let session = self.session()?;
        let wanted = [
            AttributeType::Token,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Sign,
            AttributeType::Decrypt,
            AttributeType::Derive,
            AttributeType::Unwrap,
            AttributeType::Wrap,
            AttributeType::Encrypt,
            AttributeType::Verify,
            AttributeType::SignRecover,
            AttributeType::VerifyRecover,
            AttributeType::Modifiable,
            AttributeType::Copyable,
            AttributeType::AllowedMechanisms,
        ];
        let mut out = KeyAttributes::default();
        for t in wanted {
            // Asked one at a time: a key type without the attribute answers
            // CKR_ATTRIBUTE_TYPE_INVALID, which simply means "false".
            let Ok(attrs) = session.get_attributes(key, &[t]) else {
                continue;
            };
            for a in attrs {
                match a {
                    Attribute::Token(v) => out.token = v,
                    Attribute::Sensitive(v) => out.sensitive = v,
                    Attribute::Extractable(v) => out.extractable = v,
                    Attribute::Sign(v) => out.sign = v,
                    Attribute::Decrypt(v) => out.decrypt = v,
                    Attribute::Derive(v) => out.derive = v,
                    Attribute::Unwrap(v) => out.unwrap = v,
                    Attribute::Wrap(v) => out.wrap = v,
                    Attribute::Encrypt(v) => out.encrypt = v,
                    Attribute::Verify(v) => out.verify = v,
                    Attribute::SignRecover(v) => out.sign_recover = v,
                    Attribute::VerifyRecover(v) => out.verify_recover = v,
                    Attribute::Modifiable(v) => out.modifiable = v,
                    Attribute::Copyable(v) => out.copyable = v,
                    // An empty list is the same as none: no restriction.
                    Attribute::AllowedMechanisms(v) if !v.is_empty() => {
                        out.allowed_mechanisms = Some(v);
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// The object's class, for listings.
    pub fn object_class(&self, object: ObjectHandle) -> Result<ObjectClass, HsmError> {
        let session = self.session()?;
        let attrs = session
            .get_attributes(object, &[AttributeType::Class])
            .map_err(|e| HsmError::op("read an object class", e))?;
        attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Class(c) => Some(c),
                _ => None,
            })
            .ok_or(HsmError::Unexpected("the token returned no CKA_CLASS"))
    }
}

fn find_slot(pkcs11: &Pkcs11, label: &str) -> Result<Slot, HsmError> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| HsmError::op("list the token slots", e))?;
    let mut seen = Vec::new();
    for slot in slots {
        let Ok(info) = pkcs11.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let l = info.label().trim();
        if l == label {
            return Ok(slot);
        }
        seen.push(l.to_owned());
    }
    Err(HsmError::TokenNotFound {
        label: label.to_owned(),
        seen,
    })
}
