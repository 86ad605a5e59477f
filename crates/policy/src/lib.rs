//! The flashgate job policy.
//!
//! An OEM release engineer writes the policy as TOML; [`Policy::from_toml_str`]
//! parses and validates it in one step. A [`Policy`] value can only be
//! obtained that way, so every field of it can be trusted: ranges are
//! checked, cross-field rules hold (serial range covers the quota, exactly
//! one P-256 identity key, no two objects at the same location, ...), and
//! certificate templates only use known placeholders.
//!
//! See `policies/sim-secure-mcu.toml` in the repository for an annotated
//! example.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod raw;
mod template;
mod time;
mod validate;

use validate::{syntax_error, validate};

pub use flashgate_device::{Location, LockLevel, Space};
pub use template::{Template, MAX_TEMPLATE_LEN};

/// Largest policy accepted, in bytes (1 MiB).
pub const MAX_POLICY_SIZE: usize = 1024 * 1024;

/// Largest allowed `job.quota`.
pub const MAX_QUOTA: u64 = 10_000_000;

/// Most `[[keys]]` entries a policy may have.
pub const MAX_KEYS: usize = 64;

/// Most entries in `target.device_types`.
pub const MAX_DEVICE_TYPES: usize = 64;

/// AVR lock byte used when the policy locks an AVR and does not give one:
/// LB1 and LB2 programmed (no further programming or verification).
pub const DEFAULT_AVR_LOCK_BYTE: u8 = 0xFC;

/// Errors from reading or validating a policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("cannot read policy file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        error: std::io::Error,
    },

    /// The policy is larger than [`MAX_POLICY_SIZE`].
    #[error("policy is larger than {limit} bytes; check that it is the right file")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },

    /// The text is not TOML, or does not have the policy's shape (unknown
    /// key, missing key, wrong type, unknown enum value).
    #[error("policy is not valid{}: {message}; fix the policy file", at(*.line, *.column))]
    Syntax {
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// 1-based column (in characters) of the error, when known.
        column: Option<usize>,
        /// What the TOML parser reported.
        message: String,
    },

    /// A field has a value that is not allowed.
    #[error("policy field {field} {problem}")]
    Invalid {
        /// Path of the offending field, such as `serial.end` or `keys[1].location`.
        field: String,
        /// What is wrong, phrased to follow the field name.
        problem: String,
    },
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
        (Some(line), None) => format!(" at line {line}"),
        _ => String::new(),
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Parses the location a policy field gives; a refusal names the field and says what to
/// write.
fn parse_location(field: impl Into<String>, text: &str) -> Result<Location, PolicyError> {
    text.parse()
        .map_err(|e| invalid(field, format!("is not valid: {e}")))
}

/// A product identifier: `[a-z0-9][a-z0-9-]{0,62}`.
///
/// Anti-rollback (`job.security_version`) is tracked per product.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProductId(String);

impl ProductId {
    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key name: `[a-z0-9_-]{1,32}`, unique within a policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName(String);

impl KeyName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Implements `as_str` and `Display` for a closed set of policy words.
///
/// The sets the appliance matches on ([`BlankCheck`], [`KeyType`], [`KeySource`],
/// [`ExtendedKeyUsage`], and [`LockLevel`] from `flashgate-device`), like
/// [`CertValidity`], are not `#[non_exhaustive]`: every `match` on them names each
/// variant, so a new one breaks the build wherever the appliance must decide what
/// it means.
macro_rules! policy_words {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The word used in policies.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word,)+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// The target driver that programs the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Driver {
    /// Simulated secure MCU, for tests and demonstrations.
    Sim,
    /// AVR in-system programming over SPI.
    AvrIsp,
    /// STM32 system-memory bootloader over UART.
    Stm32Uart,
    /// An ARM Cortex-M part through its debug port, driven by OpenOCD.
    Openocd,
}

policy_words!(Driver {
    Sim => "sim",
    AvrIsp => "avr-isp",
    Stm32Uart => "stm32-uart",
    Openocd => "openocd",
});

