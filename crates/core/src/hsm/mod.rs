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
mod ed25519;
mod error;
pub mod latency;
mod nested_template;
mod object_store;
mod objects;
pub mod probe;
mod profile;
mod rsa;
mod signer;
mod templates;
mod unwrap;

pub use self::rsa::TransportSupport;
pub use crate::profile::{OaepHash, Profile, TransportRole, TRANSPORT_BITS};
pub use config::{PinSource, TokenConfig};
pub use ed25519::TokenEd25519;
pub use error::HsmError;
pub use flashgate_formats::token::TokenDescription;
pub use objects::KeyAttributes;
pub use profile::{Mechanisms, ProfileMechanisms};
pub use signer::TokenKey;
pub use templates::Relaxed;
use templates::*;

use nested_template::{Template, CKA_DERIVE_TEMPLATE};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// DER encoding of the P-256 curve OID (1.2.840.10045.3.1.7), as `CKA_EC_PARAMS` wants it.
const P256_EC_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

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
    /// Dropped after the session is back in the pool.
    _store: Option<object_store::StoreGuard>,
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
        self.session_holding(None)
    }

    /// [`Token::session`] for a search: no token object is written meanwhile.
    fn searching_session(&self) -> Result<PooledSession<'_>, HsmError> {
        self.session_holding(Some(object_store::StoreGuard::search()))
    }

    /// [`Token::session`] for work that creates, changes or destroys token
    /// objects when `token_objects`: nothing searches meanwhile.
    fn writing_session(&self, token_objects: bool) -> Result<PooledSession<'_>, HsmError> {
        self.session_holding(object_store::StoreGuard::write_if(token_objects))
    }

    fn session_holding(
        &self,
        store: Option<object_store::StoreGuard>,
    ) -> Result<PooledSession<'_>, HsmError> {
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
            _store: store,
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
        let session = self.searching_session()?;
        session
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| HsmError::op("search the token", e))
    }

    /// Every token object, with its label (for status listings and clean-up).
    pub fn labelled_objects(&self) -> Result<Vec<(ObjectHandle, String)>, HsmError> {
        let session = self.searching_session()?;
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
        let session = self.writing_session(persist.is_some())?;
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
        let sig = latency::timed("sign", || session.sign(&Mechanism::Ecdsa, key, digest))
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
            latency::timed("hmac", || session.sign(&Mechanism::Sha256Hmac, key, data))
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
