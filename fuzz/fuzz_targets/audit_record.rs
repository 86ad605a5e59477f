//! Audit record decoding on hostile bytes. Invariants: it never panics, and
//! every record it accepts re-encodes to exactly the bytes it was given (the
//! leaf hash covers one meaning only).
#![no_main]

use flashgate_audit::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = Record::decode(data) else {
        return;
    };
    assert_eq!(
        record.encode(),
        data,
        "an accepted record re-encodes byte for byte"
    );
});
