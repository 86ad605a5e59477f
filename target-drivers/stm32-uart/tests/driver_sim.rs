//! The driver against the simulator, in process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{image, scalar};
use flashgate_serial::{Loopback, SerialDevice, SerialError, Transport};
use flashgate_stm32_uart::floor::{bus_floor, FloorErase, FloorOptions};
use flashgate_stm32_uart::protocol::*;
use flashgate_stm32_uart::sim::{Fault, FaultKind, SimHandle, SimMode, SimOptions, SimTiming};
use flashgate_stm32_uart::{RdpLevel, Stm32Options, Stm32UartTarget, STM32F103_MD, STM32F4_413};
use flashgate_target::{
    ChallengeRequest, FlashRange, Location, LockLevel, LockPermission, Space, Stage, Target,
    TargetError,
};

type Driver = Stm32UartTarget<Loopback<SimHandle>>;

fn board(options: SimOptions) -> (SimHandle, Driver) {
    let sim = SimHandle::from_options(options).unwrap();
    let drv = Stm32UartTarget::new(Loopback::instant(sim.clone()));
    (sim, drv)
}

fn f103() -> SimOptions {
    SimOptions::new(&STM32F103_MD).instant()
}

fn challenge_for(base: u32, len: u32) -> ChallengeRequest {
    let mut nonce = [0u8; 32];
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = i as u8 ^ 0x5A;
    }
    ChallengeRequest {
        nonce,
        regions: vec![FlashRange::new(base, len)],
    }
}

#[test]
fn full_flow_f103_128k() {
    let (sim, mut d) = board(f103());
    d.connect().unwrap();
    let info = d.identify().unwrap();
    assert_eq!(info.device_type, "stm32f103-md");
    assert_eq!(info.signature, vec![0x04, 0x10]);
    assert_eq!(info.uid, sim.lock().uid().to_vec());
    assert_eq!(info.flash.base, 0x0800_0000);
    assert_eq!(info.flash.size, 128 * 1024);
    assert_eq!(info.lock.level, LockLevel::None);
    assert_eq!(info.lock.raw, vec![0xA5, 0x5A]);
    info.expect_unlocked().unwrap();
    let bl = d.bootloader().unwrap();
    assert_eq!(bl.version, 0x22);
    assert_eq!(bl.pid, 0x410);

    d.erase().unwrap();
    d.blank_check(0x0800_0000, 128 * 1024).unwrap();
    // 128 KiB image whose last page (the key page) is left erased.
    let mut fw = image(128 * 1024, 1);
    fw[127 * 1024..].fill(0xFF);
    d.program(0x0800_0000, &fw).unwrap();
    d.verify(0x0800_0000, &fw).unwrap();
    assert_eq!(sim.lock().flash(), &fw[..]);

    let key = scalar(3);
    let at: Location = "flash:0x1fc00".parse().unwrap();
    d.store_secret(at, &key).unwrap();
    assert_eq!(sim.lock().peek(0x0801_FC00, 32).unwrap(), key.to_vec());
    // Storing again over a written place is refused (flash must be erased first).
    let e = d.store_secret(at, &key).unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::InvalidRequest {
                stage: Stage::StoreSecret,
                ..
            }
        ),
        "{e}"
    );

    let req = challenge_for(0x0800_0000, 127 * 1024);
    let reply = d.challenge(&req).unwrap();
    assert_eq!(sim.lock().mode(), SimMode::Application);
    let public = flashgate_agent::public_key(&key).unwrap();
    let expected =
        flashgate_agent::firmware_digest_of_image(0x0800_0000, &fw, &req.regions).unwrap();
    let proof =
        flashgate_agent::verify_challenge_reply(&public, &req.nonce, &info.uid, &expected, &reply)
            .unwrap();
    // A second challenge goes straight to the running agent.
    d.challenge(&req).unwrap();

    d.set_lock(LockPermission::after(proof, LockLevel::Readout))
        .unwrap();
    assert_eq!(sim.lock().rdp(), RdpLevel::Level1);
    let lock = d.read_lock().unwrap();
    assert_eq!(lock.level, LockLevel::Readout);
    assert_eq!(lock.raw, vec![0x00, 0x00], "Get Version option bytes");

    // RDP active: the refused subset, as errors naming the stage.
    let mut buf = [0u8; 16];
    let e = d.read(0x0800_0000, &mut buf).unwrap_err();
    assert_eq!(
        e,
        TargetError::AlreadyLocked {
            stage: Stage::Verify,
            level: LockLevel::Readout,
            address: Some(0x0800_0000)
        }
    );
    let e = d.program(0x0800_0000, &[0; 4]).unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::AlreadyLocked {
                stage: Stage::Program,
                ..
            }
        ),
        "{e}"
    );
    let e = d.erase().unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::AlreadyLocked {
                stage: Stage::Erase,
                ..
            }
        ),
        "{e}"
    );
    let e = d.store_secret(at, &key).unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::AlreadyLocked {
                stage: Stage::StoreSecret,
                ..
            }
        ),
        "{e}"
    );
    let e = d
        .set_lock(LockPermission::unchecked(LockLevel::Readout))
        .unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::AlreadyLocked {
                stage: Stage::Lock,
                ..
            }
        ),
        "{e}"
    );
    let e = d.challenge(&req).unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::AlreadyLocked {
                stage: Stage::Challenge,
                ..
            }
        ),
        "{e}"
    );
    // Identify still works and reports the lock; a locked board is refused by the appliance.
    d.connect().unwrap();
    let info2 = d.identify().unwrap();
    assert_eq!(info2.lock.level, LockLevel::Readout);
    assert!(info2.uid.is_empty());
    assert!(info2.expect_unlocked().is_err());
    // The silicon still holds firmware and key.
    assert_eq!(sim.lock().peek(0x0801_FC00, 32).unwrap(), key.to_vec());

    // Only the explicit, destructive call removes protection.
    d.readout_unprotect_erasing_everything(flashgate_target::DestructivePermission::grant(
        flashgate_target::Destructive::RdpRegression,
    ))
    .unwrap();
    assert_eq!(sim.lock().rdp(), RdpLevel::Level0);
    assert!(sim.lock().flash().iter().all(|&b| b == 0xFF));
    assert_eq!(d.read_lock().unwrap().level, LockLevel::None);
}

