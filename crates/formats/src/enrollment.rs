//! The enrollment record: who an appliance is, which keys it holds in its
//! HSM, which key-transport profiles that HSM can run and, per profile,
//! whether the HSM's PIN holder can pull job secrets out of it (the
//! [`crate::token`] data, measured at enrollment by `flashgate-core`'s
//! `hsm::probe`). Signed by the appliance's log key (a `COSE_Sign1`); the
//! OEM pins it.

use ciborium::value::Value;
use sha2::{Digest, Sha256};

use crate::cose::{self, CoseError, Es256Signer, SignerError, UnverifiedSign1};
use crate::package::manifest::Fields;
use crate::package::PackageError;
use crate::profile::{Profile, TransportRole, TRANSPORT_BITS};
use crate::token::{Extraction, ExtractionProbe, TokenDescription};

/// Content type of the enrollment `COSE_Sign1`.
pub const ENROLLMENT_CONTENT_TYPE: &str = "application/vnd.flashgate.enrollment+cbor";
const VERSION: u64 = 2;

/// An enrollment record's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// Appliance id: `fga-` and 16 hex digits of SHA-256(ka || log).
    pub appliance_id: String,
    /// Key-agreement public key (uncompressed SEC1).
    pub ka_public: [u8; 65],
    /// Log-signing public key (uncompressed SEC1).
    pub log_public: [u8; 65],
    /// The token.
    pub token: TokenDescription,
    /// Profiles the token can run, strongest first.
    pub profiles: Vec<Profile>,
    /// When it was enrolled (Unix seconds).
    pub created: u64,
    /// Per profile, whether the token's PIN holder can extract job secrets.
    pub pin_holder_extraction: Vec<(Profile, Extraction)>,
    /// Every extraction path tried at enrollment: path name and outcome text.
    pub extraction_paths: Vec<(String, String)>,
    /// The RSA transport public keys (record key 9), when the token runs an
    /// RSA-OAEP profile.
    pub transport: Option<TransportKeys>,
}

/// The appliance's RSA transport public keys, one per role, each as
/// SubjectPublicKeyInfo DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportKeys {
    /// Unwraps image content keys.
    pub image: Vec<u8>,
    /// Unwraps the device master.
    pub master: Vec<u8>,
    /// Unwraps the job CA key.
    pub ca: Vec<u8>,
}

impl TransportKeys {
    /// The key of `role`.
    pub fn get(&self, role: TransportRole) -> &[u8] {
        match role {
            TransportRole::Image => &self.image,
            TransportRole::Master => &self.master,
            TransportRole::Ca => &self.ca,
        }
    }

    /// Key id of the key of `role`.
    pub fn kid(&self, role: TransportRole) -> [u8; 16] {
        crate::package::encrypt::transport_kid(self.get(role))
    }

    // Map order is the deterministic one: "ca", "image", "master".
    const ORDER: [TransportRole; 3] = [
        TransportRole::Ca,
        TransportRole::Image,
        TransportRole::Master,
    ];

    fn encode(&self) -> Value {
        Value::Map(
            Self::ORDER
                .iter()
                .map(|r| {
                    (
                        Value::Text(r.name().to_owned()),
                        Value::Bytes(self.get(*r).to_vec()),
                    )
                })
                .collect(),
        )
    }

    fn decode(v: Value) -> Result<Self, EnrollmentError> {
        let bad = |d: &str| EnrollmentError::Malformed(format!("transport keys: {d}"));
        let Value::Map(entries) = v else {
            return Err(bad("not a map"));
        };
        let [ca, image, master] = <[(Value, Value); 3]>::try_from(entries)
            .map_err(|_| bad("there must be exactly the ca, image and master keys"))?;
        let mut keys = Vec::new();
        for ((k, v), role) in [ca, image, master].into_iter().zip(Self::ORDER) {
            let (Value::Text(name), Value::Bytes(der)) = (k, v) else {
                return Err(bad("an entry is not role name => SubjectPublicKeyInfo"));
            };
            if name != role.name() {
                return Err(bad(
                    "there must be exactly the ca, image and master keys, in that order",
                ));
            }
            use rsa::pkcs8::DecodePublicKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::PublicKey::from_public_key_der(&der)
                .map_err(|_| bad("a key is not an RSA SubjectPublicKeyInfo"))?;
            if key.size() * 8 != TRANSPORT_BITS as usize {
                return Err(bad("a key is not RSA-3072"));
            }
            keys.push(der);
        }
        let [ca, image, master] =
            <[Vec<u8>; 3]>::try_from(keys).map_err(|_| bad("three keys expected"))?;
        Ok(Self { image, master, ca })
    }
}

