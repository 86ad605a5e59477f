//! What can go wrong with the station CA, its certificates and the deny-list.

use std::path::{Path, PathBuf};

use crate::hsm::HsmError;

use super::{role, CA_LABEL};

/// What can go wrong with the station CA, its certificates and the
/// deny-list. Hostile input (a certificate or word from outside), misuse
/// (the station's state or the caller's arguments) and token errors are
/// separate variants; [`StationCaError::is_hostile_input`] tells the first
/// apart. No message ever carries a key or a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StationCaError {
    // Hostile input.
    /// A client certificate that does not decode.
    #[error("the client certificate is refused: {detail}, so it is not DER X.509")]
    NotACertificate {
        /// What is wrong with it.
        detail: &'static str,
    },
    /// No CN in the subject.
    #[error("the client certificate is refused: its subject has no CN; a station client certificate names its holder there (`flashgate appliance issue-cert` makes them)")]
    NoCommonName,
    /// More than one CN.
    #[error("the client certificate is refused: its subject has {count} CNs, and a station client certificate has exactly one (`flashgate appliance issue-cert` makes them)")]
    CommonNames {
        /// How many.
        count: usize,
    },
    /// No OU, so no role.
    #[error("the client certificate is refused: its subject has no OU, so it names no role; issue one with `flashgate appliance issue-cert --role ROLE`")]
    NoRole,
    /// More than one OU.
    #[error("the client certificate is refused: its subject has {count} OUs, and a station client certificate has exactly one, its role; issue one with `flashgate appliance issue-cert --role ROLE`")]
    TwoRoles {
        /// How many.
        count: usize,
    },
    /// An OU that is not a role word.
    #[error("the client certificate is refused: its OU {word:?} is not a role (operator, supervisor, auditor or metrics); issue one with `flashgate appliance issue-cert --role ROLE`")]
    UnknownRole {
        /// The OU, shortened.
        word: String,
    },
    /// A word that is not a role.
    #[error("{word:?} is not a role; use one of {}", role::ROLE_WORDS)]
    NotARole {
        /// The word, shortened.
        word: String,
    },
    /// Text that is not a fingerprint.
    #[error("{text:?} is not a certificate fingerprint; give the 64 hex digits of the certificate's SHA-256 (`openssl x509 -noout -fingerprint -sha256 -in FILE.pem` prints them), or --cert FILE.pem")]
    NotAFingerprint {
        /// The text, shortened.
        text: String,
    },

    // Misuse.
    /// A name the certificates cannot carry.
    #[error("the name {name:?} {why}; use 1 to 64 printable characters without , + = \\ \" < > ; # or /")]
    BadName {
        /// The name, shortened.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A validity the CA cannot give.
    #[error("a certificate valid for {days} days {why}; choose a smaller --days")]
    BadDays {
        /// Days asked for.
        days: u32,
        /// Why not.
        why: String,
    },
    /// A server name that is neither an IP address nor a DNS name.
    #[error("{name:?} is neither an IP address nor a DNS name (letters, digits and hyphens in dot-separated labels); give the names clients connect to")]
    BadServerName {
        /// The name, shortened.
        name: String,
    },
    /// A server certificate without names.
    #[error("a server certificate needs at least one name (a DNS name or an IP address) that clients connect to")]
    NoServerName,
    /// Not a P-256 public key.
    #[error("the server public key is not an uncompressed P-256 point (65 bytes starting with 04); give the key the TLS server holds")]
    BadPublicKey,
    /// `ca init` on a station that has a CA.
    #[error("this station already has a client-certificate authority ({path}); issue client certificates with `flashgate appliance issue-cert`. To start over, use a fresh token and state directory")]
    CaExists {
        /// Its certificate.
        path: PathBuf,
    },
    /// No CA yet.
    #[error(
        "this station has no client-certificate authority yet; run flashgate appliance ca init"
    )]
    NoCa,
    /// The certificate is there, the key is not.
    #[error("the station CA certificate {path} is there but the token holds no key labelled {CA_LABEL} (another token?); put back the token it was made with, or move {path} away and run flashgate appliance ca init")]
    CaKeyMissing {
        /// The certificate.
        path: PathBuf,
    },
    /// The certificate and the key disagree, or one of them is not as made.
    #[error("the station CA is unusable: {why}; restore {path} from a backup of the state directory, or put back the token it was made with")]
    CaMismatch {
        /// The certificate.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A certificate this CA did not issue.
    #[error("this client certificate was not issued by the station CA {subject}; write it with the CA that issued it")]
    NotIssuedBy {
        /// The CA's subject.
        subject: String,
    },
    /// A file that would be overwritten.
    #[error("{path} already exists, and a client's files are never overwritten; choose another --out directory or --name, or move the old files away")]
    FileExists {
        /// The file.
        path: PathBuf,
    },
    /// A deny-list line that is not a fingerprint.
    #[error("{path} line {line}: {why}; every line is a certificate fingerprint (64 lowercase hex digits), blank, or a comment starting with #: fix that line")]
    DenyList {
        /// The deny-list.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// File I/O.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// To which file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },

    // Token and host.
    /// The token.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// A certificate could not be made or did not check after signing.
    #[error("the station CA could not make the certificate: {0}; check the token")]
    Signing(String),
    /// The host's random source failed.
    #[error("the host's random number generator failed: {0}")]
    Random(String),
    /// The PKCS#12 file could not be made.
    #[error("cannot make the PKCS#12 file: {0}")]
    Pkcs12(String),
}

impl StationCaError {
    /// True for a refusal of input from outside (a client certificate, a
    /// word or fingerprint given): the station is fine, the input is not.
    pub fn is_hostile_input(&self) -> bool {
        matches!(
            self,
            Self::NotACertificate { .. }
                | Self::NoCommonName
                | Self::CommonNames { .. }
                | Self::NoRole
                | Self::TwoRoles { .. }
                | Self::UnknownRole { .. }
                | Self::NotARole { .. }
                | Self::NotAFingerprint { .. }
        )
    }
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StationCaError + 'a {
    move |source| StationCaError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
