//! A strict reader for the outer layer of a job package: definite lengths,
//! shortest-form heads only, borrowing byte strings from the input so that
//! multi-megabyte firmware chunks are never copied.

/// Why the outer CBOR could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CborError {
    pub offset: usize,
    pub detail: &'static str,
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const MAJOR_UINT: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn err(&self, detail: &'static str) -> CborError {
        CborError {
            offset: self.pos,
            detail,
        }
    }

    fn byte(&mut self) -> Result<u8, CborError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.err("unexpected end of data"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads a head of the given major type and returns its argument,
    /// refusing indefinite lengths and non-shortest encodings.
    fn head(&mut self, major: u8) -> Result<u64, CborError> {
        let start = self.pos;
        let initial = self.byte()?;
        if initial >> 5 != major {
            self.pos = start;
            return Err(self.err("unexpected CBOR type"));
        }
        let info = initial & 0x1f;
        let value = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let n = 1usize << (info - 24);
                let end = self
                    .pos
                    .checked_add(n)
                    .ok_or_else(|| self.err("length overflow"))?;
                let bytes = self
                    .buf
                    .get(self.pos..end)
                    .ok_or_else(|| self.err("unexpected end of data"))?;
                self.pos = end;
                let v = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                let shortest = match info {
                    24 => v >= 24,
                    25 => v > 0xff,
                    26 => v > 0xffff,
                    _ => v > 0xffff_ffff,
                };
                if !shortest {
                    self.pos = start;
                    return Err(self.err("integer or length not in shortest form"));
                }
                v
            }
            _ => {
                self.pos = start;
                return Err(self.err("indefinite length or reserved encoding"));
            }
        };
        Ok(value)
    }

    pub fn uint(&mut self) -> Result<u64, CborError> {
        self.head(MAJOR_UINT)
    }

    pub fn array(&mut self) -> Result<u64, CborError> {
        self.head(MAJOR_ARRAY)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], CborError> {
        let len = self.head(MAJOR_BYTES)?;
        self.take(len)
    }

    pub fn text(&mut self) -> Result<&'a str, CborError> {
        let len = self.head(MAJOR_TEXT)?;
        let raw = self.take(len)?;
        std::str::from_utf8(raw).map_err(|_| self.err("text is not UTF-8"))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], CborError> {
        let len = usize::try_from(len).map_err(|_| self.err("length too large"))?;
        let end = self
            .pos
            .checked_add(len)
            .ok_or_else(|| self.err("length overflow"))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.err("length runs past the end of the data"))?;
        self.pos = end;
        Ok(out)
    }
}

/// Writes a head in shortest form.
pub(crate) fn write_head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    if value < 24 {
        out.push(m | value as u8);
    } else if value <= 0xff {
        out.push(m | 24);
        out.push(value as u8);
    } else if value <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(value as u16).to_be_bytes());
    } else if value <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(value as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub(crate) fn write_uint(out: &mut Vec<u8>, v: u64) {
    write_head(out, MAJOR_UINT, v);
}
pub(crate) fn write_array(out: &mut Vec<u8>, len: u64) {
    write_head(out, MAJOR_ARRAY, len);
}
pub(crate) fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_head(out, MAJOR_BYTES, b.len() as u64);
    out.extend_from_slice(b);
}
pub(crate) fn write_text(out: &mut Vec<u8>, s: &str) {
    write_head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_shortest_heads() {
        // uint 5 encoded in one extra byte
        assert!(Reader::new(&[0x18, 0x05]).uint().is_err());
        assert_eq!(Reader::new(&[0x18, 0x18]).uint().unwrap(), 24);
        // indefinite-length array
        assert!(Reader::new(&[0x9f]).array().is_err());
    }

    #[test]
    fn round_trips_heads() {
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_uint(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.uint().unwrap(), v);
            assert!(r.at_end());
        }
    }

    #[test]
    fn byte_string_past_end_is_an_error() {
        assert!(Reader::new(&[0x5a, 0xff, 0xff, 0xff, 0xff, 0x00])
            .bytes()
            .is_err());
    }
}
