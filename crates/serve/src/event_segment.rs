//! A run's live events in shared segments. Events are framed as SSE (`id`,
//! `event` and `data` lines) and compressed once per segment; every reader
//! at the live edge writes the same bytes, so a thousand readers cost a
//! thousand writes of a segment, not a thousand encodings of each event.
//!
//! A reader that asks for gzip gets one gzip member (RFC 1952): the header,
//! then each segment's deflate blocks (RFC 1951), and at the end an empty
//! final block and the CRC-32 and length of what that reader was sent.
//! Each segment is compressed on its own and ends with a sync flush, so
//! any run of segments is a valid deflate stream, byte-aligned at every
//! segment's end, and a client decodes each segment as it arrives. The
//! reader's CRC-32 is combined from the segments' own.

use axum::body::Bytes;
use flate2::{Compress, Compression, FlushCompress};

use crate::runs::StreamEvent;

/// Some consecutive events, framed and compressed.
#[derive(Clone)]
pub struct Segment {
    /// The first event's id (0 for a comment or a `lagged` notice).
    pub first: u64,
    /// The last event's id (0 likewise).
    pub last: u64,
    /// The SSE text.
    plain: Bytes,
    /// The same, as deflate blocks ending in a sync flush.
    deflate: Bytes,
    /// The CRC-32 of `plain`.
    crc: crc32fast::Hasher,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("first", &self.first)
            .field("last", &self.last)
            .field("plain", &self.plain.len())
            .field("deflate", &self.deflate.len())
            .finish()
    }
}

