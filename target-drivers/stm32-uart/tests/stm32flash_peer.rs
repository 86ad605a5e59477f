//! stm32flash, the reference host tool, against the simulator served on a pseudo-terminal.
//!
//! Skipped (with a message) when stm32flash is not installed. Every server is stopped and
//! every stm32flash run has a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{have_stm32flash, image, run_bounded, Ran};
use flashgate_serial::pty::{PtyOptions, PtyServer};
use flashgate_serial::{LineConfig, SerialPortTransport};
use flashgate_stm32_uart::sim::{SimHandle, SimMode, SimOptions};
use flashgate_stm32_uart::{RdpLevel, Stm32UartTarget, STM32F103_MD, STM32F4_413};
use flashgate_target::{LockLevel, LockPermission, Target};

const LIMIT: Duration = Duration::from_secs(60);

fn serve(options: SimOptions) -> (SimHandle, PtyServer<SimHandle>) {
    let sim = SimHandle::from_options(options).unwrap();
    let server = PtyServer::spawn(sim.clone(), PtyOptions::fast()).unwrap();
    (sim, server)
}

fn stm32flash(server: &PtyServer<SimHandle>, args: &[&str]) -> Ran {
    let path = server.path().to_str().unwrap().to_owned();
    let mut all = vec!["-m", "8n1"];
    all.extend_from_slice(args);
    all.push(&path);
    run_bounded("stm32flash", &all, LIMIT).unwrap()
}

