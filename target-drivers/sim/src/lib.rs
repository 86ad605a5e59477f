//! flashgate-target-sim
