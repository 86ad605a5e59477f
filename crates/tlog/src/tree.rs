//! Streaming Merkle tree builder (RFC 9162 §2.1.1).

use crate::hash::{empty_root, node_hash, Hash};
use crate::Error;

/// The largest number of complete subtrees a tree of `u64` size can have.
const MAX_FRONTIER: usize = 64;

/// An append-only Merkle tree that keeps only the roots of its complete
/// subtrees (its "frontier", also known as a compact range).
///
/// A tree of `n` leaves is the concatenation of one complete subtree per set
/// bit of `n`, largest first; the frontier holds their roots, so memory stays
/// at most 64 hashes whatever the size. Appending a leaf costs amortised O(1)
/// hashes and [`Tree::root`] costs O(log n) hashes, which lets a verifier
/// recompute the root at every checkpoint while streaming the log once.
///
/// The root is the Merkle Tree Hash `MTH(D[n])` of RFC 9162 §2.1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    size: u64,
    /// Roots of the complete subtrees, largest (leftmost) first.
    frontier: Vec<Hash>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// Returns an empty tree.
    #[must_use]
    pub fn new() -> Self {
        Self {
            size: 0,
            frontier: Vec::with_capacity(MAX_FRONTIER),
        }
    }

    /// Resumes a tree from its size and the frontier saved by
    /// [`Tree::frontier`].
    ///
    /// The frontier must hold exactly one hash per set bit of `size`, largest
    /// subtree first. It cannot be checked further without the root; compare
    /// [`Tree::root`] with a trusted checkpoint after resuming.
    pub fn from_frontier(size: u64, frontier: Vec<Hash>) -> Result<Self, Error> {
        let expected = frontier_len(size);
        if frontier.len() != expected {
            return Err(Error::FrontierLength {
                size,
                expected,
                actual: frontier.len(),
            });
        }
        let mut frontier = frontier;
        frontier.reserve_exact(MAX_FRONTIER.saturating_sub(frontier.len()));
        Ok(Self { size, frontier })
    }

    /// Returns the number of leaves in the tree.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns the roots of the complete subtrees, largest (leftmost) first.
    ///
    /// Together with [`Tree::size`] this is all the state needed to resume
    /// with [`Tree::from_frontier`].
    #[must_use]
    pub fn frontier(&self) -> &[Hash] {
        &self.frontier
    }

    /// Appends a leaf given its leaf hash (see [`crate::leaf_hash`]).
    ///
    /// Fails only when the tree already has `u64::MAX` leaves.
    pub fn push_leaf_hash(&mut self, leaf: Hash) -> Result<(), Error> {
        let new_size = self.size.checked_add(1).ok_or(Error::TreeFull)?;
        // Each trailing one bit of the old size is a complete subtree of the
        // same height as the node being carried; merge them like a binary
        // counter increment.
        let merge = self.size.trailing_ones() as usize;
        // The frontier has one entry per set bit of the size, so this cannot
        // fail; it is checked rather than assumed.
        let keep = self
            .frontier
            .len()
            .checked_sub(merge)
            .ok_or(Error::TreeFull)?;
        let carry = self
            .frontier
            .drain(keep..)
            .rev()
            .fold(leaf, |right, left| node_hash(&left, &right));
        self.frontier.push(carry);
        self.size = new_size;
        Ok(())
    }

    /// Returns the root hash `MTH(D[n])` of the tree (RFC 9162 §2.1.1); the
    /// root of the empty tree is `SHA-256()` of the empty string.
    ///
    /// Costs one node hash per complete subtree beyond the first, so at most
    /// 63.
    #[must_use]
    pub fn root(&self) -> Hash {
        let mut subtrees = self.frontier.iter().rev();
        let Some(last) = subtrees.next() else {
            return empty_root();
        };
        subtrees.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// Number of complete subtrees in a tree of `size` leaves.
fn frontier_len(size: u64) -> usize {
    // count_ones() is at most 64.
    size.count_ones() as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    /// MTH straight from the recursive definition in RFC 9162 §2.1.1.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn empty_tree_root_is_hash_of_empty_string() {
        let t = Tree::new();
        assert_eq!(t.size(), 0);
        assert!(t.frontier().is_empty());
        assert_eq!(t.root(), empty_root());
    }

    #[test]
    fn root_matches_recursive_definition_at_every_size() {
        let all = leaves(300);
        let mut t = Tree::new();
        for (i, h) in all.iter().enumerate() {
            t.push_leaf_hash(*h).unwrap();
            let n = i + 1;
            assert_eq!(t.size(), n as u64);
            assert_eq!(t.frontier().len(), n.count_ones() as usize);
            assert_eq!(t.root(), reference_root(&all[..n]), "size {n}");
        }
    }

    #[test]
    fn resuming_from_frontier_gives_same_roots() {
        let all = leaves(100);
        for split in 0..all.len() {
            let mut a = Tree::new();
            for h in &all[..split] {
                a.push_leaf_hash(*h).unwrap();
            }
            let mut b = Tree::from_frontier(a.size(), a.frontier().to_vec()).unwrap();
            assert_eq!(a, b);
            for h in &all[split..] {
                a.push_leaf_hash(*h).unwrap();
                b.push_leaf_hash(*h).unwrap();
                assert_eq!(a.root(), b.root());
            }
        }
    }

    #[test]
    fn frontier_with_wrong_length_is_rejected() {
        let h = leaf_hash(b"x");
        assert_eq!(
            Tree::from_frontier(3, vec![h]),
            Err(Error::FrontierLength {
                size: 3,
                expected: 2,
                actual: 1
            })
        );
        assert!(Tree::from_frontier(0, vec![h]).is_err());
        assert!(Tree::from_frontier(4, vec![h, h]).is_err());
        assert!(Tree::from_frontier(4, vec![h]).is_ok());
        assert!(Tree::from_frontier(0, vec![]).is_ok());
    }

    #[test]
    fn full_tree_refuses_another_leaf() {
        let h = leaf_hash(b"x");
        let mut t = Tree::from_frontier(u64::MAX, vec![h; 64]).unwrap();
        assert_eq!(t.push_leaf_hash(h), Err(Error::TreeFull));
        assert_eq!(t.size(), u64::MAX);
        assert_eq!(t.frontier().len(), 64);

        let mut t = Tree::from_frontier(u64::MAX - 1, vec![h; 63]).unwrap();
        t.push_leaf_hash(h).unwrap();
        assert_eq!(t.size(), u64::MAX);
        assert_eq!(t.frontier().len(), 64);
    }
}
