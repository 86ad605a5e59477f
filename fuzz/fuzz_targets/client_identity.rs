//! Reading the role out of a client certificate never panics, whatever
//! the bytes. What it accepts names exactly one role word as the subject's
//! OU, has a common name, and carries the SHA-256 of exactly the bytes it
//! was given; reading the same bytes again gives the same identity.

#![no_main]

use flashgate::station_ca::{fingerprint, ClientIdentity, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ClientIdentity::from_der(data) {
        Ok(id) => {
            assert_eq!(id.fingerprint, fingerprint(data));
            assert!(Role::ALL.contains(&id.role));
            assert!(
                id.subject.contains(&format!("OU={}", id.role.as_str())),
                "{} names its role",
                id.subject
            );
            assert!(!id.common_name.is_empty());
            assert!(id.audit_name().ends_with(&format!("(sha256:{})", hex(&id.fingerprint))));
            assert_eq!(ClientIdentity::from_der(data).ok(), Some(id));
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.is_empty() && !text.contains('\n'), "one sentence: {text:?}");
        }
    }
});

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
