#![forbid(unsafe_code)]
//! The small subset of deterministic CBOR (RFC 8949 §4.2.1, "core
//! deterministic encoding") that flashgate's own formats use (audit
//! records, the outer layer of a job package): unsigned integers, byte
//! strings, text strings, arrays and maps, all with definite lengths and
//! shortest-form heads.
//!
//! The decoder accepts only what the encoder produces, so a record that
//! decodes re-encodes to the same bytes. It borrows from its input and never
//! sizes an allocation from a length read from the input.

/// Major type 0: unsigned integer.
const MAJOR_UINT: u8 = 0;
/// Major type 2: byte string.
const MAJOR_BYTES: u8 = 2;
/// Major type 3: text string.
const MAJOR_TEXT: u8 = 3;
/// Major type 4: array.
const MAJOR_ARRAY: u8 = 4;
/// Major type 5: map.
const MAJOR_MAP: u8 = 5;

/// Why bytes are not the deterministic CBOR that was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CborError {
    /// The input ends inside an item.
    #[error("the input ends inside a CBOR item at byte {offset}")]
    Truncated {
        /// Offset of the item.
        offset: usize,
    },
    /// A head is not in its shortest form, or uses an indefinite length.
    #[error("the CBOR item at byte {offset} is not in deterministic encoding")]
    NotDeterministic {
        /// Offset of the item.
        offset: usize,
    },
    /// An item of another major type than expected.
    #[error("the CBOR item at byte {offset} is {found}, expected {expected}")]
    WrongType {
        /// Offset of the item.
        offset: usize,
        /// What was found.
        found: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// A text string is not UTF-8.
    #[error("the text string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Offset of the item.
        offset: usize,
    },
    /// Map keys are not in deterministic (strictly increasing) order.
    #[error("the map key at byte {offset} is out of order or repeated")]
    KeyOrder {
        /// Offset of the key.
        offset: usize,
    },
    /// Bytes follow the top-level item.
    #[error("{count} bytes follow the end of the item")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

fn major_name(major: u8) -> &'static str {
    match major {
        0 => "an unsigned integer",
        1 => "a negative integer",
        2 => "a byte string",
        3 => "a text string",
        4 => "an array",
        5 => "a map",
        6 => "a tag",
        _ => "a simple value or float",
    }
}

