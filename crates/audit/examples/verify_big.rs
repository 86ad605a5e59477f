//! Verifier throughput and memory on a large log.
//!
//! ```text
//! cargo run --release -p flashgate-audit --example verify_big -- generate DIR [RECORDS]
//! /usr/bin/time -v target/release/examples/verify_big verify DIR
//! ```
//!
//! `generate` writes `records.log`, `checkpoints.log` (one checkpoint per
//! 10,000 records) and `certs.bin` (the 32-byte certificate hashes the
//! bundle would hold) into DIR, once. `verify` streams all three through the
//! verifier (nothing is loaded whole, so the peak memory is the verifier's
//! own) and prints records per second; run it under `/usr/bin/time -v` for
//! the peak resident memory. The default, 1,000,000 records, is about
//! 935,000 units.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: verify_big (generate DIR [RECORDS] | verify DIR)";
    let cmd = args.next().expect(usage);
    let dir = PathBuf::from(args.next().expect(usage));
    match cmd.as_str() {
        "generate" => {
            let n: u64 = args
                .next()
                .map_or(1_000_000, |s| s.parse().expect("a number"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut r = BufWriter::new(File::create(dir.join("records.log")).unwrap());
            let mut c = BufWriter::new(File::create(dir.join("checkpoints.log")).unwrap());
            let t = Instant::now();
            let certs = common::generate(n, 10_000, &mut r, &mut c);
            r.flush().unwrap();
            c.flush().unwrap();
            let mut out = BufWriter::new(File::create(dir.join("certs.bin")).unwrap());
            for h in &certs {
                out.write_all(h).unwrap();
            }
            out.flush().unwrap();
            println!(
                "generated {} bytes of records in {:.1} s",
                std::fs::metadata(dir.join("records.log")).unwrap().len(),
                t.elapsed().as_secs_f64()
            );
        }
        "verify" => {
            let mut certs_file = BufReader::new(File::open(dir.join("certs.bin")).unwrap());
            let certs = std::iter::from_fn(move || {
                let mut h = [0u8; 32];
                certs_file.read_exact(&mut h).ok().map(|()| h)
            });
            let t = Instant::now();
            let report = flashgate_audit::verify_parts(
                BufReader::new(File::open(dir.join("records.log")).unwrap()),
                BufReader::new(File::open(dir.join("checkpoints.log")).unwrap()),
                Some(certs),
                &common::options(u64::MAX),
            )
            .unwrap();
            let secs = t.elapsed().as_secs_f64();
            print!("{report}");
            println!(
                "verified {} records in {secs:.2} s: {:.0} records/s",
                report.records,
                report.records as f64 / secs
            );
            assert!(report.is_clean());
        }
        _ => panic!("{usage}"),
    }
}
