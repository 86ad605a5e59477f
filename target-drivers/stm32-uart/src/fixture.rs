//! Getting a board back into its ROM bootloader through the fixture: the programmer's DTR and
//! RTS wired to NRST and BOOT0, driven by stm32flash-style `-i` sequences. On a real port the
//! lines are set through the `serialport` crate; a pseudo-terminal has no modem lines, so the
//! same changes go to the simulator over its control socket (protocol in the README).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use flashgate_serial::{ModemLine, SerialError, SerialPortTransport, Transport};

/// stm32flash's convention for a USB-UART with RTS on BOOT0 and DTR on NRST: BOOT0 high, reset
/// pulse, and BOOT0 low on exit.
pub const DEFAULT_LINES: &str = "-rts,dtr,-dtr:rts";

/// The delay a `,` (or `/`) adds between line changes, as in stm32flash.
pub const STEP_DELAY: Duration = Duration::from_millis(100);

/// How long a control-socket reply may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest request line of the control protocol, newline included.
pub const MAX_CONTROL_LINE: usize = 64;
/// Longest reply line (an `err` carries a sentence), newline included.
pub const MAX_CONTROL_REPLY: usize = 512;

/// One step of a line sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Assert (`true`: the TIOCM bit set, stm32flash's `rts`) or clear (`-rts`) a line.
    Set {
        /// Which line.
        line: ModemLine,
        /// Asserted or cleared.
        asserted: bool,
    },
    /// Wait [`STEP_DELAY`].
    Delay,
}

/// The entry (into the bootloader) and exit (to the application) sequences of a fixture, in
/// stm32flash's `-i` syntax: `ENTRY[:EXIT]`, each a list of `rts`, `dtr`, `-rts`, `-dtr`
/// separated by `,` (100 ms apart) or `&` (no delay). In a target spec, where `,` separates
/// options, write `/` for `,`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSequences {
    /// Run to reset the board into its bootloader.
    pub entry: Vec<Step>,
    /// Run when the driver lets the board go.
    pub exit: Vec<Step>,
}

/// Why a line sequence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinesError {
    /// A token is not a line.
    #[error("line sequence {sequence:?}: {token:?} is not a line: write rts, dtr, -rts or -dtr, separated by , (or / in a target spec) for 100 ms or & for none")]
    BadToken {
        /// The whole sequence.
        sequence: String,
        /// The token.
        token: String,
    },
    /// stm32flash's `brk` or a host GPIO number.
    #[error("line sequence {sequence:?}: {token:?} needs a host GPIO or a BREAK, which this driver does not drive: wire NRST and BOOT0 to DTR and RTS")]
    Unsupported {
        /// The whole sequence.
        sequence: String,
        /// The token.
        token: String,
    },
    /// More than one `:`.
    #[error("line sequence {sequence:?} has more than one ':': write ENTRY[:EXIT], e.g. -rts,dtr,-dtr:rts")]
    TooManyParts {
        /// The whole sequence.
        sequence: String,
    },
    /// The entry sequence changes no line, so it cannot reset the board.
    #[error("line sequence {sequence:?} changes no line before ':', so it cannot reset the board: give the entry sequence, e.g. -rts,dtr,-dtr")]
    EmptyEntry {
        /// The whole sequence.
        sequence: String,
    },
}

impl LineSequences {
    /// The lines each sequence touches, in order, without the delays.
    pub fn changes(steps: &[Step]) -> impl Iterator<Item = (ModemLine, bool)> + '_ {
        steps.iter().filter_map(|s| match s {
            Step::Set { line, asserted } => Some((*line, *asserted)),
            Step::Delay => None,
        })
    }
}

impl Default for LineSequences {
    fn default() -> Self {
        parse_sequences(DEFAULT_LINES).unwrap_or(LineSequences {
            entry: Vec::new(),
            exit: Vec::new(),
        })
    }
}

impl FromStr for LineSequences {
    type Err = LinesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_sequences(s)
    }
}

