//! Firmware image loading for flashgate.
//!
//! Reads Intel HEX, ELF and raw binary images into a list of contiguous
//! [`Segment`]s sorted by address. Pieces that touch are joined, identical
//! overlaps are accepted and conflicting overlaps are rejected.
//!
//! Every input is treated as hostile: parsing never panics, no allocation is
//! sized from an unchecked length field, and the total image size is capped
//! at [`MAX_IMAGE_SIZE`].

use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use flashgate_device::parse_u32;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

/// Largest total number of data bytes an image may contain (64 MiB).
///
/// No supported target has more flash than this; anything larger is a wrong
/// or malicious input.
pub const MAX_IMAGE_SIZE: u64 = 64 * 1024 * 1024;

/// Largest file [`load_path`] reads (512 MiB).
///
/// Intel HEX needs a bit under three characters per data byte and ELF files
/// may carry debug information, so this is well above [`MAX_IMAGE_SIZE`].
pub const MAX_FILE_SIZE: u64 = 512 * 1024 * 1024;

/// Two images of one job that share addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageOverlap {
    /// The earlier image, counted from 1 in the order given.
    pub first: usize,
    /// The later image, counted from 1.
    pub second: usize,
    /// First shared address.
    pub start: u64,
    /// One past the last shared address.
    pub end: u64,
}

impl std::fmt::Display for ImageOverlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "images {} and {} overlap at {:#010x}..{:#010x} ({} bytes); each address may be written by one image only",
            self.first,
            self.second,
            self.start,
            self.end,
            self.end - self.start
        )
    }
}

/// The first pair of `(address, length)` ranges that share an address, if
/// any. A job's images are written one after the other, so an overlap means
/// the later one overwrites the earlier and every board fails at verify.
pub fn find_overlap(ranges: &[(u32, u64)]) -> Option<ImageOverlap> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].0);
    order.windows(2).find_map(|w| {
        let (a, b) = (ranges[w[0]], ranges[w[1]]);
        let a_end = u64::from(a.0) + a.1;
        (a_end > u64::from(b.0)).then(|| ImageOverlap {
            first: w[0].min(w[1]) + 1,
            second: w[0].max(w[1]) + 1,
            start: u64::from(b.0),
            end: a_end.min(u64::from(b.0) + b.1),
        })
    })
}

/// Size of the 32-bit address space; no byte may sit at or above it.
const ADDRESS_SPACE: u64 = 1 << 32;

/// One contiguous region of the image.
#[derive(Clone, PartialEq, Eq)]
pub struct Segment {
    /// Address of the first byte.
    pub address: u32,
    /// The bytes, never empty in a loaded image.
    pub data: Vec<u8>,
}

impl Segment {
    /// Address one past the last byte.
    ///
    /// This is a `u64` because a segment may end exactly at 4 GiB.
    pub fn end(&self) -> u64 {
        u64::from(self.address) + self.data.len() as u64
    }
}

impl fmt::Debug for Segment {
    // Firmware is large; print the extent, not the bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("address", &format_args!("{:#010x}", self.address))
            .field("len", &self.data.len())
            .finish()
    }
}

/// The encoding of a firmware image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputFormat {
    /// Intel HEX (I8HEX, I16HEX and I32HEX records 00 to 05).
    IntelHex,
    /// ELF, 32 or 64 bit, either byte order; `PT_LOAD` segments are placed
    /// at their physical (load) address.
    Elf,
    /// Raw binary placed at `base`.
    Raw {
        /// Address of the first byte of the file.
        base: u32,
    },
}

