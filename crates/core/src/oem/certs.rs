//! The OEM's certificates: the self-signed device root and the per-job
//! issuing CA (docs/FORMATS.md §3.8), built with the shared [`crate::x509`]
//! pieces and signed by an [`Es256Signer`] (a key file or a token key).

use x509_cert::der::oid::db::rfc4519;
use x509_cert::ext::pkix::KeyUsages;

use super::OemError;
use crate::cose::Es256Signer;
use crate::x509::{
    authority_key_identifier, basic_constraints, certificate_not_after, issuer_name, key_usage,
    sign, subject_key_identifier, utf8_name, Contents,
};

fn random_serial() -> Result<Vec<u8>, OemError> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| OemError::Certificate(e.to_string()))?;
    s[0] &= 0x7f; // positive
    s[0] |= 0x40; // and full length
    Ok(s.to_vec())
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
    let issuer = issuer_name(root_cert_der, &root_public).map_err(OemError::Certificate)?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::cose;
    use crate::identity::{
        check_device_certificate, CertificateError, DeviceCertificateIssuer,
        DeviceCertificateRequest,
    };
    use crate::x509::*;
    use p256::ecdsa::SigningKey;
    use x509_cert::certificate::Certificate;
    use x509_cert::der::oid::db::rfc5280;
    use x509_cert::der::oid::ObjectIdentifier;
    use x509_cert::der::{Decode, Encode};

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
        let message = |e: String| e;
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
