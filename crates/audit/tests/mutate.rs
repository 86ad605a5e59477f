//! The bundle fuzz target's property, run as an ordinary test with a fixed
//! seed: random byte patches, deletions and duplications in records.log or
//! checkpoints.log never verify clean, and the verifier never panics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use flashgate_audit::verify_parts;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

#[test]
fn mutated_bundles_never_verify_clean() {
    let records = chain(history(6));
    let cps = vec![checkpoint(&records, records.len())];
    let (rv, cv) = (frames(&records), frames(&cps));
    let certs = history_certs(6);
    let opts = options(100);
    let clean = verify_parts(rv.as_slice(), cv.as_slice(), Some(&certs), &opts).unwrap();
    assert!(clean.is_clean(), "{clean}");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..1500 {
        let (mut r, mut c) = (rv.clone(), cv.clone());
        let target = if rng.next() % 3 == 0 { &mut c } else { &mut r };
        match rng.next() % 4 {
            0 => {
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(target.len());
                    target[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let a = rng.below(target.len());
                let n = 1 + rng.below((target.len() - a).min(300));
                target.drain(a..a + n);
            }
            2 => {
                let a = rng.below(target.len());
                let n = 1 + rng.below((target.len() - a).min(300));
                let dup = target[a..a + n].to_vec();
                let at = rng.below(target.len());
                target.splice(at..at, dup);
            }
            _ => {
                let n = rng.below(target.len());
                target.truncate(n);
            }
        }
        let report = verify_parts(r.as_slice(), c.as_slice(), Some(&certs), &opts).unwrap();
        if r == rv && c == cv {
            assert!(report.is_clean());
        } else {
            assert!(!report.is_clean(), "a mutated bundle verified clean");
        }
    }
}
