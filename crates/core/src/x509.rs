//! The X.509 pieces both sides use: the OEM's root and job CA
//! ([`crate::oem::certs`]) and the appliance's device certificates
//! ([`crate::identity`]) are built here, and the appliance reads the job CA
//! certificate back with these. Built with the RustCrypto `x509-cert`
//! builder, every extension added in the order docs/FORMATS.md gives; every
//! signature is made by an [`Es256Signer`], so the same code signs with a key
//! file or inside a token.

use p256::ecdsa::signature::{self, Keypair, Signer};
use x509_cert::builder::{profile::BuilderProfile, Builder, CertificateBuilder};
use x509_cert::certificate::{Certificate, TbsCertificate};
use x509_cert::der::asn1::{Any, OctetString};
use x509_cert::der::oid::db::{rfc4519, rfc5912};
use x509_cert::der::oid::{AssociatedOid, ObjectIdentifier};
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, SubjectPublicKeyInfoOwned,
    SubjectPublicKeyInfoRef,
};
use x509_cert::time::{Time, Validity};

use crate::cose::{self, Es256Signer};

/// Adapts an [`Es256Signer`] to the `x509-cert` builder: the TBSCertificate
/// is hashed with SHA-256, the digest signed (low S), and the signature
/// DER-encoded as an `ECDSA-Sig-Value`.
struct X509Signer<'a>(&'a dyn Es256Signer);

impl std::fmt::Debug for X509Signer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("X509Signer")
    }
}

impl Keypair for X509Signer<'_> {
    type VerifyingKey = p256::ecdsa::VerifyingKey;
    fn verifying_key(&self) -> Self::VerifyingKey {
        self.0.verifying_key()
    }
}

impl DynSignatureAlgorithmIdentifier for X509Signer<'_> {
    fn signature_algorithm_identifier(&self) -> x509_cert::spki::Result<AlgorithmIdentifierOwned> {
        Ok(AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        })
    }
}

impl Signer<p256::ecdsa::DerSignature> for X509Signer<'_> {
    fn try_sign(&self, tbs: &[u8]) -> Result<p256::ecdsa::DerSignature, signature::Error> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(tbs).into();
        let sig =
            cose::sign_digest_low_s(self.0, &digest).map_err(signature::Error::from_source)?;
        Ok(sig.to_der())
    }
}

/// What a certificate says; [`sign`] makes the DER of it.
#[derive(Debug)]
pub(crate) struct Contents {
    /// The serial number's bytes (a positive integer, big-endian).
    pub serial: Vec<u8>,
    /// Start of validity, Unix seconds.
    pub not_before: u64,
    /// End of validity, Unix seconds.
    pub not_after: u64,
    pub subject: Name,
    pub issuer: Name,
    /// The subject's public key (uncompressed SEC1).
    pub subject_key: [u8; 65],
    /// Every extension, in the order they are written.
    pub extensions: Vec<Extension>,
}

/// The builder profile of every flashgate certificate: the names it is
/// given and no extension of its own ([`Contents::extensions`] has them all).
struct Names {
    subject: Name,
    issuer: Name,
}

impl BuilderProfile for Names {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(Vec::new())
    }
}

/// Issues the X.509 v3 certificate `c`, signed with ecdsa-with-SHA256 by
/// `issuer_key`; returns its DER. Times are UTCTime up to 2049,
/// GeneralizedTime from 2050 (RFC 5280 §4.1.2.5).
pub(crate) fn sign(c: Contents, issuer_key: &dyn Es256Signer) -> Result<Vec<u8>, String> {
    let serial = SerialNumber::new(&c.serial).map_err(|e| format!("serial number: {e}"))?;
    let validity = Validity::new(time(c.not_before)?, time(c.not_after)?);
    let public = p256::PublicKey::from_sec1_bytes(&c.subject_key)
        .map_err(|_| "the subject public key is not a P-256 point".to_owned())?;
    let spki = SubjectPublicKeyInfoOwned::from_key(&public).map_err(|e| e.to_string())?;
    let names = Names {
        subject: c.subject,
        issuer: c.issuer,
    };
    let mut builder =
        CertificateBuilder::new(names, serial, validity, spki).map_err(|e| e.to_string())?;
    for e in c.extensions {
        builder.add_extension(e).map_err(|e| e.to_string())?;
    }
    let cert = builder
        .build::<_, p256::ecdsa::DerSignature>(&X509Signer(issuer_key))
        .map_err(|e| match e {
            x509_cert::builder::Error::Signature(s) => match std::error::Error::source(&s) {
                Some(cause) => format!("the issuer key cannot sign: {cause}"),
                None => format!("the issuer key cannot sign: {s}"),
            },
            other => other.to_string(),
        })?;
    cert.to_der().map_err(|e| e.to_string())
}

fn time(unix: u64) -> Result<Time, String> {
    x509_cert::der::asn1::GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(unix))
        .map(Time::GeneralTime)
        .map_err(|_| "time out of range".to_owned())
}

