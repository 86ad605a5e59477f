#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use flashgate_agent::{firmware_digest_of_image, public_key, verify_challenge_reply, AgentError};
use flashgate_target::{
    ChallengeRequest, Fixture, FlashRange, Location, LockLevel, LockPermission, Space, Stage,
    Target, TargetError,
};

use super::*;

const KEY: [u8; 32] = [0x42; 32];
const IDENTITY: Location = Location::new(Space::KeyStore, 0);

fn zero() -> SimConfig {
    SimConfig {
        seed: 7,
        pace: false,
        keep_boards: true,
        ..SimConfig::default()
    }
}

fn board(plan: FaultPlan) -> SimTarget {
    let mut t = zero().target(0, plan);
    t.connect().unwrap();
    t
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

fn request(base: u32, len: u32) -> ChallengeRequest {
    ChallengeRequest {
        nonce: [9; 32],
        regions: vec![FlashRange::new(base, len)],
    }
}

/// The appliance's sequence for one unit, as far as it concerns a driver. Returns the first
/// error; never locks a unit that failed anything.
fn provision(t: &mut dyn Target, firmware: &[u8], key: &[u8; 32]) -> Result<(), TargetError> {
    t.connect()?;
    let info = t.identify()?;
    info.expect_device_type(DEVICE_TYPE)?;
    info.expect_unlocked()?;
    t.erase()?;
    t.blank_check(info.flash.base, info.flash.size)?;
    t.program(info.flash.base, firmware)?;
    t.verify(info.flash.base, firmware)?;
    t.store_secret(IDENTITY, key)?;
    let _device_key = t.generate_key(Location::new(Space::KeyStore, 0x100))?;
    let req = request(info.flash.base, firmware.len() as u32);
    let reply = t.challenge(&req)?;
    let expected = firmware_digest_of_image(info.flash.base, firmware, &req.regions)
        .map_err(|e| e.at_stage(Stage::Challenge))?;
    let _proof = verify_challenge_reply(
        &public_key(key).unwrap(),
        &req.nonce,
        &info.uid,
        &expected,
        &reply,
    )
    .map_err(|e| e.at_stage(Stage::Challenge))?;
    t.set_lock(LockPermission::unchecked(LockLevel::Readout))?;
    let state = t.read_lock()?;
    assert_eq!(state.level, LockLevel::Readout);
    Ok(())
}

#[test]
fn full_unit_succeeds_and_locks() {
    let fx = SimFixture::new(zero()).unwrap();
    let mut f = fx.clone();
    let mut t = f.next_board().unwrap().unwrap();
    provision(&mut *t, &image(3000), &KEY).unwrap();
    let b = fx.board(0).unwrap();
    b.with_chip(|c| {
        assert_eq!(c.lock_state().level, LockLevel::Readout);
        assert_eq!(c.lock_state().raw, vec![0x00]);
        assert_eq!(c.inspect_flash(0, 3000).unwrap(), image(3000));
        assert_eq!(&c.inspect_keystore(0, 32).unwrap()[..], &KEY);
        assert!(c.fired_faults().is_empty());
    });
}

#[test]
fn flash_programming_only_clears_bits() {
    let mut t = board(FaultPlan::none());
    t.erase().unwrap();
    t.blank_check(0, 1 << 20).unwrap();
    t.program(0x10, &[0xF0, 0x0F, 0xAA]).unwrap();
    t.verify(0x10, &[0xF0, 0x0F, 0xAA]).unwrap();
    // Second write to the same page without erase: 0xF0 & 0x3C = 0x30, needs 0->1 for 0x3C.
    t.program(0x10, &[0x3C]).unwrap();
    let e = t.verify(0x10, &[0x3C]).unwrap_err();
    assert_eq!(
        e,
        TargetError::VerifyMismatch {
            stage: Stage::Verify,
            address: 0x10,
            expected: vec![0x3C],
            found: vec![0x30],
        }
    );
    // Clearing more bits works without erase.
    t.program(0x11, &[0x0E]).unwrap();
    t.verify(0x11, &[0x0E]).unwrap();
    assert_eq!(
        t.blank_check(0, 0x100).unwrap_err(),
        TargetError::NotBlank {
            address: 0x10,
            found: 0x30
        }
    );
    // Writes across page boundaries land where they should.
    t.program(0xF0, &image(0x220)).unwrap();
    t.verify(0xF0, &image(0x220)).unwrap();
    // Erase brings everything back to 0xFF.
    t.erase().unwrap();
    t.blank_check(0, 1 << 20).unwrap();
    assert!(t.chip().lock().unwrap().flash_is_blank());
}

#[test]
fn out_of_range_and_not_connected() {
    let mut t = zero().target(0, FaultPlan::none());
    let e = t.identify().unwrap_err();
    assert!(matches!(
        e,
        TargetError::Protocol {
            stage: Stage::Identify,
            ..
        }
    ));
    t.connect().unwrap();
    let e = t.program((1 << 20) - 2, &[0; 4]).unwrap_err();
    assert_eq!(
        e,
        TargetError::OutOfRange {
            stage: Stage::Program,
            address: (1 << 20) - 2,
            length: 4
        }
    );
    let mut buf = [0u8; 2];
    assert_eq!(
        t.read(1 << 20, &mut buf).unwrap_err().stage(),
        Some(Stage::Verify)
    );
    let e = t
        .store_secret(Location::new(Space::Eeprom, 0), &[1])
        .unwrap_err();
    assert!(matches!(
        e,
        TargetError::InvalidRequest {
            stage: Stage::StoreSecret,
            ..
        }
    ));
    let e = t
        .store_secret(Location::new(Space::KeyStore, 4090), &[1; 8])
        .unwrap_err();
    assert!(matches!(
        e,
        TargetError::InvalidRequest {
            stage: Stage::StoreSecret,
            ..
        }
    ));
}

#[test]
fn secrets_in_flash_follow_flash_rules() {
    let mut t = board(FaultPlan::none());
    t.erase().unwrap();
    let at = Location::new(Space::Flash, 0x8000);
    t.store_secret(at, &KEY).unwrap();
    assert_eq!(
        t.chip().lock().unwrap().inspect_flash(0x8000, 32).unwrap(),
        KEY.to_vec()
    );
    // Not erased there any more: a different secret cannot be written over it.
    assert_eq!(
        t.store_secret(at, &[0xBD; 32]).unwrap_err(),
        TargetError::SecretMismatch { location: at }
    );
    // The key store rewrites in place.
    t.store_secret(IDENTITY, &[0x01; 32]).unwrap();
    t.store_secret(IDENTITY, &KEY).unwrap();
}

#[test]
fn readout_lock_refuses_access_and_erase_unlocks() {
    let mut t = board(FaultPlan::none());
    t.erase().unwrap();
    t.program(0, &image(512)).unwrap();
    t.store_secret(IDENTITY, &KEY).unwrap();
    t.set_lock(LockPermission::unchecked(LockLevel::Readout))
        .unwrap();
    let state = t.read_lock().unwrap();
    assert_eq!((state.level, state.raw), (LockLevel::Readout, vec![0x00]));

    let mut buf = [0u8; 16];
    assert_eq!(
        t.read(0, &mut buf).unwrap_err(),
        TargetError::AlreadyLocked {
            stage: Stage::Verify,
            level: LockLevel::Readout,
            address: Some(0)
        }
    );
    assert_eq!(
        t.program(0x1000, &[0]).unwrap_err().stage(),
        Some(Stage::Program)
    );
    assert!(matches!(
        t.store_secret(IDENTITY, &KEY).unwrap_err(),
        TargetError::AlreadyLocked {
            stage: Stage::StoreSecret,
            ..
        }
    ));
    assert!(matches!(
        t.generate_key(IDENTITY).unwrap_err(),
        TargetError::AlreadyLocked {
            stage: Stage::Keygen,
            ..
        }
    ));
    assert!(matches!(
        t.blank_check(0, 16).unwrap_err(),
        TargetError::AlreadyLocked {
            stage: Stage::BlankCheck,
            ..
        }
    ));
    // The agent still answers: firmware reads its own flash.
    let req = request(0, 512);
    let reply = t.challenge(&req).unwrap();
    let info = t.identify().unwrap();
    assert_eq!(info.lock.level, LockLevel::Readout);
    let _proof = verify_challenge_reply(
        &public_key(&KEY).unwrap(),
        &req.nonce,
        &info.uid,
        &firmware_digest_of_image(0, &image(512), &req.regions).unwrap(),
        &reply,
    )
    .unwrap();

    // A chip erase unlocks and destroys the keys.
    t.erase().unwrap();
    assert_eq!(t.read_lock().unwrap().level, LockLevel::None);
    let chip = t.chip();
    let c = chip.lock().unwrap();
    assert!(c.flash_is_blank());
    assert!(c
        .inspect_keystore(0, 4096)
        .unwrap()
        .iter()
        .all(|&b| b == 0xFF));
    assert_eq!(c.lock_state().raw, vec![0xAA]);
}

#[test]
fn permanent_lock_cannot_be_undone() {
    let mut t = board(FaultPlan::none());
    t.set_lock(LockPermission::unchecked(LockLevel::Readout))
        .unwrap();
    t.set_lock(LockPermission::unchecked(LockLevel::Permanent))
        .unwrap();
    assert_eq!(
        t.erase().unwrap_err(),
        TargetError::AlreadyLocked {
            stage: Stage::Erase,
            level: LockLevel::Permanent,
            address: None
        }
    );
    assert!(matches!(
        t.set_lock(LockPermission::unchecked(LockLevel::Readout))
            .unwrap_err(),
        TargetError::AlreadyLocked {
            stage: Stage::Lock,
            level: LockLevel::Permanent,
            ..
        }
    ));
    let state = t.read_lock().unwrap();
    assert_eq!((state.level, state.raw), (LockLevel::Permanent, vec![0xCC]));
    // A permission for "none" locks nothing and is refused.
    let mut u = board(FaultPlan::none());
    assert!(matches!(
        u.set_lock(LockPermission::unchecked(LockLevel::None))
            .unwrap_err(),
        TargetError::InvalidRequest {
            stage: Stage::Lock,
            ..
        }
    ));
    assert_eq!(u.read_lock().unwrap().level, LockLevel::None);
}

#[test]
fn challenge_with_right_wrong_and_missing_key() {
    let mut t = board(FaultPlan::none());
    t.erase().unwrap();
    let fw = image(2048);
    t.program(0, &fw).unwrap();
    let uid = t.identify().unwrap().uid;
    let req = ChallengeRequest {
        nonce: [3; 32],
        regions: vec![FlashRange::new(0x400, 0x400), FlashRange::new(0, 0x100)],
    };
    let expected = firmware_digest_of_image(0, &fw, &req.regions).unwrap();

    // Missing key: the key store is erased.
    let e = t.challenge(&req).unwrap_err();
    match &e {
        TargetError::Agent { stage, code, .. } => {
            assert_eq!((*stage, *code), (Stage::Challenge, Some(0x04)));
        }
        other => panic!("{other}"),
    }

    // Right key.
    t.store_secret(IDENTITY, &KEY).unwrap();
    let reply = t.challenge(&req).unwrap();
    assert_eq!(reply.firmware_digest, expected);
    let _proof = verify_challenge_reply(
        &public_key(&KEY).unwrap(),
        &req.nonce,
        &uid,
        &expected,
        &reply,
    )
    .unwrap();

    // Wrong key injected: the certificate's key does not verify.
    t.store_secret(IDENTITY, &[0x43; 32]).unwrap();
    let reply = t.challenge(&req).unwrap();
    assert_eq!(
        verify_challenge_reply(
            &public_key(&KEY).unwrap(),
            &req.nonce,
            &uid,
            &expected,
            &reply
        ),
        Err(AgentError::BadSignature)
    );

    // Key at the wrong place: the agent reads blank.
    t.erase().unwrap();
    t.program(0, &fw).unwrap();
    t.store_secret(Location::new(Space::KeyStore, 0x40), &KEY)
        .unwrap();
    assert!(matches!(
        t.challenge(&req).unwrap_err(),
        TargetError::Agent {
            code: Some(0x04),
            ..
        }
    ));

    // A region outside flash.
    t.store_secret(IDENTITY, &KEY).unwrap();
    assert!(matches!(
        t.challenge(&request(0xFFFF_FF00, 0x200)).unwrap_err(),
        TargetError::Agent {
            code: Some(0x05),
            ..
        }
    ));

    // Firmware differs from the job's image.
    t.program(0x500, &[0x00]).unwrap();
    let reply = t.challenge(&req).unwrap();
    assert!(matches!(
        verify_challenge_reply(
            &public_key(&KEY).unwrap(),
            &req.nonce,
            &uid,
            &expected,
            &reply
        ),
        Err(AgentError::FirmwareDigestMismatch { .. })
    ));

    // Too many regions is the caller's mistake.
    let many = ChallengeRequest {
        nonce: [0; 32],
        regions: vec![FlashRange::new(0, 1); 17],
    };
    assert!(matches!(
        t.challenge(&many).unwrap_err(),
        TargetError::InvalidRequest {
            stage: Stage::Challenge,
            ..
        }
    ));
}

#[test]
fn on_chip_keygen_key_is_used_by_agent() {
    let mut t = board(FaultPlan::none());
    t.erase().unwrap();
    t.program(0, &image(256)).unwrap();
    let public = t.generate_key(IDENTITY).unwrap();
    assert_eq!(public[0], 0x04);
    let uid = t.identify().unwrap().uid;
    let req = request(0, 256);
    let reply = t.challenge(&req).unwrap();
    let expected = firmware_digest_of_image(0, &image(256), &req.regions).unwrap();
    let _proof = verify_challenge_reply(&public, &req.nonce, &uid, &expected, &reply).unwrap();
    // Deterministic from the seed.
    let mut again = board(FaultPlan::none());
    assert_eq!(again.generate_key(IDENTITY).unwrap(), public);
}

#[test]
fn identity_location_is_configurable() {
    let cfg = SimConfig {
        identity: Location::new(Space::Flash, 0xF_0000),
        ..zero()
    };
    let mut t = cfg.target(1, FaultPlan::none());
    t.connect().unwrap();
    t.erase().unwrap();
    t.program(0, &image(64)).unwrap();
    t.store_secret(Location::new(Space::Flash, 0xF_0000), &KEY)
        .unwrap();
    let uid = t.identify().unwrap().uid;
    let req = request(0, 64);
    let reply = t.challenge(&req).unwrap();
    let expected = firmware_digest_of_image(0, &image(64), &req.regions).unwrap();
    let _proof = verify_challenge_reply(
        &public_key(&KEY).unwrap(),
        &req.nonce,
        &uid,
        &expected,
        &reply,
    )
    .unwrap();
}

/// Runs `provision` on a board with `fault` and returns the error.
fn fail_with(fault: Fault) -> (TargetError, std::sync::Arc<std::sync::Mutex<SimChip>>) {
    let mut t = zero().target(3, FaultPlan::one(fault));
    let e = provision(&mut t, &image(4096), &KEY).expect_err("the fault must fail the unit");
    (e, t.chip())
}

#[test]
fn every_fault_fails_in_its_stage_and_never_locks() {
    let mut faults: Vec<Fault> = Stage::ALL
        .iter()
        .flat_map(|s| [Fault::ContactLost(*s), Fault::Timeout(*s)])
        .collect();
    faults.extend([
        Fault::BitError,
        Fault::BrownOut,
        Fault::WrongSignature,
        Fault::WrongDevice,
        Fault::AlreadyLocked(LockLevel::Readout),
        Fault::AlreadyLocked(LockLevel::Permanent),
    ]);
    for fault in faults {
        let (e, chip) = fail_with(fault);
        assert_eq!(e.stage(), Some(fault.stage()), "{fault}: {e}");
        let c = chip.lock().unwrap();
        assert_eq!(c.fired_faults(), &[fault], "{fault}");
        match fault {
            Fault::ContactLost(_) => assert!(matches!(e, TargetError::ContactLost { .. }), "{e}"),
            Fault::Timeout(_) => assert!(matches!(e, TargetError::Timeout { .. }), "{e}"),
            Fault::BitError => assert!(matches!(e, TargetError::VerifyMismatch { .. }), "{e}"),
            Fault::BrownOut => assert!(matches!(e, TargetError::BrownOut { .. }), "{e}"),
            Fault::WrongSignature => {
                assert!(e.to_string().contains("does not verify"), "{e}")
            }
            Fault::WrongDevice => assert_eq!(
                e,
                TargetError::WrongDevice {
                    expected: DEVICE_TYPE.into(),
                    found: WRONG_DEVICE_TYPE.into()
                }
            ),
            Fault::AlreadyLocked(level) => {
                assert!(matches!(e, TargetError::AlreadyLocked { level: l, .. } if l == level));
            }
        }
        // A unit that failed is never locked (boards that arrived locked stay as they came).
        let expected_lock = match fault {
            Fault::AlreadyLocked(level) => level,
            // Contact lost / timeout during lock readback happen after the lock was set.
            Fault::ContactLost(Stage::LockReadback) | Fault::Timeout(Stage::LockReadback) => {
                LockLevel::Readout
            }
            _ => LockLevel::None,
        };
        assert_eq!(c.lock_state().level, expected_lock, "{fault}");
    }
}

#[test]
fn program_faults_strike_mid_write() {
    // Brown-out: earlier pages written, the faulty page half written, later pages blank.
    let (e, chip) = fail_with(Fault::BrownOut);
    let page = 256u32;
    let fw = image(4096);
    let at = e.address().unwrap();
    assert_eq!(at, 8 * page);
    let c = chip.lock().unwrap();
    assert_eq!(c.inspect_flash(0, at).unwrap(), fw[..at as usize].to_vec());
    let faulty = c.inspect_flash(at, page).unwrap();
    assert_eq!(faulty[..128], fw[at as usize..at as usize + 128]);
    assert!(faulty[128..].iter().all(|&b| b == 0xFF));
    assert!(c
        .inspect_flash(at + page, 4096 - at - page)
        .unwrap()
        .iter()
        .all(|&b| b == 0xFF));
    drop(c);

    // After contact loss the board needs connect again.
    let mut t = zero().target(0, FaultPlan::one(Fault::ContactLost(Stage::Program)));
    t.connect().unwrap();
    assert_eq!(
        t.program(0, &fw).unwrap_err(),
        TargetError::ContactLost {
            stage: Stage::Program,
            address: Some(8 * page)
        }
    );
    assert!(matches!(
        t.verify(0, &fw).unwrap_err(),
        TargetError::Protocol { .. }
    ));
    t.connect().unwrap();
    t.program(8 * page, &fw[8 * page as usize..]).unwrap();
    t.verify(0, &fw).unwrap();

    // Bit error: one bit differs, verify names the address.
    let (e, chip) = fail_with(Fault::BitError);
    match e {
        TargetError::VerifyMismatch {
            address,
            expected,
            found,
            ..
        } => {
            assert_eq!(address / page, 8);
            assert_eq!((expected[0] ^ found[0]).count_ones(), 1);
            assert_eq!(expected[1..], found[1..]);
        }
        other => panic!("{other}"),
    }
    assert_eq!(chip.lock().unwrap().lock_state().level, LockLevel::None);
}

#[test]
fn already_locked_board_carries_old_provisioning() {
    let mut t = zero().target(5, FaultPlan::one(Fault::AlreadyLocked(LockLevel::Readout)));
    t.connect().unwrap();
    let info = t.identify().unwrap();
    assert_eq!(info.lock.level, LockLevel::Readout);
    let chip = t.chip();
    {
        let c = chip.lock().unwrap();
        assert!(!c.flash_is_blank());
        assert!(c
            .inspect_keystore(0, 32)
            .unwrap()
            .iter()
            .any(|&b| b != 0xFF));
    }
    // Erasing would destroy that identity; the chip allows it (readout level), which is why
    // the appliance checks `expect_unlocked` first.
    t.erase().unwrap();
    assert!(chip.lock().unwrap().flash_is_blank());
}

#[test]
fn uids_are_deterministic_and_distinct() {
    let a = SimConfig { seed: 1, ..zero() };
    let b = SimConfig { seed: 2, ..zero() };
    assert_eq!(a.uid(17), a.clone().uid(17));
    assert_ne!(a.uid(17), b.uid(17));
    assert_eq!(a.uid(0)[..4], a.uid(99)[..4]); // same lot
    let uids: HashSet<[u8; UID_LEN]> = (0..10_000).map(|i| a.uid(i)).collect();
    assert_eq!(uids.len(), 10_000);

    // Through the fixture: identify reports the same UID.
    let mut fx = SimFixture::new(a.clone()).unwrap();
    let mut t = fx.next_board().unwrap().unwrap();
    t.connect().unwrap();
    assert_eq!(t.identify().unwrap().uid, a.uid(0).to_vec());
    assert_eq!(fx.board(0).unwrap().uid, a.uid(0).to_vec());
}

#[test]
fn fixture_clones_share_one_counter_across_threads() {
    let fx = SimFixture::from_options("sim:seed=11,boards=60,pace=off,keep=on").unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let mut channel = fx.clone();
            std::thread::spawn(move || {
                let mut uids = Vec::new();
                while let Some(mut t) = channel.next_board().unwrap() {
                    t.connect().unwrap();
                    uids.push(t.identify().unwrap().uid);
                }
                uids
            })
        })
        .collect();
    let all: Vec<Vec<u8>> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 60);
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 60);
    assert_eq!(fx.produced(), 60);
    let expected: HashSet<Vec<u8>> = (0..60).map(|i| fx.config().uid(i).to_vec()).collect();
    assert_eq!(all.into_iter().collect::<HashSet<_>>(), expected);
    assert_eq!(fx.boards().len(), 60);
    let mut more = fx.clone();
    assert!(more.next_board().unwrap().is_none());
}

