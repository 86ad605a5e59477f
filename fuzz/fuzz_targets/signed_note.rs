//! Signed notes and witness verifier keys: parsing never panics, every note
//! it accepts re-encodes to the same bytes, and a kept checkpoint taken from
//! an accepted note is a signed checkpoint whose text is the note's.

#![no_main]

use flashgate_note::{CosignerKey, SignedNote};
use libfuzzer_sys::fuzz_target;

/// Any valid P-256 point will do: the appliance line's key ID depends on it.
const LOG_KEY: [u8; 65] = {
    let mut k = [0u8; 65];
    k[0] = 4;
    k
};

fuzz_target!(|data: &[u8]| {
    if let Ok(note) = SignedNote::parse(data) {
        assert_eq!(
            note.to_text().as_bytes(),
            data,
            "an accepted note re-encodes byte for byte"
        );
        assert!(!note.signatures.is_empty(), "an accepted note is signed");
        if let Ok(cose) = flashgate_audit::cosigned::checkpoint_in_note(&note, &LOG_KEY) {
            let cp = flashgate_audit::UnverifiedCheckpoint::parse(&cose)
                .expect("what a note yields parses as a signed checkpoint");
            assert_eq!(cp.checkpoint_unverified().to_text(), note.text);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = CosignerKey::parse_vkey(text) {
            assert_eq!(
                key.to_vkey(),
                text.trim_end_matches('\n'),
                "an accepted verifier key re-encodes"
            );
        }
    }
    let _ = flashgate_audit::kept_checkpoint(data, &LOG_KEY);
});
