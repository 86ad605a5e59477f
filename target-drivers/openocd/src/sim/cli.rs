//! What `flashgate sim stm32-jtag` runs: the simulator on a Unix socket until SIGTERM or
//! SIGINT.

use std::path::{Path, PathBuf};

use flashgate_serial::pty::{announce, ShutdownSignal};

use super::{JtagSim, Server, SimError, SimHandle, SimOptions};

/// The options `serve_cli` would use (checked without serving): `options` parsed (see
/// [`SimOptions`]), with `state` as the state file if given.
pub fn cli_options(state: Option<PathBuf>, options: &str) -> Result<SimOptions, SimError> {
    let mut o: SimOptions = options.parse()?;
    if state.is_some() {
        o.state_file = state;
    }
    Ok(o)
}

/// Serves a simulated STM32F103 on the Unix socket `socket` until SIGTERM or SIGINT.
///
/// Prints the socket's path as the first line of standard output, and the agent's pty as
/// the second with `agent=on`. `state` is loaded at start if the file exists and saved as the
/// chip changes and at exit. Returns the chip, stopped, for a summary.
///
/// OpenOCD then connects with `adapter driver remote_bitbang`, `remote_bitbang port 0`,
/// `remote_bitbang host SOCKET`, `set WORKAREASIZE 0` and `-f target/stm32f1x.cfg`.
pub fn serve_cli(
    socket: &Path,
    state: Option<PathBuf>,
    options: &str,
) -> Result<SimHandle, SimError> {
    let o = cli_options(state, options)?;
    let serve = |e: flashgate_serial::SerialError| SimError::Serve {
        detail: e.to_string(),
    };
    let shutdown = ShutdownSignal::install().map_err(serve)?;
    let server = Server::start(SimHandle::new(JtagSim::new(o)?), socket)?;
    let mut paths = vec![server.socket()];
    if let Some(pty) = server.agent_pty() {
        paths.push(pty);
    }
    announce(&paths).map_err(serve)?;
    shutdown.wait();
    server.stop()
}

/// An OpenOCD interface config that reaches a simulator served on `socket`:
/// remote_bitbang on that Unix socket, and no work area (the simulated core
/// runs no code, so OpenOCD writes flash half-word by half-word through the
/// debug port).
#[must_use]
pub fn openocd_interface_cfg(socket: &Path) -> String {
    format!(
        "adapter driver remote_bitbang\nremote_bitbang port 0\nremote_bitbang host {}\nset WORKAREASIZE 0\n",
        socket.display()
    )
}