/// Why an enrollment record was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollmentError {
    /// Not a valid record.
    #[error("the enrollment record is damaged or was altered ({0}); ask the CM for the record again and compare its fingerprint")]
    Malformed(String),
    /// Signature failed.
    #[error("the enrollment record's signature does not verify; ask the CM for the record again and compare its fingerprint")]
    BadSignature,
    /// The record's fingerprint does not match the one pinned.
    #[error("the enrollment record has fingerprint {found}, not the pinned {expected}; get the record from the CM again")]
    FingerprintMismatch { expected: String, found: String },
}

impl From<CoseError> for EnrollmentError {
    fn from(e: CoseError) -> Self {
        match e {
            CoseError::BadSignature { .. } => Self::BadSignature,
            other => Self::Malformed(other.to_string()),
        }
    }
}

impl From<PackageError> for EnrollmentError {
    fn from(e: PackageError) -> Self {
        // The shared field reader speaks of packages; here only its detail
        // matters, and the advice is the enrollment's own.
        match e {
            PackageError::Malformed { detail } => Self::Malformed(detail),
            PackageError::NotCanonical { what } => {
                Self::Malformed(format!("the {what} is not in deterministic encoding"))
            }
            PackageError::UnsupportedVersion { found } => {
                Self::Malformed(format!("version {found} is not one this flashgate reads"))
            }
            other => Self::Malformed(other.to_string()),
        }
    }
}

/// The appliance id for a pair of public keys.
pub fn appliance_id(ka_public: &[u8; 65], log_public: &[u8; 65]) -> String {
    let mut h = Sha256::new();
    h.update(ka_public);
    h.update(log_public);
    format!("fga-{}", hex::encode(&h.finalize()[..8]))
}

/// Orders CBOR text keys as RFC 8949 deterministic encoding does (the
/// length is in the head, so shorter keys sort first).
fn canonical_text_order(a: &str, b: &str) -> std::cmp::Ordering {
    (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes()))
}

impl Enrollment {
    /// Sets the probe's result as this record's extraction claims.
    pub fn set_extraction(&mut self, probe: &ExtractionProbe) {
        self.pin_holder_extraction = probe.by_profile.clone();
        self.extraction_paths = probe
            .findings
            .iter()
            .map(|f| (f.path.clone(), f.outcome_text()))
            .collect();
    }

    /// What the record says about `profile`; `None` if it makes no claim.
    pub fn extraction(&self, profile: Profile) -> Option<Extraction> {
        self.pin_holder_extraction
            .iter()
            .find_map(|(p, e)| (*p == profile).then_some(*e))
    }

    /// Deterministic CBOR of the payload.
    pub fn encode(&self) -> Vec<u8> {
        let int = |i: u64| Value::Integer(i.into());
        let token = Value::Map(vec![
            (int(1), Value::Text(self.token.manufacturer.clone())),
            (int(2), Value::Text(self.token.model.clone())),
            (int(3), Value::Text(self.token.serial.clone())),
            (int(4), Value::Text(self.token.label.clone())),
        ]);
        let mut map = vec![
            (int(1), int(VERSION)),
            (int(2), Value::Text(self.appliance_id.clone())),
            (int(3), Value::Bytes(self.ka_public.to_vec())),
            (int(4), Value::Bytes(self.log_public.to_vec())),
            (int(5), token),
            (
                int(6),
                Value::Array(
                    self.profiles
                        .iter()
                        .map(|p| Value::Text(p.name().to_owned()))
                        .collect(),
                ),
            ),
            (int(7), int(self.created)),
            (int(8), Value::Map(self.extraction_map())),
        ];
        if let Some(t) = &self.transport {
            map.push((int(9), t.encode()));
        }
        map.push((
            int(10),
            Value::Array(
                self.extraction_paths
                    .iter()
                    .map(|(path, outcome)| {
                        Value::Array(vec![
                            Value::Text(path.clone()),
                            Value::Text(outcome.clone()),
                        ])
                    })
                    .collect(),
            ),
        ));
        cose::encode(&Value::Map(map))
    }