/// Errors from loading a firmware image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirmwareError {
    /// The file could not be read.
    #[error("cannot read firmware file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        error: std::io::Error,
    },

    /// The file is larger than [`MAX_FILE_SIZE`].
    #[error("firmware file {path} is larger than {limit} bytes; check that it is the right file")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },

    /// An Intel HEX line contains bytes that are not ASCII text.
    #[error("Intel HEX line {line} is not ASCII text; check that the file really is Intel HEX")]
    HexNotText {
        /// 1-based line number.
        line: usize,
    },

    /// An Intel HEX record's checksum does not match its contents.
    #[error(
        "Intel HEX line {line} has checksum {stored:02X} but its bytes need {computed:02X}; \
         the file is corrupt, rebuild or copy it again"
    )]
    HexChecksum {
        /// 1-based line number.
        line: usize,
        /// Checksum written in the record.
        stored: u8,
        /// Checksum computed over the record.
        computed: u8,
    },

    /// An Intel HEX line is not a well-formed record.
    #[error("Intel HEX line {line} is not a valid record ({reason}); rebuild the image")]
    HexRecord {
        /// 1-based line number.
        line: usize,
        /// What is wrong with the record.
        reason: String,
    },

    /// The Intel HEX input has no end-of-file record.
    #[error(
        "Intel HEX input has no end-of-file record (type 01), so it is probably truncated; \
         copy or rebuild it again"
    )]
    HexMissingEof,

    /// A record follows the Intel HEX end-of-file record.
    #[error(
        "Intel HEX line {line} comes after the end-of-file record; \
         remove the trailing records or rebuild the image"
    )]
    HexDataAfterEof {
        /// 1-based line number.
        line: usize,
    },

    /// The ELF file is malformed or not an ELF file.
    #[error("invalid ELF file ({reason}); check that the right file was given")]
    Elf {
        /// What is wrong with the file.
        reason: String,
    },

    /// Data lies (partly) at or above 4 GiB.
    #[error(
        "{len} bytes of data at {address:#x} extend past the 4 GiB address space; \
         fix the load address"
    )]
    AddressOutOfRange {
        /// Address of the first byte.
        address: u64,
        /// Number of bytes.
        len: u64,
    },

    /// Two pieces of the image put different values at the same address.
    #[error(
        "firmware data overlaps at {address:#010x} with different values \
         ({first:#04x} and {second:#04x}); fix the linker script or the input files"
    )]
    Overlap {
        /// The first conflicting address.
        address: u32,
        /// Value from the piece at the lower address (or the earlier one).
        first: u8,
        /// Value from the other piece.
        second: u8,
    },

    /// The image contains no data bytes.
    #[error("firmware image contains no data; check that the right file was given")]
    Empty,

    /// The image holds more than [`MAX_IMAGE_SIZE`] bytes.
    #[error("firmware image holds more than {limit} bytes; check that the right file was given")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },

    /// A raw binary was given without a load address.
    #[error("raw binary {path} needs a load address; write it as {path}@0x08000000 (say)")]
    MissingBase {
        /// The file.
        path: PathBuf,
    },

    /// A load address was given for a file that carries its own addresses.
    #[error("{path} is not a raw binary and carries its own addresses; remove the @address")]
    UnexpectedBase {
        /// The file.
        path: PathBuf,
    },

    /// The format could not be told from the file name or contents.
    #[error(
        "cannot tell the firmware format of {path}; name it .hex, .elf or .bin \
         (a .bin needs @address)"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },

    /// A `FILE[@ADDRESS]` argument is malformed.
    #[error("invalid firmware argument {arg:?}: {reason}")]
    InvalidSource {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Loads an image from memory.
///
/// On success the segments are sorted by address, non-empty, neither
/// overlapping nor touching (touching pieces are joined), and hold at most
/// [`MAX_IMAGE_SIZE`] bytes in total.
pub fn load(bytes: &[u8], format: InputFormat) -> Result<Vec<Segment>, FirmwareError> {
    match format {
        InputFormat::IntelHex => {
            let (arena, ranges) = ihex_pieces(bytes)?;
            let pieces = ranges
                .into_iter()
                .map(|(address, range)| Piece {
                    address,
                    data: &arena[range],
                })
                .collect();
            merge(pieces)
        }
        InputFormat::Elf => merge(elf_pieces(bytes)?),
        InputFormat::Raw { base } => {
            let len = bytes.len() as u64;
            if len > MAX_IMAGE_SIZE {
                return Err(FirmwareError::TooLarge {
                    limit: MAX_IMAGE_SIZE,
                });
            }
            check_range(u64::from(base), len)?;
            merge(vec![Piece {
                address: u64::from(base),
                data: bytes,
            }])
        }
    }
}

/// Loads an image from a file, choosing the format with [`detect_format`].
///
/// `base` is the load address of a raw binary and must be `None` for
/// formats that carry their own addresses.
pub fn load_path(path: &Path, base: Option<u32>) -> Result<Vec<Segment>, FirmwareError> {
    let bytes = read_limited(path)?;
    let format = detect_format(path, &bytes, base)?;
    load(&bytes, format)
}

/// Chooses the format of a file from its contents and name.
///
/// The ELF magic number wins; otherwise `.hex`, `.ihex` and `.ihx` mean
/// Intel HEX, `.elf` means ELF and `.bin` (or any other name, when `base` is
/// given) means a raw binary at `base`.
pub fn detect_format(
    path: &Path,
    bytes: &[u8],
    base: Option<u32>,
) -> Result<InputFormat, FirmwareError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let own_addresses = if bytes.starts_with(b"\x7fELF") {
        InputFormat::Elf
    } else {
        match (extension.as_deref(), base) {
            (Some("hex" | "ihex" | "ihx"), _) => InputFormat::IntelHex,
            (Some("elf"), _) => InputFormat::Elf,
            (_, Some(base)) => return Ok(InputFormat::Raw { base }),
            (Some("bin"), None) => {
                return Err(FirmwareError::MissingBase {
                    path: path.to_path_buf(),
                })
            }
            (_, None) => {
                return Err(FirmwareError::UnknownFormat {
                    path: path.to_path_buf(),
                })
            }
        }
    };
    match base {
        Some(_) => Err(FirmwareError::UnexpectedBase {
            path: path.to_path_buf(),
        }),
        None => Ok(own_addresses),
    }
}

