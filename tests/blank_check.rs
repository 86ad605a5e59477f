//! The blank-check stage as `target.blank_check` chooses it, end to end in
//! process on the simulated secure MCU: by default (`uncovered`) leftovers
//! outside the job's images fail the unit at `blank-check` with their
//! address, while a leftover inside an image is left to verify; `full` also
//! checks the images; `none` skips the stage. And `target.verify =
//! "attested"`: no read-back, a bad image is caught by the device's signed
//! firmware digest at the challenge, before any lock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};

use common::Kind;
use flashgate::pipeline::{
    FailureKind, MemoryLedger, Provisioner, RunEvent, RunOptions, StopHandle, UnitRecord,
    UnitResult, UnitStage,
};
use flashgate_target::{
    BoardsFrom, Capabilities, ChallengeRequest, ChallengeResponse, DeviceInfo, Fixture, Location,
    LockLevel, LockPermission, LockState, Target, TargetError,
};
use flashgate_target_sim::SimFixture;

/// The image: 64 KiB at 0 of the sim's 1 MiB flash.
const IMAGE_LEN: usize = 64 * 1024;

/// A board whose chip erase leaves `leftover` programmed at `at` (as earlier
/// firmware or a key would be where an erase did not reach).
struct Leftover {
    inner: Box<dyn Target>,
    at: u32,
}

const LEFTOVER: [u8; 16] = [0x00; 16];

impl Target for Leftover {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn connect(&mut self) -> Result<(), TargetError> {
        self.inner.connect()
    }
    fn identify(&mut self) -> Result<DeviceInfo, TargetError> {
        self.inner.identify()
    }
    fn erase(&mut self) -> Result<(), TargetError> {
        self.inner.erase()?;
        self.inner.program(self.at, &LEFTOVER)
    }
    fn blank_check(&mut self, address: u32, length: u32) -> Result<(), TargetError> {
        self.inner.blank_check(address, length)
    }
    fn program(&mut self, address: u32, data: &[u8]) -> Result<(), TargetError> {
        self.inner.program(address, data)
    }
    fn read(&mut self, address: u32, buf: &mut [u8]) -> Result<(), TargetError> {
        self.inner.read(address, buf)
    }
    fn verify(&mut self, address: u32, expected: &[u8]) -> Result<(), TargetError> {
        self.inner.verify(address, expected)
    }
    fn store_secret(&mut self, at: Location, data: &[u8]) -> Result<(), TargetError> {
        self.inner.store_secret(at, data)
    }
    fn generate_key(&mut self, at: Location) -> Result<[u8; 65], TargetError> {
        self.inner.generate_key(at)
    }
    fn challenge(&mut self, request: &ChallengeRequest) -> Result<ChallengeResponse, TargetError> {
        self.inner.challenge(request)
    }
    fn set_lock(&mut self, permission: LockPermission) -> Result<(), TargetError> {
        self.inner.set_lock(permission)
    }
    fn read_lock(&mut self) -> Result<LockState, TargetError> {
        self.inner.read_lock()
    }
}

use common::in_process::{in_process, InProcess as Lab};

fn lab() -> std::sync::MutexGuard<'static, Lab> {
    in_process(Kind::SoftHsm)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn firmware() -> Vec<u8> {
    // No 0x00 byte: a leftover of 0x00 inside the image cannot pass verify.
    (0..IMAGE_LEN as u32).map(|i| (i % 251 + 1) as u8).collect()
}

/// A job from the shipped sim policy, its window moved around today and
/// `blank_check` set when given, opened for programming.
fn provisioner(lab: &Lab, blank_check: Option<&str>) -> Arc<Provisioner> {
    provisioner_with(lab, blank_check.map(|w| format!("blank_check = \"{w}\"")))
}

/// As [`provisioner`], with `line` added to `[target]`.
fn provisioner_with(lab: &Lab, line: Option<String>) -> Arc<Provisioner> {
    let text =
        std::fs::read_to_string(common::repo().join("policies/sim-secure-mcu.toml")).unwrap();
    let mut text = common::validity(&text, now() - 3600, now() + 86_400);
    if let Some(extra) = line {
        let line = "device_types = [\"sim-secure-mcu\"]";
        let at = text.find(line).unwrap();
        let end = at + text[at..].find('\n').unwrap();
        text.insert_str(end, &format!("\n{extra}"));
    }
    let (appliance, id, _) = lab.job("sim-secure-mcu.toml", |_| text.clone(), &firmware(), 0);
    Arc::new(Provisioner::open(appliance, &id, Arc::new(MemoryLedger::new(1000))).unwrap())
}

/// Runs one board whose erase leaves bytes at `leftover` (if any); returns
/// its record, the stages reported done, and the chip's lock afterwards.
fn one_board(p: Arc<Provisioner>, leftover: Option<u32>) -> (UnitRecord, Vec<String>, LockLevel) {
    // A fresh seed, so a fresh UID: a UID that passed is refused by the job.
    static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let seed = SEED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let sim = SimFixture::from_options(&format!("seed={seed},timing=zero,keep=on")).unwrap();
    let mut boards = sim.clone();
    let fixture = BoardsFrom::new(1, move || {
        let inner = boards.next_board()?.expect("the sim has boards");
        Ok(match leftover {
            Some(at) => Box::new(Leftover { inner, at }) as Box<dyn Target>,
            None => inner,
        })
    });
    let seen = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let s2 = seen.clone();
    let sink = Arc::new(move |e: RunEvent| match e {
        RunEvent::StageDone { stage, .. } => s2.lock().unwrap().1.push(stage),
        RunEvent::UnitPassed { unit, .. } | RunEvent::UnitFailed { unit, .. } => {
            s2.lock().unwrap().0.push(unit);
        }
        _ => {}
    });
    let rt = flashgate::pipeline::runtime(2).unwrap();
    rt.block_on(p.run(
        vec![Box::new(fixture) as Box<dyn Fixture>],
        RunOptions {
            units: Some(1),
            block: 1,
        },
        StopHandle::default(),
        sink,
    ));
    let (mut records, stages) = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(records.len(), 1, "{records:?}");
    let lock = sim.board(0).unwrap().with_chip(|c| c.lock_state().level);
    (records.remove(0), stages, lock)
}

