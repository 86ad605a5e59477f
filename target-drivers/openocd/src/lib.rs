//! ARM Cortex-M through OpenOCD for flashgate, and a JTAG-level STM32F103 simulator that
//! stock OpenOCD programs.
//!
//! - [`openocd`]: one OpenOCD process per board, owned by the driver, spoken to through its
//!   TCL RPC port on loopback, its failures told apart (missing, too old, no probe, target
//!   silent, flash write failed).
//! - [`OpenOcdTarget`]: the driver, a [`flashgate_target::Target`]: identify (DBGMCU_IDCODE,
//!   flash size, 96-bit UID), mass erase, programming through OpenOCD's flash driver, reads
//!   through the AHB-AP, secrets in the part's reserved flash page, the challenge through the
//!   agent on the target's UART, readout protection (STM32F1 RDP level 1) through
//!   `stm32f1x lock`, read back after a reset.
//! - [`part`]: what the debug port adds to the STM32 parts table.
//! - [`DRIVER`], the registration: `openocd:interface=CFG,target=CFG,agent=PORT`.
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

mod driver;
pub mod openocd;
pub mod part;
mod registration;
pub mod sim;

pub use driver::{OpenOcdOptions, OpenOcdTarget, CAPABILITIES};
pub use registration::DRIVER;
