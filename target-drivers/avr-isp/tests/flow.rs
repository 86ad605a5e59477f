//! Driver against the simulator, in process over `Loopback`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use flashgate_avr_isp::bench::programming_floor;
use flashgate_avr_isp::sim::{AvrSim, AvrSimConfig, AvrTiming, LOCKED_READ};
use flashgate_avr_isp::uid::serial_offset;
use flashgate_avr_isp::{AvrIspConfig, AvrIspTarget, ATMEGA2560, ATMEGA328P};
use flashgate_serial::Loopback;
use flashgate_target::{
    Capability, ChallengeRequest, FlashRange, Location, LockLevel, LockPermission, Space, Stage,
    Target, TargetError,
};

/// 32 KiB image with the last 512 bytes (where the key goes) left erased.
fn image_328p() -> Vec<u8> {
    let mut image = pseudo_random(32 * 1024, 7);
    image[0x7E00..].fill(0xFF);
    image
}

#[test]
fn full_flow_328p_key_in_flash() {
    let sim = sim(&ATMEGA328P, "seed=3");
    let mut t = driver(&sim, &ATMEGA328P);
    assert!(!t.capabilities().contains(Capability::OnChipKeygen));
    assert!(t.capabilities().contains(Capability::AnswerChallenge));
    let image = image_328p();
    let key = identity_key(1);
    let at: Location = "flash:0x7E00".parse().unwrap();
    provision(&mut t, &image, at, &key, vec![FlashRange::new(0, 0x7E00)]).unwrap();
    assert_eq!(t.programmer_version(), (2, 1, 18));
    let id = t.identity().unwrap().clone();
    assert_eq!(id.uid, sim.uid());
    assert_eq!(id.uid.len(), 11);
    assert_eq!(&id.uid[..3], &[0x1E, 0x95, 0x0F]);
    sim.with_chip(|c| {
        assert_eq!(c.lock(), 0xFC);
        assert_eq!(&c.flash()[..0x7E00], &image[..0x7E00]);
        assert_eq!(&c.flash()[0x7E00..0x7E20], &key);
        assert_eq!(c.stats().ignored_busy, 0);
        // The serial survived the chip erase.
        let s = serial_offset(c.part()) as usize;
        assert!(c.eeprom()[s..].iter().any(|&b| b != 0xFF));
    });
    // Locked (LB mode 3): reads over ISP no longer show the firmware.
    let mut buf = [0u8; 16];
    t.read(0, &mut buf).unwrap();
    assert_eq!(buf, [LOCKED_READ; 16]);
    let e = t.verify(0, &image[..256]).unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::VerifyMismatch {
                stage: Stage::Verify,
                ..
            }
        ),
        "{e}"
    );
    // A locked board coming round again is refused at identify.
    t.connect().unwrap();
    let info = t.identify().unwrap();
    assert_eq!(info.lock.level, LockLevel::Readout);
    assert_eq!(info.lock.raw, vec![0xFC]);
    assert!(matches!(
        info.expect_unlocked().unwrap_err(),
        TargetError::AlreadyLocked { .. }
    ));
    // Erase unlocks it; but LB mode 3 hid the serial from the driver, so without EESAVE
    // the chip erase took it (such a board needs its serial written again).
    t.erase().unwrap();
    assert_eq!(t.read_lock().unwrap().level, LockLevel::None);
    t.blank_check(0, 4096).unwrap();
    let e = t.identify().unwrap_err();
    assert!(e.to_string().contains("no serial number"), "{e}");
}

