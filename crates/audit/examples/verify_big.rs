//! Verifier throughput and memory on a large log.
//!
//! ```text
//! cargo run --release -p flashgate-audit --example verify_big -- generate DIR [RECORDS]
//! /usr/bin/time -v target/release/examples/verify_big verify DIR
//! cargo run --release -p flashgate-audit --example verify_big -- generate-bundle DIR [RECORDS]
//! /usr/bin/time -v target/release/examples/verify_big verify-bundle DIR
//! ```
//!
//! `generate-bundle` writes a bundle directory as `audit export` does
//! (`bundle.json`, one DER file per certificate under `certs/`; the
//! enrollment record and manifest are empty, since `verify-bundle` runs the
//! log verifier that `audit verify` runs once those have been checked).
//! `verify-bundle` verifies it from the files, as `audit verify` does.
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
    let usage = "usage: verify_big (generate DIR [RECORDS] | verify DIR | generate-bundle DIR [RECORDS] | verify-bundle DIR)";
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
        "generate-bundle" => {
            let n: u64 = args
                .next()
                .map_or(1_000_000, |s| s.parse().expect("a number"));
            std::fs::create_dir_all(dir.join("certs")).unwrap();
            let t = Instant::now();
            let mut r = BufWriter::new(File::create(dir.join("records.log")).unwrap());
            let mut c = BufWriter::new(File::create(dir.join("checkpoints.log")).unwrap());
            let mut certificates = Vec::new();
            common::generate_with(n, 10_000, &mut r, &mut c, |der| {
                let name = hex::encode(common::sha256(der));
                std::fs::write(dir.join("certs").join(format!("{name}.der")), der).unwrap();
                certificates.push(name);
            });
            r.flush().unwrap();
            c.flush().unwrap();
            drop((r, c));
            certificates.sort();
            let mut files = std::collections::BTreeMap::new();
            for name in [
                "records.log",
                "checkpoints.log",
                "enrollment.cbor",
                "manifest.cose",
            ] {
                let p = dir.join(name);
                if !p.exists() {
                    File::create(&p).unwrap();
                }
                let mut h = <sha2::Sha256 as sha2::Digest>::new();
                let mut f = BufReader::new(File::open(&p).unwrap());
                let mut buf = vec![0u8; 1 << 16];
                let mut bytes = 0u64;
                loop {
                    let k = f.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    sha2::Digest::update(&mut h, &buf[..k]);
                    bytes += k as u64;
                }
                files.insert(
                    name.to_owned(),
                    flashgate_audit::bundle::FileEntry {
                        sha256: hex::encode(sha2::Digest::finalize(h)),
                        bytes,
                    },
                );
            }
            let count = |name: &str| {
                let mut frames = flashgate_audit::frame::FrameReader::new(BufReader::new(
                    File::open(dir.join(name)).unwrap(),
                ));
                let mut k = 0u64;
                while frames.next_frame().unwrap().is_some() {
                    k += 1;
                }
                k
            };
            let index = flashgate_audit::BundleIndex {
                format: flashgate_audit::bundle::BUNDLE_FORMAT.to_owned(),
                job_id: hex::encode(common::JOB),
                records: count("records.log"),
                checkpoints: count("checkpoints.log"),
                files,
                certificates,
            };
            std::fs::write(
                dir.join("bundle.json"),
                serde_json::to_vec_pretty(&index).unwrap(),
            )
            .unwrap();
            println!(
                "generated a bundle of {} records and {} certificates in {:.1} s",
                index.records,
                index.certificates.len(),
                t.elapsed().as_secs_f64()
            );
        }
        "verify-bundle" => {
            let t = Instant::now();
            let report = flashgate_audit::verify_bundle(&dir, &common::options(u64::MAX)).unwrap();
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
