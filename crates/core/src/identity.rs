//! Per-device identities: the secrets a unit receives and its certificate.
//!
//! Derivation (docs/FORMATS.md, "Per-device derivation"):
//! ```text
//! seed = HMAC-SHA256(device_master, "flashgate/device-seed/v1" || 0x00 || job_id (16) || u8(len(uid)) || uid)
//! okm  = HKDF-SHA256(salt = job_id, ikm = seed, info = "flashgate/device-key/v1" || 0x00 || name || 0x00 || type, L)
//! p256: L = 32, info gets one more byte, a counter from 0; the first output that is a valid scalar
//! aes128: L = 16; aes256 and hmac-sha256: L = 32
//! ```
//! The HMAC runs in the HSM (the master never leaves it); the OEM, who
//! keeps the master, can re-derive every key with [`derive_keys_from_master`].

use flashgate_policy::{KeySource, KeySpec, KeyType, Policy};
use hmac::{KeyInit as _, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Domain separation of the seed.
pub const SEED_CONTEXT: &[u8] = b"flashgate/device-seed/v1";
/// Domain separation of each key.
pub const KEY_CONTEXT: &[u8] = b"flashgate/device-key/v1";

/// The message the HSM MACs with the device master to get a device seed.
/// UIDs are at most 255 bytes (the pipeline refuses longer ones).
pub fn seed_message(job_id: &[u8; 16], uid: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SEED_CONTEXT.len() + 18 + uid.len());
    m.extend_from_slice(SEED_CONTEXT);
    m.push(0);
    m.extend_from_slice(job_id);
    m.push(u8::try_from(uid.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(&uid[..uid.len().min(255)]);
    m
}

/// One secret for a device, in zeroizing memory. `Debug` prints no value.
pub struct DeviceSecret {
    /// The policy key it is for.
    pub name: String,
    /// Its type.
    pub key_type: KeyType,
    /// The bytes to inject: a 32-byte P-256 scalar or the symmetric key.
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceSecret({} {}, {} bytes)",
            self.name,
            self.key_type,
            self.value.len()
        )
    }
}

/// Expands a seed into the derived key `spec`. P-256 scalars are the first
/// 32-byte HKDF output (info's last byte a counter 0, 1, 2, ...) that is a
/// valid scalar (1 <= k < n); a retry happens with probability about 2^-32.
pub fn expand_key(seed: &[u8; 32], job_id: &[u8; 16], spec: &KeySpec) -> DeviceSecret {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(job_id), seed);
    let mut info = Vec::new();
    info.extend_from_slice(KEY_CONTEXT);
    info.push(0);
    info.extend_from_slice(spec.name.as_str().as_bytes());
    info.push(0);
    info.extend_from_slice(spec.key_type.as_str().as_bytes());
    let value = match spec.key_type {
        KeyType::P256 => {
            info.push(0);
            let mut okm = Zeroizing::new(vec![0u8; 32]);
            for counter in 0..=u8::MAX {
                if let Some(last) = info.last_mut() {
                    *last = counter;
                }
                // 32 bytes: far below HKDF's limit.
                let _ = hk.expand(&info, &mut okm);
                if p256::SecretKey::from_slice(&okm).is_ok() {
                    break;
                }
            }
            okm
        }
        KeyType::Aes128 | KeyType::Aes256 | KeyType::HmacSha256 => {
            let mut okm = Zeroizing::new(vec![0u8; spec.key_type.secret_len()]);
            let _ = hk.expand(&info, &mut okm);
            okm
        }
    };
    DeviceSecret {
        name: spec.name.as_str().to_owned(),
        key_type: spec.key_type,
        value,
    }
}

/// Host-side derivation of every `derived` key of the policy from the device
/// master (the OEM's re-derivation; the appliance does the HMAC in the HSM).
pub fn derive_keys_from_master(
    master: &[u8; 32],
    job_id: &[u8; 16],
    uid: &[u8],
    policy: &Policy,
) -> Vec<DeviceSecret> {
    let seed = seed_from_master(master, job_id, uid);
    policy
        .keys()
        .iter()
        .filter(|k| k.source == KeySource::Derived)
        .map(|k| expand_key(&seed, job_id, k))
        .collect()
}

/// The device seed computed on the host.
#[allow(clippy::expect_used)]
pub fn seed_from_master(master: &[u8; 32], job_id: &[u8; 16], uid: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac =
        <hmac::Hmac<Sha256>>::new_from_slice(master).expect("HMAC takes keys of any length");
    mac.update(&seed_message(job_id, uid));
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// Why a device certificate could not be issued or failed its check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The certificate could not be built or signed (a template produced
    /// something invalid, or the job CA key did not sign).
    #[error("cannot build the device certificate: {0}")]
    Build(String),
    /// The issued certificate does not parse or verify (a bug or a failing HSM).
    #[error("the issued device certificate failed its own check: {0}")]
    Check(&'static str),
}

/// What the job CA needs to issue device certificates.
#[derive(Debug, Clone)]
pub struct DeviceCertificateIssuer {
    /// The job CA certificate's subject, as it is there.
    issuer: x509_cert::name::Name,
    ca_public: [u8; 65],
}

/// One device's certificate contents.
#[derive(Debug, Clone)]
pub struct DeviceCertificateRequest<'a> {
    /// The unit's serial number (policy format).
    pub serial: &'a str,
    /// The device UID.
    pub uid: &'a [u8],
    /// The device's identity public key (uncompressed SEC1).
    pub public_key: &'a [u8; 65],
    /// 16 random bytes from the HSM: the certificate serial.
    pub certificate_serial: [u8; 16],
    /// Issuance time (Unix seconds).
    pub now: u64,
}

