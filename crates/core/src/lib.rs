#![forbid(unsafe_code)]
//! flashgate: a secure provisioning appliance for electronics manufacturing.
//!
//! The library carries everything; the `flashgate` binary is a thin command
//! line over it, and a network service will be another front end.
//!
//! - [`hsm`]: the PKCS#11 token and the key-transport profiles it can run.
//! - [`enrollment`]: the appliance's signed enrollment record (from `flashgate-formats`).
//! - [`oem`]: OEM keys (files or PKCS#11 URIs) and certificates.
//! - [`package`]: job packages: format, parser, host-side sealing (from `flashgate-formats`).
//! - [`appliance`]: the CM side: config, enrollment, import, job state, audit log.
//! - [`bundle`]: the audit bundle: export on the appliance; the OEM's offline
//!   verification is `flashgate-formats`'s, re-exported here.
//! - [`station`]: the one API the front ends drive the CM side through.
//! - [`station_ca`]: the station's client-certificate authority and deny-list.
//! - [`drivers`]: the target drivers this build has.
//! - [`lab`]: a fresh appliance with a job, for the demo, benchmarks and tests.

pub mod appliance;
pub mod bundle;
pub mod clock;
pub use flashgate_cose as cose;
pub mod display;
pub mod drivers;
pub use flashgate_formats::enrollment;
pub mod hsm;
pub mod identity;
pub mod lab;
pub mod oem;
pub use flashgate_formats::package;
pub mod pipeline;
pub use flashgate_formats::profile;
pub mod station;
pub mod station_ca;
pub mod unit;
pub mod x509;
