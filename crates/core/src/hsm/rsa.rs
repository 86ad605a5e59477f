//! RSA-OAEP transport keys: one RSA-3072 key pair per role, unwrap only,
//! whose `CKA_UNWRAP_TEMPLATE` fixes class, type and usage of whatever it
//! unwraps (sensitive, never extractable). Unlike ECDH, nothing a PIN holder
//! can ask of these keys yields a secret in clear: see [`Token::probe_transport`].

use ::rsa::pkcs8::EncodePublicKey;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use zeroize::Zeroizing;

use super::nested_template::{Template, CKA_UNWRAP_TEMPLATE};
use super::{HsmError, KeyPair, OaepHash, Token, TransportRole, TRANSPORT_BITS};

/// What a transport key of a role lets out of an unwrap, in PKCS#11 terms
/// (the role itself is a format type, `flashgate_formats::profile`).
trait RoleTemplate {
    fn result_mechanism(self) -> MechanismType;
    fn result_template(self, lock: bool) -> Vec<Attribute>;
}

impl RoleTemplate for TransportRole {
    /// The only mechanism the unwrapped key may be used with.
    fn result_mechanism(self) -> MechanismType {
        match self {
            Self::Image => MechanismType::AES_GCM,
            Self::Master => MechanismType::SHA256_HMAC,
            Self::Ca => MechanismType::ECDSA,
        }
    }

    /// The attributes every key this role unwraps must have. The same list
    /// goes into the transport key's `CKA_UNWRAP_TEMPLATE` and into the
    /// caller's template: SoftHSM refuses an unwrap whose template does not
    /// repeat the unwrap template, Kryoptic merges it.
    fn result_template(self, lock: bool) -> Vec<Attribute> {
        let mut t = match self {
            Self::Image | Self::Master => vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(if self == Self::Image {
                    KeyType::AES
                } else {
                    KeyType::GENERIC_SECRET
                }),
                Attribute::Decrypt(self == Self::Image),
                Attribute::Sign(self == Self::Master),
                Attribute::Encrypt(false),
                Attribute::Verify(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
            ],
            Self::Ca => vec![
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Sign(true),
                Attribute::SignRecover(false),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
            ],
        };
        t.push(Attribute::Sensitive(true));
        t.push(Attribute::Extractable(false));
        t.push(Attribute::AllowedMechanisms(vec![self.result_mechanism()]));
        if lock {
            t.push(Attribute::Modifiable(false));
            t.push(Attribute::Copyable(false));
        }
        t
    }
}

/// The PKCS#11 mechanism of an OAEP hash (a format type).
trait OaepMechanism {
    fn mechanism(self) -> Mechanism<'static>;
}

impl OaepMechanism for OaepHash {
    fn mechanism(self) -> Mechanism<'static> {
        let (hash, mgf) = match self {
            Self::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
            Self::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        };
        Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
    }
}

/// How transport keys are made on this token, measured at enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportSupport {
    /// The strongest OAEP hash the token unwraps with.
    pub hash: OaepHash,
    /// Whether unwrapped keys can be made `CKA_MODIFIABLE=false` and
    /// `CKA_COPYABLE=false` (SoftHSM 2.6 refuses that in an unwrap template).
    pub lock: bool,
}

