//! The bus-limited floor: the least time programming an image over the bootloader UART can
//! take, counting every byte on the wire and every flash wait, and nothing else (no host or
//! USB latency, no turnaround).

use std::time::Duration;

use crate::part::Part;
use crate::protocol::MAX_BLOCK;

/// How the floor erases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorErase {
    /// No erase.
    None,
    /// One mass erase (what [`Target::erase`](flashgate_target::Target::erase) does).
    Mass,
    /// Erase of the pages/sectors the image covers, in one command.
    Sectors,
}

/// Parameters of the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloorOptions {
    /// Baud rate.
    pub baud: u32,
    /// 8E1 (11 bits a byte) or 8N1 (10).
    pub parity: bool,
    /// Erase before programming.
    pub erase: FloorErase,
    /// Read every block back (Read Memory) after writing.
    pub verify: bool,
}

impl Default for FloorOptions {
    /// 115200 8E1, mass erase, no verify.
    fn default() -> Self {
        FloorOptions {
            baud: 115_200,
            parity: true,
            erase: FloorErase::Mass,
            verify: false,
        }
    }
}

/// The floor and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    /// Write Memory (and Read Memory) blocks.
    pub blocks: u64,
    /// Bytes on the wire, both directions.
    pub wire_bytes: u64,
    /// Wire time.
    pub wire: Duration,
    /// Flash programming time.
    pub program: Duration,
    /// Erase time.
    pub erase: Duration,
    /// Sum of the above.
    pub total: Duration,
}

/// Bytes on the wire for one Write Memory of `n` bytes: command and complement (2), address
/// and checksum (5), length (1), data (n), checksum (1) from the host; three ACKs back.
pub const fn write_block_wire_bytes(n: u64) -> u64 {
    2 + 5 + 1 + n + 1 + 3
}

/// Bytes on the wire for one Read Memory of `n` bytes: command (2), address (5), length and
/// complement (2) from the host; three ACKs and the data back.
pub const fn read_block_wire_bytes(n: u64) -> u64 {
    2 + 5 + 2 + 3 + n
}

/// The floor of programming `image_len` bytes at the start of flash of `part`.
pub fn bus_floor(part: &Part, image_len: u32, options: FloorOptions) -> Floor {
    let len = u64::from(image_len.div_ceil(4) * 4);
    let block = MAX_BLOCK as u64;
    let blocks = len.div_ceil(block);
    let mut wire_bytes = 0;
    let mut left = len;
    while left > 0 {
        let n = left.min(block);
        wire_bytes += write_block_wire_bytes(n);
        if options.verify {
            wire_bytes += read_block_wire_bytes(n);
        }
        left -= n;
    }
    let units = len.div_ceil(u64::from(part.timing.program_unit));
    let program = Duration::from_nanos(units * u64::from(part.timing.program_unit_ns));
    let mass_cmd = if part.erase_command == crate::protocol::CMD_ERASE {
        2 + 2 + 2
    } else {
        2 + 3 + 2
    };
    let (erase_wire, erase) = match options.erase {
        FloorErase::None => (0, Duration::ZERO),
        FloorErase::Mass => (
            mass_cmd,
            Duration::from_micros(u64::from(part.timing.mass_erase_us)),
        ),
        FloorErase::Sectors => {
            let layout = part.sector_layout();
            let end = u64::from(part.flash_base) + len;
            let touched: Vec<u32> = layout
                .iter()
                .filter(|(a, _)| u64::from(*a) < end)
                .map(|&(_, s)| s)
                .collect();
            let per = if part.erase_command == crate::protocol::CMD_ERASE {
                1
            } else {
                2
            };
            let wire = 2 + per + per * touched.len() as u64 + 1 + 2;
            let us: u64 = touched
                .iter()
                .map(|&s| u64::from(part.sector_erase_us(s)))
                .sum();
            (wire, Duration::from_micros(us))
        }
    };
    wire_bytes += erase_wire;
    let bits = wire_bytes * if options.parity { 11 } else { 10 };
    let wire = if options.baud == 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(
            u64::try_from((u128::from(bits) * 1_000_000_000).div_ceil(u128::from(options.baud)))
                .unwrap_or(u64::MAX),
        )
    };
    Floor {
        blocks,
        wire_bytes,
        wire,
        program,
        erase,
        total: wire + program + erase,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::part::STM32F103_MD;

    #[test]
    fn f103_128k() {
        let f = bus_floor(&STM32F103_MD, 128 * 1024, FloorOptions::default());
        assert_eq!(f.blocks, 512);
        assert_eq!(f.wire_bytes, 512 * 268 + 6);
        // 137222 bytes * 11 bits / 115200 baud = 13.103 s
        assert_eq!(f.wire.as_millis(), 13_102);
        // 65536 half-words * 50 us
        assert_eq!(f.program, Duration::from_micros(65_536 * 50));
        assert_eq!(f.erase, Duration::from_millis(40));
        let v = bus_floor(
            &STM32F103_MD,
            128 * 1024,
            FloorOptions {
                verify: true,
                ..FloorOptions::default()
            },
        );
        assert_eq!(v.wire_bytes, 512 * 536 + 6);
    }
}
