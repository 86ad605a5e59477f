//! The station's client-certificate authority: who may talk to the station
//! over the network, and with which role.
//!
//! The CA key is a P-256 signing key made in the HSM like the log key
//! (sensitive, non-extractable, unmodifiable, uncopyable, `CKM_ECDSA` only)
//! under [`CA_LABEL`]; its self-signed certificate is
//! `state_dir/station/ca.pem`. Client keys are made here, in zeroizing host
//! memory, and handed over as files ([`IssuedClient::write`]); the station
//! keeps no copy. The certificate's SHA-256 names the client in the audit
//! log ([`ClientIdentity::audit_name`]) and, once revoked, in the deny-list
//! ([`DenyList`]). A client's role
//! is its certificate subject's one OU ([`Role`]). docs/FORMATS.md §12 is
//! the certificate profile and the deny-list format.

mod deny_list;
mod error;
mod pkcs12;
mod role;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cryptoki::object::{ObjectClass, ObjectHandle};
use x509_cert::der::oid::db::{rfc4519, rfc5912};
use x509_cert::ext::pkix::{name::GeneralName, ExtendedKeyUsage, KeyUsages, SubjectAltName};
use zeroize::Zeroizing;

pub(crate) use deny_list::revoke;
pub use deny_list::{revoked_path, DenyList};
pub(crate) use error::io_err;
pub use error::StationCaError;
pub use pkcs12::{IssuedClient, WrittenClient};
pub use role::{fingerprint, parse_fingerprint, ClientIdentity, Role, SubjectNames};

use crate::appliance::{Appliance, ApplianceError};
use crate::hsm::{KeyUse, TokenKey};
use crate::x509;

/// `CKA_LABEL` (and `CKA_ID`) of the station CA key pair.
pub const CA_LABEL: &str = "flashgate-station-ca";
/// The subject organization of every station certificate.
pub const ORGANIZATION: &str = "flashgate station";
/// Validity of the CA certificate: ten years.
const CA_DAYS: u64 = 3652;
/// notBefore lies this far before the issuing time, for clocks slightly behind.
const BACKDATE: u64 = 60;
/// The longest name accepted, in characters.
const NAME_MAX: usize = 64;
/// Characters refused in names: RFC 4514 specials (so the subject string
/// reads back unambiguously) and `/` (the name is also a file name).
const NAME_FORBIDDEN: &[char] = &[',', '+', '=', '\\', '"', '<', '>', ';', '#', '/'];

