use std::path::PathBuf;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::HsmError;

/// Which token to use and how to get its PIN. PINs never come from the
/// command line: only from a file (mode 0600 recommended) or an environment
/// variable.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// `CKA_LABEL` of the token.
    pub label: String,
    /// Where the user PIN comes from.
    #[serde(flatten)]
    pub pin: PinSource,
}

/// Where the user PIN is read from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub enum PinSource {
    /// A file whose first line is the PIN.
    #[serde(rename = "pin_file")]
    File(PathBuf),
    /// An environment variable holding the PIN.
    #[serde(rename = "pin_env")]
    Env(String),
}

impl PinSource {
    pub(crate) fn read(&self) -> Result<Zeroizing<String>, HsmError> {
        let raw = match self {
            Self::File(path) => Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                HsmError::PinSource(format!("cannot read the PIN file {}: {e}", path.display()))
            })?),
            Self::Env(name) => Zeroizing::new(std::env::var(name).map_err(|_| {
                HsmError::PinSource(format!("the environment variable {name} is not set"))
            })?),
        };
        let pin = Zeroizing::new(raw.lines().next().unwrap_or("").trim_end().to_owned());
        if pin.is_empty() {
            return Err(HsmError::PinSource("the PIN is empty".to_owned()));
        }
        Ok(pin)
    }
}
