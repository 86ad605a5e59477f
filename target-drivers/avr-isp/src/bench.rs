//! The bus-limited floor of programming through an ArduinoISP.
//!
//! STK500v1 as the ArduinoISP sketch speaks it is strictly one command at a time, and the
//! sketch does everything in sequence: receive the command, run the SPI instructions, wait,
//! answer. Writing one flash page of `P` bytes therefore costs at least
//!
//! ```text
//! t_page = (P + 13) × 10 / baud                  host link: LOAD_ADDRESS (4 bytes) and
//!                                                PROG_PAGE (P + 5) in, 2 + 2 bytes out
//!        + (P + 1) × 32 / spi_hz                  SPI: P load instructions (2 per word) and
//!                                                one page write, 4 bytes of 8 bits each
//!        + commit_delay                           the sketch's delay after each page write
//!        + max(0, tWD_FLASH − commit_delay − (P + 9) × 10 / baud)
//!                                                any page-write time not already covered
//!                                                before the next page's first SPI load
//! ```
//!
//! and the floor for an image is the sum over its pages. Overlapping the next page's bytes
//! with the sketch's SPI work would overflow its 64-byte receive buffer, so no host can do
//! better without changing the firmware. One-time costs (sync, signature, chip erase,
//! entering programming mode) are not part of the floor; [`Floor::wire_only`] is the bare
//! serial time of the image bytes for comparison.
//!
//! For an ATmega328P with the realistic timing (19200 baud, 125 kHz SPI, 30 ms delay),
//! one 128-byte page costs 73.4 + 33.0 + 30 ms = 136.4 ms, so 32 KiB take at least 34.9 s.

use std::time::Duration;

use crate::part::Part;
use crate::sim::AvrTiming;

/// The floor for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    /// Pages written.
    pub pages: u32,
    /// Bytes on the host link per full page (both directions).
    pub wire_bytes_per_page: u32,
    /// SPI instructions per full page.
    pub spi_per_page: u32,
    /// Time of one full page.
    pub per_page: Duration,
    /// Time of the whole image.
    pub total: Duration,
    /// Serial time of the image bytes alone.
    pub wire_only: Duration,
}

/// Time of one page of `p` bytes.
fn page_time(part: &Part, timing: &AvrTiming, p: u32) -> Duration {
    let p = p as usize;
    let serial = timing.serial(p + 13);
    let spi = timing.spi(p + 1);
    let write = if timing.chip_write_times {
        part.flash_write
    } else {
        Duration::ZERO
    };
    let uncovered = write.saturating_sub(timing.commit_delay + timing.serial(p + 9));
    serial + spi + timing.commit_delay + uncovered
}

/// The bus-limited floor for programming `image_len` bytes from address 0 (formula in the
/// module documentation).
pub fn programming_floor(part: &Part, timing: &AvrTiming, image_len: u32) -> Floor {
    let page = part.flash_page;
    let full = image_len / page;
    let tail = image_len % page;
    let per_page = page_time(part, timing, page);
    let mut total = per_page * full;
    if tail > 0 {
        total += page_time(part, timing, tail + tail % 2);
    }
    Floor {
        pages: full + u32::from(tail > 0),
        wire_bytes_per_page: page + 13,
        spi_per_page: page + 1,
        per_page,
        total,
        wire_only: timing.serial(image_len as usize),
    }
}