fn parse_sequences(s: &str) -> Result<LineSequences, LinesError> {
    let mut parts = s.split(':');
    let entry = parse_steps(s, parts.next().unwrap_or(""))?;
    let exit = parse_steps(s, parts.next().unwrap_or(""))?;
    if parts.next().is_some() {
        return Err(LinesError::TooManyParts {
            sequence: s.to_owned(),
        });
    }
    if LineSequences::changes(&entry).next().is_none() {
        return Err(LinesError::EmptyEntry {
            sequence: s.to_owned(),
        });
    }
    Ok(LineSequences { entry, exit })
}

fn parse_steps(whole: &str, part: &str) -> Result<Vec<Step>, LinesError> {
    let mut steps = Vec::new();
    let mut token = String::new();
    let flush = |token: &mut String, steps: &mut Vec<Step>| -> Result<(), LinesError> {
        let t = std::mem::take(token);
        let t = t.trim();
        if t.is_empty() {
            return Ok(());
        }
        let (asserted, name) = match t.strip_prefix('-') {
            Some(rest) => (false, rest),
            None => (true, t),
        };
        let line = match name.to_ascii_lowercase().as_str() {
            "rts" => ModemLine::Rts,
            "dtr" => ModemLine::Dtr,
            n if n == "brk" || (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) => {
                return Err(LinesError::Unsupported {
                    sequence: whole.to_owned(),
                    token: t.to_owned(),
                })
            }
            _ => {
                return Err(LinesError::BadToken {
                    sequence: whole.to_owned(),
                    token: t.to_owned(),
                })
            }
        };
        steps.push(Step::Set { line, asserted });
        Ok(())
    };
    for c in part.chars() {
        match c {
            ',' | '/' => {
                flush(&mut token, &mut steps)?;
                steps.push(Step::Delay);
            }
            '&' => flush(&mut token, &mut steps)?,
            c => token.push(c),
        }
    }
    flush(&mut token, &mut steps)?;
    Ok(steps)
}

// ---- the control socket protocol ----

/// A request on the simulator's control socket: one ASCII line, ending in `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// `dtr 1`, `dtr 0`, `rts 1`, `rts 0`: the line asserted (1) or cleared (0).
    Set {
        /// Which line.
        line: ModemLine,
        /// Asserted or cleared.
        asserted: bool,
    },
    /// `pins`: report the levels at the chip's NRST and BOOT0 pins.
    Pins,
}

/// A reply on the control socket: one ASCII line, ending in `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    /// `ok`: the change took effect before this reply was sent.
    Ok,
    /// `pins nrst=N boot0=N`, each 1 (high) or 0 (low).
    Pins {
        /// NRST is high (the chip runs).
        nrst: bool,
        /// BOOT0 is high (a reset starts the bootloader).
        boot0: bool,
    },
    /// `err TEXT`: the request was not understood; nothing changed.
    Err(String),
}

/// A control-protocol line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Not a request or reply of the protocol.
    #[error("control line {line:?} is not understood: send dtr 0|1, rts 0|1 or pins, each ending in a newline")]
    Bad {
        /// The line received.
        line: String,
    },
}

