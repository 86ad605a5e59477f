//! Measures, on the token itself, whether whoever holds its user PIN can get
//! a job secret out of it.
//!
//! For each key-transport profile the token runs, throwaway session keys are
//! made through exactly the production code paths (the same templates, the
//! same ECDH, KDF and unwrap steps, fed by a host-made recipient like a real
//! package's), then each extraction path a hostile PIN holder could take is
//! tried against them. Everything made is destroyed again, also on error
//! (and, being session objects, gone when the session closes anyway).

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::misc::{ExtractParams, KeyDerivationStringData};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use super::{EcdhKdf, HsmError, KeyUse, Profile, Relaxed, Token};
use crate::cose;
use crate::package::encrypt::{seal_recipient, KdfInput, RecipientContext};

pub use flashgate_formats::token::{Extraction, ExtractionProbe, Finding, Outcome};

/// Runs every extraction path against throwaway keys for each ECDH profile
/// the token supports.
pub fn probe(token: &Token) -> Result<ExtractionProbe, HsmError> {
    let mut out = ExtractionProbe::default();
    for profile in token.mechanisms().supported_profiles() {
        let mut scratch = Scratch {
            token,
            session: token.session()?,
            handles: Vec::new(),
        };
        let findings = probe_ecdh_profile(&mut scratch, profile)?;
        out.add(profile, findings);
    }
    Ok(out)
}

/// Objects the probe made; destroyed when dropped.
struct Scratch<'a> {
    token: &'a Token,
    /// One session for the whole probe: its session objects live as long.
    session: super::PooledSession<'a>,
    handles: Vec<ObjectHandle>,
}

impl Scratch<'_> {
    fn keep(&mut self, h: ObjectHandle) -> ObjectHandle {
        self.handles.push(h);
        h
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        for h in self.handles.drain(..).rev() {
            let _ = self.session.destroy_object(h);
        }
    }
}

/// `CKR_...` name of a token's answer (cryptoki names it in CamelCase).
fn rv_text(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, _) => {
            let mut name = String::from("CKR");
            for c in format!("{rv:?}").chars() {
                if c.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
        other => other.to_string(),
    }
}

fn finding(profile: Profile, key: &str, path: &str, outcome: Outcome, detail: String) -> Finding {
    Finding {
        path: format!("{}/{key}/{path}", profile.name()),
        outcome,
        detail,
    }
}

/// A throwaway key and what it is.
struct Target {
    name: &'static str,
    handle: ObjectHandle,
    secret: bool,
}

fn probe_ecdh_profile(s: &mut Scratch<'_>, profile: Profile) -> Result<Vec<Finding>, HsmError> {
    let token = s.token;
    let mut findings = Vec::new();
    let (ka, relaxed_ka) = token.p256_pair(None, KeyUse::AesUnwrap)?;
    s.keep(ka.public);
    s.keep(ka.private);
    let ka_public = token.ec_point(ka.public)?;
    let kid = cose::key_id(&ka_public);
    let mut job_id = [0u8; 16];
    token.random(&mut job_id)?;
    let ctx = RecipientContext {
        profile,
        job_id: &job_id,
        kid: &kid,
    };

    // Production chain: host-sealed recipient -> ECDH -> KDF -> KEK -> unwrap.
    let mut relaxed = relaxed_ka;
    let mut chain = |usage: KeyUse,
                     s: &mut Scratch<'_>|
     -> Result<(ObjectHandle, ObjectHandle, Zeroizing<[u8; 32]>), HsmError> {
        let mut cek = Zeroizing::new([0u8; 32]);
        token.random(cek.as_mut_slice())?;
        let r = seal_recipient(ctx, &ka_public, &cek)
            .map_err(|_| HsmError::Unexpected("the probe could not seal a test recipient"))?;
        let input = ctx.kdf_input(&r.protected, &r.ephemeral);
        let kdf = match &input {
            KdfInput::Hkdf(info) => EcdhKdf::Hkdf { info },
            KdfInput::AesCbc(c) => EcdhKdf::AesCbc { context: c },
        };
        let (kek, rk) = token.ecdh_kek_relaxed(ka.private, &r.ephemeral, kdf, 32)?;
        s.keep(kek);
        let (key, ru) =
            token.unwrap_relaxed(&Mechanism::AesKeyWrap, kek, &r.wrapped_cek, usage, None)?;
        s.keep(key);
        relaxed = relaxed | rk | ru;
        Ok((kek, key, cek))
    };
    let (kek, master, _) = chain(KeyUse::HmacSign, s)?;
    let (_, image, _) = chain(KeyUse::AesDecrypt, s)?;
    let (_, content, cek) = chain(KeyUse::AesUnwrap, s)?;
    let (ca, rc) = unwrap_test_ca_key(token, profile, content, &cek)?;
    s.keep(ca);
    relaxed = relaxed | rc;
    // The ECDH intermediate as production makes it.
    let (shared, eph_point, rs) = shared_secret(token, ka.private, profile)?;
    s.keep(shared);
    relaxed = relaxed | rs;

    findings.extend(template_findings(profile, relaxed));

    // Path 1: ECDH with the KA key straight into an extractable secret.
    findings.push(ecdh_into_extractable(
        s, profile, "ka", ka.private, &eph_point,
    ));

    let targets = [
        Target {
            name: "ka",
            handle: ka.private,
            secret: false,
        },
        Target {
            name: "ecdh-secret",
            handle: shared,
            secret: true,
        },
        Target {
            name: "kek",
            handle: kek,
            secret: true,
        },
        Target {
            name: "content-key",
            handle: content,
            secret: true,
        },
        Target {
            name: "device-master",
            handle: master,
            secret: true,
        },
        Target {
            name: "image-key",
            handle: image,
            secret: true,
        },
        Target {
            name: "job-ca-key",
            handle: ca,
            secret: false,
        },
    ];
    for t in &targets {
        findings.extend(set_attribute_paths(s, profile, t));
        findings.push(copy_path(s, profile, t));
        if t.secret {
            findings.extend(derive_paths(s, profile, t));
        } else if t.name != "ka" {
            findings.push(ecdh_into_extractable(
                s, profile, t.name, t.handle, &eph_point,
            ));
        }
    }
    Ok(findings)
}

