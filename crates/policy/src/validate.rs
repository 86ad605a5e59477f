//! From the raw TOML to a [`Policy`]: every field checked once, here, so
//! that a `Policy` value is a valid one.

use std::collections::btree_map::{BTreeMap, Entry};
use std::collections::BTreeSet;

use super::{
    invalid, parse_location, raw, template, time, AuditPolicy, CertValidity, CertificatePolicy,
    Driver, Job, KeyName, KeyRole, KeySource, KeySpec, KeyType, Location, LockLevel, LockPolicy,
    Policy, PolicyError, ProductId, SerialPolicy, Target, Verify, DEFAULT_AVR_LOCK_BYTE,
    MAX_DEVICE_TYPES, MAX_KEYS, MAX_QUOTA,
};

/// Turns a toml error into [`PolicyError::Syntax`] with line and column.
pub(super) fn syntax_error(text: &str, error: &toml::de::Error) -> PolicyError {
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

pub(super) fn validate(raw: raw::RawPolicy) -> Result<Policy, PolicyError> {
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
