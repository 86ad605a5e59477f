//! A signed checkpoint as a C2SP signed note, so that witnesses can cosign
//! it (c2sp.org/tlog-cosignature) and the CM can keep the result.
//!
//! The note's text is the checkpoint text, byte for byte the payload of the
//! appliance's `COSE_Sign1`. Its first signature line carries that whole
//! `COSE_Sign1`, under the log's origin as key name and signature type
//! `0xff` followed by [`APPLIANCE_SIGNATURE_ID`]; witnesses add
//! `cosignature/v1` lines after it. A reader takes the appliance's line,
//! checks that its payload is the note's text and verifies it under the
//! pinned log key, as for a bare signed checkpoint.

use flashgate_note::{key_id, NoteSignature, SignedNote};

use crate::checkpoint::{verify_checkpoint, CheckpointError, UnverifiedCheckpoint};

/// What follows the `0xff` signature type byte in the appliance line's key
/// ID: the signature is a tagged ES256 `COSE_Sign1` over the note's text.
pub const APPLIANCE_SIGNATURE_ID: &[u8] = b"flashgate/cose-es256";

/// The key ID of the appliance's line: SHA-256(origin || 0x0A || 0xff ||
/// `flashgate/cose-es256` || the 65-byte SEC1 log key)[:4].
#[must_use]
pub fn appliance_key_id(origin: &str, log_public: &[u8; 65]) -> u32 {
    let mut kind = Vec::with_capacity(1 + APPLIANCE_SIGNATURE_ID.len());
    kind.push(0xff);
    kind.extend_from_slice(APPLIANCE_SIGNATURE_ID);
    key_id(origin, &kind, log_public)
}

/// The signed checkpoint `cose` (verified under `log_public` first) as a
/// note with the appliance's line only.
pub fn checkpoint_note(cose: &[u8], log_public: &[u8; 65]) -> Result<SignedNote, CheckpointError> {
    let v = verify_checkpoint(cose, log_public)?;
    let origin = v.checkpoint().origin.clone();
    let text = v.checkpoint().to_text();
    Ok(SignedNote {
        signatures: vec![NoteSignature {
            key_id: appliance_key_id(&origin, log_public),
            name: origin,
            signature: cose.to_vec(),
        }],
        text,
    })
}

/// The appliance's `COSE_Sign1` in `note`: the line named after the note's
/// origin with the key ID of `log_public`, whose payload is the note's text.
/// The caller verifies the signature (as with any kept checkpoint).
pub fn checkpoint_in_note(
    note: &SignedNote,
    log_public: &[u8; 65],
) -> Result<Vec<u8>, CheckpointError> {
    let origin = note.text.split('\n').next().unwrap_or_default();
    let id = appliance_key_id(origin, log_public);
    let line = note.signatures_by(origin, id).next().ok_or_else(|| {
        CheckpointError::Malformed(format!(
            "the note has no line of the appliance's log key ({origin} {id:08x})"
        ))
    })?;
    let cp = UnverifiedCheckpoint::parse(&line.signature)?;
    if cp.checkpoint_unverified().to_text() != note.text {
        return Err(CheckpointError::UnexpectedForm(
            "the note's text is not the checkpoint the appliance signed".to_owned(),
        ));
    }
    Ok(line.signature.clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::checkpoint::{sign_checkpoint, SoftwareSigner};
    use flashgate_cose::Es256Signer as _;
    use flashgate_tlog::Checkpoint;

    fn signed() -> (Vec<u8>, [u8; 65]) {
        let s = SoftwareSigner::from_seed(b"k");
        let cp = Checkpoint::new("flashgate/a1", 3, [7; 32]).unwrap();
        (sign_checkpoint(&s, &cp).unwrap(), s.public_key())
    }

    #[test]
    fn a_checkpoint_survives_the_note_and_its_text() {
        let (cose, key) = signed();
        let note = checkpoint_note(&cose, &key).unwrap();
        let text = note.to_text();
        assert!(text.starts_with("flashgate/a1\n3\n"), "{text}");
        let back = SignedNote::parse(text.as_bytes()).unwrap();
        assert_eq!(checkpoint_in_note(&back, &key).unwrap(), cose);
    }

    #[test]
    fn a_note_whose_text_was_changed_or_whose_key_differs_is_refused() {
        let (cose, key) = signed();
        let mut note = checkpoint_note(&cose, &key).unwrap();
        note.text = note.text.replace("\n3\n", "\n4\n");
        assert!(checkpoint_in_note(&note, &key).is_err());
        let (_, other) = {
            let s = SoftwareSigner::from_seed(b"other");
            ((), s.public_key())
        };
        let note = checkpoint_note(&cose, &key).unwrap();
        assert!(checkpoint_in_note(&note, &other).is_err());
        assert!(checkpoint_note(&cose, &other).is_err());
    }
}
