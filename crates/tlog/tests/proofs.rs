//! Generated proofs against the recursive definitions of RFC 9162, and the
//! verifiers against every small mutation of a valid proof.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;

use flashgate_tlog::{
    consistency_proof, empty_root, inclusion_proof, leaf_hash, node_hash, verify_consistency,
    verify_inclusion, Error, Hash, LeafHashes, Tree,
};

const MAX_SIZE: u64 = 64;

fn leaves(n: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(format!("record {i}").as_bytes()))
        .collect()
}

fn k(n: usize) -> usize {
    1usize << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]), RFC 9162 §2.1.1.
fn mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => empty_root(),
        1 => d[0],
        n => node_hash(&mth(&d[..k(n)]), &mth(&d[k(n)..])),
    }
}

/// PATH(m, D[n]), RFC 9162 §2.1.3.1.
fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    if n == 1 {
        return vec![];
    }
    let k = k(n);
    let mut p = if m < k {
        path(m, &d[..k])
    } else {
        path(m - k, &d[k..])
    };
    p.push(if m < k { mth(&d[k..]) } else { mth(&d[..k]) });
    p
}

/// SUBPROOF(m, D[n], b), RFC 9162 §2.1.4.1.
fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let k = k(n);
    let mut p;
    if m <= k {
        p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
    } else {
        p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
    }
    p
}

/// Values within 4 of `x`, clamped to `lo..=hi`: the neighbouring indices
/// and sizes whose proofs are most alike.
fn near(x: u64, lo: u64, hi: u64) -> std::ops::RangeInclusive<u64> {
    x.saturating_sub(4).max(lo)..=x.saturating_add(4).min(hi)
}

fn roots(all: &[Hash]) -> Vec<Hash> {
    let mut t = Tree::new();
    let mut r = vec![t.root()];
    for h in all {
        t.push_leaf_hash(*h).unwrap();
        r.push(t.root());
    }
    r
}

/// Which bits of each proof hash to flip.
#[derive(Clone, Copy)]
enum Flips {
    /// All 256 bits.
    Every,
    /// Eight bits spread over the hash: one in each quarter-word, each at a
    /// different position within its byte.
    Spread,
}

impl Flips {
    fn bits(self) -> Vec<usize> {
        match self {
            Flips::Every => (0..256).collect(),
            Flips::Spread => (0..8).map(|k| (4 * k + k % 4) * 8 + k).collect(),
        }
    }

    /// Every bit up to size 16 and a spread of bits beyond, which keeps the
    /// default debug-build run short; the ignored `exhaustive_*` tests flip
    /// every bit at every size.
    fn for_size(n: u64) -> Self {
        if n <= 16 {
            Flips::Every
        } else {
            Flips::Spread
        }
    }
}

/// Every way of spoiling a proof: bits flipped one at a time in every hash,
/// one hash added at either end or in the middle, the last one repeated, and
/// each hash removed in turn.
fn mutations(proof: &[Hash], flips: Flips) -> Vec<Vec<Hash>> {
    let mut out = Vec::new();
    for i in 0..proof.len() {
        for bit in flips.bits() {
            let mut p = proof.to_vec();
            p[i][bit / 8] ^= 1 << (bit % 8);
            out.push(p);
        }
        let mut p = proof.to_vec();
        p.remove(i);
        out.push(p);
    }
    let extra = leaf_hash(b"extra");
    for at in [0, proof.len() / 2, proof.len()] {
        let mut p = proof.to_vec();
        p.insert(at, extra);
        out.push(p);
    }
    if let Some(last) = proof.last() {
        let mut p = proof.to_vec();
        p.push(*last);
        out.push(p);
    }
    out
}

#[test]
fn inclusion_proofs_match_rfc_and_resist_mutation() {
    check_inclusion(Flips::for_size);
}

#[test]
#[ignore = "flips all 256 bits at every size: minutes in a debug build, seconds with --release"]
fn exhaustive_inclusion_bit_flips() {
    check_inclusion(|_| Flips::Every);
}