/// Splits a `FILE[@ADDRESS]` argument, e.g. `fw.bin@0x08000000` or `fw.hex`.
///
/// The address is decimal or `0x`-prefixed hexadecimal and may contain `_`
/// separators. An `@` followed by a path separator is part of the file name.
pub fn parse_source_arg(s: &str) -> Result<(PathBuf, Option<u32>), FirmwareError> {
    let invalid = |reason| FirmwareError::InvalidSource {
        arg: s.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(invalid("it is empty; give a firmware file name"));
    }
    match s.rsplit_once('@') {
        Some((file, address)) if !address.contains(['/', '\\']) => {
            if file.is_empty() {
                return Err(invalid("the file name before '@' is empty"));
            }
            let address = parse_u32(address).ok_or_else(|| {
                invalid(
                    "the load address after '@' must be a decimal \
                     or 0x-prefixed hex number below 4 GiB",
                )
            })?;
            Ok((PathBuf::from(file), Some(address)))
        }
        _ => Ok((PathBuf::from(s), None)),
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, FirmwareError> {
    let io_error = |error| FirmwareError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    // Read one byte past the limit so that an oversized file is detected
    // without trusting metadata (which lies for pipes and devices).
    file.take(MAX_FILE_SIZE.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(FirmwareError::FileTooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_SIZE,
        });
    }
    Ok(bytes)
}

/// A piece of image data before merging.
struct Piece<'a> {
    address: u64,
    data: &'a [u8],
}

/// Checks that `len` bytes at `address` fit below 4 GiB.
fn check_range(address: u64, len: u64) -> Result<(), FirmwareError> {
    match address.checked_add(len) {
        Some(end) if end <= ADDRESS_SPACE => Ok(()),
        _ => Err(FirmwareError::AddressOutOfRange { address, len }),
    }
}

/// Adds `len` to the running total, failing above [`MAX_IMAGE_SIZE`].
fn add_to_total(total: &mut u64, len: u64) -> Result<(), FirmwareError> {
    match total.checked_add(len) {
        Some(t) if t <= MAX_IMAGE_SIZE => {
            *total = t;
            Ok(())
        }
        _ => Err(FirmwareError::TooLarge {
            limit: MAX_IMAGE_SIZE,
        }),
    }
}

/// Parses Intel HEX into one byte arena plus `(address, arena range)` pieces.
///
/// Records that continue the previous one are appended to its piece, so a
/// typical file yields a handful of pieces rather than one per line.
#[allow(clippy::type_complexity)]
fn ihex_pieces(bytes: &[u8]) -> Result<(Vec<u8>, Vec<(u64, Range<usize>)>), FirmwareError> {
    if bytes.trim_ascii().is_empty() {
        return Err(FirmwareError::Empty);
    }
    let mut arena: Vec<u8> = Vec::new();
    let mut pieces: Vec<(u64, Range<usize>)> = Vec::new();
    let mut total: u64 = 0;
    // Base added to each data record offset, set by record types 02 and 04.
    let mut base: u64 = 0;
    let mut seen_eof = false;

    for (index, raw_line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = index.saturating_add(1);
        // Tolerate CRLF and stray blanks; blank lines still count for numbering.
        let text = raw_line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if seen_eof {
            return Err(FirmwareError::HexDataAfterEof { line });
        }
        let text = match std::str::from_utf8(text) {
            Ok(t) if t.is_ascii() => t,
            _ => return Err(FirmwareError::HexNotText { line }),
        };
        let record = ihex::Record::from_record_string(text).map_err(|e| match e {
            ihex::ReaderError::ChecksumMismatch(computed, stored) => FirmwareError::HexChecksum {
                line,
                stored,
                computed,
            },
            other => FirmwareError::HexRecord {
                line,
                reason: other.to_string(),
            },
        })?;
        match record {
            ihex::Record::Data { offset, value } => {
                if value.is_empty() {
                    continue;
                }
                // base <= 0xFFFF_0000 and offset <= 0xFFFF: no overflow in u64.
                // Addresses are linear: a record does not wrap at a 64 KiB
                // boundary, as no toolchain emits one that would.
                let address = base + u64::from(offset);
                let len = value.len() as u64;
                check_range(address, len)?;
                add_to_total(&mut total, len)?;
                let start = arena.len();
                arena.extend_from_slice(&value);
                let end = arena.len();
                match pieces.last_mut() {
                    Some((prev_address, prev_range))
                        if prev_range.end == start
                            && *prev_address + (prev_range.len() as u64) == address =>
                    {
                        prev_range.end = end;
                    }
                    _ => pieces.push((address, start..end)),
                }
            }
            ihex::Record::EndOfFile => seen_eof = true,
            ihex::Record::ExtendedSegmentAddress(segment) => base = u64::from(segment) << 4,
            ihex::Record::ExtendedLinearAddress(upper) => base = u64::from(upper) << 16,
            // Start addresses are for loaders that jump into the image; the
            // programmer does not need them.
            ihex::Record::StartSegmentAddress { .. } | ihex::Record::StartLinearAddress(_) => {}
        }
    }
    if !seen_eof {
        return Err(FirmwareError::HexMissingEof);
    }
    Ok((arena, pieces))
}

