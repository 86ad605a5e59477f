#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// A valid policy that the tests below break one rule at a time.
const BASE: &str = r#"
[job]
product = "acme-thermo"
description = "Thermostat main board, production lot 7"
security_version = 3
not_before = "2026-11-01T00:00:00Z"
not_after = "2027-05-01T00:00:00Z"
quota = 1000

[target]
driver = "sim"
device_types = ["sim-secure-mcu"]

[serial]
prefix = "ACME-TH-"
start = 1
end = 1000
width = 6

[[keys]]
name = "identity"
type = "p256"
source = "derived"
location = "keystore:0x0000"
role = "identity"

[[keys]]
name = "fw-update"
type = "aes256"
source = "derived"
location = "keystore:0x0040"

[certificate]
location = "keystore:0x0100"
subject_common_name = "{serial}"
subject_organization = "Acme Corp"
subject_organizational_unit = ""
validity_days = 7300
extended_key_usage = ["client-auth"]
san_uri = "urn:acme:device:{uid}"

[lock]
level = "readout"
require_challenge = true

[audit]
checkpoint_every_units = 100
checkpoint_every_seconds = 60
"#;

/// BASE with each `(from, to)` replacement applied once; panics if `from`
/// is missing so that a test cannot silently test the base policy.
fn with(replacements: &[(&str, &str)]) -> String {
    let mut text = BASE.to_owned();
    for (from, to) in replacements {
        assert!(text.contains(from), "BASE does not contain {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::from_toml_str(text)
}

/// Asserts that the policy is rejected as invalid for `field`.
#[track_caller]
fn assert_invalid(text: &str, field: &str) -> String {
    let err = match parse(text) {
        Ok(_) => panic!("expected an error for {field}, but the policy was accepted"),
        Err(err) => err,
    };
    let message = err.to_string();
    match &err {
        PolicyError::Invalid { field: got, .. } => assert_eq!(got, field, "{message}"),
        other => panic!("expected an error for {field}, got {other:?}"),
    }
    assert!(message.contains(field), "{message}");
    message
}

#[track_caller]
fn assert_syntax(text: &str) -> String {
    match parse(text) {
        Err(err @ PolicyError::Syntax { .. }) => err.to_string(),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn base_policy_parses_into_trusted_fields() {
    let p = parse(BASE).unwrap();
    assert_eq!(p.job().product.as_str(), "acme-thermo");
    assert_eq!(p.job().security_version, 3);
    assert_eq!(p.job().not_before, 1_793_491_200);
    assert_eq!(p.job().not_after, 1_809_129_600);
    assert_eq!(p.job().quota, 1000);
    assert_eq!(p.target().driver, Driver::Sim);
    assert!(p.target().allows("sim-secure-mcu"));
    assert!(!p.target().allows("atmega328p"));
    assert_eq!(p.keys().len(), 2);
    let id = p.identity_key();
    assert_eq!(id.name.as_str(), "identity");
    assert_eq!(id.key_type, KeyType::P256);
    assert_eq!(id.source, KeySource::Derived);
    assert_eq!(id.location.to_string(), "keystore:0x0000");
    let fw = p.key("fw-update").unwrap();
    assert_eq!(fw.key_type, KeyType::Aes256);
    assert_eq!(fw.role, None);
    let cert = p.certificate();
    assert_eq!(cert.location.to_string(), "keystore:0x0100");
    assert_eq!(cert.validity, CertValidity::Days(7300));
    assert_eq!(cert.extended_key_usage, vec![ExtendedKeyUsage::ClientAuth]);
    // An empty OU means the attribute is left out.
    assert_eq!(cert.subject_organizational_unit, None);
    assert_eq!(p.lock().level, LockLevel::Readout);
    assert_eq!(p.lock().avr_lock_byte, None);
    assert!(p.lock().require_challenge);
    assert_eq!(p.audit().checkpoint_every_units, 100);
    assert_eq!(p.audit().checkpoint_every_seconds, 60);
}

#[test]
fn example_policies_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let policy = Policy::from_file(&path)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        assert!(policy.serial_for(policy.job().quota - 1).is_some());
        count += 1;
    }
    assert!(
        count >= 3,
        "expected the example policies in {}",
        dir.display()
    );
}

#[test]
fn example_policies_have_expected_targets() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let avr = Policy::from_file(&dir.join("avr-atmega328p.toml")).unwrap();
    assert_eq!(avr.target().driver, Driver::AvrIsp);
    assert_eq!(avr.lock().avr_lock_byte, Some(0xFC));
    assert_eq!(avr.identity_key().location.to_string(), "flash:0x7E00");
    assert_eq!(avr.certificate().location.to_string(), "flash:0x7000");
    let stm = Policy::from_file(&dir.join("stm32f103.toml")).unwrap();
    assert_eq!(stm.target().driver, Driver::Stm32Uart);
    assert!(stm.target().allows("stm32f103-md"));
    assert_eq!(stm.identity_key().location.to_string(), "flash:0x0801FC00");
    assert_eq!(
        stm.certificate().validity,
        CertValidity::NotAfter(253_402_300_799)
    );
    let sim = Policy::from_file(&dir.join("sim-secure-mcu.toml")).unwrap();
    assert_eq!(sim, parse(BASE).unwrap());
    // None of them names a blank check: each gets the safe default.
    for p in [&avr, &stm, &sim] {
        assert_eq!(p.target().blank_check, BlankCheck::Uncovered);
    }
}

#[test]
fn from_file_errors() {
    let err = Policy::from_file(Path::new("no/such/policy.toml")).unwrap_err();
    assert!(matches!(err, PolicyError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("policy.toml"));
}

// ---- syntax and shape ----

#[test]
fn syntax_error_names_line_and_column() {
    let text = with(&[("quota = 1000", "quota = = 1000")]);
    let message = assert_syntax(&text);
    let line = BASE.lines().position(|l| l.starts_with("quota")).unwrap() + 1;
    assert!(message.contains(&format!("line {line}")), "{message}");
    assert!(message.contains("column"), "{message}");
    let PolicyError::Syntax {
        line: got_line,
        column,
        ..
    } = parse(&text).unwrap_err()
    else {
        panic!()
    };
    assert_eq!(got_line, Some(line));
    assert_eq!(column, Some(9));
}

#[test]
fn unknown_key_is_rejected() {
    let text = with(&[("quota = 1000", "quota = 1000\nquotas = 5")]);
    let message = assert_syntax(&text);
    assert!(message.contains("quotas"), "{message}");
    let line = BASE.lines().position(|l| l.starts_with("quota")).unwrap() + 2;
    assert!(message.contains(&format!("line {line}")), "{message}");

    let message = assert_syntax(&format!("{BASE}\n[extra]\nx = 1\n"));
    assert!(message.contains("extra"), "{message}");
}

#[test]
fn missing_section_is_rejected() {
    let text = BASE.replace("[audit]", "[audit_x]");
    assert_syntax(&text);
    let without_audit = &BASE[..BASE.find("[audit]").unwrap()];
    let message = assert_syntax(without_audit);
    assert!(message.contains("audit"), "{message}");
}

#[test]
fn unknown_enum_values_are_rejected() {
    for (from, to, needle) in [
        ("driver = \"sim\"", "driver = \"jtag\"", "jtag"),
        ("type = \"aes256\"", "type = \"des\"", "des"),
        ("source = \"derived\"", "source = \"hsm\"", "hsm"),
        ("role = \"identity\"", "role = \"boss\"", "boss"),
        ("[\"client-auth\"]", "[\"code-signing\"]", "code-signing"),
    ] {
        let message = assert_syntax(&with(&[(from, to)]));
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn unknown_lock_level_names_the_field() {
    for bad in ["max", "Readout", "readout-protected", ""] {
        let message = assert_invalid(
            &with(&[("level = \"readout\"", &format!("level = {bad:?}"))]),
            "lock.level",
        );
        assert_eq!(
            message,
            format!(
                "policy field lock.level is not valid: {bad:?} is not a lock level: \
                 write none, readout or permanent"
            )
        );
    }
    assert_syntax(&with(&[("level = \"readout\"", "level = 2")]));
}

#[test]
fn wrong_types_and_out_of_range_integers_are_rejected() {
    assert_syntax(&with(&[("security_version = 3", "security_version = -1")]));
    assert_syntax(&with(&[(
        "security_version = 3",
        "security_version = 4294967296",
    )]));
    assert_syntax(&with(&[("quota = 1000", "quota = \"1000\"")]));
    assert_syntax(&with(&[("start = 1", "start = -1")]));
}

#[test]
fn oversized_policy_is_rejected() {
    let text = format!("{BASE}#{}", "x".repeat(MAX_POLICY_SIZE));
    assert!(matches!(parse(&text), Err(PolicyError::TooLarge { .. })));
}

// ---- [job] ----

#[test]
fn job_product_pattern() {
    for bad in [
        "",
        "Acme",
        "-acme",
        "acme_thermo",
        "acme thermo",
        &"a".repeat(64),
    ] {
        assert_invalid(
            &with(&[("\"acme-thermo\"", &format!("{bad:?}"))]),
            "job.product",
        );
    }
    for good in ["a", "0", "a-b-9", &"a".repeat(63)] {
        let p = parse(&with(&[("\"acme-thermo\"", &format!("{good:?}"))])).unwrap();
        assert_eq!(p.job().product.as_str(), good);
    }
}

#[test]
fn job_description_rules() {
    let long = format!("description = {:?}", "é".repeat(201));
    assert_invalid(
        &with(&[(
            "description = \"Thermostat main board, production lot 7\"",
            &long,
        )]),
        "job.description",
    );
    let ok = format!("description = {:?}", "é".repeat(200));
    assert!(parse(&with(&[(
        "description = \"Thermostat main board, production lot 7\"",
        &ok
    )]))
    .is_ok());
    assert_invalid(
        &with(&[("production lot 7", "production\\nlot 7")]),
        "job.description",
    );
    let p = parse(&with(&[(
        "description = \"Thermostat main board, production lot 7\"\n",
        "",
    )]))
    .unwrap();
    assert_eq!(p.job().description, None);
}

#[test]
fn job_times_must_be_utc_rfc3339() {
    for bad in [
        "2026-11-01",
        "2026-11-01T00:00:00+01:00",
        "2026-11-01T00:00:00.000Z",
        "2026-02-30T00:00:00Z",
        "1969-01-01T00:00:00Z",
    ] {
        assert_invalid(
            &with(&[("\"2026-11-01T00:00:00Z\"", &format!("{bad:?}"))]),
            "job.not_before",
        );
    }
    assert_invalid(
        &with(&[("\"2027-05-01T00:00:00Z\"", "\"2027-05-01T00:00:00\"")]),
        "job.not_after",
    );
}

#[test]
fn job_times_accept_toml_datetime_literals() {
    let p = parse(&with(&[
        ("\"2026-11-01T00:00:00Z\"", "2026-11-01T00:00:00Z"),
        ("\"2027-05-01T00:00:00Z\"", "2027-05-01T00:00:00Z"),
    ]))
    .unwrap();
    assert_eq!(p.job().not_before, 1_793_491_200);
    // A local datetime literal has no offset and is not UTC.
    assert_invalid(
        &with(&[("\"2026-11-01T00:00:00Z\"", "2026-11-01T00:00:00")]),
        "job.not_before",
    );
}

#[test]
fn job_not_after_must_follow_not_before() {
    let message = assert_invalid(
        &with(&[("\"2027-05-01T00:00:00Z\"", "\"2026-11-01T00:00:00Z\"")]),
        "job.not_after",
    );
    assert!(message.contains("job.not_before"), "{message}");
}

#[test]
fn job_quota_range() {
    assert_invalid(&with(&[("quota = 1000", "quota = 0")]), "job.quota");
    assert_invalid(
        &with(&[
            ("quota = 1000", "quota = 10000001"),
            ("end = 1000", "end = 99999999"),
            ("width = 6", "width = 8"),
        ]),
        "job.quota",
    );
    let p = parse(&with(&[
        ("quota = 1000", "quota = 10000000"),
        ("end = 1000", "end = 99999999"),
        ("width = 6", "width = 8"),
    ]))
    .unwrap();
    assert_eq!(p.job().quota, MAX_QUOTA);
}

// ---- [target] ----

#[test]
fn target_device_types_rules() {
    assert_invalid(
        &with(&[("[\"sim-secure-mcu\"]", "[]")]),
        "target.device_types",
    );
    assert_invalid(
        &with(&[("[\"sim-secure-mcu\"]", "[\"sim-secure-mcu\", \"\"]")]),
        "target.device_types[1]",
    );
    assert_invalid(
        &with(&[("[\"sim-secure-mcu\"]", "[\"sim secure\"]")]),
        "target.device_types[0]",
    );
    assert_invalid(
        &with(&[("[\"sim-secure-mcu\"]", "[\"a\", \"b\", \"a\"]")]),
        "target.device_types[2]",
    );
    let many = (0..=MAX_DEVICE_TYPES)
        .map(|i| format!("\"t{i}\""))
        .collect::<Vec<_>>()
        .join(",");
    assert_invalid(
        &with(&[("[\"sim-secure-mcu\"]", &format!("[{many}]"))]),
        "target.device_types",
    );
}

#[test]
fn blank_check_defaults_to_the_uncovered_flash_and_takes_three_words() {
    assert_eq!(
        parse(BASE).unwrap().target().blank_check,
        BlankCheck::Uncovered
    );
    for (word, want) in [
        ("uncovered", BlankCheck::Uncovered),
        ("full", BlankCheck::Full),
        ("none", BlankCheck::None),
    ] {
        let text = with(&[(
            "device_types = [\"sim-secure-mcu\"]",
            &format!("device_types = [\"sim-secure-mcu\"]\nblank_check = \"{word}\""),
        )]);
        let p = parse(&text).unwrap();
        assert_eq!(p.target().blank_check, want);
        assert_eq!(want.as_str(), word);
        assert_eq!(want.to_string(), word);
    }
}

#[test]
fn blank_check_refuses_an_unknown_word_with_the_words_it_takes() {
    let line = BASE
        .lines()
        .position(|l| l.starts_with("device_types"))
        .unwrap()
        + 2;
    for bad in ["\"images\"", "\"Uncovered\"", "\"\"", "true", "1"] {
        let text = with(&[(
            "device_types = [\"sim-secure-mcu\"]",
            &format!("device_types = [\"sim-secure-mcu\"]\nblank_check = {bad}"),
        )]);
        let message = assert_syntax(&text);
        assert!(message.contains(&format!("line {line}")), "{message}");
        if bad.starts_with('"') {
            for word in ["uncovered", "full", "none"] {
                assert!(message.contains(word), "{message}");
            }
        }
        assert!(message.ends_with("fix the policy file"), "{message}");
    }
}

#[test]
fn verify_defaults_to_readback_and_attested_needs_the_challenge() {
    assert_eq!(parse(BASE).unwrap().target().verify, Verify::Readback);
    let attested = |extra: &[(&str, &str)]| {
        let mut r = vec![(
            "device_types = [\"sim-secure-mcu\"]",
            "device_types = [\"sim-secure-mcu\"]\nverify = \"attested\"",
        )];
        r.extend_from_slice(extra);
        with(&r)
    };
    let p = parse(&attested(&[])).unwrap();
    assert_eq!(p.target().verify, Verify::Attested);
    assert_eq!(Verify::Attested.as_str(), "attested");
    // Without a challenge nothing would check the flash at all.
    let message = assert_invalid(
        &attested(&[
            ("level = \"readout\"", "level = \"none\""),
            ("require_challenge = true", "require_challenge = false"),
        ]),
        "target.verify",
    );
    assert!(message.contains("require_challenge"), "{message}");
    // An unknown word names the two it takes.
    let text = with(&[(
        "device_types = [\"sim-secure-mcu\"]",
        "device_types = [\"sim-secure-mcu\"]\nverify = \"crc\"",
    )]);
    let message = assert_syntax(&text);
    for word in ["readback", "attested"] {
        assert!(message.contains(word), "{message}");
    }
}

// ---- [serial] ----

#[test]
fn serial_prefix_rules() {
    assert_invalid(&with(&[("\"ACME-TH-\"", "\"ACME TH\"")]), "serial.prefix");
    assert_invalid(&with(&[("\"ACME-TH-\"", "\"ACME-TH-é\"")]), "serial.prefix");
    assert_invalid(
        &with(&[("\"ACME-TH-\"", &format!("{:?}", "X".repeat(33)))]),
        "serial.prefix",
    );
    let p = parse(&with(&[("\"ACME-TH-\"", "\"\"")])).unwrap();
    assert_eq!(p.serial_for(0).unwrap(), "000001");
}

#[test]
fn serial_end_must_not_be_below_start() {
    let message = assert_invalid(&with(&[("start = 1", "start = 2000")]), "serial.end");
    assert!(
        message.contains("serial.end must be >= serial.start"),
        "{message}"
    );
}

#[test]
fn serial_range_must_cover_quota() {
    let message = assert_invalid(&with(&[("end = 1000", "end = 999")]), "serial.end");
    assert!(message.contains("job.quota"), "{message}");
    // Exactly enough is fine.
    assert!(parse(&with(&[
        ("start = 1", "start = 0"),
        ("end = 1000", "end = 999")
    ]))
    .is_ok());
}

#[test]
fn serial_width_rules() {
    assert_invalid(&with(&[("width = 6", "width = 0")]), "serial.width");
    assert_invalid(&with(&[("width = 6", "width = 21")]), "serial.width");
    assert_invalid(&with(&[("width = 6", "width = 256")]), "serial.width");
    // end = 1000 needs 4 digits.
    let message = assert_invalid(&with(&[("width = 6", "width = 3")]), "serial.end");
    assert!(message.contains("serial.width"), "{message}");
    assert!(parse(&with(&[("width = 6", "width = 4")])).is_ok());
}

#[test]
fn serial_formatting() {
    let p = parse(BASE).unwrap();
    assert_eq!(p.serial_for(0).unwrap(), "ACME-TH-000001");
    assert_eq!(p.serial_for(41).unwrap(), "ACME-TH-000042");
    assert_eq!(p.serial_for(999).unwrap(), "ACME-TH-001000");
    assert_eq!(p.serial_for(1000), None);
    assert_eq!(p.serial_for(u64::MAX), None);
    assert_eq!(p.serial().capacity(), 1000);

    // The widest range: 20 digits up to u64::MAX.
    let p = parse(&with(&[
        ("quota = 1000", "quota = 5"),
        ("start = 1", "start = 9223372036854775000"),
        ("end = 1000", "end = 9223372036854775807"),
        ("width = 6", "width = 20"),
    ]))
    .unwrap();
    assert_eq!(p.serial_for(7).unwrap(), "ACME-TH-09223372036854775007");
    assert_eq!(p.serial_for(808), None);
}

// ---- [[keys]] ----

#[test]
fn keys_must_not_be_empty() {
    let start = BASE.find("[[keys]]").unwrap();
    let end = BASE.find("[certificate]").unwrap();
    // `keys = []` must come before the first table header.
    let text = format!("keys = []\n{}{}", &BASE[..start], &BASE[end..]);
    assert_invalid(&text, "keys");
}

#[test]
fn key_name_rules() {
    for bad in ["", "Identity", "id key", &"k".repeat(33)] {
        assert_invalid(
            &with(&[("name = \"fw-update\"", &format!("name = {bad:?}"))]),
            "keys[1].name",
        );
    }
    let message = assert_invalid(
        &with(&[("name = \"fw-update\"", "name = \"identity\"")]),
        "keys[1].name",
    );
    assert!(message.contains("keys[0]"), "{message}");
    assert!(parse(&with(&[("name = \"fw-update\"", "name = \"fw_update-2\"")])).is_ok());
}

#[test]
fn key_location_rules() {
    let message = assert_invalid(
        &with(&[("\"keystore:0x0040\"", "\"rom:0x40\"")]),
        "keys[1].location",
    );
    assert_eq!(
        message,
        "policy field keys[1].location is not valid: \"rom\" is not a memory space: \
         write keystore, flash, eeprom or otp"
    );
    let message = assert_invalid(
        &with(&[("\"keystore:0x0040\"", "\"keystore:0x100000000\"")]),
        "keys[1].location",
    );
    assert_eq!(
        message,
        "policy field keys[1].location is not valid: \"0x100000000\" is not an offset: \
         write a decimal or 0x-prefixed hex number below 4 GiB, such as 0x0100"
    );
    // Same offset, written differently.
    let message = assert_invalid(
        &with(&[("\"keystore:0x0040\"", "\"keystore:0\"")]),
        "keys[1].location",
    );
    assert!(message.contains("keys[0]"), "{message}");
    // Same offset in another space is a different location.
    let p = parse(&with(&[("\"keystore:0x0040\"", "\"eeprom:0\"")])).unwrap();
    assert_eq!(p.keys()[1].location.space, Space::Eeprom);
}

#[test]
fn on_chip_only_for_p256() {
    let text = with(&[(
        "type = \"aes256\"\nsource = \"derived\"",
        "type = \"aes256\"\nsource = \"on-chip\"",
    )]);
    let message = assert_invalid(&text, "keys[1].source");
    assert!(message.contains("p256"), "{message}");
    let text = with(&[(
        "type = \"p256\"\nsource = \"derived\"",
        "type = \"p256\"\nsource = \"on-chip\"",
    )]);
    assert_eq!(
        parse(&text).unwrap().identity_key().source,
        KeySource::OnChip
    );
}

#[test]
fn exactly_one_identity_key() {
    assert_invalid(&with(&[("role = \"identity\"\n", "")]), "keys");
    let message = assert_invalid(
        &with(&[(
            "location = \"keystore:0x0040\"",
            "location = \"keystore:0x0040\"\nrole = \"identity\"",
        )]),
        "keys[1].role",
    );
    assert!(message.contains("exactly one"), "{message}");
}

#[test]
fn identity_key_must_be_p256() {
    let text = with(&[(
        "type = \"p256\"\nsource = \"derived\"",
        "type = \"aes128\"\nsource = \"derived\"",
    )]);
    assert_invalid(&text, "keys[0].type");
}

#[test]
fn too_many_keys() {
    let mut text = BASE.to_owned();
    for i in 0..MAX_KEYS {
        text.push_str(&format!(
            "\n[[keys]]\nname = \"k{i}\"\ntype = \"aes128\"\n\
             source = \"random\"\nlocation = \"flash:{i}\"\n"
        ));
    }
    assert_invalid(&text, "keys");
}

// ---- [certificate] ----

#[test]
fn certificate_location_rules() {
    let message = assert_invalid(
        &with(&[("\"keystore:0x0100\"", "\"keystore\"")]),
        "certificate.location",
    );
    assert_eq!(
        message,
        "policy field certificate.location is not valid: \"keystore\" is not a location: \
         write a memory space, a colon and an offset, such as keystore:0x0100"
    );
    let message = assert_invalid(
        &with(&[("\"keystore:0x0100\"", "\"keystore:0x40\"")]),
        "certificate.location",
    );
    assert!(message.contains("fw-update"), "{message}");
    assert!(parse(&with(&[("\"keystore:0x0100\"", "\"flash:0x40\"")])).is_ok());
}

#[test]
fn certificate_templates_only_know_serial_and_uid() {
    let message = assert_invalid(
        &with(&[("= \"{serial}\"", "= \"{serial}-{date}\"")]),
        "certificate.subject_common_name",
    );
    assert!(message.contains("{date}"), "{message}");
    assert_invalid(
        &with(&[("= \"{serial}\"", "= \"\"")]),
        "certificate.subject_common_name",
    );
    assert_invalid(
        &with(&[("\"Acme Corp\"", "\"Acme {corp}\"")]),
        "certificate.subject_organization",
    );
    assert_invalid(
        &with(&[(
            "subject_organizational_unit = \"\"",
            "subject_organizational_unit = \"{x\"",
        )]),
        "certificate.subject_organizational_unit",
    );
    assert_invalid(
        &with(&[("urn:acme:device:{uid}", "urn:acme:device:{UID}")]),
        "certificate.san_uri",
    );
}

#[test]
fn certificate_san_uri_rules() {
    for bad in [
        "acme-device-{uid}",
        "{uid}:x",
        ":x",
        "1urn:x",
        "urn:acme device:{uid}",
        "urn:acme:<{uid}>",
    ] {
        assert_invalid(
            &with(&[("urn:acme:device:{uid}", bad)]),
            "certificate.san_uri",
        );
    }
    let message = assert_invalid(
        &with(&[
            ("urn:acme:device:{uid}", "urn:acme:device:{serial}"),
            ("\"ACME-TH-\"", "\"ACME#\""),
        ]),
        "certificate.san_uri",
    );
    assert!(message.contains("serial.prefix"), "{message}");
    let p = parse(&with(&[(
        "urn:acme:device:{uid}",
        "https://acme.example/d/{serial}?u={uid}",
    )]))
    .unwrap();
    assert!(p.certificate().san_uri.is_some());
}

#[test]
fn certificate_template_rendering() {
    let p = parse(&with(&[
        ("= \"{serial}\"", "= \"Thermo {serial}\""),
        (
            "subject_organizational_unit = \"\"",
            "subject_organizational_unit = \"Lot 7 / {uid}\"",
        ),
    ]))
    .unwrap();
    let serial = p.serial_for(4).unwrap();
    let fields = p.certificate().render(&serial, &[0xDE, 0xAD, 0x01]);
    assert_eq!(fields.common_name, "Thermo ACME-TH-000005");
    assert_eq!(fields.organization.as_deref(), Some("Acme Corp"));
    assert_eq!(
        fields.organizational_unit.as_deref(),
        Some("Lot 7 / dead01")
    );
    assert_eq!(fields.san_uri.as_deref(), Some("urn:acme:device:dead01"));

    let p = parse(&with(&[
        ("subject_organization = \"Acme Corp\"\n", ""),
        ("san_uri = \"urn:acme:device:{uid}\"\n", ""),
    ]))
    .unwrap();
    let fields = p.certificate().render("S", &[]);
    assert_eq!(fields.common_name, "S");
    assert_eq!(fields.organization, None);
    assert_eq!(fields.san_uri, None);
}

#[test]
fn certificate_validity_exactly_one_form() {
    assert_invalid(&with(&[("validity_days = 7300\n", "")]), "certificate");
    assert_invalid(
        &with(&[(
            "validity_days = 7300",
            "validity_days = 7300\nnot_after = \"9999-12-31T23:59:59Z\"",
        )]),
        "certificate",
    );
    let p = parse(&with(&[(
        "validity_days = 7300",
        "not_after = \"9999-12-31T23:59:59Z\"",
    )]))
    .unwrap();
    assert_eq!(
        p.certificate().validity,
        CertValidity::NotAfter(253_402_300_799)
    );
}

#[test]
fn certificate_validity_days_range() {
    for bad in ["0", "36501", "4294967296"] {
        assert_invalid(
            &with(&[("validity_days = 7300", &format!("validity_days = {bad}"))]),
            "certificate.validity_days",
        );
    }
    assert!(parse(&with(&[("validity_days = 7300", "validity_days = 36500")])).is_ok());
}

#[test]
fn certificate_not_after_rules() {
    assert_invalid(
        &with(&[("validity_days = 7300", "not_after = \"9999-12-31\"")]),
        "certificate.not_after",
    );
    let message = assert_invalid(
        &with(&[(
            "validity_days = 7300",
            "not_after = \"2027-05-01T00:00:00Z\"",
        )]),
        "certificate.not_after",
    );
    assert!(message.contains("job.not_after"), "{message}");
}

#[test]
fn certificate_extended_key_usage_rules() {
    let message = assert_invalid(
        &with(&[("[\"client-auth\"]", "[\"client-auth\", \"client-auth\"]")]),
        "certificate.extended_key_usage[1]",
    );
    assert!(message.contains("client-auth"), "{message}");
    let p = parse(&with(&[("extended_key_usage = [\"client-auth\"]\n", "")])).unwrap();
    assert!(p.certificate().extended_key_usage.is_empty());
    let p = parse(&with(&[(
        "[\"client-auth\"]",
        "[\"server-auth\", \"client-auth\"]",
    )]))
    .unwrap();
    assert_eq!(
        p.certificate().extended_key_usage,
        vec![ExtendedKeyUsage::ServerAuth, ExtendedKeyUsage::ClientAuth]
    );
}

// ---- [lock] ----

#[test]
fn lock_requires_challenge_when_locking() {
    for level in ["readout", "permanent"] {
        let message = assert_invalid(
            &with(&[
                ("level = \"readout\"", &format!("level = \"{level}\"")),
                ("require_challenge = true", "require_challenge = false"),
            ]),
            "lock.require_challenge",
        );
        assert!(message.contains(level), "{message}");
    }
    let p = parse(&with(&[
        ("level = \"readout\"", "level = \"none\""),
        ("require_challenge = true", "require_challenge = false"),
    ]))
    .unwrap();
    assert!(!p.lock().require_challenge);
    // Default is true.
    let p = parse(&with(&[("require_challenge = true\n", "")])).unwrap();
    assert!(p.lock().require_challenge);
}

#[test]
fn avr_lock_byte_only_for_avr_isp() {
    let message = assert_invalid(
        &with(&[(
            "require_challenge = true",
            "require_challenge = true\navr_lock_byte = 0xFC",
        )]),
        "lock.avr_lock_byte",
    );
    assert!(message.contains("avr-isp"), "{message}");
}

#[test]
fn avr_lock_byte_defaults_and_checks() {
    let avr = |extra: &str, level: &str| {
        with(&[
            ("driver = \"sim\"", "driver = \"avr-isp\""),
            (
                "level = \"readout\"",
                &format!("level = \"{level}\"{extra}"),
            ),
        ])
    };
    let p = parse(&avr("", "readout")).unwrap();
    assert_eq!(p.lock().avr_lock_byte, Some(DEFAULT_AVR_LOCK_BYTE));
    let p = parse(&avr("\navr_lock_byte = 0xFE", "readout")).unwrap();
    assert_eq!(p.lock().avr_lock_byte, Some(0xFE));
    let p = parse(&avr("", "none")).unwrap();
    assert_eq!(p.lock().avr_lock_byte, None);
    let message = assert_invalid(
        &avr("\navr_lock_byte = 0xFF", "readout"),
        "lock.avr_lock_byte",
    );
    assert!(message.contains("LB1"), "{message}");
    assert_invalid(&avr("\navr_lock_byte = 0xFC", "none"), "lock.avr_lock_byte");
    assert_syntax(&avr("\navr_lock_byte = 0x1FC", "readout"));
}

// ---- [audit] ----

#[test]
fn audit_ranges() {
    for bad in ["0", "1000001"] {
        assert_invalid(
            &with(&[(
                "checkpoint_every_units = 100",
                &format!("checkpoint_every_units = {bad}"),
            )]),
            "audit.checkpoint_every_units",
        );
    }
    for bad in ["0", "86401"] {
        assert_invalid(
            &with(&[(
                "checkpoint_every_seconds = 60",
                &format!("checkpoint_every_seconds = {bad}"),
            )]),
            "audit.checkpoint_every_seconds",
        );
    }
    let p = parse(&with(&[
        (
            "checkpoint_every_units = 100",
            "checkpoint_every_units = 1000000",
        ),
        (
            "checkpoint_every_seconds = 60",
            "checkpoint_every_seconds = 86400",
        ),
    ]))
    .unwrap();
    assert_eq!(p.audit().checkpoint_every_units, 1_000_000);
}

#[test]
fn require_pin_holder_safe_defaults_to_false_and_parses() {
    assert!(!parse(BASE).unwrap().job().require_pin_holder_safe);
    let on = with(&[(
        "quota = 1000\n",
        "quota = 1000\nrequire_pin_holder_safe = true\n",
    )]);
    assert!(parse(&on).unwrap().job().require_pin_holder_safe);
    let wrong = with(&[(
        "quota = 1000\n",
        "quota = 1000\nrequire_pin_holder_safe = \"yes\"\n",
    )]);
    assert_syntax(&wrong);
}
