//! X.509 certificates: the OEM device root and the per-job issuing CA, and
//! the pieces the device certificates ([`crate::identity`]) share with them.
//! Built with the RustCrypto `x509-cert` builder, every extension added in
//! the order docs/FORMATS.md gives; every signature is made by an
//! [`Es256Signer`], so the same code signs with a key file or inside a token.

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

use super::OemError;
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

fn random_serial() -> Result<Vec<u8>, OemError> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| OemError::Certificate(e.to_string()))?;
    s[0] &= 0x7f; // positive
    s[0] |= 0x40; // and full length
    Ok(s.to_vec())
}

/// Subject key identifier: the first 20 bytes of SHA-256 over the
/// subjectPublicKey bits (RFC 7093, method 1).
pub fn key_identifier(public: &[u8; 65]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(public)[..20].to_vec()
}

/// The OEM's self-signed device-root CA certificate (DER).
pub fn oem_root_certificate(
    root: &dyn Es256Signer,
    name: &str,
    now: u64,
) -> Result<Vec<u8>, OemError> {
    let public = root.public_key();
    let build = || -> Result<Contents, String> {
        let subject = utf8_name(&[
            (rfc4519::ORGANIZATION_NAME, name),
            (rfc4519::COMMON_NAME, &format!("{name} device root CA")),
        ])?;
        Ok(Contents {
            serial: vec![0x01],
            not_before: now.saturating_sub(60),
            // IEEE 802.1AR practice: a device root has no well-defined
            // expiration, so that no device certificate under it outlives
            // its chain.
            not_after: flashgate_policy::NO_WELL_DEFINED_EXPIRATION,
            issuer: subject.clone(),
            subject,
            subject_key: public,
            // Self-signed: no authorityKeyIdentifier.
            extensions: vec![
                key_usage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)?,
                subject_key_identifier(&public)?,
                basic_constraints(true, None)?,
            ],
        })
    };
    let contents = build().map_err(OemError::Certificate)?;
    sign(contents, root).map_err(OemError::Certificate)
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
    let root_public = root.public_key();
    let issuer = issuer_name(root_cert_der, &root_public)?;
    let root_until = certificate_not_after(root_cert_der).ok_or_else(|| {
        OemError::Certificate("the OEM root certificate has no validity".to_owned())
    })?;
    if root_until < ca.not_after {
        return Err(OemError::RootExpiresFirst {
            root_not_after: crate::display::time(root_until),
            device_not_after: crate::display::time(ca.not_after),
        });
    }
    let serial = random_serial()?;
    let build = || -> Result<Contents, String> {
        Ok(Contents {
            serial,
            not_before: ca.not_before,
            not_after: ca.not_after,
            subject: utf8_name(&[
                (rfc4519::ORGANIZATION_NAME, oem_name),
                (rfc4519::ORGANIZATIONAL_UNIT_NAME, ca.product),
                (
                    rfc4519::COMMON_NAME,
                    &format!("flashgate job {}", ca.job_id_hex),
                ),
            ])?,
            issuer,
            subject_key: *ca.public_key,
            extensions: vec![
                authority_key_identifier(&root_public)?,
                key_usage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)?,
                subject_key_identifier(ca.public_key)?,
                basic_constraints(true, Some(0))?,
            ],
        })
    };
    let contents = build().map_err(OemError::Certificate)?;
    sign(contents, root).map_err(OemError::Certificate)
}

