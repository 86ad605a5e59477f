//! Streaming a log the way the offline verifier does: hash 1,000,000 records
//! into leaves, append them, and recompute the root every 1,000 leaves.
//!
//! Run with `cargo bench -p flashgate-tlog --bench tree`. Prints the
//! throughput of one timed pass in records per second, then lets criterion
//! measure the same pass.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashgate_tlog::{leaf_hash, Hash, Tree};

const RECORDS: u64 = 1_000_000;
const CHECKPOINT_EVERY: u64 = 1_000;

/// Appends `RECORDS` leaves built from 64-byte records and returns an XOR of
/// all intermediate roots, so that none of them can be optimised away.
fn stream() -> Hash {
    let mut tree = Tree::new();
    let mut record = [0u8; 64];
    let mut acc = [0u8; 32];
    for i in 0..RECORDS {
        record[..8].copy_from_slice(&i.to_le_bytes());
        if tree.push_leaf_hash(leaf_hash(black_box(&record))).is_err() {
            break;
        }
        if tree.size() % CHECKPOINT_EVERY == 0 {
            for (a, r) in acc.iter_mut().zip(tree.root()) {
                *a ^= r;
            }
        }
    }
    acc
}

fn bench(c: &mut Criterion) {
    let start = Instant::now();
    black_box(stream());
    let secs = start.elapsed().as_secs_f64();
    println!(
        "tree/stream: {RECORDS} records, root every {CHECKPOINT_EVERY}: {secs:.3} s, {:.0} records/s",
        RECORDS as f64 / secs
    );

    let mut group = c.benchmark_group("tree");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("stream_1m_root_every_1k", |b| b.iter(stream));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
