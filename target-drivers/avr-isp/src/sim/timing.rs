//! How long the simulated ArduinoISP, its target and the target's agent take.

use std::time::Duration;

use flashgate_serial::wire_time;

/// Timing model of the simulated programmer, chip and agent.
///
/// Every figure can be set on its own; a value of 0 means "instant". The realistic model is
/// an Arduino Uno running the ArduinoISP sketch unchanged:
///
/// - host link 19200 baud, 8N1 (10 bits per byte);
/// - hardware SPI to the target at 125 kHz (the sketch asks for 1 MHz / 6; the Uno's SPI
///   divider gives 16 MHz / 128), 8 bits per byte, 4 bytes per instruction;
/// - `start_pmode`: 20 ms + 0.1 ms + 50 ms of delays before Programming Enable;
/// - after each flash page commit the sketch blinks its LED with `delay(PTIME)`, 30 ms;
/// - EEPROM through `PROG_PAGE 'E'` is written byte by byte with `delay(45)` after each;
/// - the chip's own write times (tWD_FLASH 4.5 ms, tWD_ERASE 9 ms, ...) come from the part
///   table and drive its busy model (instructions arriving during a write are ignored);
/// - the agent's UART at 115200 baud; SHA-256 at about 500 cycles per byte and a P-256
///   signature in about 1.1 s on a 16 MHz AVR (micro-ecc class figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvrTiming {
    /// Host ↔ programmer baud rate (8N1).
    pub baud: u32,
    /// Programmer ↔ target SPI clock in Hz.
    pub spi_hz: u32,
    /// `start_pmode` delays.
    pub pmode_enter: Duration,
    /// Delay after each flash page commit (the sketch's `PTIME` with `PROG_FLICKER`).
    pub commit_delay: Duration,
    /// Delay after each EEPROM byte written through `PROG_PAGE 'E'`.
    pub eeprom_byte_delay: Duration,
    /// Whether the chip's write times apply (busy model); off, writes complete at once.
    pub chip_write_times: bool,
    /// Agent UART baud rate (8N1).
    pub agent_baud: u32,
    /// Agent: SHA-256 time per measured byte.
    pub agent_hash_per_byte: Duration,
    /// Agent: one P-256 signature.
    pub agent_sign: Duration,
}

impl AvrTiming {
    /// An Arduino Uno running ArduinoISP, an ATmega target, an agent on a 16 MHz AVR.
    pub const fn realistic() -> Self {
        AvrTiming {
            baud: 19_200,
            spi_hz: 125_000,
            pmode_enter: Duration::from_micros(70_100),
            commit_delay: Duration::from_millis(30),
            eeprom_byte_delay: Duration::from_millis(45),
            chip_write_times: true,
            agent_baud: 115_200,
            agent_hash_per_byte: Duration::from_nanos(31_250),
            agent_sign: Duration::from_millis(1_100),
        }
    }

    /// Everything instant (tests).
    pub const fn fast() -> Self {
        AvrTiming {
            baud: 0,
            spi_hz: 0,
            pmode_enter: Duration::ZERO,
            commit_delay: Duration::ZERO,
            eeprom_byte_delay: Duration::ZERO,
            chip_write_times: false,
            agent_baud: 0,
            agent_hash_per_byte: Duration::ZERO,
            agent_sign: Duration::ZERO,
        }
    }

    /// Wire time of `n` bytes on the host link.
    pub fn serial(&self, n: usize) -> Duration {
        wire_time(n, self.baud, 10)
    }

    /// Time of `n` SPI instructions (4 bytes each).
    pub fn spi(&self, n: usize) -> Duration {
        wire_time(n * 4, self.spi_hz, 8)
    }

    /// Wire time of `n` bytes on the agent UART.
    pub fn agent_serial(&self, n: usize) -> Duration {
        wire_time(n, self.agent_baud, 10)
    }
}

impl Default for AvrTiming {
    /// [`AvrTiming::realistic`].
    fn default() -> Self {
        AvrTiming::realistic()
    }
}
