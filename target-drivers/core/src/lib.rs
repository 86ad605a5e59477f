//! flashgate-target