/// Which device flash the pipeline checks reads erased after the chip erase
/// and before programming (`target.blank_check`).
///
/// Programming only clears bits, so a bit an erase left programmed inside an
/// image shows up at verify anyway; what verify never reads is the flash the
/// images do not cover, where earlier firmware or keys could survive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlankCheck {
    /// The device flash the job's images do not cover (the default): nothing
    /// left on the chip outside the images survives unnoticed.
    #[default]
    Uncovered,
    /// The whole device flash, images included.
    Full,
    /// No blank check: flash outside the images is neither read nor proved
    /// erased.
    None,
}

policy_words!(BlankCheck {
    Uncovered => "uncovered",
    Full => "full",
    None => "none",
});

/// How the pipeline proves the flash holds the job's images
/// (`target.verify`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    /// The programmer reads every image back and compares it (the default).
    #[default]
    Readback,
    /// No read-back: the device's answer to the lock challenge, signed with
    /// its new identity key, carries the SHA-256 it measured over the
    /// images' regions, and the appliance refuses (and never locks) a device
    /// whose digest differs from the job's ("verify by checksum on the
    /// target"). Needs `lock.require_challenge`. Faster on slow programming
    /// links; a bad image is then found after the keys were injected, not
    /// before.
    Attested,
}

policy_words!(Verify {
    Readback => "readback",
    Attested => "attested",
});

/// Type of a per-device key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA/ECDH key on NIST P-256.
    P256,
    /// 128-bit AES key.
    Aes128,
    /// 256-bit AES key.
    Aes256,
    /// 256-bit HMAC-SHA-256 key.
    HmacSha256,
}

policy_words!(KeyType {
    P256 => "p256",
    Aes128 => "aes128",
    Aes256 => "aes256",
    HmacSha256 => "hmac-sha256",
});

impl KeyType {
    /// Length of the secret in bytes (the private scalar for P-256).
    pub fn secret_len(self) -> usize {
        match self {
            KeyType::Aes128 => 16,
            KeyType::P256 | KeyType::Aes256 | KeyType::HmacSha256 => 32,
        }
    }
}

/// Where a per-device key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySource {
    /// Derived per device: HMAC in the HSM, then HKDF on the host.
    Derived,
    /// Drawn from the HSM's random number generator.
    Random,
    /// Generated by the target itself; only the public key leaves it.
    OnChip,
}

policy_words!(KeySource {
    Derived => "derived",
    Random => "random",
    OnChip => "on-chip",
});

/// Special role of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyRole {
    /// The device identity key: the device certificate certifies it and the
    /// lock challenge is answered with it.
    Identity,
}

policy_words!(KeyRole { Identity => "identity" });

/// Extended key usage of the device certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtendedKeyUsage {
    /// TLS client authentication (id-kp-clientAuth).
    ClientAuth,
    /// TLS server authentication (id-kp-serverAuth).
    ServerAuth,
}

policy_words!(ExtendedKeyUsage {
    ClientAuth => "client-auth",
    ServerAuth => "server-auth",
});

/// The `[job]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Job {
    /// Product the job belongs to.
    pub product: ProductId,
    /// Free text for operators, at most 200 characters, no control characters.
    pub description: Option<String>,
    /// Anti-rollback version; must never go down for a product.
    pub security_version: u32,
    /// Start of the job window, Unix seconds (UTC).
    pub not_before: u64,
    /// End of the job window, Unix seconds (UTC); later than `not_before`.
    pub not_after: u64,
    /// Number of units the job may provision, `1..=MAX_QUOTA`, and no more
    /// than the serial range holds.
    pub quota: u64,
    /// Build only for an appliance whose enrollment record says its HSM
    /// refuses every extraction path a PIN holder could take under the job's
    /// profile (`require_pin_holder_safe`, default false).
    pub require_pin_holder_safe: bool,
}

