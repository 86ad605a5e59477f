//! Interim: the station CA's identity types until the core's land.
#![allow(missing_docs, clippy::all)]

use std::str::FromStr;
use x509_cert::der::{Decode, Encode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    Supervisor,
    Auditor,
    Metrics,
}
impl Role {
    pub const ALL: [Role; 4] = [
        Role::Operator,
        Role::Supervisor,
        Role::Auditor,
        Role::Metrics,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Supervisor => "supervisor",
            Role::Auditor => "auditor",
            Role::Metrics => "metrics",
        }
    }
}
impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub subject: String,
    pub common_name: String,
    pub role: Role,
    pub fingerprint: [u8; 32],
}
impl ClientIdentity {
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        use sha2::Digest;
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
        let subject = cert.tbs_certificate().subject().to_string();
        let mut role = None;
        let mut cn = String::new();
        for part in subject.split(',') {
            if let Some(v) = part.strip_prefix("OU=") {
                role = Some(v.parse::<Role>()?);
            }
            if let Some(v) = part.strip_prefix("CN=") {
                cn = v.to_owned();
            }
        }
        let _ = cert.to_der();
        Ok(Self {
            subject,
            common_name: cn,
            role: role.ok_or("no OU")?,
            fingerprint: sha2::Sha256::digest(der).into(),
        })
    }
    pub fn audit_name(&self) -> String {
        format!(
            "{} (sha256:{})",
            self.subject,
            hex::encode(self.fingerprint)
        )
    }
}
