//! flashgate-tlog