/// Appends a head (major type and argument) in shortest form.
pub fn put_head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    if value < 24 {
        out.push(m | value as u8);
    } else if let Ok(v) = u8::try_from(value) {
        out.push(m | 24);
        out.push(v);
    } else if let Ok(v) = u16::try_from(value) {
        out.push(m | 25);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(value) {
        out.push(m | 26);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends an unsigned integer.
pub fn put_uint(out: &mut Vec<u8>, value: u64) {
    put_head(out, MAJOR_UINT, value);
}

/// Appends a byte string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_head(out, MAJOR_BYTES, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a text string.
pub fn put_text(out: &mut Vec<u8>, text: &str) {
    put_head(out, MAJOR_TEXT, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// Appends an array head for `len` items.
pub fn put_array(out: &mut Vec<u8>, len: usize) {
    put_head(out, MAJOR_ARRAY, len as u64);
}

/// Appends a map head for `len` pairs.
pub fn put_map(out: &mut Vec<u8>, len: usize) {
    put_head(out, MAJOR_MAP, len as u64);
}

/// Orders text keys as deterministic CBOR does: by the bytes of their
/// encodings, which for text strings means shorter first, then bytewise.
pub fn text_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// A strict reader over a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self { input, pos: 0 }
    }

    /// Fails unless the whole input has been read.
    pub fn finish(&self) -> Result<(), CborError> {
        let rest = self.input.len().saturating_sub(self.pos);
        if rest == 0 {
            Ok(())
        } else {
            Err(CborError::TrailingBytes { count: rest })
        }
    }

    fn take(&mut self, n: usize, offset: usize) -> Result<&'a [u8], CborError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or(CborError::Truncated { offset })?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Reads a head; returns (major type, argument, offset of the item).
    fn head(&mut self) -> Result<(u8, u64, usize), CborError> {
        let offset = self.pos;
        let first = self.take(1, offset)?[0];
        let major = first >> 5;
        let info = first & 0x1f;
        let value = match info {
            0..=23 => u64::from(info),
            24 => {
                let v = u64::from(self.take(1, offset)?[0]);
                if v < 24 {
                    return Err(CborError::NotDeterministic { offset });
                }
                v
            }
            25 => {
                let b = self.take(2, offset)?;
                let v = u64::from(u16::from_be_bytes([b[0], b[1]]));
                if v <= 0xff {
                    return Err(CborError::NotDeterministic { offset });
                }
                v
            }
            26 => {
                let b = self.take(4, offset)?;
                let v = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if v <= 0xffff {
                    return Err(CborError::NotDeterministic { offset });
                }
                v
            }
            27 => {
                let b = self.take(8, offset)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let v = u64::from_be_bytes(a);
                if v <= 0xffff_ffff {
                    return Err(CborError::NotDeterministic { offset });
                }
                v
            }
            // 28..=30 are reserved, 31 is an indefinite length or "break".
            _ => return Err(CborError::NotDeterministic { offset }),
        };
        Ok((major, value, offset))
    }

    fn expect(&mut self, major: u8) -> Result<(u64, usize), CborError> {
        let (m, v, offset) = self.head()?;
        if m != major {
            return Err(CborError::WrongType {
                offset,
                found: major_name(m),
                expected: major_name(major),
            });
        }
        Ok((v, offset))
    }

    pub fn uint(&mut self) -> Result<u64, CborError> {
        Ok(self.expect(MAJOR_UINT)?.0)
    }

    fn len_arg(&mut self, major: u8) -> Result<(usize, usize), CborError> {
        let (v, offset) = self.expect(major)?;
        // A length that does not fit is necessarily past the end of the input.
        let n = usize::try_from(v).map_err(|_| CborError::Truncated { offset })?;
        Ok((n, offset))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], CborError> {
        let (n, offset) = self.len_arg(MAJOR_BYTES)?;
        self.take(n, offset)
    }

    pub fn text(&mut self) -> Result<&'a str, CborError> {
        let (n, offset) = self.len_arg(MAJOR_TEXT)?;
        let b = self.take(n, offset)?;
        std::str::from_utf8(b).map_err(|_| CborError::InvalidUtf8 { offset })
    }

    /// Reads a map head; returns the number of pairs (not yet checked
    /// against the remaining input: callers read pairs one by one).
    pub fn map(&mut self) -> Result<u64, CborError> {
        Ok(self.expect(MAJOR_MAP)?.0)
    }

    /// Reads an array head; returns its item count.
    pub fn array(&mut self) -> Result<u64, CborError> {
        Ok(self.expect(MAJOR_ARRAY)?.0)
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Whether the whole input has been read.
    pub fn at_end(&self) -> bool {
        self.pos == self.input.len()
    }

    /// Peeks at the major type of the next item.
    pub fn peek_major(&self) -> Option<u8> {
        self.input.get(self.pos).map(|b| b >> 5)
    }

    /// Reads an unsigned-integer map key that must be greater than `prev`.
    pub fn uint_key(&mut self, prev: Option<u64>) -> Result<(u64, usize), CborError> {
        let offset = self.pos;
        let k = self.uint()?;
        if prev.is_some_and(|p| k <= p) {
            return Err(CborError::KeyOrder { offset });
        }
        Ok((k, offset))
    }

    /// Reads a text map key that must sort after `prev`.
    pub fn text_key(&mut self, prev: Option<&str>) -> Result<&'a str, CborError> {
        let offset = self.pos;
        let k = self.text()?;
        if prev.is_some_and(|p| text_key_order(p, k) != std::cmp::Ordering::Less) {
            return Err(CborError::KeyOrder { offset });
        }
        Ok(k)
    }

    pub const MAJOR_UINT: u8 = MAJOR_UINT;
    pub const MAJOR_BYTES: u8 = MAJOR_BYTES;
    pub const MAJOR_TEXT: u8 = MAJOR_TEXT;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_shortest_and_round_trip() {
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_uint(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.uint().unwrap(), v);
            r.finish().unwrap();
        }
    }

    #[test]
    fn non_shortest_heads_are_refused() {
        for bad in [
            &[0x18, 0x17][..],
            &[0x19, 0x00, 0xff],
            &[0x1a, 0, 0, 0xff, 0xff],
            &[0x1b, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            &[0x1f],
            &[0x5f],
        ] {
            assert!(
                matches!(
                    Reader::new(bad).uint(),
                    Err(CborError::NotDeterministic { .. }) | Err(CborError::WrongType { .. })
                ),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn huge_lengths_are_truncation_not_allocation() {
        let bad = [0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            Reader::new(&bad).bytes(),
            Err(CborError::Truncated { .. })
        ));
    }

    #[test]
    fn text_keys_sort_length_first() {
        use std::cmp::Ordering;
        assert_eq!(text_key_order("z", "aa"), Ordering::Less);
        assert_eq!(text_key_order("ab", "aa"), Ordering::Greater);
    }
}
