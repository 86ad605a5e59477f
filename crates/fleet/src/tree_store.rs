//! The Merkle tree of each stored log, kept as rows of `nodes`: every
//! complete subtree root, leaves at level 0. Appending a leaf writes the
//! nodes it completes ([`push_leaf`]); a proof reads only the O(log n)
//! nodes it needs ([`inclusion_proof`], [`consistency_proof`]).
//!
//! Which nodes a proof needs is found by running the proof once over a
//! store that records what it is asked for, so the proof logic stays the
//! one in `flashgate-tlog`.

use std::cell::RefCell;
use std::collections::HashMap;

use flashgate_tlog::{node_hash, Hash, LeafHashes, Tree};
use tokio_postgres::GenericClient;

use crate::error::FleetError;

/// Appends `leaf` to `tree` and gives every subtree root it completes as
/// (level, index, hash), leaf first.
pub fn push_leaf(
    tree: &mut Tree,
    leaf: Hash,
    mut emit: impl FnMut(u32, u64, Hash),
) -> Result<(), FleetError> {
    let size = tree.size();
    let merge = size.trailing_ones() as usize;
    let frontier = tree.frontier();
    let mut carry = leaf;
    emit(0, size, carry);
    for level in 0..merge {
        let left = frontier
            .len()
            .checked_sub(level + 1)
            .and_then(|i| frontier.get(i))
            .ok_or_else(|| {
                FleetError::Inconsistent("a frontier is shorter than its size".to_owned())
            })?;
        carry = node_hash(left, &carry);
        let up = u32::try_from(level + 1).unwrap_or(u32::MAX);
        emit(up, size >> up, carry);
    }
    tree.push_leaf_hash(leaf)?;
    if tree.frontier().last() != Some(&carry) {
        return Err(FleetError::Inconsistent(
            "the emitted node disagrees with the tree".to_owned(),
        ));
    }
    Ok(())
}

/// The frontier as stored: the hashes concatenated.
#[must_use]
pub fn frontier_bytes(tree: &Tree) -> Vec<u8> {
    tree.frontier().concat()
}

/// A tree from its stored size and frontier.
pub fn tree_from(size: u64, frontier: &[u8]) -> Result<Tree, FleetError> {
    if frontier.len() % 32 != 0 {
        return Err(FleetError::Inconsistent(
            "a stored frontier is not whole hashes".to_owned(),
        ));
    }
    let hashes = frontier
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Ok(Tree::from_frontier(size, hashes)?)
}

/// Records the nodes a proof asks for; answers zeros.
struct Recorder {
    size: u64,
    asked: RefCell<Vec<(u32, u64)>>,
}

impl LeafHashes for Recorder {
    type Error = flashgate_tlog::Error;
    fn len(&self) -> u64 {
        self.size
    }
    fn leaf_hash(&self, index: u64) -> Result<Hash, Self::Error> {
        self.asked.borrow_mut().push((0, index));
        Ok([0; 32])
    }
    fn subtree_hash(&self, level: u32, index: u64) -> Result<Option<Hash>, Self::Error> {
        self.asked.borrow_mut().push((level, index));
        Ok(Some([0; 32]))
    }
}

/// The nodes fetched for one proof.
struct Fetched {
    size: u64,
    nodes: HashMap<(u32, u64), Hash>,
}

impl LeafHashes for Fetched {
    type Error = flashgate_tlog::Error;
    fn len(&self) -> u64 {
        self.size
    }
    fn leaf_hash(&self, index: u64) -> Result<Hash, Self::Error> {
        self.nodes
            .get(&(0, index))
            .copied()
            .ok_or(flashgate_tlog::Error::IndexOutOfRange {
                index,
                size: self.size,
            })
    }
    fn subtree_hash(&self, level: u32, index: u64) -> Result<Option<Hash>, Self::Error> {
        Ok(self.nodes.get(&(level, index)).copied())
    }
}

