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

use std::collections::btree_map::{BTreeMap, Entry};
use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod raw;
mod template;
mod time;

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
}

policy_words!(Driver {
    Sim => "sim",
    AvrIsp => "avr-isp",
    Stm32Uart => "stm32-uart",
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

/// Turns a toml error into [`PolicyError::Syntax`] with line and column.
fn syntax_error(text: &str, error: &toml::de::Error) -> PolicyError {
    let (line, column) = match error.span().and_then(|span| text.get(..span.start)) {
        Some(before) => {
            let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
            (Some(line), Some(column))
        }
        None => (None, None),
    };
    PolicyError::Syntax {
        line,
        column,
        message: error.message().trim_end().to_owned(),
    }
}

fn validate(raw: raw::RawPolicy) -> Result<Policy, PolicyError> {
    let job = validate_job(raw.job)?;
    let target = validate_target(raw.target)?;
    let serial = validate_serial(raw.serial, job.quota)?;
    let (keys, identity) = validate_keys(raw.keys)?;
    let certificate = validate_certificate(raw.certificate, &job, &serial, &keys)?;
    let lock = validate_lock(raw.lock, target.driver)?;
    if target.verify == Verify::Attested && !lock.require_challenge {
        return Err(invalid(
            "target.verify",
            "\"attested\" needs lock.require_challenge = true: the device's signed \
             firmware digest in its challenge answer is then the only verify",
        ));
    }
    let audit = validate_audit(raw.audit)?;
    Ok(Policy {
        job,
        target,
        serial,
        keys,
        identity,
        certificate,
        lock,
        audit,
    })
}

fn validate_job(raw: raw::RawJob) -> Result<Job, PolicyError> {
    let product = raw.product;
    let product_ok = product.len() <= 63
        && product
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && product
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !product_ok {
        return Err(invalid(
            "job.product",
            "must be 1 to 63 characters of a-z, 0-9 and '-', not starting with '-'",
        ));
    }
    if let Some(description) = &raw.description {
        if description.chars().count() > 200 {
            return Err(invalid("job.description", "must be at most 200 characters"));
        }
        if description.chars().any(char::is_control) {
            return Err(invalid(
                "job.description",
                "must not contain control characters (such as newlines)",
            ));
        }
    }
    let not_before =
        time::parse_utc(&raw.not_before.0).map_err(|p| invalid("job.not_before", p))?;
    let not_after = time::parse_utc(&raw.not_after.0).map_err(|p| invalid("job.not_after", p))?;
    if not_after <= not_before {
        return Err(invalid(
            "job.not_after",
            "must be later than job.not_before",
        ));
    }
    if !(1..=MAX_QUOTA).contains(&raw.quota) {
        return Err(invalid(
            "job.quota",
            format!("must be between 1 and {MAX_QUOTA}"),
        ));
    }
    Ok(Job {
        product: ProductId(product),
        description: raw.description,
        security_version: raw.security_version,
        not_before,
        not_after,
        quota: raw.quota,
        require_pin_holder_safe: raw.require_pin_holder_safe,
    })
}

/// Printable ASCII except space.
fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn validate_target(raw: raw::RawTarget) -> Result<Target, PolicyError> {
    if raw.device_types.is_empty() {
        return Err(invalid(
            "target.device_types",
            "must list at least one device type",
        ));
    }
    if raw.device_types.len() > MAX_DEVICE_TYPES {
        return Err(invalid(
            "target.device_types",
            format!("must list at most {MAX_DEVICE_TYPES} device types"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, device_type) in raw.device_types.iter().enumerate() {
        let field = format!("target.device_types[{i}]");
        if device_type.is_empty() || device_type.len() > 64 || !is_visible_ascii(device_type) {
            return Err(invalid(
                field,
                "must be 1 to 64 printable ASCII characters without spaces",
            ));
        }
        if !seen.insert(device_type.as_str()) {
            return Err(invalid(field, format!("repeats {device_type:?}")));
        }
    }
    Ok(Target {
        driver: raw.driver,
        device_types: raw.device_types,
        blank_check: raw.blank_check.unwrap_or_default(),
        verify: raw.verify.unwrap_or_default(),
    })
}

fn validate_serial(raw: raw::RawSerial, quota: u64) -> Result<SerialPolicy, PolicyError> {
    if raw.prefix.len() > 32 || !is_visible_ascii(&raw.prefix) {
        return Err(invalid(
            "serial.prefix",
            "must be at most 32 printable ASCII characters without spaces",
        ));
    }
    if raw.end < raw.start {
        return Err(invalid(
            "serial.end",
            format!("must be >= serial.start ({} < {})", raw.end, raw.start),
        ));
    }
    let width = match u8::try_from(raw.width) {
        Ok(w @ 1..=20) => w,
        _ => return Err(invalid("serial.width", "must be between 1 and 20")),
    };
    let digits = raw.end.checked_ilog10().map_or(1, |log| log + 1);
    if digits > u32::from(width) {
        return Err(invalid(
            "serial.end",
            format!(
                "has {digits} digits, more than serial.width = {width}; \
                 widen serial.width or lower serial.end"
            ),
        ));
    }
    // end - start + 1 >= quota, written so that it cannot overflow (quota >= 1).
    if raw.end - raw.start < quota - 1 {
        return Err(invalid(
            "serial.end",
            format!(
                "leaves room for {} serials, fewer than job.quota = {quota}; \
                 widen the serial range or lower the quota",
                (raw.end - raw.start).saturating_add(1)
            ),
        ));
    }
    Ok(SerialPolicy {
        prefix: raw.prefix,
        start: raw.start,
        end: raw.end,
        width,
    })
}

fn validate_keys(raw: Vec<raw::RawKey>) -> Result<(Vec<KeySpec>, usize), PolicyError> {
    if raw.is_empty() {
        return Err(invalid(
            "keys",
            "must contain at least one key, with role = \"identity\"",
        ));
    }
    if raw.len() > MAX_KEYS {
        return Err(invalid(
            "keys",
            format!("must contain at most {MAX_KEYS} keys"),
        ));
    }
    let mut keys = Vec::with_capacity(raw.len());
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut locations: BTreeMap<Location, usize> = BTreeMap::new();
    let mut identity: Option<usize> = None;
    for (i, key) in raw.into_iter().enumerate() {
        let name_ok = (1..=32).contains(&key.name.len())
            && key
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(invalid(
                format!("keys[{i}].name"),
                "must be 1 to 32 characters of a-z, 0-9, '_' and '-'",
            ));
        }
        match names.entry(key.name.clone()) {
            Entry::Occupied(other) => {
                return Err(invalid(
                    format!("keys[{i}].name"),
                    format!(
                        "is {:?}, which keys[{}] already uses; key names must be unique",
                        key.name,
                        other.get()
                    ),
                ))
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
        if key.source == KeySource::OnChip && key.key_type != KeyType::P256 {
            return Err(invalid(
                format!("keys[{i}].source"),
                format!(
                    "is \"on-chip\", which only works for type \"p256\", not {:?}",
                    key.key_type.as_str()
                ),
            ));
        }
        let location = parse_location(format!("keys[{i}].location"), &key.location)?;
        match locations.entry(location) {
            Entry::Occupied(other) => {
                return Err(invalid(
                    format!("keys[{i}].location"),
                    format!(
                        "is {location}, which keys[{}] already uses; \
                         give each key its own location",
                        other.get()
                    ),
                ))
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
        if key.role == Some(KeyRole::Identity) {
            if let Some(first) = identity {
                return Err(invalid(
                    format!("keys[{i}].role"),
                    format!(
                        "is \"identity\", but keys[{first}] already is; \
                         exactly one key has role \"identity\""
                    ),
                ));
            }
            if key.key_type != KeyType::P256 {
                return Err(invalid(
                    format!("keys[{i}].type"),
                    "must be \"p256\" because the key has role \"identity\"",
                ));
            }
            identity = Some(i);
        }
        keys.push(KeySpec {
            name: KeyName(key.name),
            key_type: key.key_type,
            source: key.source,
            location,
            role: key.role,
        });
    }
    let Some(identity) = identity else {
        return Err(invalid(
            "keys",
            "must contain exactly one key with role = \"identity\"",
        ));
    };
    Ok((keys, identity))
}

/// Characters allowed unescaped in a URI path segment (RFC 3986 pchar,
/// without percent-encoding).
fn is_uri_pchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

/// Whether `text` starts with `scheme:` (RFC 3986: a letter, then letters,
/// digits, `+`, `-` or `.`). Placeholders cannot be part of the scheme.
fn has_uri_scheme(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

fn validate_certificate(
    raw: raw::RawCertificate,
    job: &Job,
    serial: &SerialPolicy,
    keys: &[KeySpec],
) -> Result<CertificatePolicy, PolicyError> {
    let location = parse_location("certificate.location", &raw.location)?;
    if let Some((i, key)) = keys
        .iter()
        .enumerate()
        .find(|(_, k)| k.location == location)
    {
        return Err(invalid(
            "certificate.location",
            format!(
                "is {location}, which keys[{i}] ({:?}) already uses; \
                 move the certificate or the key",
                key.name.as_str()
            ),
        ));
    }

    let template = |field: &str, text: &str| {
        template::parse_template(text).map_err(|p| invalid(format!("certificate.{field}"), p))
    };
    // Empty O and OU mean "leave the attribute out".
    let optional = |field: &str, text: Option<String>| match text {
        Some(text) if !text.is_empty() => template(field, &text).map(Some),
        _ => Ok(None),
    };
    if raw.subject_common_name.is_empty() {
        return Err(invalid(
            "certificate.subject_common_name",
            "must not be empty; \"{serial}\" is a good choice",
        ));
    }
    let subject_common_name = template("subject_common_name", &raw.subject_common_name)?;
    let subject_organization = optional("subject_organization", raw.subject_organization)?;
    let subject_organizational_unit = optional(
        "subject_organizational_unit",
        raw.subject_organizational_unit,
    )?;

    let validity = match (raw.validity_days, raw.not_after) {
        (Some(days), None) => match u32::try_from(days) {
            Ok(d @ 1..=36_500) => CertValidity::Days(d),
            _ => {
                return Err(invalid(
                    "certificate.validity_days",
                    "must be between 1 and 36500",
                ))
            }
        },
        (None, Some(not_after)) => {
            let not_after =
                time::parse_utc(&not_after.0).map_err(|p| invalid("certificate.not_after", p))?;
            if not_after <= job.not_after {
                return Err(invalid(
                    "certificate.not_after",
                    "must be later than job.not_after, \
                     or certificates would be issued already expired",
                ));
            }
            CertValidity::NotAfter(not_after)
        }
        _ => {
            return Err(invalid(
                "certificate",
                "must set exactly one of validity_days and not_after",
            ))
        }
    };

    let extended_key_usage = raw.extended_key_usage.unwrap_or_default();
    for (i, usage) in extended_key_usage.iter().enumerate() {
        if extended_key_usage[..i].contains(usage) {
            return Err(invalid(
                format!("certificate.extended_key_usage[{i}]"),
                format!("repeats {:?}", usage.as_str()),
            ));
        }
    }

    let san_uri = match raw.san_uri {
        Some(text) => {
            let t = template("san_uri", &text)?;
            let literal: String = t.literal_text().collect();
            if !has_uri_scheme(&text) {
                return Err(invalid(
                    "certificate.san_uri",
                    "must start with a URI scheme such as \"urn:\"",
                ));
            }
            if let Some(c) = literal
                .chars()
                .find(|&c| !is_uri_pchar(c) && c != '/' && c != '?' && c != '#' && c != '%')
            {
                return Err(invalid(
                    "certificate.san_uri",
                    format!("contains {c:?}, which is not allowed in a URI"),
                ));
            }
            if t.uses_serial() {
                if let Some(c) = serial.prefix.chars().find(|&c| !is_uri_pchar(c)) {
                    return Err(invalid(
                        "certificate.san_uri",
                        format!(
                            "uses {{serial}}, but serial.prefix contains {c:?}, \
                             which would need escaping in a URI"
                        ),
                    ));
                }
            }
            Some(t)
        }
        None => None,
    };

    Ok(CertificatePolicy {
        location,
        subject_common_name,
        subject_organization,
        subject_organizational_unit,
        validity,
        extended_key_usage,
        san_uri,
    })
}

fn validate_lock(raw: raw::RawLock, driver: Driver) -> Result<LockPolicy, PolicyError> {
    let level: LockLevel = raw
        .level
        .parse()
        .map_err(|e| invalid("lock.level", format!("is not valid: {e}")))?;
    let require_challenge = raw.require_challenge.unwrap_or(true);
    let locks = match level {
        LockLevel::None => false,
        LockLevel::Readout | LockLevel::Permanent => true,
    };
    if locks && !require_challenge {
        return Err(invalid(
            "lock.require_challenge",
            format!(
                "must be true when lock.level is {:?}: \
                 never lock a chip that has not proved it holds its key",
                level.as_str()
            ),
        ));
    }
    let avr_lock_byte = match (driver, raw.avr_lock_byte) {
        (Driver::AvrIsp, byte) if locks => {
            let byte = byte.unwrap_or(DEFAULT_AVR_LOCK_BYTE);
            // LB2:LB1 are bits 1:0; 1 means unprogrammed, so 0b11 locks nothing.
            if byte & 0x03 == 0x03 {
                return Err(invalid(
                    "lock.avr_lock_byte",
                    format!(
                        "is {byte:#04X}, which leaves lock bits LB1 and LB2 unprogrammed; use 0xFC"
                    ),
                ));
            }
            Some(byte)
        }
        (Driver::AvrIsp, Some(_)) => {
            return Err(invalid(
                "lock.avr_lock_byte",
                "is set but lock.level is \"none\"; remove it or choose a lock level",
            ))
        }
        (_, Some(_)) => {
            return Err(invalid(
                "lock.avr_lock_byte",
                format!(
                    "only applies to driver \"avr-isp\", not {:?}; remove it",
                    driver.as_str()
                ),
            ))
        }
        (_, None) => None,
    };
    Ok(LockPolicy {
        level,
        avr_lock_byte,
        require_challenge,
    })
}

fn validate_audit(raw: raw::RawAudit) -> Result<AuditPolicy, PolicyError> {
    let checkpoint_every_units = match u32::try_from(raw.checkpoint_every_units) {
        Ok(n @ 1..=1_000_000) => n,
        _ => {
            return Err(invalid(
                "audit.checkpoint_every_units",
                "must be between 1 and 1000000",
            ))
        }
    };
    let checkpoint_every_seconds = match u32::try_from(raw.checkpoint_every_seconds) {
        Ok(n @ 1..=86_400) => n,
        _ => {
            return Err(invalid(
                "audit.checkpoint_every_seconds",
                "must be between 1 and 86400",
            ))
        }
    };
    Ok(AuditPolicy {
        checkpoint_every_units,
        checkpoint_every_seconds,
    })
}

#[cfg(test)]
mod tests;