#[test]
fn rdp_subset_on_the_wire() {
    let sim = SimHandle::from_options(f103()).unwrap();
    sim.lock().set_rdp(RdpLevel::Level1);
    let mut s = sim.clone();
    assert_eq!(s.feed(&[SYNC]).0, [ACK]);
    assert_eq!(s.feed(&command_frame(CMD_GET)).0.len(), 15);
    assert_eq!(
        s.feed(&command_frame(CMD_GET_VERSION)).0,
        [ACK, 0x22, 0, 0, ACK]
    );
    assert_eq!(
        s.feed(&command_frame(CMD_GET_ID)).0,
        [ACK, 1, 0x04, 0x10, ACK]
    );
    for cmd in [
        CMD_READ,
        CMD_GO,
        CMD_WRITE,
        CMD_ERASE,
        CMD_WRITE_PROTECT,
        CMD_WRITE_UNPROTECT,
        CMD_READOUT_PROTECT,
    ] {
        assert_eq!(
            s.feed(&command_frame(cmd)).0,
            [NACK],
            "{}",
            command_name(cmd)
        );
    }
    sim.lock().load_flash(0x0800_0000, &[1, 2, 3, 4]).unwrap();
    // Readout Unprotect: ACK, mass erase, ACK, reset (needs a new sync).
    assert_eq!(s.feed(&command_frame(CMD_READOUT_UNPROTECT)).0, [ACK, ACK]);
    assert_eq!(sim.lock().mode(), SimMode::AwaitingSync);
    assert_eq!(s.feed(&command_frame(CMD_GET_ID)).0, Vec::<u8>::new());
    assert_eq!(s.feed(&[SYNC]).0, [ACK]);
    assert_eq!(sim.lock().rdp(), RdpLevel::Level0);
    assert_eq!(sim.lock().peek(0x0800_0000, 4).unwrap(), vec![0xFF; 4]);
}