/// The `[target]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// Driver that programs the device.
    pub driver: Driver,
    /// Device type names (as the driver reports them) the job may program;
    /// never empty, no duplicates.
    pub device_types: Vec<String>,
    /// Which flash must read erased before programming (`blank_check`,
    /// default [`BlankCheck::Uncovered`]).
    pub blank_check: BlankCheck,
    /// How the images are verified after programming (`verify`, default
    /// [`Verify::Readback`]).
    pub verify: Verify,
}

impl Target {
    /// Whether the job may program a device of this type.
    pub fn allows(&self, device_type: &str) -> bool {
        self.device_types.iter().any(|t| t == device_type)
    }
}

/// The `[serial]` section: serial numbers `prefix` + zero-padded decimal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SerialPolicy {
    /// Printable ASCII without spaces, at most 32 characters.
    pub prefix: String,
    /// First serial number.
    pub start: u64,
    /// Last serial number (inclusive); `end >= start`.
    pub end: u64,
    /// Number of decimal digits, `1..=20`; `end` fits in it.
    pub width: u8,
}

impl SerialPolicy {
    /// The serial for the unit with 0-based `index`: `start + index`,
    /// zero-padded to `width` digits after `prefix`.
    ///
    /// Returns `None` when that number is past `end`. Every returned serial
    /// is exactly `prefix.len() + width` characters long.
    pub fn serial_for(&self, index: u64) -> Option<String> {
        let number = self.start.checked_add(index)?;
        if number > self.end {
            return None;
        }
        Some(format!(
            "{}{:0width$}",
            self.prefix,
            number,
            width = usize::from(self.width)
        ))
    }

    /// How many serial numbers the range holds, saturating at `u64::MAX`.
    pub fn capacity(&self) -> u64 {
        self.end
            .checked_sub(self.start)
            .map_or(0, |d| d.saturating_add(1))
    }
}

/// One `[[keys]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySpec {
    /// Unique name.
    pub name: KeyName,
    /// Key algorithm and size.
    pub key_type: KeyType,
    /// Where the key comes from; `OnChip` only for P-256.
    pub source: KeySource,
    /// Where the key is stored on the device; no other key or the
    /// certificate uses the same location.
    pub location: Location,
    /// Special role, if any.
    pub role: Option<KeyRole>,
}

/// How long the device certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertValidity {
    /// This many days (`1..=36500`) from issuance.
    Days(u32),
    /// Until this Unix time (UTC), later than the job's `not_after`.
    /// `9999-12-31T23:59:59Z` means "no well-defined expiration" (RFC 5280).
    NotAfter(u64),
}

/// The `[certificate]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificatePolicy {
    /// Where the DER certificate is stored on the device.
    pub location: Location,
    /// Subject CN template; never empty.
    pub subject_common_name: Template,
    /// Subject O template; an empty string in the policy means absent.
    pub subject_organization: Option<Template>,
    /// Subject OU template; an empty string in the policy means absent.
    pub subject_organizational_unit: Option<Template>,
    /// Validity period.
    pub validity: CertValidity,
    /// Extended key usages, without duplicates; empty means no extension.
    pub extended_key_usage: Vec<ExtendedKeyUsage>,
    /// URI subject alternative name template, starting with a URI scheme.
    pub san_uri: Option<Template>,
}

/// Certificate fields rendered for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateFields {
    /// Subject CN.
    pub common_name: String,
    /// Subject O.
    pub organization: Option<String>,
    /// Subject OU.
    pub organizational_unit: Option<String>,
    /// URI subject alternative name.
    pub san_uri: Option<String>,
}

impl CertificatePolicy {
    /// Renders the subject and SAN templates for one device.
    ///
    /// `uid` is the device's unique ID and appears as lowercase hex.
    pub fn render(&self, serial: &str, uid: &[u8]) -> CertificateFields {
        let render = |t: &Option<Template>| t.as_ref().map(|t| t.render(serial, uid));
        CertificateFields {
            common_name: self.subject_common_name.render(serial, uid),
            organization: render(&self.subject_organization),
            organizational_unit: render(&self.subject_organizational_unit),
            san_uri: render(&self.san_uri),
        }
    }
}

