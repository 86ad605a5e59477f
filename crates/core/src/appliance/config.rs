use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hsm::{PinSource, TokenConfig};
use crate::station::{FixtureDef, FixtureOrigin, FixtureTable};

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
///
/// [fixtures.bench]               # N channels on one target spec
/// target = "sim:seed=1"
/// channels = 8                   # default 1
/// [fixtures.line-a]              # one channel per spec, any mix of drivers
/// targets = ["avr-isp:port=/dev/ttyUSB0", "avr-isp:port=/dev/ttyUSB1", "stm32-uart:port=/dev/ttyUSB2"]
/// ```
///
/// A fixture set's name is 1 to 32 of `a-z`, `0-9` and `-`; it has either
/// `target` (with `channels`) or `targets`. Each spec is parsed when the
/// file is loaded, and each driver's channels must be listed together (a
/// run on the set runs one job per driver, `flashgate run --fixtures NAME
/// --job A --job B`). The station can define more sets of its own
/// (`state_dir/fixtures/NAME.toml`, the same table form), but never under
/// a name the config uses.
#[derive(Debug, Clone)]
pub struct ApplianceConfig {
    /// Where the enrollment record and jobs live.
    pub state_dir: PathBuf,
    /// The token.
    pub token: TokenConfig,
    /// Trusted OEM signing keys.
    pub trust: Trust,
    /// The named fixture sets, by name.
    pub fixtures: Vec<FixtureDef>,
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
    #[serde(default)]
    fixtures: BTreeMap<String, FixtureTable>,
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
        let mut fixtures = Vec::with_capacity(raw.fixtures.len());
        for (name, table) in raw.fixtures {
            let invalid = |detail: String| ConfigError::Invalid {
                path: path.to_owned(),
                detail: format!("fixtures.{name}: {detail}"),
            };
            let channels = table.expand().map_err(&invalid)?;
            crate::station::check_fixtures(&name, &channels).map_err(|e| invalid(e.to_string()))?;
            fixtures.push(FixtureDef {
                name,
                origin: FixtureOrigin::Config,
                channels,
            });
        }
        Ok(Self {
            state_dir: base.join(raw.state_dir),
            token,
            trust,
            fixtures,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const BASE: &str =
        "state_dir = \"state\"\n[token]\nmodule = \"m.so\"\nlabel = \"a\"\npin_env = \"PIN\"\n";

    fn load(fixtures: &str) -> Result<ApplianceConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance.toml");
        std::fs::write(&path, format!("{BASE}{fixtures}")).unwrap();
        ApplianceConfig::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn fixture_sets_are_read_and_checked_at_load() {
        let c = load(
            "[fixtures.line-a]\ntargets = [\"avr-isp:port=/dev/a\", \"stm32-uart:port=/dev/b\"]\n[fixtures.bench]\ntarget = \"sim:seed=1\"\nchannels = 3\n",
        )
        .unwrap();
        let names: Vec<&str> = c.fixtures.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["bench", "line-a"]);
        assert_eq!(c.fixtures[0].channels, vec!["sim:seed=1".to_owned(); 3]);
        assert_eq!(c.fixtures[1].drivers(), ["avr-isp", "stm32-uart"]);
        assert!(c.fixtures.iter().all(|d| d.origin == FixtureOrigin::Config));
        assert!(load("").unwrap().fixtures.is_empty());

        // The path, the set's name and the driver's own sentence.
        let e =
            load("[fixtures.line]\ntargets = [\"sim\", \"stm32-uart:port=/dev/b,baud=fast\"]\n")
                .unwrap_err();
        assert!(e.contains("appliance.toml"), "{e}");
        assert!(
            e.contains("fixtures.line: channel 1: the stm32-uart target's baud=fast is not valid"),
            "{e}"
        );
        for (text, says) in [
            (
                "[fixtures.Line]\ntarget = \"sim\"\n",
                "cannot name a fixture set",
            ),
            (
                "[fixtures.x]\ntarget = \"sim\"\nport = 1\n",
                "unknown field",
            ),
            ("[fixtures.x]\ntarget = \"nope\"\n", "unknown target 'nope'"),
            (
                "[fixtures.x]\ntargets = [\"sim:seed=1\", \"avr-isp:port=/a\", \"sim:seed=2\"]\n",
                "list each driver's channels together",
            ),
        ] {
            let e = load(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
