//! The PKCS#11 token: opening it, probing what it can do, and the few
//! operations flashgate needs. Secrets created here are token objects with
//! `CKA_SENSITIVE=true` and `CKA_EXTRACTABLE=false`; nothing in this module
//! returns key material except plaintext the caller asked to decrypt, and that
//! comes back in a [`Zeroizing`] buffer.

mod config;
mod error;
mod profile;
mod rsa;

pub use self::rsa::{OaepHash, TransportRole, TransportSupport, TRANSPORT_BITS};
pub use config::{PinSource, TokenConfig};
pub use error::HsmError;
pub use profile::{Mechanisms, Profile};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::hkdf::{HkdfParams, HkdfSalt};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
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

/// An open, logged-in session on the configured token.
pub struct Token {
    // Field order matters: the session must close before the library finalises.
    session: Session,
    pkcs11: Pkcs11,
    slot: Slot,
    description: TokenDescription,
    mechanisms: Mechanisms,
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

/// Security-relevant attributes of a key, read back from the token.
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
            Err(e) => return Err(HsmError::op("initialise the PKCS#11 module", e)),
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
        session.login(UserType::User, Some(&auth)).map_err(|e| {
            use cryptoki::error::{Error, RvError};
            match e {
                Error::Pkcs11(RvError::PinIncorrect, _) => HsmError::WrongPin {
                    label: config.label.clone(),
                },
                Error::Pkcs11(RvError::PinLocked, _) => HsmError::PinLocked {
                    label: config.label.clone(),
                },
                Error::Pkcs11(RvError::UserAlreadyLoggedIn, _) => {
                    HsmError::op("log in to the token", e)
                }
                other => HsmError::op("log in to the token", other),
            }
        })?;
        Ok(Self {
            session,
            pkcs11,
            slot,
            description,
            mechanisms,
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
            session,
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
        self.session
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| HsmError::op("search the token", e))
    }

    /// Every token object, with its label (for status listings and clean-up).
    pub fn labelled_objects(&self) -> Result<Vec<(ObjectHandle, String)>, HsmError> {
        let handles = self
            .session
            .find_objects(&[Attribute::Token(true)])
            .map_err(|e| HsmError::op("search the token", e))?;
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            let attrs = self
                .session
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
        let sign = usage == KeyUse::EcSign;
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(P256_EC_PARAMS.to_vec()),
            Attribute::Verify(sign),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::KeyType(KeyType::EC),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(sign),
            Attribute::Derive(!sign),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let (public, private) = self
            .session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .map_err(|e| HsmError::op("generate a P-256 key pair", e))?;
        Ok(KeyPair { public, private })
    }