#[test]
fn full_flow_key_in_eeprom() {
    let sim = sim(&ATMEGA328P, "seed=4,identity=eeprom:0x0010");
    let mut t = driver(&sim, &ATMEGA328P);
    let image = pseudo_random(3000, 9);
    let key = identity_key(2);
    let at: Location = "eeprom:0x0010".parse().unwrap();
    provision(&mut t, &image, at, &key, vec![FlashRange::new(0, 3000)]).unwrap();
    sim.with_chip(|c| assert_eq!(&c.eeprom()[0x10..0x30], &key));
    // Odd EEPROM offsets go byte by byte.
    let mut t = driver(&sim, &ATMEGA328P);
    t.connect().unwrap();
    t.erase().unwrap();
    t.store_secret(Location::new(Space::Eeprom, 0x101), &key)
        .unwrap();
    sim.with_chip(|c| assert_eq!(&c.eeprom()[0x101..0x121], &key));
    // The serial at the end of EEPROM is off limits.
    let e = t
        .store_secret(Location::new(Space::Eeprom, 0x3F0), &key)
        .unwrap_err();
    assert!(e.to_string().contains("board serial"), "{e}");
    let e = t
        .store_secret(Location::new(Space::KeyStore, 0), &key)
        .unwrap_err();
    assert!(e.to_string().contains("no keystore space"), "{e}");
}

#[test]
fn realistic_timing_meets_the_floor_and_respects_write_times() {
    let c = AvrSimConfig {
        timing: AvrTiming::realistic(),
        ..AvrSimConfig::default()
    };
    let sim = AvrSim::new(&c).unwrap();
    let mut t = driver(&sim, &ATMEGA328P);
    t.connect().unwrap();
    t.identify().unwrap();
    t.erase().unwrap();
    let image = image_328p();
    let before = sim.programmer_time();
    t.program(0, &image).unwrap();
    let took = sim.programmer_time() - before;
    let floor = programming_floor(&ATMEGA328P, &c.timing, 32 * 1024);
    assert!(
        took >= floor.total.mul_f64(0.99),
        "{took:?} < {:?}",
        floor.total
    );
    // Signature checks every 16 pages cost a few percent at most.
    assert!(
        took <= floor.total.mul_f64(1.03),
        "{took:?} vs {:?}",
        floor.total
    );
    t.verify(0, &image).unwrap();
    t.store_secret("eeprom:0x0000".parse().unwrap(), &identity_key(3))
        .unwrap();
    t.set_lock(LockPermission::unchecked(LockLevel::Readout))
        .unwrap();
    sim.with_chip(|c| {
        // The driver waited out every erase and write: nothing was ignored as busy.
        assert_eq!(c.stats().ignored_busy, 0, "{:?}", c.stats());
        assert_eq!(c.lock(), 0xFC);
        assert_eq!(c.stats().chip_erases, 1);
    });
}

#[test]
fn atmega2560_extended_addressing() {
    let sim = sim(&ATMEGA2560, "seed=5,identity=flash:0x3FF00");
    let mut t = driver(&sim, &ATMEGA2560);
    t.connect().unwrap();
    // The driver was told 328p but finds a 2560 and says so.
    let mut t328 = driver(&sim, &ATMEGA328P);
    t328.connect().unwrap();
    let info = t328.identify().unwrap();
    assert_eq!(info.device_type, "atmega2560");
    assert_eq!(
        info.expect_device_type("atmega328p").unwrap_err(),
        TargetError::WrongDevice {
            expected: "atmega328p".into(),
            found: "atmega2560".into()
        }
    );
    drop(t328);
    t.connect().unwrap();
    let info = t.identify().unwrap();
    assert_eq!(info.flash.size, 256 * 1024);
    assert_eq!(info.signature, vec![0x1E, 0x98, 0x01]);
    t.erase().unwrap();
    // Straddle the 128 KiB (64 K-word) boundary.
    let base = 0x1F000;
    let image = pseudo_random(0x2000, 11);
    t.program(base, &image).unwrap();
    t.verify(base, &image).unwrap();
    sim.with_chip(|c| {
        assert_eq!(
            &c.flash()[base as usize..base as usize + 0x2000],
            &image[..]
        );
        assert!(c.flash()[..base as usize].iter().all(|&b| b == 0xFF));
    });
    let key = identity_key(5);
    t.store_secret("flash:0x3FF00".parse().unwrap(), &key)
        .unwrap();
    let regions = vec![FlashRange::new(base, 0x2000)];
    let request = ChallengeRequest {
        nonce: [1; 32],
        regions: regions.clone(),
    };
    let reply = t.challenge(&request).unwrap();
    let digest = flashgate_agent::firmware_digest_of_image(base, &image, &regions).unwrap();
    let proof = flashgate_agent::verify_challenge_reply(
        &flashgate_agent::public_key(&key).unwrap(),
        &request.nonce,
        &info.uid,
        &digest,
        &reply,
    )
    .unwrap();
    assert_eq!(proof.uid(), &info.uid[..]);
    t.set_lock(LockPermission::after(proof, LockLevel::Readout))
        .unwrap();
    assert_eq!(t.read_lock().unwrap().raw, vec![0xFC]);
    // Out of range.
    let e = t.program(256 * 1024 - 2, &[0; 4]).unwrap_err();
    assert!(matches!(
        e,
        TargetError::OutOfRange {
            stage: Stage::Program,
            ..
        }
    ));
}