#[test]
fn random_faults_are_deterministic() {
    let cfg = SimConfig {
        fault_rate: 0.3,
        ..zero()
    };
    let plans: Vec<FaultPlan> = (0..1000).map(|i| cfg.faults_for(i)).collect();
    assert_eq!(
        plans,
        (0..1000).map(|i| cfg.faults_for(i)).collect::<Vec<_>>()
    );
    let faulty = plans.iter().filter(|p| !p.faults.is_empty()).count();
    assert!((200..400).contains(&faulty), "{faulty}");
    let kinds: HashSet<String> = plans
        .iter()
        .flat_map(|p| p.faults.iter())
        .map(|f| f.to_string().split('@').next().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.len(), 7, "{kinds:?}");
    // Listed faults replace the random draw for that board.
    let cfg = SimConfig {
        fault_rate: 1.0,
        faults: vec![(4, Fault::BrownOut), (4, Fault::BitError)],
        ..zero()
    };
    assert_eq!(
        cfg.faults_for(4).faults,
        vec![Fault::BrownOut, Fault::BitError]
    );
    assert_eq!(cfg.faults_for(5).faults.len(), 1);
    assert!(zero().faults_for(5).faults.is_empty());
}

#[test]
fn computed_bus_time_of_a_small_realistic_unit() {
    let cfg = SimConfig {
        timing: SimTiming::realistic(),
        pace: false,
        ..zero()
    };
    let mut t = cfg.target(0, FaultPlan::none());
    let mut last = Duration::ZERO;
    let mut step = |t: &SimTarget| {
        let now = t.bus_time();
        let d = now - last;
        last = now;
        d
    };
    // 8 MHz, 8 bits per byte: 1 us per byte on the wire, 4 bytes overhead per 256-byte transfer.
    t.connect().unwrap(); // 4 + 4
    assert_eq!(step(&t), Duration::from_micros(8));
    t.identify().unwrap(); // 4 + 12 uid + 3 signature + 1 lock, + 4
    assert_eq!(step(&t), Duration::from_micros(24));
    t.erase().unwrap(); // command + 20 ms
    assert_eq!(step(&t), Duration::from_micros(8 + 20_000));
    t.program(0x80, &image(512)).unwrap(); // pages: 128 + 256 + 128 bytes
    assert_eq!(
        step(&t),
        Duration::from_micros((132 + 1400) + (260 + 1400) + (132 + 1400))
    );
    t.verify(0x80, &image(512)).unwrap(); // one 512-byte read: 2 transfers
    assert_eq!(step(&t), Duration::from_micros(520));
    t.store_secret(IDENTITY, &KEY).unwrap(); // 32 bytes + page erase + page write, read back 32
    assert_eq!(step(&t), Duration::from_micros(36 + 2000 + 1400 + 36));
    t.set_lock(LockPermission::unchecked(LockLevel::Readout))
        .unwrap();
    assert_eq!(step(&t), Duration::from_micros(9 + 1400));
    t.read_lock().unwrap();
    assert_eq!(step(&t), Duration::from_micros(9));
    // Challenge at 115200 baud 8N1: hello 6 + reply 4+1+1+14+1+12+2 = 35 bytes; challenge
    // 4+41+2 = 47 bytes, reply 102 bytes; SHA-256 of 512 bytes at 20 ns/byte; signature 30 ms.
    t.challenge(&request(0x80, 512)).unwrap();
    let uart = |bytes: u64| Duration::from_nanos((bytes * 10 * 1_000_000_000).div_ceil(115_200));
    assert_eq!(
        step(&t),
        uart(6)
            + uart(35)
            + uart(47)
            + uart(102)
            + Duration::from_nanos(512 * 20)
            + Duration::from_millis(30)
    );
    // Hello happens once per connection.
    t.challenge(&request(0x80, 512)).unwrap();
    assert_eq!(
        step(&t),
        uart(47) + uart(102) + Duration::from_nanos(512 * 20) + Duration::from_millis(30)
    );
    // The chip keeps the sum too.
    assert_eq!(t.chip().lock().unwrap().bus_time(), t.bus_time());

    // Helpers agree with the hand computation for a whole 1 MiB image: 4096 pages of
    // (256 + 4) us + 1.4 ms.
    let timing = SimTiming::realistic();
    assert_eq!(timing.program_ns(0, 1 << 20), 4096 * (260 + 1400) * 1000);
    assert_eq!(timing.read_ns(1 << 20), (4096 * 260) * 1000);

    // Zero timing costs nothing.
    let mut z = board(FaultPlan::none());
    z.erase().unwrap();
    z.program(0, &image(4096)).unwrap();
    assert_eq!(z.bus_time(), Duration::ZERO);
}

