//! The driver through stock OpenOCD against the JTAG simulator: program,
//! verify, a secret in the key store, RDP level 1 set and read back after a
//! reset, then a second session that finds the board locked; faults each
//! a stage-specific failure, never a locked chip. Several channels at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use flashgate_openocd::openocd::{OpenOcdConfig, Script};
use flashgate_openocd::sim::{JtagSim, RdpLevel, Server, SimHandle, FLASH_BASE};
use flashgate_openocd::{OpenOcdOptions, OpenOcdTarget};
use flashgate_target::{Location, LockLevel, LockPermission, Space, Target as _, TargetError};

/// A simulator on a socket in `dir`, and the interface config that reaches it.
struct Chip {
    server: Option<Server>,
    interface: PathBuf,
}

impl Chip {
    fn start(dir: &Path, name: &str, options: &str) -> Self {
        assert!(
            Path::new("/usr/bin/openocd").exists(),
            "OpenOCD is not installed: apt-get install openocd (scripts/setup.sh does)"
        );
        let socket = dir.join(format!("{name}.sock"));
        let sim = SimHandle::new(JtagSim::from_options(options).unwrap());
        let server = Server::start(sim, &socket).unwrap();
        let interface = dir.join(format!("{name}-interface.cfg"));
        // The simulator runs no code: no work area (OpenOCD then writes
        // flash half-word by half-word through the debug port).
        std::fs::write(
            &interface,
            flashgate_openocd::sim::openocd_interface_cfg(&socket),
        )
        .unwrap();
        Chip {
            server: Some(server),
            interface,
        }
    }

    fn sim(&self) -> SimHandle {
        self.server.as_ref().unwrap().sim().clone()
    }

    fn target(&self) -> OpenOcdTarget {
        let config = OpenOcdConfig::new(vec![
            Script::File(self.interface.display().to_string()),
            Script::File("target/stm32f1x.cfg".to_owned()),
        ]);
        OpenOcdTarget::new(config, None, OpenOcdOptions::default()).unwrap()
    }
}

impl Drop for Chip {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
    }
}

fn image(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// One board's flow; returns the UID the driver read.
fn provision(chip: &Chip, seed: u8) -> Vec<u8> {
    let mut t = chip.target();
    t.connect().unwrap();
    let info = t.identify().unwrap();
    assert_eq!(info.device_type, "stm32f103-md");
    assert_eq!(info.flash.size, 128 * 1024);
    assert_eq!(info.lock.level, LockLevel::None);
    assert_eq!(info.uid.len(), 12);
    t.erase().unwrap();
    let fw = image(seed, 2048);
    t.program(FLASH_BASE, &fw).unwrap();
    t.verify(FLASH_BASE, &fw).unwrap();
    let secret = [seed; 32];
    let at = Location::new(Space::KeyStore, 0);
    t.store_secret(at, &secret).unwrap();
    // Never a secret over another.
    let e = t.store_secret(at, &secret).unwrap_err();
    assert!(matches!(e, TargetError::NotBlank { .. }), "{e}");
    t.set_lock(LockPermission::unchecked(LockLevel::Readout))
        .unwrap();
    let lock = t.read_lock().unwrap();
    assert_eq!(lock.level, LockLevel::Readout, "{lock:?}");
    info.uid
}

#[test]
fn three_channels_program_store_and_lock_through_openocd() {
    let dir = tempfile::tempdir().unwrap();
    let chips: Vec<Chip> = (0..3)
        .map(|i| {
            Chip::start(
                dir.path(),
                &format!("ch{i}"),
                &format!("timing=zero,seed={}", 10 + i),
            )
        })
        .collect();
    let uids: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = chips
            .iter()
            .enumerate()
            .map(|(i, c)| s.spawn(move || provision(c, u8::try_from(i).unwrap() + 1)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (chip, uid)) in chips.iter().zip(&uids).enumerate() {
        let sim = chip.sim();
        let sim = sim.lock();
        assert_eq!(
            sim.uid().as_slice(),
            uid.as_slice(),
            "channel {i}: the UID read is the chip's"
        );
        assert_eq!(
            sim.rdp(),
            RdpLevel::Level1,
            "channel {i}: the chip is locked"
        );
        let flash = sim.flash();
        assert_eq!(
            &flash[..2048],
            image(u8::try_from(i).unwrap() + 1, 2048).as_slice()
        );
        assert_eq!(
            &flash[0x1_FC00..0x1_FC20],
            &[u8::try_from(i).unwrap() + 1; 32]
        );
    }
    // A second session finds the board locked, and refuses it at identify.
    let mut t = chips[0].target();
    t.connect().unwrap();
    let info = t.identify().unwrap();
    assert_eq!(info.lock.level, LockLevel::Readout);
    assert!(info.expect_unlocked().is_err());
    // Reading flash from the debug port is refused on a locked part.
    let mut buf = [0u8; 16];
    let e = t.read(FLASH_BASE, &mut buf).unwrap_err().to_string();
    assert!(e.contains("during verify"), "{e}");
}

#[test]
fn faults_fail_their_stage_and_never_lock() {
    let dir = tempfile::tempdir().unwrap();
    // A flash write the chip refuses (SR.PGERR on the 100th half-word).
    let chip = Chip::start(dir.path(), "pgerr", "timing=zero,flash-error=pgerr#100");
    let mut t = chip.target();
    t.connect().unwrap();
    t.identify().unwrap();
    t.erase().unwrap();
    let e = t
        .program(FLASH_BASE, &image(7, 1024))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("during program") && e.contains("the flash write failed at 0x08000000"),
        "{e}"
    );
    assert_eq!(chip.sim().lock().rdp(), RdpLevel::Level0);
    drop(t);

    // Another part on the wire.
    let chip = Chip::start(dir.path(), "other", "timing=zero,dev-id=0x413");
    let mut t = chip.target();
    t.connect().unwrap();
    let e = t.identify().unwrap_err();
    assert!(matches!(e, TargetError::WrongDevice { .. }), "{e}");
    assert!(e.to_string().contains("DEV_ID 0x413"), "{e}");
    drop(t);

    // A board already locked: identify says so, before anything is written.
    let chip = Chip::start(dir.path(), "locked", "timing=zero,locked=1");
    let mut t = chip.target();
    t.connect().unwrap();
    let info = t.identify().unwrap();
    assert_eq!(info.lock.level, LockLevel::Readout);
    assert!(matches!(
        info.expect_unlocked(),
        Err(TargetError::AlreadyLocked { .. })
    ));
    drop(t);

    // The target drops off mid-write: the program stage fails; the chip is not locked.
    let chip = Chip::start(dir.path(), "drop", "timing=zero,drop-after-bytes=3000000");
    let mut t = chip.target();
    t.connect().unwrap();
    t.identify().unwrap();
    t.erase().unwrap();
    let e = t.program(FLASH_BASE, &image(9, 16 * 1024)).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("during program"), "{text}");
    assert_eq!(chip.sim().lock().rdp(), RdpLevel::Level0);
    assert!(t
        .set_lock(LockPermission::unchecked(LockLevel::Readout))
        .is_err());
    assert_eq!(
        chip.sim().lock().rdp(),
        RdpLevel::Level0,
        "never a locked chip"
    );
}
