//! The policy file as written, before validation.
//!
//! Only shapes and closed sets are checked here (by serde); everything else
//! is checked when converting into [`crate::Policy`].

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::{BlankCheck, Driver, ExtendedKeyUsage, KeyRole, KeySource, KeyType, Verify};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub job: RawJob,
    pub target: RawTarget,
    pub serial: RawSerial,
    pub keys: Vec<RawKey>,
    pub certificate: RawCertificate,
    pub lock: RawLock,
    pub audit: RawAudit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJob {
    pub product: String,
    pub description: Option<String>,
    pub security_version: u32,
    pub not_before: TimeText,
    pub not_after: TimeText,
    pub quota: u64,
    #[serde(default)]
    pub require_pin_holder_safe: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    pub driver: Driver,
    pub device_types: Vec<String>,
    pub blank_check: Option<BlankCheck>,
    pub verify: Option<Verify>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSerial {
    pub prefix: String,
    pub start: u64,
    pub end: u64,
    pub width: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub source: KeySource,
    pub location: String,
    pub role: Option<KeyRole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub location: String,
    pub subject_common_name: String,
    pub subject_organization: Option<String>,
    pub subject_organizational_unit: Option<String>,
    pub validity_days: Option<u64>,
    pub not_after: Option<TimeText>,
    pub extended_key_usage: Option<Vec<ExtendedKeyUsage>>,
    pub san_uri: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLock {
    /// Checked against the lock levels when converting, so a refusal names the field.
    pub level: String,
    pub avr_lock_byte: Option<u8>,
    pub require_challenge: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub checkpoint_every_units: u64,
    pub checkpoint_every_seconds: u64,
}

/// A timestamp written either as a string or as a TOML datetime literal.
///
/// Both arrive here as text and are checked by [`crate::time::parse_utc`],
/// so `not_before = 2026-11-01T00:00:00Z` (unquoted) works too.
pub(crate) struct TimeText(pub String);

impl<'de> Deserialize<'de> for TimeText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeVisitor;

        impl<'de> Visitor<'de> for TimeVisitor {
            type Value = TimeText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 UTC time such as \"2026-11-01T00:00:00Z\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<TimeText, E> {
                Ok(TimeText(v.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TimeText, A::Error> {
                // The toml deserializer hands datetime literals over as a
                // one-entry map that toml's own Datetime type understands.
                let datetime =
                    toml::value::Datetime::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TimeText(datetime.to_string()))
            }
        }

        deserializer.deserialize_any(TimeVisitor)
    }
}
