//! Stock OpenOCD against the simulator: `/usr/bin/openocd` with its own
//! `target/stm32f1x.cfg` (no work area) and `adapter driver remote_bitbang` on the
//! simulator's Unix socket.
//!
//! Each test runs in its own temporary directory, every OpenOCD run has a deadline (it is
//! killed and waited for if it overruns), and every simulator is stopped afterwards with its
//! socket removed. OpenOCD's gdb, telnet and tcl ports are disabled so tests can run in
//! parallel. Nothing is skipped: without OpenOCD the tests fail and say how to install it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flashgate_openocd::sim::{
    CoreState, JtagSim, RdpLevel, Server, SimHandle, FLASH_BASE, FLASH_SIZE,
};

const OPENOCD: &str = "/usr/bin/openocd";
const LIMIT: Duration = Duration::from_secs(180);

/// What an OpenOCD run printed and how it ended.
struct Ran {
    ok: bool,
    timed_out: bool,
    took: Duration,
    output: String,
}

/// A simulator served in a temporary directory.
struct Bench {
    dir: tempfile::TempDir,
    socket: PathBuf,
    server: Option<Server>,
}

impl Bench {
    fn start(options: &str) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        Bench::start_in(dir, options)
    }

    fn start_in(dir: tempfile::TempDir, options: &str) -> Bench {
        let socket = dir.path().join("stm32.sock");
        let sim = SimHandle::new(JtagSim::from_options(options).unwrap());
        let server = Server::start(sim, &socket).unwrap();
        Bench {
            dir,
            socket,
            server: Some(server),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sim(&self) -> SimHandle {
        self.server.as_ref().unwrap().sim().clone()
    }

    /// Stops the simulator; checks that the socket is gone. Returns the directory.
    fn stop(mut self) -> (tempfile::TempDir, SimHandle) {
        let sim = self.server.take().unwrap().stop().unwrap();
        assert!(!self.socket.exists(), "the socket is removed");
        let dir = tempfile::tempdir().unwrap();
        (std::mem::replace(&mut self.dir, dir), sim)
    }

    /// Runs OpenOCD with the stock STM32F1 configuration and `commands`, then `shutdown`.
    fn openocd(&self, commands: &[&str]) -> Ran {
        assert!(
            Path::new(OPENOCD).exists(),
            "OpenOCD is not installed at {OPENOCD}: run `apt-get install openocd` (Debian's 0.12.0)."
        );
        let host = format!("remote_bitbang host {}", self.socket.display());
        let mut args: Vec<&str> = vec![
            "-c",
            "adapter driver remote_bitbang",
            "-c",
            "remote_bitbang port 0",
            "-c",
            &host,
            "-c",
            "gdb_port disabled",
            "-c",
            "telnet_port disabled",
            "-c",
            "tcl_port disabled",
            "-c",
            "set WORKAREASIZE 0",
            "-f",
            "target/stm32f1x.cfg",
        ];
        for c in commands {
            args.push("-c");
            args.push(c);
        }
        args.extend(["-c", "shutdown"]);
        run_bounded(OPENOCD, &args, self.dir.path(), LIMIT)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
    }
}

/// Runs a program with a deadline; its stdout and stderr together.
fn run_bounded(program: &str, args: &[&str], dir: &Path, limit: Duration) -> Ran {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}; run `apt-get install openocd`."));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    let output = format!("{}{}", t_out.join().unwrap(), t_err.join().unwrap());
    Ran {
        ok: status.success() && !timed_out,
        timed_out,
        took,
        output,
    }
}

fn assert_ok(r: &Ran, what: &str) {
    assert!(
        r.ok,
        "{what} failed (timed out: {}, {:?})\n{}",
        r.timed_out, r.took, r.output
    );
}

/// An image of random length (4–8 KiB, even) and content; the seed is printed so a failure
/// can be reproduced.
fn random_image() -> Vec<u8> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("image seed {seed}");
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = 4096 + (next() % 2049) as usize * 2;
    (0..len).map(|_| (next() >> 24) as u8).collect()
}

