//! How long the simulated chip takes, and making real time pass accordingly.

use std::time::{Duration, Instant};

/// Timing model of the programming link and the chip.
///
/// A transfer of `n` bytes is split into `ceil(n / transfer_size)` transfers, each carrying
/// `per_transfer_overhead_bytes` extra bytes (command, address, status); the wire time is
/// `bytes × bits_per_byte / bus_hz`. Flash is programmed page by page: each page touched costs
/// its transfer plus `page_write_us`. The agent talks over a UART at `agent_baud`, 8N1
/// (10 bits per byte). A rate of 0 means "instant".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimTiming {
    /// Programming bus clock (SPI clock, SWD clock, UART baud rate), bits per second.
    pub bus_hz: u64,
    /// Bits on the wire per byte (8 for SPI, 10 for UART 8N1).
    pub bits_per_byte: u32,
    /// Extra bytes per transfer (command, address, status).
    pub per_transfer_overhead_bytes: u32,
    /// Largest payload of one transfer in bytes.
    pub transfer_size: u32,
    /// Flash page size in bytes (programming granularity).
    pub page_size: u32,
    /// Time to program one page.
    pub page_write_us: u32,
    /// Time to erase one page (used for key-store writes, which erase before writing).
    pub page_erase_us: u32,
    /// Time of a chip erase.
    pub chip_erase_us: u32,
    /// UART baud rate to the provisioning agent (8N1).
    pub agent_baud: u32,
    /// On-chip P-256 key generation.
    pub keygen_us: u32,
    /// On-chip P-256 signature.
    pub sign_us: u32,
    /// On-chip SHA-256 per measured byte, in nanoseconds.
    pub digest_ns_per_byte: u32,
    /// How long a driver waits before reporting a timeout.
    pub timeout_us: u32,
}

impl SimTiming {
    /// A secure MCU with 256-byte pages behind an 8 MHz SPI-like link: page write 1.4 ms,
    /// page erase 2 ms, chip erase 20 ms, agent at 115200 baud, keygen and signature 30 ms each
    /// (hardware accelerator), SHA-256 at 50 MB/s, timeouts after 100 ms.
    pub const fn realistic() -> Self {
        SimTiming {
            bus_hz: 8_000_000,
            bits_per_byte: 8,
            per_transfer_overhead_bytes: 4,
            transfer_size: 256,
            page_size: 256,
            page_write_us: 1_400,
            page_erase_us: 2_000,
            chip_erase_us: 20_000,
            agent_baud: 115_200,
            keygen_us: 30_000,
            sign_us: 30_000,
            digest_ns_per_byte: 20,
            timeout_us: 100_000,
        }
    }

    /// Everything instant (256-byte pages), for tests.
    pub const fn zero() -> Self {
        SimTiming {
            bus_hz: 0,
            bits_per_byte: 8,
            per_transfer_overhead_bytes: 0,
            transfer_size: 256,
            page_size: 256,
            page_write_us: 0,
            page_erase_us: 0,
            chip_erase_us: 0,
            agent_baud: 0,
            keygen_us: 0,
            sign_us: 0,
            digest_ns_per_byte: 0,
            timeout_us: 0,
        }
    }

    /// Wire time of moving `bytes` payload bytes over the programming link, in ns.
    pub fn transfer_ns(&self, bytes: u64) -> u64 {
        if self.bus_hz == 0 || bytes == 0 {
            return 0;
        }
        let per = u64::from(self.transfer_size.max(1));
        let transfers = bytes.div_ceil(per);
        let wire = bytes + transfers * u64::from(self.per_transfer_overhead_bytes);
        ns_for_bits(wire * u64::from(self.bits_per_byte), self.bus_hz)
    }

    /// Wire time of `bytes` over the agent UART (10 bits per byte), in ns.
    pub fn agent_ns(&self, bytes: u64) -> u64 {
        if self.agent_baud == 0 {
            return 0;
        }
        ns_for_bits(bytes * 10, u64::from(self.agent_baud))
    }

    /// Time to program `length` bytes starting `offset` bytes into flash, in ns: per page
    /// touched, its transfer plus one page write.
    pub fn program_ns(&self, offset: u32, length: u32) -> u64 {
        page_chunks(offset, length, self.page_size)
            .map(|(_, n)| self.transfer_ns(u64::from(n)) + us(self.page_write_us))
            .sum()
    }

    /// Time to read `length` bytes, in ns.
    pub fn read_ns(&self, length: u32) -> u64 {
        self.transfer_ns(u64::from(length))
    }
}

pub(crate) const fn us(v: u32) -> u64 {
    v as u64 * 1_000
}

fn ns_for_bits(bits: u64, hz: u64) -> u64 {
    // Round up: a partial bit time still passes.
    let ns = (u128::from(bits) * 1_000_000_000).div_ceil(u128::from(hz));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Splits `[offset, offset + length)` at page boundaries: `(chunk offset, chunk length)`.
pub(crate) fn page_chunks(
    offset: u32,
    length: u32,
    page_size: u32,
) -> impl Iterator<Item = (u32, u32)> {
    let page = u64::from(page_size.max(1));
    let end = u64::from(offset) + u64::from(length);
    let mut at = u64::from(offset);
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let page_end = (at / page + 1) * page;
        let n = page_end.min(end) - at;
        let chunk = (at as u32, n as u32);
        at += n;
        Some(chunk)
    })
}

/// Shortest sleep: below about a millisecond the sleep call's own overhead would dominate.
const MIN_SLEEP_NS: i64 = 1_000_000;

/// Accumulates simulated time and sleeps it off in slices of at least [`MIN_SLEEP_NS`],
/// crediting oversleep against later charges so the total stays within a fraction of a percent.
#[derive(Debug)]
pub(crate) struct SimClock {
    pace: bool,
    bus_ns: u64,
    owed_ns: i64,
}

impl SimClock {
    pub(crate) fn new(pace: bool) -> Self {
        SimClock {
            pace,
            bus_ns: 0,
            owed_ns: 0,
        }
    }

    pub(crate) fn charge(&mut self, ns: u64) {
        self.bus_ns = self.bus_ns.saturating_add(ns);
        if self.pace {
            self.owed_ns = self
                .owed_ns
                .saturating_add(i64::try_from(ns).unwrap_or(i64::MAX));
            if self.owed_ns >= MIN_SLEEP_NS {
                self.sleep_owed();
            }
        }
    }

    /// Sleeps whatever is still owed, however small.
    pub(crate) fn settle(&mut self) {
        if self.pace && self.owed_ns > 0 {
            self.sleep_owed();
        }
    }

    pub(crate) fn bus_time(&self) -> Duration {
        Duration::from_nanos(self.bus_ns)
    }

    fn sleep_owed(&mut self) {
        let start = Instant::now();
        std::thread::sleep(Duration::from_nanos(self.owed_ns.unsigned_abs()));
        let slept = i64::try_from(start.elapsed().as_nanos()).unwrap_or(i64::MAX);
        self.owed_ns -= slept;
    }
}
