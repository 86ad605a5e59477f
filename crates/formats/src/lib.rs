#![forbid(unsafe_code)]
//! The formats both sides of flashgate share: what the OEM writes and the
//! appliance reads, and what the appliance writes and the OEM checks.
//!
//! - [`profile`]: the key-transport profiles a job package can be built for.
//! - [`token`]: what an enrollment record says about the appliance's token
//!   (its description and the measured extraction verdicts; measuring them
//!   needs the token and is `flashgate-core`'s).
//! - [`enrollment`]: the appliance's signed enrollment record.
//! - [`package`]: the job package: format, parser, host-side sealing.
//! - [`bundle`]: the offline check of an audit bundle against the OEM key.
//!
//! Nothing here needs a PKCS#11 token or an async runtime: an OEM's own
//! verifier needs this crate and `flashgate-audit`, not `flashgate-core`.

use flashgate_cose as cose;

pub mod bundle;
pub mod enrollment;
pub mod package;
pub mod profile;
pub mod token;
