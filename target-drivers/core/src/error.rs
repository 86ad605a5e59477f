//! The one error type of target drivers.

use std::fmt;
use std::time::Duration;

use crate::{Capability, Location, LockLevel, Stage};

/// How many bytes of expected/found data a [`TargetError::VerifyMismatch`] keeps.
pub const MISMATCH_WINDOW: usize = 16;

/// Why a driver operation failed.
///
/// Every variant raised while a board is being worked on names the [`Stage`] and, where
/// there is one, the address. Messages are one sentence: what went wrong, then what to do.
/// Secret data never appears in an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// Electrical contact with the board was lost (no response, line stuck).
    #[error("contact lost during {stage}{}: check the fixture's pogo pins and reseat the board", At(*.address))]
    ContactLost {
        /// Stage that was running.
        stage: Stage,
        /// Address being worked on, if any.
        address: Option<u32>,
    },

    /// The device did not answer in time.
    #[error("the device did not answer during {stage}{} within {} ms: check the board's power and wiring, then retry it", At(*.address), .timeout.as_millis())]
    Timeout {
        /// Stage that was running.
        stage: Stage,
        /// Address being worked on, if any.
        address: Option<u32>,
        /// How long the driver waited.
        timeout: Duration,
    },

    /// Data read back differs from what was written.
    ///
    /// `address` is the first differing byte; `expected` and `found` hold up to
    /// [`MISMATCH_WINDOW`] bytes from there.
    #[error("{stage} found different data at 0x{address:08x} (expected {}, read {}): erase and program the board again, and scrap it if this repeats", Hex(.expected), Hex(.found))]
    VerifyMismatch {
        /// Stage that compared (normally verify).
        stage: Stage,
        /// First differing address.
        address: u32,
        /// Bytes that should be there.
        expected: Vec<u8>,
        /// Bytes read back.
        found: Vec<u8>,
    },

    /// Flash is not erased where it should be.
    #[error("flash is not blank at 0x{address:08x} (read 0x{found:02x}): erase the device again, and scrap it if this repeats")]
    NotBlank {
        /// First non-erased address.
        address: u32,
        /// Byte read there.
        found: u8,
    },

    /// The device refused a command.
    #[error("the device refused the {stage} command{}: check that the job's device type matches the board and that it is not protected", At(*.address))]
    Nack {
        /// Stage that was running.
        stage: Stage,
        /// Address being worked on, if any.
        address: Option<u32>,
    },

    /// The board is not the device the job is for.
    #[error("the job is for {expected} but the board reports {found}: load the right boards or the right job")]
    WrongDevice {
        /// Device type the job names.
        expected: String,
        /// Device type the board reported.
        found: String,
    },

    /// The device is locked, so the operation was refused.
    #[error("the device is locked ({level}) so {stage}{} was refused: set the board aside, a locked board is never provisioned again", At(*.address))]
    AlreadyLocked {
        /// Stage that was refused.
        stage: Stage,
        /// Lock level found.
        level: LockLevel,
        /// Address of the refused access, if any.
        address: Option<u32>,
    },

    /// Supply voltage dropped and the device reset.
    #[error("supply brown-out during {stage}{}: check the fixture's power supply; the board is partly written and must be erased before it is retried", At(*.address))]
    BrownOut {
        /// Stage that was running.
        stage: Stage,
        /// Address being written, if any.
        address: Option<u32>,
    },

    /// An address range outside the device's memory.
    #[error("{stage} of 0x{address:08x}+{length} lies outside the device's memory: check the image's load address against the device")]
    OutOfRange {
        /// Stage that was running.
        stage: Stage,
        /// Start of the range.
        address: u32,
        /// Length of the range.
        length: u32,
    },

    /// A secret written to the device did not read back as written (contents withheld).
    #[error("the secret written to {location} did not read back correctly: erase the board and provision it again")]
    SecretMismatch {
        /// Where it was written.
        location: Location,
    },

    /// The link to the device carried something the driver did not expect.
    #[error("protocol error during {stage}: {detail}")]
    Protocol {
        /// Stage that was running.
        stage: Stage,
        /// What was wrong, ending with what to do.
        detail: String,
    },

    /// The programming tool the driver runs (OpenOCD) failed; the text is its
    /// own sentence, saying what to do.
    #[error("{detail} (during {stage})")]
    Tool {
        /// Stage that was running.
        stage: Stage,
        /// The address the tool was working on, if any (its text names it
        /// where it matters).
        address: Option<u32>,
        /// What the tool said, ending with what to do.
        detail: String,
    },

    /// The on-device provisioning agent answered with an error or could not be understood.
    #[error("the provisioning agent failed during {stage}: {detail}")]
    Agent {
        /// Stage that was running (normally challenge).
        stage: Stage,
        /// Error code the agent sent, if it sent one.
        code: Option<u8>,
        /// What was wrong, ending with what to do.
        detail: String,
    },

    /// The driver cannot do this at all.
    #[error("this driver cannot {capability}, which {stage} needs: use a driver that can, or change the job")]
    Unsupported {
        /// Stage that needed it.
        stage: Stage,
        /// What is missing.
        capability: Capability,
    },

    /// The caller asked for something that makes no sense for this device.
    #[error("invalid request during {stage}: {detail}")]
    InvalidRequest {
        /// Stage that was running.
        stage: Stage,
        /// What was wrong, ending with what to do.
        detail: String,
    },

    /// A name in a job file or option string could not be read.
    #[error("{input:?} is not a valid {what}: write {expected}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// The text given.
        input: String,
        /// What is accepted.
        expected: &'static str,
    },
}

