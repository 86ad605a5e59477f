//! A real serial port (or a pseudo-terminal) as a [`Transport`].

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serialport::{ClearBuffer, DataBits, FlowControl, Parity, SerialPort, StopBits};

use crate::{LineConfig, ModemLine, SerialError, Transport};

/// How long DTR/RTS are held low by [`Transport::pulse_reset`], as avrdude does for
/// Arduino-style boards.
const RESET_LOW: Duration = Duration::from_millis(250);
/// How long to wait after releasing DTR/RTS before talking.
const RESET_SETTLE: Duration = Duration::from_millis(50);

/// Whether `path` names a pseudo-terminal (after following symlinks).
///
/// A pseudo-terminal carries bytes, not bits: it has no parity, and no DTR/RTS lines.
pub fn is_pty_path(path: &Path) -> bool {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    real.starts_with("/dev/pts") || real == Path::new("/dev/ptmx")
}

/// A serial port opened with the `serialport` crate: 8 data bits, 1 stop bit, even parity
/// or none as [`LineConfig`] says, no flow control.
///
/// A pseudo-terminal (for instance one served by [`crate::pty::PtyServer`]) cannot carry
/// parity, so on a pty the port is always opened 8N1 whatever the [`LineConfig`] asks;
/// [`parity_dropped`](SerialPortTransport::parity_dropped) tells whether that happened.
/// [`pulse_reset`](Transport::pulse_reset) toggles DTR and RTS on real ports and does nothing
/// on a pty.
pub struct SerialPortTransport {
    port: Box<dyn SerialPort>,
    path: String,
    line: LineConfig,
    pty: bool,
    parity_dropped: bool,
}

impl std::fmt::Debug for SerialPortTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialPortTransport")
            .field("path", &self.path)
            .field("line", &self.line)
            .field("pty", &self.pty)
            .finish()
    }
}

impl SerialPortTransport {
    /// Opens `path` with the line settings `line`.
    ///
    /// Fails with [`SerialError::Open`] if the port does not exist or is busy.
    pub fn open(path: impl AsRef<Path>, line: LineConfig) -> Result<Self, SerialError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let pty = is_pty_path(path);
        let parity = if line.even_parity && !pty {
            Parity::Even
        } else {
            Parity::None
        };
        let port = serialport::new(name.clone(), line.baud)
            .data_bits(DataBits::Eight)
            .parity(parity)
            .stop_bits(StopBits::One)
            .flow_control(FlowControl::None)
            .timeout(Duration::from_millis(100))
            .open()
            .map_err(|e| SerialError::Open {
                port: name.clone(),
                detail: e.to_string(),
            })?;
        Ok(SerialPortTransport {
            port,
            path: name,
            line,
            pty,
            parity_dropped: line.even_parity && pty,
        })
    }

    /// The port path as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The line settings asked for.
    pub fn line(&self) -> LineConfig {
        self.line
    }

    /// Whether the port is a pseudo-terminal.
    pub fn is_pty(&self) -> bool {
        self.pty
    }

    /// Whether even parity was asked for but not set because the port is a pty.
    pub fn parity_dropped(&self) -> bool {
        self.parity_dropped
    }

    /// Asserts (`true`, the TIOCM bit set) or clears a modem control line, as stm32flash's
    /// `-i rts`/`-i -rts` does. A pty has no modem lines: that is an error, not a no-op.
    pub fn set_modem_line(&mut self, line: ModemLine, asserted: bool) -> Result<(), SerialError> {
        if self.pty {
            return Err(SerialError::Io(format!(
                "{} is a pseudo-terminal, which has no {line} line: give the simulator's control socket instead",
                self.path
            )));
        }
        let r = match line {
            ModemLine::Dtr => self.port.write_data_terminal_ready(asserted),
            ModemLine::Rts => self.port.write_request_to_send(asserted),
        };
        r.map_err(|e| self.io(e))
    }

    fn io(&self, e: impl std::fmt::Display) -> SerialError {
        SerialError::Io(format!("{}: {e}", self.path))
    }
}

impl Transport for SerialPortTransport {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SerialError> {
        self.port.write_all(bytes).map_err(|e| self.io(e))?;
        self.port.flush().map_err(|e| self.io(e))
    }

    fn read_exact(&mut self, buf: &mut [u8], timeout: Duration) -> Result<(), SerialError> {
        let deadline = Instant::now() + timeout;
        let mut done = 0;
        while done < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SerialError::Timeout(timeout));
            }
            // serialport rejects a zero time-out on some platforms; 1 ms is the floor.
            self.port
                .set_timeout(left.max(Duration::from_millis(1)))
                .map_err(|e| self.io(e))?;
            match self.port.read(&mut buf[done..]) {
                Ok(0) => {}
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(())
    }

    fn clear_input(&mut self) -> Result<(), SerialError> {
        self.port.clear(ClearBuffer::Input).map_err(|e| self.io(e))
    }

    fn pulse_reset(&mut self) -> Result<(), SerialError> {
        if self.pty {
            return Ok(());
        }
        self.port
            .write_data_terminal_ready(false)
            .and_then(|()| self.port.write_request_to_send(false))
            .map_err(|e| self.io(e))?;
        std::thread::sleep(RESET_LOW);
        self.port
            .write_data_terminal_ready(true)
            .and_then(|()| self.port.write_request_to_send(true))
            .map_err(|e| self.io(e))?;
        std::thread::sleep(RESET_SETTLE);
        Ok(())
    }

    fn name(&self) -> String {
        self.path.clone()
    }
}
