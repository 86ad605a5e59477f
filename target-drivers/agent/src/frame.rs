//! Framing: `SOF | type | len (u16 LE) | payload | CRC-16 (LE)`.

use std::collections::VecDeque;

use crc::{Crc, CRC_16_IBM_3740};

use crate::AgentError;

/// Start-of-frame byte.
pub const SOF: u8 = 0xA5;
/// Largest payload in bytes.
pub const MAX_PAYLOAD: usize = 1024;
/// Bytes before the payload: SOF, type, length.
pub const HEADER_LEN: usize = 4;
/// Bytes after the payload: the CRC.
pub const CRC_LEN: usize = 2;
/// Largest frame on the wire.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD + CRC_LEN;

/// CRC-16/CCITT-FALSE (also called CRC-16/IBM-3740 and CRC-16/AUTOSAR): width 16,
/// poly 0x1021, init 0xFFFF, refin false, refout false, xorout 0x0000, check 0x29B1.
const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// CRC of a frame: computed over type, length and payload (everything after SOF, before the CRC).
pub fn frame_crc(bytes: &[u8]) -> u16 {
    CRC16.checksum(bytes)
}

/// One decoded frame: its type byte and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Type byte.
    pub kind: u8,
    /// Payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

/// Encodes one frame.
pub fn encode_frame(kind: u8, payload: &[u8]) -> Result<Vec<u8>, AgentError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(AgentError::Oversize {
            length: payload.len(),
        });
    }
    let len = payload.len() as u16;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CRC_LEN);
    out.push(SOF);
    out.push(kind);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = frame_crc(&out[1..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Streaming frame decoder.
///
/// Feed it bytes as they arrive ([`feed`](Decoder::feed)), then call
/// [`next_frame`](Decoder::next_frame) until it returns `None`. Bytes before a start byte are
/// skipped. A frame with a bad CRC or an oversize length is reported as an error and only its
/// start byte is dropped, so a real frame hidden inside the bad one is still found. Nothing is
/// allocated from a received length: the payload is copied out only after its CRC checked.
#[derive(Debug, Default)]
pub struct Decoder {
    pending: VecDeque<u8>,
    skipped: u64,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
    }

    /// Bytes discarded so far while hunting for a frame (garbage and starts of bad frames).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes received but not yet consumed (a frame in progress).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Drops everything buffered, e.g. after a timeout.
    pub fn reset(&mut self) {
        self.skipped += self.pending.len() as u64;
        self.pending.clear();
    }

    /// The next complete frame, an error for a bad one, or `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, AgentError>> {
        while let Some(&b) = self.pending.front() {
            if b == SOF {
                break;
            }
            self.pending.pop_front();
            self.skipped += 1;
        }
        if self.pending.len() < HEADER_LEN {
            return None;
        }
        let kind = self.pending[1];
        let length = usize::from(u16::from_le_bytes([self.pending[2], self.pending[3]]));
        if length > MAX_PAYLOAD {
            self.drop_start();
            return Some(Err(AgentError::Oversize { length }));
        }
        let total = HEADER_LEN + length + CRC_LEN;
        if self.pending.len() < total {
            // A start byte in garbage can announce a length that swallows the real frame
            // behind it. If a complete frame with a good CRC already sits later in the buffer,
            // the candidate at the front was garbage: skip to the real one.
            let bytes = self.pending.make_contiguous();
            let later = (1..bytes.len()).find(|&p| complete_frame_at(&bytes[p..]).is_some());
            if let Some(p) = later {
                self.pending.drain(..p);
                self.skipped += p as u64;
                return self.next_frame();
            }
            return None;
        }
        let bytes = self.pending.make_contiguous();
        let computed = frame_crc(&bytes[1..HEADER_LEN + length]);
        let received =
            u16::from_le_bytes([bytes[HEADER_LEN + length], bytes[HEADER_LEN + length + 1]]);
        if computed != received {
            self.drop_start();
            return Some(Err(AgentError::BadCrc { computed, received }));
        }
        let payload = bytes[HEADER_LEN..HEADER_LEN + length].to_vec();
        self.pending.drain(..total);
        Some(Ok(Frame { kind, payload }))
    }

    fn drop_start(&mut self) {
        self.pending.pop_front();
        self.skipped += 1;
    }
}

/// Length of the complete, CRC-valid frame at the start of `bytes`, if there is one.
fn complete_frame_at(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < HEADER_LEN + CRC_LEN || bytes[0] != SOF {
        return None;
    }
    let length = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
    let total = HEADER_LEN + length + CRC_LEN;
    if length > MAX_PAYLOAD || bytes.len() < total {
        return None;
    }
    let received = u16::from_le_bytes([bytes[HEADER_LEN + length], bytes[HEADER_LEN + length + 1]]);
    (frame_crc(&bytes[1..HEADER_LEN + length]) == received).then_some(total)
}
