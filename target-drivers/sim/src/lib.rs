//! A simulated secure MCU for flashgate, in process and deterministic from a seed.
//!
//! It models what the appliance has to get right on real chips:
//!
//! - **Flash** erases to 0xFF and programming only clears bits (`new = old & data`), page by
//!   page, so re-programming a written page without erasing shows up at verify.
//! - A **key store** (4 KiB by default) that, like flash, is readable and writable over the
//!   programming interface only while the chip is unlocked. Chip erase clears flash and key store.
//! - **Lock levels**: readout (reads, programming and key access refused; a chip erase, which
//!   destroys the keys, unlocks) and permanent (nothing undoes it, erase refused). The raw
//!   lock byte follows STM32 RDP: `0xAA` none, `0x00` readout, `0xCC` permanent.
//! - A **provisioning agent** in the firmware, driven through real frames of
//!   `flashgate-agent`: it signs with whatever key it finds at its identity location
//!   (default `keystore:0x0000`) and measures the flash regions requested, so a wrong or
//!   missing key injection fails the challenge. The agent is modelled as always present (it does
//!   not depend on the image programmed) and can read its own flash even when locked.
//! - **Timing** ([`SimTiming`]) with real time passing, and the computed bus time exposed.
//! - **Faults** ([`Fault`]) per board or at random.
//!
//! Boards come from a [`SimFixture`] (`flashgate_target::Fixture`), configured in code
//! ([`SimConfig`]) or from an option string such as
//! `sim:seed=7,timing=realistic,fault-rate=0.02,boards=200` (keys listed on [`SimConfig`]).
//!
//! Random values come from [`SimRng`] (SplitMix64), which is **not cryptographic**: keys the
//! simulated chip generates are predictable from the seed. Simulation only.
//!
//! ```
//! use flashgate_target::{Fixture, Target};
//! use flashgate_target_sim::SimFixture;
//!
//! let mut fixture = SimFixture::from_options("sim:seed=7,boards=2")?;
//! let mut board = fixture.next_board()?.expect("first board");
//! board.connect()?;
//! let info = board.identify()?;
//! assert_eq!(info.device_type, "sim-secure-mcu");
//! board.erase()?;
//! board.program(info.flash.base, b"hello")?;
//! board.verify(info.flash.base, b"hello")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod chip;
mod config;
mod error;
mod fault;
mod fixture;
mod registration;
mod rng;
mod target;
mod timing;

pub use chip::SimChip;
pub use config::{
    SimConfig, DEVICE_SIGNATURE, DEVICE_TYPE, UID_LEN, WRONG_DEVICE_SIGNATURE, WRONG_DEVICE_TYPE,
};
pub use error::SimError;
pub use fault::{Fault, FaultPlan};
pub use fixture::{SimBoard, SimFixture};
pub use registration::DRIVER;
pub use rng::SimRng;
pub use target::SimTarget;
pub use timing::SimTiming;

#[cfg(test)]
mod tests;
