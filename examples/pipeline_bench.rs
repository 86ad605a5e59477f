//! Pipeline benchmarks (run on purpose, not in the tests):
//!
//! ```sh
//! cargo run --release --example pipeline_bench            # all three
//! cargo run --release --example pipeline_bench -- ceiling # one of: overhead, ceiling, scaling
//! ```
//!
//! 1. overhead: secure flow against plain program+verify on the same
//!    simulated timing (1 MiB firmware, 8 MHz SPI, 256-byte pages, 1.4 ms
//!    page writes).
//! 2. ceiling: zero-latency targets, 64 KiB firmware, 1 to 64 channels:
//!    units per second and CPU time per unit.
//! 3. scaling: realistic timing, 64 KiB firmware, 1/8/16/64 channels,
//!    against N times the single-channel rate.
//!
//! Needs SoftHSM2 (`scripts/setup.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "common/proc_stat.rs"]
mod proc_stat;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use flashgate::appliance::{Appliance, ApplianceConfig};
use flashgate::pipeline::{MemoryLedger, Provisioner, RunOptions, StopHandle};
use flashgate_target::{Fixture, Target};
use flashgate_target_sim::SimFixture;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    proc_stat::cpu_ticks(&stat, false) as f64 / proc_stat::TICKS_PER_SECOND
}

fn policy() -> String {
    flashgate::lab::example_policy()
        .replace("quota = 1000 ", "quota = 10000000 ")
        .replace("end = 1000 ", "end = 99999999 ")
        .replace("width = 6 ", "width = 8 ")
}

fn run(dir: &Path, id: &str, sim: &str, channels: u32, units: u64) -> (f64, f64, u64) {
    run_with(dir, id, sim, channels, units, false)
}

/// `durable`: the station's run, with the HSM counter and the audit log;
/// otherwise the pipeline alone with an in-memory counter.
fn run_with(
    dir: &Path,
    id: &str,
    sim: &str,
    channels: u32,
    units: u64,
    durable: bool,
) -> (f64, f64, u64) {
    let config = ApplianceConfig::load(&dir.join("appliance.toml")).unwrap();
    if durable {
        // As `flashgate run` does it: through the station, with the HSM
        // counter and the fsynced, checkpointed audit log.
        let station = flashgate::station::Station::open(
            config,
            flashgate::station::Access::Write {
                purpose: "a benchmark runs".to_owned(),
            },
        )
        .unwrap();
        let fixtures =
            flashgate::station::FixtureSet::parse(&format!("sim:{sim}"), channels).unwrap();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let handle = station
            .start_run(
                &id.parse().unwrap(),
                fixtures,
                flashgate::station::StartOptions::new("bench").units(Some(units)),
            )
            .unwrap();
        let s = handle.wait();
        let wall = t0.elapsed().as_secs_f64();
        return (wall, cpu_seconds() - cpu0, s.passed);
    }
    let appliance = Arc::new(Appliance::open(config).unwrap());
    let ledger: Arc<dyn flashgate::pipeline::Ledger> = Arc::new(MemoryLedger::new(10_000_000));
    let p = Arc::new(Provisioner::open(appliance, id, ledger).unwrap());
    let fixture = SimFixture::from_options(sim).unwrap();
    let fixtures: Vec<Box<dyn Fixture>> = (0..channels)
        .map(|_| Box::new(fixture.clone()) as Box<dyn Fixture>)
        .collect();
    let rt = flashgate::pipeline::runtime(channels).unwrap();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let s = rt.block_on(p.run(
        fixtures,
        RunOptions {
            units: Some(units),
            block: 16,
        },
        StopHandle::default(),
        Arc::new(|_| {}),
    ));
    let wall = t0.elapsed().as_secs_f64();
    (wall, cpu_seconds() - cpu0, s.passed)
}