fn elf_error(reason: impl fmt::Display) -> FirmwareError {
    FirmwareError::Elf {
        reason: reason.to_string(),
    }
}

fn elf_pieces(bytes: &[u8]) -> Result<Vec<Piece<'_>>, FirmwareError> {
    if !bytes.starts_with(b"\x7fELF") {
        return Err(elf_error("no ELF magic number"));
    }
    // EI_CLASS: 1 is ELFCLASS32, 2 is ELFCLASS64.
    match bytes.get(4) {
        Some(1) => elf_pieces_for::<object::elf::FileHeader32<Endianness>>(bytes),
        Some(2) => elf_pieces_for::<object::elf::FileHeader64<Endianness>>(bytes),
        _ => Err(elf_error("unknown ELF class")),
    }
}

fn elf_pieces_for<H>(bytes: &[u8]) -> Result<Vec<Piece<'_>>, FirmwareError>
where
    H: FileHeader<Endian = Endianness>,
{
    let header = H::parse(bytes).map_err(elf_error)?;
    let endian = header.endian().map_err(elf_error)?;
    let program_headers = header.program_headers(endian, bytes).map_err(elf_error)?;
    let mut pieces = Vec::new();
    let mut total: u64 = 0;
    for ph in program_headers {
        if ph.p_type(endian) != object::elf::PT_LOAD {
            continue;
        }
        let filesz: u64 = ph.p_filesz(endian).into();
        // memsz beyond filesz is zero-initialised RAM (.bss), not flash.
        if filesz == 0 {
            continue;
        }
        // Embedded linkers put the flash copy of a section at its LMA, which
        // ELF records as the physical address.
        let address: u64 = ph.p_paddr(endian).into();
        // Check the claimed size before touching the data it points at.
        add_to_total(&mut total, filesz)?;
        check_range(address, filesz)?;
        let data = ph
            .data(endian, bytes)
            .map_err(|()| elf_error("a PT_LOAD segment extends past the end of the file"))?;
        pieces.push(Piece { address, data });
    }
    Ok(pieces)
}

