//! Inclusion and consistency proofs (RFC 9162 §2.1.3 and §2.1.4).

use crate::hash::{node_hash, Hash};
use crate::Error;

/// Random access to the leaf hashes of a log, for proof generation.
///
/// Implemented for `[Hash]` and `Vec<Hash>`. A store that also keeps the
/// roots of complete subtrees can return them from
/// [`LeafHashes::subtree_hash`]; proof generation then reads O(log n) values
/// instead of O(n) leaves.
pub trait LeafHashes {
    /// The error type of the store; errors of this crate convert into it.
    type Error: From<Error>;

    /// Returns the number of leaf hashes available.
    fn len(&self) -> u64;

    /// Returns true when no leaf hash is available.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the leaf hash at `index` (see [`crate::leaf_hash`]).
    fn leaf_hash(&self, index: u64) -> Result<Hash, Self::Error>;

    /// Returns, if the store knows it, the root of the complete subtree of
    /// height `level` covering leaves `index * 2^level .. (index + 1) *
    /// 2^level`. Only asked for subtrees that lie inside [`LeafHashes::len`].
    ///
    /// The default knows none and returns `Ok(None)`.
    fn subtree_hash(&self, level: u32, index: u64) -> Result<Option<Hash>, Self::Error> {
        let _ = (level, index);
        Ok(None)
    }
}

impl LeafHashes for [Hash] {
    type Error = Error;

    fn len(&self) -> u64 {
        // usize is at most 64 bits on supported targets.
        u64::try_from(<[Hash]>::len(self)).unwrap_or(u64::MAX)
    }

    fn leaf_hash(&self, index: u64) -> Result<Hash, Error> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.get(i))
            .copied()
            .ok_or(Error::IndexOutOfRange {
                index,
                size: LeafHashes::len(self),
            })
    }
}

impl LeafHashes for Vec<Hash> {
    type Error = Error;

    fn len(&self) -> u64 {
        LeafHashes::len(self.as_slice())
    }

    fn leaf_hash(&self, index: u64) -> Result<Hash, Error> {
        LeafHashes::leaf_hash(self.as_slice(), index)
    }
}

/// Returns the largest power of two strictly less than `n`; `n` must be at
/// least 2 (RFC 9162 §2.1.1, "k").
fn split_point(n: u64) -> u64 {
    let bits = u64::BITS - n.saturating_sub(1).leading_zeros();
    1u64 << bits.saturating_sub(1)
}

/// Computes `MTH(D[start:end])` for a non-empty range (RFC 9162 §2.1.1).
///
/// Recursion depth is at most 64 because each step at least halves the
/// range.
fn subtree_root<L: LeafHashes + ?Sized>(
    leaves: &L,
    start: u64,
    end: u64,
) -> Result<Hash, L::Error> {
    let n = end.saturating_sub(start);
    if n <= 1 {
        return leaves.leaf_hash(start);
    }
    if n.is_power_of_two() && start % n == 0 {
        let level = n.trailing_zeros();
        if let Some(h) = leaves.subtree_hash(level, start >> level)? {
            return Ok(h);
        }
    }
    let mid = start.saturating_add(split_point(n));
    let left = subtree_root(leaves, start, mid)?;
    let right = subtree_root(leaves, mid, end)?;
    Ok(node_hash(&left, &right))
}

fn check_available<L: LeafHashes + ?Sized>(leaves: &L, size: u64) -> Result<(), Error> {
    let available = leaves.len();
    if size > available {
        return Err(Error::TreeSizeTooLarge { size, available });
    }
    Ok(())
}

/// Returns the inclusion proof (audit path) for the leaf at `index` in the
/// tree made of the first `tree_size` leaves, following `PATH(m, D[n])` of
/// RFC 9162 §2.1.3.1.
///
/// Hashes are ordered from the leaf's sibling up to the child of the root.
/// Costs O(tree_size) hashes, or O(log tree_size) reads when the store
/// answers [`LeafHashes::subtree_hash`].
pub fn inclusion_proof<L: LeafHashes + ?Sized>(
    leaves: &L,
    index: u64,
    tree_size: u64,
) -> Result<Vec<Hash>, L::Error> {
    check_available(leaves, tree_size)?;
    if index >= tree_size {
        return Err(Error::IndexOutOfRange {
            index,
            size: tree_size,
        }
        .into());
    }
    let mut path = Vec::with_capacity(inclusion_proof_len(index, tree_size));
    // Walk from the root down to the leaf, then reverse.
    let (mut start, mut end) = (0u64, tree_size);
    while end - start > 1 {
        let mid = start + split_point(end - start);
        if index < mid {
            path.push(subtree_root(leaves, mid, end)?);
            end = mid;
        } else {
            path.push(subtree_root(leaves, start, mid)?);
            start = mid;
        }
    }
    path.reverse();
    Ok(path)
}

