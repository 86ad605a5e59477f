//! The deny-list parser never panics. A list that parses refuses exactly
//! the fingerprints written on its lines (comments and blanks aside); one
//! that does not is refused with its line number, never read as a shorter
//! list.

#![no_main]

use std::path::Path;

use flashgate::station_ca::{parse_fingerprint, DenyList};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("revoked");
    match DenyList::parse(path, data) {
        Ok(list) => {
            let text = std::str::from_utf8(data).expect("a list that parses is text");
            let mut n = 0;
            for line in text.lines() {
                let body = line.trim();
                if body.is_empty() || body.starts_with('#') {
                    continue;
                }
                let fp = parse_fingerprint(body).expect("every other line is a fingerprint");
                assert!(list.contains(&fp), "{body:?} is on the list");
                n += 1;
            }
            assert!(list.len() <= n, "no fingerprint that is not written");
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("line "), "the refusal names the line: {text}");
        }
    }
});