/// Outside text in a message: at most 64 characters.
fn shortened(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The appliance's atomic write (temporary file, fsync, rename, fsync of
/// the directory), with its error as ours.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StationCaError> {
    crate::appliance::write_atomic(path, bytes).map_err(|e| match e {
        ApplianceError::Io {
            action,
            path,
            source,
        } => StationCaError::Io {
            action,
            path,
            source,
        },
        other => StationCaError::Io {
            action: "cannot write",
            path: path.to_owned(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

fn random(out: &mut [u8]) -> Result<(), StationCaError> {
    getrandom::fill(out).map_err(|e| StationCaError::Random(e.to_string()))
}

/// A fresh P-256 key made in host memory: its PKCS#8 DER (zeroized on
/// drop) and its public point. For a client certificate, and for the
/// station service's TLS key, which lives only as long as the process.
pub fn new_key() -> Result<(Zeroizing<Vec<u8>>, [u8; 65]), StationCaError> {
    use p256::pkcs8::EncodePrivateKey as _;
    let key = {
        let mut scalar = Zeroizing::new([0u8; 32]);
        loop {
            random(&mut *scalar)?;
            // Zero or above the order: draw again (about 2^-32 of draws).
            if let Ok(k) = p256::SecretKey::from_slice(&*scalar) {
                break k;
            }
        }
    };
    let public = crate::cose::sec1_uncompressed(&key.public_key());
    let der = key
        .to_pkcs8_der()
        .map_err(|_| StationCaError::Signing("cannot encode a new key".into()))?;
    Ok((Zeroizing::new(der.as_bytes().to_vec()), public))
}

/// A random positive serial of exactly 16 bytes.
fn serial() -> Result<Vec<u8>, StationCaError> {
    let mut s = [0u8; 16];
    random(&mut s)?;
    s[0] = (s[0] & 0x7f) | 0x40;
    Ok(s.to_vec())
}

/// PEM with LF line endings.
fn pem_lf(der: &[u8], label: &str) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// `state_dir/station`.
fn station_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("station")
}

/// Where the station CA certificate lives: `state_dir/station/ca.pem`.
pub fn ca_certificate_path(state_dir: &Path) -> PathBuf {
    station_dir(state_dir).join("ca.pem")
}

/// Checks a CA or client name: 1 to 64 printable characters, none of
/// [`NAME_FORBIDDEN`], no space at either end.
fn check_name(name: &str) -> Result<(), StationCaError> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.chars().count() > NAME_MAX {
        Some("is longer than 64 characters")
    } else if name.chars().any(char::is_control) {
        Some("has a control character")
    } else if name.chars().any(|c| c.is_whitespace() && c != ' ') {
        Some("has a space character other than a plain space")
    } else if name.chars().any(|c| NAME_FORBIDDEN.contains(&c)) {
        Some("has a character that is not allowed")
    } else if name.starts_with(' ') || name.ends_with(' ') {
        Some("starts or ends with a space")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(StationCaError::BadName {
            name: shortened(name),
            why,
        }),
    }
}

/// A DNS name as a dNSName SAN may carry: dot-separated labels of 1 to 63
/// letters, digits and hyphens, not starting or ending with a hyphen, 253
/// characters at most.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The station CA: its certificate (state_dir/station/ca.pem) and its key in the token.
pub struct StationCa {
    appliance: Arc<Appliance>,
    key: ObjectHandle,
    public: [u8; 65],
    certificate_der: Vec<u8>,
    subject: String,
    not_after: u64,
}

impl std::fmt::Debug for StationCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StationCa")
            .field("subject", &self.subject)
            .field("fingerprint", &hex::encode(self.fingerprint()))
            .field("not_after", &self.not_after)
            .field("key", &CA_LABEL)
            .finish_non_exhaustive()
    }
}

/// The one key pair labelled [`CA_LABEL`], if there is one.
fn find_pair(
    appliance: &Appliance,
    path: &Path,
) -> Result<Option<(ObjectHandle, ObjectHandle)>, StationCaError> {
    let token = &appliance.token;
    let mut public = Vec::new();
    let mut private = Vec::new();
    for h in token.find_by_label(CA_LABEL)? {
        match token.object_class(h)? {
            c if c == ObjectClass::PUBLIC_KEY => public.push(h),
            c if c == ObjectClass::PRIVATE_KEY => private.push(h),
            _ => {}
        }
    }
    match (public.as_slice(), private.as_slice()) {
        ([], []) => Ok(None),
        ([public], [private]) => Ok(Some((*public, *private))),
        _ => Err(StationCaError::CaMismatch {
            path: path.to_owned(),
            why: format!(
                "the token holds {} public and {} private keys labelled {CA_LABEL}, not one pair",
                public.len(),
                private.len()
            ),
        }),
    }
}

impl StationCa {
    /// Makes the CA key in the token and its self-signed certificate, named
    /// "CN=<name> station CA,O=flashgate station". Refused when the station
    /// has a CA certificate. A key without a certificate (a crash between
    /// the two, or a lost file) is certified anew: with the same name, the
    /// client certificates it issued before chain to the new certificate.
    pub(crate) fn init(appliance: Arc<Appliance>, name: &str) -> Result<Self, StationCaError> {
        check_name(name)?;
        let state_dir = appliance.config.state_dir.clone();
        let path = ca_certificate_path(&state_dir);
        if path.symlink_metadata().is_ok() {
            return Err(StationCaError::CaExists { path });
        }
        let (public, private, made) = match find_pair(&appliance, &path)? {
            Some((public, private)) => (public, private, false),
            None => {
                let pair =
                    appliance
                        .token
                        .generate_p256(CA_LABEL, CA_LABEL.as_bytes(), KeyUse::EcSign)?;
                (pair.public, pair.private, true)
            }
        };
        let certified = (|| {
            let point = appliance.token.ec_point(public)?;
            let der = ca_certificate(&appliance, private, &point, name)?;
            let dir = station_dir(&state_dir);
            std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
            write_atomic(&path, pem_lf(&der, "CERTIFICATE").as_bytes())?;
            Ok(())
        })();
        if let Err(e) = certified {
            if made {
                // Nothing half made stays behind: the next init starts afresh.
                let _ = appliance.token.destroy(private);
                let _ = appliance.token.destroy(public);
            }
            return Err(e);
        }
        Self::load(appliance)
    }

    /// Loads the CA: the key pair by its label, the certificate from the
    /// state directory, and checks that they belong together (the
    /// certificate names the token's public key and is self-signed by it,
    /// and the private key signs for that public key).
    pub(crate) fn load(appliance: Arc<Appliance>) -> Result<Self, StationCaError> {
        let path = ca_certificate_path(&appliance.config.state_dir);
        let pair = find_pair(&appliance, &path)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        let (public, private, text) = match (pair, text) {
            (None, None) => return Err(StationCaError::NoCa),
            (None, Some(_)) => return Err(StationCaError::CaKeyMissing { path }),
            (Some(_), None) => {
                return Err(StationCaError::CaMismatch {
                    path,
                    why: "the certificate is missing (run flashgate appliance ca init with the same --name to certify the key again)".to_owned(),
                })
            }
            (Some((public, private)), Some(text)) => (public, private, text),
        };
        let mismatch = |why: &str| StationCaError::CaMismatch {
            path: path.clone(),
            why: why.to_owned(),
        };
        let der = x509::pem_to_der(&text, "CERTIFICATE")
            .ok_or_else(|| mismatch("the certificate file holds no PEM certificate"))?;
        let point = appliance.token.ec_point(public)?;
        // Parsed strictly, names the token's key, self-signed by it.
        crate::identity::check_device_certificate(&der, &point, &point).map_err(|_| {
            mismatch("the certificate is not one the token's CA key signed for itself")
        })?;
        // The private key is the public key's other half.
        prove_pair(&appliance, private, &point).map_err(|e| match e {
            StationCaError::Hsm(e) => StationCaError::Hsm(e),
            _ => mismatch("the private key in the token does not belong to its public key"),
        })?;
        let cert = <x509_cert::Certificate as x509_cert::der::Decode>::from_der(&der)
            .map_err(|_| mismatch("the certificate does not decode"))?;
        let not_after = x509::certificate_not_after(&der)
            .ok_or_else(|| mismatch("the certificate has no validity"))?;
        Ok(Self {
            subject: cert.tbs_certificate().subject().to_string(),
            appliance,
            key: private,
            public: point,
            certificate_der: der,
            not_after,
        })
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> String {
        pem_lf(&self.certificate_der, "CERTIFICATE")
    }

    /// Its subject, RFC 4514.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// SHA-256 of the CA certificate's DER.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.certificate_der)
    }

    /// End of the CA certificate's validity, Unix seconds.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// A client certificate for `name` with `role`, valid `days` from now, for a
    /// key made here (P-256, in host memory only in Zeroizing buffers).
    pub fn issue_client(
        &self,
        role: Role,
        name: &str,
        days: u32,
    ) -> Result<IssuedClient, StationCaError> {
        check_name(name)?;
        let (not_before, not_after) = self.validity(days)?;
        let (key_pkcs8_der, public) = new_key()?;
        let contents = (|| -> Result<x509::Contents, String> {
            Ok(x509::Contents {
                serial: Vec::new(),
                not_before,
                not_after,
                subject: x509::utf8_name(&[
                    (rfc4519::ORGANIZATION_NAME, ORGANIZATION),
                    (rfc4519::ORGANIZATIONAL_UNIT_NAME, role.as_str()),
                    (rfc4519::COMMON_NAME, name),
                ])?,
                issuer: x509::issuer_name(&self.certificate_der, &self.public)?,
                subject_key: public,
                extensions: vec![
                    x509::authority_key_identifier(&self.public)?,
                    x509::key_usage(KeyUsages::DigitalSignature)?,
                    x509::extension(false, &ExtendedKeyUsage(vec![rfc5912::ID_KP_CLIENT_AUTH]))?,
                    x509::subject_key_identifier(&public)?,
                    x509::basic_constraints(false, None)?,
                ],
            })
        })()
        .map_err(StationCaError::Signing)?;
        let certificate_der = self.sign(contents, &public)?;
        let identity = ClientIdentity::from_der(&certificate_der)
            .map_err(|e| StationCaError::Signing(e.to_string()))?;
        if identity.role != role || identity.common_name != name {
            return Err(StationCaError::Signing(
                "the certificate does not read back as issued".into(),
            ));
        }
        Ok(IssuedClient {
            fingerprint: identity.fingerprint,
            certificate_der,
            key_pkcs8_der,
            identity,
            not_after,
        })
    }

    /// A TLS server certificate for `public_key` (SEC1 uncompressed, 65 bytes), SAN =
    /// each of `names` (an IP address parses as an iPAddress SAN, anything else dNSName),
    /// EKU serverAuth, valid `days`.
    pub fn issue_server(
        &self,
        names: &[String],
        public_key: &[u8; 65],
        days: u32,
    ) -> Result<Vec<u8>, StationCaError> {
        use x509_cert::der::asn1::{Ia5String, OctetString};
        if p256::PublicKey::from_sec1_bytes(public_key).is_err() || public_key[0] != 0x04 {
            return Err(StationCaError::BadPublicKey);
        }
        let first = names.first().ok_or(StationCaError::NoServerName)?;
        let mut san = Vec::with_capacity(names.len());
        for name in names {
            let bad = || StationCaError::BadServerName {
                name: shortened(name),
            };
            san.push(match name.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => GeneralName::IpAddress(
                    OctetString::new(ip.octets().to_vec()).map_err(|_| bad())?,
                ),
                Ok(IpAddr::V6(ip)) => GeneralName::IpAddress(
                    OctetString::new(ip.octets().to_vec()).map_err(|_| bad())?,
                ),
                Err(_) if is_dns_name(name) => {
                    GeneralName::DnsName(Ia5String::new(name.as_str()).map_err(|_| bad())?)
                }
                Err(_) => return Err(bad()),
            });
        }
        let (not_before, not_after) = self.validity(days)?;
        let contents = (|| -> Result<x509::Contents, String> {
            let mut subject = vec![(rfc4519::ORGANIZATION_NAME, ORGANIZATION)];
            // The CN is for people reading the certificate; clients match the SAN.
            if first.len() <= NAME_MAX {
                subject.push((rfc4519::COMMON_NAME, first.as_str()));
            }
            Ok(x509::Contents {
                serial: Vec::new(),
                not_before,
                not_after,
                subject: x509::utf8_name(&subject)?,
                issuer: x509::issuer_name(&self.certificate_der, &self.public)?,
                subject_key: *public_key,
                extensions: vec![
                    x509::authority_key_identifier(&self.public)?,
                    x509::extension(false, &SubjectAltName(san))?,
                    x509::key_usage(KeyUsages::DigitalSignature)?,
                    x509::extension(false, &ExtendedKeyUsage(vec![rfc5912::ID_KP_SERVER_AUTH]))?,
                    x509::subject_key_identifier(public_key)?,
                    x509::basic_constraints(false, None)?,
                ],
            })
        })()
        .map_err(StationCaError::Signing)?;
        self.sign(contents, public_key)
    }

    /// notBefore and notAfter of a certificate valid `days` from now, which
    /// must end before the CA does.
    fn validity(&self, days: u32) -> Result<(u64, u64), StationCaError> {
        let now = self.appliance.now();
        if days == 0 {
            return Err(StationCaError::BadDays {
                days,
                why: "is not valid at all (at least 1)".to_owned(),
            });
        }
        let not_after = now.saturating_add(u64::from(days) * 86_400);
        if not_after > self.not_after {
            return Err(StationCaError::BadDays {
                days,
                why: format!(
                    "would outlive the station CA, valid until {}",
                    crate::display::time(self.not_after)
                ),
            });
        }
        Ok((now.saturating_sub(BACKDATE), not_after))
    }

    /// Signs `contents` with a fresh serial in the token, then parses the
    /// certificate back and verifies it before anyone sees it.
    fn sign(
        &self,
        mut contents: x509::Contents,
        subject_key: &[u8; 65],
    ) -> Result<Vec<u8>, StationCaError> {
        contents.serial = serial()?;
        let signer = TokenKey::new(&self.appliance.token, self.key, &self.public)?;
        let der = x509::sign(contents, &signer).map_err(StationCaError::Signing)?;
        crate::identity::check_device_certificate(&der, &self.public, subject_key)
            .map_err(|e| StationCaError::Signing(e.to_string()))?;
        Ok(der)
    }

    /// Fails unless this CA signed `certificate_der`.
    fn check_issued(&self, certificate_der: &[u8]) -> Result<(), StationCaError> {
        let subject_key = x509::certificate_public_key(certificate_der);
        match subject_key
            .map(|k| crate::identity::check_device_certificate(certificate_der, &self.public, &k))
        {
            Some(Ok(())) => Ok(()),
            _ => Err(StationCaError::NotIssuedBy {
                subject: self.subject.clone(),
            }),
        }
    }
}

