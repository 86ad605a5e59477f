//! Serial links between the appliance and a programmer or a bootloader.
//!
//! Two sides meet here:
//! - drivers talk through a [`Transport`]: a real serial port (or a
//!   pseudo-terminal), or an in-process [`Loopback`] wired straight to a
//!   simulated chip for fast tests;
//! - simulated chips implement [`SerialDevice`], a byte-stream state machine
//!   with simulated time, and are served either in process or on a pty.

use std::time::Duration;

/// Errors of a serial link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SerialError {
    /// No byte arrived in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The port could not be opened (programmer missing or busy).
    #[error("cannot open serial port {port}: {detail}; check that the programmer is plugged in and not used by another program")]
    Open { port: String, detail: String },
    /// The link failed mid-way.
    #[error("serial link failed: {0}")]
    Io(String),
}

/// Line settings a bootloader or programmer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineConfig {
    /// Baud rate.
    pub baud: u32,
    /// Even parity (8E1, the STM32 bootloader on real ports) or none (8N1).
    pub even_parity: bool,
}

/// A byte link to a programmer or bootloader (blocking, with timeouts).
pub trait Transport: Send {
    /// Writes all bytes.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SerialError>;
    /// Reads exactly `buf.len()` bytes or fails with `Timeout`.
    fn read_exact(&mut self, buf: &mut [u8], timeout: Duration) -> Result<(), SerialError>;
    /// Discards anything received and not yet read.
    fn clear_input(&mut self) -> Result<(), SerialError>;
    /// Pulses DTR/RTS the way an ArduinoISP-style board resets (no-op where meaningless).
    fn pulse_reset(&mut self) -> Result<(), SerialError> {
        Ok(())
    }
}

/// The chip side of a serial link, as a simulator implements it.
///
/// Time is simulated: `feed` returns the bytes the device answers and the
/// simulated time it took to answer (bus time, page-write waits), so that an
/// in-process link can account time without sleeping and a pty server can
/// sleep it off for real.
pub trait SerialDevice: Send {
    /// Consumes bytes from the host; returns the reply bytes and how long the
    /// device took before the reply is complete.
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration);
    /// The host closed the port (or reset the link): drop any half-received command.
    fn reset_link(&mut self) {}
}
