//! Empty: this crate exists only so that `cargo build -p kryoptic` produces the module.