/// The subject of a CA certificate, to be the issuer of the certificates
/// it signs, after checking that the certificate belongs to `public`. The
/// name is copied as it is, attribute by attribute in its order; only CN,
/// O, OU and C with a string value are accepted.
pub fn issuer_name(ca_cert_der: &[u8], public: &[u8; 65]) -> Result<Name, OemError> {
    let bad = |d: &str| OemError::Certificate(format!("the issuing CA certificate {d}"));
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::identity::{
        check_device_certificate, CertificateError, DeviceCertificateIssuer,
        DeviceCertificateRequest,
    };
    use p256::ecdsa::SigningKey;
    use x509_cert::der::oid::db::rfc5280;

    const NOW: u64 = 1_790_000_000;
    const JOB: &str = "532ed130a2de2b439fec3c14454d3084";
    const POLICY: &str = include_str!("../../../../policies/sim-secure-mcu.toml");
    /// The identity key of the worked example, docs/FORMATS.md §8.3.
    const DEVICE_SCALAR: &str = "56acfb1fbaa6c82ae51dd71dee8d2e86840fd295bed31f8b16567b6b72f851c2";

    fn key(scalar: &[u8]) -> SigningKey {
        SigningKey::from_slice(scalar).unwrap()
    }

    fn sha256_hex(b: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    }

    struct Chain {
        root: Vec<u8>,
        ca: Vec<u8>,
        device: Vec<u8>,
        policy: flashgate_policy::Policy,
    }

    /// An OEM root, a job CA and the device certificate of unit 1 with the
    /// §8.3 identity key, all from fixed inputs; key files sign with RFC
    /// 6979 nonces, so only the job CA's random serial (and so its
    /// signature) changes from one call to the next.
    fn chain(policy_text: &str) -> Chain {
        let root = key(&[0x21; 32]);
        let ca = key(&[0x31; 32]);
        let device = key(&hex::decode(DEVICE_SCALAR).unwrap());
        let policy = flashgate_policy::Policy::from_toml_str(policy_text).unwrap();
        let root_der = oem_root_certificate(&root, "Acme Corp", NOW).unwrap();
        let ca_public = cose::sec1_of(ca.verifying_key());
        let ca_der = job_ca_certificate(
            &root,
            &root_der,
            "Acme Corp",
            &JobCa {
                public_key: &ca_public,
                job_id_hex: JOB,
                product: policy.job().product.as_str(),
                not_before: policy.job().not_before,
                not_after: policy.latest_device_not_after(),
            },
        )
        .unwrap();
        let device_der = DeviceCertificateIssuer::new(&ca_der)
            .unwrap()
            .issue(
                &ca,
                policy.certificate(),
                &DeviceCertificateRequest {
                    serial: "ACME-TH-000001",
                    uid: &hex::decode("0102030405060708090a0b0c").unwrap(),
                    public_key: &cose::sec1_of(device.verifying_key()),
                    certificate_serial: [0xca; 16],
                    now: policy.job().not_before + 3600,
                },
            )
            .unwrap();
        Chain {
            root: root_der,
            ca: ca_der,
            device: device_der,
            policy,
        }
    }

    /// (extnID, critical, extnValue) of each extension, in order.
    fn extensions(der: &[u8]) -> Vec<(ObjectIdentifier, bool, Vec<u8>)> {
        let cert = Certificate::from_der(der).unwrap();
        cert.tbs_certificate()
            .extensions()
            .unwrap()
            .iter()
            .map(|e| (e.extn_id, e.critical, e.extn_value.as_bytes().to_vec()))
            .collect()
    }

    fn keyid_of(k: &SigningKey) -> Vec<u8> {
        key_identifier(&cose::sec1_of(k.verifying_key()))
    }

    #[test]
    fn root_and_device_certificates_are_the_bytes_flashgate_has_always_made() {
        // SHA-256 of the DER the previous certificate builder made from the
        // same inputs: every byte, the signatures included, is unchanged.
        let c = chain(POLICY);
        assert_eq!(
            sha256_hex(&c.root),
            "5fcb0067b988ba758c362a2708327bed45fc2ec9410e4ab94389405e9845839f"
        );
        assert_eq!(
            sha256_hex(&c.device),
            "1ceffc97e666011907a2c646eadef5bcc26a2d1ff595b28e1a6b93d92d7003ef"
        );
        // With an OU, server-auth before client-auth and a fixed notAfter in 9999.
        let c = chain(
            &POLICY
                .replace(
                    "subject_organization = \"Acme Corp\"",
                    "subject_organization = \"Acme Corp\"\nsubject_organizational_unit = \"Line {serial} ü\"",
                )
                .replace("validity_days = 7300", "not_after = \"9999-12-31T23:59:59Z\"")
                .replace("[\"client-auth\"]", "[\"server-auth\", \"client-auth\"]"),
        );
        assert_eq!(
            sha256_hex(&c.device),
            "9656b124b1bc32e9f6deb5e44c388780463d944c4e60e2b1c97e5ba1e1fc5ee3"
        );
        // Only a CN: no extendedKeyUsage, no subjectAltName.
        let c = chain(
            &POLICY
                .replace("subject_organization = \"Acme Corp\"\n", "")
                .replace("extended_key_usage = [\"client-auth\"]\n", "")
                .replace("san_uri = \"urn:acme:device:{uid}\"\n", ""),
        );
        assert_eq!(
            sha256_hex(&c.device),
            "2195fc1230ce713b5648dca07d296db513825589c36d14edbe058e6b57b34030"
        );
    }

    #[test]
    fn the_job_ca_certificate_is_as_documented() {
        let c = chain(POLICY);
        let root = Certificate::from_der(&c.root).unwrap();
        let ca = Certificate::from_der(&c.ca).unwrap();
        let tbs = ca.tbs_certificate();
        let serial = tbs.serial_number().as_bytes();
        assert_eq!(serial.len(), 16);
        assert!((0x40..=0x7f).contains(&serial[0]), "{serial:02x?}");
        assert_eq!(
            tbs.issuer().to_der().unwrap(),
            root.tbs_certificate().subject().to_der().unwrap()
        );
        assert_eq!(
            tbs.subject().to_string(),
            format!("CN=flashgate job {JOB},OU=acme-thermo,O=Acme Corp")
        );
        assert_eq!(
            tbs.validity().not_before.to_unix_duration().as_secs(),
            c.policy.job().not_before
        );
        assert_eq!(
            certificate_not_after(&c.ca),
            Some(c.policy.latest_device_not_after())
        );
        let mut aki = vec![0x30, 0x16, 0x80, 0x14];
        aki.extend(keyid_of(&key(&[0x21; 32])));
        let mut ski = vec![0x04, 0x14];
        ski.extend(keyid_of(&key(&[0x31; 32])));
        assert_eq!(
            extensions(&c.ca),
            vec![
                (rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER, false, aki),
                (rfc5280::ID_CE_KEY_USAGE, true, vec![0x03, 0x02, 0x01, 0x06]),
                (rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER, false, ski),
                (
                    rfc5280::ID_CE_BASIC_CONSTRAINTS,
                    true,
                    vec![0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00]
                ),
            ]
        );
        // Signed by the root, low S.
        use p256::ecdsa::signature::Verifier;
        let sig = p256::ecdsa::Signature::from_der(ca.signature().as_bytes().unwrap()).unwrap();
        assert!(sig.normalize_s() == sig);
        key(&[0x21; 32])
            .verifying_key()
            .verify(&tbs.to_der().unwrap(), &sig)
            .unwrap();
    }

    #[test]
    fn the_device_certificate_names_its_key_by_the_documented_identifier() {
        let c = chain(POLICY);
        let ext = extensions(&c.device);
        let ski = ext
            .iter()
            .find(|e| e.0 == rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
            .unwrap();
        assert_eq!(
            hex::encode(&ski.2),
            "04140809e810c37ad5ec807b2e19cf818db54745f082"
        );
        let order: Vec<_> = ext.iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(
            order,
            vec![
                (rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER, false),
                (rfc5280::ID_CE_SUBJECT_ALT_NAME, false),
                (rfc5280::ID_CE_KEY_USAGE, true),
                (rfc5280::ID_CE_EXT_KEY_USAGE, false),
                (rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER, false),
                (rfc5280::ID_CE_BASIC_CONSTRAINTS, true),
            ]
        );
    }

    #[test]
    fn a_device_certificate_is_checked_strictly_before_use() {
        let c = chain(POLICY);
        let ca_public = certificate_public_key(&c.ca).unwrap();
        let device = cose::sec1_of(key(&hex::decode(DEVICE_SCALAR).unwrap()).verifying_key());
        check_device_certificate(&c.device, &ca_public, &device).unwrap();
        let check =
            |der: &[u8], device: &[u8; 65]| match check_device_certificate(der, &ca_public, device)
            {
                Err(CertificateError::Check(why)) => why,
                other => panic!("{other:?}"),
            };
        let mut trailing = c.device.clone();
        trailing.push(0);
        assert_eq!(check(&trailing, &device), "it has trailing bytes");
        assert_eq!(
            check(&c.device[..c.device.len() - 1], &device),
            "it does not parse"
        );
        let other = cose::sec1_of(key(&[0x41; 32]).verifying_key());
        assert_eq!(check(&c.device, &other), "it names another public key");
        // notAfter 461027010000Z made 461027110000Z: the job CA did not sign that.
        let at = c
            .device
            .windows(13)
            .position(|w| w == b"461027010000Z")
            .unwrap();
        let mut altered = c.device.clone();
        altered[at + 6] = b'1';
        assert_eq!(
            check(&altered, &device),
            "the job CA signature does not verify"
        );
    }

    #[test]
    fn an_issuer_is_reproduced_only_from_its_own_certificate_and_known_attributes() {
        let root = key(&[0x21; 32]);
        let root_public = cose::sec1_of(root.verifying_key());
        let c = chain(POLICY);
        let message = |e: OemError| match e {
            OemError::Certificate(m) => m,
            other => panic!("{other:?}"),
        };
        let wrong = cose::sec1_of(key(&[0x41; 32]).verifying_key());
        assert!(message(issuer_name(&c.root, &wrong).unwrap_err())
            .contains("does not belong to the issuing key"));
        let mut trailing = c.root.clone();
        trailing.push(0);
        assert!(
            message(issuer_name(&trailing, &root_public).unwrap_err()).contains("is not DER X.509")
        );
        // A root whose subject has a locality: refused, not silently dropped.
        let with_locality = sign(
            Contents {
                serial: vec![1],
                not_before: NOW,
                not_after: flashgate_policy::NO_WELL_DEFINED_EXPIRATION,
                subject: utf8_name(&[
                    (rfc4519::ORGANIZATION_NAME, "Acme Corp"),
                    (rfc4519::LOCALITY_NAME, "Basel"),
                ])
                .unwrap(),
                issuer: utf8_name(&[(rfc4519::ORGANIZATION_NAME, "Acme Corp")]).unwrap(),
                subject_key: root_public,
                extensions: vec![],
            },
            &root,
        )
        .unwrap();
        assert!(
            message(issuer_name(&with_locality, &root_public).unwrap_err())
                .contains("(2.5.4.7) flashgate does not reproduce")
        );
    }

    #[test]
    fn a_job_ca_never_outlives_its_root() {
        let root = key(&[0x21; 32]);
        let root_public = cose::sec1_of(root.verifying_key());
        let short_root = sign(
            Contents {
                serial: vec![1],
                not_before: NOW,
                not_after: NOW + 86_400,
                subject: utf8_name(&[(rfc4519::ORGANIZATION_NAME, "Acme Corp")]).unwrap(),
                issuer: utf8_name(&[(rfc4519::ORGANIZATION_NAME, "Acme Corp")]).unwrap(),
                subject_key: root_public,
                extensions: vec![],
            },
            &root,
        )
        .unwrap();
        let ca_public = cose::sec1_of(key(&[0x31; 32]).verifying_key());
        let job_ca = |not_after| JobCa {
            public_key: &ca_public,
            job_id_hex: JOB,
            product: "acme-thermo",
            not_before: NOW,
            not_after,
        };
        job_ca_certificate(&root, &short_root, "Acme Corp", &job_ca(NOW + 86_400)).unwrap();
        assert!(matches!(
            job_ca_certificate(&root, &short_root, "Acme Corp", &job_ca(NOW + 86_401)),
            Err(OemError::RootExpiresFirst { .. })
        ));
    }
}