#[test]
fn timeout_fault_costs_the_timeout() {
    let cfg = SimConfig {
        timing: SimTiming::realistic(),
        pace: false,
        ..zero()
    };
    let mut t = cfg.target(0, FaultPlan::one(Fault::Timeout(Stage::Erase)));
    t.connect().unwrap();
    let before = t.bus_time();
    let e = t.erase().unwrap_err();
    assert_eq!(
        e,
        TargetError::Timeout {
            stage: Stage::Erase,
            address: None,
            timeout: Duration::from_millis(100)
        }
    );
    assert_eq!(t.bus_time() - before, Duration::from_millis(100));
    assert!(e.to_string().contains("within 100 ms"));
}

#[test]
fn paced_unit_runs() {
    // Exercises the sleeping path on a tiny unit; no wall-clock assertion.
    let cfg = SimConfig {
        timing: SimTiming::realistic(),
        pace: true,
        ..zero()
    };
    let mut t = cfg.target(0, FaultPlan::none());
    t.connect().unwrap();
    t.program(0, &image(600)).unwrap();
    t.verify(0, &image(600)).unwrap();
    t.settle();
    assert!(t.bus_time() > Duration::from_millis(4));
}

#[test]
fn option_strings() {
    let c: SimConfig = "sim:seed=7,timing=realistic,fault-rate=0.02,boards=200"
        .parse()
        .unwrap();
    assert_eq!(c.seed, 7);
    assert_eq!(c.timing, SimTiming::realistic());
    assert_eq!(c.fault_rate, 0.02);
    assert_eq!(c.boards, Some(200));
    assert!(c.pace);

    let c: SimConfig = "page-size=512, timing=zero, seed=0x10, fault=3:contact-lost@blank-check, \
                        fault=4:already-locked@permanent, fault=5:bit-error, flash-size=256k, \
                        flash-base=0x08000000, keystore-size=8k, identity=flash:0x100, \
                        device-type=acme-mcu, bus-hz=4000000, agent-baud=9600, pace=off, keep=off"
        .parse()
        .unwrap();
    assert_eq!(c.seed, 16);
    assert_eq!(c.timing.page_size, 512);
    assert_eq!(c.timing.bus_hz, 4_000_000);
    assert_eq!(c.timing.agent_baud, 9600);
    assert_eq!(c.flash_size, 256 * 1024);
    assert_eq!(c.flash_base, 0x0800_0000);
    assert_eq!(c.keystore_size, 8192);
    assert_eq!(c.identity, Location::new(Space::Flash, 0x100));
    assert_eq!(c.device_type, "acme-mcu");
    assert!(!c.pace && !c.keep_boards);
    assert_eq!(
        c.faults,
        vec![
            (3, Fault::ContactLost(Stage::BlankCheck)),
            (4, Fault::AlreadyLocked(LockLevel::Permanent)),
            (5, Fault::BitError)
        ]
    );
    assert_eq!("sim:".parse::<SimConfig>().unwrap(), SimConfig::default());
    assert_eq!("sim".parse::<SimConfig>().unwrap(), SimConfig::default());

    for (bad, key) in [
        ("sim:colour=blue", "colour"),
        ("sim:seed=x", "seed"),
        ("sim:fault-rate=1.5", "fault-rate"),
        ("sim:timing=fast", "timing"),
        ("sim:fault=3:melted", "fault"),
        ("sim:fault=brown-out", "fault"),
        ("sim:fault=1:contact-lost", "fault"),
        ("sim:fault=1:already-locked@none", "fault"),
        ("sim:pace=maybe", "pace"),
        ("sim:flash-size=5g", "flash-size"),
        ("sim:identity=rom:0", "identity"),
        ("sim:seed", "option"),
    ] {
        let e = bad.parse::<SimConfig>().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(key), "{bad}: {msg}");
    }
    for invalid in [
        "sim:page-size=300",
        "sim:flash-size=1000",
        "sim:identity=keystore:0x0ff0",
        "sim:flash-base=0xFFFFFF00",
        "sim:device-type=has space",
    ] {
        assert!(
            matches!(invalid.parse::<SimConfig>(), Err(SimError::Invalid { .. })),
            "{invalid}"
        );
    }
    // Fault names round-trip.
    for f in [
        Fault::ContactLost(Stage::LockReadback),
        Fault::Timeout(Stage::Keygen),
        Fault::BitError,
        Fault::BrownOut,
        Fault::WrongSignature,
        Fault::WrongDevice,
        Fault::AlreadyLocked(LockLevel::Readout),
    ] {
        assert_eq!(f.to_string().parse::<Fault>().unwrap(), f);
    }
}

