//! c2sp.org/signed-note: the text, a blank line, then one line per signature.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::NoteError;

/// The largest note accepted, in bytes. A flashgate checkpoint note with a
/// dozen cosignatures is about 2 KiB.
pub const MAX_NOTE_LEN: usize = 64 * 1024;

/// The most signature lines accepted (the spec asks for at least 16).
pub const MAX_SIGNATURES: usize = 32;

/// Opens a signature line: em dash (U+2014) and a space.
const LINE_START: &str = "\u{2014} ";

/// One signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key ID (the first four bytes of the decoded signature, big-endian).
    pub key_id: u32,
    /// The signature bytes after the key ID.
    pub signature: Vec<u8>,
}

/// A signed note: its text (ending in a newline) and its signature lines.
///
/// [`SignedNote::parse`] accepts exactly what [`SignedNote::to_text`]
/// writes: the text is separated from the signatures by the last blank
/// line, every line ends in a newline, base64 is canonical and padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    /// The note text, with its final newline.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

/// The key ID C2SP recommends: the first four bytes, big-endian, of
/// SHA-256(key name || 0x0A || signature type || public key). `signature_type`
/// is the type byte, followed by a longer identifier for type `0xff`.
#[must_use]
pub fn key_id(name: &str, signature_type: &[u8], public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0a]);
    h.update(signature_type);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Checks a key name: non-empty, no Unicode space, no `+`.
pub(crate) fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(NoteError::BadKeyName(name.to_owned()));
    }
    if name.chars().any(char::is_control) {
        return Err(NoteError::BadKeyName(name.to_owned()));
    }
    Ok(())
}

impl SignedNote {
    /// Parses a signed note.
    pub fn parse(bytes: &[u8]) -> Result<Self, NoteError> {
        if bytes.len() > MAX_NOTE_LEN {
            return Err(NoteError::TooLong(bytes.len()));
        }
        let s = std::str::from_utf8(bytes).map_err(|_| NoteError::NotText)?;
        if s.chars().any(|c| c != '\n' && c.is_control()) {
            return Err(NoteError::NotText);
        }
        let split = s.rfind("\n\n").ok_or(NoteError::NoSignatures)?;
        let (text, rest) = (&s[..=split], &s[split + 2..]);
        if rest.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        let lines = rest.strip_suffix('\n').ok_or(NoteError::BadLine {
            line: rest.split('\n').count(),
            why: "it does not end in a newline",
        })?;
        let mut signatures = Vec::new();
        for (i, line) in lines.split('\n').enumerate() {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures(lines.split('\n').count()));
            }
            signatures.push(parse_line(i + 1, line)?);
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note as text: the text, a blank line, the signature lines.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 1 + 128 * self.signatures.len());
        out.push_str(&self.text);
        out.push('\n');
        for sig in &self.signatures {
            out.push_str(LINE_START);
            out.push_str(&sig.name);
            out.push(' ');
            let mut raw = Vec::with_capacity(4 + sig.signature.len());
            raw.extend_from_slice(&sig.key_id.to_be_bytes());
            raw.extend_from_slice(&sig.signature);
            STANDARD.encode_string(&raw, &mut out);
            out.push('\n');
        }
        out
    }

    /// The signature lines with this name and key ID.
    pub fn signatures_by<'a>(
        &'a self,
        name: &'a str,
        key_id: u32,
    ) -> impl Iterator<Item = &'a NoteSignature> + 'a {
        self.signatures
            .iter()
            .filter(move |s| s.name == name && s.key_id == key_id)
    }
}

fn parse_line(line: usize, s: &str) -> Result<NoteSignature, NoteError> {
    let bad = |why| NoteError::BadLine { line, why };
    let rest = s
        .strip_prefix(LINE_START)
        .ok_or(bad("it does not start with an em dash and a space"))?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or(bad("it has no space between key name and signature"))?;
    check_name(name)?;
    let raw = STANDARD
        .decode(b64)
        .map_err(|_| bad("the signature is not padded standard base64"))?;
    // Canonical only: one encoding per signature.
    if STANDARD.encode(&raw) != b64 {
        return Err(bad("the signature's base64 is not canonical"));
    }
    if raw.len() < 5 {
        return Err(bad("the signature is shorter than a key ID and one byte"));
    }
    let (id, signature) = raw.split_at(4);
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
        signature: signature.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The example of c2sp.org/signed-note.
    const EXAMPLE: &str = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n\n\u{2014} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";

    #[test]
    fn the_spec_example_parses_and_round_trips() {
        let n = SignedNote::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            n.text,
            "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n"
        );
        assert_eq!(n.signatures.len(), 1);
        assert_eq!(n.signatures[0].name, "quasimodo.example/salvatore");
        assert_eq!(n.signatures[0].key_id, 0x367b_a04b);
        assert_eq!(n.signatures[0].signature.len(), 64);
        assert_eq!(n.to_text(), EXAMPLE);
    }

    #[test]
    fn malformed_notes_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("text\n", "no signature lines"),
            ("text\n\n", "no signature lines"),
            ("text\n\n\u{2014} k AAAAAAA=", "does not end in a newline"),
            ("text\n\n- k AAAAAAA=\n", "em dash"),
            ("text\n\n\u{2014} kAAAAAAA=\n", "no space"),
            ("text\n\n\u{2014} a+b AAAAAAA=\n", "space or '+'"),
            ("text\n\n\u{2014} k AAAAAAA\n", "padded standard base64"),
            ("text\n\n\u{2014} k AAAAAAB=\n", "base64"),
            ("text\n\n\u{2014} k AAAA\n", "shorter than a key ID"),
            ("te\rxt\n\n\u{2014} k AAAAAAA=\n", "control characters"),
        ];
        for (note, why) in cases {
            let e = SignedNote::parse(note.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(why), "{note:?}: {e}");
        }
        let many = format!(
            "t\n\n{}",
            "\u{2014} k AAAAAAA=\n".repeat(MAX_SIGNATURES + 1)
        );
        assert!(matches!(
            SignedNote::parse(many.as_bytes()),
            Err(NoteError::TooManySignatures(_))
        ));
        assert!(matches!(
            SignedNote::parse(&vec![b'a'; MAX_NOTE_LEN + 1]),
            Err(NoteError::TooLong(_))
        ));
    }

    #[test]
    fn the_text_ends_at_the_last_blank_line() {
        let n = SignedNote::parse("a\n\nb\n\n\u{2014} k AAAAAAA=\n".as_bytes()).unwrap();
        assert_eq!(n.text, "a\n\nb\n");
    }
}
