//! Two C2SP formats around a transparency log checkpoint:
//!
//! - [`SignedNote`]: c2sp.org/signed-note, a text followed by signature
//!   lines (`— <key name> base64(key ID || signature)`), parsed strictly so
//!   that what parses re-encodes to the same bytes;
//! - [`Cosigner`] and [`CosignerKey`]: c2sp.org/tlog-cosignature, version
//!   `cosignature/v1` with Ed25519 (signature type `0x04`): a witness's
//!   timestamped statement that the checkpoint is the largest consistent
//!   one it has seen of that log. [`CosignerKey`] reads and writes the
//!   verifier key form `<name>+<key ID hex>+base64(0x04 || public key)`.
//!
//! Nothing here reads files or knows what the note's text means.

#![warn(missing_docs)]

mod cosignature;
mod note;

pub use cosignature::{
    cosigned_message, Cosigner, CosignerKey, Ed25519Signer, COSIGNATURE_V1_TYPE,
};
pub use note::{key_id, NoteSignature, SignedNote, MAX_NOTE_LEN, MAX_SIGNATURES};

/// What is wrong with a note, a signature line or a key.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Larger than [`MAX_NOTE_LEN`].
    #[error("the note is {0} bytes, more than the {MAX_NOTE_LEN} accepted")]
    TooLong(usize),
    /// Not UTF-8, or holds a control character other than newline.
    #[error("the note is not UTF-8 text without control characters")]
    NotText,
    /// No blank line before the signatures, or none at all.
    #[error("the note has no signature lines after a blank line")]
    NoSignatures,
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("the note has {0} signature lines, more than the {MAX_SIGNATURES} accepted")]
    TooManySignatures(usize),
    /// A signature line is not `— <name> <base64>` ending in a newline.
    #[error("signature line {line} is malformed: {why}")]
    BadLine {
        /// 1-based number among the signature lines.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A key name is empty or holds a space or `+`.
    #[error("the key name {0:?} is empty or holds a space or '+'")]
    BadKeyName(String),
    /// A verifier key is not `<name>+<8 hex>+<base64>` of a known type.
    #[error("the verifier key is malformed: {0}")]
    BadVerifierKey(&'static str),
    /// No signature line carries the key's name and key ID.
    #[error("the note carries no cosignature by {0}")]
    NotCosigned(String),
    /// A cosignature by the key does not verify.
    #[error(
        "the cosignature by {0} does not verify: the note was altered or the signature is forged"
    )]
    BadCosignature(String),
    /// A cosignature's timestamp is above 2^63 - 1.
    #[error("the cosignature by {0} carries a timestamp above 2^63 - 1")]
    BadTimestamp(String),
    /// The signer failed.
    #[error("signing failed: {0}")]
    Signer(String),
    /// A private key file is not a PKCS#8 Ed25519 key.
    #[error("the private key is not a PKCS#8 Ed25519 key in PEM")]
    BadPrivateKey,
}
