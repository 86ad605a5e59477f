//! The body of a C2SP tlog-checkpoint.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::hash::{Hash, HASH_LEN};
use crate::Error;

/// Length of the padded standard base64 encoding of a [`Hash`].
const ROOT_B64_LEN: usize = HASH_LEN.div_ceil(3) * 4;

/// The note text of a transparency log checkpoint, as specified by C2SP
/// tlog-checkpoint ("Note text"):
///
/// ```text
/// <origin>\n
/// <tree size in decimal>\n
/// <root hash in padded standard base64>\n
/// [<extension line>\n]...
/// ```
///
/// Parsing is strict: [`Checkpoint::parse`] accepts exactly the texts that
/// [`Checkpoint::to_text`] produces, so a successful parse re-encodes to the
/// same bytes and a signature over either covers both. The signature lines
/// of the enclosing note are not part of this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Identifier of the log that issued the checkpoint; non-empty, without
    /// control characters.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// Root hash of the tree at `size` (RFC 9162 §2.1.1).
    pub root: Hash,
    /// Optional extension lines, without their newlines; each non-empty and
    /// without control characters.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// Returns a checkpoint without extension lines, after checking the
    /// origin as [`Checkpoint::validate`] does.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Result<Self, Error> {
        let cp = Self {
            origin: origin.into(),
            size,
            root,
            extensions: Vec::new(),
        };
        cp.validate()?;
        Ok(cp)
    }

    /// Checks that [`Checkpoint::to_text`] will produce text that
    /// [`Checkpoint::parse`] accepts: the origin and every extension line
    /// must be non-empty and free of control characters (which include the
    /// newline).
    pub fn validate(&self) -> Result<(), Error> {
        check_line(1, &self.origin)?;
        for (i, ext) in self.extensions.iter().enumerate() {
            check_line(i.saturating_add(4), ext)?;
        }
        Ok(())
    }

    /// Encodes the checkpoint as note text, each line ending in a newline.
    ///
    /// The output is well-formed only if [`Checkpoint::validate`] succeeds;
    /// call it before signing a checkpoint built by hand.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(
            self.origin.len()
                + 20
                + ROOT_B64_LEN
                + 3
                + self.extensions.iter().map(|e| e.len() + 1).sum::<usize>(),
        );
        out.push_str(&self.origin);
        out.push('\n');
        out.push_str(&self.size.to_string());
        out.push('\n');
        STANDARD.encode_string(self.root, &mut out);
        out.push('\n');
        for ext in &self.extensions {
            out.push_str(ext);
            out.push('\n');
        }
        out
    }

    /// Parses checkpoint note text.
    ///
    /// The text must be UTF-8 and consist of at least three lines, each
    /// non-empty, free of control characters (so no carriage return) and
    /// terminated by a newline. C2SP signed-note forbids only the ASCII
    /// controls below U+0020; this also refuses U+007F and U+0080 to U+009F. The origin is any such line; the tree size
    /// is ASCII decimal with no sign and no leading zero except for `0`, and
    /// must fit in a `u64`; the root hash is the padded standard base64
    /// (RFC 4648 §4) encoding of exactly 32 bytes, with zero padding bits.
    /// Remaining lines are kept as extension lines.
    pub fn parse(text: &[u8]) -> Result<Self, Error> {
        let text = std::str::from_utf8(text).map_err(|_| Error::CheckpointNotUtf8)?;
        let body = text
            .strip_suffix('\n')
            .ok_or(Error::CheckpointUnterminated)?;
        let mut lines = body.split('\n').enumerate().map(|(i, line)| {
            let number = i.saturating_add(1);
            check_line(number, line).map(|()| line)
        });
        let mut next = || lines.next().unwrap_or(Err(Error::CheckpointTooFewLines));
        let origin = next()?;
        let size = parse_size(next()?)?;
        let root = parse_root(next()?)?;
        let extensions = lines
            .map(|line| line.map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

/// Checks one line (without its newline).
fn check_line(number: usize, line: &str) -> Result<(), Error> {
    if line.is_empty() {
        return Err(Error::CheckpointEmptyLine { line: number });
    }
    if line.chars().any(char::is_control) {
        return Err(Error::CheckpointControlCharacter { line: number });
    }
    Ok(())
}

fn parse_size(line: &str) -> Result<u64, Error> {
    let digits = line.as_bytes();
    if digits.len() > 1 && digits.first() == Some(&b'0') {
        return Err(Error::CheckpointTreeSize);
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if !d.is_ascii_digit() {
            return Err(Error::CheckpointTreeSize);
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(Error::CheckpointTreeSize)
    })
}

fn parse_root(line: &str) -> Result<Hash, Error> {
    // Checking the length first bounds the allocation and rules out any
    // encoding other than 43 characters plus one '='.
    if line.len() != ROOT_B64_LEN {
        return Err(Error::CheckpointRootHash);
    }
    let bytes = STANDARD
        .decode(line)
        .map_err(|_| Error::CheckpointRootHash)?;
    Hash::try_from(bytes.as_slice()).map_err(|_| Error::CheckpointRootHash)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::hash::{empty_root, leaf_hash};

    const EXAMPLE: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    #[test]
    fn parses_spec_example_and_round_trips() {
        let cp = Checkpoint::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20_852_163);
        assert_eq!(cp.root[..3], [0x0a, 0xc5, 0x18]);
        assert!(cp.extensions.is_empty());
        assert_eq!(cp.to_text(), EXAMPLE);
    }

    #[test]
    fn extensions_round_trip() {
        let text = format!("{EXAMPLE}ext one\n\u{2014} not a signature, still opaque\n");
        let cp = Checkpoint::parse(text.as_bytes()).unwrap();
        assert_eq!(
            cp.extensions,
            ["ext one", "\u{2014} not a signature, still opaque"]
        );
        assert_eq!(cp.to_text(), text);
    }

    #[test]
    fn to_text_then_parse_is_identity() {
        for size in [0, 1, 9, 10, 1_000_000, u64::MAX] {
            let mut cp =
                Checkpoint::new("flashgate.example/line-3", size, leaf_hash(b"r")).unwrap();
            assert_eq!(Checkpoint::parse(cp.to_text().as_bytes()).unwrap(), cp);
            cp.extensions.push("x".into());
            cp.root = empty_root();
            assert_eq!(Checkpoint::parse(cp.to_text().as_bytes()).unwrap(), cp);
        }
    }

    fn with_lines(origin: &str, size: &str, root: &str) -> Vec<u8> {
        format!("{origin}\n{size}\n{root}\n").into_bytes()
    }

    const ROOT: &str = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";

    #[test]
    fn size_must_be_canonical_decimal() {
        for bad in [
            "00",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1_000",
            "0x10",
            "１",
            "18446744073709551616",
        ] {
            assert_eq!(
                Checkpoint::parse(&with_lines("o", bad, ROOT)),
                Err(Error::CheckpointTreeSize),
                "{bad:?}"
            );
        }
        for (good, v) in [("0", 0), ("10", 10), ("18446744073709551615", u64::MAX)] {
            assert_eq!(
                Checkpoint::parse(&with_lines("o", good, ROOT))
                    .unwrap()
                    .size,
                v
            );
        }
    }

    #[test]
    fn root_must_be_canonical_base64_of_32_bytes() {
        let bad = [
            // Missing padding.
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I",
            // Non-zero padding bits.
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=",
            // URL-safe alphabet.
            "CsUYapGGPo4dkMgIAUqom_Xajj7h2fB2MPA3j2jxq2I=",
            // 31 and 33 bytes.
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxqw==",
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2IA",
            // Whitespace inside.
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2j q2I=",
            "",
        ];
        for root in bad {
            assert!(
                Checkpoint::parse(&with_lines("o", "1", root)).is_err(),
                "{root:?}"
            );
        }
        assert_eq!(
            Checkpoint::parse(&with_lines("o", "1", &ROOT[1..])),
            Err(Error::CheckpointRootHash)
        );
    }

    #[test]
    fn framing_is_strict() {
        let cases: &[(&[u8], Error)] = &[
            (b"", Error::CheckpointUnterminated),
            (b"\n", Error::CheckpointEmptyLine { line: 1 }),
            (b"o\n1\n", Error::CheckpointTooFewLines),
            (b"o\n1", Error::CheckpointUnterminated),
            (
                b"o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",
                Error::CheckpointUnterminated,
            ),
            (
                b"o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",
                Error::CheckpointEmptyLine { line: 4 },
            ),
            (
                b"o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\nx\n",
                Error::CheckpointEmptyLine { line: 4 },
            ),
            (
                b"\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
                Error::CheckpointEmptyLine { line: 1 },
            ),
            (
                b"o\r\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
                Error::CheckpointControlCharacter { line: 1 },
            ),
            (
                b"o\n1\r\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
                Error::CheckpointControlCharacter { line: 2 },
            ),
            (
                b"o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\r\n",
                Error::CheckpointControlCharacter { line: 3 },
            ),
            (
                b"o\tx\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
                Error::CheckpointControlCharacter { line: 1 },
            ),
            (
                b"o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\ne\x7f\n",
                Error::CheckpointControlCharacter { line: 4 },
            ),
            (
                b"o\xff\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
                Error::CheckpointNotUtf8,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                Checkpoint::parse(text).as_ref().err(),
                Some(want),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn validate_rejects_fields_that_would_not_parse() {
        assert_eq!(
            Checkpoint::new("", 1, empty_root()),
            Err(Error::CheckpointEmptyLine { line: 1 })
        );
        assert_eq!(
            Checkpoint::new("a\nb", 1, empty_root()),
            Err(Error::CheckpointControlCharacter { line: 1 })
        );
        let mut cp = Checkpoint::new("o", 1, empty_root()).unwrap();
        cp.extensions = vec!["fine".into(), String::new()];
        assert_eq!(cp.validate(), Err(Error::CheckpointEmptyLine { line: 5 }));
        cp.extensions = vec!["a\rb".into()];
        assert_eq!(
            cp.validate(),
            Err(Error::CheckpointControlCharacter { line: 4 })
        );
    }

    #[test]
    fn every_single_byte_mutation_either_fails_or_round_trips() {
        let base = format!("{EXAMPLE}ext\n").into_bytes();
        for i in 0..base.len() {
            for b in 0..=255u8 {
                let mut m = base.clone();
                m[i] = b;
                if let Ok(cp) = Checkpoint::parse(&m) {
                    assert_eq!(cp.to_text().as_bytes(), &m[..]);
                }
            }
        }
    }
}
