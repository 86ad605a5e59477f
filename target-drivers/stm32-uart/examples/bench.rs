//! One run, on the same simulated STM32F103 served on a pseudo-terminal in real time:
//! stm32flash's plain write + verify of an image, flashgate's whole secure flow for the same
//! image, and the bus floor of each.
//!
//! `cargo run --release -p flashgate-stm32-uart --example bench -- [KIB] [BAUD]
//! [blank=uncovered|full|none|images]` (defaults: 128 KiB of flash at 115200 baud,
//! `uncovered`). The simulator charges wire time at BAUD (8E1) and the F103's datasheet erase
//! and programming times; the pty server sleeps them off, so both tools see the timing of a
//! real chip behind a real UART.
//!
//! The job is the shipped `policies/stm32f103.toml`: the identity key in the last 1 KiB page
//! (`0x0801FC00`), the certificate in the page before (`0x0801F800`), so the image is KIB KiB
//! less those two pages. stm32flash: `-w image -v` (mass erase, write, read back). flashgate:
//! the driver steps of a provisioned unit in pipeline order: connect and identify, mass
//! erase, blank check (`uncovered`, the policy's default: the flash the image does not
//! cover; `images` is the check the pipeline used to make, of the image itself), program,
//! verify, inject (a 32-byte P-256 key and a certificate-sized blob, each checked blank,
//! written and read back), the agent's challenge (its signature checked), back into the
//! bootloader through the agent's EnterBootloader, readout protection and its read-back.
//! The HSM's part (derive, certificate) takes milliseconds and is not simulated here.
//!
//! The bus floor counts every byte on the wire and every flash wait (`floor::bus_floor`,
//! with verify); flashgate's adds the blank check's and the inject's Read and Write Memory
//! blocks.
#![allow(clippy::print_stdout)]

use std::process::Command;
use std::time::{Duration, Instant};

use flashgate_serial::pty::{PtyOptions, PtyServer};
use flashgate_serial::{LineConfig, SerialPortTransport};
use flashgate_stm32_uart::floor::{
    bus_floor, read_block_wire_bytes, write_block_wire_bytes, FloorErase, FloorOptions,
};
use flashgate_stm32_uart::sim::{SimHandle, SimOptions};
use flashgate_stm32_uart::{BootloaderEntry, Stm32Options, Stm32UartTarget, STM32F103_MD};
use flashgate_target::{ChallengeRequest, FlashRange, Location, LockLevel, LockPermission, Target};