fn plain(sim: &str, firmware: &[u8], units: u64) -> f64 {
    let mut fixture = SimFixture::from_options(sim).unwrap();
    let t0 = Instant::now();
    for _ in 0..units {
        let mut t = fixture.next_board().unwrap().unwrap();
        t.connect().unwrap();
        t.identify().unwrap();
        t.erase().unwrap();
        t.blank_check(0, firmware.len() as u32).unwrap();
        t.program(0, firmware).unwrap();
        t.verify(0, firmware).unwrap();
    }
    t0.elapsed().as_secs_f64()
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".to_owned());
    let base = tempfile::tempdir().unwrap();
    let small: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7) as u8).collect();

    if which == "all" || which == "overhead" {
        let setup = flashgate::lab::setup(&base.path().join("overhead"), "softhsm", None).unwrap();
        let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 13) as u8).collect();
        let job = flashgate::lab::build_and_import(&setup, &policy(), big.clone()).unwrap();
        let dir = setup.dir.clone();
        drop(setup);
        let sim = "seed=1,timing=realistic,flash-size=2m";
        let n = 3;
        let plain_s = plain(sim, &big, n);
        let (secure_s, _, passed) = run(&dir, &job.id, sim, 1, n);
        assert_eq!(passed, n);
        println!(
            "overhead: 1 MiB, realistic sim, {n} units: plain {:.3} s/unit, secure {:.3} s/unit, secure/plain = {:.4}",
            plain_s / n as f64,
            secure_s / n as f64,
            secure_s / plain_s
        );
    }

    let setup = flashgate::lab::setup(&base.path().join("fleet"), "softhsm", None).unwrap();
    let job = flashgate::lab::build_and_import(&setup, &policy(), small.clone()).unwrap();
    let dir = setup.dir.clone();
    drop(setup);

    if which == "all" || which == "ceiling" {
        for ch in [1u32, 2, 4, 8, 16, 32, 64] {
            let units = 2000;
            let (wall, cpu, passed) = run(&dir, &job.id, "seed=2,timing=zero", ch, units);
            assert_eq!(passed, units);
            println!(
                "ceiling: {ch:>2} channels, 64 KiB, zero latency: {:>7.0} units/s, {:.3} ms CPU/unit",
                units as f64 / wall,
                cpu * 1000.0 / units as f64
            );
        }
    }

    if which == "all" || which == "log" {
        // The audit log's cost: the same runs with and without it. Seeds
        // differ per run so that no UID repeats in the log.
        let (off, _, _) = run_with(&dir, &job.id, "seed=41,timing=realistic", 8, 48, false);
        let (on, _, _) = run_with(&dir, &job.id, "seed=42,timing=realistic", 8, 48, true);
        println!("log: realistic, 8 channels, 48 units: without log {off:.3} s, with log {on:.3} s, ratio {:.4}", on / off);
        for ch in [1u32, 64] {
            let units = 2000;
            let (off, _, _) = run_with(
                &dir,
                &job.id,
                &format!("seed={},timing=zero", 50 + ch),
                ch,
                units,
                false,
            );
            let (on, _, _) = run_with(
                &dir,
                &job.id,
                &format!("seed={},timing=zero", 150 + ch),
                ch,
                units,
                true,
            );
            println!(
                "log: zero latency, {ch:>2} channels: {:.0} units/s without the log, {:.0} units/s with it (fsync, group commit)",
                units as f64 / off,
                units as f64 / on
            );
        }
    }

    if which == "all" || which == "scaling" {
        let mut single = 0.0;
        for ch in [1u32, 8, 16, 64] {
            let units = u64::from(ch) * 6;
            let (wall, _, passed) = run(&dir, &job.id, "seed=3,timing=realistic", ch, units);
            assert_eq!(passed, units);
            let rate = units as f64 / wall;
            if ch == 1 {
                single = rate;
            }
            println!(
                "scaling: {ch:>2} channels, 64 KiB, realistic: {rate:.2} units/s = {:.3} of {ch} x single-channel",
                rate / (single * f64::from(ch))
            );
        }
    }
}
