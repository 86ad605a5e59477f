//! Serving a simulated device on a pseudo-terminal, so real host tools can talk to it.
//!
//! [`PtyServer::spawn`] opens a new pseudo-terminal in raw mode and serves a [`SerialDevice`]
//! on it from a thread: it reads what the host writes, calls [`SerialDevice::feed`], sleeps
//! the simulated duration the device reports (so host tools see real write times; switch it
//! off with [`PtyOptions::realtime`]) and writes the reply. The host may close and reopen the
//! slave side as often as it likes: the server keeps the master open, notices the hang-up
//! (and the next open) and calls [`SerialDevice::reset_link`] each time. While no host has
//! the port open it checks every few milliseconds ([`PtyOptions::hangup_poll`]) instead of
//! spinning on the hang-up condition; otherwise it blocks in `poll`, so an idle server costs
//! nothing.
//!
//! [`serve_forever`] is the command-line form: it prints the pty path as the first line of
//! standard output and serves until SIGTERM or SIGINT.

use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcflush, tcgetattr, tcsetattr, OptionalActions, QueueSelector};

use crate::{SerialDevice, SerialError};

/// How a [`PtyServer`] serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtyOptions {
    /// Sleep the duration the device reports before writing each reply (default on). Off,
    /// the device answers as fast as the machine allows; its simulated clock still counts.
    pub realtime: bool,
    /// Also make a symbolic link to the pty at this path (removed when the server stops),
    /// for a stable name such as `/tmp/ttyAVR`. An existing symlink there is replaced; any
    /// other existing file is an error.
    pub link: Option<PathBuf>,
    /// While no host has the port open: how long to sleep between checks (default 5 ms).
    pub hangup_poll: Duration,
}

impl Default for PtyOptions {
    fn default() -> Self {
        PtyOptions {
            realtime: true,
            link: None,
            hangup_poll: Duration::from_millis(5),
        }
    }
}

impl PtyOptions {
    /// Options without real-time sleeps (fast tests).
    pub fn fast() -> Self {
        PtyOptions {
            realtime: false,
            ..PtyOptions::default()
        }
    }
}

/// A device served on a new pseudo-terminal by a background thread.
///
/// Stop it with [`stop`](PtyServer::stop), which returns the device; dropping the server
/// stops it too. Either way the thread is joined and the pty closed, promptly even in the
/// middle of a long simulated wait.
#[derive(Debug)]
pub struct PtyServer<D: SerialDevice + 'static> {
    path: PathBuf,
    link: Option<PathBuf>,
    wake: Option<UnixStream>,
    thread: Option<JoinHandle<D>>,
}

impl<D: SerialDevice + 'static> PtyServer<D> {
    /// Opens a pty and starts serving `device` on it.
    pub fn spawn(device: D, options: PtyOptions) -> Result<Self, SerialError> {
        let (master, path) = open_master()?;
        let link = match &options.link {
            Some(link) => {
                make_link(&path, link)?;
                Some(link.clone())
            }
            None => None,
        };
        let (wake_tx, wake_rx) =
            UnixStream::pair().map_err(|e| SerialError::Io(format!("wake pipe: {e}")))?;
        let name = format!("pty-server {}", path.display());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || serve(master, wake_rx, device, &options))
            .map_err(|e| SerialError::Io(format!("cannot start the pty server thread: {e}")))?;
        Ok(PtyServer {
            path,
            link,
            wake: Some(wake_tx),
            thread: Some(thread),
        })
    }

    /// The slave side's path, e.g. `/dev/pts/7`: give it to the host tool.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The symbolic link made for [`PtyOptions::link`], if any.
    pub fn link(&self) -> Option<&Path> {
        self.link.as_deref()
    }

    /// Whether the serving thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops serving, closes the pty and returns the device.
    ///
    /// Fails only if the serving thread panicked.
    pub fn stop(mut self) -> Result<D, SerialError> {
        self.shutdown()
            .ok_or_else(|| SerialError::Io("the pty server thread panicked".to_owned()))
    }

    fn shutdown(&mut self) -> Option<D> {
        if let Some(mut wake) = self.wake.take() {
            // Wakes the poll; dropping the stream afterwards closes it too, which also wakes it.
            let _ = wake.write_all(&[1]);
        }
        if let Some(link) = self.link.take() {
            let _ = std::fs::remove_file(link);
        }
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl<D: SerialDevice + 'static> Drop for PtyServer<D> {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Serves `device` on a new pty until SIGTERM or SIGINT, then returns it.
///
/// Prints the pty path as the first line of standard output (and flushes it), so a script
/// can read it with `read`. With [`PtyOptions::link`] set, the link is made before the path
/// is printed.
pub fn serve_forever<D: SerialDevice + 'static>(
    device: D,
    options: PtyOptions,
) -> Result<D, SerialError> {
    let shutdown = ShutdownSignal::install()?;
    let server = PtyServer::spawn(device, options)?;
    announce(&[server.path()])?;
    shutdown.wait();
    server.stop()
}