fn bit(s: &str) -> Option<bool> {
    match s {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

fn b(v: bool) -> u8 {
    u8::from(v)
}

impl ControlRequest {
    /// Parses one line (without its `\n`).
    pub fn parse(line: &str) -> Result<Self, ControlError> {
        let bad = || ControlError::Bad {
            line: line.to_owned(),
        };
        let mut words = line.split(' ');
        let r = match (words.next(), words.next()) {
            (Some("pins"), None) => ControlRequest::Pins,
            (Some(name @ ("dtr" | "rts")), Some(v)) => ControlRequest::Set {
                line: if name == "dtr" {
                    ModemLine::Dtr
                } else {
                    ModemLine::Rts
                },
                asserted: bit(v).ok_or_else(bad)?,
            },
            _ => return Err(bad()),
        };
        if words.next().is_some() {
            return Err(bad());
        }
        Ok(r)
    }

    /// The line, `\n` included.
    pub fn encode(&self) -> String {
        match self {
            ControlRequest::Set { line, asserted } => format!("{line} {}\n", b(*asserted)),
            ControlRequest::Pins => "pins\n".to_owned(),
        }
    }
}

impl ControlReply {
    /// Parses one line (without its `\n`).
    pub fn parse(line: &str) -> Result<Self, ControlError> {
        let bad = || ControlError::Bad {
            line: line.to_owned(),
        };
        if line == "ok" {
            return Ok(ControlReply::Ok);
        }
        if let Some(text) = line.strip_prefix("err ") {
            return Ok(ControlReply::Err(text.to_owned()));
        }
        let pins = line.strip_prefix("pins ").ok_or_else(bad)?;
        let mut w = pins.split(' ');
        match (w.next(), w.next(), w.next()) {
            (Some(n), Some(b0), None) => Ok(ControlReply::Pins {
                nrst: n.strip_prefix("nrst=").and_then(bit).ok_or_else(bad)?,
                boot0: b0.strip_prefix("boot0=").and_then(bit).ok_or_else(bad)?,
            }),
            _ => Err(bad()),
        }
    }

    /// The line, `\n` included.
    pub fn encode(&self) -> String {
        match self {
            ControlReply::Ok => "ok\n".to_owned(),
            ControlReply::Pins { nrst, boot0 } => {
                format!("pins nrst={} boot0={}\n", b(*nrst), b(*boot0))
            }
            // A newline in the text would end the reply early.
            ControlReply::Err(text) => format!("err {}\n", text.replace(['\n', '\r'], " ")),
        }
    }
}

/// Reads one `\n`-terminated line of at most `max` bytes; `None` at end of stream. Longer
/// lines are an error.
pub fn read_control_line(r: &mut impl BufRead, max: usize) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.take(max as u64).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("control line longer than {max} bytes or not ended by a newline"),
        ));
    }
    buf.pop();
    String::from_utf8(buf).map(Some).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "control line is not ASCII")
    })
}

/// The host end of a simulator's control socket.
#[derive(Debug)]
pub struct ControlClient {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, SerialError> {
        let open = |e: std::io::Error| {
            SerialError::Open {
            port: path.display().to_string(),
            detail: format!("the simulator's control socket does not answer ({e}); start flashgate sim stm32-uart with --options control=PATH and give the same PATH"),
        }
        };
        let writer = UnixStream::connect(path).map_err(open)?;
        writer
            .set_read_timeout(Some(CONTROL_TIMEOUT))
            .map_err(open)?;
        let reader = BufReader::new(writer.try_clone().map_err(open)?);
        Ok(ControlClient {
            path: path.to_owned(),
            writer,
            reader,
        })
    }

    /// Sends one request and reads its reply; an `err` reply is an error.
    pub fn request(&mut self, request: ControlRequest) -> Result<ControlReply, SerialError> {
        let io = |e: &dyn std::fmt::Display| {
            SerialError::Io(format!("control socket {}: {e}", self.path.display()))
        };
        self.writer
            .write_all(request.encode().as_bytes())
            .map_err(|e| io(&e))?;
        let line = match read_control_line(&mut self.reader, MAX_CONTROL_REPLY) {
            Ok(Some(l)) => l,
            Ok(None) => return Err(io(&"the simulator closed the socket")),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(SerialError::Timeout(CONTROL_TIMEOUT))
            }
            Err(e) => return Err(io(&e)),
        };
        match ControlReply::parse(&line).map_err(|e| io(&e))? {
            ControlReply::Err(text) => {
                Err(io(&format!("the simulator refused the request: {text}")))
            }
            other => Ok(other),
        }
    }

    /// Asserts or clears a line.
    pub fn set(&mut self, line: ModemLine, asserted: bool) -> Result<(), SerialError> {
        self.request(ControlRequest::Set { line, asserted })
            .map(|_| ())
    }
}