/// Returns the consistency proof between the trees made of the first `size1`
/// and the first `size2` leaves, following `PROOF(m, D[n])` and
/// `SUBPROOF(m, D[n], b)` of RFC 9162 §2.1.4.1.
///
/// The proof is empty when `size1 == size2`. Like the verifier, this
/// refuses `size1 == 0`: every tree is trivially consistent with the empty
/// tree, and there is nothing to prove.
pub fn consistency_proof<L: LeafHashes + ?Sized>(
    leaves: &L,
    size1: u64,
    size2: u64,
) -> Result<Vec<Hash>, L::Error> {
    check_available(leaves, size2)?;
    if size1 > size2 {
        return Err(Error::TreeSizeOrder { size1, size2 }.into());
    }
    if size1 == 0 {
        return Err(Error::EmptyFirstTree.into());
    }
    let mut proof = Vec::with_capacity(consistency_proof_len(size1, size2));
    // SUBPROOF(m, D[start:end], b) with m counted from leaf 0; walk down and
    // reverse at the end.
    let (mut start, mut end) = (0u64, size2);
    let mut whole_subtree_known = true;
    loop {
        if size1 == end {
            if !whole_subtree_known {
                proof.push(subtree_root(leaves, start, end)?);
            }
            break;
        }
        let mid = start + split_point(end - start);
        if size1 <= mid {
            proof.push(subtree_root(leaves, mid, end)?);
            end = mid;
        } else {
            proof.push(subtree_root(leaves, start, mid)?);
            start = mid;
            whole_subtree_known = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Length of the inclusion proof for `index < size`: the levels below the
/// point where the paths to `index` and `size - 1` diverge, plus one hash
/// per left sibling above it.
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let inner = u64::BITS - (index ^ size.saturating_sub(1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    // Both are at most 64.
    (inner + border) as usize
}

/// Length of the consistency proof for `0 < size1 < size2`.
fn consistency_proof_len(size1: u64, size2: u64) -> usize {
    let last = size1.saturating_sub(1);
    let inner = u64::BITS - (last ^ size2.saturating_sub(1)).leading_zeros();
    let border = last.checked_shr(inner).unwrap_or(0).count_ones();
    // The lowest trailing_zeros(size1) levels are inside the complete
    // subtree whose root stands for the whole old tree on that side.
    let inner = inner.saturating_sub(size1.trailing_zeros());
    let seed = u32::from(!size1.is_power_of_two());
    (seed + inner + border) as usize
}

fn check_len(proof: &[Hash], expected: usize) -> Result<(), Error> {
    if proof.len() != expected {
        return Err(Error::ProofLength {
            expected,
            actual: proof.len(),
        });
    }
    Ok(())
}

/// Verifies that `leaf_hash` is the leaf at `index` of the tree of
/// `tree_size` leaves whose root is `root`, using the algorithm of RFC 9162
/// §2.1.3.2.
///
/// The proof must have exactly the number of hashes the index and size call
/// for; an index at or beyond the size is an error.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), Error> {
    // Step 1.
    if index >= tree_size {
        return Err(Error::IndexOutOfRange {
            index,
            size: tree_size,
        });
    }
    check_len(proof, inclusion_proof_len(index, tree_size))?;
    // Steps 2 and 3.
    let mut fnode = index;
    let mut snode = tree_size - 1;
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        if snode == 0 {
            return Err(Error::ProofLength {
                expected: inclusion_proof_len(index, tree_size),
                actual: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    if snode != 0 {
        return Err(Error::ProofLength {
            expected: inclusion_proof_len(index, tree_size),
            actual: proof.len(),
        });
    }
    if r != *root {
        return Err(Error::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `size2` leaves with root `root2` extends the
/// tree of `size1` leaves with root `root1`, using the algorithm of RFC 9162
/// §2.1.4.2.
///
/// Before the algorithm, the cases the RFC leaves to the caller are decided
/// as transparency-dev's reference verifier does:
/// - `size1 > size2` is an error;
/// - `size1 == 0` is an error, whatever the proof (RFC 9162 defines
///   consistency proofs only from a non-empty tree);
/// - `size1 == size2` requires an empty proof and `root1 == root2`;
/// - otherwise the proof must be non-empty and of exactly the expected
///   length.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> Result<(), Error> {
    if size1 > size2 {
        return Err(Error::TreeSizeOrder { size1, size2 });
    }
    if size1 == 0 {
        return Err(Error::EmptyFirstTree);
    }
    if size1 == size2 {
        check_len(proof, 0)?;
        if root1 != root2 {
            return Err(Error::RootMismatch);
        }
        return Ok(());
    }
    let expected = consistency_proof_len(size1, size2);
    // Step 1: an empty proof always fails; it is also always shorter than
    // `expected`, which is at least 1 here.
    check_len(proof, expected)?;
    // Step 2: when size1 is a power of two, root1 is the first value of the
    // path.
    let mut path = proof.iter();
    let seed = if size1.is_power_of_two() {
        root1
    } else {
        path.next().ok_or(Error::ProofLength {
            expected,
            actual: proof.len(),
        })?
    };
    // Step 3.
    let mut fnode = size1 - 1;
    let mut snode = size2 - 1;
    // Step 4.
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    let mut fr = *seed;
    let mut sr = *seed;
    // Step 6.
    for c in path {
        if snode == 0 {
            return Err(Error::ProofLength {
                expected,
                actual: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if snode != 0 {
        return Err(Error::ProofLength {
            expected,
            actual: proof.len(),
        });
    }
    if fr != *root1 || sr != *root2 {
        return Err(Error::RootMismatch);
    }
    Ok(())
}
