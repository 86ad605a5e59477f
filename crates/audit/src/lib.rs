//! flashgate-audit
