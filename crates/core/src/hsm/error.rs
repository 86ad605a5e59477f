use std::path::PathBuf;

use cryptoki::mechanism::MechanismType;

/// What can go wrong with the token itself. Failures of a cryptographic step
/// on hostile input are mapped by the caller to the step that failed, because
/// tokens report those as `CKR_GENERAL_ERROR` or `CKR_DEVICE_ERROR`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The module file could not be loaded.
    #[error("cannot load the PKCS#11 module {path}: {detail}; check token.module in the appliance config")]
    ModuleLoad { path: PathBuf, detail: String },
    /// The module loaded but refused to initialise: usually its own
    /// configuration is missing or unreadable.
    #[error("the PKCS#11 module {path} could not start ({detail}); check the module's own configuration: Kryoptic reads the file named by KRYOPTIC_CONF{kryoptic}, SoftHSM2 the one named by SOFTHSM2_CONF", kryoptic = if std::env::var_os("KRYOPTIC_CONF").is_none() { " (not set in this environment)" } else { "" })]
    ModuleInit { path: PathBuf, detail: String },
    /// No initialised token carries the configured label.
    #[error("no token labelled '{label}' is present (tokens seen: {}); plug in the HSM or fix token.label in the appliance config", if seen.is_empty() { "none".to_owned() } else { seen.join(", ") })]
    TokenNotFound { label: String, seen: Vec<String> },
    /// The user PIN was refused.
    #[error("the token '{label}' refused the PIN; check the PIN file or variable named in the appliance config")]
    WrongPin { label: String },
    /// Too many wrong PINs.
    #[error(
        "the user PIN of token '{label}' is locked; the token's security officer must reset it"
    )]
    PinLocked { label: String },
    /// The PIN source could not be read.
    #[error("cannot read the token PIN: {0}")]
    PinSource(String),
    /// The token lacks a mechanism a profile needs.
    #[error("the token does not offer {mechanism} (0x{:x}), which the {profile} profile needs; use a token that supports it or a job built for another profile", Into::<u64>::into(*mechanism))]
    MissingMechanism {
        mechanism: MechanismType,
        profile: &'static str,
    },
    /// The token lacks a mechanism a key outside the profiles needs.
    #[error("the token does not offer {mechanism} (0x{:x}), which {purpose} needs; use a token that offers it", Into::<u64>::into(*mechanism))]
    NotOffered {
        mechanism: MechanismType,
        purpose: &'static str,
    },
    /// A token operation failed.
    #[error("the token failed to {step}: {source}")]
    Operation {
        step: &'static str,
        #[source]
        source: cryptoki::error::Error,
    },
    /// The token answered something a conforming token never would.
    #[error("unexpected token behaviour: {0}")]
    Unexpected(&'static str),
}

impl HsmError {
    pub(crate) fn op(step: &'static str, source: cryptoki::error::Error) -> Self {
        Self::Operation { step, source }
    }
}
