//! Programming 64 KiB through OpenOCD, run on purpose (not a test):
//! `cargo run -p flashgate-openocd --release --example openocd_bench`.
//!
//! Against the JTAG simulator with realistic flash timing at a simulated
//! adapter clock of 1 MHz (`tck-khz=1000`; remote_bitbang itself has no
//! clock), in simulated time (TCK cycles at 1 MHz plus the flash's busy
//! time) and in wall time:
//! 1. OpenOCD's `program fw.bin 0x08000000 verify` alone;
//! 2. flashgate's driver: connect, identify, mass erase, program, verify;
//! 3. the floor: the JTAG bits one half-word write needs at the least (one
//!    35-bit APACC scan of DRW with its IR and TMS steps) times the
//!    half-words, plus their programming time (52.5 µs each) and the erase.
//!
//! The full secure flow is measured with `flashgate run` (see the README).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use flashgate_openocd::openocd::{OpenOcdConfig, Script};
use flashgate_openocd::sim::{JtagSim, Server, SimHandle, FLASH_BASE};
use flashgate_openocd::{OpenOcdOptions, OpenOcdTarget};
use flashgate_target::Target as _;

const SIZE: usize = 64 * 1024;
const OPTIONS: &str = "timing=realistic,tck-khz=1000";

fn interface(dir: &Path, socket: &Path) -> std::path::PathBuf {
    let p = dir.join("interface.cfg");
    std::fs::write(&p, flashgate_openocd::sim::openocd_interface_cfg(socket)).unwrap();
    p
}

fn report(name: &str, sim: &SimHandle, wall: Duration, floor: Duration) {
    let s = sim.lock().stats();
    println!(
        "{name:<36} simulated {:>7.2} s ({:>4.1}x the floor), wall {:>6.2} s, {:>9} TCK, {:>6} half-words",
        s.sim_time.as_secs_f64(),
        s.sim_time.as_secs_f64() / floor.as_secs_f64(),
        wall.as_secs_f64(),
        s.tck_cycles,
        s.flash.halfwords,
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let fw: Vec<u8> = (0..SIZE)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(1))
        .collect();
    let bin = dir.path().join("fw.bin");
    std::fs::write(&bin, &fw).unwrap();
    // The floor at 1 MHz: per half-word an APACC write of DRW (IR already
    // APACC: Select-DR, Capture, 35 Shift, Exit1, Update, Idle = 40 TCK),
    // its 52.5 µs of programming; a mass erase (20 ms).
    let halfwords = (SIZE / 2) as u64;
    let floor = Duration::from_micros(halfwords * 40)
        + Duration::from_nanos(halfwords * 52_500)
        + Duration::from_millis(20);
    println!("64 KiB, realistic flash timing, simulated 1 MHz JTAG clock");
    println!(
        "{:<36} simulated {:>7.2} s",
        "floor (bits + programming + erase)",
        floor.as_secs_f64()
    );

    // 1. OpenOCD alone.
    let socket = dir.path().join("a.sock");
    let server = Server::start(
        SimHandle::new(JtagSim::from_options(OPTIONS).unwrap()),
        &socket,
    )
    .unwrap();
    let iface = interface(dir.path(), &socket);
    let started = Instant::now();
    let out = std::process::Command::new("openocd")
        .arg("-f")
        .arg(&iface)
        .args([
            "-c",
            "gdb_port disabled",
            "-c",
            "telnet_port disabled",
            "-c",
            "tcl_port disabled",
        ])
        .args([
            "-f",
            "target/stm32f1x.cfg",
            "-c",
            "init",
            "-c",
            "reset halt",
        ])
        .arg("-c")
        .arg(format!("program {} 0x08000000 verify", bin.display()))
        .args(["-c", "shutdown"])
        .output()
        .unwrap();
    let wall = started.elapsed();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Verified OK"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report("OpenOCD program ... verify", server.sim(), wall, floor);
    drop(server.stop());

    // 2. The driver.
    let socket = dir.path().join("b.sock");
    let server = Server::start(
        SimHandle::new(JtagSim::from_options(OPTIONS).unwrap()),
        &socket,
    )
    .unwrap();
    let iface = interface(dir.path(), &socket);
    let config = OpenOcdConfig::new(vec![
        Script::File(iface.display().to_string()),
        Script::File("target/stm32f1x.cfg".to_owned()),
    ]);
    let mut t = OpenOcdTarget::new(config, None, OpenOcdOptions::default()).unwrap();
    let started = Instant::now();
    t.connect().unwrap();
    t.identify().unwrap();
    t.erase().unwrap();
    t.program(FLASH_BASE, &fw).unwrap();
    t.verify(FLASH_BASE, &fw).unwrap();
    let wall = started.elapsed();
    drop(t);
    report(
        "flashgate driver erase+program+verify",
        server.sim(),
        wall,
        floor,
    );
    drop(server.stop());
}
