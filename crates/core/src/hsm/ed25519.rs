//! Ed25519 keys in the token, for the fleet collector's witness
//! (`cosignature/v1`): generated inside, sign-only with `CKM_EDDSA`,
//! sensitive, not extractable, not modifiable, not copyable.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectHandle};

use super::templates::{locked, private_usage, public_usage};
use super::{HsmError, KeyPair, Token};

/// DER of the Ed25519 OID 1.3.101.112 (RFC 8410), as `CKA_EC_PARAMS`.
const ED25519_EC_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

impl Token {
    /// Generates an Ed25519 key pair labelled `label` that never leaves the token.
    pub fn generate_ed25519(&self, label: &str) -> Result<KeyPair, HsmError> {
        for mechanism in [
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            MechanismType::EDDSA,
        ] {
            if !self.mechanisms.contains(mechanism) {
                return Err(HsmError::NotOffered {
                    mechanism,
                    purpose: "an Ed25519 witness key",
                });
            }
        }
        let session = self.writing_session(true)?;
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::EcParams(ED25519_EC_PARAMS.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(label.as_bytes().to_vec()),
        ];
        public.extend(public_usage(true, false));
        public.extend(locked(&[MechanismType::EDDSA]));
        let mut private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(label.as_bytes().to_vec()),
        ];
        private.extend(private_usage(true, false));
        private.extend(locked(&[MechanismType::EDDSA]));
        let (public, private) = session
            .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
            .map_err(|e| HsmError::op("generate an Ed25519 key pair", e))?;
        Ok(KeyPair { public, private })
    }

    /// The 32-byte Ed25519 public key of a public key object.
    pub fn ed25519_public(&self, public: ObjectHandle) -> Result<[u8; 32], HsmError> {
        let session = self.session()?;
        let raw = session
            .get_attributes(public, &[AttributeType::EcPoint])
            .map_err(|e| HsmError::op("read an Ed25519 public key", e))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or(HsmError::Unexpected("the token returned no CKA_EC_POINT"))?;
        // A DER OCTET STRING around the key (PKCS#11 3.0), or the bare key.
        let key: &[u8] = match raw.as_slice() {
            [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
            k if k.len() == 32 => k,
            _ => {
                return Err(HsmError::Unexpected(
                    "CKA_EC_POINT is not a 32-byte Ed25519 public key",
                ))
            }
        };
        let mut out = [0u8; 32];
        out.copy_from_slice(key);
        Ok(out)
    }

    /// An Ed25519 (RFC 8032, pure) signature over `message`.
    pub fn sign_ed25519(&self, key: ObjectHandle, message: &[u8]) -> Result<[u8; 64], HsmError> {
        let session = self.session()?;
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let sig = super::latency::timed("sign", || session.sign(&mechanism, key, message))
            .map_err(|e| HsmError::op("sign with Ed25519", e))?;
        sig.as_slice().try_into().map_err(|_| {
            HsmError::Unexpected("the token returned an Ed25519 signature that is not 64 bytes")
        })
    }
}

/// An Ed25519 private key in a token as a cosigner's signer.
pub struct TokenEd25519 {
    token: std::sync::Arc<Token>,
    key: ObjectHandle,
    public: [u8; 32],
}

impl std::fmt::Debug for TokenEd25519 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEd25519")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

impl TokenEd25519 {
    /// The key pair labelled `label` in `token`.
    pub fn find(token: std::sync::Arc<Token>, label: &str) -> Result<Self, HsmError> {
        let mut private = None;
        let mut public = None;
        for h in token.find_by_label(label)? {
            match token.object_class(h)? {
                c if c == cryptoki::object::ObjectClass::PRIVATE_KEY => private = Some(h),
                c if c == cryptoki::object::ObjectClass::PUBLIC_KEY => {
                    public = Some(token.ed25519_public(h)?);
                }
                _ => {}
            }
        }
        match (private, public) {
            (Some(key), Some(public)) => Ok(Self { token, key, public }),
            _ => Err(HsmError::Unexpected(
                "the token holds no Ed25519 key pair with that label",
            )),
        }
    }
}

impl flashgate_note::Ed25519Signer for TokenEd25519 {
    fn public_key(&self) -> [u8; 32] {
        self.public
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String> {
        self.token
            .sign_ed25519(self.key, message)
            .map_err(|e| e.to_string())
    }
}
