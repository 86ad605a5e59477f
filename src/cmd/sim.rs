//! `flashgate sim ...`: simulated chips on pseudo-terminals (and, for OpenOCD, a Unix socket).

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
    /// An STM32F103 seen from its JTAG port, for OpenOCD's remote_bitbang on a Unix socket;
    /// with `agent=on`, the agent on a pty once the core runs.
    Stm32Jtag {
        /// The Unix socket to serve (OpenOCD: `remote_bitbang port 0`, `remote_bitbang host PATH`).
        #[arg(long)]
        socket: PathBuf,
        /// Load the chip from this file if it exists, and save it there as it changes.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Simulator options, e.g. `timing=realistic,agent=on` (see target-drivers/openocd/README.md).
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
        SimCmd::Stm32Jtag {
            socket,
            state,
            options,
        } => {
            let sim = flashgate_openocd::sim::serve_cli(&socket, state, &options)?;
            let s = sim.lock().stats();
            eprintln!(
                "stm32-jtag: {} TCK cycles, {} half-words programmed, {} page and {} mass erases, simulated {:.3} s",
                s.tck_cycles,
                s.flash.halfwords,
                s.flash.page_erases,
                s.flash.mass_erases,
                s.sim_time.as_secs_f64()
            );
            Ok(0)
        }
    }
}
