//! A stand-in for the appliance's production loop, for the SIGKILL crash
//! test: reserves blocks, "issues a secret" for each counter value (appends
//! the value to `<dir>/secrets` and syncs it, as the moment an identity
//! leaves the appliance), then records the unit. Four channels run at once,
//! each using its own blocks in order. Runs until killed, or until
//! `--max-units` units.
//!
//! Usage: `crash_writer <dir> [--max-units N]`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use flashgate_audit::{FileCounterStore, Ledger, Log, LogOptions, RecordKind};

const QUOTA: u64 = 1_000_000;
const CHANNELS: u64 = 4;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .expect("usage: crash_writer <dir> [--max-units N]"),
    );
    let mut max_units = u64::MAX;
    while let Some(a) = args.next() {
        if a == "--max-units" {
            max_units = args.next().and_then(|n| n.parse().ok()).expect("a number");
        }
    }
    let store = Arc::new(FileCounterStore::new(&dir.join("counters")).unwrap());
    let log = Arc::new(Log::open(&dir.join("log"), LogOptions::new(APPLIANCE)).unwrap());
    let fresh = log.size() == 0;
    let ledger = Arc::new(Ledger::new(log, store).unwrap());
    let recovery = ledger.recover(&JOB).unwrap();
    eprintln!("crash_writer: {}", ledger.log().open_report());
    eprintln!("crash_writer: {recovery}");
    if fresh {
        ledger.append(imported(QUOTA)).unwrap();
    }
    // A run id unique to this process.
    let mut run_id = [0u8; 16];
    run_id[..4].copy_from_slice(&std::process::id().to_be_bytes());
    run_id[4..12].copy_from_slice(&flashgate_audit::system_time_ms().to_be_bytes());
    ledger
        .append(RecordKind::RunStarted(
            flashgate_audit::record::RunStarted {
                job_id: JOB,
                run_id,
                operator: "crash-test".to_owned(),
                channels: CHANNELS as u32,
            },
        ))
        .unwrap();
    let s = signer();
    ledger.checkpoint(&s).unwrap();
    let secrets = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("secrets"))
            .unwrap(),
    );
    let per_channel = max_units / CHANNELS;
    let threads: Vec<_> = (0..CHANNELS)
        .map(|_| {
            let ledger = Arc::clone(&ledger);
            let secrets = Arc::clone(&secrets);
            let s = s.clone();
            std::thread::spawn(move || {
                let mut done = 0u64;
                while done < per_channel {
                    let block = ledger.reserve(&JOB, 3, QUOTA).unwrap();
                    for c in block {
                        // The identity leaves the appliance here.
                        (&*secrets).write_all(format!("{c}\n").as_bytes()).unwrap();
                        secrets.sync_data().unwrap();
                        let mut kind = if c % 7 == 6 {
                            failed(c, "challenge")
                        } else {
                            passed(c)
                        };
                        match &mut kind {
                            RecordKind::UnitPassed(p) => p.run_id = run_id,
                            RecordKind::UnitFailed(f) => f.run_id = run_id,
                            _ => {}
                        }
                        ledger.append(kind).unwrap();
                        if c % 10 == 0 {
                            ledger.checkpoint(&s).unwrap();
                        }
                        done += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    ledger.checkpoint(&s).unwrap();
}
