//! A client's role, and who a verified client certificate names.

use std::fmt;
use std::str::FromStr;

use sha2::Digest;
use x509_cert::der::oid::db::rfc4519;
use x509_cert::der::{Decode, Tag, Tagged};

use super::StationCaError;

/// A client's authority at the station, carried in its certificate as the
/// subject's organizationalUnitName (OU), exactly one OU, one of these words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs jobs.
    Operator,
    /// Imports and removes jobs, stops runs, manages the line.
    Supervisor,
    /// Reads and exports the audit log.
    Auditor,
    /// Reads counters for monitoring.
    Metrics,
}

/// The four words, for messages.
pub(super) const ROLE_WORDS: &str = "operator, supervisor, auditor, metrics";

impl Role {
    /// Every role, in this order.
    pub const ALL: [Role; 4] = [
        Role::Operator,
        Role::Supervisor,
        Role::Auditor,
        Role::Metrics,
    ];

    /// The word the certificate's OU carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Supervisor => "supervisor",
            Role::Auditor => "auditor",
            Role::Metrics => "metrics",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = StationCaError;

    /// Exactly one of the four words, lowercase: the same rule the
    /// certificate's OU is held to.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| StationCaError::NotARole {
                word: super::shortened(s),
            })
    }
}

/// Who a verified client certificate names (the service calls this after
/// rustls has checked the chain; it does not check the chain itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject in RFC 4514 form, e.g. "CN=alice,OU=operator,O=flashgate station".
    pub subject: String,
    /// The subject's one CN.
    pub common_name: String,
    /// The subject's one OU, as a role.
    pub role: Role,
    /// SHA-256 of the certificate DER.
    pub fingerprint: [u8; 32],
}

impl ClientIdentity {
    /// Reads the subject of a DER certificate: exactly one CN, exactly one
    /// OU, and that OU one of the role words. Nothing else is checked.
    pub fn from_der(cert_der: &[u8]) -> Result<Self, StationCaError> {
        let names = SubjectNames::from_der(cert_der)?;
        let role = Role::from_str(&names.unit).map_err(|_| StationCaError::UnknownRole {
            word: super::shortened(&names.unit),
        })?;
        Ok(Self {
            subject: names.subject,
            common_name: names.common_name,
            role,
            fingerprint: fingerprint(cert_der),
        })
    }

    /// "CN=alice,OU=operator,... (sha256:0123abcd…full hex)": what the audit
    /// log records as operator.
    pub fn audit_name(&self) -> String {
        format!(
            "{} (sha256:{})",
            self.subject,
            hex::encode(self.fingerprint)
        )
    }
}

/// The names a client certificate's subject carries: exactly one CN and
/// exactly one OU, both strings. Services map the OU to their own roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectNames {
    /// The subject in RFC 4514 form.
    pub subject: String,
    /// The one CN.
    pub common_name: String,
    /// The one OU.
    pub unit: String,
}

impl SubjectNames {
    /// Reads them from a DER certificate. Nothing else is checked.
    pub fn from_der(cert_der: &[u8]) -> Result<Self, StationCaError> {
        use x509_cert::der::ErrorKind;
        let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| {
            StationCaError::NotACertificate {
                detail: match e.kind() {
                    ErrorKind::TrailingData { .. } => "it has trailing bytes",
                    _ => "it does not decode",
                },
            }
        })?;
        let subject_name = cert.tbs_certificate().subject();
        let mut common_names = Vec::new();
        let mut units = Vec::new();
        for attr in subject_name.iter() {
            if attr.oid == rfc4519::COMMON_NAME {
                common_names.push(attribute_text(&attr.value));
            } else if attr.oid == rfc4519::ORGANIZATIONAL_UNIT_NAME {
                units.push(attribute_text(&attr.value));
            }
        }
        let common_name = match common_names.as_slice() {
            [] => return Err(StationCaError::NoCommonName),
            [one] => one.clone().ok_or(StationCaError::NotACertificate {
                detail: "its CN is not a string",
            })?,
            many => return Err(StationCaError::CommonNames { count: many.len() }),
        };
        let unit = match units.as_slice() {
            [] => return Err(StationCaError::NoRole),
            [Some(word)] => word.clone(),
            [None] => {
                return Err(StationCaError::UnknownRole {
                    word: "(not a string)".to_owned(),
                })
            }
            many => return Err(StationCaError::TwoRoles { count: many.len() }),
        };
        Ok(Self {
            subject: subject_name.to_string(),
            common_name,
            unit,
        })
    }
}

/// The text of a directory string (UTF8String, PrintableString or
/// IA5String); `None` for any other type.
fn attribute_text(value: &x509_cert::der::Any) -> Option<String> {
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
            std::str::from_utf8(value.value()).ok().map(str::to_owned)
        }
        _ => None,
    }
}

/// SHA-256 of a certificate's DER: how the deny-list and the audit log
/// name a client certificate.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(cert_der).into()
}

/// A fingerprint as people give it: 64 hex digits, either case, with or
/// without the colons `openssl x509 -fingerprint` prints, and an optional
/// `sha256:` prefix.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], StationCaError> {
    let t = text.trim();
    let t = t.strip_prefix("sha256:").unwrap_or(t);
    let t = t.strip_prefix("SHA256 Fingerprint=").unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    match hex::decode_to_slice(&digits, &mut out) {
        Ok(()) => Ok(out),
        Err(_) => Err(StationCaError::NotAFingerprint {
            text: super::shortened(text),
        }),
    }
}