async fn fetch<C: GenericClient>(
    client: &C,
    log_id: i32,
    size: u64,
    asked: Vec<(u32, u64)>,
) -> Result<Fetched, FleetError> {
    let levels: Vec<i16> = asked
        .iter()
        .map(|a| i16::try_from(a.0).unwrap_or(i16::MAX))
        .collect();
    let idx: Vec<i64> = asked
        .iter()
        .map(|a| i64::try_from(a.1).unwrap_or(i64::MAX))
        .collect();
    let rows = client
        .query(
            "SELECT n.level, n.idx, n.hash FROM nodes n \
             JOIN unnest($2::int2[], $3::int8[]) AS w(level, idx) ON n.level = w.level AND n.idx = w.idx \
             WHERE n.log_id = $1",
            &[&log_id, &levels, &idx],
        )
        .await?;
    let mut nodes = HashMap::with_capacity(rows.len());
    for r in rows {
        let level: i16 = r.get(0);
        let i: i64 = r.get(1);
        let h: &[u8] = r.get(2);
        let h: Hash = h
            .try_into()
            .map_err(|_| FleetError::Inconsistent("a stored node is not 32 bytes".to_owned()))?;
        nodes.insert(
            (
                u32::try_from(level).unwrap_or(0),
                u64::try_from(i).unwrap_or(0),
            ),
            h,
        );
    }
    Ok(Fetched { size, nodes })
}

/// The RFC 9162 inclusion proof of leaf `index` in the first `size` leaves
/// of stored log `log_id`.
pub async fn inclusion_proof<C: GenericClient>(
    client: &C,
    log_id: i32,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, FleetError> {
    let r = Recorder {
        size,
        asked: RefCell::new(Vec::new()),
    };
    flashgate_tlog::inclusion_proof(&r, index, size)?;
    let f = fetch(client, log_id, size, r.asked.into_inner()).await?;
    Ok(flashgate_tlog::inclusion_proof(&f, index, size)?)
}

/// The RFC 9162 consistency proof from size `old` to size `new` of stored
/// log `log_id`.
pub async fn consistency_proof<C: GenericClient>(
    client: &C,
    log_id: i32,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, FleetError> {
    let r = Recorder {
        size: new,
        asked: RefCell::new(Vec::new()),
    };
    flashgate_tlog::consistency_proof(&r, old, new)?;
    let f = fetch(client, log_id, new, r.asked.into_inner()).await?;
    Ok(flashgate_tlog::consistency_proof(&f, old, new)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn emitted_nodes_answer_proofs_like_the_leaves() {
        let leaves: Vec<Hash> = (0u32..37)
            .map(|i| flashgate_tlog::leaf_hash(&i.to_be_bytes()))
            .collect();
        let mut tree = Tree::new();
        let mut nodes = HashMap::new();
        for l in &leaves {
            push_leaf(&mut tree, *l, |level, i, h| {
                assert!(nodes.insert((level, i), h).is_none());
            })
            .unwrap();
        }
        // Every complete subtree of 37 leaves, at every level: 37 + 18 + 9 + 4 + 2 + 1.
        assert_eq!(nodes.len(), 37 + 18 + 9 + 4 + 2 + 1);
        let store = Fetched { size: 37, nodes };
        for size in 1..=37u64 {
            for index in 0..size {
                assert_eq!(
                    flashgate_tlog::inclusion_proof(&store, index, size).unwrap(),
                    flashgate_tlog::inclusion_proof(&leaves, index, size).unwrap()
                );
            }
            for old in 1..=size {
                assert_eq!(
                    flashgate_tlog::consistency_proof(&store, old, size).unwrap(),
                    flashgate_tlog::consistency_proof(&leaves, old, size).unwrap()
                );
            }
        }
        let resumed = tree_from(tree.size(), &frontier_bytes(&tree)).unwrap();
        assert_eq!(resumed.root(), tree.root());
    }
}