    fn extraction_map(&self) -> Vec<(Value, Value)> {
        let mut entries: Vec<(&str, &str)> = self
            .pin_holder_extraction
            .iter()
            .map(|(p, e)| (p.name(), e.name()))
            .collect();
        entries.sort_by(|a, b| canonical_text_order(a.0, b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        entries
            .into_iter()
            .map(|(p, e)| (Value::Text(p.to_owned()), Value::Text(e.to_owned())))
            .collect()
    }

    fn decode(bytes: &[u8]) -> Result<Self, EnrollmentError> {
        let value: Value = ciborium::de::from_reader(bytes)
            .map_err(|e| EnrollmentError::Malformed(cose::cbor_problem(&e)))?;
        let mut f = Fields::new(value, "enrollment record")?;
        if f.uint(1)? != VERSION {
            return Err(EnrollmentError::Malformed("unsupported version".to_owned()));
        }
        let id = f.text(2)?;
        let ka_public = f.fixed::<65>(3)?;
        let log_public = f.fixed::<65>(4)?;
        let mut t = Fields::new(f.take(5)?, "token description")?;
        let token = TokenDescription {
            manufacturer: t.text(1)?,
            model: t.text(2)?,
            serial: t.text(3)?,
            label: t.text(4)?,
        };
        t.finish()?;
        let Value::Array(raw) = f.take(6)? else {
            return Err(EnrollmentError::Malformed(
                "profiles is not an array".to_owned(),
            ));
        };
        // Unknown profiles (from a newer appliance) are skipped, not fatal.
        let profiles: Vec<Profile> = raw
            .iter()
            .filter_map(|v| match v {
                Value::Text(t) => Profile::from_name(t),
                _ => None,
            })
            .collect();
        let created = f.uint(7)?;
        let pin_holder_extraction = decode_extraction(f.take(8)?)?;
        let transport = f.optional(9).map(TransportKeys::decode).transpose()?;
        let extraction_paths = decode_paths(f.take(10)?)?;
        f.finish()?;
        if profiles.iter().any(|p| p.oaep_hash().is_some()) && transport.is_none() {
            return Err(EnrollmentError::Malformed(
                "an RSA-OAEP profile is listed without transport keys".to_owned(),
            ));
        }
        let e = Self {
            appliance_id: id,
            ka_public,
            log_public,
            token,
            profiles,
            created,
            pin_holder_extraction,
            extraction_paths,
            transport,
        };
        if e.appliance_id != appliance_id(&e.ka_public, &e.log_public) {
            return Err(EnrollmentError::Malformed(
                "the appliance id does not match its keys".to_owned(),
            ));
        }
        for k in [&e.ka_public, &e.log_public] {
            p256::PublicKey::from_sec1_bytes(k).map_err(|_| {
                EnrollmentError::Malformed("a public key is not a P-256 point".to_owned())
            })?;
        }
        Ok(e)
    }

    /// Signs the record with the log key.
    pub fn sign(&self, log_key: &dyn Es256Signer) -> Result<Vec<u8>, SignerError> {
        cose::sign1(log_key, ENROLLMENT_CONTENT_TYPE, self.encode())
    }

    /// Key id of the key-agreement key.
    pub fn ka_kid(&self) -> [u8; 16] {
        cose::key_id(&self.ka_public)
    }
}

fn malformed(what: &str) -> EnrollmentError {
    EnrollmentError::Malformed(what.to_owned())
}

/// Key 8: profile name -> "refused" | "possible", keys in deterministic order.
/// Profiles this build does not know are skipped, like in key 6.
fn decode_extraction(v: Value) -> Result<Vec<(Profile, Extraction)>, EnrollmentError> {
    let Value::Map(entries) = v else {
        return Err(malformed("pin_holder_extraction is not a map"));
    };
    let mut out = Vec::new();
    let mut last: Option<String> = None;
    for (k, v) in entries {
        let (Value::Text(name), Value::Text(verdict)) = (k, v) else {
            return Err(malformed(
                "pin_holder_extraction maps profile names to text",
            ));
        };
        if last
            .as_deref()
            .is_some_and(|l| canonical_text_order(l, &name) != std::cmp::Ordering::Less)
        {
            return Err(malformed(
                "pin_holder_extraction keys are repeated or out of order",
            ));
        }
        let extraction = Extraction::from_name(&verdict).ok_or_else(|| {
            malformed("pin_holder_extraction values are \"refused\" or \"possible\"")
        })?;
        if let Some(p) = Profile::from_name(&name) {
            out.push((p, extraction));
        }
        last = Some(name);
    }
    Ok(out)
}

/// Key 10: `[[path, outcome], ...]`, both text.
fn decode_paths(v: Value) -> Result<Vec<(String, String)>, EnrollmentError> {
    let Value::Array(items) = v else {
        return Err(malformed("the extraction paths are not an array"));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Array(pair) => match <[Value; 2]>::try_from(pair) {
                Ok([Value::Text(path), Value::Text(outcome)]) => Ok((path, outcome)),
                _ => Err(malformed("an extraction path is not [text, text]")),
            },
            _ => Err(malformed("an extraction path is not [text, text]")),
        })
        .collect()
}

/// An enrollment record whose self-signature verified (proof that its
/// maker holds the log key). Self-signed is not trusted: a job is built
/// only for a [`PinnedEnrollment`].
#[derive(Debug, Clone)]
pub struct VerifiedEnrollment {
    record: Enrollment,
    digest: [u8; 32],
}

/// How far an enrollment record is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentTrust {
    /// Its fingerprint matched the one pinned out of band.
    Pinned,
    /// Trusted on first use, by the OEM's explicit choice.
    FirstUse,
}