    /// Imports a P-256 private scalar as a non-extractable, derive-only
    /// session key. Only for known-answer tests with published keys: real
    /// appliance keys are generated inside the token.
    pub fn import_p256_derive_key(&self, scalar: &[u8; 32]) -> Result<ObjectHandle, HsmError> {
        self.session
            .create_object(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Derive(true),
                Attribute::Sign(false),
                Attribute::EcParams(P256_EC_PARAMS.to_vec()),
                Attribute::Value(scalar.to_vec()),
            ])
            .map_err(|e| HsmError::op("import an EC private key", e))
    }

    /// The uncompressed SEC1 point (65 bytes) of an EC public key object.
    pub fn ec_point(&self, public: ObjectHandle) -> Result<[u8; 65], HsmError> {
        let attrs = self
            .session
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
        let sig = self
            .session
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
        let mac = Zeroizing::new(
            self.session
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
        self.session
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
        let ecdh = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), ephemeral_point));
        let shared_type = match kdf {
            EcdhKdf::Hkdf { .. } => KeyType::GENERIC_SECRET,
            EcdhKdf::AesCbc { .. } => KeyType::AES,
        };
        let shared_template = [
            Attribute::Token(false),
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(shared_type),
            Attribute::ValueLen(32.into()),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Derive(true),
        ];
        let shared = self
            .session
            .derive_key(&ecdh, private, &shared_template)
            .map_err(|e| HsmError::op("derive the ECDH shared secret", e))?;
        let kek_template = [
            Attribute::Token(false),
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(kek_len.into()),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Unwrap(true),
        ];
        let result = match kdf {
            EcdhKdf::Hkdf { info } => {
                let params =
                    HkdfParams::new(MechanismType::SHA256_HMAC, Some(HkdfSalt::Null), Some(info));
                self.session
                    .derive_key(&Mechanism::HkdfDerive(params), shared, &kek_template)
            }
            EcdhKdf::AesCbc { context } => {
                let params = AesCbcDeriveParams::new([0u8; 16], context);
                self.session.derive_key(
                    &Mechanism::AesCbcEncryptData(params),
                    shared,
                    &kek_template,
                )
            }
        };
        let _ = self.session.destroy_object(shared);
        result.map_err(|e| HsmError::op("derive the key-encryption key", e))
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
        let mut template = vec![
            Attribute::Token(persist.is_some()),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ];
        if let Some((label, id)) = persist {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
            template.push(Attribute::Id(id.to_vec()));
        }
        // Every usage flag is set explicitly: some tokens default the ones a
        // template leaves out to true (SoftHSM does for unwrapped secrets).
        match usage {
            KeyUse::AesDecrypt | KeyUse::AesUnwrap | KeyUse::HmacSign => {
                template.push(Attribute::Class(ObjectClass::SECRET_KEY));
                template.push(Attribute::KeyType(if usage == KeyUse::HmacSign {
                    KeyType::GENERIC_SECRET
                } else {
                    KeyType::AES
                }));
                template.push(Attribute::Decrypt(usage == KeyUse::AesDecrypt));
                template.push(Attribute::Unwrap(usage == KeyUse::AesUnwrap));
                template.push(Attribute::Sign(usage == KeyUse::HmacSign));
                template.push(Attribute::Encrypt(false));
                template.push(Attribute::Wrap(false));
                template.push(Attribute::Verify(false));
                template.push(Attribute::Derive(false));
            }
            KeyUse::EcSign => {
                template.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
                template.push(Attribute::KeyType(KeyType::EC));
                template.push(Attribute::Sign(true));
                template.push(Attribute::Decrypt(false));
                template.push(Attribute::Unwrap(false));
                template.push(Attribute::Derive(false));
            }
        }
        self.session
            .unwrap_key(mechanism, kek, wrapped, &template)
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
        let mut iv = *iv;
        let params = GcmParams::new(&mut iv, aad, 128.into())
            .map_err(|e| HsmError::op("prepare AES-GCM parameters", e))?;
        self.session
            .decrypt(&Mechanism::AesGcm(params), key, ciphertext)
            .map(Zeroizing::new)
            .map_err(|e| HsmError::op("decrypt with AES-GCM", e))
    }

    /// Creates a token data object (`CKO_DATA`) with a label and a value.
    pub fn create_data(&self, label: &str, value: &[u8]) -> Result<ObjectHandle, HsmError> {
        self.session
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
        let attrs = self
            .session
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
        self.session
            .destroy_object(object)
            .map_err(|e| HsmError::op("destroy an object", e))
    }

    /// Reads back the attributes that decide whether a key can leave the token.
    pub fn key_attributes(&self, key: ObjectHandle) -> Result<KeyAttributes, HsmError> {
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
        ];
        let mut out = KeyAttributes::default();
        for t in wanted {
            // Asked one at a time: a key type without the attribute answers
            // CKR_ATTRIBUTE_TYPE_INVALID, which simply means "false".
            let Ok(attrs) = self.session.get_attributes(key, &[t]) else {
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
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// The object's class, for listings.
    pub fn object_class(&self, object: ObjectHandle) -> Result<ObjectClass, HsmError> {
        let attrs = self
            .session
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