#[track_caller]
fn assert_failed_at(r: &UnitRecord, stage: UnitStage, address: u32, lock: LockLevel) {
    let Some(f) = r.result.failure() else {
        panic!("the unit passed: {r:?}")
    };
    assert_eq!(f.stage, stage, "{f:?}");
    assert_eq!(f.kind, FailureKind::Target, "{f:?}");
    assert!(
        f.reason.contains(&format!("0x{address:08x}")),
        "the reason names the address: {}",
        f.reason
    );
    assert!(!r.secrets_injected, "no secret reaches a failed board");
    assert_eq!(lock, LockLevel::None, "a failed board is never locked");
}

#[test]
fn the_default_catches_leftovers_outside_the_images_and_leaves_the_images_to_verify() {
    let lab = lab();
    let p = provisioner(&lab, None);
    assert_eq!(
        p.policy().target().blank_check,
        flashgate_policy::BlankCheck::Uncovered
    );

    // Past the image, and in the last page of the flash.
    for at in [0x0001_0000, 0x000F_FF00] {
        let (r, stages, lock) = one_board(p.clone(), Some(at));
        assert_failed_at(&r, UnitStage::BlankCheck, at, lock);
        assert!(!stages.iter().any(|s| s == "program"), "{stages:?}");
    }

    // Inside the image: not read before programming, caught at verify.
    let (r, stages, lock) = one_board(p.clone(), Some(0x100));
    assert_failed_at(&r, UnitStage::Verify, 0x100, lock);
    assert!(stages.iter().any(|s| s == "blank-check"), "{stages:?}");

    // A clean board passes, with the stage run.
    let (r, stages, lock) = one_board(p, None);
    assert_eq!(r.result, UnitResult::Passed, "{r:?}");
    assert!(r.timings_us.contains_key("blank-check"), "{r:?}");
    assert!(stages.iter().any(|s| s == "blank-check"), "{stages:?}");
    assert_eq!(lock, LockLevel::Readout);
}

#[test]
fn full_checks_the_images_too() {
    let lab = lab();
    let p = provisioner(&lab, Some("full"));
    let (r, _, lock) = one_board(p.clone(), Some(0x100));
    assert_failed_at(&r, UnitStage::BlankCheck, 0x100, lock);
    let (r, _, lock) = one_board(p.clone(), Some(0x0008_0000));
    assert_failed_at(&r, UnitStage::BlankCheck, 0x0008_0000, lock);
    let (r, _, _) = one_board(p, None);
    assert_eq!(r.result, UnitResult::Passed, "{r:?}");
}

#[test]
fn none_skips_the_stage() {
    let lab = lab();
    let p = provisioner(&lab, Some("none"));
    // A leftover outside the image goes unnoticed: that is what `none` means.
    let (r, stages, lock) = one_board(p.clone(), Some(0x0008_0000));
    assert_eq!(r.result, UnitResult::Passed, "{r:?}");
    assert!(!r.timings_us.contains_key("blank-check"), "{r:?}");
    assert!(!stages.iter().any(|s| s == "blank-check"), "{stages:?}");
    assert!(stages.iter().any(|s| s == "verify"), "{stages:?}");
    assert_eq!(lock, LockLevel::Readout);
    // Inside the image verify still catches it.
    let (r, _, lock) = one_board(p, Some(0x100));
    assert_failed_at(&r, UnitStage::Verify, 0x100, lock);
}

#[test]
fn attested_verify_reads_nothing_back_and_the_challenge_catches_a_bad_image() {
    let lab = lab();
    let p = provisioner_with(&lab, Some("verify = \"attested\"".to_owned()));
    assert_eq!(
        p.policy().target().verify,
        flashgate_policy::Verify::Attested
    );

    // A clean board passes without a verify stage, locked after the
    // challenge proved key and firmware digest.
    let (r, stages, lock) = one_board(p.clone(), None);
    assert_eq!(r.result, UnitResult::Passed, "{r:?}");
    assert!(!r.timings_us.contains_key("verify"), "{r:?}");
    assert!(!stages.iter().any(|s| s == "verify"), "{stages:?}");
    assert!(stages.iter().any(|s| s == "challenge"), "{stages:?}");
    assert_eq!(lock, LockLevel::Readout);

    // A byte inside the image that is not the job's: nothing reads it back,
    // the device's measured digest differs, and the unit fails at the
    // challenge, unlocked (its keys were injected: that is the price).
    let (r, stages, lock) = one_board(p, Some(0x100));
    let Some(f) = r.result.failure() else {
        panic!("the unit passed: {r:?}")
    };
    assert_eq!(f.stage, UnitStage::Challenge, "{f:?}");
    assert!(f.reason.contains("firmware digest"), "{}", f.reason);
    assert!(!stages.iter().any(|s| s == "verify"), "{stages:?}");
    assert!(r.secrets_injected, "{r:?}");
    assert_eq!(lock, LockLevel::None, "a failed board is never locked");
}
