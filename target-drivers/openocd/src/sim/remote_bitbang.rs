//! OpenOCD's `remote_bitbang` protocol, and serving it on a Unix socket.
//!
//! One ASCII byte per command (OpenOCD 0.12, `src/jtag/drivers/remote_bitbang.c`):
//!
//! | byte | meaning |
//! |------|---------|
//! | `0`–`7` | set TCK (4), TMS (2), TDI (1) |
//! | `R` | read TDO: answered `0` or `1` |
//! | `r` `s` `t` `u` | TRST (2) and SRST (1) asserted: `r` neither, `u` both |
//! | `B` `b` | LED on/off (ignored) |
//! | `Q` | quit: the host closes the connection |
//!
//! Later OpenOCD versions added `Z`/`z` (sleep 1 ms / 1 µs: the simulated clock advances)
//! and SWD commands (`O`, `o`, `c`, `d`–`g`); they are accepted so that a newer host does not
//! hang (`c` is answered `1`), but the chip only speaks JTAG.
//!
//! OpenOCD writes TCK low with TMS/TDI, samples TDO, then writes TCK high: the TAP acts at
//! the rising edge and presents the next TDO bit after the falling edge, as the silicon does.
//! Replies are answered in order and written out whenever the bytes read so far are
//! processed; OpenOCD sends long batches and reads the answers when it needs them.
//!
//! OpenOCD connects to a Unix socket when `remote_bitbang port 0` (or no port) is given and
//! `remote_bitbang host` names the socket's path.

use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flashgate_serial::pty::{PtyOptions, PtyServer};

use super::{AgentUart, JtagSim, SimError, SimHandle, SimOptions};

/// What a batch of protocol bytes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fed {
    /// Bytes taken from the batch (fewer than given after `Q` or a drop).
    pub consumed: usize,
    /// The host sent `Q`.
    pub quit: bool,
    /// The `drop-after-bytes` fault fired: the connection must close now.
    pub dropped: bool,
}

impl JtagSim {
    /// Takes remote_bitbang bytes from the host and appends the answers to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut fed = Fed::default();
        let before = out.len();
        for &b in input {
            if self
                .options
                .drop_after_bytes
                .is_some_and(|limit| self.bytes_in >= limit)
            {
                fed.dropped = true;
                break;
            }
            self.bytes_in += 1;
            fed.consumed += 1;
            match b {
                b'0'..=b'7' => {
                    let v = b - b'0';
                    self.set_pins(v & 4 != 0, v & 2 != 0, v & 1 != 0);
                }
                b'R' => out.push(if self.tdo() { b'1' } else { b'0' }),
                b'r'..=b'u' => {
                    let v = b - b'r';
                    self.set_resets(v & 2 != 0, v & 1 != 0);
                }
                b'Q' => {
                    fed.quit = true;
                    break;
                }
                b'Z' => self.sys.now += 1_000_000,
                b'z' => self.sys.now += 1_000,
                b'c' => out.push(b'1'),
                // Blink, and SWD direction and clocking: nothing to do.
                _ => {}
            }
        }
        self.bytes_out += (out.len() - before) as u64;
        fed
    }

    fn connected(&mut self) {
        self.connections += 1;
    }
}

/// A stop request shared between threads.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    flag: AtomicBool,
    lock: Mutex<()>,
    cond: Condvar,
}

impl Stop {
    /// A stop that has not been requested.
    pub fn new() -> Self {
        Stop::default()
    }

    /// Requests the stop; wakes everyone waiting.
    pub fn stop(&self) {
        self.0.flag.store(true, Ordering::SeqCst);
        let _guard = self.0.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.cond.notify_all();
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// Blocks until a stop is requested.
    pub fn wait(&self) {
        let mut guard = self.0.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !self.is_stopped() {
            guard = self
                .0
                .cond
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn wait_timeout(&self, d: Duration) {
        let guard = self.0.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.is_stopped() {
            let _ = self.0.cond.wait_timeout(guard, d);
        }
    }
}

/// The simulator served on a Unix socket by a background thread (one host at a time), and
/// the agent's UART on a pty if the options ask for it.
///
/// [`stop`](Server::stop) (or dropping the server) ends the connection, joins the thread,
/// saves the state file and removes the socket.
#[derive(Debug)]
pub struct Server {
    socket: PathBuf,
    sim: SimHandle,
    stop: Stop,
    thread: Option<JoinHandle<Result<(), SimError>>>,
    agent: Option<PtyServer<AgentUart>>,
}

fn serve_error(what: &str, path: &Path, e: &std::io::Error) -> SimError {
    SimError::Serve {
        detail: format!("{what} {} ({e})", path.display()),
    }
}

/// Binds `path`, replacing a stale socket nobody listens on.
fn bind(path: &Path) -> Result<UnixListener, SimError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let stale = meta.file_type().is_socket()
            && UnixStream::connect(path).is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused);
        if !stale {
            return Err(SimError::Serve {
                detail: format!("{} exists and is not a stale socket", path.display()),
            });
        }
        std::fs::remove_file(path).map_err(|e| serve_error("cannot remove", path, &e))?;
    }
    UnixListener::bind(path).map_err(|e| serve_error("cannot listen on", path, &e))
}