fn check_inclusion(flips: fn(u64) -> Flips) {
    let all = leaves(MAX_SIZE);
    let roots = roots(&all);
    let mut checked = 0u32;
    for n in 1..=MAX_SIZE {
        let root = roots[n as usize];
        assert_eq!(root, mth(&all[..n as usize]));
        for m in 0..n {
            let proof = inclusion_proof(&all, m, n).unwrap();
            assert_eq!(
                proof,
                path(m as usize, &all[..n as usize]),
                "PATH({m}, D[{n}])"
            );
            let leaf = all[m as usize];
            verify_inclusion(&leaf, m, n, &proof, &root).unwrap();

            for bad in mutations(&proof, flips(n)) {
                assert!(
                    verify_inclusion(&leaf, m, n, &bad, &root).is_err(),
                    "mutated proof for leaf {m} of {n} accepted"
                );
            }
            // Wrong leaf, root, index or size.
            let other = leaf_hash(b"other");
            assert_eq!(
                verify_inclusion(&other, m, n, &proof, &root),
                Err(Error::RootMismatch)
            );
            assert_eq!(
                verify_inclusion(&leaf, m, n, &proof, &other),
                Err(Error::RootMismatch)
            );
            for m2 in near(m, 0, n - 1) {
                if m2 != m {
                    assert!(verify_inclusion(&leaf, m2, n, &proof, &root).is_err());
                }
            }
            // The size is bound by the root, not by the proof: a proof can
            // have the same shape at another size, but never leads to that
            // size's root.
            for n2 in near(n, 1, MAX_SIZE) {
                if n2 != n {
                    assert!(verify_inclusion(&leaf, m, n2, &proof, &roots[n2 as usize]).is_err());
                }
            }
            checked += 1;
        }
        assert_eq!(
            verify_inclusion(&all[0], n, n, &[], &root),
            Err(Error::IndexOutOfRange { index: n, size: n })
        );
    }
    assert_eq!(checked, 64 * 65 / 2);
}

#[test]
fn consistency_proofs_match_rfc_and_resist_mutation() {
    check_consistency(Flips::for_size);
}

#[test]
#[ignore = "flips all 256 bits at every size: minutes in a debug build, seconds with --release"]
fn exhaustive_consistency_bit_flips() {
    check_consistency(|_| Flips::Every);
}