/// A name of single-attribute RDNs in the given order, each value a
/// UTF8String.
pub(crate) fn utf8_name(attributes: &[(ObjectIdentifier, &str)]) -> Result<Name, String> {
    let bad = |e: x509_cert::der::Error| format!("name: {e}");
    let mut rdns = RdnSequence::default();
    for (oid, value) in attributes {
        let value = Any::new(Tag::Utf8String, value.as_bytes()).map_err(bad)?;
        let atv = x509_cert::attr::AttributeTypeAndValue { oid: *oid, value };
        rdns.push(RelativeDistinguishedName::try_from(vec![atv]).map_err(bad)?);
    }
    Name::from_der(&rdns.to_der().map_err(bad)?).map_err(bad)
}

/// An extension with the given criticality.
pub(crate) fn extension<T: AssociatedOid + Encode>(
    critical: bool,
    value: &T,
) -> Result<Extension, String> {
    (critical, value)
        .to_extension(&Name::default(), &[])
        .map_err(|e| format!("extension {}: {e}", T::OID))
}

/// authorityKeyIdentifier (not critical): only `keyIdentifier = keyid(issuer key)`.
pub(crate) fn authority_key_identifier(issuer_public: &[u8; 65]) -> Result<Extension, String> {
    let key_identifier =
        OctetString::new(key_identifier(issuer_public)).map_err(|e| e.to_string())?;
    extension(
        false,
        &AuthorityKeyIdentifier {
            key_identifier: Some(key_identifier),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        },
    )
}

/// subjectKeyIdentifier (not critical): `keyid(subject key)`.
pub(crate) fn subject_key_identifier(public: &[u8; 65]) -> Result<Extension, String> {
    let id = OctetString::new(key_identifier(public)).map_err(|e| e.to_string())?;
    extension(false, &SubjectKeyIdentifier(id))
}

/// keyUsage (critical).
pub(crate) fn key_usage(
    usages: impl Into<x509_cert::der::flagset::FlagSet<KeyUsages>>,
) -> Result<Extension, String> {
    extension(true, &KeyUsage(usages.into()))
}

/// basicConstraints (critical).
pub(crate) fn basic_constraints(ca: bool, path_len: Option<u8>) -> Result<Extension, String> {
    extension(
        true,
        &BasicConstraints {
            ca,
            path_len_constraint: path_len,
        },
    )
}

/// Subject key identifier: the first 20 bytes of SHA-256 over the
/// subjectPublicKey bits (RFC 7093, method 1).
pub fn key_identifier(public: &[u8; 65]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(public)[..20].to_vec()
}

/// The subject of a CA certificate, to be the issuer of the certificates
/// it signs, after checking that the certificate belongs to `public`. The
/// name is copied as it is, attribute by attribute in its order; only CN,
/// O, OU and C with a string value are accepted.
pub fn issuer_name(ca_cert_der: &[u8], public: &[u8; 65]) -> Result<Name, String> {
    let bad = |d: &str| format!("the issuing CA certificate {d}");
    let cert = Certificate::from_der(ca_cert_der).map_err(|_| bad("is not DER X.509"))?;
    if subject_public_key(&cert) != Some(public.as_slice()) {
        return Err(bad("does not belong to the issuing key"));
    }
    let subject = cert.tbs_certificate().subject();
    for attr in subject.iter() {
        let is_string = matches!(
            attr.value.tag(),
            Tag::NumericString | Tag::PrintableString | Tag::Utf8String | Tag::Ia5String
        ) && std::str::from_utf8(attr.value.value()).is_ok();
        if !is_string {
            return Err(bad("has a subject attribute that is not a string"));
        }
        let reproduced = [
            rfc4519::COMMON_NAME,
            rfc4519::ORGANIZATION_NAME,
            rfc4519::ORGANIZATIONAL_UNIT_NAME,
            rfc4519::COUNTRY_NAME,
        ];
        if !reproduced.contains(&attr.oid) {
            return Err(bad(&format!(
                "has a subject attribute ({}) flashgate does not reproduce",
                attr.oid
            )));
        }
    }
    Ok(subject.clone())
}

/// The subjectPublicKey bits of a certificate.
pub(crate) fn subject_public_key(cert: &Certificate) -> Option<&[u8]> {
    cert.tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .as_bytes()
}

/// The uncompressed P-256 point in a DER certificate.
pub fn certificate_public_key(der: &[u8]) -> Option<[u8; 65]> {
    let cert = Certificate::from_der(der).ok()?;
    subject_public_key(&cert)?.try_into().ok()
}

/// The notAfter of a DER certificate, Unix seconds.
pub fn certificate_not_after(der: &[u8]) -> Option<u64> {
    let cert = Certificate::from_der(der).ok()?;
    Some(
        cert.tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            .as_secs(),
    )
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

/// A P-256 public key in PEM (SubjectPublicKeyInfo) form, as a SEC1 point.
pub fn public_key_from_pem(text: &str) -> Option<[u8; 65]> {
    use p256::pkcs8::DecodePublicKey;
    let pk = p256::PublicKey::from_public_key_pem(text).ok()?;
    Some(cose::sec1_uncompressed(&pk))
}