/// An enrollment record the OEM trusts: its fingerprint matched the one
/// pinned out of band, or the OEM chose to trust it on first use.
#[derive(Debug, Clone)]
pub struct PinnedEnrollment {
    verified: VerifiedEnrollment,
    trust: EnrollmentTrust,
}

impl PinnedEnrollment {
    /// How it came to be trusted.
    pub fn trust(&self) -> EnrollmentTrust {
        self.trust
    }
}

impl std::ops::Deref for PinnedEnrollment {
    type Target = VerifiedEnrollment;
    fn deref(&self) -> &VerifiedEnrollment {
        &self.verified
    }
}

impl VerifiedEnrollment {
    /// The contents.
    pub fn record(&self) -> &Enrollment {
        &self.record
    }

    /// SHA-256 of the signed bytes: the fingerprint the OEM pins.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Trusts the record because its fingerprint is `pinned` (hex, any case).
    pub fn pin(self, pinned: &str) -> Result<PinnedEnrollment, EnrollmentError> {
        if !pinned.eq_ignore_ascii_case(&self.fingerprint()) {
            return Err(EnrollmentError::FingerprintMismatch {
                expected: pinned.to_owned(),
                found: self.fingerprint(),
            });
        }
        Ok(PinnedEnrollment {
            verified: self,
            trust: EnrollmentTrust::Pinned,
        })
    }

    /// Trusts the record without a pinned fingerprint (development, or a
    /// first contact whose fingerprint is compared afterwards).
    pub fn trust_on_first_use(self) -> PinnedEnrollment {
        PinnedEnrollment {
            verified: self,
            trust: EnrollmentTrust::FirstUse,
        }
    }

    /// Parses a signed record and verifies it with the log key inside it
    /// (proof of possession). Trust comes from pinning the fingerprint.
    pub fn parse(bytes: &[u8]) -> Result<Self, EnrollmentError> {
        let sign1 = UnverifiedSign1::parse(bytes, "enrollment record")?;
        if sign1.content_type() != Some(ENROLLMENT_CONTENT_TYPE) {
            return Err(EnrollmentError::Malformed(
                "this is not an enrollment record".to_owned(),
            ));
        }
        let record = Enrollment::decode(sign1.payload_unverified())?;
        if sign1.key_id() != cose::key_id(&record.log_public) {
            return Err(EnrollmentError::BadSignature);
        }
        sign1.verify(&record.log_public)?;
        Ok(Self {
            record,
            digest: Sha256::digest(bytes).into(),
        })
    }

    /// The fingerprint as hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.digest)
    }
}
