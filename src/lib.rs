#![forbid(unsafe_code)]
//! flashgate: a secure provisioning appliance for electronics manufacturing.
//!
//! The library carries everything; the `flashgate` binary is a thin command
//! line over it, and a network service will be another front end.
//!
//! - [`hsm`]: the PKCS#11 token and the key-transport profiles it can run.
//! - [`enrollment`]: the appliance's signed enrollment record.
//! - [`oem`]: OEM keys (files or PKCS#11 URIs) and certificates.
//! - [`package`]: job packages: format, OEM-side builder, parser.
//! - [`appliance`]: the CM side: config, enrollment, import, job state, audit log.
//! - [`bundle`]: the audit bundle: export on the appliance, offline verification for the OEM.

pub mod appliance;
pub mod bundle;
pub mod cose;
pub mod demo;
pub mod display;
pub mod drivers;
pub mod enrollment;
pub mod hsm;
pub mod identity;
pub mod oem;
pub mod package;
pub mod pipeline;
pub mod run_view;
