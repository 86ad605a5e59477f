//! Serving a simulated board on pseudo-terminals, for `flashgate sim avr-isp`.

use std::path::PathBuf;

use flashgate_serial::pty::{announce, PtyOptions, PtyServer, ShutdownSignal};
use flashgate_serial::SerialError;

use crate::part::Part;
use crate::sim::{AvrSim, AvrSimConfig, AvrSimError, ChipState};

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The simulation could not be set up, or its state not loaded or saved.
    #[error(transparent)]
    Sim(#[from] AvrSimError),
    /// The pseudo-terminals could not be opened or served.
    #[error(transparent)]
    Serial(#[from] SerialError),
}

/// How [`serve_cli`] serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The simulation (its `part` is replaced by the part given to [`serve_cli`]).
    pub sim: AvrSimConfig,
    /// Sleep the simulated durations (default on): host tools see real write times.
    pub realtime: bool,
    /// Also link the programmer's pty at this path.
    pub link: Option<PathBuf>,
    /// Also link the agent's pty at this path.
    pub agent_link: Option<PathBuf>,
}

impl Default for ServeOptions {
    /// Realistic timing, real time, no links.
    fn default() -> Self {
        ServeOptions {
            sim: AvrSimConfig::default(),
            realtime: true,
            link: None,
            agent_link: None,
        }
    }
}

impl ServeOptions {
    /// Options with the simulation given as an option string, e.g. `timing=fast,seed=7`
    /// (keys on [`AvrSimConfig`]).
    pub fn from_options(sim: &str) -> Result<Self, AvrSimError> {
        Ok(ServeOptions {
            sim: sim.parse()?,
            ..ServeOptions::default()
        })
    }
}

/// Serves a simulated ArduinoISP with a `part` target (`m328p`, `atmega2560`, ...) on a new
/// pseudo-terminal, and the target's agent UART on a second one, until SIGTERM or SIGINT.
///
/// Standard output gets exactly two lines: the programmer's pty path first (give it to
/// `avrdude -c stk500v1 -b 19200 -P PATH` or to flashgate), then the agent's. With `state`,
/// the chip is loaded from that file if it exists (else made fresh from the options) and
/// written back to it on exit.
pub fn serve_cli(
    part: &str,
    state: Option<PathBuf>,
    options: ServeOptions,
) -> Result<(), ServeError> {
    let mut config = options.sim.clone();
    config.part = Part::find(part).ok_or_else(|| AvrSimError::UnknownPart {
        name: part.to_owned(),
    })?;
    let sim = match &state {
        Some(path) if path.exists() => AvrSim::from_state(&ChipState::load(path)?, &config)?,
        _ => AvrSim::new(&config)?,
    };
    // Catch the signals before anyone can learn the path and send one.
    let shutdown = ShutdownSignal::install()?;
    let pty = |link: &Option<PathBuf>| PtyOptions {
        realtime: options.realtime,
        link: link.clone(),
        ..PtyOptions::default()
    };
    let programmer = PtyServer::spawn(sim.programmer(), pty(&options.link))?;
    let agent = PtyServer::spawn(sim.agent(), pty(&options.agent_link))?;
    eprintln!(
        "simulated ArduinoISP with an {} on {} (agent UART on {}); SIGTERM or Ctrl-C stops it",
        config.part.name,
        programmer.path().display(),
        agent.path().display()
    );
    announce(&[programmer.path(), agent.path()])?;
    shutdown.wait();
    programmer.stop()?;
    agent.stop()?;
    if let Some(path) = &state {
        sim.save_state(path)?;
    }
    Ok(())
}