const KEY_AT: u32 = 0x0801_FC00;
const CERT_AT: u32 = 0x0801_F800;
/// The two pages the job keeps for the key and the certificate.
const KEPT: usize = 2 * 1024;

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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Blank {
    Uncovered,
    Full,
    None,
    Images,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kib: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let baud: u32 = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(115_200);
    let blank = match args.iter().find_map(|a| a.strip_prefix("blank=")) {
        None | Some("uncovered") => Blank::Uncovered,
        Some("full") => Blank::Full,
        Some("none") => Blank::None,
        Some("images") => Blank::Images,
        Some(other) => return Err(format!("blank={other}: uncovered|full|none|images").into()),
    };
    let part = &STM32F103_MD;
    if kib * 1024 <= KEPT || kib * 1024 > part.flash_size as usize {
        return Err(format!("KIB must be 3 to {}", part.flash_size / 1024).into());
    }
    let fw = image(kib * 1024 - KEPT);
    let mut key = [0u8; 32];
    key[0] = 0x1F;
    for (i, b) in key.iter_mut().enumerate().skip(1) {
        *b = (i as u8).wrapping_mul(37);
    }
    let cert: Vec<u8> = (0..530usize).map(|i| (i * 31 + 5) as u8).collect();
    let base = part.flash_base;
    let flash_end = u64::from(base) + u64::from(part.flash_size);

    let floor = bus_floor(
        part,
        fw.len() as u32,
        FloorOptions {
            baud,
            parity: true,
            erase: FloorErase::Mass,
            verify: true,
        },
    );
    let ranges: Vec<(u32, u32)> = match blank {
        Blank::Uncovered => {
            let end = base + fw.len() as u32;
            if u64::from(end) < flash_end {
                vec![(end, (flash_end - u64::from(end)) as u32)]
            } else {
                Vec::new()
            }
        }
        Blank::Full => vec![(base, part.flash_size)],
        Blank::None => Vec::new(),
        Blank::Images => vec![(base, fw.len() as u32)],
    };
    // The blank check reads; each secret is read (blank), written and read back.
    let reads = |n: u64| {
        (0..n.div_ceil(256))
            .map(|i| read_block_wire_bytes((n - i * 256).min(256)))
            .sum::<u64>()
    };
    let writes = |n: u64| {
        (0..n.div_ceil(256))
            .map(|i| write_block_wire_bytes((n - i * 256).min(256)))
            .sum::<u64>()
    };
    let extra_bytes: u64 = ranges
        .iter()
        .map(|&(_, n)| reads(u64::from(n)))
        .sum::<u64>()
        + [key.len(), cert.len()]
            .iter()
            .map(|&n| 2 * reads(n as u64) + writes(n as u64))
            .sum::<u64>();
    let extra = Duration::from_nanos(extra_bytes * 11 * 1_000_000_000 / u64::from(baud))
        + Duration::from_micros(((key.len() + cert.len()) as u64).div_ceil(2) * 50);
    let our_floor = floor.total + extra;
    println!(
        "image {} bytes (flash {kib} KiB less the key and certificate pages) on {} at {baud} baud 8E1",
        fw.len(),
        part.device_type,
    );
    println!(
        "bus floor, write + verify: {:.3} s (wire {:.3} s for {} bytes in {} blocks, programming {:.3} s, erase {:.3} s)",
        floor.total.as_secs_f64(),
        floor.wire.as_secs_f64(),
        floor.wire_bytes,
        floor.blocks,
        floor.program.as_secs_f64(),
        floor.erase.as_secs_f64()
    );
    println!(
        "bus floor, secure flow: {:.3} s (+ {extra_bytes} bytes of blank check and inject)",
        our_floor.as_secs_f64()
    );

    let mut options = SimOptions::new(part);
    options.timing.baud = baud;

    // stm32flash: write + verify, on a fresh chip.
    let sim = SimHandle::from_options(options.clone())?;
    let server = PtyServer::spawn(sim.clone(), PtyOptions::default())?;
    let dir = std::env::temp_dir().join(format!("flashgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let fw_path = dir.join("fw.bin");
    std::fs::write(&fw_path, &fw)?;
    let mut cmd = Command::new("stm32flash");
    cmd.args(["-m", "8n1", "-b", &baud.to_string(), "-w"])
        .arg(&fw_path)
        .arg("-v")
        .arg(server.path());
    let t = Instant::now();
    let out = cmd.output();
    let peer = t.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    server.stop()?;
    let peer = match out {
        Ok(o) if o.status.success() => {
            if sim.lock().flash()[..fw.len()] != fw[..] {
                return Err("stm32flash left the wrong contents".into());
            }
            Some(peer)
        }
        Ok(o) => {
            println!(
                "stm32flash failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("stm32flash not run: {e}");
            None
        }
    };

    // flashgate: the secure flow, on a fresh chip.
    let sim = SimHandle::from_options(options)?;
    let server = PtyServer::spawn(sim.clone(), PtyOptions::default())?;
    let start = Instant::now();
    let mut lap = Instant::now();
    let mut steps: Vec<(&str, Duration)> = Vec::new();
    let mut step = |name: &'static str, lap: &mut Instant| {
        steps.push((name, lap.elapsed()));
        *lap = Instant::now();
    };
    let link = SerialPortTransport::open(server.path(), LineConfig::e81(baud))?;
    let mut d = Stm32UartTarget::with_options(
        link,
        Stm32Options {
            baud,
            bootloader_entry: BootloaderEntry::Agent,
            ..Stm32Options::default()
        },
    );
    d.connect()?;
    let info = d.identify()?;
    info.expect_unlocked()?;
    step("connect + identify", &mut lap);
    d.erase()?;
    step("erase", &mut lap);
    for &(a, n) in &ranges {
        d.blank_check(a, n)?;
    }
    step("blank check", &mut lap);
    d.program(base, &fw)?;
    step("program", &mut lap);
    d.verify(base, &fw)?;
    step("verify", &mut lap);
    d.store_secret(Location::new(flashgate_target::Space::Flash, KEY_AT), &key)?;
    d.store_secret(
        Location::new(flashgate_target::Space::Flash, CERT_AT),
        &cert,
    )?;
    step("inject", &mut lap);
    let regions = vec![FlashRange::new(base, fw.len() as u32)];
    let request = ChallengeRequest {
        nonce: [7; 32],
        regions: regions.clone(),
    };
    let reply = d.challenge(&request)?;
    let digest = flashgate_agent::firmware_digest_of_image(base, &fw, &regions)?;
    let proof = flashgate_agent::verify_challenge_reply(
        &flashgate_agent::public_key(&key)?,
        &request.nonce,
        &info.uid,
        &digest,
        &reply,
    )?;
    step("challenge", &mut lap);
    d.set_lock(LockPermission::after(proof, LockLevel::Readout))?;
    if d.read_lock()?.level != LockLevel::Readout {
        return Err("the lock did not read back".into());
    }
    step("lock + read-back", &mut lap);
    let ours = start.elapsed();
    drop(d);
    server.stop()?;

    println!();
    println!("flashgate secure flow, step by step (blank check: {blank:?}):");
    for (name, t) in &steps {
        println!("  {name:<20} {:8.3} s", t.as_secs_f64());
    }
    println!();
    println!("                              whole run (s)   / bus floor");
    if let Some(p) = peer {
        println!(
            "stm32flash write + verify     {:13.3}   {:10.3}",
            p.as_secs_f64(),
            ratio(p, floor.total)
        );
    }
    println!(
        "flashgate secure flow         {:13.3}   {:10.3}",
        ours.as_secs_f64(),
        ratio(ours, our_floor)
    );
    if let Some(p) = peer {
        println!("flashgate / stm32flash: {:.3}", ratio(ours, p));
    }
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
