//! Intel HEX loading never panics, and every image it accepts is well-formed.

#![no_main]

use flashgate_firmware::{load, InputFormat, MAX_IMAGE_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(segments) = load(data, InputFormat::IntelHex) else {
        return;
    };
    assert!(!segments.is_empty(), "an accepted image has data");
    let mut total: u64 = 0;
    let mut previous_end: Option<u64> = None;
    for segment in &segments {
        assert!(!segment.data.is_empty(), "segments are non-empty");
        let start = u64::from(segment.address);
        let end = segment.end();
        assert!(end <= 1 << 32, "segments end within 4 GiB");
        if let Some(previous_end) = previous_end {
            // Strictly greater: equal would mean adjacent pieces were not joined.
            assert!(
                start > previous_end,
                "segments are sorted, non-overlapping and non-adjacent"
            );
        }
        previous_end = Some(end);
        total += segment.data.len() as u64;
    }
    assert!(total <= MAX_IMAGE_SIZE, "total size is within the cap");
});
