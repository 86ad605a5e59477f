//! Serves a simulated STM32F103 on a Unix socket for OpenOCD's remote_bitbang driver:
//! `cargo run -p flashgate-openocd --example serve -- SOCKET [OPTIONS]`, e.g.
//! `... -- /tmp/stm32.sock timing=zero,state=/tmp/chip.json,agent=on`.
//! Prints the socket path (and the agent's pty with `agent=on`); stop it with Ctrl-C.
//!
//! ```text
//! openocd -c "adapter driver remote_bitbang" -c "remote_bitbang port 0" \
//!         -c "remote_bitbang host /tmp/stm32.sock" -c "transport select jtag" \
//!         -c "set WORKAREASIZE 0" -f target/stm32f1x.cfg -c init -c "reset halt"
//! ```

use std::path::PathBuf;

use flashgate_openocd::sim::{JtagSim, Server, SimHandle};
use flashgate_serial::pty::{announce, ShutdownSignal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let socket = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/tmp/stm32-jtag.sock".to_owned()),
    );
    let options = args.next().unwrap_or_default();
    let shutdown = ShutdownSignal::install()?;
    let server = Server::start(SimHandle::new(JtagSim::from_options(&options)?), &socket)?;
    let mut paths = vec![server.socket()];
    if let Some(pty) = server.agent_pty() {
        paths.push(pty);
    }
    announce(&paths)?;
    shutdown.wait();
    let sim = server.stop()?;
    let stats = sim.lock().stats();
    eprintln!(
        "{} bytes in, {} TCK cycles, {} half-words programmed, simulated {:?}",
        stats.bytes_in, stats.tck_cycles, stats.flash.halfwords, stats.sim_time
    );
    Ok(())
}
