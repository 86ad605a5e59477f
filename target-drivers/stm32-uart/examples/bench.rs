//! Programming time of flashgate's driver and of stm32flash on the same simulated chip,
//! served on a pseudo-terminal in real time, against the bus-limited floor.
//!
//! `cargo run --release -p flashgate-stm32-uart --example bench -- [KIB] [BAUD] [verify]`
//! (defaults: 128 KiB at 115200 baud, plain programming). The simulator charges wire time
//! at BAUD (8E1) and the F103's datasheet erase and programming times; the pty server sleeps
//! them off, so both tools see the timing of a real chip behind a real UART.

use std::process::Command;
use std::time::{Duration, Instant};

use flashgate_serial::pty::{PtyOptions, PtyServer};
use flashgate_serial::{LineConfig, SerialPortTransport};
use flashgate_stm32_uart::floor::{bus_floor, FloorErase, FloorOptions};
use flashgate_stm32_uart::sim::{SimHandle, SimOptions};
use flashgate_stm32_uart::{Stm32UartTarget, STM32F103_MD};
use flashgate_target::Target;

fn image(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kib: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let baud: u32 = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(115_200);
    let verify = args.iter().any(|a| a == "verify");
    let part = &STM32F103_MD;
    let fw = image(kib * 1024);

    let floor = bus_floor(
        part,
        fw.len() as u32,
        FloorOptions {
            baud,
            parity: true,
            erase: FloorErase::Mass,
            verify,
        },
    );
    println!(
        "image {} KiB on {} at {baud} baud 8E1{}",
        kib,
        part.device_type,
        if verify { ", with verify" } else { "" }
    );
    println!(
        "floor:      {:>8.3} s  (wire {:.3} s for {} bytes in {} blocks, programming {:.3} s, erase {:.3} s)",
        floor.total.as_secs_f64(),
        floor.wire.as_secs_f64(),
        floor.wire_bytes,
        floor.blocks,
        floor.program.as_secs_f64(),
        floor.erase.as_secs_f64()
    );

    let mut options = SimOptions::new(part);
    options.timing.baud = baud;

    // flashgate
    let sim = SimHandle::from_options(options.clone())?;
    let server = PtyServer::spawn(sim.clone(), PtyOptions::default())?;
    let link = SerialPortTransport::open(server.path(), LineConfig::e81(baud))?;
    let mut d = Stm32UartTarget::new(link);
    d.connect()?;
    d.identify()?;
    let t = Instant::now();
    d.erase()?;
    d.program(part.flash_base, &fw)?;
    if verify {
        d.verify(part.flash_base, &fw)?;
    }
    let fg = t.elapsed();
    drop(d);
    let sim_fg = sim.lock().sim_time();
    server.stop()?;
    println!(
        "flashgate:  {:>8.3} s  ({:+.1} % over the floor; chip's own simulated time {:.3} s incl. connect and identify)",
        fg.as_secs_f64(),
        pct(fg, floor.total),
        sim_fg.as_secs_f64()
    );

    // stm32flash on a fresh chip
    let sim = SimHandle::from_options(options)?;
    let server = PtyServer::spawn(sim.clone(), PtyOptions::default())?;
    let dir = std::env::temp_dir().join(format!("flashgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let fw_path = dir.join("fw.bin");
    std::fs::write(&fw_path, &fw)?;
    let mut cmd = Command::new("stm32flash");
    cmd.args(["-m", "8n1", "-b", &baud.to_string(), "-w"])
        .arg(&fw_path);
    if verify {
        cmd.arg("-v");
    }
    cmd.arg(server.path());
    let t = Instant::now();
    let out = cmd.output();
    let sf = t.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    match out {
        Ok(o) if o.status.success() => {
            let ok = sim.lock().flash()[..fw.len()] == fw[..];
            println!(
                "stm32flash: {:>8.3} s  ({:+.1} % over the floor; whole run incl. start-up and init{})",
                sf.as_secs_f64(),
                pct(sf, floor.total),
                if ok { "" } else { "; CONTENTS WRONG" }
            );
        }
        Ok(o) => println!(
            "stm32flash failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => println!("stm32flash not run: {e}"),
    }
    server.stop()?;
    Ok(())
}

fn pct(d: Duration, floor: Duration) -> f64 {
    (d.as_secs_f64() / floor.as_secs_f64() - 1.0) * 100.0
}
