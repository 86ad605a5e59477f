//! RFC 9162 §2.1.1 hashing.

use sha2::{Digest, Sha256};

/// Length in bytes of every hash in the tree (SHA-256).
pub const HASH_LEN: usize = 32;

/// A SHA-256 hash: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; HASH_LEN];

/// Prefix of a leaf hash input (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Prefix of an interior node hash input (RFC 9162 §2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// Returns the hash of a leaf entry, `SHA-256(0x00 || data)` (RFC 9162
/// §2.1.1).
#[must_use]
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// Returns the hash of an interior node from its two children,
/// `SHA-256(0x01 || left || right)` (RFC 9162 §2.1.1).
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Returns the root hash of the empty tree, `SHA-256()` of the empty string
/// (RFC 9162 §2.1.1).
#[must_use]
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn leaf_hash_of_empty_leaf_is_sha256_of_zero_byte() {
        // RFC 6962 / RFC 9162 reference value for the empty leaf.
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn leaf_and_node_hashes_are_domain_separated() {
        let l = leaf_hash(b"a");
        let r = leaf_hash(b"b");
        let mut concat = Vec::new();
        concat.extend_from_slice(&l);
        concat.extend_from_slice(&r);
        assert_ne!(node_hash(&l, &r), leaf_hash(&concat));
        assert_ne!(node_hash(&l, &r), node_hash(&r, &l));
    }
}
