//! Location and lock-level parsing never panic. A location that parses is
//! displayed in the one form, which parses back to it and displays the same;
//! a lock level parses only from its own word; every refusal is a sentence
//! that says what to write.

#![no_main]

use flashgate_device::{Location, LockLevel, Space};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<Location>() {
        Ok(at) => {
            let shown = at.to_string();
            let again: Location = match shown.parse() {
                Ok(again) => again,
                Err(e) => panic!("{shown:?}, the display of {text:?}, does not parse: {e}"),
            };
            assert_eq!(again, at, "{shown:?} parses back to the location");
            assert_eq!(again.to_string(), shown, "the display is stable");
        }
        Err(e) => assert!(e.to_string().contains(": write "), "{text:?}: {e}"),
    }
    match text.parse::<Space>() {
        Ok(space) => assert_eq!(space.as_str(), text, "a space parses only from its word"),
        Err(e) => assert!(e.to_string().contains(": write "), "{text:?}: {e}"),
    }
    match text.parse::<LockLevel>() {
        Ok(level) => assert_eq!(level.as_str(), text, "a lock level parses only from its word"),
        Err(e) => assert!(e.to_string().contains(": write "), "{text:?}: {e}"),
    }
});
