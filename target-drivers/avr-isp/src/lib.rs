//! AVR in-system programming through an ArduinoISP (STK500 version 1) for flashgate: the
//! driver, a byte-exact simulator of the programmer and its target, and the target's
//! provisioning agent.
//!
//! - [`AvrIspTarget`] implements `flashgate_target::Target` over any
//!   `flashgate_serial::Transport` for the programmer, plus one for the agent UART.
//! - [`sim`] simulates the ArduinoISP sketch, an AVR executing the serial programming
//!   instruction set (ATmega328P, ATmega2560; see [`part`]), and the firmware's agent.
//!   avrdude talks to it over a pseudo-terminal as to the real thing.
//! - [`serve_cli`] serves a simulated board on pseudo-terminals until SIGTERM, with an
//!   optional state file (`flashgate sim avr-isp --part m328p --state FILE`).
//! - [`bench`](mod@bench) computes the bus-limited floor of programming through the programmer.
//!
//! AVRs have no factory unique ID readable over ISP; see [`uid`] for what flashgate uses.
//!
//! ```
//! use flashgate_avr_isp::sim::{AvrSim, AvrSimConfig};
//! use flashgate_avr_isp::{AvrIspConfig, AvrIspTarget, ATMEGA328P};
//! use flashgate_serial::Loopback;
//! use flashgate_target::Target;
//!
//! let sim = AvrSim::new(&AvrSimConfig::fast(&ATMEGA328P))?;
//! let mut avr = AvrIspTarget::new(
//!     Box::new(Loopback::instant(sim.programmer())),
//!     Some(Box::new(Loopback::instant(sim.agent()))),
//!     AvrIspConfig::default(),
//! );
//! avr.connect()?;
//! let info = avr.identify()?;
//! assert_eq!(info.device_type, "atmega328p");
//! avr.erase()?;
//! avr.program(0, b"hello, avr")?;
//! avr.verify(0, b"hello, avr")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bench;
mod driver;
pub mod part;
mod registration;
mod serve;
pub mod sim;
pub mod stk;
pub mod uid;

pub use driver::{capabilities, AvrIspConfig, AvrIspTarget, Identity};
pub use part::{Part, ATMEGA2560, ATMEGA328P, PARTS};
pub use registration::DRIVER;
pub use serve::{serve_cli, ServeError, ServeOptions};
