//! Serves a simulated STM32F103 on a Unix socket for OpenOCD's remote_bitbang driver, as
//! `flashgate sim stm32-jtag` does:
//! `cargo run -p flashgate-openocd --example jtag_serve -- SOCKET [STATE] [OPTIONS]`, e.g.
//! `... -- /tmp/stm32.sock /tmp/chip.json timing=zero,agent=on`.
//! Prints the socket path (and the agent's pty with `agent=on`); stop it with Ctrl-C, and it
//! prints what the chip saw.
//!
//! ```text
//! openocd -c "adapter driver remote_bitbang" -c "remote_bitbang port 0" \
//!         -c "remote_bitbang host /tmp/stm32.sock" -c "set WORKAREASIZE 0" \
//!         -f target/stm32f1x.cfg -c init -c "reset halt"
//! ```

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let socket = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/tmp/stm32-jtag.sock".to_owned()),
    );
    let state = args.next().filter(|s| !s.is_empty()).map(PathBuf::from);
    let options = args.next().unwrap_or_default();
    let sim = flashgate_openocd::sim::serve_cli(&socket, state, &options)?;
    let s = sim.lock().stats();
    eprintln!(
        "{} bytes in, {} TCK cycles, {} half-words programmed, {} pages and {} mass erased, \
         BSY seen {} times, {} stalls, \
         simulated {:?}",
        s.bytes_in,
        s.tck_cycles,
        s.flash.halfwords,
        s.flash.page_erases,
        s.flash.mass_erases,
        s.flash.busy_reads,
        s.flash.stalls,
        s.sim_time
    );
    Ok(())
}
