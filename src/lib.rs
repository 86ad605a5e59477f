#![forbid(unsafe_code)]
//! flashgate
