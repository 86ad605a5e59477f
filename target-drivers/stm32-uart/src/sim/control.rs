//! The simulator's control socket: the fixture's DTR/RTS for a chip served on a pty, which
//! carries no modem lines. Protocol: `crate::fixture` and the crate README.

use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::fixture::{read_control_line, ControlReply, ControlRequest, MAX_CONTROL_LINE};
use crate::sim::{SimError, SimHandle};

/// A Unix stream socket on which a host sets the fixture's lines of one simulated chip.
///
/// Each connection is served by its own thread; every request gets one reply line, sent
/// after the change took effect, so a host that waits for it knows the chip saw the change
/// before its next UART byte. Dropping the server stops accepting and removes the socket.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens at `path` (an existing socket there is replaced; any other file is an error).
    pub fn spawn(path: &Path, sim: SimHandle) -> Result<Self, SimError> {
        let state = |detail: String| SimError::State { detail };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(state(format!(
                    "{} exists and is not a socket: choose another control path",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| state(format!("cannot listen on {}: {e}", path.display())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("control {}", path.display()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let sim = sim.clone();
                    // A connection that cannot get a thread is simply dropped.
                    let _ = std::thread::Builder::new()
                        .name("control connection".to_owned())
                        .spawn(move || serve(conn, &sim));
                }
            })
            .map_err(|e| state(format!("cannot start the control thread: {e}")))?;
        Ok(ControlServer {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection: a request per line, a reply per request, until the host closes it.
fn serve(conn: UnixStream, sim: &SimHandle) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let reply = match read_control_line(&mut reader, MAX_CONTROL_LINE) {
            Ok(None) => return,
            Ok(Some(line)) => answer(&line, sim),
            Err(e) => {
                // An overlong or broken line: say so and hang up (the stream is out of step).
                let _ = writer.write_all(ControlReply::Err(e.to_string()).encode().as_bytes());
                return;
            }
        };
        if writer.write_all(reply.encode().as_bytes()).is_err() {
            return;
        }
    }
}

/// The reply to one request line, after carrying it out.
pub(crate) fn answer(line: &str, sim: &SimHandle) -> ControlReply {
    match ControlRequest::parse(line) {
        Ok(ControlRequest::Set { line, asserted }) => {
            sim.lock().set_modem_line(line, asserted);
            ControlReply::Ok
        }
        Ok(ControlRequest::Pins) => {
            let (nrst, boot0) = sim.lock().pins();
            ControlReply::Pins { nrst, boot0 }
        }
        Err(e) => ControlReply::Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::fixture::{ControlClient, LineSequences, Step};
    use crate::sim::{SimMode, SimOptions, Stm32Sim};
    use flashgate_agent::Message;
    use flashgate_serial::{ModemLine, SerialDevice};

    fn chip(options: &str) -> SimHandle {
        let o: SimOptions = format!("timing=instant,{options}").parse().unwrap();
        let sim = SimHandle::new(Stm32Sim::new(o).unwrap());
        // An application: any vector table that is not erased.
        sim.lock()
            .load_flash(
                0x0800_0000,
                &[0x00, 0x50, 0x00, 0x20, 0x01, 0x01, 0x00, 0x08],
            )
            .unwrap();
        sim
    }

    #[test]
    fn the_socket_drives_nrst_and_boot0_as_wired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let sim = chip("");
        let server = ControlServer::spawn(&path, sim.clone()).unwrap();
        let mut c = ControlClient::connect(&path).unwrap();
        assert_eq!(
            c.request(ControlRequest::Pins).unwrap(),
            ControlReply::Pins {
                nrst: true,
                boot0: true
            }
        );
        // The stm32flash default: BOOT0 high, NRST pulse; the bootloader answers the sync.
        let seq = LineSequences::default();
        for (line, asserted) in LineSequences::changes(&seq.entry) {
            c.set(line, asserted).unwrap();
            if line == ModemLine::Dtr && asserted {
                assert_eq!(sim.lock().mode(), SimMode::HeldInReset);
                assert!(
                    sim.lock().feed(&[0x7F]).0.is_empty(),
                    "in reset nothing answers"
                );
            }
        }
        assert_eq!(sim.lock().mode(), SimMode::AwaitingSync);
        assert_eq!(sim.lock().feed(&[0x7F]).0, [0x79]);
        // Exit (BOOT0 low), then a reset pulse: the application starts.
        for (line, asserted) in LineSequences::changes(&seq.exit) {
            c.set(line, asserted).unwrap();
        }
        c.set(ModemLine::Dtr, true).unwrap();
        c.set(ModemLine::Dtr, false).unwrap();
        assert_eq!(sim.lock().mode(), SimMode::Application);
        // Nonsense gets an err line and changes nothing.
        let mut raw = UnixStream::connect(&path).unwrap();
        raw.write_all(b"dtr on\n").unwrap();
        let mut r = BufReader::new(raw);
        let e = read_control_line(&mut r, crate::fixture::MAX_CONTROL_REPLY)
            .unwrap()
            .unwrap();
        assert!(e.starts_with("err ") && e.contains("send dtr 0|1"), "{e}");
        assert_eq!(
            c.request(ControlRequest::Pins).unwrap(),
            ControlReply::Pins {
                nrst: true,
                boot0: false
            }
        );
        drop(c);
        drop(server);
        assert!(!path.exists(), "the socket is removed");
    }

    #[test]
    fn other_wiring_is_honoured() {
        // RTS on NRST, DTR on BOOT0, non-inverting levels: asserted = high.
        let sim = chip("nrst=rts,boot0=dtr,line-levels=direct");
        let mut s = sim.lock();
        assert_eq!(s.pins(), (false, false), "both cleared: low");
        assert_eq!(s.mode(), SimMode::AwaitingSync, "power-up state kept");
        s.set_modem_line(ModemLine::Rts, true);
        assert_eq!(
            s.mode(),
            SimMode::Application,
            "NRST released with BOOT0 low"
        );
        s.set_modem_line(ModemLine::Dtr, true);
        s.set_modem_line(ModemLine::Rts, false);
        assert_eq!(s.mode(), SimMode::HeldInReset);
        s.set_modem_line(ModemLine::Rts, true);
        assert_eq!(s.mode(), SimMode::AwaitingSync);
        let _ = Step::Delay;
    }

    #[test]
    fn enter_bootloader_resets_after_the_reply() {
        let sim = chip("");
        let mut s = sim.lock();
        s.set_modem_line(ModemLine::Rts, true); // BOOT0 low: the application
        s.set_modem_line(ModemLine::Dtr, true);
        s.set_modem_line(ModemLine::Dtr, false);
        assert_eq!(s.mode(), SimMode::Application);
        let (reply, _) = s.feed(&Message::EnterBootloader.encode().unwrap());
        assert_eq!(reply, Message::EnterBootloaderReply.encode().unwrap());
        assert_eq!(
            s.mode(),
            SimMode::AwaitingSync,
            "system memory, whatever BOOT0"
        );
        assert_eq!(s.feed(&[0x7F]).0, [0x79]);
        drop(s);
        // A firmware without it refuses and keeps running.
        let sim = chip("agent-reboot=off");
        let mut s = sim.lock();
        s.set_modem_line(ModemLine::Rts, true);
        s.set_modem_line(ModemLine::Dtr, true);
        s.set_modem_line(ModemLine::Dtr, false);
        let (reply, _) = s.feed(&Message::EnterBootloader.encode().unwrap());
        assert_eq!(
            reply,
            Message::Error {
                code: flashgate_agent::ErrorCode::Refused
            }
            .encode()
            .unwrap()
        );
        assert_eq!(s.mode(), SimMode::Application);
    }
}
