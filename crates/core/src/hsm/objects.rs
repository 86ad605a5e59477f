//! Token objects: data objects (the quota counters), destruction, and
//! reading back what a key can be used for.

use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};

use super::{HsmError, Token};

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

impl Token {
    /// Creates a token data object (`CKO_DATA`) with a label and a value.
    pub fn create_data(&self, label: &str, value: &[u8]) -> Result<ObjectHandle, HsmError> {
        let session = self.writing_session(true)?;
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
        let session = self.writing_session(true)?;
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
