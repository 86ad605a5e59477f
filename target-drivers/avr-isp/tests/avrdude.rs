//! avrdude as the peer: the simulator must satisfy the real tool, over a pseudo-terminal.
//!
//! Skipped (with a message) when `avrdude` is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use flashgate_avr_isp::bench::programming_floor;
use flashgate_avr_isp::sim::{AvrSim, AvrSimConfig, AvrTiming, ChipState};
use flashgate_avr_isp::{AvrIspConfig, AvrIspTarget, ATMEGA328P};
use flashgate_serial::pty::{PtyOptions, PtyServer};
use flashgate_target::{ChallengeRequest, FlashRange, LockLevel, LockPermission, Target};

fn have_avrdude() -> bool {
    let ok = Command::new("avrdude")
        .arg("-?")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("avrdude is not installed: skipping the avrdude peer test");
    }
    ok
}

/// A child process killed when dropped (a failing test leaves nothing running).
struct Reaped(Option<Child>);

impl Reaped {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    /// Waits up to `limit` for the process to exit.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                self.0 = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs avrdude with a time limit; returns (success, combined output).
fn avrdude(port: &Path, args: &[&str], limit: Duration) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("avrdude.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new("avrdude")
        .args(["-c", "stk500v1", "-p", "m328p", "-b", "19200", "-P"])
        .arg(port)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut child = Reaped(Some(child));
    let status = child.wait(limit);
    (status.success(), std::fs::read_to_string(&log).unwrap())
}

fn write_hex(path: &Path, data: &[u8]) {
    let mut records: Vec<ihex::Record> = data
        .chunks(16)
        .enumerate()
        .map(|(i, c)| ihex::Record::Data {
            offset: (i * 16) as u16,
            value: c.to_vec(),
        })
        .collect();
    records.push(ihex::Record::EndOfFile);
    std::fs::write(
        path,
        ihex::create_object_file_representation(&records).unwrap(),
    )
    .unwrap();
}

/// The bytes of an Intel HEX file below 64 KiB, unwritten bytes as 0xFF.
fn read_hex(path: &Path, size: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = vec![0xFF; size];
    for r in ihex::Reader::new(&text) {
        if let ihex::Record::Data { offset, value } = r.unwrap() {
            out[offset as usize..offset as usize + value.len()].copy_from_slice(&value);
        }
    }
    out
}

/// Starts the command-line simulator; returns it and the two pty paths it printed.
fn start_cli(args: &[&str]) -> (Reaped, PathBuf, PathBuf) {
    let child = Command::new(env!("CARGO_BIN_EXE_flashgate-avr-isp-sim"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = Reaped(Some(child));
    let out = child.child().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        let a = lines.next().and_then(Result::ok).unwrap_or_default();
        let b = lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = tx.send((a, b));
    });
    let (isp, agent) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the simulator printed no pty paths");
    (child, PathBuf::from(isp), PathBuf::from(agent))
}

fn sigterm(child: &mut Reaped) {
    let pid = child.child().id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
}

#[test]
fn avrdude_writes_verifies_locks_and_reads_back() {
    if !have_avrdude() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let fw = pseudo_random(2048, 21);
    let hex = dir.path().join("fw.hex");
    write_hex(&hex, &fw);
    let state_arg = state.to_str().unwrap();
    let (mut sim, isp, agent) = start_cli(&["--part", "m328p", "--state", state_arg, "--fast"]);
    assert!(isp.starts_with("/dev/pts") && agent.starts_with("/dev/pts"));

    let flash_w = format!("flash:w:{}:i", hex.display());
    let (ok, log) = avrdude(
        &isp,
        &["-U", &flash_w, "-U", "lock:w:0xCF:m"],
        Duration::from_secs(60),
    );
    assert!(ok, "{log}");
    assert!(log.contains("device signature = 0x1e950f"), "{log}");
    assert!(log.contains("2048 bytes of flash verified"), "{log}");
    assert!(log.contains("1 byte of lock verified"), "{log}");

    let out = dir.path().join("out.hex");
    let flash_r = format!("flash:r:{}:i", out.display());
    let (ok, log) = avrdude(&isp, &["-U", &flash_r], Duration::from_secs(60));
    assert!(ok, "{log}");
    let back = read_hex(&out, 32 * 1024);
    assert_eq!(&back[..2048], &fw[..]);
    assert!(back[2048..].iter().all(|&b| b == 0xFF));

    // SIGTERM: clean exit, state written.
    sigterm(&mut sim);
    assert!(sim.wait(Duration::from_secs(10)).success());
    let st = ChipState::load(&state).unwrap();
    assert_eq!(st.lock, "cf");
    assert_eq!(st.part, "atmega328p");
    let chip = st.to_chip().unwrap();
    assert_eq!(&chip.flash()[..2048], &fw[..]);

    // The state is loaded again on the next start: avrdude reads the lock it left.
    let (mut sim, isp, _) = start_cli(&["--part", "m328p", "--state", state_arg, "--fast"]);
    let (ok, log) = avrdude(&isp, &["-U", "lock:r:-:h"], Duration::from_secs(60));
    assert!(ok && log.contains("0xcf"), "{log}");
    sigterm(&mut sim);
    assert!(sim.wait(Duration::from_secs(10)).success());
}

#[test]
fn flashgate_programs_and_avrdude_reads_back() {
    if !have_avrdude() {
        return;
    }
    let sim = AvrSim::new(&AvrSimConfig::fast(&ATMEGA328P)).unwrap();
    let isp = PtyServer::spawn(sim.programmer(), PtyOptions::fast()).unwrap();
    let agent = PtyServer::spawn(sim.agent(), PtyOptions::fast()).unwrap();
    let fw = pseudo_random(2048, 22);
    let key = identity_key(22);
    {
        let mut t = AvrIspTarget::open(
            isp.path().to_str().unwrap(),
            Some(agent.path().to_str().unwrap()),
            AvrIspConfig::default(),
        )
        .unwrap();
        t.connect().unwrap();
        let info = t.identify().unwrap();
        t.erase().unwrap();
        t.program(0, &fw).unwrap();
        t.verify(0, &fw).unwrap();
        t.store_secret("flash:0x7E00".parse().unwrap(), &key)
            .unwrap();
        let request = ChallengeRequest {
            nonce: [9; 32],
            regions: vec![FlashRange::new(0, 2048)],
        };
        let reply = t.challenge(&request).unwrap();
        let digest = flashgate_agent::firmware_digest_of_image(0, &fw, &request.regions).unwrap();
        let proof = flashgate_agent::verify_challenge_reply(
            &flashgate_agent::public_key(&key).unwrap(),
            &request.nonce,
            &info.uid,
            &digest,
            &reply,
        )
        .unwrap();
        assert_eq!(proof.uid(), &info.uid[..]);
        t.disconnect().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.hex");
    let flash_r = format!("flash:r:{}:i", out.display());
    let (ok, log) = avrdude(isp.path(), &["-U", &flash_r], Duration::from_secs(60));
    assert!(ok, "{log}");
    let back = read_hex(&out, 32 * 1024);
    assert_eq!(&back[..2048], &fw[..]);
    assert_eq!(&back[0x7E00..0x7E20], &key);
    // flashgate locks afterwards; avrdude then sees the lock byte.
    {
        let mut t = AvrIspTarget::open(isp.path().to_str().unwrap(), None, AvrIspConfig::default())
            .unwrap();
        t.connect().unwrap();
        t.identify().unwrap();
        t.set_lock(LockPermission::unchecked(LockLevel::Readout))
            .unwrap();
    }
    let (ok, log) = avrdude(isp.path(), &["-U", "lock:r:-:h"], Duration::from_secs(60));
    assert!(ok && log.contains("0xfc"), "{log}");
    isp.stop().unwrap();
    agent.stop().unwrap();
}

#[test]
fn avrdude_with_realistic_timing() {
    if !have_avrdude() {
        return;
    }
    let config = AvrSimConfig {
        timing: AvrTiming::realistic(),
        ..AvrSimConfig::default()
    };
    let sim = AvrSim::new(&config).unwrap();
    let isp = PtyServer::spawn(sim.programmer(), PtyOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fw = pseudo_random(512, 23);
    let hex = dir.path().join("fw.hex");
    write_hex(&hex, &fw);
    let flash_w = format!("flash:w:{}:i", hex.display());
    let start = Instant::now();
    let (ok, log) = avrdude(
        isp.path(),
        &["-U", &flash_w, "-U", "lock:w:0xCF:m"],
        Duration::from_secs(60),
    );
    let took = start.elapsed();
    assert!(ok, "{log}");
    let floor = programming_floor(&ATMEGA328P, &config.timing, 512);
    assert!(took > floor.total, "{took:?} <= {:?}", floor.total);
    sim.with_chip(|c| {
        assert_eq!(&c.flash()[..512], &fw[..]);
        assert_eq!(c.lock(), 0xCF);
        // avrdude waited out the erase and every write.
        assert_eq!(c.stats().ignored_busy, 0, "{:?}", c.stats());
    });
    isp.stop().unwrap();
}

fn identify_uid(port: &Path) -> Vec<u8> {
    let mut t = AvrIspTarget::open(port.to_str().unwrap(), None, AvrIspConfig::default()).unwrap();
    t.connect().unwrap();
    let uid = t.identify().unwrap().uid;
    t.disconnect().unwrap();
    uid
}

/// The board serial as docs/AGENT.md and the README say to write it: avrdude's terminal
/// `send`, byte by byte, because a paged EEPROM write through the ArduinoISP lands at twice
/// the address (`55 f8 03` is taken as 0x3F8 * 2).
#[test]
fn avrdude_writes_the_board_serial_the_documented_way() {
    if !have_avrdude() {
        return;
    }
    let config = AvrSimConfig {
        timing: AvrTiming::realistic(),
        ..AvrSimConfig::default()
    };
    let sim = AvrSim::new(&config).unwrap();
    let isp = PtyServer::spawn(sim.programmer(), PtyOptions::default()).unwrap();
    let serial: [u8; 8] = *b"SN012345";
    let mut want = vec![0x1E, 0x95, 0x0F];
    want.extend_from_slice(&serial);

    // The obvious command writes the wrong bytes.
    let dir = tempfile::tempdir().unwrap();
    let hex = dir.path().join("serial.hex");
    let mut rec = vec![8u8, 0x03, 0xF8, 0x00];
    rec.extend_from_slice(&serial);
    let sum = rec
        .iter()
        .fold(0u8, |a, &b| a.wrapping_add(b))
        .wrapping_neg();
    std::fs::write(
        &hex,
        format!(":{}{sum:02X}\n:00000001FF\n", hex::encode_upper(&rec)),
    )
    .unwrap();
    let eeprom_w = format!("eeprom:w:{}:i", hex.display());
    let (ok, log) = avrdude(isp.path(), &["-U", &eeprom_w], Duration::from_secs(60));
    assert!(ok, "{log}");
    assert_ne!(
        identify_uid(isp.path()),
        want,
        "a paged write lands elsewhere"
    );

    // The documented one: terminal `send`, one byte per SPI instruction, as the driver's
    // advice after a failed write-back gives it.
    let command = flashgate_avr_isp::uid::restore_command(&ATMEGA328P, &serial)
        .replace("PORT", isp.path().to_str().unwrap());
    assert_eq!(command.matches("send 0xc0 0x03 0x").count(), 8, "{command}");
    let out = Command::new("sh").arg("-c").arg(&command).output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(identify_uid(isp.path()), want, "UID = signature || serial");
}