/// Where a [`FixtureLink`]'s line changes go.
#[derive(Debug)]
enum Lines {
    /// No fixture lines: `pulse_reset` does nothing.
    None,
    /// DTR/RTS of the port itself.
    Port(LineSequences),
    /// A simulator's control socket (a pty has no modem lines).
    Socket(LineSequences, ControlClient),
}

/// The bootloader port of a fixture, with its reset wiring: [`Transport::pulse_reset`] runs
/// the entry sequence, and dropping the link runs the exit sequence.
#[derive(Debug)]
pub struct FixtureLink {
    port: SerialPortTransport,
    lines: Lines,
}

impl FixtureLink {
    /// A port whose lines the fixture does not use.
    pub fn plain(port: SerialPortTransport) -> Self {
        FixtureLink {
            port,
            lines: Lines::None,
        }
    }

    /// A port whose own DTR/RTS drive NRST and BOOT0.
    pub fn with_port_lines(port: SerialPortTransport, lines: LineSequences) -> Self {
        FixtureLink {
            port,
            lines: Lines::Port(lines),
        }
    }

    /// A pty whose simulated chip takes its line changes on the control socket at `control`.
    pub fn with_control_socket(
        port: SerialPortTransport,
        lines: LineSequences,
        control: &Path,
    ) -> Result<Self, SerialError> {
        let client = ControlClient::connect(control)?;
        Ok(FixtureLink {
            port,
            lines: Lines::Socket(lines, client),
        })
    }

    /// The port.
    pub fn port(&mut self) -> &mut SerialPortTransport {
        &mut self.port
    }

    fn run(&mut self, exit: bool) -> Result<(), SerialError> {
        let (seq, mut client) = match &mut self.lines {
            Lines::None => return Ok(()),
            Lines::Port(seq) => (seq, None),
            Lines::Socket(seq, c) => (seq, Some(c)),
        };
        let steps = if exit { &seq.exit } else { &seq.entry };
        for step in steps.clone() {
            match step {
                Step::Delay => std::thread::sleep(STEP_DELAY),
                Step::Set { line, asserted } => match client.as_mut() {
                    Some(c) => c.set(line, asserted)?,
                    None => self.port.set_modem_line(line, asserted)?,
                },
            }
        }
        Ok(())
    }
}

impl Transport for FixtureLink {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SerialError> {
        self.port.write_all(bytes)
    }
    fn read_exact(&mut self, buf: &mut [u8], timeout: Duration) -> Result<(), SerialError> {
        self.port.read_exact(buf, timeout)
    }
    fn clear_input(&mut self) -> Result<(), SerialError> {
        self.port.clear_input()
    }
    fn pulse_reset(&mut self) -> Result<(), SerialError> {
        self.run(false)
    }
    fn wait(&mut self, duration: Duration) {
        self.port.wait(duration)
    }
    fn name(&self) -> String {
        self.port.name()
    }
}