fn template_findings(profile: Profile, r: Relaxed) -> Vec<Finding> {
    let noted = |path: &str, refused: bool, yes: &str, no: &str| {
        finding(
            profile,
            "templates",
            path,
            Outcome::Noted,
            (if refused { no } else { yes }).to_owned(),
        )
    };
    vec![
        noted(
            "modifiable-false",
            r.modifiable,
            "accepted on every key",
            "CKA_MODIFIABLE=false refused in derive or unwrap templates (CKR_ATTRIBUTE_READ_ONLY); those keys stay modifiable",
        ),
        noted(
            "derive-template",
            r.derive_template,
            "CKA_DERIVE_TEMPLATE accepted",
            "CKA_DERIVE_TEMPLATE unknown to the token (CKR_ATTRIBUTE_TYPE_INVALID); left out",
        ),
        noted(
            "unwrap-template",
            r.unwrap_template,
            "CKA_UNWRAP_TEMPLATE accepted",
            "CKA_UNWRAP_TEMPLATE unknown to the token (CKR_ATTRIBUTE_TYPE_INVALID); left out",
        ),
    ]
}

/// A P-256 job CA key, wrapped on the host the way the package builder
/// wraps one for `profile`, unwrapped in the token under `content`.
fn unwrap_test_ca_key(
    token: &Token,
    profile: Profile,
    content: ObjectHandle,
    cek: &[u8; 32],
) -> Result<(ObjectHandle, Relaxed), HsmError> {
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use p256::pkcs8::EncodePrivateKey;
    let fail = |_| HsmError::Unexpected("the probe could not wrap a test key");
    let key = cose::random_secret_key().map_err(|_| HsmError::Unexpected("no host randomness"))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|_| HsmError::Unexpected("PKCS#8 encoding failed"))?;
    let pkcs8 = Zeroizing::new(der.as_bytes().to_vec());
    match profile {
        Profile::CoseEcdhEsA256kw => {
            let mut iv = [0u8; 12];
            token.random(&mut iv)?;
            let aad = b"flashgate probe";
            let mut buf = pkcs8.to_vec();
            let tag = aes_gcm::Aes256Gcm::new(&(*cek).into())
                .encrypt_inout_detached(&iv.into(), aad, buf.as_mut_slice().into())
                .map_err(fail)?;
            buf.extend_from_slice(&tag);
            let mut iv_mut = iv;
            let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv_mut, aad, 128.into())
                .map_err(|e| HsmError::op("prepare AES-GCM parameters", e))?;
            token.unwrap_relaxed(
                &Mechanism::AesGcm(params),
                content,
                &buf,
                KeyUse::EcSign,
                None,
            )
        }
        Profile::P11v2EcdhAesKdf => {
            let mut buf = vec![0u8; pkcs8.len() + 16];
            let wrapped = aes_kw::KwpAes256::new(&(*cek).into())
                .wrap_key(&pkcs8, &mut buf)
                .map_err(|_| HsmError::Unexpected("the probe could not wrap a test key"))?
                .to_vec();
            token.unwrap_relaxed(
                &Mechanism::AesKeyWrapPad,
                content,
                &wrapped,
                KeyUse::EcSign,
                None,
            )
        }
        Profile::CoseRsaesOaepSha256 | Profile::CoseRsaesOaepSha1 => Err(HsmError::Unexpected(
            "the RSA-OAEP profiles have no content key to probe here",
        )),
    }
}

