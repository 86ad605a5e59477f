//! Checkpoint parsing never panics, and every text it accepts re-encodes to
//! the same bytes.

#![no_main]

use flashgate_tlog::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(checkpoint) = Checkpoint::parse(data) else {
        return;
    };
    assert_eq!(
        checkpoint.to_text().as_bytes(),
        data,
        "an accepted checkpoint re-encodes byte for byte"
    );
    assert_eq!(
        checkpoint.validate(),
        Ok(()),
        "an accepted checkpoint is valid"
    );
});
