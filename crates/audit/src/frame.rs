//! Length-prefixed framing shared by `audit.log`, `checkpoints.log` and the
//! bundle's `records.log`: each entry is `u32be length || bytes`.

use std::io::{self, BufRead, Read};

use crate::record::MAX_RECORD_LEN;

/// The largest framed entry accepted, in bytes. Records are at most
/// [`MAX_RECORD_LEN`]; signed checkpoints are far smaller.
pub const MAX_FRAME_LEN: usize = MAX_RECORD_LEN;

/// Appends one frame to `out`.
pub fn put_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    // Callers never frame more than MAX_FRAME_LEN bytes.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// What went wrong reading a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream ends inside a frame.
    #[error("the file ends inside the entry at byte {offset}: {have} of {want} bytes present")]
    Truncated {
        /// Offset of the frame.
        offset: u64,
        /// Bytes present (length prefix included).
        have: u64,
        /// Bytes the frame needs (length prefix included).
        want: u64,
    },
    /// A length prefix above [`MAX_FRAME_LEN`].
    #[error("the entry at byte {offset} claims {len} bytes; at most {MAX_FRAME_LEN} are allowed")]
    TooLarge {
        /// Offset of the frame.
        offset: u64,
        /// The claimed length.
        len: u64,
    },
    /// Reading failed.
    #[error("read error: {0}")]
    Io(#[from] io::Error),
}

/// Reads frames one at a time into a reused buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    offset: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> FrameReader<R> {
    /// Reads from `inner`, whose first byte is at offset 0.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            buf: Vec::new(),
        }
    }

    /// Reads from `inner`, whose first byte is at `offset` of the file.
    pub fn new_at(inner: R, offset: u64) -> Self {
        Self {
            inner,
            offset,
            buf: Vec::new(),
        }
    }

    /// Offset of the next frame (the end of the last complete one).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next frame; `Ok(None)` at a clean end of stream. After an
    /// error the reader should not be used further.
    pub fn next_frame(&mut self) -> Result<Option<(u64, &[u8])>, FrameError> {
        let offset = self.offset;
        let mut len = [0u8; 4];
        let got = read_full(&mut self.inner, &mut len)?;
        if got == 0 {
            return Ok(None);
        }
        if got < 4 {
            return Err(FrameError::Truncated {
                offset,
                have: got as u64,
                want: 4,
            });
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                offset,
                len: n as u64,
            });
        }
        self.buf.resize(n, 0);
        let got = read_full(&mut self.inner, &mut self.buf)?;
        if got < n {
            return Err(FrameError::Truncated {
                offset,
                have: 4 + got as u64,
                want: 4 + n as u64,
            });
        }
        self.offset = offset + 4 + n as u64;
        Ok(Some((offset, &self.buf)))
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub(crate) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