#[test]
fn blank_key_is_refused_by_the_agent() {
    let sim = sim(&ATMEGA328P, "");
    let mut t = driver(&sim, &ATMEGA328P);
    t.connect().unwrap();
    t.identify().unwrap();
    t.erase().unwrap();
    t.program(0, &[0x0C, 0x94]).unwrap();
    let e = t
        .challenge(&ChallengeRequest {
            nonce: [0; 32],
            regions: vec![FlashRange::new(0, 2)],
        })
        .unwrap_err();
    match &e {
        TargetError::Agent { stage, code, .. } => {
            assert_eq!((*stage, *code), (Stage::Challenge, Some(0x04)));
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("no valid identity key"), "{e}");
    sim.with_chip(|c| assert_eq!(c.lock(), 0xFF));
}

#[test]
fn secret_over_programmed_flash_does_not_read_back() {
    let sim = sim(&ATMEGA328P, "");
    let mut t = driver(&sim, &ATMEGA328P);
    t.connect().unwrap();
    t.identify().unwrap();
    t.erase().unwrap();
    t.program(0x7E00, &[0x00; 32]).unwrap();
    let at: Location = "flash:0x7E00".parse().unwrap();
    assert_eq!(
        t.store_secret(at, &identity_key(1)).unwrap_err(),
        TargetError::SecretMismatch { location: at }
    );
}

#[test]
fn swapped_board_is_not_locked() {
    let sim = sim(&ATMEGA328P, "seed=8");
    let mut t = driver(&sim, &ATMEGA328P);
    let image = pseudo_random(512, 1);
    t.connect().unwrap();
    t.identify().unwrap();
    t.erase().unwrap();
    t.program(0, &image).unwrap();
    t.store_secret("flash:0x7E00".parse().unwrap(), &identity_key(9))
        .unwrap();
    t.challenge(&ChallengeRequest {
        nonce: [2; 32],
        regions: vec![FlashRange::new(0, 512)],
    })
    .unwrap();
    // Someone puts another board in the socket while the agent was talking.
    sim.with_chip_mut(|c| {
        let at = serial_offset(c.part()) as usize;
        c.load_eeprom(at, &[1, 2, 3, 4, 5, 6, 7, 8]);
    });
    let e = t
        .set_lock(LockPermission::unchecked(LockLevel::Readout))
        .unwrap_err();
    assert_eq!(e.stage(), Some(Stage::Lock));
    assert!(e.to_string().contains("swapped"), "{e}");
    sim.with_chip(|c| assert_eq!(c.lock(), 0xFF));
}

#[test]
fn lock_byte_is_configurable_and_permanent_refused() {
    let sim = sim(&ATMEGA328P, "");
    let config = AvrIspConfig {
        lock_readout: 0xCC,
        ..AvrIspConfig::default()
    };
    let mut t = AvrIspTarget::new(Box::new(Loopback::instant(sim.programmer())), None, config);
    assert!(!t.capabilities().contains(Capability::AnswerChallenge));
    t.connect().unwrap();
    t.identify().unwrap();
    let e = t
        .set_lock(LockPermission::unchecked(LockLevel::Permanent))
        .unwrap_err();
    assert!(e.to_string().contains("no permanent lock"), "{e}");
    assert!(matches!(
        t.set_lock(LockPermission::unchecked(LockLevel::None))
            .unwrap_err(),
        TargetError::InvalidRequest {
            stage: Stage::Lock,
            ..
        }
    ));
    t.set_lock(LockPermission::unchecked(LockLevel::Readout))
        .unwrap();
    assert_eq!(t.read_lock().unwrap().raw, vec![0xCC]);
    assert!(matches!(
        t.challenge(&ChallengeRequest {
            nonce: [0; 32],
            regions: vec![FlashRange::new(0, 2)]
        })
        .unwrap_err(),
        TargetError::Unsupported {
            stage: Stage::Challenge,
            ..
        }
    ));
}

#[test]
fn eesave_keeps_eeprom_through_erase() {
    let sim = sim(&ATMEGA328P, "eesave=on");
    let mut t = driver(&sim, &ATMEGA328P);
    t.connect().unwrap();
    let uid = t.identify().unwrap().uid;
    t.store_secret("eeprom:0x0000".parse().unwrap(), &identity_key(4))
        .unwrap();
    t.erase().unwrap();
    sim.with_chip(|c| {
        assert_eq!(&c.eeprom()[..32], &identity_key(4));
        assert_eq!(c.fuses()[1] & 0x08, 0);
    });
    assert_eq!(t.identify().unwrap().uid, uid);
    assert_eq!(t.read_fuses().unwrap(), [0x62, 0xD1, 0xFF]);
}

#[test]
fn blank_serial_is_refused() {
    let sim = sim(&ATMEGA328P, "serial=blank");
    let mut t = driver(&sim, &ATMEGA328P);
    t.connect().unwrap();
    let e = t.identify().unwrap_err();
    assert_eq!(e.stage(), Some(Stage::Identify));
    assert!(e.to_string().contains("no serial number"), "{e}");
}

#[test]
fn odd_addresses_and_lengths() {
    let sim = sim(&ATMEGA328P, "");
    let mut t = driver(&sim, &ATMEGA328P);
    t.connect().unwrap();
    t.identify().unwrap();
    t.erase().unwrap();
    let data = pseudo_random(301, 3);
    t.program(0x7F, &data).unwrap();
    t.verify(0x7F, &data).unwrap();
    let mut back = vec![0u8; 303];
    t.read(0x7E, &mut back).unwrap();
    assert_eq!(back[0], 0xFF);
    assert_eq!(&back[1..302], &data[..]);
    assert_eq!(back[302], 0xFF);
    // Programming twice without erase ANDs: verify catches it.
    t.program(0x7F, &[0xF0]).unwrap();
    let e = t.verify(0x7F, &data[..1]).unwrap_err();
    assert!(
        matches!(e, TargetError::VerifyMismatch { address: 0x7F, .. }),
        "{e}"
    );
}

#[test]
fn eeprom_pages_are_written_only_after_the_previous_write_at_realistic_timing() {
    // A certificate-sized secret on both parts (4- and 8-byte EEPROM pages, tWD_EEPROM
    // 3.6 and 9 ms), at an aligned and an odd offset.
    let cert: Vec<u8> = (0..530u32).map(|i| (i * 31 + 5) as u8).collect();
    for (part, at) in [
        (&ATMEGA328P, 0x040),
        (&ATMEGA328P, 0x0C3),
        (&ATMEGA2560, 0x101),
    ] {
        let c = AvrSimConfig {
            part,
            timing: AvrTiming::realistic(),
            ..AvrSimConfig::default()
        };
        let sim = AvrSim::new(&c).unwrap();
        let mut t = driver(&sim, part);
        t.connect().unwrap();
        t.identify().unwrap();
        t.erase().unwrap();
        t.store_secret(Location::new(Space::Eeprom, at), &cert)
            .unwrap();
        sim.with_chip(|c| {
            assert_eq!(c.stats().ignored_busy, 0, "{}: {:?}", part.name, c.stats());
            let at = at as usize;
            assert_eq!(&c.eeprom()[at..at + cert.len()], &cert[..], "{}", part.name);
        });
    }
}
