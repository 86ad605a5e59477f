//! The JTAG simulator fed arbitrary remote_bitbang bytes (what a host
//! sends): it never panics, answers exactly one `0`/`1` per `R` (and per
//! `c`) before the first `Q`, and consumes exactly the bytes up to and
//! including that `Q`. Options parse or are refused with a sentence.

#![no_main]

use flashgate_openocd::sim::{JtagSim, SimOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = text.parse::<SimOptions>() {
            assert!(!e.to_string().is_empty(), "a refusal says why");
        }
    }
    let Ok(mut chip) = JtagSim::new(SimOptions::zero()) else {
        return;
    };
    let mut out = Vec::new();
    let fed = chip.feed(data, &mut out);
    let upto = data.iter().position(|&b| b == b'Q').map_or(data.len(), |q| q + 1);
    assert_eq!(fed.consumed, upto, "every byte up to Q is taken");
    assert_eq!(fed.quit, data.contains(&b'Q'), "Q ends the session");
    let reads = data[..upto].iter().filter(|&&b| b == b'R' || b == b'c').count();
    assert_eq!(out.len(), reads, "one answer per read");
    assert!(out.iter().all(|&b| b == b'0' || b == b'1'), "answers are 0 or 1");
});