impl Drop for FixtureLink {
    fn drop(&mut self) {
        // Leave the lines as the exit sequence says (stm32flash always runs it); the board is
        // done, so a failure here changes nothing for it.
        let _ = self.run(true);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn set(line: ModemLine, asserted: bool) -> Step {
        Step::Set { line, asserted }
    }

    #[test]
    fn the_default_is_stm32flash_rts_boot0_dtr_reset() {
        let s = LineSequences::default();
        assert_eq!(
            s.entry,
            [
                set(ModemLine::Rts, false),
                Step::Delay,
                set(ModemLine::Dtr, true),
                Step::Delay,
                set(ModemLine::Dtr, false)
            ]
        );
        assert_eq!(s.exit, [set(ModemLine::Rts, true)]);
    }

    #[test]
    fn delimiters_follow_stm32flash() {
        let s: LineSequences = "rts&-dtr,,dtr:-rts&DTR".parse().unwrap();
        assert_eq!(
            s.entry,
            [
                set(ModemLine::Rts, true),
                set(ModemLine::Dtr, false),
                Step::Delay,
                Step::Delay,
                set(ModemLine::Dtr, true)
            ]
        );
        assert_eq!(
            s.exit,
            [set(ModemLine::Rts, false), set(ModemLine::Dtr, true)]
        );
        // `/` stands for `,` inside a target spec.
        assert_eq!(
            "-rts/dtr/-dtr:rts".parse::<LineSequences>().unwrap(),
            LineSequences::default()
        );
        // No exit sequence is fine.
        assert!("dtr,-dtr".parse::<LineSequences>().unwrap().exit.is_empty());
    }

    #[test]
    fn bad_sequences_get_a_clear_error() {
        let cases: &[(&str, &str)] = &[
            ("-rts,dtx,-dtr", "\"dtx\" is not a line"),
            ("--rts,dtr", "\"--rts\" is not a line"),
            ("rts,brk", "needs a host GPIO or a BREAK"),
            ("4,-5,-3,3:-4,-3,3", "needs a host GPIO or a BREAK"),
            ("rts:dtr:rts", "more than one ':'"),
            (",,:rts", "changes no line before ':'"),
            ("", "changes no line before ':'"),
        ];
        for (s, want) in cases {
            let e = s.parse::<LineSequences>().unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
            assert!(
                e.contains(':')
                    && (e.contains("write") || e.contains("give") || e.contains("wire")),
                "{e}"
            );
        }
    }

    #[test]
    fn control_lines_byte_for_byte() {
        let r = ControlRequest::Set {
            line: ModemLine::Dtr,
            asserted: true,
        };
        assert_eq!(r.encode().as_bytes(), b"dtr 1\n");
        assert_eq!(
            ControlRequest::Set {
                line: ModemLine::Rts,
                asserted: false
            }
            .encode(),
            "rts 0\n"
        );
        assert_eq!(ControlRequest::Pins.encode(), "pins\n");
        for line in ["dtr 1", "dtr 0", "rts 1", "rts 0", "pins"] {
            let parsed = ControlRequest::parse(line).unwrap();
            assert_eq!(parsed.encode(), format!("{line}\n"));
        }
        for bad in [
            "", "dtr", "dtr 2", "DTR 1", "dtr  1", "dtr 1 ", "brk 1", "pins 1", "rts on",
        ] {
            let e = ControlRequest::parse(bad).unwrap_err().to_string();
            assert!(e.contains("send dtr 0|1, rts 0|1 or pins"), "{bad:?}: {e}");
        }
        for reply in [
            ControlReply::Ok,
            ControlReply::Pins {
                nrst: true,
                boot0: false,
            },
            ControlReply::Err("no such line".into()),
        ] {
            let text = reply.encode();
            assert!(text.ends_with('\n') && text.len() <= MAX_CONTROL_REPLY);
            assert_eq!(
                ControlReply::parse(text.trim_end_matches('\n')).unwrap(),
                reply
            );
        }
        assert_eq!(
            ControlReply::Pins {
                nrst: false,
                boot0: true
            }
            .encode(),
            "pins nrst=0 boot0=1\n"
        );
        assert!(ControlReply::parse("pins nrst=1").is_err());
        assert!(ControlReply::parse("okay").is_err());
    }

    #[test]
    fn control_lines_are_bounded() {
        let mut r = std::io::Cursor::new(b"dtr 1\nrts 0\n".to_vec());
        assert_eq!(
            read_control_line(&mut r, MAX_CONTROL_LINE)
                .unwrap()
                .as_deref(),
            Some("dtr 1")
        );
        assert_eq!(
            read_control_line(&mut r, MAX_CONTROL_LINE)
                .unwrap()
                .as_deref(),
            Some("rts 0")
        );
        assert_eq!(read_control_line(&mut r, MAX_CONTROL_LINE).unwrap(), None);
        let mut long = std::io::Cursor::new(vec![b'x'; 200]);
        assert!(read_control_line(&mut long, MAX_CONTROL_LINE).is_err());
        let mut cut = std::io::Cursor::new(b"dtr 1".to_vec());
        assert!(read_control_line(&mut cut, MAX_CONTROL_LINE).is_err());
    }
}
