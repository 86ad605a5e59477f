//! Target driver model for flashgate.
//!
//! A driver implements [`Target`] for one board on one channel; a [`Fixture`] hands a channel
//! its boards. Drivers declare their [`Capabilities`] so the appliance can refuse a job before
//! touching any unit ([`Capabilities::missing`]). Every error carries the [`Stage`] and, where
//! there is one, the address ([`TargetError`]).
//!
//! Locking is gated: [`Target::set_lock`] consumes a [`LockPermission`], which is made only
//! from the [`ProvenDevice`] that a successful [`verify_challenge_reply`] returns.
//!
//! ```
//! use flashgate_target::{Capabilities, Capability};
//!
//! let driver = Capabilities::from([Capability::ProgramFlash, Capability::ReadFlash]);
//! let job = Capabilities::from([Capability::ProgramFlash, Capability::SetLock]);
//! assert_eq!(driver.missing(&job), vec![Capability::SetLock]);
//! ```

mod capability;
mod challenge;
mod device;
mod error;
mod proof;
mod registry;
mod stage;
mod target;

pub use capability::{Capabilities, Capability};
pub use challenge::{
    ChallengeRequest, ChallengeResponse, FlashRange, MAX_CHALLENGE_REGIONS, NONCE_LEN,
};
pub use device::{
    Destructive, DestructivePermission, DeviceInfo, LockPermission, LockState, MemoryRegion,
};
pub use error::{TargetError, MISMATCH_WINDOW};
pub use flashgate_device::{Location, LockLevel, Space};
pub use proof::{
    signed_message, signed_message_hash, verify_challenge_reply, ChallengeError, ProvenDevice,
    DOMAIN, MAX_UID_LEN,
};
pub use registry::{
    parse_target, BoardsFrom, Driver, FixtureSpec, RunWiring, SpecError, SpecOptions,
};
pub use stage::Stage;
pub use target::{Fixture, Target};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn missing_capabilities_in_order() {
        let have = Capabilities::empty()
            .with(Capability::ReadLock)
            .with(Capability::ProgramFlash);
        let need = Capabilities::all();
        assert_eq!(
            have.missing(&need),
            vec![
                Capability::ReadFlash,
                Capability::ReadUid,
                Capability::StoreSecret,
                Capability::OnChipKeygen,
                Capability::AnswerChallenge,
                Capability::SetLock,
                Capability::LockPermanent,
            ]
        );
        assert!(Capabilities::all().missing(&need).is_empty());
        assert_eq!(have.to_string(), "program-flash, read-lock");
        assert_eq!(Capabilities::empty().to_string(), "none");
        assert_eq!(format!("{have:?}"), "{ProgramFlash, ReadLock}");
        for c in Capability::ALL {
            assert_eq!(c.as_str().parse::<Capability>().unwrap(), c);
        }
    }

    #[test]
    fn stage_names() {
        assert_eq!(Stage::BlankCheck.to_string(), "blank-check");
        assert_eq!(Stage::LockReadback.to_string(), "lock-readback");
        assert_eq!(Stage::StoreSecret.to_string(), "store-secret");
        for s in Stage::ALL {
            assert_eq!(s.as_str().parse::<Stage>().unwrap(), s);
        }
        assert!("blankcheck".parse::<Stage>().is_err());
    }

    #[test]
    fn location_round_trip() {
        // The device vocabulary, re-exported: the form job policies write.
        let l: Location = "keystore:0x0100".parse().unwrap();
        assert_eq!(l, Location::new(Space::KeyStore, 0x100));
        assert_eq!(l.to_string(), "keystore:0x0100");
        assert_eq!(
            "flash:4096".parse::<Location>().unwrap(),
            Location::new(Space::Flash, 4096)
        );
        assert_eq!(
            "otp:0X1f".parse::<Location>().unwrap(),
            Location::new(Space::Otp, 0x1f)
        );
        assert_eq!(
            Location::new(Space::Eeprom, 0x12345).to_string(),
            "eeprom:0x00012345"
        );
        for bad in [
            "keystore",
            "rom:0x10",
            "keystore:0x",
            "keystore:-1",
            "flash:0x100000000",
        ] {
            let e = bad.parse::<Location>().unwrap_err();
            assert!(e.to_string().contains(": write "), "{bad}: {e}");
        }
    }

    #[test]
    fn lock_level_parse_and_order() {
        assert_eq!("readout".parse::<LockLevel>().unwrap(), LockLevel::Readout);
        assert!(LockLevel::Permanent > LockLevel::Readout);
        assert!(LockLevel::Readout > LockLevel::None);
        assert_eq!(
            LockPermission::unchecked(LockLevel::Readout).level(),
            LockLevel::Readout
        );
    }

    #[test]
    fn error_messages_name_stage_and_address() {
        let e = TargetError::ContactLost {
            stage: Stage::Program,
            address: Some(0x4000),
        };
        assert_eq!(
            e.to_string(),
            "contact lost during program at 0x00004000: check the fixture's pogo pins and reseat the board"
        );
        assert_eq!(e.stage(), Some(Stage::Program));
        assert_eq!(e.address(), Some(0x4000));
        let e = e.with_stage(Stage::Verify);
        assert_eq!(e.stage(), Some(Stage::Verify));

        let e = TargetError::VerifyMismatch {
            stage: Stage::Verify,
            address: 0x10,
            expected: vec![0xde, 0xad],
            found: vec![0xde, 0xac],
        };
        assert!(e
            .to_string()
            .contains("at 0x00000010 (expected dead, read deac)"));
        let e = TargetError::Timeout {
            stage: Stage::Erase,
            address: None,
            timeout: std::time::Duration::from_millis(250),
        };
        assert!(e.to_string().contains("during erase within 250 ms"));
        assert_eq!(
            TargetError::WrongDevice {
                expected: "a".into(),
                found: "b".into()
            }
            .stage(),
            Some(Stage::Identify)
        );
    }

    /// A flash-only driver used to exercise the default methods.
    struct Memory {
        flash: Vec<u8>,
    }

    impl Target for Memory {
        fn capabilities(&self) -> Capabilities {
            Capabilities::from([Capability::ProgramFlash, Capability::ReadFlash])
        }
        fn identify(&mut self) -> Result<DeviceInfo, TargetError> {
            Ok(DeviceInfo {
                device_type: "memory".into(),
                uid: vec![1],
                signature: vec![],
                flash: MemoryRegion {
                    base: 0,
                    size: self.flash.len() as u32,
                    page_size: 1,
                },
                lock: LockState {
                    level: LockLevel::None,
                    raw: vec![],
                },
            })
        }
        fn read(&mut self, address: u32, buf: &mut [u8]) -> Result<(), TargetError> {
            let a = address as usize;
            let src = self
                .flash
                .get(a..a + buf.len())
                .ok_or(TargetError::OutOfRange {
                    stage: Stage::Verify,
                    address,
                    length: buf.len() as u32,
                })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    #[test]
    fn default_verify_and_blank_check() {
        let mut m = Memory {
            flash: vec![0xFF; 10_000],
        };
        m.blank_check(0, 10_000).unwrap();
        m.flash[9000] = 0x7F;
        assert_eq!(
            m.blank_check(0, 10_000).unwrap_err(),
            TargetError::NotBlank {
                address: 9000,
                found: 0x7F
            }
        );
        let e = m.blank_check(9_999, 2).unwrap_err();
        assert_eq!(e.stage(), Some(Stage::BlankCheck));

        let mut want = vec![0xFF; 10_000];
        want[9000] = 0x7F;
        m.verify(0, &want).unwrap();
        want[9001] = 0;
        match m.verify(0, &want).unwrap_err() {
            TargetError::VerifyMismatch {
                stage,
                address,
                expected,
                found,
            } => {
                assert_eq!(stage, Stage::Verify);
                assert_eq!(address, 9001);
                assert_eq!(expected.len(), MISMATCH_WINDOW);
                assert_eq!(expected[0], 0);
                assert_eq!(found[0], 0xFF);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn unsupported_defaults_name_capability() {
        let mut m: Box<dyn Target> = Box::new(Memory { flash: vec![] });
        assert_eq!(
            m.set_lock(LockPermission::unchecked(LockLevel::Readout))
                .unwrap_err(),
            TargetError::Unsupported {
                stage: Stage::Lock,
                capability: Capability::SetLock
            }
        );
        let e = m
            .generate_key(Location::new(Space::KeyStore, 0))
            .unwrap_err();
        assert_eq!(e.stage(), Some(Stage::Keygen));
        assert_eq!(
            e.to_string(),
            "this driver cannot on-chip-keygen, which keygen needs: use a driver that can, or change the job"
        );
    }
}