/// A Tcl line that prints READ-REFUSED or READ-OK for a read of the first flash words.
const TRY_READ: &str = "if {[catch {read_memory 0x08000000 32 4} e]} {echo \"READ-REFUSED\"} else {echo \"READ-OK $e\"}";

#[test]
fn init_reset_halt_and_flash_probe() {
    let bench = Bench::start("timing=zero");
    let r = bench.openocd(&["init", "reset halt", "flash probe 0"]);
    assert_ok(&r, "init, reset halt, flash probe");
    for want in [
        "stm32f1x.cpu tap/device found: 0x3ba00477",
        "stm32f1x.bs tap/device found: 0x16410041",
        "Cortex-M3 r1p1 processor detected",
        "target has 6 breakpoints, 4 watchpoints",
        "halted due to debug-request",
        "pc: 0xfffffffe msp: 0xfffffffc",
        "device id = 0x20036410",
        "flash size = 128 KiB",
        "flash 'stm32f1x' found at 0x08000000",
    ] {
        assert!(r.output.contains(want), "missing {want:?}\n{}", r.output);
    }
    let sim = bench.sim();
    assert_eq!(sim.lock().core_state(), CoreState::Halted);
    assert!(
        sim.lock().stats().core.resets >= 1,
        "reset halt reset the core"
    );
    bench.stop();
}

#[test]
fn program_verify_and_dump_image() {
    let bench = Bench::start("timing=zero");
    let image = random_image();
    std::fs::write(bench.path("fw.bin"), &image).unwrap();
    let dump = format!("dump_image back.bin 0x08000000 {}", image.len());
    let r = bench.openocd(&["init", "program fw.bin 0x08000000 verify", &dump]);
    assert_ok(&r, "program and dump_image");
    assert!(r.output.contains("** Verified OK **"), "{}", r.output);
    assert!(
        r.output.contains("falling back to single memory accesses"),
        "no work area: half-word writes through the debug port\n{}",
        r.output
    );
    let back = std::fs::read(bench.path("back.bin")).unwrap();
    assert_eq!(back.len(), image.len());
    assert!(back == image, "dump_image read back different bytes");
    let sim = bench.sim();
    {
        let chip = sim.lock();
        assert_eq!(&chip.flash()[..image.len()], &image[..]);
        assert!(chip.flash()[image.len()..].iter().all(|&b| b == 0xFF));
        assert_eq!(chip.stats().flash.halfwords, image.len() as u64 / 2);
    }
    bench.stop();
}

#[test]
fn lock_then_reset_refuses_reads_also_in_a_second_session() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("chip.json");
    let options = format!("timing=zero,state={}", state.display());
    let bench = Bench::start_in(dir, &options);
    let image = random_image();
    std::fs::write(bench.path("fw.bin"), &image).unwrap();
    let r = bench.openocd(&[
        "init",
        "program fw.bin 0x08000000 verify",
        TRY_READ,
        "stm32f1x lock 0",
        "reset",
        "halt",
        TRY_READ,
    ]);
    assert_ok(&r, "lock");
    assert!(r.output.contains("stm32x locked"), "{}", r.output);
    let ok = r.output.find("READ-OK").expect("readable before the lock");
    let refused = r
        .output
        .find("READ-REFUSED")
        .expect("refused after the reset");
    assert!(ok < refused);
    assert!(r.output.contains("JTAG-DP STICKY ERROR"), "{}", r.output);
    assert_eq!(bench.sim().lock().rdp(), RdpLevel::Level1);

    // The simulator restarts from its state file: a second session finds the chip locked.
    let (dir, _) = bench.stop();
    assert!(state.exists());
    let bench = Bench::start_in(dir, &options);
    {
        let sim = bench.sim();
        let chip = sim.lock();
        assert_eq!(chip.rdp(), RdpLevel::Level1);
        assert_eq!(&chip.flash()[..image.len()], &image[..], "flash kept");
    }
    let r = bench.openocd(&["init", "reset halt", "stm32f1x options_read 0", TRY_READ]);
    assert_ok(&r, "second session");
    assert!(r.output.contains("read protection: on"), "{}", r.output);
    assert!(r.output.contains("READ-REFUSED"), "{}", r.output);
    bench.stop();
}