#[test]
fn full_flow_f4_otp_key() {
    let (sim, mut d) = board(SimOptions::new(&STM32F4_413).instant());
    d.connect().unwrap();
    let info = d.identify().unwrap();
    assert_eq!(info.device_type, "stm32f4-413");
    assert_eq!(info.flash.size, 1024 * 1024);
    assert_eq!(info.lock.raw, vec![0xAA]);
    assert_eq!(d.bootloader().unwrap().commands[6], CMD_EXTENDED_ERASE);
    d.erase().unwrap();
    let fw = image(80 * 1024, 9);
    d.program(0x0800_0000, &fw).unwrap();
    d.verify(0x0800_0000, &fw).unwrap();
    let key = scalar(11);
    d.store_secret(Location::new(Space::Otp, 0), &key).unwrap();
    assert_eq!(&sim.lock().otp()[..32], &key);
    // OTP can never be written twice.
    let e = d
        .store_secret(Location::new(Space::Otp, 0), &key)
        .unwrap_err();
    assert!(e.to_string().contains("OTP"), "{e}");
    // Sector erase of the second 16 KiB sector leaves the rest.
    d.erase_range(0x0800_4000, 1).unwrap();
    assert!(sim.lock().flash()[0x4000..0x8000]
        .iter()
        .all(|&b| b == 0xFF));
    assert_eq!(&sim.lock().flash()[..0x4000], &fw[..0x4000]);
    d.program(0x0800_4000, &fw[0x4000..0x8000]).unwrap();
    let req = challenge_for(0x0800_0000, 80 * 1024);
    let reply = d.challenge(&req).unwrap();
    let public = flashgate_agent::public_key(&key).unwrap();
    let expected =
        flashgate_agent::firmware_digest_of_image(0x0800_0000, &fw, &req.regions).unwrap();
    let proof =
        flashgate_agent::verify_challenge_reply(&public, &req.nonce, &info.uid, &expected, &reply)
            .unwrap();
    d.set_lock(LockPermission::after(proof, LockLevel::Readout))
        .unwrap();
    assert_eq!(
        d.read_lock().unwrap(),
        flashgate_target::LockState {
            level: LockLevel::Readout,
            raw: vec![0, 0]
        }
    );
    assert_eq!(sim.lock().rdp(), RdpLevel::Level1);
    let e = d
        .set_lock(LockPermission::unchecked(LockLevel::Permanent))
        .unwrap_err();
    assert!(matches!(
        e,
        TargetError::InvalidRequest {
            stage: Stage::Lock,
            ..
        }
    ));
}

