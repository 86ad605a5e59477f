//! One run, on the same simulated ArduinoISP served on pseudo-terminals in real time:
//! avrdude's plain write + verify of an image, flashgate's whole secure flow for the same
//! image, and the bus floor of each.
//!
//! ```text
//! cargo run --release -p flashgate-avr-isp --example bench -- [--size 32k] [--timing realistic|fast]
//!     [--blank-check uncovered|full|none|images] [--cert BYTES] [--verify readback|attested]
//! ```
//!
//! avrdude: `-U flash:w:image.hex:i` (erase, write, read back and compare). flashgate: the
//! driver steps of a provisioned unit in pipeline order: connect and identify, chip erase,
//! blank check (`uncovered` by default: the flash the image does not cover, as the policy's
//! default; `images` is the check the pipeline used to make, of the image itself), program,
//! verify, inject (a 32-byte P-256 identity key and a certificate-sized blob written to EEPROM
//! and read back, as a job with a full-flash image must place them), the agent's challenge
//! (its signature checked), the lock and its read-back. The HSM's part of the flow (derive,
//! certificate) takes milliseconds and is not simulated here. With `--verify attested` (the
//! policy's `target.verify = "attested"`) the read-back is left out: the challenge's signed
//! firmware digest, which the bench checks in every mode, stands for it.
//!
//! The bus floor is what the bytes on the wire and the chip's waits cost at least: the
//! write floor of [`programming_floor`], the read-back's bytes at the baud rate, and for
//! flashgate also the EEPROM pages of the inject (their bytes and tWD_EEPROM each).
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flashgate_avr_isp::bench::programming_floor;
use flashgate_avr_isp::sim::{AvrSim, AvrSimConfig, AvrTiming};
use flashgate_avr_isp::{AvrIspConfig, AvrIspTarget, Part, ATMEGA328P};
use flashgate_serial::pty::{PtyOptions, PtyServer};
use flashgate_target::{
    ChallengeRequest, FlashRange, Location, LockLevel, LockPermission, Space, Target,
};

type Error = Box<dyn std::error::Error>;

/// Where the bench's job keeps its identity key and certificate: EEPROM, since the image
/// may fill the flash.
const KEY_AT: Location = Location::new(Space::Eeprom, 0x0000);
const CERT_AT: Location = Location::new(Space::Eeprom, 0x0040);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Blank {
    Uncovered,
    Full,
    None,
    Images,
}