/// Prints each path on its own line of standard output and flushes.
pub fn announce(paths: &[&Path]) -> Result<(), SerialError> {
    let mut out = std::io::stdout().lock();
    for p in paths {
        writeln!(out, "{}", p.display()).map_err(|e| SerialError::Io(format!("stdout: {e}")))?;
    }
    out.flush()
        .map_err(|e| SerialError::Io(format!("stdout: {e}")))
}

/// SIGTERM and SIGINT, caught so that a server can shut down cleanly.
///
/// While this value lives, the two signals no longer end the process; [`wait`](Self::wait)
/// blocks (without polling) until one arrives.
#[derive(Debug)]
pub struct ShutdownSignal {
    signals: signal_hook::iterator::Signals,
}

impl ShutdownSignal {
    /// Starts catching SIGTERM and SIGINT.
    pub fn install() -> Result<Self, SerialError> {
        let signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])
        .map_err(|e| SerialError::Io(format!("cannot catch SIGTERM/SIGINT: {e}")))?;
        Ok(ShutdownSignal { signals })
    }

    /// Blocks until SIGTERM or SIGINT arrives; returns the signal number.
    pub fn wait(mut self) -> i32 {
        let signal = self.signals.forever().next().unwrap_or(0);
        self.signals.handle().close();
        signal
    }
}

/// A new pty master in raw mode, and the slave path.
fn open_master() -> Result<(OwnedFd, PathBuf), SerialError> {
    let err =
        |what: &str, e: Errno| SerialError::Io(format!("cannot {what} a pseudo-terminal: {e}"));
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(|e| err("open", e))?;
    grantpt(&master).map_err(|e| err("grant", e))?;
    unlockpt(&master).map_err(|e| err("unlock", e))?;
    let name = ptsname(&master, Vec::new()).map_err(|e| err("name", e))?;
    let path = PathBuf::from(name.to_string_lossy().into_owned());
    // Raw mode on the pair: no echo, no line editing, no CR/LF translation, 8 bits.
    // Termios calls on the master apply to the slave side on Linux.
    let mut t = tcgetattr(&master).map_err(|e| err("configure", e))?;
    t.make_raw();
    tcsetattr(&master, OptionalActions::Now, &t).map_err(|e| err("configure", e))?;
    Ok((master, path))
}

fn make_link(target: &Path, link: &Path) -> Result<(), SerialError> {
    if let Ok(meta) = std::fs::symlink_metadata(link) {
        if !meta.file_type().is_symlink() {
            return Err(SerialError::Io(format!(
                "{} exists and is not a symbolic link: choose another link path",
                link.display()
            )));
        }
        let _ = std::fs::remove_file(link);
    }
    std::os::unix::fs::symlink(target, link)
        .map_err(|e| SerialError::Io(format!("cannot link {}: {e}", link.display())))
}

/// Waits up to `d` for the wake stream; true if a stop was requested.
fn wait_or_wake(wake: &UnixStream, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(wake, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(Errno::INTR) => continue,
            Err(_) => return true,
        }
    }
}

/// Writes all of `bytes` to the master; false if the host is gone.
fn write_master(master: &OwnedFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match rustix::io::write(master, bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            Err(_) => return false,
        }
    }
    true
}

/// The serving loop; returns the device when asked to stop (or when the pty fails).
fn serve<D: SerialDevice>(
    master: OwnedFd,
    wake: UnixStream,
    mut device: D,
    options: &PtyOptions,
) -> D {
    // Whether a host has the slave open, as far as we can tell.
    let mut connected = false;
    let mut last_reply = Instant::now();
    let mut buf = vec![0u8; 4096];
    loop {
        let (master_ev, wake_ev) = {
            let mut fds = [
                PollFd::new(&master, PollFlags::IN),
                PollFd::new(&wake, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => (fds[0].revents(), fds[1].revents()),
                Err(Errno::INTR) => continue,
                Err(_) => break,
            }
        };
        if !wake_ev.is_empty() {
            break;
        }
        let mut hung_up = false;
        if master_ev.contains(PollFlags::IN) {
            match rustix::io::read(&master, &mut buf[..]) {
                Ok(0) => hung_up = true,
                Ok(n) => {
                    if !connected {
                        // A host opened the port: start from a clean protocol state.
                        connected = true;
                        device.reset_link();
                    }
                    device.idle(last_reply.elapsed());
                    let (reply, took) = device.feed(&buf[..n]);
                    if options.realtime && !took.is_zero() && wait_or_wake(&wake, took) {
                        break;
                    }
                    if !reply.is_empty() && !write_master(&master, &reply) {
                        hung_up = true;
                    }
                    last_reply = Instant::now();
                }
                Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
                // EIO: the last host closed the slave.
                Err(_) => hung_up = true,
            }
        } else if master_ev.intersects(PollFlags::HUP | PollFlags::ERR) {
            hung_up = true;
        }
        if hung_up {
            if connected {
                connected = false;
                device.reset_link();
                let _ = tcflush(&master, QueueSelector::IOFlush);
            }
            // The hang-up condition stays set until a host opens the port again, so poll
            // would return at once: sleep a little instead of spinning.
            if wait_or_wake(&wake, options.hangup_poll) {
                break;
            }
        }
    }
    device
}
