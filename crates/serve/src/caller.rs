//! Who is calling: taken from the client certificate of the TLS session,
//! never from a request field.

use flashgate_core::station_ca::{ClientIdentity, Role};

/// The authenticated client of one connection.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What the certificate names.
    pub identity: ClientIdentity,
}

impl Caller {
    /// The role the certificate carries.
    pub fn role(&self) -> Role {
        self.identity.role
    }

    /// The operator as the audit log records it: subject and fingerprint.
    pub fn audit_name(&self) -> String {
        self.identity.audit_name()
    }
}
