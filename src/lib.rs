#![forbid(unsafe_code)]
//! flashgate: the command line's crate. Everything it runs on is
//! `flashgate-core` (the station API and all under it), re-exported here so
//! that `flashgate::station::Station` and the rest keep their paths.

pub use flashgate_core::*;
