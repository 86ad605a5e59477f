//! Times flashgate's plain programming against avrdude on the same simulated ArduinoISP,
//! served on a pseudo-terminal with real time, and compares both with the bus floor.
//!
//! ```text
//! cargo run --release -p flashgate-avr-isp --example bench -- [--size 32k] [--timing realistic|fast]
//! ```
//!
//! Both tools erase and write the same image without verifying (avrdude `-V`); for each the
//! write phase alone (avrdude's own "Writing" time) and the whole run are reported.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flashgate_avr_isp::bench::programming_floor;
use flashgate_avr_isp::sim::{AvrSim, AvrSimConfig, AvrTiming};
use flashgate_avr_isp::{AvrIspConfig, AvrIspTarget, ATMEGA328P};
use flashgate_serial::pty::{PtyOptions, PtyServer};
use flashgate_serial::Loopback;
use flashgate_target::Target;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut size = 32 * 1024usize;
    let mut timing = AvrTiming::realistic();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => {
                let v = args.next().ok_or("--size needs a value")?;
                size = match v.strip_suffix(['k', 'K']) {
                    Some(k) => k.parse::<usize>()? * 1024,
                    None => v.parse()?,
                };
            }
            "--timing" => {
                timing = match args.next().as_deref() {
                    Some("realistic") => AvrTiming::realistic(),
                    Some("fast") => AvrTiming::fast(),
                    _ => return Err("--timing realistic|fast".into()),
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if size == 0 || size > ATMEGA328P.flash_size as usize {
        return Err("--size must be 1 byte to 32k".into());
    }
    let image: Vec<u8> = (0..size).map(|i| (i * 7 + i / 256) as u8).collect();
    let config = AvrSimConfig {
        timing,
        ..AvrSimConfig::default()
    };
    let floor = programming_floor(&ATMEGA328P, &timing, size as u32);
    println!(
        "image {size} bytes, {} pages; ArduinoISP at {} baud, SPI {} Hz, {:?} after each page",
        floor.pages, timing.baud, timing.spi_hz, timing.commit_delay
    );
    println!(
        "bus floor: {:.3} s ({:.2} ms per page; serial bytes alone {:.3} s)",
        floor.total.as_secs_f64(),
        floor.per_page.as_secs_f64() * 1e3,
        floor.wire_only.as_secs_f64()
    );

    // flashgate in process: simulated time only.
    let sim = AvrSim::new(&config)?;
    let mut t = AvrIspTarget::new(
        Box::new(Loopback::instant(sim.programmer())),
        None,
        AvrIspConfig::default(),
    );
    t.connect()?;
    t.identify()?;
    t.erase()?;
    let before = sim.programmer_time();
    t.program(0, &image)?;
    let simulated = sim.programmer_time() - before;
    drop(t);

    // flashgate over a pty, real time.
    let sim = AvrSim::new(&config)?;
    let server = PtyServer::spawn(sim.programmer(), PtyOptions::default())?;
    let start = Instant::now();
    let mut t = AvrIspTarget::open(
        server.path().to_str().ok_or("pty path")?,
        None,
        AvrIspConfig::default(),
    )?;
    t.connect()?;
    t.identify()?;
    t.erase()?;
    let write_start = Instant::now();
    t.program(0, &image)?;
    let fg_write = write_start.elapsed();
    t.disconnect()?;
    let fg_total = start.elapsed();
    drop(t);
    server.stop()?;
    check(&sim, &image)?;

    // avrdude over a pty, real time.
    let sim = AvrSim::new(&config)?;
    let server = PtyServer::spawn(sim.programmer(), PtyOptions::default())?;
    let dir = std::env::temp_dir().join(format!("flashgate-avr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let hex = dir.join("image.hex");
    write_hex(&hex, &image)?;
    let start = Instant::now();
    let out = Command::new("avrdude")
        .args(["-c", "stk500v1", "-p", "m328p", "-b", "19200", "-V", "-P"])
        .arg(server.path())
        .arg("-U")
        .arg(format!("flash:w:{}:i", hex.display()))
        .stdin(Stdio::null())
        .output();
    let avr_total = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    server.stop()?;
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            println!(
                "avrdude not run ({e}); flashgate write {:.3} s",
                fg_write.as_secs_f64()
            );
            return Ok(());
        }
    };
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("avrdude failed:\n{log}").into());
    }
    check(&sim, &image)?;
    let avr_write = writing_time(&log);

    println!();
    println!("                      write (s)   whole run (s)   write / floor");
    println!(
        "flashgate (simulated)  {:9.3}   {:>13}   {:13.3}",
        simulated.as_secs_f64(),
        "-",
        ratio(simulated, floor.total)
    );
    println!(
        "flashgate (pty)        {:9.3}   {:13.3}   {:13.3}",
        fg_write.as_secs_f64(),
        fg_total.as_secs_f64(),
        ratio(fg_write, floor.total)
    );
    match avr_write {
        Some(w) => println!(
            "avrdude 7.1 (pty)      {:9.3}   {:13.3}   {:13.3}",
            w.as_secs_f64(),
            avr_total.as_secs_f64(),
            ratio(w, floor.total)
        ),
        None => println!(
            "avrdude 7.1 (pty)      {:>9}   {:13.3}",
            "?",
            avr_total.as_secs_f64()
        ),
    }
    if let Some(w) = avr_write {
        println!(
            "flashgate / avrdude: write {:.3}, whole run {:.3}",
            ratio(fg_write, w),
            ratio(fg_total, avr_total)
        );
    }
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn check(sim: &AvrSim, image: &[u8]) -> Result<(), Error> {
    if sim.with_chip(|c| c.flash()[..image.len()] == *image) {
        Ok(())
    } else {
        Err("the chip does not hold the image".into())
    }
}

/// avrdude's "Writing | #### | 100% 12.34s" time.
fn writing_time(log: &str) -> Option<Duration> {
    let line = log.lines().rev().find(|l| l.starts_with("Writing"))?;
    let secs = line.rsplit(' ').find(|w| w.ends_with('s'))?;
    secs.trim_end_matches('s')
        .parse::<f64>()
        .ok()
        .map(Duration::from_secs_f64)
}

fn write_hex(path: &Path, data: &[u8]) -> Result<(), Error> {
    let mut records: Vec<ihex::Record> = data
        .chunks(16)
        .enumerate()
        .map(|(i, c)| ihex::Record::Data {
            offset: (i * 16) as u16,
            value: c.to_vec(),
        })
        .collect();
    records.push(ihex::Record::EndOfFile);
    std::fs::write(path, ihex::create_object_file_representation(&records)?)?;
    Ok(())
}
