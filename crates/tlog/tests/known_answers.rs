//! Known answers that need no files: the RFC 6962 reference tree of eight
//! leaves, as used by certificate-transparency and transparency-dev.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flashgate_tlog::{
    consistency_proof, empty_root, inclusion_proof, verify_consistency, verify_inclusion, Tree,
};

mod common;

use common::{h, leaves, ROOTS};

#[test]
fn reference_tree_roots() {
    let mut tree = Tree::new();
    assert_eq!(tree.root(), empty_root());
    for (leaf, root) in leaves().into_iter().zip(ROOTS) {
        tree.push_leaf_hash(leaf).unwrap();
        assert_eq!(tree.root(), h(root), "size {}", tree.size());
    }
}

#[test]
fn reference_tree_proofs() {
    let all = leaves();
    // RFC 6962 reference audit path for leaf 0 of 8.
    assert_eq!(
        inclusion_proof(&all, 0, 8).unwrap(),
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ]
    );
    // RFC 6962 reference consistency proof from 6 to 8.
    assert_eq!(
        consistency_proof(&all, 6, 8).unwrap(),
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ]
    );
    for n in 1..=8u64 {
        for m in 0..n {
            let p = inclusion_proof(&all, m, n).unwrap();
            verify_inclusion(&all[m as usize], m, n, &p, &h(ROOTS[n as usize - 1])).unwrap();
        }
        for m in 1..=n {
            let p = consistency_proof(&all, m, n).unwrap();
            verify_consistency(
                m,
                n,
                &p,
                &h(ROOTS[m as usize - 1]),
                &h(ROOTS[n as usize - 1]),
            )
            .unwrap();
        }
    }
}
