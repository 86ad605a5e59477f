//! X.509 certificates: the OEM device root and the per-job issuing CA.
//! Built with rcgen; every signature is made by an [`Es256Signer`], so the
//! same code signs with a key file or inside a token.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, PublicKeyData, SerialNumber, SigningKey,
};
use time::OffsetDateTime;

use super::OemError;
use crate::cose::{self, Es256Signer};

/// Adapts an [`Es256Signer`] to rcgen (X.509 wants DER-encoded ECDSA signatures).
pub struct RcgenSigner<'a> {
    signer: &'a dyn Es256Signer,
    public: [u8; 65],
}

impl<'a> RcgenSigner<'a> {
    /// Wraps a signer.
    pub fn new(signer: &'a dyn Es256Signer) -> Self {
        Self {
            public: signer.public_key(),
            signer,
        }
    }
}

impl std::fmt::Debug for RcgenSigner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RcgenSigner")
    }
}

impl PublicKeyData for RcgenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for RcgenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(msg).into();
        let sig = cose::sign_digest_low_s(self.signer, &digest)
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// A public key on its own, for the subject of a certificate.
#[derive(Debug)]
pub struct SubjectKey(pub [u8; 65]);

impl PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

fn at(unix: u64) -> Result<OffsetDateTime, OemError> {
    let secs =
        i64::try_from(unix).map_err(|_| OemError::Certificate("time out of range".to_owned()))?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| OemError::Certificate(e.to_string()))
}

fn random_serial() -> Result<SerialNumber, OemError> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| OemError::Certificate(e.to_string()))?;
    s[0] &= 0x7f; // positive
    s[0] |= 0x40; // and full length
    Ok(SerialNumber::from_slice(&s))
}

/// Subject key identifier: the first 20 bytes of SHA-256 over the
/// subjectPublicKey bits (RFC 7093, method 1).
pub fn key_identifier(public: &[u8; 65]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(public)[..20].to_vec()
}

fn root_params(
    name: &str,
    now: u64,
    root_public: &[u8; 65],
) -> Result<CertificateParams, OemError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, name);
    dn.push(DnType::CommonName, format!("{name} device root CA"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at(now.saturating_sub(60))?;
    // IEEE 802.1AR practice: a device root has no well-defined expiration,
    // so that no device certificate under it outlives its chain.
    p.not_after = at(flashgate_policy::NO_WELL_DEFINED_EXPIRATION)?;
    p.serial_number = Some(SerialNumber::from_slice(&[0x01]));
    p.use_authority_key_identifier_extension = false;
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(root_public));
    Ok(p)
}

/// The OEM's self-signed device-root CA certificate (DER).
pub fn oem_root_certificate(
    root: &dyn Es256Signer,
    name: &str,
    now: u64,
) -> Result<Vec<u8>, OemError> {
    let p = root_params(name, now, &root.public_key())?;
    let signer = RcgenSigner::new(root);
    let cert = p
        .self_signed(&signer)
        .map_err(|e| OemError::Certificate(e.to_string()))?;
    Ok(cert.der().to_vec())
}

/// What the per-job issuing CA certificate says.
#[derive(Debug, Clone, Copy)]
pub struct JobCa<'a> {
    /// The job CA's public key (uncompressed SEC1).
    pub public_key: &'a [u8; 65],
    /// Job id (hex), named in the subject.
    pub job_id_hex: &'a str,
    /// Product, the subject's OU.
    pub product: &'a str,
    /// Start of validity (the job's `not_before`).
    pub not_before: u64,
    /// End of validity: the latest notAfter a device certificate of the job
    /// can carry ([`flashgate_policy::Policy::latest_device_not_after`]), so
    /// that the chain lives as long as its leaves. When the CA may sign is
    /// limited by the job window, which the appliance enforces and the
    /// verifier checks, not by this date.
    pub not_after: u64,
}

/// The per-job issuing CA: pathLen 0, valid from the job's start for as
/// long as any device certificate it can issue, signed by the OEM root.
pub fn job_ca_certificate(
    root: &dyn Es256Signer,
    root_cert_der: &[u8],
    oem_name: &str,
    ca: &JobCa<'_>,
) -> Result<Vec<u8>, OemError> {
    let root_params = issuer_params(root_cert_der, &root.public_key())?;
    let root_until = certificate_not_after(root_cert_der).ok_or_else(|| {
        OemError::Certificate("the OEM root certificate has no validity".to_owned())
    })?;
    if root_until < ca.not_after {
        return Err(OemError::RootExpiresFirst {
            root_not_after: crate::display::time(root_until),
            device_not_after: crate::display::time(ca.not_after),
        });
    }
    let root_signer = RcgenSigner::new(root);
    let issuer = Issuer::new(root_params, &root_signer);
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, oem_name);
    dn.push(DnType::OrganizationalUnitName, ca.product);
    dn.push(
        DnType::CommonName,
        format!("flashgate job {}", ca.job_id_hex),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at(ca.not_before)?;
    p.not_after = at(ca.not_after)?;
    p.serial_number = Some(random_serial()?);
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(ca.public_key));
    let cert = p
        .signed_by(&SubjectKey(*ca.public_key), &issuer)
        .map_err(|e| OemError::Certificate(e.to_string()))?;
    Ok(cert.der().to_vec())
}

/// Issuer parameters (name, key identifier, key usage) taken from a CA
/// certificate, after checking that the certificate belongs to `public`.
pub fn issuer_params(ca_cert_der: &[u8], public: &[u8; 65]) -> Result<CertificateParams, OemError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject_of(ca_cert_der, public)?;
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(public));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// The subject of a CA certificate as an issuer name, after checking that
/// the certificate belongs to the expected key.
fn subject_of(cert_der: &[u8], public: &[u8; 65]) -> Result<DistinguishedName, OemError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad = |d: &str| OemError::Certificate(format!("the issuing CA certificate {d}"));
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|_| bad("is not DER X.509"))?;
    if cert.public_key().subject_public_key.data.as_ref() != public.as_slice() {
        return Err(bad("does not belong to the issuing key"));
    }
    let mut dn = DistinguishedName::new();
    for attr in cert.subject().iter_attributes() {
        let value = attr
            .as_str()
            .map_err(|_| bad("has a subject attribute that is not a string"))?;
        let oid = attr.attr_type().to_id_string();
        let ty = match oid.as_str() {
            "2.5.4.3" => DnType::CommonName,
            "2.5.4.10" => DnType::OrganizationName,
            "2.5.4.11" => DnType::OrganizationalUnitName,
            "2.5.4.6" => DnType::CountryName,
            _ => {
                return Err(bad(&format!(
                    "has a subject attribute ({oid}) flashgate does not reproduce"
                )))
            }
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

/// The uncompressed P-256 point in a DER certificate.
pub fn certificate_public_key(der: &[u8]) -> Option<[u8; 65]> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    cert.public_key()
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .ok()
}

/// The notAfter of a DER certificate, Unix seconds.
pub fn certificate_not_after(der: &[u8]) -> Option<u64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// PEM armour for DER.
pub fn der_to_pem(der: &[u8], label: &str) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// The DER inside the first PEM block with `label`.
pub fn pem_to_der(text: &str, label: &str) -> Option<Vec<u8>> {
    pem::parse_many(text)
        .ok()?
        .into_iter()
        .find(|p| p.tag() == label)
        .map(|p| p.contents().to_vec())
}
