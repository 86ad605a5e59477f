//! The sim crate's error type (configuration only; driver errors are `TargetError`).

/// Why a simulation configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// An option key the simulator does not know.
    #[error("unknown sim option {key:?}: use seed, timing, pace, boards, fault-rate, fault, device-type, flash-base, flash-size, page-size, keystore-size, identity, bus-hz, agent-baud or keep")]
    UnknownKey {
        /// The key given.
        key: String,
    },

    /// An option value that cannot be read.
    #[error("sim option {key}={value:?} is not valid: write {expected}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },

    /// Values that do not fit together.
    #[error("invalid simulation configuration: {detail}")]
    Invalid {
        /// What is wrong.
        detail: String,
    },
}