#[test]
fn blank_key_gives_agent_error() {
    let (_sim, mut d) = board(f103());
    d.connect().unwrap();
    d.identify().unwrap();
    d.erase().unwrap();
    d.program(0x0800_0000, &image(2048, 4)).unwrap();
    let e = d.challenge(&challenge_for(0x0800_0000, 2048)).unwrap_err();
    match e {
        TargetError::Agent { stage, code, .. } => {
            assert_eq!(stage, Stage::Challenge);
            assert_eq!(code, Some(0x04));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn go_to_blank_flash_times_out_in_challenge() {
    let (sim, mut d) = board(f103());
    d.connect().unwrap();
    d.identify().unwrap();
    let e = d.challenge(&challenge_for(0x0800_0000, 256)).unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::Timeout {
                stage: Stage::Challenge,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(sim.lock().mode(), SimMode::Crashed);
}

#[test]
fn wrong_part_and_unknown_pid() {
    let sim = SimHandle::from_options(SimOptions::new(&STM32F4_413).instant()).unwrap();
    let mut d = Stm32UartTarget::with_options(
        Loopback::instant(sim),
        Stm32Options {
            part: Some(&STM32F103_MD),
            ..Stm32Options::default()
        },
    );
    d.connect().unwrap();
    let e = d.identify().unwrap_err();
    assert_eq!(
        e.to_string(),
        "the job is for stm32f103-md but the board reports stm32f4-413 (PID 0x413): load the right boards or the right job"
    );

    /// A bootloader that knows everything but reports PID 0x0999.
    struct OddPid;
    impl SerialDevice for OddPid {
        fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
            let out = match input {
                [SYNC] => vec![ACK],
                [CMD_GET, 0xFF] => {
                    let mut v = vec![
                        ACK, 11, 0x31, 0, 1, 2, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92,
                    ];
                    v.push(ACK);
                    v
                }
                [CMD_GET_VERSION, 0xFE] => vec![ACK, 0x31, 0, 0, ACK],
                [CMD_GET_ID, 0xFD] => vec![ACK, 1, 0x09, 0x99, ACK],
                _ => vec![NACK],
            };
            (out, Duration::ZERO)
        }
    }
    let mut d = Stm32UartTarget::new(Loopback::instant(OddPid));
    d.connect().unwrap();
    let e = d.identify().unwrap_err();
    assert!(matches!(e, TargetError::WrongDevice { .. }));
    assert!(
        e.to_string()
            .contains("STM32 PID 0x999, which this driver does not know"),
        "{e}"
    );
}

#[test]
fn no_bootloader_and_garbage() {
    struct Silent;
    impl SerialDevice for Silent {
        fn feed(&mut self, _: &[u8]) -> (Vec<u8>, Duration) {
            (Vec::new(), Duration::ZERO)
        }
    }
    let mut d = Stm32UartTarget::new(Loopback::instant(Silent));
    let e = d.connect().unwrap_err();
    assert_eq!(e.stage(), Some(Stage::Connect));
    assert!(
        e.to_string().starts_with("protocol error during connect: no bootloader answers the 0x7F sync (4 tries, 250 ms each): check that BOOT0 is high"),
        "{e}"
    );

    /// Syncs, then answers every command with 0x42.
    struct Garbage;
    impl SerialDevice for Garbage {
        fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Duration) {
            (
                if input == [SYNC] {
                    vec![ACK]
                } else {
                    vec![0x42]
                },
                Duration::ZERO,
            )
        }
    }
    let mut d = Stm32UartTarget::new(Loopback::instant(Garbage));
    d.connect().unwrap();
    let e = d.identify().unwrap_err();
    assert_eq!(
        e.to_string(),
        "protocol error during identify: expected ACK (0x79) or NACK (0x1F) to the command byte of Get (0x00), received 0x42: check the baud rate and the parity (8E1), then retry the board"
    );
}

#[test]
fn serial_timeout_message() {
    let (_sim, mut d) = board(f103().with_fault(Fault::at(FaultKind::NoAnswer, CMD_GET_ID, 0)));
    d.connect().unwrap();
    let e = d.identify().unwrap_err();
    assert_eq!(
        e.to_string(),
        "the device did not answer during identify within 1000 ms: check the board's power and wiring, then retry it"
    );
}

/// Runs the provisioning flow (small image, key in the last page) until the first error.
fn run_flow(d: &mut Driver) -> Result<(), TargetError> {
    d.connect()?;
    let info = d.identify()?;
    info.expect_unlocked()?;
    d.erase()?;
    let fw = image(4096, 2);
    d.program(0x0800_0000, &fw)?;
    d.verify(0x0800_0000, &fw)?;
    let key = scalar(5);
    d.store_secret(Location::new(Space::Flash, 0x1_FC00), &key)?;
    let req = challenge_for(0x0800_0000, 4096);
    let reply = d.challenge(&req)?;
    let public = flashgate_agent::public_key(&key).unwrap();
    let digest = flashgate_agent::firmware_digest_of_image(0x0800_0000, &fw, &req.regions).unwrap();
    let proof =
        flashgate_agent::verify_challenge_reply(&public, &req.nonce, &info.uid, &digest, &reply)
            .map_err(|e| e.at_stage(Stage::Challenge))?;
    d.set_lock(LockPermission::after(proof, LockLevel::Readout))?;
    let lock = d.read_lock()?;
    assert_eq!(lock.level, LockLevel::Readout);
    Ok(())
}

#[test]
fn flow_without_faults_locks() {
    let (sim, mut d) = board(f103());
    run_flow(&mut d).unwrap();
    assert_eq!(sim.lock().rdp(), RdpLevel::Level1);
}

#[test]
fn every_fault_kind_stops_at_its_stage_and_never_locks() {
    // (stage, command, address) where a fault strikes.
    let places: [(Stage, u8, Option<u32>); 7] = [
        (Stage::Identify, CMD_GET, None),
        (Stage::Identify, CMD_READ, Some(0x1FFF_F7E8)),
        (Stage::Erase, CMD_ERASE, None),
        (Stage::Program, CMD_WRITE, Some(0x0800_0400)),
        (Stage::Verify, CMD_READ, Some(0x0800_0800)),
        (Stage::StoreSecret, CMD_WRITE, Some(0x0801_FC00)),
        (Stage::Challenge, CMD_GO, None),
    ];
    let mut checked = 0;
    for (stage, cmd, address) in places {
        for kind in FaultKind::ALL {
            let fault = match address {
                Some(a) => Fault::at_address(kind, cmd, a),
                None => Fault::at(kind, cmd, 0),
            };
            let (sim, mut d) = board(f103().with_fault(fault));
            let e = run_flow(&mut d).expect_err(&format!("{fault} must fail the unit"));
            assert_eq!(e.stage(), Some(stage), "{fault}: {e}");
            let expected_kind = match kind {
                FaultKind::Nack | FaultKind::CorruptChecksum => {
                    matches!(e, TargetError::Nack { .. })
                }
                FaultKind::NoAnswer | FaultKind::DropReplyByte => {
                    matches!(e, TargetError::Timeout { .. })
                }
                FaultKind::BrownOut => match stage {
                    Stage::Erase | Stage::Program | Stage::StoreSecret => {
                        matches!(e, TargetError::BrownOut { .. })
                    }
                    _ => matches!(e, TargetError::Timeout { .. }),
                },
            };
            assert!(expected_kind, "{fault}: {e:?}");
            if let Some(a) = address.filter(|_| cmd == CMD_WRITE) {
                assert_eq!(e.address(), Some(a), "{fault}: {e}");
            }
            let chip = sim.lock();
            assert_eq!(chip.fired_faults(), &[fault]);
            assert_eq!(chip.rdp(), RdpLevel::Level0, "{fault} left a locked chip");
            checked += 1;
        }
    }
    assert_eq!(checked, 35);
}

#[test]
fn faults_in_lock_stage() {
    for kind in FaultKind::ALL {
        let fault = Fault::at(kind, CMD_READOUT_PROTECT, 0);
        let (sim, mut d) = board(f103().with_fault(fault));
        let e = run_flow(&mut d).unwrap_err();
        assert_eq!(e.stage(), Some(Stage::Lock), "{fault}: {e}");
        // Only a lost final ACK leaves the (permitted) lock in place: the option bytes were
        // written before the answer was lost.
        let locked = sim.lock().rdp() == RdpLevel::Level1;
        assert_eq!(locked, kind == FaultKind::DropReplyByte, "{fault}");
    }
}

#[test]
fn connect_faults() {
    let (_sim, mut d) = board(f103().with_fault("no-answer@sync".parse().unwrap()));
    let e = run_flow(&mut d).unwrap_err();
    assert!(
        e.to_string()
            .contains("no bootloader answers the 0x7F sync"),
        "{e}"
    );
    // A sync answer lost once is retried.
    let (sim, mut d) = board(f103().with_fault("drop-byte@sync".parse().unwrap()));
    run_flow(&mut d).unwrap();
    assert_eq!(sim.lock().rdp(), RdpLevel::Level1);
}

#[test]
fn brown_out_leaves_half_a_block() {
    let (sim, mut d) = board(f103().with_fault(Fault::at(FaultKind::BrownOut, CMD_WRITE, 2)));
    d.connect().unwrap();
    d.identify().unwrap();
    d.erase().unwrap();
    let fw = image(1024, 8);
    let e = d.program(0x0800_0000, &fw).unwrap_err();
    assert_eq!(
        e,
        TargetError::BrownOut {
            stage: Stage::Program,
            address: Some(0x0800_0200)
        }
    );
    let chip = sim.lock();
    assert_eq!(&chip.flash()[..0x280], &fw[..0x280]);
    assert!(chip.flash()[0x280..0x300].iter().all(|&b| b == 0xFF));
    assert_eq!(chip.stats().resets, 2, "connect's reset and the brown-out");
}

#[test]
fn sim_time_matches_the_floor() {
    let mut o = SimOptions::new(&STM32F103_MD);
    o.timing = SimTiming::realistic();
    let (sim, mut d) = board(o);
    d.connect().unwrap();
    d.identify().unwrap();
    let before = sim.lock().sim_time();
    d.erase().unwrap();
    let fw = image(128 * 1024, 6);
    d.program(0x0800_0000, &fw).unwrap();
    let took = sim.lock().sim_time() - before;
    let floor = bus_floor(&STM32F103_MD, 128 * 1024, FloorOptions::default());
    assert_eq!(
        took.as_millis(),
        floor.total.as_millis(),
        "{took:?} vs {floor:?}"
    );
    assert!(
        took > Duration::from_secs(16) && took < Duration::from_secs(17),
        "{took:?}"
    );
    let f4 = bus_floor(
        &STM32F4_413,
        128 * 1024,
        FloorOptions {
            erase: FloorErase::Sectors,
            ..FloorOptions::default()
        },
    );
    assert_eq!(f4.erase, Duration::from_millis(4 * 250 + 550));
}

#[test]
fn unaligned_program_and_secret_are_padded() {
    let (sim, mut d) = board(f103());
    d.connect().unwrap();
    d.identify().unwrap();
    d.erase().unwrap();
    d.program(0x0800_0003, &[1, 2, 3, 4, 5]).unwrap();
    assert_eq!(
        sim.lock().peek(0x0800_0000, 12).unwrap(),
        vec![0xFF, 0xFF, 0xFF, 1, 2, 3, 4, 5, 0xFF, 0xFF, 0xFF, 0xFF]
    );
    d.store_secret(Location::new(Space::KeyStore, 0x101), &[9; 7])
        .unwrap();
    assert_eq!(sim.lock().peek(0x0801_FD01, 7).unwrap(), vec![9; 7]);
    let e = d.program(0x0801_FFFF, &[0, 0]).unwrap_err();
    assert!(matches!(
        e,
        TargetError::OutOfRange {
            stage: Stage::Program,
            ..
        }
    ));
    let e = d
        .store_secret(Location::new(Space::Eeprom, 0), &[1])
        .unwrap_err();
    assert!(e.to_string().contains("has no EEPROM"), "{e}");
}

#[test]
fn f1_refuses_programming_unerased_flash() {
    let (_sim, mut d) = board(f103());
    d.connect().unwrap();
    d.identify().unwrap();
    d.erase().unwrap();
    d.program(0x0800_0000, &[0x12, 0x34, 0x56, 0x78]).unwrap();
    let e = d
        .program(0x0800_0000, &[0x02, 0x04, 0x06, 0x08])
        .unwrap_err();
    assert_eq!(
        e,
        TargetError::Nack {
            stage: Stage::Program,
            address: Some(0x0800_0000)
        }
    );
}

#[test]
fn reset_without_reset_wiring_is_reported() {
    // A fixture that cannot reset the board: after Go the bootloader is gone for good.
    let mut o = f103();
    o.reset_on_link_reset = false;
    let (_sim, mut d) = board(o);
    d.connect().unwrap();
    d.identify().unwrap();
    d.erase().unwrap();
    d.program(0x0800_0000, &image(1024, 1)).unwrap();
    d.store_secret(Location::new(Space::Flash, 0x1_FC00), &scalar(1))
        .unwrap();
    d.challenge(&challenge_for(0x0800_0000, 1024)).unwrap();
    let e = d
        .set_lock(LockPermission::unchecked(LockLevel::Readout))
        .unwrap_err();
    assert_eq!(e.stage(), Some(Stage::Lock));
    assert!(
        e.to_string()
            .contains("no bootloader answers the 0x7F sync"),
        "{e}"
    );
}

#[test]
fn transport_errors_are_reported() {
    struct Broken;
    impl Transport for Broken {
        fn write_all(&mut self, _: &[u8]) -> Result<(), SerialError> {
            Err(SerialError::Io("device unplugged".into()))
        }
        fn read_exact(&mut self, _: &mut [u8], t: Duration) -> Result<(), SerialError> {
            Err(SerialError::Timeout(t))
        }
        fn clear_input(&mut self) -> Result<(), SerialError> {
            Ok(())
        }
    }
    let mut d = Stm32UartTarget::new(Broken);
    let e = d.connect().unwrap_err();
    assert!(e.to_string().contains("device unplugged"), "{e}");
}

#[test]
fn link_faults_of_the_loopback() {
    let (_sim, mut d) = board(f103());
    d.connect().unwrap();
    d.identify().unwrap();
    d.erase().unwrap();
    let fw = image(1024, 12);
    d.program(0x0800_0000, &fw).unwrap();
    // A data byte of the first Read Memory arrives with a bit flipped: verify catches it.
    d.transport().corrupt_reply_byte(3 + 10, 0x10);
    let e = d.verify(0x0800_0000, &fw).unwrap_err();
    match e {
        TargetError::VerifyMismatch {
            stage,
            address,
            expected,
            found,
        } => {
            assert_eq!(stage, Stage::Verify);
            assert_eq!(address, 0x0800_000A);
            assert_eq!(expected[0] ^ 0x10, found[0]);
            assert_eq!(expected.len(), 16);
        }
        other => panic!("{other}"),
    }
    // An ACK arrives garbled: the driver names what it expected and what it got.
    d.transport().corrupt_reply_byte(0, 0x01);
    let e = d.program(0x0800_0400, &fw).unwrap_err();
    assert_eq!(
        e.to_string(),
        "protocol error during program: expected ACK (0x79) or NACK (0x1F) to the command byte of Write Memory (0x31) at 0x08000400, received 0x78: check the baud rate and the parity (8E1), then retry the board"
    );
    // A lost ACK is a timeout; the next operation syncs again and works.
    d.transport().drop_reply_byte(1);
    let e = d.program(0x0800_0400, &fw).unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::Timeout {
                stage: Stage::Program,
                address: Some(0x0800_0400),
                ..
            }
        ),
        "{e}"
    );
    d.program(0x0800_0400, &fw).unwrap();
    d.verify(0x0800_0400, &fw).unwrap();
}
