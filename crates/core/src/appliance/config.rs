use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hsm::{PinSource, TokenConfig};

/// The appliance configuration file (`appliance.toml`). Relative paths are
/// taken relative to the file's directory.
///
/// ```toml
/// state_dir = "state"
/// [token]
/// module = "/usr/lib/softhsm/libsofthsm2.so"
/// label = "flashgate"
/// pin_file = "user-pin"          # or: pin_env = "FLASHGATE_PIN"
/// [trust]
/// oem_keys = ["acme-signing.pub.pem"]
/// ```
#[derive(Debug, Clone)]
pub struct ApplianceConfig {
    /// Where the enrollment record and jobs live.
    pub state_dir: PathBuf,
    /// The token.
    pub token: TokenConfig,
    /// Trusted OEM signing keys.
    pub trust: Trust,
}

/// Trust anchors.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Paths of the OEM public keys.
    pub oem_key_paths: Vec<PathBuf>,
    /// The keys (SEC1 points).
    pub keys: Vec<[u8; 65]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    state_dir: PathBuf,
    token: TokenConfig,
    #[serde(default)]
    trust: RawTrust,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(default)]
    oem_keys: Vec<PathBuf>,
}

/// The config file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Unreadable.
    #[error(
        "cannot read the appliance config {path}: {source}; pass --config or set FLASHGATE_CONFIG"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Invalid.
    #[error("the appliance config {path} is invalid: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

impl ApplianceConfig {
    /// Loads and resolves a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: Raw = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let mut token = raw.token;
        token.module = base.join(&token.module);
        if let PinSource::File(p) = &token.pin {
            token.pin = PinSource::File(base.join(p));
        }
        let mut trust = Trust::default();
        for p in raw.trust.oem_keys {
            let full = base.join(&p);
            let key = std::fs::read_to_string(&full)
                .map_err(|e| format!("cannot read {}: {e}", full.display()))
                .and_then(|text| {
                    crate::x509::public_key_from_pem(&text).ok_or_else(|| {
                        format!(
                            "{}: not a P-256 public key in PEM (SubjectPublicKeyInfo) form",
                            full.display()
                        )
                    })
                })
                .map_err(|e| ConfigError::Invalid {
                    path: path.to_owned(),
                    detail: format!("trust.oem_keys: {e}"),
                })?;
            trust.oem_key_paths.push(full);
            trust.keys.push(key);
        }
        Ok(Self {
            state_dir: base.join(raw.state_dir),
            token,
            trust,
        })
    }
}
