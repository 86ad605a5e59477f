//! flashgate-policy
