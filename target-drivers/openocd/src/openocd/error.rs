//! What can go wrong with OpenOCD itself, each with its own sentence.

/// An OpenOCD failure. The texts name what to do; OpenOCD's own words
/// follow where it gave any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenOcdError {
    /// The program is not there.
    #[error("OpenOCD ({program}) cannot be run: {detail}; install it (apt-get install openocd) or give openocd=PATH")]
    Missing { program: String, detail: String },
    /// The program is older than the driver knows.
    #[error("OpenOCD {found} is too old: flashgate needs {needed} or newer (its read_memory and TCL RPC); install a newer openocd")]
    TooOld { found: String, needed: &'static str },
    /// It started but did not open its TCL port, or exited.
    #[error("OpenOCD did not start: {detail}")]
    DidNotStart { detail: String },
    /// No debug probe answered.
    #[error(
        "no debug probe was found ({detail}): check the probe's USB cable and the interface config"
    )]
    ProbeNotFound { detail: String },
    /// The probe answered but the target did not.
    #[error("the target does not respond on the debug port ({detail}): check that the board is powered and seated, and the target config")]
    TargetNotResponding { detail: String },
    /// A flash command failed.
    #[error("the flash write failed at 0x{address:08x} ({detail}): erase the board and program it again, and scrap it if this repeats")]
    FlashWrite { address: u32, detail: String },
    /// Any other command failed.
    #[error("OpenOCD refused `{command}`: {detail}")]
    Command { command: String, detail: String },
    /// The TCL connection broke or timed out.
    #[error("the connection to OpenOCD broke during `{command}`: {detail}")]
    Connection { command: String, detail: String },
}
