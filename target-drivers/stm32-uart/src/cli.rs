//! `flashgate sim stm32-uart`: a simulated chip served on a pseudo-terminal.

use std::path::PathBuf;

use flashgate_serial::pty::{announce, PtyOptions, PtyServer, ShutdownSignal};

use crate::part::Part;
use crate::sim::{ControlServer, SimError, SimHandle, SimOptions, Stm32Sim};

/// Why the simulator could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Bad part, options or state file.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// The pty could not be served.
    #[error("cannot serve the simulated chip on a pseudo-terminal: {0}")]
    Serve(#[from] flashgate_serial::SerialError),
}

/// How the simulator is served: the pty, and the fixture's control socket if asked for.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The pty.
    pub pty: PtyOptions,
    /// `control=PATH`: the socket on which a host sets DTR/RTS (README, "Control socket").
    pub control: Option<PathBuf>,
}

/// Splits the serving options (`link=PATH`, `realtime=on|off`, `control=PATH`) from the
/// simulator's.
fn split_options(options: &str) -> Result<(String, ServeOptions), SimError> {
    let mut pty = PtyOptions::default();
    let mut control = None;
    let mut rest = Vec::new();
    for item in options.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('=') {
            Some(("link", v)) => pty.link = Some(PathBuf::from(v)),
            Some(("control", v)) => control = Some(PathBuf::from(v)),
            Some(("realtime", v)) => {
                pty.realtime = match v {
                    "on" | "true" | "yes" | "1" => true,
                    "off" | "false" | "no" | "0" => false,
                    _ => {
                        return Err(SimError::BadValue {
                            key: "realtime",
                            value: v.to_owned(),
                            expected: "on or off",
                        })
                    }
                }
            }
            _ => rest.push(item),
        }
    }
    Ok((rest.join(","), ServeOptions { pty, control }))
}

/// The simulator and serving options `serve_cli` would use (checked without serving).
pub fn cli_options(
    part: &str,
    state: Option<PathBuf>,
    options: &str,
) -> Result<(SimOptions, ServeOptions), CliError> {
    let (sim_options, pty) = split_options(options)?;
    let mut o: SimOptions = sim_options.parse()?;
    o.part = Part::lookup(part).ok_or_else(|| SimError::BadValue {
        key: "part",
        value: part.to_owned(),
        expected: "f103 or f4 (or stm32f103-md, stm32f4-413, 0x410, 0x413)",
    })?;
    if o.identity
        .is_some_and(|at| o.part.location_address(at, 32).is_err())
    {
        return Err(SimError::BadValue {
            key: "identity",
            value: o.identity.map(|l| l.to_string()).unwrap_or_default(),
            expected: "a location on this part that holds 32 bytes",
        }
        .into());
    }
    if state.is_some() {
        o.state_file = state;
    }
    Ok((o, pty))
}

/// Serves a simulated `part` (`f103`, `f4`, ...) on a new pseudo-terminal until SIGTERM or
/// SIGINT, printing the pty's path as the first line of standard output.
///
/// `state` is loaded at start if the file exists, and saved as the chip changes, whenever the
/// host closes the port, and at exit. `options` is a simulator option string (see
/// [`SimOptions`]), e.g. `timing=instant,fault=nack@write#3`, plus two serving options:
/// `link=PATH` (a stable symbolic link to the pty) and `realtime=off` (answer without
/// sleeping the simulated time). Empty for defaults: realistic timing, served in real time.
/// With `control=PATH` the fixture's DTR/RTS are set on a Unix socket at PATH, printed as the
/// second line of standard output and removed at exit.
pub fn serve_cli(part: &str, state: Option<PathBuf>, options: &str) -> Result<(), CliError> {
    let (o, serve) = cli_options(part, state, options)?;
    let sim = SimHandle::new(Stm32Sim::new(o)?);
    let shutdown = ShutdownSignal::install()?;
    let control = match &serve.control {
        Some(path) => Some(ControlServer::spawn(path, sim.clone())?),
        None => None,
    };
    let server = PtyServer::spawn(sim.clone(), serve.pty)?;
    let mut paths = vec![server.path()];
    if let Some(c) = &control {
        paths.push(c.path());
    }
    announce(&paths)?;
    shutdown.wait();
    drop(control);
    server.stop()?;
    let result = sim.lock().save();
    Ok(result?)
}
