//! ARM Cortex-M through OpenOCD for flashgate, and a JTAG-level STM32F103 simulator that
//! stock OpenOCD programs.
//!
//! - [`sim`]: an STM32F103xB seen from its JTAG port, served on a Unix socket with OpenOCD's
//!   `remote_bitbang` protocol: two TAPs, the ADIv5 JTAG-DP and AHB-AP, the memory map, the
//!   Cortex-M3 debug registers, the flash controller with readout protection, faults, a saved
//!   state, and the provisioning agent on a second pty.
//!
//! ```
//! use flashgate_openocd::sim::{JtagSim, SimOptions};
//!
//! let mut chip = JtagSim::new(SimOptions::zero())?;
//! let mut out = Vec::new();
//! // Five clocks with TMS high (Test-Logic-Reset), to Shift-DR, and read 32 bits of TDO:
//! // the IDCODE of the Cortex-M3 debug TAP, the one nearest TDO.
//! let mut bytes = b"2626262626".to_vec();
//! bytes.extend_from_slice(b"04260404");
//! for _ in 0..32 {
//!     bytes.extend_from_slice(b"0R4");
//! }
//! chip.feed(&bytes, &mut out);
//! let idcode = out.iter().rev().fold(0u32, |v, &b| (v << 1) | u32::from(b == b'1'));
//! assert_eq!(idcode, 0x3BA0_0477);
//! # Ok::<(), flashgate_openocd::sim::SimError>(())
//! ```

#![forbid(unsafe_code)]

pub mod sim;