impl DeviceCertificateIssuer {
    /// From the job CA certificate and its public key.
    pub fn new(job_ca_cert_der: &[u8]) -> Result<Self, CertificateError> {
        let ca_public = crate::x509::certificate_public_key(job_ca_cert_der).ok_or(
            CertificateError::Check("the job CA certificate has no P-256 key"),
        )?;
        let issuer = crate::x509::issuer_name(job_ca_cert_der, &ca_public)
            .map_err(|e| CertificateError::Build(e.to_string()))?;
        Ok(Self { issuer, ca_public })
    }

    /// Issues an X.509 v3 certificate from the policy template, signed by
    /// `ca_signer` (the job CA key in the HSM), then parses it back and
    /// verifies it before anyone uses it. docs/FORMATS.md §9.1 is the
    /// profile, field by field and extension by extension.
    pub fn issue(
        &self,
        ca_signer: &dyn crate::cose::Es256Signer,
        template: &flashgate_policy::CertificatePolicy,
        req: &DeviceCertificateRequest<'_>,
    ) -> Result<Vec<u8>, CertificateError> {
        use crate::x509 as certs;
        use x509_cert::der::asn1::Ia5String;
        use x509_cert::der::oid::db::{rfc4519, rfc5912};
        use x509_cert::ext::pkix::{
            name::GeneralName, ExtendedKeyUsage, KeyUsages, SubjectAltName,
        };
        let fields = template.render(req.serial, req.uid);
        let mut serial = req.certificate_serial;
        serial[0] = (serial[0] & 0x7f) | 0x40; // positive, full length
        let not_after = match template.validity {
            flashgate_policy::CertValidity::Days(d) => req
                .now
                .saturating_add(u64::from(d) * 86_400)
                .min(flashgate_policy::NO_WELL_DEFINED_EXPIRATION),
            flashgate_policy::CertValidity::NotAfter(t) => t,
        };
        let build = || -> Result<certs::Contents, String> {
            let mut subject = Vec::new();
            if let Some(o) = &fields.organization {
                subject.push((rfc4519::ORGANIZATION_NAME, o.as_str()));
            }
            if let Some(ou) = &fields.organizational_unit {
                subject.push((rfc4519::ORGANIZATIONAL_UNIT_NAME, ou.as_str()));
            }
            subject.push((rfc4519::COMMON_NAME, fields.common_name.as_str()));
            let mut extensions = vec![certs::authority_key_identifier(&self.ca_public)?];
            if let Some(uri) = &fields.san_uri {
                let ia5 = Ia5String::new(uri.as_str())
                    .map_err(|_| format!("the SAN URI '{uri}' is not ASCII"))?;
                extensions.push(certs::extension(
                    false,
                    &SubjectAltName(vec![GeneralName::UniformResourceIdentifier(ia5)]),
                )?);
            }
            extensions.push(certs::key_usage(KeyUsages::DigitalSignature)?);
            if !template.extended_key_usage.is_empty() {
                let usages = template
                    .extended_key_usage
                    .iter()
                    .map(|e| match e {
                        flashgate_policy::ExtendedKeyUsage::ServerAuth => {
                            rfc5912::ID_KP_SERVER_AUTH
                        }
                        flashgate_policy::ExtendedKeyUsage::ClientAuth => {
                            rfc5912::ID_KP_CLIENT_AUTH
                        }
                    })
                    .collect();
                extensions.push(certs::extension(false, &ExtendedKeyUsage(usages))?);
            }
            extensions.push(certs::subject_key_identifier(req.public_key)?);
            // CA:FALSE, written out (an empty SEQUENCE), critical.
            extensions.push(certs::basic_constraints(false, None)?);
            Ok(certs::Contents {
                serial: serial.to_vec(),
                not_before: req.now,
                not_after,
                subject: certs::utf8_name(&subject)?,
                issuer: self.issuer.clone(),
                subject_key: *req.public_key,
                extensions,
            })
        };
        let contents = build().map_err(CertificateError::Build)?;
        let der = certs::sign(contents, ca_signer).map_err(CertificateError::Build)?;
        check_device_certificate(&der, &self.ca_public, req.public_key)?;
        Ok(der)
    }
}

/// Parses a device certificate back (strict DER, no trailing bytes) and
/// checks that the job CA signed it and that it names `device_public`.
pub fn check_device_certificate(
    der: &[u8],
    ca_public: &[u8; 65],
    device_public: &[u8; 65],
) -> Result<(), CertificateError> {
    use p256::ecdsa::signature::Verifier;
    use x509_cert::der::{Decode, Encode, ErrorKind};
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| match e.kind() {
        ErrorKind::TrailingData { .. } => CertificateError::Check("it has trailing bytes"),
        _ => CertificateError::Check("it does not parse"),
    })?;
    if crate::x509::subject_public_key(&cert) != Some(device_public.as_slice()) {
        return Err(CertificateError::Check("it names another public key"));
    }
    // The decoder takes DER only, so the TBSCertificate encodes again to the
    // bytes that were signed; the whole certificate must too.
    if cert.to_der().ok().as_deref() != Some(der) {
        return Err(CertificateError::Check(
            "it does not encode back to its bytes",
        ));
    }
    let tbs = cert
        .tbs_certificate()
        .to_der()
        .map_err(|_| CertificateError::Check("it does not encode back to its bytes"))?;
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(ca_public)
        .map_err(|_| CertificateError::Check("bad CA key"))?;
    let sig = cert
        .signature()
        .as_bytes()
        .and_then(|b| p256::ecdsa::Signature::from_der(b).ok())
        .ok_or(CertificateError::Check("bad signature encoding"))?;
    vk.verify(&tbs, &sig)
        .map_err(|_| CertificateError::Check("the job CA signature does not verify"))
}
