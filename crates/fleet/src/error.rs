//! Why a fleet command failed. What the user gave (a bundle, a key, an
//! argument) is kept apart from the database and from bugs.

/// A fleet error. Each variant's text is one sentence saying what is wrong
/// and what to do.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // The fields are named for what they hold; the texts say the rest.
#[non_exhaustive]
pub enum FleetError {
    /// The database could not be reached or refused a statement.
    #[error("the fleet database: {0}")]
    Database(String),
    /// The schema is newer than this program.
    #[error("the fleet database has schema version {found}, newer than this flashgate knows ({known}); use a newer flashgate")]
    SchemaTooNew { found: i64, known: i64 },
    /// The schema is not there yet.
    #[error(
        "the fleet database has no flashgate schema; run `flashgate fleet init --db URL` first"
    )]
    NotInitialised,
    /// A bundle or file could not be read.
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    /// A file could not be written.
    #[error("cannot write {path}: {detail}")]
    Write { path: String, detail: String },
    /// The bundle could not be verified at all (not a bundle, bad manifest,
    /// wrong key).
    #[error("{path}: {detail}")]
    Bundle { path: String, detail: String },
    /// No trusted OEM key signed the bundle's job.
    #[error("{path}: the job manifest is not signed by any OEM key this fleet database trusts; add the key with --oem KEY.pub.pem if it is the OEM's")]
    UnknownOemKey { path: String },
    /// No OEM key is known yet.
    #[error("this fleet database trusts no OEM key yet; pass --oem KEY.pub.pem")]
    NoOemKey,
    /// An OEM key file is not a P-256 public key.
    #[error("{path} is not a P-256 public key in PEM: {detail}")]
    BadOemKey { path: String, detail: String },
    /// A known appliance came with another enrollment record.
    #[error("{path}: appliance {appliance} is pinned with enrollment fingerprint {pinned}, but this bundle carries {found}; the bundle was refused and nothing was stored; treat the appliance as compromised until its CM explains the change")]
    EnrollmentChanged {
        path: String,
        appliance: String,
        pinned: String,
        found: String,
    },
    /// An appliance is already recorded for another CM.
    #[error("appliance {appliance} is recorded for CM {recorded:?}, not {given:?}; leave out --cm or give {recorded:?}")]
    CmMismatch {
        appliance: String,
        recorded: String,
        given: String,
    },
    /// A lookup found nothing.
    #[error("{0}")]
    NotFound(String),
    /// An argument is not usable.
    #[error("{0}")]
    Usage(String),
    /// The stored data disagrees with itself: a bug or an edited database.
    #[error("the fleet database is inconsistent: {0}; restore it from a backup or re-ingest the bundles into a new one")]
    Inconsistent(String),
}

impl From<tokio_postgres::Error> for FleetError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's own message is the useful part.
        let detail = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(inner) = src {
                    s.push_str(": ");
                    s.push_str(&inner.to_string());
                    src = inner.source();
                }
                s
            }
        };
        Self::Database(detail)
    }
}

impl From<flashgate_tlog::Error> for FleetError {
    fn from(e: flashgate_tlog::Error) -> Self {
        Self::Inconsistent(format!("the stored tree: {e}"))
    }
}
