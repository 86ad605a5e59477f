//! ARM Cortex-M parts through OpenOCD for flashgate.
//!
//! - [`openocd`]: one OpenOCD process per channel, owned by the driver,
//!   spoken to through its TCL RPC port on loopback, its failures told
//!   apart (missing, too old, no probe, target silent, flash write failed).
//! - [`OpenOcdTarget`]: the driver, a [`flashgate_target::Target`]:
//!   identify (DBGMCU_IDCODE, flash size, 96-bit UID), mass erase,
//!   programming through OpenOCD's flash driver, reads through the AHB-AP,
//!   secrets in the part's reserved flash page, the challenge through the
//!   agent on the target's UART, readout protection (STM32F1 RDP level 1)
//!   through `stm32f1x lock`, read back after a reset.
//! - [`part`]: what the debug port adds to the STM32 parts table.
//! - [`DRIVER`], the registration: `openocd:interface=CFG,target=CFG,agent=PORT`.

#![forbid(unsafe_code)]

mod driver;
pub mod openocd;
pub mod part;
mod registration;

pub use driver::{OpenOcdOptions, OpenOcdTarget, CAPABILITIES};
pub use registration::DRIVER;