/// The `[lock]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockPolicy {
    /// Lock level applied after provisioning.
    pub level: LockLevel,
    /// AVR lock byte to program: set exactly when the driver is `avr-isp`
    /// and `level` is not `None` (default [`DEFAULT_AVR_LOCK_BYTE`]); it
    /// always programs LB1 or LB2.
    pub avr_lock_byte: Option<u8>,
    /// Whether the device must answer a challenge with its identity key
    /// before it is locked; always true when `level` is not `None`.
    pub require_challenge: bool,
}

/// The `[audit]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditPolicy {
    /// Write a signed log checkpoint after this many units (`1..=1_000_000`).
    pub checkpoint_every_units: u32,
    /// ... or after this many seconds (`1..=86_400`), whichever comes first.
    pub checkpoint_every_seconds: u32,
}

/// A validated job policy.
///
/// Obtained only from [`Policy::from_toml_str`] or [`Policy::from_file`];
/// the accessors return shared references, so the invariants documented on
/// each field hold for the lifetime of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    job: Job,
    target: Target,
    serial: SerialPolicy,
    keys: Vec<KeySpec>,
    /// Index of the identity key in `keys`.
    identity: usize,
    certificate: CertificatePolicy,
    lock: LockPolicy,
    audit: AuditPolicy,
}

/// `9999-12-31T23:59:59Z`: "no well-defined expiration" (RFC 5280 §4.1.2.5,
/// IEEE 802.1AR DevIDs), the latest time X.509 can express.
pub const NO_WELL_DEFINED_EXPIRATION: u64 = 253_402_300_799;

impl Policy {
    /// The latest notAfter any device certificate of this job can carry: a
    /// certificate issued at the last moment of the job window with the
    /// template's validity. Every CA certificate in a device's chain must be
    /// valid at least until then.
    pub fn latest_device_not_after(&self) -> u64 {
        match self.certificate.validity {
            CertValidity::Days(d) => self
                .job
                .not_after
                .saturating_add(u64::from(d) * 86_400)
                .min(NO_WELL_DEFINED_EXPIRATION),
            CertValidity::NotAfter(t) => t,
        }
    }

    /// Parses and validates a policy.
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_SIZE {
            return Err(PolicyError::TooLarge {
                limit: MAX_POLICY_SIZE,
            });
        }
        let raw: raw::RawPolicy = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        validate(raw)
    }

    /// Reads, parses and validates a policy file.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let io_error = |error| PolicyError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = std::fs::File::open(path).map_err(io_error)?;
        let mut bytes = Vec::new();
        // One byte over the limit tells an oversized file apart.
        file.take(MAX_POLICY_SIZE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        if bytes.len() > MAX_POLICY_SIZE {
            return Err(PolicyError::TooLarge {
                limit: MAX_POLICY_SIZE,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            io_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text ({e})"),
            ))
        })?;
        Policy::from_toml_str(&text)
    }

    /// The `[job]` section.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The `[target]` section.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The `[serial]` section.
    pub fn serial(&self) -> &SerialPolicy {
        &self.serial
    }

    /// All keys, in policy order.
    pub fn keys(&self) -> &[KeySpec] {
        &self.keys
    }

    /// The key with role `identity`; always of type P-256.
    pub fn identity_key(&self) -> &KeySpec {
        &self.keys[self.identity]
    }

    /// The key with this name.
    pub fn key(&self, name: &str) -> Option<&KeySpec> {
        self.keys.iter().find(|k| k.name.as_str() == name)
    }

    /// The `[certificate]` section.
    pub fn certificate(&self) -> &CertificatePolicy {
        &self.certificate
    }

    /// The `[lock]` section.
    pub fn lock(&self) -> &LockPolicy {
        &self.lock
    }

    /// The `[audit]` section.
    pub fn audit(&self) -> &AuditPolicy {
        &self.audit
    }

    /// The serial for the unit with 0-based `index`; see
    /// [`SerialPolicy::serial_for`]. Always `Some` for `index < job.quota`.
    pub fn serial_for(&self, index: u64) -> Option<String> {
        self.serial.serial_for(index)
    }
}

#[cfg(test)]
mod tests;