/// The ECDH shared secret with the production template, for a fresh host
/// ephemeral key; returns it with that key's point.
fn shared_secret(
    token: &Token,
    ka: ObjectHandle,
    profile: Profile,
) -> Result<(ObjectHandle, [u8; 65], Relaxed), HsmError> {
    let eph = cose::random_secret_key().map_err(|_| HsmError::Unexpected("no host randomness"))?;
    let point = cose::sec1_uncompressed(&eph.public_key());
    let kdf = match profile {
        Profile::CoseEcdhEsA256kw => EcdhKdf::Hkdf { info: b"" },
        Profile::P11v2EcdhAesKdf => EcdhKdf::AesCbc { context: &[0; 32] },
        Profile::CoseRsaesOaepSha256 | Profile::CoseRsaesOaepSha1 => {
            return Err(HsmError::Unexpected("the RSA-OAEP profiles do no ECDH"))
        }
    };
    let ecdh = ecdh_mechanism(&point);
    let session = token.session()?;
    let (h, r) = super::tolerant(Token::ecdh_shared_template(kdf), |t| {
        session.derive_key(&ecdh, ka, t)
    })
    .map_err(|e| HsmError::op("derive the ECDH shared secret", e))?;
    Ok((h, point, r))
}

fn ecdh_mechanism(point: &[u8; 65]) -> Mechanism<'_> {
    use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
    Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), point))
}

/// What a hostile PIN holder asks for: a secret it can read.
fn extractable_template(len: u64) -> Vec<Attribute> {
    vec![
        Attribute::Token(false),
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(len.into()),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
}

/// Reads `CKA_VALUE` of a key the probe made; its length if the token gave it.
fn readable_value(session: &Session, h: ObjectHandle) -> Result<usize, String> {
    match session.get_attributes(h, &[AttributeType::Value]) {
        Ok(attrs) => attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(Zeroizing::new(v).len()),
                _ => None,
            })
            .ok_or_else(|| "the token withheld CKA_VALUE".to_owned()),
        Err(e) => Err(format!("CKA_VALUE unreadable: {}", rv_text(&e))),
    }
}

/// Derives with `mechanism` from `base` into an extractable secret and
/// tries to read it.
fn derive_out(
    s: &mut Scratch<'_>,
    profile: Profile,
    key: &str,
    path: &str,
    mechanism: &Mechanism<'_>,
    base: ObjectHandle,
    len: u64,
) -> Finding {
    let token = s.token;
    if !token.mechanisms().contains(mechanism.mechanism_type()) {
        return finding(
            profile,
            key,
            path,
            Outcome::Unavailable,
            format!("the token does not offer {}", mechanism.mechanism_type()),
        );
    }
    match s
        .session
        .derive_key(mechanism, base, &extractable_template(len))
    {
        Ok(h) => {
            s.keep(h);
            match readable_value(&s.session, h) {
                Ok(n) => finding(
                    profile,
                    key,
                    path,
                    Outcome::Possible,
                    format!("the token returned {n} bytes derived from the key"),
                ),
                Err(why) => finding(profile, key, path, Outcome::Refused, why),
            }
        }
        Err(e) => finding(profile, key, path, Outcome::Refused, rv_text(&e)),
    }
}

fn ecdh_into_extractable(
    s: &mut Scratch<'_>,
    profile: Profile,
    key: &str,
    private: ObjectHandle,
    point: &[u8; 65],
) -> Finding {
    let mut f = derive_out(
        s,
        profile,
        key,
        "ecdh-into-extractable",
        &ecdh_mechanism(point),
        private,
        32,
    );
    if f.outcome == Outcome::Possible {
        f.detail = "the token returned the ECDH shared secret Z in clear; with it, every secret wrapped to this key opens offline".to_owned();
    }
    f
}