/// `id`, `event` and `data` lines of one event. The data is compact JSON:
/// never a newline in it, so one `data:` line.
fn frame(out: &mut Vec<u8>, e: &StreamEvent) {
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(e.id.to_string().as_bytes());
    out.extend_from_slice(b"\nevent: ");
    out.extend_from_slice(e.name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(e.data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// `plain` as raw deflate blocks, ended by a sync flush (not final).
fn deflate(plain: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(plain.len() / 4 + 64);
    loop {
        let done = usize::try_from(c.total_in()).unwrap_or(plain.len());
        let rest = plain.get(done..).unwrap_or_default();
        // Only a bug could make this fail (the input is plain bytes and
        // the output has room); it ends the loop rather than spinning.
        if c.compress_vec(rest, &mut out, FlushCompress::Sync).is_err() {
            break;
        }
        let consumed = usize::try_from(c.total_in()).unwrap_or(plain.len()) >= plain.len();
        // The flush is complete once a call leaves output room unused.
        if consumed && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    out
}

impl Segment {
    /// The events, in order (not empty).
    #[must_use]
    pub fn of_events(events: &[StreamEvent]) -> Self {
        let mut text = Vec::with_capacity(events.iter().map(|e| e.data.len() + 48).sum());
        for e in events {
            frame(&mut text, e);
        }
        let (first, last) = (
            events.first().map_or(0, |e| e.id),
            events.last().map_or(0, |e| e.id),
        );
        Self::of_text(first, last, text)
    }

    /// Any SSE text (a comment, a notice without an id).
    #[must_use]
    pub fn of_text(first: u64, last: u64, text: Vec<u8>) -> Self {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&text);
        Self {
            first,
            last,
            deflate: Bytes::from(deflate(&text)),
            plain: Bytes::from(text),
            crc,
        }
    }
}

/// The gzip member header: no name, no time, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// An empty final block with fixed codes (BFINAL 1, BTYPE 01, end of block).
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// One reader's encoding of the segments it is sent.
#[derive(Debug)]
pub enum Encoder {
    /// The SSE text as it is.
    Plain,
    /// One gzip member.
    Gzip {
        /// Whether the header went out.
        started: bool,
        /// The CRC-32 of everything sent.
        crc: crc32fast::Hasher,
        /// Its length.
        len: u64,
    },
}

impl Encoder {
    /// For a reader that accepts gzip or not.
    #[must_use]
    pub fn new(gzip: bool) -> Self {
        if gzip {
            Self::Gzip {
                started: false,
                crc: crc32fast::Hasher::new(),
                len: 0,
            }
        } else {
            Self::Plain
        }
    }

    /// The bytes that carry `segment` to this reader.
    pub fn segment(&mut self, segment: &Segment) -> Bytes {
        match self {
            Self::Plain => segment.plain.clone(),
            Self::Gzip { started, crc, len } => {
                crc.combine(&segment.crc);
                *len += segment.plain.len() as u64;
                if *started {
                    segment.deflate.clone()
                } else {
                    *started = true;
                    let mut out = Vec::with_capacity(GZIP_HEADER.len() + segment.deflate.len());
                    out.extend_from_slice(&GZIP_HEADER);
                    out.extend_from_slice(&segment.deflate);
                    Bytes::from(out)
                }
            }
        }
    }

    /// What ends the stream (gzip: the final block and the trailer).
    pub fn finish(&mut self) -> Option<Bytes> {
        match self {
            Self::Plain => None,
            Self::Gzip { started, crc, len } => {
                let mut out = Vec::with_capacity(GZIP_HEADER.len() + FINAL_BLOCK.len() + 8);
                if !*started {
                    *started = true;
                    out.extend_from_slice(&GZIP_HEADER);
                }
                out.extend_from_slice(&FINAL_BLOCK);
                out.extend_from_slice(&std::mem::take(crc).finalize().to_le_bytes());
                // ISIZE: the length modulo 2^32.
                let isize = u32::try_from(*len & 0xffff_ffff).unwrap_or_default();
                out.extend_from_slice(&isize.to_le_bytes());
                Some(Bytes::from(out))
            }
        }
    }
}

/// Whether an `Accept-Encoding` value accepts gzip (RFC 9110 §12.5.3): a
/// `gzip` (or `x-gzip`) coding with a quality above zero, or failing one
/// named, `*` likewise.
#[must_use]
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    let (mut named, mut star) = (None, None);
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let quality = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().ok())?
            })
            .next()
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            named = Some(quality);
        } else if coding == "*" {
            star = Some(quality);
        }
    }
    named.or(star).is_some_and(|q| q > 0.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Read as _;
    use std::sync::Arc;

    use super::*;

    fn events(from: u64, n: u64) -> Vec<StreamEvent> {
        (from..from + n)
            .map(|id| StreamEvent {
                id,
                name: Arc::from("stage-done"),
                data: Arc::from(format!(
                    r#"{{"event":"stage-done","channel":{},"board":{id},"stage":"program","us":{}}}"#,
                    id % 64,
                    id * 7
                )),
            })
            .collect()
    }

    #[test]
    fn any_run_of_segments_is_one_gzip_member_of_their_text() {
        let segments: Vec<Segment> = (0..5)
            .map(|i| Segment::of_events(&events(1 + i * 100, 100)))
            .collect();
        // A reader that joins at the third segment, sent a keep-alive.
        let keep = Segment::of_text(0, 0, b": keep-alive\n\n".to_vec());
        let mut enc = Encoder::new(true);
        let mut wire = Vec::new();
        let mut text = Vec::new();
        for s in [&segments[2], &keep, &segments[3], &segments[4]] {
            wire.extend_from_slice(&enc.segment(s));
            text.extend_from_slice(&s.plain);
        }
        // Each prefix ending at a segment decodes to that segment's text
        // (a live client sees every event as it arrives).
        let mut partial = flate2::Decompress::new(false);
        let mut got = Vec::with_capacity(text.len());
        partial
            .decompress_vec(
                &wire[GZIP_HEADER.len()..],
                &mut got,
                flate2::FlushDecompress::Sync,
            )
            .unwrap();
        assert_eq!(got, text);
        wire.extend_from_slice(&enc.finish().unwrap());
        let mut whole = Vec::new();
        flate2::read::GzDecoder::new(wire.as_slice())
            .read_to_end(&mut whole)
            .unwrap();
        assert_eq!(whole, text);
        assert!(
            wire.len() * 4 < text.len(),
            "{} of {}",
            wire.len(),
            text.len()
        );
    }

    #[test]
    fn an_empty_stream_is_an_empty_gzip_member_and_plain_is_the_text() {
        let mut enc = Encoder::new(true);
        let wire = enc.finish().unwrap();
        let mut whole = Vec::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut whole)
            .unwrap();
        assert!(whole.is_empty());
        let s = Segment::of_events(&events(7, 2));
        let mut plain = Encoder::new(false);
        assert_eq!(
            std::str::from_utf8(&plain.segment(&s)).unwrap(),
            "id: 7\nevent: stage-done\ndata: {\"event\":\"stage-done\",\"channel\":7,\"board\":7,\"stage\":\"program\",\"us\":49}\n\n\
             id: 8\nevent: stage-done\ndata: {\"event\":\"stage-done\",\"channel\":8,\"board\":8,\"stage\":\"program\",\"us\":56}\n\n"
        );
        assert!(plain.finish().is_none());
        assert_eq!((s.first, s.last), (7, 8));
    }

    #[test]
    fn accept_encoding_is_read_as_rfc_9110_says() {
        for yes in [
            "gzip",
            "deflate, gzip;q=0.5",
            "GZIP",
            "br, *",
            "x-gzip",
            "gzip ; q=1",
        ] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in [
            "",
            "identity",
            "deflate, br",
            "gzip;q=0",
            "gzip; q=0.000",
            "*;q=0",
            "gzipx",
            "gzip;q=0, *",
        ] {
            assert!(!accepts_gzip(no), "{no}");
        }
    }
}
