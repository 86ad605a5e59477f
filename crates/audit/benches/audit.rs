//! Audit log costs: durable appends with group commit (1 and 64 appending
//! threads, one `fdatasync` per batch) and verifier throughput.
//!
//! Run with `cargo bench -p flashgate-audit --bench audit`. First prints
//! the figures of one timed pass of each (appends in units per second and
//! syncs used; the verifier over 1,000,000 records in records per second),
//! then lets criterion measure smaller passes. The log is written under the
//! system temporary directory: put it on the disk you care about
//! (`TMPDIR=...`), since a RAM file system makes syncs free.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashgate_audit::{verify_parts, Log, LogOptions};

/// Appends `per_thread` unit records from each of `threads` threads to a
/// fresh log; returns (elapsed, syncs).
fn append(threads: u64, per_thread: u64) -> (Duration, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(tmp.path(), LogOptions::new(common::APPLIANCE)).unwrap());
    let t = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|i| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for j in 0..per_thread {
                    log.append(common::passed(i * per_thread + j)).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    (t.elapsed(), log.sync_count())
}

type Parts = (Vec<u8>, Vec<u8>, Vec<[u8; 32]>);

fn bundle(n: u64) -> Parts {
    let mut r = Vec::new();
    let mut c = Vec::new();
    let certs = common::generate(n, 10_000, &mut r, &mut c);
    (r, c, certs)
}

fn one_shot() {
    for (threads, each) in [(1u64, 300u64), (64, 50)] {
        let (d, syncs) = append(threads, each);
        let n = threads * each;
        println!(
            "append, {threads} thread(s): {n} records in {:.3} s = {:.0} units/s, {syncs} syncs ({:.1} records per sync)",
            d.as_secs_f64(),
            n as f64 / d.as_secs_f64(),
            n as f64 / syncs as f64
        );
    }
    let (r, c, certs) = bundle(1_000_000);
    let opts = common::options(u64::MAX);
    let t = Instant::now();
    let report = verify_parts(r.as_slice(), c.as_slice(), Some(&certs), &opts).unwrap();
    let d = t.elapsed();
    assert!(report.is_clean(), "{report}");
    println!(
        "verify: {} records ({} MB) in {:.2} s = {:.0} records/s",
        report.records,
        r.len() / 1_000_000,
        d.as_secs_f64(),
        report.records as f64 / d.as_secs_f64()
    );
}

fn benches(c: &mut Criterion) {
    one_shot();
    let mut g = c.benchmark_group("append");
    for (threads, each) in [(1u64, 50u64), (64, 8)] {
        g.throughput(Throughput::Elements(threads * each));
        g.bench_function(format!("{threads}-threads"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| append(threads, each).0).sum())
        });
    }
    g.finish();
    let (r, cps, certs) = bundle(100_000);
    let opts = common::options(u64::MAX);
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("100k-records", |b| {
        b.iter(|| verify_parts(r.as_slice(), cps.as_slice(), Some(&certs), &opts).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = audit;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(audit);
