//! Kills a writer process with SIGKILL at random moments, recovers, and
//! checks after every kill that every counter value is recorded exactly
//! once, that every value that received a secret is counted and recorded as
//! passed, failed or aborted (never as unused), and at the end that the
//! exported bundle verifies clean with the aborted units reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use flashgate_audit::bundle::{export, BundleExtras};
use flashgate_audit::{
    verify_bundle, CounterStore, FileCounterStore, Ledger, Log, LogOptions, Record, RecordFile,
    RecordKind, LOG_FILE,
};

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        // `cargo test --test crash` does not build examples; build it.
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "flashgate-audit", "--example", name]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(status.success());
    }
    path
}

/// xorshift64*, seeded from the clock (printed so a failure can be rerun
/// with FLASHGATE_CRASH_SEED).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn secrets(dir: &Path) -> HashSet<u64> {
    let text = std::fs::read_to_string(dir.join("secrets")).unwrap_or_default();
    // A line cut by the kill still names a value that may have left.
    text.split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect()
}

/// Recovers as the next start would, then checks the invariants.
fn recover_and_check(dir: &Path) -> (u64, u64) {
    let store = Arc::new(FileCounterStore::new(&dir.join("counters")).unwrap());
    let log = Arc::new(Log::open(&dir.join("log"), LogOptions::new(APPLIANCE)).unwrap());
    let ledger = Ledger::new(log, store.clone()).unwrap();
    let recovery = ledger.recover(&JOB).unwrap();
    ledger.checkpoint(&signer()).unwrap();
    let counter = store.read(&JOB).unwrap();

    // How each counter value was closed.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum C {
        Open,
        Issued,
        Unused,
    }
    let mut state = vec![C::Open; counter as usize];
    let mut reserved_to = 0u64;
    let mut f = RecordFile::open(&dir.join("log").join(LOG_FILE)).unwrap();
    let mut close = |c: u64, how: C| {
        let s = &mut state[c as usize];
        assert_eq!(*s, C::Open, "counter value {c} closed twice");
        *s = how;
    };
    while let Some((_, b)) = f.next_bytes().unwrap() {
        match Record::decode(b).unwrap().kind {
            RecordKind::UnitsReserved(r) => {
                assert_eq!(r.first, reserved_to);
                reserved_to += r.count;
            }
            RecordKind::UnitPassed(r) => close(r.counter, C::Issued),
            RecordKind::UnitFailed(r) => close(r.counter, C::Issued),
            RecordKind::UnitAborted(r) => close(r.counter, C::Issued),
            RecordKind::UnitsUnused(r) => {
                for c in r.first..r.first + r.count {
                    close(c, C::Unused);
                }
            }
            _ => {}
        }
    }
    // No counter value without a record, none reserved beyond the counter.
    assert_eq!(reserved_to, counter);
    assert!(state.iter().all(|s| *s != C::Open), "{state:?}");
    // Units counted >= units that received a secret; each of those is
    // recorded as issued (passed, failed or aborted), never as unused.
    let issued = secrets(dir);
    assert!(issued.len() as u64 <= counter);
    for c in &issued {
        assert!(
            *c < counter,
            "secret for value {c} beyond counter {counter}"
        );
        assert_eq!(state[*c as usize], C::Issued, "value {c} got a secret");
    }
    (counter, recovery.aborted.len() as u64)
}

#[test]
fn sigkill_at_random_points_keeps_the_invariants() {
    let exe = example("crash_writer");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seed = std::env::var("FLASHGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| flashgate_audit::system_time_ms() | 1);
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut kills = 0;
    let mut aborted_total = 0;
    let mut last_counter = 0;
    while kills < 24 && started.elapsed() < Duration::from_secs(90) {
        let mut child = Command::new(&exe)
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + rng.next() % 220));
        // std's kill sends SIGKILL on Unix.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "the writer should have been killed");
        kills += 1;
        let (counter, aborted) = recover_and_check(dir);
        assert!(counter >= last_counter);
        last_counter = counter;
        aborted_total += aborted;
    }
    assert!(kills >= 20, "only {kills} kills in the time allowed");
    assert!(last_counter > 0, "the writer never got to work");

    // A final clean run to the end, then the OEM's view.
    let status = Command::new(&exe)
        .arg(dir)
        .args(["--max-units", "8"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (counter, _) = recover_and_check(dir);
    let out = dir.join("bundle");
    let certs: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        let mut f = RecordFile::open(&dir.join("log").join(LOG_FILE)).unwrap();
        while let Some((_, b)) = f.next_bytes().unwrap() {
            if let RecordKind::UnitPassed(p) = Record::decode(b).unwrap().kind {
                v.push(cert(p.counter));
            }
        }
        v
    };
    export(
        &dir.join("log"),
        &JOB,
        &BundleExtras {
            enrollment: vec![],
            manifest: vec![],
            certificates: certs,
            certificate_dir: None,
        },
        &out,
    )
    .unwrap();
    let report = verify_bundle(&out, &options(1_000_000)).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.quota.used, counter);
    assert_eq!(
        report.units.passed + report.units.failed + report.units.aborted + report.units.unused,
        counter
    );
    assert_eq!(report.units.aborted, aborted_total);
    eprintln!("{kills} kills; {report}");
    assert!(
        report.units.aborted > 0,
        "no kill landed while a unit was in flight (seed {seed})"
    );
}