#[test]
fn unlock_then_reset_erases_flash_and_reads_again() {
    let bench = Bench::start("timing=zero,locked=1");
    let sim = bench.sim();
    sim.lock().load_flash(FLASH_BASE, &random_image()).unwrap();
    let r = bench.openocd(&[
        "init",
        "reset halt",
        TRY_READ,
        "stm32f1x unlock 0",
        "reset",
        "halt",
        "stm32f1x options_read 0",
        TRY_READ,
        "dump_image all.bin 0x08000000 0x20000",
    ]);
    assert_ok(&r, "unlock");
    assert!(r.output.contains("stm32x unlocked"), "{}", r.output);
    let refused = r.output.find("READ-REFUSED").expect("locked at first");
    let ok = r.output.find("READ-OK").expect("readable after the reset");
    assert!(refused < ok);
    assert!(r.output.contains("read protection: off"), "{}", r.output);
    let all = std::fs::read(bench.path("all.bin")).unwrap();
    assert_eq!(all.len(), FLASH_SIZE as usize);
    assert!(all.iter().all(|&b| b == 0xFF), "flash is erased");
    assert_eq!(sim.lock().rdp(), RdpLevel::Level0);
    assert!(sim.lock().stats().flash.mass_erases >= 1);
    bench.stop();
}

#[test]
fn a_target_gone_mid_write_makes_openocd_fail_not_hang() {
    // OpenOCD's init and reset halt take a few hundred thousand bytes; programming 8 KiB
    // takes millions, so the socket closes in the middle of the writes.
    let bench = Bench::start("timing=zero,drop-after-bytes=3000000");
    let image: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(bench.path("fw.bin"), &image).unwrap();
    let r = bench.openocd(&["init", "program fw.bin 0x08000000 verify"]);
    assert!(!r.timed_out, "OpenOCD hung\n{}", r.output);
    assert!(!r.ok, "OpenOCD did not notice\n{}", r.output);
    assert!(!r.output.contains("** Verified OK **"), "{}", r.output);
    let sim = bench.sim();
    let written = sim.lock().stats().flash.halfwords;
    assert!(
        written > 0 && written < 4096,
        "the drop came mid-write ({written} half-words)\n{}",
        r.output
    );
    bench.stop();
}

/// Reads one agent frame from the pty.
fn read_frame(link: &mut impl flashgate_serial::Transport) -> flashgate_agent::Message {
    let mut head = [0u8; 4];
    link.read_exact(&mut head, Duration::from_secs(5)).unwrap();
    let len = u16::from_le_bytes([head[2], head[3]]) as usize;
    let mut rest = vec![0u8; len + 2];
    link.read_exact(&mut rest, Duration::from_secs(5)).unwrap();
    let mut dec = flashgate_agent::Decoder::new();
    dec.feed(&head);
    dec.feed(&rest);
    flashgate_agent::Message::decode(&dec.next_frame().unwrap().unwrap()).unwrap()
}