impl Token {
    /// Generates the transport key pair of `role`. `label` names a token
    /// object; `None` makes a session key (for probes). The private key can
    /// only unwrap, only with `CKM_RSA_PKCS_OAEP`, and cannot be changed or
    /// copied; what it unwraps is fixed by its unwrap template.
    pub fn generate_transport_key(
        &self,
        role: TransportRole,
        label: Option<&str>,
        support: TransportSupport,
    ) -> Result<KeyPair, HsmError> {
        let persist = label.is_some();
        let session = self.writing_session(persist)?;
        let mut public = vec![
            Attribute::Token(persist),
            Attribute::Private(false),
            Attribute::KeyType(KeyType::RSA),
            Attribute::ModulusBits(TRANSPORT_BITS.into()),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Verify(false),
            Attribute::VerifyRecover(false),
            Attribute::Derive(false),
            Attribute::AllowedMechanisms(vec![MechanismType::RSA_PKCS_OAEP]),
            Attribute::Modifiable(false),
            Attribute::Copyable(false),
        ];
        let mut private = vec![
            Attribute::Token(persist),
            Attribute::Private(true),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Unwrap(true),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
            Attribute::SignRecover(false),
            Attribute::Derive(false),
            Attribute::AllowedMechanisms(vec![MechanismType::RSA_PKCS_OAEP]),
            Attribute::Modifiable(false),
            Attribute::Copyable(false),
        ];
        if let Some(label) = label {
            for t in [&mut public, &mut private] {
                t.push(Attribute::Label(label.as_bytes().to_vec()));
                t.push(Attribute::Id(label.as_bytes().to_vec()));
            }
        }
        // What the key unwraps is fixed by its unwrap template; without it
        // the key would be no safer than the ECDH profiles, so no key.
        let private = Template::new(private)
            .with_array_of(CKA_UNWRAP_TEMPLATE, &role.result_template(support.lock));
        if !private.has(CKA_UNWRAP_TEMPLATE) {
            return Err(HsmError::Unexpected(
                "the unwrap template of a transport key cannot be laid out on this platform",
            ));
        }
        let (public, private) = session
            .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, private.attrs())
            .map_err(|e| HsmError::op("generate an RSA transport key pair", e))?;
        Ok(KeyPair { public, private })
    }

    /// The public key of an RSA key pair.
    pub fn rsa_public_key(&self, public: ObjectHandle) -> Result<::rsa::PublicKey, HsmError> {
        let session = self.session()?;
        let attrs = session
            .get_attributes(
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .map_err(|e| HsmError::op("read an RSA public key", e))?;
        let (mut n, mut e) = (None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        let (Some(n), Some(e)) = (n, e) else {
            return Err(HsmError::Unexpected(
                "the token returned no RSA modulus or exponent",
            ));
        };
        let bits = |v: &[u8]| u32::try_from(v.len() * 8).unwrap_or(u32::MAX);
        let n = ::rsa::BoxedUint::from_be_slice(&n, bits(&n))
            .map_err(|_| HsmError::Unexpected("the token returned a bad RSA modulus"))?;
        let e = ::rsa::BoxedUint::from_be_slice(&e, bits(&e).max(64))
            .map_err(|_| HsmError::Unexpected("the token returned a bad RSA exponent"))?;
        ::rsa::PublicKey::new(n, e)
            .map_err(|_| HsmError::Unexpected("the token returned an unusable RSA public key"))
    }

    /// The SubjectPublicKeyInfo DER of an RSA public key object.
    pub fn rsa_public_key_info(&self, public: ObjectHandle) -> Result<Vec<u8>, HsmError> {
        let key = self.rsa_public_key(public)?;
        key.to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|_| HsmError::Unexpected("an RSA public key could not be encoded"))
    }

    /// `C_UnwrapKey` with RSA-OAEP under the transport key of `role`, with
    /// the role's result template. `persist` names a token object.
    pub fn unwrap_oaep(
        &self,
        transport: ObjectHandle,
        hash: OaepHash,
        role: TransportRole,
        wrapped: &[u8],
        persist: Option<(&str, &[u8])>,
    ) -> Result<ObjectHandle, HsmError> {
        let session = self.writing_session(persist.is_some())?;
        let attempt = |lock: bool| {
            let mut template = role.result_template(lock);
            template.push(Attribute::Token(persist.is_some()));
            template.push(Attribute::Private(true));
            if let Some((label, id)) = persist {
                template.push(Attribute::Label(label.as_bytes().to_vec()));
                template.push(Attribute::Id(id.to_vec()));
            }
            session.unwrap_key(&hash.mechanism(), transport, wrapped, &template)
        };
        // Locked results first; a token that cannot lock them (SoftHSM 2.6)
        // made its transport keys without the lock and refuses this template.
        attempt(true)
            .or_else(|_| attempt(false))
            .map_err(|e| HsmError::op("unwrap a key with RSA-OAEP", e))
    }

    /// Measures how this token can run the RSA-OAEP transport: OAEP with
    /// SHA-256, else SHA-1; locked results if possible. Every role is tried
    /// on a throwaway session key pair (destroyed after), because whether a
    /// token takes OAEP-SHA-256, or unwraps a private key with OAEP, does
    /// not show in its mechanism list. `None`: the token cannot run it.
    pub fn transport_support(&self) -> Option<TransportSupport> {
        for hash in [OaepHash::Sha256, OaepHash::Sha1] {
            for lock in [true, false] {
                let support = TransportSupport { hash, lock };
                if TransportRole::ALL
                    .into_iter()
                    .all(|role| self.transport_round_trip(role, support).is_ok())
                {
                    return Some(support);
                }
            }
        }
        None
    }

    fn transport_round_trip(
        &self,
        role: TransportRole,
        support: TransportSupport,
    ) -> Result<(), HsmError> {
        let session = self.session()?;
        let pair = self.generate_transport_key(role, None, support)?;
        let result = (|| {
            let public = self.rsa_public_key(pair.public)?;
            let secret = sample_secret(role)?;
            let wrapped = support
                .hash
                .encrypt(&public, &secret)
                .map_err(|_| HsmError::Unexpected("host-side RSA-OAEP failed"))?;
            let key = self.unwrap_oaep(pair.private, support.hash, role, &wrapped, None)?;
            let attrs = self.key_attributes(key);
            let _ = session.destroy_object(key);
            let attrs = attrs?;
            if attrs.extractable || !attrs.sensitive {
                return Err(HsmError::Unexpected(
                    "the token unwrapped an extractable key",
                ));
            }
            Ok(())
        })();
        let _ = session.destroy_object(pair.private);
        let _ = session.destroy_object(pair.public);
        result
    }

    /// Tries every path a hostile PIN holder has against transport keys made
    /// with the production templates (throwaway session objects, destroyed
    /// after): unwrapping into other templates, decrypting or signing with
    /// the transport key, changing or copying it, unwrapping one role's blob
    /// under another role's key, and reading, changing, copying, wrapping or
    /// deriving from what was unwrapped. Returns one finding per path: its
    /// name, whether a secret came out in clear, and what the token did.
    pub fn probe_transport(
        &self,
        support: TransportSupport,
    ) -> Result<Vec<(&'static str, bool, String)>, HsmError> {
        let session = self.session()?;
        let mut made: Vec<ObjectHandle> = Vec::new();
        let result = self.probe_with(support, &mut made);
        for h in made {
            let _ = session.destroy_object(h);
        }
        result
    }

    fn probe_with(
        &self,
        support: TransportSupport,
        made: &mut Vec<ObjectHandle>,
    ) -> Result<Vec<(&'static str, bool, String)>, HsmError> {
        let session = self.session()?;
        let mut findings = Vec::new();
        let mut keys = Vec::new();
        for role in TransportRole::ALL {
            let pair = self.generate_transport_key(role, None, support)?;
            made.extend([pair.public, pair.private]);
            let public = self.rsa_public_key(pair.public)?;
            let secret = sample_secret(role)?;
            let blob = support
                .hash
                .encrypt(&public, &secret)
                .map_err(|_| HsmError::Unexpected("host-side RSA-OAEP failed"))?;
            keys.push((role, pair.private, secret, blob));
        }
        let mech = support.hash.mechanism();
        let session_tpl = |mut t: Vec<Attribute>| {
            t.push(Attribute::Token(false));
            t
        };
        for (role, transport, _, blob) in &keys {
            let (role, transport) = (*role, *transport);
            // C_UnwrapKey into templates that ask for more than the unwrap template allows.
            let loosen: [(&'static str, TemplateEdit); 5] = [
                ("unwrap into an extractable, non-sensitive key", |t| {
                    set(t, Attribute::Extractable(true));
                    set(t, Attribute::Sensitive(false));
                }),
                (
                    "unwrap into a template that leaves sensitive and extractable out",
                    |t| {
                        t.retain(|a| {
                            !matches!(a, Attribute::Extractable(_) | Attribute::Sensitive(_))
                        });
                    },
                ),
                ("unwrap into a key that can also derive", |t| {
                    set(t, Attribute::Derive(true));
                    t.retain(|a| !matches!(a, Attribute::AllowedMechanisms(_)));
                }),
                ("unwrap into a key that can also wrap and encrypt", |t| {
                    set(t, Attribute::Wrap(true));
                    set(t, Attribute::Encrypt(true));
                }),
                ("unwrap into a bare template (class and type only)", |t| {
                    t.retain(|a| matches!(a, Attribute::Class(_) | Attribute::KeyType(_)));
                }),
            ];
            for (path, edit) in loosen {
                let mut t = role.result_template(support.lock);
                edit(&mut t);
                let r = session.unwrap_key(&mech, transport, blob, &session_tpl(t));
                findings.push(self.judge_object(path, role, r, made));
            }
            // Another mechanism under the transport key: raw RSA would hand
            // out the padded block, PKCS#1 v1.5 another decoding.
            for (path, m) in [
                ("unwrap with raw RSA (CKM_RSA_X_509)", Mechanism::RsaX509),
                ("unwrap with CKM_RSA_PKCS", Mechanism::RsaPkcs),
            ] {
                let t = session_tpl(vec![
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                ]);
                let r = session.unwrap_key(&m, transport, blob, &t);
                findings.push(self.judge_object(path, role, r, made));
            }
            // The private-key operation itself.
            for (path, r) in [
                (
                    "C_Decrypt with the transport key (OAEP)",
                    session.decrypt(&mech, transport, blob),
                ),
                (
                    "C_Decrypt with the transport key (raw RSA)",
                    session.decrypt(&Mechanism::RsaX509, transport, blob),
                ),
                (
                    "C_Sign with the transport key (raw RSA)",
                    session.sign(&Mechanism::RsaX509, transport, blob),
                ),
            ] {
                findings.push(judge_bytes(path, role, r));
            }
            // Changing the transport key, or copying it with new usages.
            for (path, attr) in [
                (
                    "set CKA_DECRYPT on the transport key",
                    Attribute::Decrypt(true),
                ),
                ("set CKA_SIGN on the transport key", Attribute::Sign(true)),
                (
                    "set CKA_EXTRACTABLE on the transport key",
                    Attribute::Extractable(true),
                ),
                (
                    "widen CKA_ALLOWED_MECHANISMS of the transport key",
                    Attribute::AllowedMechanisms(vec![
                        MechanismType::RSA_PKCS_OAEP,
                        MechanismType::RSA_X_509,
                    ]),
                ),
            ] {
                let r = session.update_attributes(transport, &[attr]);
                let extracted = r.is_ok()
                    && (session.decrypt(&mech, transport, blob).is_ok()
                        || session.sign(&Mechanism::RsaX509, transport, blob).is_ok());
                findings.push((path, extracted, outcome(role, r.map(|()| "changed"))));
            }
            let r = session.copy_object(
                transport,
                &[
                    Attribute::Token(false),
                    Attribute::Decrypt(true),
                    Attribute::Sign(true),
                ],
            );
            let extracted = match &r {
                Ok(copy) => {
                    made.push(*copy);
                    session.decrypt(&mech, *copy, blob).is_ok()
                        || session.sign(&Mechanism::RsaX509, *copy, blob).is_ok()
                }
                Err(_) => false,
            };
            findings.push((
                "copy the transport key with decrypt and sign",
                extracted,
                outcome(role, r.map(|_| "copied")),
            ));
            // Another role's blob under this role's key.
            for (other, _, _, other_blob) in &keys {
                if *other == role {
                    continue;
                }
                let t = session_tpl(role.result_template(support.lock));
                let r = session.unwrap_key(&mech, transport, other_blob, &t);
                let mut f = self.judge_object(
                    "unwrap another role's blob under this role's key",
                    role,
                    r,
                    made,
                );
                f.2 = format!("{} blob: {}", other.name(), f.2);
                findings.push(f);
            }
            // What the legitimate unwrap gives, attacked in turn.
            let key = self.unwrap_oaep(transport, support.hash, role, blob, None)?;
            made.push(key);
            findings.extend(self.attack_unwrapped(role, key, made));
        }
        Ok(findings)
    }

    /// Attacks on a key the transport key unwrapped legitimately.
    fn attack_unwrapped(
        &self,
        role: TransportRole,
        key: ObjectHandle,
        made: &mut Vec<ObjectHandle>,
    ) -> Vec<(&'static str, bool, String)> {
        let session = match self.session() {
            Ok(s) => s,
            Err(e) => return vec![("session", true, format!("not measured: {e}"))],
        };
        let mut out = Vec::new();
        let value = session.get_attributes(key, &[AttributeType::Value]);
        let leaked = self.value_readable(key);
        out.push((
            "read CKA_VALUE of the unwrapped key",
            leaked,
            outcome(
                role,
                value.map(|_| {
                    if leaked {
                        "value read"
                    } else {
                        "no value returned"
                    }
                }),
            ),
        ));
        for (path, attr) in [
            (
                "set CKA_EXTRACTABLE on the unwrapped key",
                Attribute::Extractable(true),
            ),
            (
                "clear CKA_SENSITIVE on the unwrapped key",
                Attribute::Sensitive(false),
            ),
            (
                "set CKA_DERIVE on the unwrapped key",
                Attribute::Derive(true),
            ),
            ("set CKA_WRAP on the unwrapped key", Attribute::Wrap(true)),
            (
                "set CKA_UNWRAP on the unwrapped key",
                Attribute::Unwrap(true),
            ),
        ] {
            let r = session.update_attributes(key, &[attr]);
            out.push((
                path,
                self.value_readable(key),
                outcome(role, r.map(|()| "changed")),
            ));
        }
        let r = session.copy_object(
            key,
            &[
                Attribute::Token(false),
                Attribute::Extractable(true),
                Attribute::Sensitive(false),
            ],
        );
        let leaked = match &r {
            Ok(copy) => {
                made.push(*copy);
                self.value_readable(*copy)
            }
            Err(_) => false,
        };
        out.push((
            "copy the unwrapped key as extractable",
            leaked,
            outcome(role, r.map(|_| "copied")),
        ));
        // Wrap it out under a key the attacker owns.
        let kek = session.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        );
        let (leaked, detail) = match kek {
            Ok(kek) => {
                made.push(kek);
                let r = session.wrap_key(&Mechanism::AesKeyWrapPad, kek, key);
                (r.is_ok(), outcome(role, r.map(|_| "wrapped out")))
            }
            Err(e) => (
                false,
                format!("{role}: no attacker key could be made ({e:?})"),
            ),
        };
        out.push((
            "wrap the unwrapped key under the caller's own key",
            leaked,
            detail,
        ));
        // Derive from it into an extractable key (Kryoptic's HKDF, SoftHSM's AES-CBC).
        let tpl = [
            Attribute::Token(false),
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        let hkdf = cryptoki::mechanism::hkdf::HkdfParams::new(
            MechanismType::SHA256_HMAC,
            Some(cryptoki::mechanism::hkdf::HkdfSalt::Null),
            None,
        );
        let r = session.derive_key(&Mechanism::HkdfDerive(hkdf), key, &tpl);
        if let Ok(h) = &r {
            made.push(*h);
        }
        out.push((
            "derive an extractable key from the unwrapped key",
            r.is_ok(),
            outcome(role, r.map(|_| "derived")),
        ));
        // Use it to unwrap (an unwrapped key must not be an intermediate).
        let r = session.unwrap_key(
            &Mechanism::AesKeyWrapPad,
            key,
            &[0u8; 40],
            &[
                Attribute::Token(false),
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Extractable(true),
                Attribute::Sensitive(false),
            ],
        );
        if let Ok(h) = &r {
            made.push(*h);
        }
        let unwrap_refused = matches!(
            &r,
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::KeyFunctionNotPermitted
                    | cryptoki::error::RvError::MechanismInvalid
                    | cryptoki::error::RvError::KeyTypeInconsistent
                    | cryptoki::error::RvError::UnwrappingKeyTypeInconsistent
                    | cryptoki::error::RvError::UnwrappingKeyHandleInvalid,
                _
            ))
        );
        out.push((
            "unwrap with the unwrapped key",
            r.is_ok(),
            if unwrap_refused {
                format!("{role}: refused ({})", err_text(&r))
            } else {
                outcome(role, r.map(|_| "unwrapped"))
            },
        ));
        out
    }

    /// Whether the key's value can be read: the secret itself, or (after
    /// raw RSA) its padded block, which decodes to it on the host.
    fn value_readable(&self, key: ObjectHandle) -> bool {
        // Without a session nothing is shown to be unreadable.
        let Ok(session) = self.session() else {
            return true;
        };
        session
            .get_attributes(key, &[AttributeType::Value])
            .is_ok_and(|v| {
                v.iter()
                    .any(|a| matches!(a, Attribute::Value(x) if !x.is_empty()))
            })
    }

    /// A finding for an attempt that may have created an object.
    fn judge_object(
        &self,
        path: &'static str,
        role: TransportRole,
        r: cryptoki::error::Result<ObjectHandle>,
        made: &mut Vec<ObjectHandle>,
    ) -> (&'static str, bool, String) {
        match r {
            Ok(h) => {
                made.push(h);
                let leaked = self.value_readable(h);
                let attrs = self.key_attributes(h).unwrap_or_default();
                (
                    path,
                    leaked,
                    format!(
                        "{role}: the token created a key (sensitive={}, extractable={}){}",
                        attrs.sensitive,
                        attrs.extractable,
                        if leaked {
                            " and its value was read"
                        } else {
                            ""
                        }
                    ),
                )
            }
            Err(e) => (path, false, format!("{role}: refused ({e:?})")),
        }
    }
}

