//! Policy parsing never panics, and every policy it accepts keeps its
//! documented invariants.

#![no_main]

use flashgate_policy::{KeyRole, KeyType, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_toml_str(text) else {
        return;
    };

    let job = policy.job();
    let serial = policy.serial();
    assert!(job.quota >= 1, "quota is at least 1");
    assert!(
        job.quota <= serial.capacity(),
        "serial range covers the quota"
    );
    assert!(job.not_before < job.not_after, "job window is not empty");

    let identities: Vec<_> = policy
        .keys()
        .iter()
        .filter(|k| k.role == Some(KeyRole::Identity))
        .collect();
    assert_eq!(identities.len(), 1, "exactly one identity key");
    assert_eq!(
        identities[0].key_type,
        KeyType::P256,
        "identity key is P-256"
    );
    assert_eq!(policy.identity_key(), identities[0]);

    let expected_len = serial.prefix.len() + usize::from(serial.width);
    for index in [0, job.quota - 1] {
        let Some(s) = policy.serial_for(index) else {
            panic!("serial_for({index}) is None for a unit within the quota");
        };
        assert_eq!(
            s.len(),
            expected_len,
            "serial {s:?} has prefix + width chars"
        );
        assert!(s.starts_with(&serial.prefix));
    }

    // Rendering accepted templates cannot fail or panic.
    let first = policy.serial_for(0).unwrap_or_default();
    let fields = policy.certificate().render(&first, &[0x00, 0xff]);
    assert!(
        !fields.common_name.is_empty(),
        "common name renders non-empty"
    );
});