fn check_consistency(flips: fn(u64) -> Flips) {
    let all = leaves(MAX_SIZE);
    let roots = roots(&all);
    let mut checked = 0u32;
    for n in 1..=MAX_SIZE {
        for m in 1..=n {
            let (r1, r2) = (roots[m as usize], roots[n as usize]);
            let proof = consistency_proof(&all, m, n).unwrap();
            assert_eq!(
                proof,
                subproof(m as usize, &all[..n as usize], true),
                "PROOF({m}, D[{n}])"
            );
            assert_eq!(proof.is_empty(), m == n);
            verify_consistency(m, n, &proof, &r1, &r2).unwrap();

            for bad in mutations(&proof, flips(n)) {
                assert!(
                    verify_consistency(m, n, &bad, &r1, &r2).is_err(),
                    "mutated proof from {m} to {n} accepted"
                );
            }
            let other = leaf_hash(b"other");
            assert!(verify_consistency(m, n, &proof, &other, &r2).is_err());
            assert!(verify_consistency(m, n, &proof, &r1, &other).is_err());
            if m != n {
                assert!(verify_consistency(m, n, &proof, &r2, &r1).is_err());
                assert!(verify_consistency(n, m, &proof, &r2, &r1).is_err());
            }
            for n2 in near(n, m, MAX_SIZE) {
                if n2 != n {
                    assert!(verify_consistency(m, n2, &proof, &r1, &roots[n2 as usize]).is_err());
                }
            }
            for m2 in near(m, 1, n) {
                if m2 != m {
                    assert!(verify_consistency(m2, n, &proof, &roots[m2 as usize], &r2).is_err());
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 64 * 65 / 2);
}

#[test]
fn consistency_edge_cases() {
    let all = leaves(4);
    let roots = roots(&all);
    let (r0, r1, r2) = (roots[0], roots[1], roots[2]);

    // Equal sizes: empty proof and equal roots.
    verify_consistency(2, 2, &[], &r2, &r2).unwrap();
    assert_eq!(
        verify_consistency(2, 2, &[], &r2, &r1),
        Err(Error::RootMismatch)
    );
    assert_eq!(
        verify_consistency(2, 2, &[r1], &r2, &r2),
        Err(Error::ProofLength {
            expected: 0,
            actual: 1
        })
    );
    // From the empty tree: never, whatever the proof.
    for size2 in [0, 1, 4] {
        assert_eq!(
            verify_consistency(0, size2, &[], &r0, &roots[size2 as usize]),
            Err(Error::EmptyFirstTree)
        );
        assert_eq!(
            verify_consistency(0, size2, &[r0], &r0, &roots[size2 as usize]),
            Err(Error::EmptyFirstTree)
        );
        assert_eq!(
            consistency_proof(&all, 0, size2),
            Err(Error::EmptyFirstTree)
        );
    }
    // Shrinking.
    assert_eq!(
        verify_consistency(3, 2, &[], &r2, &r2),
        Err(Error::TreeSizeOrder { size1: 3, size2: 2 })
    );
    assert_eq!(
        consistency_proof(&all, 3, 2),
        Err(Error::TreeSizeOrder { size1: 3, size2: 2 })
    );
    // Growing with an empty proof.
    assert_eq!(
        verify_consistency(1, 2, &[], &r1, &r2),
        Err(Error::ProofLength {
            expected: 1,
            actual: 0
        })
    );
}

#[test]
fn generation_rejects_sizes_beyond_the_store() {
    let all = leaves(5);
    assert_eq!(
        inclusion_proof(&all, 0, 6),
        Err(Error::TreeSizeTooLarge {
            size: 6,
            available: 5
        })
    );
    assert_eq!(
        inclusion_proof(&all, 5, 5),
        Err(Error::IndexOutOfRange { index: 5, size: 5 })
    );
    assert_eq!(
        consistency_proof(&all, 1, 6),
        Err(Error::TreeSizeTooLarge {
            size: 6,
            available: 5
        })
    );
    assert_eq!(inclusion_proof(all.as_slice(), 4, 5).unwrap().len(), 1);
}

#[test]
fn verification_at_extreme_sizes_does_not_panic() {
    let h = leaf_hash(b"x");
    let cases = [
        (0, u64::MAX),
        (u64::MAX - 1, u64::MAX),
        (1 << 63, u64::MAX),
        ((1 << 63) - 1, 1 << 63),
        (0, 1 << 63),
    ];
    for (index, size) in cases {
        let Err(Error::ProofLength {
            expected,
            actual: 0,
        }) = verify_inclusion(&h, index, size, &[], &h)
        else {
            panic!("empty proof accepted for {index} of {size}");
        };
        assert!(expected <= 128);
        let proof = vec![h; expected];
        assert_eq!(
            verify_inclusion(&h, index, size, &proof, &h),
            Err(Error::RootMismatch)
        );
        let (size1, size2) = (index.max(1), size);
        let Err(Error::ProofLength {
            expected,
            actual: 0,
        }) = verify_consistency(size1, size2, &[], &h, &h)
        else {
            panic!("empty proof accepted from {size1} to {size2}");
        };
        let proof = vec![h; expected];
        assert_eq!(
            verify_consistency(size1, size2, &proof, &h, &h),
            Err(Error::RootMismatch)
        );
    }
}

/// A store that keeps every complete subtree root and counts leaf reads.
struct FullStore {
    levels: Vec<Vec<Hash>>,
    leaf_reads: Cell<u64>,
}

impl FullStore {
    fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().unwrap().len() > 1 {
            let next = levels
                .last()
                .unwrap()
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
            levels.push(next);
        }
        Self {
            levels,
            leaf_reads: Cell::new(0),
        }
    }
}

impl LeafHashes for FullStore {
    type Error = Error;

    fn len(&self) -> u64 {
        self.levels[0].len() as u64
    }

    fn leaf_hash(&self, index: u64) -> Result<Hash, Error> {
        self.leaf_reads.set(self.leaf_reads.get() + 1);
        Ok(self.levels[0][index as usize])
    }

    fn subtree_hash(&self, level: u32, index: u64) -> Result<Option<Hash>, Error> {
        Ok(self
            .levels
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied())
    }
}

#[test]
fn subtree_hashes_from_the_store_give_the_same_proofs_with_few_reads() {
    let n = 1000u64;
    let all = leaves(n);
    let store = FullStore::new(all.clone());
    for (m, size) in [
        (0, 1000),
        (999, 1000),
        (517, 777),
        (0, 1),
        (255, 256),
        (300, 513),
    ] {
        store.leaf_reads.set(0);
        assert_eq!(
            inclusion_proof(&store, m, size).unwrap(),
            inclusion_proof(&all, m, size).unwrap()
        );
        assert!(
            store.leaf_reads.get() <= 2 * 64,
            "{}",
            store.leaf_reads.get()
        );
    }
    for (m, size) in [(1, 1000), (999, 1000), (517, 777), (256, 1000), (3, 5)] {
        store.leaf_reads.set(0);
        assert_eq!(
            consistency_proof(&store, m, size).unwrap(),
            consistency_proof(&all, m, size).unwrap()
        );
        assert!(
            store.leaf_reads.get() <= 2 * 64,
            "{}",
            store.leaf_reads.get()
        );
    }
}

/// A store whose reads fail, to check errors pass through unchanged.
struct Broken;

#[derive(Debug, PartialEq)]
enum StoreError {
    Io,
    Tlog(Error),
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        StoreError::Tlog(e)
    }
}

impl LeafHashes for Broken {
    type Error = StoreError;

    fn len(&self) -> u64 {
        10
    }

    fn leaf_hash(&self, _index: u64) -> Result<Hash, StoreError> {
        Err(StoreError::Io)
    }
}

#[test]
fn store_errors_pass_through() {
    assert_eq!(inclusion_proof(&Broken, 3, 10), Err(StoreError::Io));
    assert_eq!(consistency_proof(&Broken, 3, 10), Err(StoreError::Io));
    assert_eq!(
        inclusion_proof(&Broken, 3, 11),
        Err(StoreError::Tlog(Error::TreeSizeTooLarge {
            size: 11,
            available: 10
        }))
    );
    assert_eq!(consistency_proof(&Broken, 3, 3), Ok(vec![]));
}
