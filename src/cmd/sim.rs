//! `flashgate sim ...`: simulated chips on pseudo-terminals.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum SimCmd {
    /// An ArduinoISP (STK500v1) programmer wired to an AVR; the agent UART on a second pty.
    AvrIsp {
        /// Part: m328p or m2560.
        #[arg(long, default_value = "m328p")]
        part: String,
        /// Load the chip from this file if it exists, and save it there on exit.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Simulator options, e.g. `timing=realistic,seed=3` (see target-drivers/avr-isp/README.md).
        #[arg(long, default_value = "")]
        options: String,
    },
    /// The STM32 system bootloader (AN3155); the agent answers on the same pty after Go.
    Stm32Uart {
        /// Part: f103 or f4.
        #[arg(long, default_value = "f103")]
        part: String,
        /// Load the chip from this file if it exists, and save it there on exit.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Simulator options (see target-drivers/stm32-uart/README.md).
        #[arg(long, default_value = "")]
        options: String,
    },
}

/// Serves the simulator until it is stopped.
pub fn run(cmd: SimCmd) -> Result<u8> {
    match cmd {
        SimCmd::AvrIsp {
            part,
            state,
            options,
        } => {
            let sim = format!("avr:{options}")
                .parse()
                .map_err(|e| anyhow::anyhow!("--options: {e}"))?;
            flashgate_avr_isp::serve_cli(
                &part,
                state,
                flashgate_avr_isp::ServeOptions {
                    sim,
                    ..Default::default()
                },
            )?;
            Ok(0)
        }
        SimCmd::Stm32Uart {
            part,
            state,
            options,
        } => {
            flashgate_stm32_uart::serve_cli(&part, state, &options)?;
            Ok(0)
        }
    }
}