impl Server {
    /// Listens on the Unix socket `socket` and serves `sim` there; also serves the agent's
    /// UART on a new pty when the chip's options have `agent=on`.
    pub fn start(sim: SimHandle, socket: &Path) -> Result<Self, SimError> {
        let agent_options = sim.lock().options().agent.clone();
        let listener = bind(socket)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| serve_error("cannot configure", socket, &e))?;
        let agent = if agent_options.enabled {
            let pty = PtyOptions {
                realtime: agent_options.realtime,
                link: agent_options.link.clone(),
                ..PtyOptions::default()
            };
            match PtyServer::spawn(AgentUart::new(sim.clone()), pty) {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = std::fs::remove_file(socket);
                    return Err(SimError::Serve {
                        detail: format!("the agent's pty cannot be opened ({e})"),
                    });
                }
            }
        } else {
            None
        };
        let stop = Stop::new();
        let thread = {
            let (sim, stop) = (sim.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("jtag-sim {}", socket.display()))
                .spawn(move || run(&listener, &sim, &stop))
                .map_err(|e| SimError::Serve {
                    detail: format!("the serving thread cannot start ({e})"),
                })?
        };
        Ok(Server {
            socket: socket.to_owned(),
            sim,
            stop,
            thread: Some(thread),
            agent,
        })
    }

    /// The socket to give OpenOCD (`remote_bitbang host PATH`, `remote_bitbang port 0`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent's pty, when served.
    pub fn agent_pty(&self) -> Option<&Path> {
        self.agent.as_ref().map(PtyServer::path)
    }

    /// The chip.
    pub fn sim(&self) -> &SimHandle {
        &self.sim
    }

    /// Whether the serving thread still runs (it ends only when stopped or on an error).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops serving, saves the state file and removes the socket; returns the chip.
    pub fn stop(mut self) -> Result<SimHandle, SimError> {
        self.shutdown()?;
        Ok(self.sim.clone())
    }

    fn shutdown(&mut self) -> Result<(), SimError> {
        self.stop.stop();
        let mut result = Ok(());
        if let Some(t) = self.thread.take() {
            result = t.join().unwrap_or_else(|_| {
                Err(SimError::Serve {
                    detail: "the serving thread panicked".to_owned(),
                })
            });
        }
        if let Some(agent) = self.agent.take() {
            let _ = agent.stop();
        }
        if std::fs::symlink_metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&self.socket);
        }
        let saved = self.sim.lock().save();
        result.and(saved)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Serves a chip made from `options` on the Unix socket `socket` until `stop` is requested,
/// then saves its state, removes the socket and returns the chip.
pub fn serve(options: SimOptions, socket: &Path, stop: &Stop) -> Result<SimHandle, SimError> {
    let server = Server::start(SimHandle::from_options(options)?, socket)?;
    stop.wait();
    server.stop()
}

fn run(listener: &UnixListener, sim: &SimHandle, stop: &Stop) -> Result<(), SimError> {
    while !stop.is_stopped() {
        match listener.accept() {
            Ok((stream, _)) => session(stream, sim, stop),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                stop.wait_timeout(Duration::from_millis(5));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(SimError::Serve {
                    detail: format!("accepting a connection failed ({e})"),
                })
            }
        }
    }
    Ok(())
}

/// One host connection, until it quits, closes, the drop fault fires, or we are stopped.
fn session(mut stream: UnixStream, sim: &SimHandle, stop: &Stop) {
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .is_err()
    {
        return;
    }
    sim.lock().connected();
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::with_capacity(4096);
    while !stop.is_stopped() {
        let waited = Instant::now();
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                sim.lock().idle(waited.elapsed());
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let fed = {
            let mut chip = sim.lock();
            chip.idle(waited.elapsed());
            let fed = chip.feed(&buf[..n], &mut out);
            // A failed save is kept in the chip; the next change tries again.
            let _ = chip.persist(false);
            fed
        };
        if !out.is_empty() {
            if stream.write_all(&out).is_err() {
                break;
            }
            out.clear();
        }
        if fed.quit || fed.dropped {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = sim.lock().persist(true);
}
