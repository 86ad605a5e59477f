//! Serial links between the appliance and a programmer or a bootloader.
//!
//! Two sides meet here:
//! - drivers talk through a [`Transport`]: a real serial port or a pseudo-terminal
//!   ([`SerialPortTransport`]), or an in-process [`Loopback`] wired straight to a simulated
//!   chip for fast tests;
//! - simulated chips implement [`SerialDevice`], a byte-stream state machine with simulated
//!   time, and are served either in process ([`Loopback`]) or on a pseudo-terminal
//!   ([`pty::PtyServer`], [`pty::serve_forever`]) where real host tools such as avrdude or
//!   stm32flash can talk to them.
//!
//! # Time
//!
//! A [`SerialDevice`] reports how long each answer took (wire time at its baud rate, page
//! writes, the programmer firmware's own delays). The [`Loopback`] adds these up
//! ([`Loopback::elapsed`]) and, when paced, sleeps them off in slices of at least 1 ms; the
//! pty server always sleeps them off before writing the answer, so host tools see real
//! write times. Host-side pauses ([`Transport::wait`], e.g. after a chip erase) reach the
//! device through [`SerialDevice::idle`], so a simulator can tell whether the host waited
//! long enough before its next command.
//!
//! # Faults
//!
//! Protocol-aware faults (a NACK, a corrupted checksum, a brown-out mid page write) live in
//! the simulators, which know their protocol and work the same in process and on a pty. The
//! [`Loopback`] adds two protocol-blind link faults counted over the reply byte stream:
//! [`Loopback::drop_reply_byte`] and [`Loopback::corrupt_reply_byte`].

mod loopback;
mod pace;
mod port;
pub mod pty;

use std::time::Duration;

pub use loopback::Loopback;
pub use pace::Pacer;
pub use port::{is_pty_path, SerialPortTransport};

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

/// A modem control output of a serial port, which fixtures wire to a target's reset or boot
/// pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModemLine {
    /// Data Terminal Ready.
    Dtr,
    /// Request To Send.
    Rts,
}

impl ModemLine {
    /// `dtr` or `rts`.
    pub const fn name(self) -> &'static str {
        match self {
            ModemLine::Dtr => "dtr",
            ModemLine::Rts => "rts",
        }
    }
}

impl std::fmt::Display for ModemLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Line settings a bootloader or programmer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineConfig {
    /// Baud rate.
    pub baud: u32,
    /// Even parity (8E1, the STM32 bootloader on real ports) or none (8N1).
    pub even_parity: bool,
}

impl LineConfig {
    /// 8N1 at `baud`.
    pub const fn n81(baud: u32) -> Self {
        LineConfig {
            baud,
            even_parity: false,
        }
    }

    /// 8E1 at `baud`.
    pub const fn e81(baud: u32) -> Self {
        LineConfig {
            baud,
            even_parity: true,
        }
    }

    /// Bits on the wire per byte: start, 8 data, parity if any, stop.
    pub const fn bits_per_byte(&self) -> u32 {
        if self.even_parity {
            11
        } else {
            10
        }
    }

    /// Wire time of `bytes` bytes at this setting (zero for a baud rate of 0).
    pub fn wire_time(&self, bytes: usize) -> Duration {
        wire_time(bytes, self.baud, self.bits_per_byte())
    }
}

/// Wire time of `bytes` bytes at `baud` with `bits_per_byte` bits each, rounded up to the
/// nanosecond; zero for a baud rate of 0 ("instant").
pub fn wire_time(bytes: usize, baud: u32, bits_per_byte: u32) -> Duration {
    if baud == 0 || bytes == 0 {
        return Duration::ZERO;
    }
    let bits = bytes as u128 * u128::from(bits_per_byte);
    let ns = (bits * 1_000_000_000).div_ceil(u128::from(baud));
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
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
    /// Lets `duration` pass with the line idle (e.g. a chip erase the host must wait out).
    ///
    /// The default sleeps; an in-process [`Loopback`] adds the time to its simulated clock
    /// instead (sleeping only when paced) and tells the device through [`SerialDevice::idle`].
    fn wait(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }
    /// A short name of the link for messages, e.g. the port path.
    fn name(&self) -> String {
        "serial link".to_owned()
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SerialError> {
        (**self).write_all(bytes)
    }
    fn read_exact(&mut self, buf: &mut [u8], timeout: Duration) -> Result<(), SerialError> {
        (**self).read_exact(buf, timeout)
    }
    fn clear_input(&mut self) -> Result<(), SerialError> {
        (**self).clear_input()
    }
    fn pulse_reset(&mut self) -> Result<(), SerialError> {
        (**self).pulse_reset()
    }
    fn wait(&mut self, duration: Duration) {
        (**self).wait(duration)
    }
    fn name(&self) -> String {
        (**self).name()
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
    /// The line was idle for `duration` before the next bytes (the host waited).
    ///
    /// Simulators with a clock advance it, so that work in progress (a page write, a chip
    /// erase) can finish before the next command arrives. The default ignores it.
    fn idle(&mut self, duration: Duration) {
        let _ = duration;
    }
}

impl<D: SerialDevice + ?Sized> SerialDevice for Box<D> {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
        (**self).feed(input)
    }
    fn reset_link(&mut self) {
        (**self).reset_link()
    }
    fn idle(&mut self, duration: Duration) {
        (**self).idle(duration)
    }
}

#[cfg(test)]
mod tests;