#[test]
fn fixture_from_options_applies_faults_and_limit() {
    let mut fx =
        SimFixture::from_options("sim:seed=3,boards=3,fault=1:wrong-device,keep=on").unwrap();
    let mut types = Vec::new();
    while let Some(mut t) = fx.next_board().unwrap() {
        t.connect().unwrap();
        types.push(t.identify().unwrap().device_type);
    }
    assert_eq!(types, vec![DEVICE_TYPE, WRONG_DEVICE_TYPE, DEVICE_TYPE]);
    assert_eq!(fx.board(1).unwrap().faults, vec![Fault::WrongDevice]);
    assert_eq!(
        fx.board(1)
            .unwrap()
            .with_chip(|c| c.planned_faults().to_vec()),
        vec![Fault::WrongDevice]
    );
}

#[test]
fn debug_output_shows_no_secrets() {
    let mut t = board(FaultPlan::none());
    t.store_secret(IDENTITY, &KEY).unwrap();
    let chip = t.chip();
    let shown = format!("{:?} {:?}", chip.lock().unwrap(), t);
    assert!(!shown.contains("4242"), "{shown}");
    assert!(!shown.contains("66, 66"), "{shown}");
}

#[test]
fn agent_skips_garbage_before_a_frame() {
    let mut t = board(FaultPlan::none());
    t.erase().unwrap();
    t.program(0, &image(64)).unwrap();
    t.store_secret(IDENTITY, &KEY).unwrap();
    let chip = t.chip();
    {
        let mut c = chip.lock().unwrap();
        let mut bytes = vec![0x00, 0x13, 0xA5];
        bytes.extend(flashgate_agent::Message::Hello.encode().unwrap());
        let out = c.agent_receive(&bytes);
        let mut d = flashgate_agent::Decoder::new();
        d.feed(&out);
        let mut replies = Vec::new();
        while let Some(f) = d.next_frame() {
            replies.push(flashgate_agent::Message::decode(&f.unwrap()).unwrap());
        }
        // The false start "A5 A5 01 00 .." parses as a frame with a bad CRC, which the agent
        // answers with BadFrame; then it finds the real Hello.
        assert_eq!(
            replies[0],
            flashgate_agent::Message::Error {
                code: flashgate_agent::ErrorCode::BadFrame
            }
        );
        assert!(matches!(
            replies.last().unwrap(),
            flashgate_agent::Message::HelloReply { .. }
        ));
    }
    t.challenge(&request(0, 64)).unwrap();
}
