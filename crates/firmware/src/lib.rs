//! flashgate-firmware