fn main() -> Result<(), Error> {
    let mut size = 32 * 1024usize;
    let mut timing = AvrTiming::realistic();
    let mut blank = Blank::Uncovered;
    let mut cert_len = 530usize;
    let mut attested = false;
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
            "--blank-check" => {
                blank = match args.next().as_deref() {
                    Some("uncovered") => Blank::Uncovered,
                    Some("full") => Blank::Full,
                    Some("none") => Blank::None,
                    Some("images") => Blank::Images,
                    _ => return Err("--blank-check uncovered|full|none|images".into()),
                }
            }
            "--verify" => {
                attested = match args.next().as_deref() {
                    Some("readback") => false,
                    Some("attested") => true,
                    _ => return Err("--verify readback|attested".into()),
                }
            }
            "--cert" => cert_len = args.next().ok_or("--cert needs a length")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let part = &ATMEGA328P;
    if size == 0 || size > part.flash_size as usize {
        return Err("--size must be 1 byte to 32k".into());
    }
    if cert_len == 0 || CERT_AT.offset as usize + cert_len > 0x3F8 {
        return Err("--cert must be 1 to 952 bytes (EEPROM below the board serial)".into());
    }
    let image: Vec<u8> = (0..size).map(|i| (i * 7 + i / 256) as u8).collect();
    let mut key = [0x11u8; 32];
    key[31] = 0x42;
    let cert: Vec<u8> = (0..cert_len).map(|i| (i * 31 + 5) as u8).collect();
    let config = AvrSimConfig {
        timing,
        identity: KEY_AT,
        ..AvrSimConfig::default()
    };

    let write_floor = programming_floor(part, &timing, size as u32).total;
    let read_floor = read_floor(&timing, size);
    let inject_floor = inject_floor(part, &timing, &[key.len(), cert.len()]);
    let prog_page_floor = prog_page_eeprom_floor(&timing, &[key.len(), cert.len()]);
    let peer_floor = write_floor + read_floor;
    let our_floor = if attested {
        write_floor + inject_floor
    } else {
        peer_floor + inject_floor
    };
    println!(
        "image {size} bytes on an {} behind an ArduinoISP at {} baud, SPI {} Hz, {:?} after each page",
        part.name, timing.baud, timing.spi_hz, timing.commit_delay
    );
    println!(
        "bus floor: write {:.3} s + read-back {:.3} s = {:.3} s; inject of {} + {} bytes to EEPROM {:.3} s",
        write_floor.as_secs_f64(),
        read_floor.as_secs_f64(),
        peer_floor.as_secs_f64(),
        key.len(),
        cert.len(),
        inject_floor.as_secs_f64()
    );
    println!(
        "  (the same inject through STK_PROG_PAGE 'E', which the sketch writes byte by byte with {:?} each: at least {:.3} s)",
        timing.eeprom_byte_delay,
        prog_page_floor.as_secs_f64()
    );

    // avrdude: write + verify.
    let sim = AvrSim::new(&config)?;
    let server = PtyServer::spawn(sim.programmer(), PtyOptions::default())?;
    let dir = std::env::temp_dir().join(format!("flashgate-avr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let hex = dir.join("image.hex");
    write_hex(&hex, &image)?;
    let start = Instant::now();
    let out = Command::new("avrdude")
        .args(["-c", "stk500v1", "-p", part.avrdude_id, "-b"])
        .arg(timing.baud.to_string())
        .arg("-P")
        .arg(server.path())
        .arg("-U")
        .arg(format!("flash:w:{}:i", hex.display()))
        .stdin(Stdio::null())
        .output();
    let avr_total = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    server.stop()?;
    let avrdude = match out {
        Ok(o) if o.status.success() => {
            check(&sim, &image)?;
            let log = String::from_utf8_lossy(&o.stderr).into_owned();
            Some((
                phase_time(&log, "Writing"),
                phase_time(&log, "Reading"),
                avr_total,
            ))
        }
        Ok(o) => {
            return Err(format!("avrdude failed:\n{}", String::from_utf8_lossy(&o.stderr)).into())
        }
        Err(e) => {
            println!("avrdude not run ({e})");
            None
        }
    };

    // flashgate: the secure flow.
    let sim = AvrSim::new(&config)?;
    let programmer = PtyServer::spawn(sim.programmer(), PtyOptions::default())?;
    let agent = PtyServer::spawn(sim.agent(), PtyOptions::default())?;
    let mut steps: Vec<(&str, Duration)> = Vec::new();
    let start = Instant::now();
    let mut lap = Instant::now();
    let mut step = |name: &'static str, lap: &mut Instant| {
        steps.push((name, lap.elapsed()));
        *lap = Instant::now();
    };
    let mut t = AvrIspTarget::open(
        programmer.path().to_str().ok_or("pty path")?,
        Some(agent.path().to_str().ok_or("pty path")?),
        AvrIspConfig::for_part(part),
    )?;
    t.connect()?;
    let info = t.identify()?;
    info.expect_unlocked()?;
    step("connect + identify", &mut lap);
    t.erase()?;
    step("erase", &mut lap);
    let flash_end = u64::from(info.flash.base) + u64::from(info.flash.size);
    let ranges: Vec<(u32, u32)> = match blank {
        // The pipeline's default with one image at 0: the flash after it.
        Blank::Uncovered if (size as u64) < flash_end => {
            vec![(size as u32, (flash_end - size as u64) as u32)]
        }
        Blank::Uncovered | Blank::None => Vec::new(),
        Blank::Full => vec![(info.flash.base, info.flash.size)],
        Blank::Images => vec![(0, size as u32)],
    };
    for (a, n) in ranges {
        t.blank_check(a, n)?;
    }
    step("blank check", &mut lap);
    t.program(0, &image)?;
    step("program", &mut lap);
    if !attested {
        t.verify(0, &image)?;
        step("verify", &mut lap);
    }
    t.store_secret(KEY_AT, &key)?;
    t.store_secret(CERT_AT, &cert)?;
    step("inject", &mut lap);
    let regions = vec![FlashRange::new(0, size as u32)];
    let request = ChallengeRequest {
        nonce: [7; 32],
        regions: regions.clone(),
    };
    let reply = t.challenge(&request)?;
    let digest = flashgate_agent::firmware_digest_of_image(0, &image, &regions)?;
    let proof = flashgate_agent::verify_challenge_reply(
        &flashgate_agent::public_key(&key)?,
        &request.nonce,
        &info.uid,
        &digest,
        &reply,
    )?;
    step("challenge", &mut lap);
    t.set_lock(LockPermission::after(proof, LockLevel::Readout))?;
    if t.read_lock()?.level != LockLevel::Readout {
        return Err("the lock did not read back".into());
    }
    step("lock + read-back", &mut lap);
    t.disconnect()?;
    let ours = start.elapsed();
    drop(t);
    programmer.stop()?;
    agent.stop()?;
    check(&sim, &image)?;
    sim.with_chip(|c| {
        let e = c.eeprom();
        let k = KEY_AT.offset as usize;
        let c0 = CERT_AT.offset as usize;
        if e[k..k + key.len()] == key && e[c0..c0 + cert.len()] == cert[..] {
            Ok(())
        } else {
            Err("the chip's EEPROM does not hold the key and certificate")
        }
    })?;

    println!();
    println!(
        "flashgate secure flow, step by step (blank check: {}, verify: {}):",
        match blank {
            Blank::Uncovered => "uncovered",
            Blank::Full => "full",
            Blank::None => "none",
            Blank::Images => "images",
        },
        if attested { "attested" } else { "readback" }
    );
    for (name, d) in &steps {
        println!("  {name:<20} {:8.3} s", d.as_secs_f64());
    }
    println!();
    println!("                              whole run (s)   / bus floor");
    if let Some((w, r, total)) = avrdude {
        println!(
            "avrdude write + verify        {:13.3}   {:10.3}   (writing {}, reading {})",
            total.as_secs_f64(),
            ratio(total, peer_floor),
            w.map_or("?".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            r.map_or("?".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
        );
        println!(
            "flashgate secure flow         {:13.3}   {:10.3}   (floor with inject {:.3} s)",
            ours.as_secs_f64(),
            ratio(ours, our_floor),
            our_floor.as_secs_f64()
        );
        println!("flashgate / avrdude: {:.3}", ratio(ours, total));
    } else {
        println!(
            "flashgate secure flow         {:13.3}   {:10.3}",
            ours.as_secs_f64(),
            ratio(ours, our_floor)
        );
    }
    Ok(())
}

/// Serial time of reading `len` bytes back in 256-byte `READ_PAGE` blocks: per block
/// `LOAD_ADDRESS` (4) and `READ_PAGE` (5) out, 2 + n + 2 back.
fn read_floor(timing: &AvrTiming, len: usize) -> Duration {
    let blocks = len.div_ceil(256);
    timing.serial(blocks * 13 + len)
}

/// The EEPROM writes of the inject: per EEPROM page one `UNIVERSAL` Load EEPROM Page per
/// byte and one Write EEPROM Page (6 bytes out, 3 back each), then tWD_EEPROM; then the
/// read-back in `READ_PAGE` blocks.
fn inject_floor(part: &Part, timing: &AvrTiming, lens: &[usize]) -> Duration {
    let page = part.eeprom_page as usize;
    lens.iter()
        .map(|&n| {
            let pages = n.div_ceil(page);
            timing.serial((n + pages) * 9)
                + part.eeprom_write * pages as u32
                + read_floor(timing, n)
        })
        .sum()
}

/// The same EEPROM writes through `LOAD_ADDRESS` + `PROG_PAGE 'E'` (the sketch's own EEPROM
/// path): 4 + n + 5 bytes out, 2 + 2 back, and the sketch's delay after every byte.
fn prog_page_eeprom_floor(timing: &AvrTiming, lens: &[usize]) -> Duration {
    lens.iter()
        .map(|&n| {
            let blocks = n.div_ceil(256);
            timing.serial(blocks * 13 + n)
                + timing.eeprom_byte_delay * n as u32
                + read_floor(timing, n)
        })
        .sum()
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

/// avrdude's "Writing | #### | 100% 12.34s" (or "Reading") time.
fn phase_time(log: &str, phase: &str) -> Option<Duration> {
    let line = log.lines().rev().find(|l| l.starts_with(phase))?;
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