impl TargetError {
    /// The stage the error happened in; `None` for errors not tied to a board (parsing).
    pub fn stage(&self) -> Option<Stage> {
        match self {
            TargetError::ContactLost { stage, .. }
            | TargetError::Timeout { stage, .. }
            | TargetError::VerifyMismatch { stage, .. }
            | TargetError::Nack { stage, .. }
            | TargetError::AlreadyLocked { stage, .. }
            | TargetError::BrownOut { stage, .. }
            | TargetError::OutOfRange { stage, .. }
            | TargetError::Protocol { stage, .. }
            | TargetError::Tool { stage, .. }
            | TargetError::Agent { stage, .. }
            | TargetError::Unsupported { stage, .. }
            | TargetError::InvalidRequest { stage, .. } => Some(*stage),
            TargetError::NotBlank { .. } => Some(Stage::BlankCheck),
            TargetError::WrongDevice { .. } => Some(Stage::Identify),
            TargetError::SecretMismatch { .. } => Some(Stage::StoreSecret),
            TargetError::Parse { .. } => None,
        }
    }

    /// The same error attributed to `stage` (for helpers built from other operations,
    /// e.g. a blank check made of reads). Variants with a fixed stage are returned unchanged.
    #[must_use]
    pub fn with_stage(mut self, new: Stage) -> Self {
        match &mut self {
            TargetError::ContactLost { stage, .. }
            | TargetError::Timeout { stage, .. }
            | TargetError::VerifyMismatch { stage, .. }
            | TargetError::Nack { stage, .. }
            | TargetError::AlreadyLocked { stage, .. }
            | TargetError::BrownOut { stage, .. }
            | TargetError::OutOfRange { stage, .. }
            | TargetError::Protocol { stage, .. }
            | TargetError::Tool { stage, .. }
            | TargetError::Agent { stage, .. }
            | TargetError::Unsupported { stage, .. }
            | TargetError::InvalidRequest { stage, .. } => *stage = new,
            TargetError::NotBlank { .. }
            | TargetError::WrongDevice { .. }
            | TargetError::SecretMismatch { .. }
            | TargetError::Parse { .. } => {}
        }
        self
    }

    /// Whether the board itself is not one to program (another device type,
    /// or already locked), as against a fault on the way to it.
    pub fn refuses_the_board(&self) -> bool {
        match self {
            TargetError::WrongDevice { .. } | TargetError::AlreadyLocked { .. } => true,
            TargetError::ContactLost { .. }
            | TargetError::Timeout { .. }
            | TargetError::VerifyMismatch { .. }
            | TargetError::NotBlank { .. }
            | TargetError::Nack { .. }
            | TargetError::BrownOut { .. }
            | TargetError::OutOfRange { .. }
            | TargetError::SecretMismatch { .. }
            | TargetError::Protocol { .. }
            | TargetError::Tool { .. }
            | TargetError::Agent { .. }
            | TargetError::Unsupported { .. }
            | TargetError::InvalidRequest { .. }
            | TargetError::Parse { .. } => false,
        }
    }

    /// The address the error is about, if any.
    pub fn address(&self) -> Option<u32> {
        match self {
            TargetError::ContactLost { address, .. }
            | TargetError::Timeout { address, .. }
            | TargetError::Nack { address, .. }
            | TargetError::AlreadyLocked { address, .. }
            | TargetError::BrownOut { address, .. }
            | TargetError::Tool { address, .. } => *address,
            TargetError::VerifyMismatch { address, .. }
            | TargetError::NotBlank { address, .. }
            | TargetError::OutOfRange { address, .. } => Some(*address),
            TargetError::WrongDevice { .. }
            | TargetError::SecretMismatch { .. }
            | TargetError::Protocol { .. }
            | TargetError::Agent { .. }
            | TargetError::Unsupported { .. }
            | TargetError::InvalidRequest { .. }
            | TargetError::Parse { .. } => None,
        }
    }
}

/// ` at 0x0000abcd`, or nothing.
struct At(Option<u32>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, " at 0x{a:08x}"),
            None => Ok(()),
        }
    }
}

/// Lowercase hex, `-` when empty.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
