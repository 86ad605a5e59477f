//! flashgate-agent