/// A change a hostile caller makes to a result template.
type TemplateEdit = fn(&mut Vec<Attribute>);

fn set(t: &mut Vec<Attribute>, a: Attribute) {
    let ty = a.attribute_type();
    t.retain(|x| x.attribute_type() != ty);
    t.push(a);
}

fn judge_bytes(
    path: &'static str,
    role: TransportRole,
    r: cryptoki::error::Result<Vec<u8>>,
) -> (&'static str, bool, String) {
    match r {
        // Any output of the private-key operation decodes to the secret on the host.
        Ok(v) => (
            path,
            true,
            format!("{role}: the token returned {} bytes", v.len()),
        ),
        Err(e) => (path, false, format!("{role}: refused ({e:?})")),
    }
}

fn outcome(role: TransportRole, r: cryptoki::error::Result<&'static str>) -> String {
    match r {
        Ok(what) => format!("{role}: {what}"),
        Err(e) => format!("{role}: refused ({e:?})"),
    }
}

fn err_text<T>(r: &cryptoki::error::Result<T>) -> String {
    match r {
        Ok(_) => "accepted".to_owned(),
        Err(e) => format!("{e:?}"),
    }
}

/// A stand-in secret of the size the role transports: 32 random bytes, or
/// the PKCS#8 of a fresh P-256 key.
fn sample_secret(role: TransportRole) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    match role {
        TransportRole::Image | TransportRole::Master => {
            let mut b = Zeroizing::new(vec![0u8; 32]);
            getrandom::fill(&mut b).map_err(|_| HsmError::Unexpected("the OS RNG failed"))?;
            Ok(b)
        }
        TransportRole::Ca => {
            use p256::pkcs8::EncodePrivateKey;
            let key = crate::cose::random_secret_key()
                .map_err(|_| HsmError::Unexpected("the OS RNG failed"))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|_| HsmError::Unexpected("a P-256 key could not be encoded"))?;
            Ok(Zeroizing::new(der.as_bytes().to_vec()))
        }
    }
}