#[test]
fn the_agent_answers_on_its_pty_once_openocd_releases_the_core() {
    use flashgate_agent::Message;
    use flashgate_serial::{LineConfig, SerialPortTransport, Transport as _};
    use flashgate_target::{ChallengeRequest, FlashRange};

    let bench = Bench::start("timing=zero,agent=on,agent-realtime=off");
    let pty = bench
        .server
        .as_ref()
        .unwrap()
        .agent_pty()
        .unwrap()
        .to_owned();
    // An image with a vector table, and an identity key where the agent reads it.
    let mut image = random_image();
    image[..8].copy_from_slice(&[0x00, 0x50, 0x00, 0x20, 0x01, 0x01, 0x00, 0x08]);
    let mut key = [0u8; 32];
    key[0] = 0x1F;
    for (i, b) in key.iter_mut().enumerate().skip(1) {
        *b = (i as u8).wrapping_mul(37).wrapping_add(5);
    }
    std::fs::write(bench.path("fw.bin"), &image).unwrap();
    std::fs::write(bench.path("key.bin"), key).unwrap();
    let r = bench.openocd(&[
        "init",
        "program fw.bin 0x08000000 verify",
        "flash write_image erase key.bin 0x0801FC00",
        "reset run",
    ]);
    assert_ok(&r, "program, key, reset run");
    let sim = bench.sim();
    assert_eq!(sim.lock().core_state(), CoreState::Running);
    assert!(sim.lock().agent_running());

    let mut link = SerialPortTransport::open(&pty, LineConfig::n81(115_200)).unwrap();
    link.write_all(&Message::Hello.encode().unwrap()).unwrap();
    let (device_type, uid) = read_frame(&mut link).into_hello_reply().unwrap();
    assert_eq!(device_type, "stm32f103-md");
    assert_eq!(uid, sim.lock().uid().to_vec());
    let request = ChallengeRequest {
        nonce: [0x42; 32],
        regions: vec![FlashRange::new(FLASH_BASE, image.len() as u32)],
    };
    link.write_all(&Message::Challenge(request.clone()).encode().unwrap())
        .unwrap();
    let reply = read_frame(&mut link).into_challenge_reply().unwrap();
    let digest =
        flashgate_agent::firmware_digest_of_image(FLASH_BASE, &image, &request.regions).unwrap();
    let public = flashgate_agent::public_key(&key).unwrap();
    let proven =
        flashgate_agent::verify_challenge_reply(&public, &request.nonce, &uid, &digest, &reply);
    assert!(proven.is_ok(), "the signature and digest check out");

    // Halted by the debugger, the firmware (and its agent) stops answering.
    let r = bench.openocd(&["init", "halt"]);
    assert_ok(&r, "halt");
    assert_eq!(sim.lock().core_state(), CoreState::Halted);
    link.clear_input().unwrap();
    link.write_all(&Message::Hello.encode().unwrap()).unwrap();
    let mut b = [0u8; 1];
    assert!(link.read_exact(&mut b, Duration::from_millis(300)).is_err());
    drop(link);
    bench.stop();
}

#[test]
fn a_wrong_idcode_is_reported_as_unexpected() {
    let bench = Bench::start("timing=zero,idcode=0x4ba00477");
    let r = bench.openocd(&["init"]);
    assert!(!r.timed_out, "{}", r.output);
    assert!(
        r.output
            .contains("stm32f1x.cpu       UNEXPECTED: 0x4ba00477"),
        "{}",
        r.output
    );
    assert!(
        r.output.contains("expected 1 of 1: 0x3ba00477"),
        "{}",
        r.output
    );
    bench.stop();
}

#[test]
fn realistic_timing_keeps_bsy_set_and_openocd_waits_it_out() {
    let bench = Bench::start("timing=realistic");
    let image: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 1) as u8).collect();
    std::fs::write(bench.path("fw.bin"), &image).unwrap();
    let r = bench.openocd(&["init", "program fw.bin 0x08000000 verify"]);
    assert_ok(&r, "program with realistic timing");
    assert!(r.output.contains("** Verified OK **"), "{}", r.output);
    let s = bench.sim().lock().stats();
    assert_eq!(s.flash.page_erases, 4);
    assert!(s.flash.busy_reads > 0, "OpenOCD polled a busy FPEC");
    // Four page erases of 20 ms alone take 80 ms of simulated time.
    assert!(s.sim_time > Duration::from_millis(80), "{:?}", s.sim_time);
    bench.stop();
}
