//! STM32 over its ROM system bootloader (ST AN3155, USART) for flashgate.
//!
//! - [`Stm32UartTarget`]: the driver, a [`flashgate_target::Target`] over any
//!   [`flashgate_serial::Transport`] (a real port at 8E1, a pseudo-terminal, or an in-process
//!   link to the simulator).
//! - [`sim`]: a byte-exact simulator of the bootloader, with the provisioning agent answering
//!   on the same UART after Go, realistic timing, faults and saved state; it implements
//!   [`flashgate_serial::SerialDevice`] so it can be served in process or on a pty (where
//!   stm32flash can talk to it).
//! - [`part`]: the parts table (STM32F103 medium density, STM32F40x/41x).
//! - [`fixture`]: NRST/BOOT0 through DTR/RTS (stm32flash `-i` sequences), on a pty through
//!   the simulator's control socket.
//! - [`floor`]: the bus-limited floor of programming an image.
//! - [`serve_cli`]: what `flashgate sim stm32-uart` runs.
//!
//! ```
//! use flashgate_stm32_uart::sim::{SimOptions, Stm32Sim};
//! use flashgate_serial::SerialDevice;
//!
//! let mut chip = Stm32Sim::new(SimOptions::default().instant())?;
//! let (reply, _) = chip.feed(&[0x7F]);
//! assert_eq!(reply, [0x79]);
//! let (reply, _) = chip.feed(&[0x02, 0xFD]); // Get ID
//! assert_eq!(reply, [0x79, 0x01, 0x04, 0x10, 0x79]);
//! # Ok::<(), flashgate_stm32_uart::sim::SimError>(())
//! ```

#![forbid(unsafe_code)]

mod cli;
mod driver;
pub mod fixture;
pub mod floor;
pub mod part;
pub mod protocol;
mod registration;
pub mod sim;

pub use cli::{cli_options, serve_cli, CliError, ServeOptions};
pub use driver::{
    BootloaderEntry, BootloaderInfo, LinkHook, LinkState, Stm32Options, Stm32UartTarget,
    CAPABILITIES,
};
pub use part::{Part, RdpLevel, PARTS, STM32F103_MD, STM32F4_413};
pub use registration::DRIVER;