fn set_attribute_paths(s: &mut Scratch<'_>, profile: Profile, t: &Target) -> Vec<Finding> {
    let token = s.token;
    let current = token.key_attributes(t.handle).ok();
    let already = |a: &Attribute| {
        current.as_ref().is_some_and(|c| match a {
            Attribute::Derive(_) => c.derive,
            Attribute::Decrypt(_) => c.decrypt,
            _ => false,
        })
    };
    // Every derivation the probe tries, for a key whose list could be widened.
    let widen: Vec<MechanismType> = [
        MechanismType::ECDH1_DERIVE,
        MechanismType::EXTRACT_KEY_FROM_KEY,
        MechanismType::XOR_BASE_AND_DATA,
        MechanismType::CONCATENATE_BASE_AND_DATA,
        MechanismType::HKDF_DERIVE,
        MechanismType::AES_CBC_ENCRYPT_DATA,
    ]
    .into_iter()
    .filter(|m| token.mechanisms().contains(*m))
    .collect();
    let attempts = [
        ("set-extractable", Attribute::Extractable(true)),
        ("set-sensitive-false", Attribute::Sensitive(false)),
        ("set-derive", Attribute::Derive(true)),
        ("set-decrypt", Attribute::Decrypt(true)),
        (
            "set-allowed-mechanisms",
            Attribute::AllowedMechanisms(widen),
        ),
    ];
    attempts
        .into_iter()
        .map(|(path, attr)| {
            if already(&attr) {
                return finding(
                    profile,
                    t.name,
                    path,
                    Outcome::Unavailable,
                    "the key has this use already (its role)".to_owned(),
                );
            }
            let exposes = matches!(attr, Attribute::Extractable(_) | Attribute::Sensitive(_));
            match s.session.update_attributes(t.handle, &[attr]) {
                Ok(()) if exposes => finding(
                    profile,
                    t.name,
                    path,
                    Outcome::Possible,
                    "the token made the key readable or exportable".to_owned(),
                ),
                Ok(()) => finding(
                    profile,
                    t.name,
                    path,
                    Outcome::Widened,
                    "the token changed the attribute".to_owned(),
                ),
                Err(e) => finding(profile, t.name, path, Outcome::Refused, rv_text(&e)),
            }
        })
        .collect()
}

fn copy_path(s: &mut Scratch<'_>, profile: Profile, t: &Target) -> Finding {
    let path = "copy-extractable";
    match s.session.copy_object(
        t.handle,
        &[Attribute::Extractable(true), Attribute::Sensitive(false)],
    ) {
        Ok(h) => {
            s.keep(h);
            let detail = match readable_value(&s.session, h) {
                Ok(n) => format!("the copy gave {n} bytes of key material"),
                Err(why) => format!("the token made an extractable copy ({why})"),
            };
            finding(profile, t.name, path, Outcome::Possible, detail)
        }
        Err(e) => finding(profile, t.name, path, Outcome::Refused, rv_text(&e)),
    }
}

fn derive_paths(s: &mut Scratch<'_>, profile: Profile, t: &Target) -> Vec<Finding> {
    let zeros = [0u8; 32];
    let one = [0u8; 1];
    let mut out = vec![
        derive_out(
            s,
            profile,
            t.name,
            "extract-key-from-key",
            &Mechanism::ExtractKeyFromKey(ExtractParams::new(0)),
            t.handle,
            16,
        ),
        derive_out(
            s,
            profile,
            t.name,
            "xor-base-and-data",
            &Mechanism::XorBaseAndData(KeyDerivationStringData::new(&zeros)),
            t.handle,
            16,
        ),
        derive_out(
            s,
            profile,
            t.name,
            "concatenate-base-and-data",
            &Mechanism::ConcatenateBaseAndData(KeyDerivationStringData::new(&one)),
            t.handle,
            16,
        ),
    ];
    // The profiles' own KDFs, into a readable result.
    let hkdf = cryptoki::mechanism::hkdf::HkdfParams::new(
        MechanismType::SHA256_HMAC,
        Some(cryptoki::mechanism::hkdf::HkdfSalt::Null),
        Some(b"probe"),
    );
    out.push(derive_out(
        s,
        profile,
        t.name,
        "hkdf-into-extractable",
        &Mechanism::HkdfDerive(hkdf),
        t.handle,
        32,
    ));
    let cbc = cryptoki::mechanism::ekdf::AesCbcDeriveParams::new([0u8; 16], &zeros);
    out.push(derive_out(
        s,
        profile,
        t.name,
        "aes-cbc-encrypt-data-into-extractable",
        &Mechanism::AesCbcEncryptData(cbc),
        t.handle,
        32,
    ));
    out
}
