//! Merkle tree hashing, proofs and checkpoints for an append-only audit log.
//!
//! This crate implements the parts of a transparency log that flashgate's
//! audit log needs, with no I/O and no signing:
//!
//! - the RFC 9162 §2.1.1 hash functions ([`leaf_hash`], [`node_hash`],
//!   [`empty_root`]);
//! - a streaming tree builder that keeps only the O(log n) roots of its
//!   complete subtrees ([`Tree`]);
//! - inclusion and consistency proof generation (RFC 9162 §2.1.3.1 and
//!   §2.1.4.1: [`inclusion_proof`], [`consistency_proof`]) over any random
//!   access source of leaf hashes ([`LeafHashes`]);
//! - strict proof verification (RFC 9162 §2.1.3.2 and §2.1.4.2:
//!   [`verify_inclusion`], [`verify_consistency`]);
//! - the body of a C2SP tlog-checkpoint ([`Checkpoint`]).
//!
//! Every function that reads untrusted input returns an [`Error`] instead of
//! panicking, and no allocation is sized from a length taken from the input.
//!
//! ```
//! use flashgate_tlog::{
//!     consistency_proof, inclusion_proof, leaf_hash, verify_consistency, verify_inclusion,
//!     Checkpoint, Tree,
//! };
//!
//! let records: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 16]).collect();
//! let leaves: Vec<_> = records.iter().map(|r| leaf_hash(r)).collect();
//!
//! let mut tree = Tree::new();
//! let mut old_root = tree.root();
//! for (i, leaf) in leaves.iter().enumerate() {
//!     tree.push_leaf_hash(*leaf)?;
//!     if i == 5 {
//!         old_root = tree.root();
//!     }
//! }
//!
//! let cp = Checkpoint::new("flashgate.example/line-1", tree.size(), tree.root())?;
//! let text = cp.to_text();
//! let cp = Checkpoint::parse(text.as_bytes())?;
//!
//! let proof = inclusion_proof(&leaves, 3, cp.size)?;
//! verify_inclusion(&leaves[3], 3, cp.size, &proof, &cp.root)?;
//!
//! let proof = consistency_proof(&leaves, 6, cp.size)?;
//! verify_consistency(6, cp.size, &proof, &old_root, &cp.root)?;
//! # Ok::<(), flashgate_tlog::Error>(())
//! ```

#![warn(missing_docs)]

mod checkpoint;
mod hash;
mod proof;
mod tree;

pub use checkpoint::Checkpoint;
pub use hash::{empty_root, leaf_hash, node_hash, Hash, HASH_LEN};
pub use proof::{
    consistency_proof, inclusion_proof, verify_consistency, verify_inclusion, LeafHashes,
};
pub use tree::Tree;

/// The error type of this crate.
///
/// Proof generation, proof verification, tree resumption and checkpoint
/// parsing all report failures through this one enum.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A leaf index is not inside the tree it refers to.
    #[error("leaf index {index} is not less than the tree size {size}")]
    IndexOutOfRange {
        /// The leaf index that was given.
        index: u64,
        /// The size of the tree.
        size: u64,
    },

    /// A tree size is larger than the number of leaf hashes available.
    #[error("tree size {size} is larger than the {available} leaf hashes available")]
    TreeSizeTooLarge {
        /// The requested tree size.
        size: u64,
        /// The number of leaf hashes the source holds.
        available: u64,
    },

    /// The first tree of a consistency proof is larger than the second.
    #[error("first tree size {size1} is larger than second tree size {size2}")]
    TreeSizeOrder {
        /// The first (older) tree size.
        size1: u64,
        /// The second (newer) tree size.
        size2: u64,
    },

    /// A consistency proof from the empty tree was requested or given.
    #[error("consistency proofs from an empty tree are not defined")]
    EmptyFirstTree,

    /// A proof has the wrong number of hashes for the tree sizes involved.
    #[error("proof has {actual} hashes but {expected} are required")]
    ProofLength {
        /// The number of hashes the sizes and index call for.
        expected: usize,
        /// The number of hashes the proof holds.
        actual: usize,
    },

    /// A proof does not lead to the root hash it was checked against.
    #[error("proof does not match the expected root hash")]
    RootMismatch,

    /// A saved frontier does not have one hash per set bit of the tree size.
    #[error("frontier has {actual} hashes but a tree of size {size} needs {expected}")]
    FrontierLength {
        /// The tree size that was given.
        size: u64,
        /// The number of hashes a tree of that size needs.
        expected: usize,
        /// The number of hashes that were given.
        actual: usize,
    },

    /// The tree already holds the largest number of leaves a `u64` can count.
    #[error("tree cannot hold more than 2^64 - 1 leaves")]
    TreeFull,

    /// Checkpoint text is not valid UTF-8.
    #[error("checkpoint text is not valid UTF-8")]
    CheckpointNotUtf8,

    /// Checkpoint text is empty or its last line does not end with a newline.
    #[error("checkpoint text does not end with a newline")]
    CheckpointUnterminated,

    /// A checkpoint line is empty.
    #[error("checkpoint line {line} is empty")]
    CheckpointEmptyLine {
        /// The 1-based line number.
        line: usize,
    },

    /// A checkpoint line contains a control character, such as a carriage
    /// return or a tab.
    #[error("checkpoint line {line} contains a control character")]
    CheckpointControlCharacter {
        /// The 1-based line number.
        line: usize,
    },

    /// Checkpoint text has fewer than the three mandatory lines.
    #[error("checkpoint text has fewer than three lines")]
    CheckpointTooFewLines,

    /// The tree size line is not a canonical decimal `u64`.
    #[error(
        "checkpoint tree size is not a decimal number without leading zeros that fits in 64 bits"
    )]
    CheckpointTreeSize,

    /// The root hash line is not canonical base64 of exactly 32 bytes.
    #[error("checkpoint root hash is not the padded standard base64 encoding of 32 bytes")]
    CheckpointRootHash,
}

/// The error returned by proof generation and verification; the same type as
/// [`Error`].
pub type ProofError = Error;

/// The error returned by checkpoint parsing and validation; the same type as
/// [`Error`].
pub type CheckpointError = Error;