/// Sorts pieces and joins touching or identically overlapping ones.
///
/// Callers have checked that every piece lies below 4 GiB and that the
/// total is within [`MAX_IMAGE_SIZE`].
fn merge(mut pieces: Vec<Piece<'_>>) -> Result<Vec<Segment>, FirmwareError> {
    // Stable, so the order of equal addresses follows the input.
    pieces.sort_by_key(|p| p.address);
    let mut segments: Vec<Segment> = Vec::new();
    for piece in pieces {
        if piece.data.is_empty() {
            continue;
        }
        let start = piece.address;
        let end = start + piece.data.len() as u64;
        match segments.last_mut() {
            Some(segment) if start <= segment.end() => {
                let segment_end = segment.end();
                // Both values are bounded by the segment length, a usize.
                let offset = usize::try_from(start - u64::from(segment.address)).map_err(|_| {
                    FirmwareError::TooLarge {
                        limit: MAX_IMAGE_SIZE,
                    }
                })?;
                let overlap = usize::try_from(end.min(segment_end) - start).map_err(|_| {
                    FirmwareError::TooLarge {
                        limit: MAX_IMAGE_SIZE,
                    }
                })?;
                let existing = &segment.data[offset..offset + overlap];
                let incoming = &piece.data[..overlap];
                if let Some(i) = existing.iter().zip(incoming).position(|(a, b)| a != b) {
                    return Err(FirmwareError::Overlap {
                        address: u32::try_from(start + i as u64).unwrap_or(u32::MAX),
                        first: existing[i],
                        second: incoming[i],
                    });
                }
                segment.data.extend_from_slice(&piece.data[overlap..]);
            }
            _ => segments.push(Segment {
                address: u32::try_from(start).map_err(|_| FirmwareError::AddressOutOfRange {
                    address: start,
                    len: piece.data.len() as u64,
                })?,
                data: piece.data.to_vec(),
            }),
        }
    }
    if segments.is_empty() {
        return Err(FirmwareError::Empty);
    }
    Ok(segments)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_images_are_found_and_named() {
        assert_eq!(find_overlap(&[(0x9_0000, 0x100), (0x9_0100, 0x10)]), None);
        assert_eq!(find_overlap(&[]), None);
        let o = find_overlap(&[(0x9_0010, 0x20), (0x100, 4), (0x9_0000, 0x100)]).unwrap();
        assert_eq!(
            (o.first, o.second, o.start, o.end),
            (1, 3, 0x9_0010, 0x9_0030)
        );
        let text = o.to_string();
        assert!(
            text.contains("images 1 and 3 overlap at 0x00090010..0x00090030 (32 bytes)"),
            "{text}"
        );
        // A long image overlapping one that starts after its neighbour.
        let o = find_overlap(&[(0, 0x1000), (0x800, 0x10), (0x900, 0x10)]).unwrap();
        assert_eq!((o.first, o.second), (1, 2));
        // Ending exactly at 4 GiB touches nothing.
        assert_eq!(find_overlap(&[(0xFFFF_FF00, 0x100), (0, 1)]), None);
    }

    /// Builds one Intel HEX record line with a correct checksum.
    fn rec(offset: u16, record_type: u8, data: &[u8]) -> String {
        let mut bytes = vec![
            data.len() as u8,
            (offset >> 8) as u8,
            offset as u8,
            record_type,
        ];
        bytes.extend_from_slice(data);
        let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
        bytes.push(sum.wrapping_neg());
        let mut line = String::from(":");
        for b in bytes {
            line.push_str(&format!("{b:02X}"));
        }
        line
    }

    const EOF: &str = ":00000001FF";

    fn hex(lines: &[String]) -> Vec<u8> {
        let mut s = lines.join("\n");
        s.push('\n');
        s.into_bytes()
    }

    fn load_hex(lines: &[String]) -> Result<Vec<Segment>, FirmwareError> {
        load(&hex(lines), InputFormat::IntelHex)
    }

    #[test]
    fn hex_single_record() {
        let segs = load_hex(&[rec(0x0100, 0, &[1, 2, 3]), EOF.into()]).unwrap();
        assert_eq!(
            segs,
            vec![Segment {
                address: 0x100,
                data: vec![1, 2, 3]
            }]
        );
    }

    #[test]
    fn hex_extended_linear_address() {
        let segs = load_hex(&[
            rec(0, 4, &[0x08, 0x00]),
            rec(0x0000, 0, &[0xAA, 0xBB]),
            rec(0, 5, &[0x08, 0x00, 0x01, 0x01]),
            EOF.into(),
        ])
        .unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].address, 0x0800_0000);
        assert_eq!(segs[0].data, vec![0xAA, 0xBB]);
    }

    #[test]
    fn hex_extended_segment_address_and_start_segment() {
        let segs = load_hex(&[
            rec(0, 2, &[0x12, 0x34]),
            rec(0, 3, &[0x12, 0x34, 0x00, 0x00]),
            rec(0x0010, 0, &[7]),
            EOF.into(),
        ])
        .unwrap();
        assert_eq!(segs[0].address, 0x12340 + 0x10);
    }

    #[test]
    fn hex_adjacent_records_join_and_gaps_split() {
        let segs = load_hex(&[
            rec(0x0000, 0, &[1, 2]),
            rec(0x0002, 0, &[3, 4]),
            rec(0x0010, 0, &[5]),
            EOF.into(),
        ])
        .unwrap();
        assert_eq!(
            segs,
            vec![
                Segment {
                    address: 0,
                    data: vec![1, 2, 3, 4]
                },
                Segment {
                    address: 0x10,
                    data: vec![5]
                },
            ]
        );
    }

    #[test]
    fn hex_out_of_order_records_are_sorted_and_joined() {
        let segs = load_hex(&[
            rec(0x0020, 0, &[9]),
            rec(0x0002, 0, &[3, 4]),
            rec(0x0000, 0, &[1, 2]),
            EOF.into(),
        ])
        .unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].data, vec![1, 2, 3, 4]);
        assert_eq!(segs[1].address, 0x20);
    }

    #[test]
    fn hex_identical_overlap_is_accepted() {
        let segs = load_hex(&[
            rec(0x0000, 0, &[1, 2, 3, 4]),
            rec(0x0002, 0, &[3, 4, 5]),
            EOF.into(),
        ])
        .unwrap();
        assert_eq!(
            segs,
            vec![Segment {
                address: 0,
                data: vec![1, 2, 3, 4, 5]
            }]
        );
    }

    #[test]
    fn hex_conflicting_overlap_names_address() {
        let err = load_hex(&[
            rec(0, 4, &[0x08, 0x00]),
            rec(0x0000, 0, &[1, 2, 3, 4]),
            rec(0x0002, 0, &[3, 9]),
            EOF.into(),
        ])
        .unwrap_err();
        match err {
            FirmwareError::Overlap {
                address,
                first,
                second,
            } => {
                assert_eq!(address, 0x0800_0003);
                assert_eq!((first, second), (4, 9));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(
            err_text(load_hex(&[rec(0, 0, &[1]), rec(0, 0, &[2]), EOF.into()]))
                .contains("0x00000000")
        );
    }

    #[test]
    fn hex_overlap_contained_inside_earlier_piece() {
        let segs = load_hex(&[
            rec(0x0000, 0, &[1, 2, 3, 4, 5, 6]),
            rec(0x0001, 0, &[2, 3]),
            EOF.into(),
        ])
        .unwrap();
        assert_eq!(segs[0].data, vec![1, 2, 3, 4, 5, 6]);
    }

    fn err_text(r: Result<Vec<Segment>, FirmwareError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn hex_bad_checksum_names_line() {
        let mut bad = rec(0x0010, 0, &[1, 2, 3]);
        bad.replace_range(bad.len() - 2.., "00");
        let lines = [rec(0x0000, 0, &[0]), String::new(), bad, EOF.into()];
        let err = load_hex(&lines).unwrap_err();
        assert!(
            matches!(
                err,
                FirmwareError::HexChecksum {
                    line: 3,
                    stored: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn hex_malformed_record_names_line() {
        let err = load_hex(&[rec(0, 0, &[1]), "garbage".into(), EOF.into()]).unwrap_err();
        assert!(
            matches!(err, FirmwareError::HexRecord { line: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("line 2"));
        let err = load_hex(&[":0000000600FA".into(), EOF.into()]).unwrap_err();
        assert!(
            matches!(err, FirmwareError::HexRecord { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn hex_non_ascii_names_line() {
        let mut bytes = hex(&[rec(0, 0, &[1])]);
        bytes.extend_from_slice(b":\xff\xfe\n");
        bytes.extend_from_slice(EOF.as_bytes());
        let err = load(&bytes, InputFormat::IntelHex).unwrap_err();
        assert!(
            matches!(err, FirmwareError::HexNotText { line: 2 }),
            "{err:?}"
        );
    }

    #[test]
    fn hex_missing_eof() {
        let err = load_hex(&[rec(0, 0, &[1])]).unwrap_err();
        assert!(matches!(err, FirmwareError::HexMissingEof), "{err:?}");
        assert!(err.to_string().contains("end-of-file"));
    }

    #[test]
    fn hex_data_after_eof_names_line() {
        let err =
            load_hex(&[rec(0, 0, &[1]), EOF.into(), String::new(), rec(1, 0, &[2])]).unwrap_err();
        assert!(
            matches!(err, FirmwareError::HexDataAfterEof { line: 4 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("line 4"));
    }

    #[test]
    fn hex_crlf_and_blank_lines_are_accepted() {
        let text = format!("\r\n{}\r\n\r\n{}\r\n", rec(0x10, 0, &[1, 2]), EOF);
        let segs = load(text.as_bytes(), InputFormat::IntelHex).unwrap();
        assert_eq!(segs[0].address, 0x10);
        let bad = format!("\r\n{}\r\n:zz\r\n", rec(0x10, 0, &[1, 2]));
        let err = load(bad.as_bytes(), InputFormat::IntelHex).unwrap_err();
        assert!(
            matches!(err, FirmwareError::HexRecord { line: 3, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn hex_empty_inputs() {
        for input in [
            &b""[..],
            b"\n \r\n",
            b":00000001FF\n",
            b":0000000000\n:00000001FF",
        ] {
            let err = load(input, InputFormat::IntelHex).unwrap_err();
            assert!(matches!(err, FirmwareError::Empty), "{input:?}: {err:?}");
            assert!(err.to_string().contains("contains no data"));
        }
    }

    #[test]
    fn hex_data_past_4_gib_is_rejected() {
        let err = load_hex(&[
            rec(0, 4, &[0xFF, 0xFF]),
            rec(0xFFF0, 0, &[0; 32]),
            EOF.into(),
        ])
        .unwrap_err();
        assert!(
            matches!(
                err,
                FirmwareError::AddressOutOfRange {
                    address: 0xFFFF_FFF0,
                    len: 32
                }
            ),
            "{err:?}"
        );
        // Ending exactly at 4 GiB is fine.
        let segs = load_hex(&[
            rec(0, 4, &[0xFF, 0xFF]),
            rec(0xFFF0, 0, &[0; 16]),
            EOF.into(),
        ])
        .unwrap();
        assert_eq!(segs[0].end(), 1 << 32);
    }

    #[test]
    fn raw_at_base() {
        let segs = load(&[1, 2, 3], InputFormat::Raw { base: 0x0800_0000 }).unwrap();
        assert_eq!(
            segs,
            vec![Segment {
                address: 0x0800_0000,
                data: vec![1, 2, 3]
            }]
        );
    }

    #[test]
    fn raw_errors() {
        assert!(matches!(
            load(&[], InputFormat::Raw { base: 0 }),
            Err(FirmwareError::Empty)
        ));
        assert!(matches!(
            load(&[0; 2], InputFormat::Raw { base: u32::MAX }),
            Err(FirmwareError::AddressOutOfRange { .. })
        ));
        let big = vec![0u8; MAX_IMAGE_SIZE as usize + 1];
        assert!(matches!(
            load(&big, InputFormat::Raw { base: 0 }),
            Err(FirmwareError::TooLarge { .. })
        ));
    }

    /// One program header for [`elf`].
    struct Ph {
        p_type: u32,
        paddr: u64,
        vaddr: u64,
        data: Vec<u8>,
        memsz: u64,
        /// Overrides the file size (to claim more than is present).
        filesz: Option<u64>,
    }

    fn load_ph(paddr: u64, data: &[u8]) -> Ph {
        Ph {
            p_type: 1,
            paddr,
            vaddr: paddr,
            data: data.to_vec(),
            memsz: data.len() as u64,
            filesz: None,
        }
    }

    /// Writes a minimal ELF executable: header, program headers, then data.
    fn elf(class64: bool, big_endian: bool, phs: &[Ph]) -> Vec<u8> {
        let (ehsize, phentsize) = if class64 { (64u64, 56u64) } else { (52, 32) };
        let mut out = Vec::new();
        let put = |out: &mut Vec<u8>, v: u64, n: usize| {
            let bytes = v.to_le_bytes();
            if big_endian {
                out.extend(bytes[..n].iter().rev());
            } else {
                out.extend_from_slice(&bytes[..n]);
            }
        };
        let word = if class64 { 8 } else { 4 };
        out.extend_from_slice(b"\x7fELF");
        out.extend_from_slice(&[
            if class64 { 2 } else { 1 },
            if big_endian { 2 } else { 1 },
            1,
        ]);
        out.resize(16, 0);
        put(&mut out, 2, 2); // e_type EXEC
        put(&mut out, 40, 2); // e_machine ARM
        put(&mut out, 1, 4); // e_version
        put(&mut out, 0, word); // e_entry
        put(&mut out, ehsize, word); // e_phoff
        put(&mut out, 0, word); // e_shoff
        put(&mut out, 0, 4); // e_flags
        put(&mut out, ehsize, 2);
        put(&mut out, phentsize, 2);
        put(&mut out, phs.len() as u64, 2);
        put(&mut out, 0, 2); // e_shentsize
        put(&mut out, 0, 2); // e_shnum
        put(&mut out, 0, 2); // e_shstrndx
        assert_eq!(out.len() as u64, ehsize);
        let mut offset = ehsize + phentsize * phs.len() as u64;
        for ph in phs {
            let filesz = ph.filesz.unwrap_or(ph.data.len() as u64);
            put(&mut out, u64::from(ph.p_type), 4);
            if class64 {
                put(&mut out, 5, 4); // p_flags
            }
            put(&mut out, offset, word);
            put(&mut out, ph.vaddr, word);
            put(&mut out, ph.paddr, word);
            put(&mut out, filesz, word);
            put(&mut out, ph.memsz, word);
            if !class64 {
                put(&mut out, 5, 4); // p_flags
            }
            put(&mut out, 4, word); // p_align
            offset += ph.data.len() as u64;
        }
        for ph in phs {
            out.extend_from_slice(&ph.data);
        }
        out
    }

    #[test]
    fn elf32_uses_physical_addresses_and_skips_bss() {
        let text = load_ph(0x0800_0000, &[1, 2, 3, 4]);
        // .data: runs from RAM, stored in flash right after .text.
        let mut data = load_ph(0x0800_0004, &[5, 6]);
        data.vaddr = 0x2000_0000;
        data.memsz = 16;
        // .bss: memory only.
        let mut bss = load_ph(0x2000_0100, &[]);
        bss.memsz = 0x100;
        // A note segment is not loadable.
        let mut note = load_ph(0x0900_0000, &[0xEE]);
        note.p_type = 4;
        let image = elf(false, false, &[text, data, bss, note]);
        let segs = load(&image, InputFormat::Elf).unwrap();
        assert_eq!(
            segs,
            vec![Segment {
                address: 0x0800_0000,
                data: vec![1, 2, 3, 4, 5, 6]
            }]
        );
    }

    #[test]
    fn elf64_big_endian_with_gap() {
        let image = elf(
            true,
            true,
            &[load_ph(0x1000, &[1, 2]), load_ph(0x0800, &[3])],
        );
        let segs = load(&image, InputFormat::Elf).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[0].address, segs[1].address), (0x0800, 0x1000));
    }

    #[test]
    fn elf64_address_above_4_gib_is_rejected() {
        let image = elf(true, false, &[load_ph(0x1_0000_0000, &[1])]);
        assert!(matches!(
            load(&image, InputFormat::Elf),
            Err(FirmwareError::AddressOutOfRange { .. })
        ));
    }

    #[test]
    fn elf_conflicting_segments() {
        let image = elf(
            false,
            false,
            &[load_ph(0x100, &[1, 2]), load_ph(0x101, &[3])],
        );
        assert!(matches!(
            load(&image, InputFormat::Elf),
            Err(FirmwareError::Overlap { address: 0x101, .. })
        ));
    }

    #[test]
    fn elf_hostile_sizes() {
        // Claims 1 GiB of file data: rejected by the cap before reading.
        let mut ph = load_ph(0, &[1]);
        ph.filesz = Some(0x4000_0000);
        let err = load(&elf(false, false, &[ph]), InputFormat::Elf).unwrap_err();
        assert!(matches!(err, FirmwareError::TooLarge { .. }), "{err:?}");
        // Claims a bit more than is in the file.
        let mut ph = load_ph(0, &[1]);
        ph.filesz = Some(2);
        let err = load(&elf(false, false, &[ph]), InputFormat::Elf).unwrap_err();
        assert!(matches!(err, FirmwareError::Elf { .. }), "{err:?}");
    }

    #[test]
    fn elf_malformed_inputs() {
        for input in [&b""[..], b"\x7fELF", b"\x7fELF\x03\x01\x01", b"hello world"] {
            let err = load(input, InputFormat::Elf).unwrap_err();
            assert!(matches!(err, FirmwareError::Elf { .. }), "{err:?}");
        }
        let image = elf(false, false, &[load_ph(0, &[1])]);
        for len in 0..image.len() {
            assert!(load(&image[..len], InputFormat::Elf).is_err());
        }
    }

    #[test]
    fn elf_without_loadable_data_is_empty() {
        let mut bss = load_ph(0x2000_0000, &[]);
        bss.memsz = 64;
        let err = load(&elf(false, false, &[bss]), InputFormat::Elf).unwrap_err();
        assert!(matches!(err, FirmwareError::Empty), "{err:?}");
    }

    #[test]
    fn source_args() {
        assert_eq!(
            parse_source_arg("fw.bin@0x08000000").unwrap(),
            (PathBuf::from("fw.bin"), Some(0x0800_0000))
        );
        assert_eq!(
            parse_source_arg("fw.bin@0x0800_0000").unwrap().1,
            Some(0x0800_0000)
        );
        assert_eq!(parse_source_arg("fw.bin@4096").unwrap().1, Some(4096));
        assert_eq!(
            parse_source_arg("fw.hex").unwrap(),
            (PathBuf::from("fw.hex"), None)
        );
        assert_eq!(
            parse_source_arg("builds@2026/fw.hex").unwrap(),
            (PathBuf::from("builds@2026/fw.hex"), None)
        );
        for bad in [
            "",
            "@0x10",
            "fw.bin@",
            "fw.bin@0x",
            "fw.bin@+5",
            "fw.bin@0x100000000",
            "fw.bin@ten",
        ] {
            let err = parse_source_arg(bad).unwrap_err();
            assert!(matches!(err, FirmwareError::InvalidSource { .. }), "{bad}");
        }
    }

    #[test]
    fn load_path_detects_formats() {
        let dir = tempfile::tempdir().unwrap();
        let hex_path = dir.path().join("fw.HEX");
        std::fs::write(&hex_path, hex(&[rec(0, 0, &[1]), EOF.into()])).unwrap();
        assert_eq!(load_path(&hex_path, None).unwrap()[0].data, vec![1]);
        assert!(matches!(
            load_path(&hex_path, Some(0)),
            Err(FirmwareError::UnexpectedBase { .. })
        ));

        // ELF magic wins over an unhelpful name.
        let elf_path = dir.path().join("firmware.img");
        std::fs::write(&elf_path, elf(false, false, &[load_ph(0x400, &[7])])).unwrap();
        assert_eq!(load_path(&elf_path, None).unwrap()[0].address, 0x400);

        let bin_path = dir.path().join("fw.bin");
        std::fs::write(&bin_path, [1, 2]).unwrap();
        assert_eq!(load_path(&bin_path, Some(0x10)).unwrap()[0].address, 0x10);
        let err = load_path(&bin_path, None).unwrap_err();
        assert!(matches!(err, FirmwareError::MissingBase { .. }), "{err:?}");
        assert!(err.to_string().contains("fw.bin@0x"), "{err}");

        let other = dir.path().join("fw.dat");
        std::fs::write(&other, [1]).unwrap();
        assert!(matches!(
            load_path(&other, None),
            Err(FirmwareError::UnknownFormat { .. })
        ));
        assert_eq!(load_path(&other, Some(0)).unwrap()[0].data, vec![1]);

        let err = load_path(&dir.path().join("missing.hex"), None).unwrap_err();
        assert!(matches!(err, FirmwareError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.hex"));
    }
}
