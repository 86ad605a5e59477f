//! The subset of RFC 7512 `pkcs11:` URIs flashgate accepts for OEM keys:
//! path attributes `token`, `object`, `id`, `type`; query attributes
//! `module-path` and `pin-source`. `pin-value` is refused: a PIN must not
//! appear on a command line or in a file that names keys.

use std::path::PathBuf;

use crate::hsm::{PinSource, TokenConfig};

/// A parsed `pkcs11:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=` (token label).
    pub token: String,
    /// `object=` (key label).
    pub object: Option<String>,
    /// `module-path=`.
    pub module_path: PathBuf,
    /// `pin-source=` (a file path, optionally `file:` prefixed).
    pub pin_source: PathBuf,
}

/// Why a URI was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid PKCS#11 URI: {0}")]
pub struct UriError(String);

fn pct_decode(s: &str) -> Result<String, UriError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UriError(format!("bad percent-escape in '{s}'")))?;
            out.push(h);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError("not UTF-8 after percent-decoding".to_owned()))
}

fn pct_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Pkcs11Uri {
    /// Parses a URI.
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| UriError("it does not start with 'pkcs11:'".to_owned()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut token = None;
        let mut object = None;
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| UriError(format!("path attribute '{attr}' has no value")))?;
            let v = pct_decode(v)?;
            match k {
                "token" => token = Some(v),
                "object" => object = Some(v),
                "type" if v == "private" => {}
                "type" => return Err(UriError(format!("type={v}: only private keys can sign"))),
                "id"
                | "manufacturer"
                | "model"
                | "serial"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-id"
                | "slot-manufacturer" => {}
                other => return Err(UriError(format!("unknown path attribute '{other}'"))),
            }
        }
        let mut module_path = None;
        let mut pin_source = None;
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| UriError(format!("query attribute '{attr}' has no value")))?;
            let v = pct_decode(v)?;
            match k {
                "module-path" => module_path = Some(PathBuf::from(v)),
                "pin-source" => {
                    pin_source = Some(PathBuf::from(v.strip_prefix("file:").unwrap_or(&v)))
                }
                "pin-value" => {
                    return Err(UriError(
                        "pin-value is refused: put the PIN in a file and name it with pin-source"
                            .to_owned(),
                    ))
                }
                "module-name" => {}
                other => return Err(UriError(format!("unknown query attribute '{other}'"))),
            }
        }
        Ok(Self {
            token: token.ok_or_else(|| UriError("token= is required".to_owned()))?,
            object,
            module_path: module_path
                .ok_or_else(|| UriError("module-path= is required".to_owned()))?,
            pin_source: pin_source.ok_or_else(|| UriError("pin-source= is required".to_owned()))?,
        })
    }

    /// The same URI naming another object in the same token.
    pub fn with_object(&self, object: &str) -> Self {
        Self {
            object: Some(object.to_owned()),
            ..self.clone()
        }
    }

    /// The token configuration this URI names.
    pub fn token_config(&self) -> TokenConfig {
        TokenConfig {
            module: self.module_path.clone(),
            label: self.token.clone(),
            pin: PinSource::File(self.pin_source.clone()),
        }
    }
}

impl std::fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pkcs11:token={}", pct_encode(&self.token))?;
        if let Some(o) = &self.object {
            write!(f, ";object={};type=private", pct_encode(o))?;
        }
        write!(
            f,
            "?module-path={}&pin-source=file:{}",
            pct_encode(&self.module_path.to_string_lossy()),
            pct_encode(&self.pin_source.to_string_lossy())
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=OEM%20keys;object=signing;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin",
        )
        .unwrap();
        assert_eq!(u.token, "OEM keys");
        assert_eq!(u.object.as_deref(), Some("signing"));
        assert_eq!(u.pin_source, PathBuf::from("/etc/pin"));
        assert_eq!(Pkcs11Uri::parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn refuses_pin_value_and_missing_module() {
        let e = Pkcs11Uri::parse("pkcs11:token=a?module-path=/m.so&pin-value=1234").unwrap_err();
        assert!(e.to_string().contains("pin-value"));
        assert!(Pkcs11Uri::parse("pkcs11:token=a?pin-source=/p").is_err());
        assert!(Pkcs11Uri::parse("token=a").is_err());
    }
}