fn assert_ok(r: &Ran, what: &str) {
    assert!(
        r.ok,
        "{what} failed\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
}

#[test]
fn stm32flash_identifies_both_parts() {
    if !have_stm32flash() {
        return;
    }
    for (part, id) in [
        (
            &STM32F103_MD,
            "Device ID    : 0x0410 (STM32F10xxx Medium-density)",
        ),
        (&STM32F4_413, "Device ID    : 0x0413 (STM32F40xxx/41xxx)"),
    ] {
        let (_sim, server) = serve(SimOptions::new(part).instant());
        let r = stm32flash(&server, &[]);
        assert_ok(&r, "stm32flash info");
        assert!(r.stdout.contains(id), "{}", r.stdout);
        assert!(r.stdout.contains("Option 1     : 0x00"), "{}", r.stdout);
        server.stop().unwrap();
    }
}

#[test]
fn stm32flash_write_verify_read_back() {
    if !have_stm32flash() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fw_path = dir.path().join("fw.bin");
    let out_path = dir.path().join("out.bin");
    let fw = image(10 * 1024 + 12, 21);
    std::fs::write(&fw_path, &fw).unwrap();
    let (sim, server) = serve(SimOptions::new(&STM32F103_MD).instant());
    sim.lock().load_flash(0x0801_0000, &[0x55; 64]).unwrap();

    let r = stm32flash(&server, &["-w", fw_path.to_str().unwrap(), "-v"]);
    assert_ok(&r, "stm32flash -w -v");
    {
        let chip = sim.lock();
        assert_eq!(&chip.flash()[..fw.len()], &fw[..]);
        // stm32flash erased only the 11 pages the image covers (Erase with a page list).
        assert!(chip.flash()[fw.len()..11 * 1024].iter().all(|&b| b == 0xFF));
        assert_eq!(&chip.flash()[0x1_0000..0x1_0040], &[0x55; 64]);
        assert!(chip.stats().count(0x43) >= 1);
    }

    let r = stm32flash(&server, &["-r", out_path.to_str().unwrap()]);
    assert_ok(&r, "stm32flash -r");
    let out = std::fs::read(&out_path).unwrap();
    assert_eq!(out.len(), 128 * 1024);
    assert_eq!(out, sim.lock().flash());
    server.stop().unwrap();
}

#[test]
fn stm32flash_f4_extended_erase_and_write() {
    if !have_stm32flash() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fw_path = dir.path().join("fw.bin");
    let fw = image(20 * 1024, 5);
    std::fs::write(&fw_path, &fw).unwrap();
    let (sim, server) = serve(SimOptions::new(&STM32F4_413).instant());
    sim.lock().load_flash(0x0800_8000, &[0x11; 16]).unwrap();
    let r = stm32flash(&server, &["-w", fw_path.to_str().unwrap(), "-v"]);
    assert_ok(&r, "stm32flash -w -v (F4)");
    let chip = sim.lock();
    assert_eq!(&chip.flash()[..fw.len()], &fw[..]);
    // Sectors 0 and 1 (16 KiB each) erased, sector 2 untouched.
    assert!(chip.flash()[fw.len()..0x8000].iter().all(|&b| b == 0xFF));
    assert_eq!(&chip.flash()[0x8000..0x8010], &[0x11; 16]);
    assert!(chip.stats().count(0x44) >= 1);
    drop(chip);
    server.stop().unwrap();
}

#[test]
fn stm32flash_readout_protect_and_unprotect() {
    if !have_stm32flash() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fw_path = dir.path().join("fw.bin");
    let out_path = dir.path().join("out.bin");
    let fw = image(4096, 8);
    std::fs::write(&fw_path, &fw).unwrap();
    let (sim, server) = serve(SimOptions::new(&STM32F103_MD).instant());
    assert_ok(
        &stm32flash(&server, &["-w", fw_path.to_str().unwrap()]),
        "-w",
    );

    let r = stm32flash(&server, &["-j"]);
    assert_ok(&r, "stm32flash -j");
    assert_eq!(sim.lock().rdp(), RdpLevel::Level1);
    assert_eq!(
        sim.lock().mode(),
        SimMode::AwaitingSync,
        "RDP resets the chip"
    );
    // Protected: reading is refused, as on a real chip.
    let r = stm32flash(&server, &["-r", out_path.to_str().unwrap()]);
    assert!(!r.ok, "read must fail under RDP:\n{}", r.stdout);
    assert!(r.stderr.contains("Failed to read memory"), "{}", r.stderr);
    assert_eq!(
        &sim.lock().flash()[..4096],
        &fw[..],
        "RDP keeps the contents"
    );

    let r = stm32flash(&server, &["-k"]);
    assert_ok(&r, "stm32flash -k");
    assert_eq!(sim.lock().rdp(), RdpLevel::Level0);
    assert!(
        sim.lock().flash().iter().all(|&b| b == 0xFF),
        "-k mass-erases"
    );
    let r = stm32flash(
        &server,
        &["-r", out_path.to_str().unwrap(), "-S", "0x08000000:1024"],
    );
    assert_ok(&r, "read after -k");
    assert_eq!(std::fs::read(&out_path).unwrap(), vec![0xFF; 1024]);
    server.stop().unwrap();
}

#[test]
fn stm32flash_reset_and_go() {
    if !have_stm32flash() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fw_path = dir.path().join("fw.bin");
    std::fs::write(&fw_path, image(1024, 3)).unwrap();
    let (sim, server) = serve(SimOptions::new(&STM32F103_MD).instant());
    // -R writes a reset stub to SRAM and jumps to it: a system reset.
    let r = stm32flash(&server, &["-w", fw_path.to_str().unwrap(), "-R"]);
    assert_ok(&r, "stm32flash -w -R");
    assert!(r.stdout.contains("Reset done"), "{}", r.stdout);
    let resets = sim.lock().stats().resets;
    assert!(resets >= 2);
    // -g starts the application: the agent owns the UART.
    let r = stm32flash(&server, &["-g", "0x08000000"]);
    assert_ok(&r, "stm32flash -g");
    assert!(matches!(
        sim.lock().mode(),
        SimMode::Application | SimMode::AwaitingSync
    ));
    server.stop().unwrap();
}

#[test]
fn flashgate_programs_stm32flash_reads_back() {
    if !have_stm32flash() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.bin");
    let fw = image(24 * 1024 + 100, 77);
    let (sim, server) = serve(SimOptions::new(&STM32F103_MD).instant());
    {
        let link = SerialPortTransport::open(server.path(), LineConfig::e81(115_200)).unwrap();
        assert!(link.parity_dropped());
        let mut d = Stm32UartTarget::new(link);
        d.connect().unwrap();
        let info = d.identify().unwrap();
        assert_eq!(info.uid, sim.lock().uid().to_vec());
        d.erase().unwrap();
        d.program(0x0800_0000, &fw).unwrap();
        d.verify(0x0800_0000, &fw).unwrap();
        assert_eq!(d.read_lock().unwrap().level, LockLevel::None);
    }
    let len = format!("0x08000000:{}", fw.len());
    let r = stm32flash(&server, &["-r", out_path.to_str().unwrap(), "-S", &len]);
    assert_ok(&r, "stm32flash -r after flashgate");
    assert_eq!(std::fs::read(&out_path).unwrap(), fw);
    // And flashgate's lock is what stm32flash then sees.
    {
        let link = SerialPortTransport::open(server.path(), LineConfig::e81(115_200)).unwrap();
        let mut d = Stm32UartTarget::new(link);
        d.connect().unwrap();
        d.identify().unwrap();
        d.set_lock(LockPermission::unchecked(LockLevel::Readout))
            .unwrap();
        assert_eq!(d.read_lock().unwrap().level, LockLevel::Readout);
    }
    let r = stm32flash(&server, &["-r", out_path.to_str().unwrap(), "-S", &len]);
    assert!(!r.ok);
    server.stop().unwrap();
}