/// The self-signed CA certificate for the key pair (`private`, `public`).
fn ca_certificate(
    appliance: &Appliance,
    private: ObjectHandle,
    public: &[u8; 65],
    name: &str,
) -> Result<Vec<u8>, StationCaError> {
    let now = appliance.now();
    let serial = serial()?;
    let contents = (|| -> Result<x509::Contents, String> {
        let subject = x509::utf8_name(&[
            (rfc4519::ORGANIZATION_NAME, ORGANIZATION),
            (rfc4519::COMMON_NAME, &format!("{name} station CA")),
        ])?;
        Ok(x509::Contents {
            serial,
            not_before: now.saturating_sub(BACKDATE),
            not_after: now.saturating_add(CA_DAYS * 86_400),
            issuer: subject.clone(),
            subject,
            subject_key: *public,
            // Self-signed: no authorityKeyIdentifier.
            extensions: vec![
                x509::key_usage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)?,
                x509::subject_key_identifier(public)?,
                x509::basic_constraints(true, Some(0))?,
            ],
        })
    })()
    .map_err(StationCaError::Signing)?;
    let signer = TokenKey::new(&appliance.token, private, public)?;
    let der = x509::sign(contents, &signer).map_err(StationCaError::Signing)?;
    crate::identity::check_device_certificate(&der, public, public)
        .map_err(|e| StationCaError::Signing(e.to_string()))?;
    Ok(der)
}

/// Signs a fixed digest with `private` and verifies it with `public`.
fn prove_pair(
    appliance: &Appliance,
    private: ObjectHandle,
    public: &[u8; 65],
) -> Result<(), StationCaError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    use sha2::Digest as _;
    let digest: [u8; 32] = sha2::Sha256::digest(b"flashgate station CA key check").into();
    let raw = appliance.token.sign_prehash(private, &digest)?;
    let bad = || StationCaError::Signing("the key does not sign for its public key".into());
    let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| bad())?;
    p256::ecdsa::VerifyingKey::from_sec1_bytes(public)
        .map_err(|_| bad())?
        .verify_prehash(&digest, &sig)
        .map_err(|_| bad())
}
