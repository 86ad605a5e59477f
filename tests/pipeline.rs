//! Secure per-unit programming end to end, in process, on both tokens:
//! every fault ends at the right stage with the chip left unlocked, a chip
//! whose agent signs with a wrong key is never locked, keys re-derive from
//! the master, and `openssl verify` accepts every issued certificate (and
//! rejects one checked against another job's CA).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::Kind;
use flashgate::appliance::Appliance;
use flashgate::pipeline::{
    MemoryLedger, Provisioner, RunOptions, RunSummary, StopHandle, UnitRecord, UnitResult,
};
use flashgate_target::{Fixture, LockLevel};
use flashgate_target_sim::SimFixture;

use common::in_process::{in_process as lab, InProcess};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A job from the sim policy (validity around today, `edit` applied), built
/// and imported. Returns the appliance, job id and device master.
fn job(
    lab: &InProcess,
    edit: impl Fn(String) -> String,
    firmware: &[u8],
) -> (Arc<Appliance>, String, [u8; 32]) {
    job_from(lab, "sim-secure-mcu.toml", edit, firmware, 0)
}

/// A job from `policies/<policy>` with one image at `address`.
fn job_from(
    lab: &InProcess,
    policy: &str,
    edit: impl Fn(String) -> String,
    firmware: &[u8],
    address: u32,
) -> (Arc<Appliance>, String, [u8; 32]) {
    lab.job(policy, edit, firmware, address)
}

fn run(
    p: Arc<Provisioner>,
    fixture: &SimFixture,
    channels: usize,
    units: u64,
) -> (RunSummary, Vec<UnitRecord>) {
    let records = Arc::new(Mutex::new(Vec::new()));
    let r2 = records.clone();
    let sink = Arc::new(move |e: flashgate::pipeline::RunEvent| match e {
        flashgate::pipeline::RunEvent::UnitPassed { unit, .. }
        | flashgate::pipeline::RunEvent::UnitFailed { unit, .. } => r2.lock().unwrap().push(unit),
        _ => {}
    });
    let fixtures: Vec<Box<dyn Fixture>> = (0..channels)
        .map(|_| Box::new(fixture.clone()) as Box<dyn Fixture>)
        .collect();
    let rt = flashgate::pipeline::runtime(4).unwrap();
    let summary = rt.block_on(p.run(
        fixtures,
        RunOptions {
            units: Some(units),
            block: 4,
        },
        StopHandle::default(),
        sink,
    ));
    let recs = records.lock().unwrap().clone();
    (summary, recs)
}

fn firmware() -> Vec<u8> {
    (0..20_000u32).map(|i| (i * 13 + 7) as u8).collect()
}

#[test]
fn units_pass_keys_rederive_and_certificates_verify_on_both_tokens() {
    for kind in common::both() {
        eprintln!("token: {kind:?}");
        let lab = lab(kind);
        let fw = firmware();
        let (appliance, id, master) = job(&lab, |t| t, &fw);
        let ledger = Arc::new(MemoryLedger::new(1000));
        let p = Arc::new(Provisioner::open(appliance, &id, ledger.clone()).unwrap());
        let fixture = SimFixture::from_options("seed=11,timing=zero,keep=on").unwrap();
        let (summary, records) = run(p.clone(), &fixture, 4, 12);
        assert_eq!(summary.passed, 12, "{kind:?}: {records:?}");
        assert_eq!(summary.failed(), 0);
        assert_eq!(ledger.records().len(), 12, "every unit recorded");
        // Distinct counters and serials; every unit counted.
        let mut counters: Vec<u64> = records.iter().map(|r| r.counter.unwrap()).collect();
        counters.sort_unstable();
        counters.dedup();
        assert_eq!(counters.len(), 12);

        let policy = p.policy().clone();
        drop(p); // closes the token session, so another job can be built below
        let job_id: [u8; 16] = hex::decode(&id).unwrap().try_into().unwrap();
        let out = lab.dir.join(format!("certs-{id}"));
        std::fs::create_dir_all(&out).unwrap();
        for board in fixture.boards() {
            board.with_chip(|chip| {
                assert_eq!(
                    chip.lock_state().level,
                    LockLevel::Readout,
                    "{kind:?}: every passed chip is locked"
                );
                // The OEM re-derives the injected keys from the master and the UID.
                let derived = flashgate::identity::derive_keys_from_master(
                    &master,
                    &job_id,
                    chip.uid(),
                    &policy,
                );
                for secret in &derived {
                    let spec = policy.key(&secret.name).unwrap();
                    let stored = chip
                        .inspect_keystore(spec.location.offset, secret.value.len() as u32)
                        .unwrap();
                    assert_eq!(
                        stored.as_slice(),
                        secret.value.as_slice(),
                        "{kind:?}: key {} re-derives",
                        secret.name
                    );
                }
                // The firmware is in flash.
                assert_eq!(chip.inspect_flash(0, fw.len() as u32).unwrap(), fw);
            });
        }
        for r in &records {
            let pem = flashgate::x509::der_to_pem(r.certificate.as_ref().unwrap(), "CERTIFICATE");
            std::fs::write(out.join(format!("{}.pem", r.serial.as_ref().unwrap())), pem).unwrap();
        }
        let bytes = std::fs::read(lab.dir.join(format!("{id}.fgj"))).unwrap();
        let (m, _) = flashgate::package::UnverifiedPackage::parse(&bytes)
            .unwrap()
            .manifest_unverified()
            .unwrap();
        std::fs::write(
            out.join("job-ca.pem"),
            flashgate::x509::der_to_pem(&m.job_ca_cert, "CERTIFICATE"),
        )
        .unwrap();
        for r in &records {
            openssl_verify(
                &lab.dir,
                &out.join("job-ca.pem"),
                &out.join(format!("{}.pem", r.serial.as_ref().unwrap())),
                true,
            );
        }
        // A certificate checked against another job's CA is rejected.
        let (other_appliance, other_id, _) = job(&lab, |t| t, &fw);
        drop(other_appliance);
        let bytes = std::fs::read(lab.dir.join(format!("{other_id}.fgj"))).unwrap();
        let (m2, _) = flashgate::package::UnverifiedPackage::parse(&bytes)
            .unwrap()
            .manifest_unverified()
            .unwrap();
        std::fs::write(
            out.join("other-ca.pem"),
            flashgate::x509::der_to_pem(&m2.job_ca_cert, "CERTIFICATE"),
        )
        .unwrap();
        openssl_verify(
            &lab.dir,
            &out.join("other-ca.pem"),
            &out.join(format!("{}.pem", records[0].serial.as_ref().unwrap())),
            false,
        );
    }
}

fn openssl_verify(dir: &Path, ca: &Path, cert: &Path, ok: bool) {
    openssl_verify_at(dir, ca, cert, ok, None);
}

fn openssl_verify_at(dir: &Path, ca: &Path, cert: &Path, ok: bool, at: Option<u64>) {
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("verify");
    if let Some(t) = at {
        cmd.arg("-attime").arg(t.to_string());
    }
    let out = cmd
        .arg("-CAfile")
        .arg(dir.join("oem/root-cert.pem"))
        .arg("-untrusted")
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap();
    assert_eq!(
        out.status.success(),
        ok,
        "openssl verify {} at {at:?}: {}{}",
        cert.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A relying party checks a device's chain long after production: one day
/// after the job window, ten years out, and just before the device
/// certificate's own notAfter, for a validity in days and for the
/// "no well-defined expiration" date. Every CA in the chain must still be
/// valid then.
#[test]
fn device_certificate_chains_outlive_the_job_window() {
    const DAY: u64 = 86_400;
    for kind in common::both() {
        let lab = lab(kind);
        let fw = firmware();
        type Edit = fn(String) -> String;
        let cases: [(&str, Edit); 2] = [
            ("validity_days = 7300", |t| t),
            ("not_after = 9999-12-31T23:59:59Z", |t| {
                t.replace(
                    "validity_days = 7300",
                    "not_after = \"9999-12-31T23:59:59Z\"",
                )
            }),
        ];
        for (what, edit) in cases {
            let (appliance, id, _) = job(&lab, edit, &fw);
            let p = Arc::new(
                Provisioner::open(appliance, &id, Arc::new(MemoryLedger::new(1000))).unwrap(),
            );
            let issued = now();
            let window_end = p.policy().job().not_after;
            let device_until = p.policy().latest_device_not_after();
            let fixture = SimFixture::from_options("seed=21,timing=zero").unwrap();
            let (summary, records) = run(p.clone(), &fixture, 1, 1);
            assert_eq!(summary.passed, 1, "{kind:?} {what}: {records:?}");
            drop(p);
            let out = lab.dir.join(format!("later-{id}"));
            std::fs::create_dir_all(&out).unwrap();
            let cert = out.join("device.pem");
            std::fs::write(
                &cert,
                flashgate::x509::der_to_pem(
                    records[0].certificate.as_ref().unwrap(),
                    "CERTIFICATE",
                ),
            )
            .unwrap();
            let bytes = std::fs::read(lab.dir.join(format!("{id}.fgj"))).unwrap();
            let (m, _) = flashgate::package::UnverifiedPackage::parse(&bytes)
                .unwrap()
                .manifest_unverified()
                .unwrap();
            let ca = out.join("job-ca.pem");
            std::fs::write(
                &ca,
                flashgate::x509::der_to_pem(&m.job_ca_cert, "CERTIFICATE"),
            )
            .unwrap();
            let device_not_after = if what.starts_with("validity_days") {
                issued + 7300 * DAY
            } else {
                device_until
            };
            for at in [
                window_end + DAY,
                issued + 10 * 365 * DAY,
                device_not_after - 2 * 3600,
            ] {
                eprintln!("{kind:?} {what}: verify at {at}");
                openssl_verify_at(&lab.dir, &ca, &cert, true, Some(at));
            }
            // Past the device certificate's own end, the chain is rejected.
            if device_not_after < flashgate_policy::NO_WELL_DEFINED_EXPIRATION {
                openssl_verify_at(&lab.dir, &ca, &cert, false, Some(device_not_after + DAY));
            }
        }
    }
}

#[test]
fn every_fault_fails_at_its_stage_and_never_locks() {
    let lab = lab(Kind::SoftHsm);
    let (appliance, id, _) = job(&lab, |t| t, &firmware());
    let ledger = Arc::new(MemoryLedger::new(1000));
    let p = Arc::new(Provisioner::open(appliance, &id, ledger.clone()).unwrap());
    let cases = [
        ("contact-lost@program", "program"),
        ("bit-error", "verify"),
        ("timeout@verify", "verify"),
        ("brown-out", "program"),
        ("wrong-signature", "challenge"),
        ("wrong-device", "identify"),
        ("already-locked@readout", "identify"),
        ("contact-lost@store-secret", "store-secret"),
        ("timeout@challenge", "challenge"),
        ("contact-lost@erase", "erase"),
    ];
    let opts: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (f, _))| format!("fault={i}:{f}"))
        .collect();
    let fixture = SimFixture::from_options(&format!(
        "seed=3,timing=zero,keep=on,boards={},{}",
        cases.len(),
        opts.join(",")
    ))
    .unwrap();
    let (summary, records) = run(p, &fixture, 1, cases.len() as u64);
    assert_eq!(summary.passed, 0, "{records:#?}");
    for (i, (fault, stage)) in cases.iter().enumerate() {
        let r = &records[i];
        match &r.result {
            UnitResult::Failed(f) => {
                assert_eq!(f.stage.as_str(), *stage, "fault {fault}: {}", f.reason);
                assert!(!f.reason.is_empty());
                let refused = matches!(*stage, "identify");
                assert_eq!(
                    f.kind == flashgate::pipeline::FailureKind::BoardRefused,
                    refused,
                    "fault {fault}: {f}"
                );
            }
            UnitResult::Passed => panic!("fault {fault} passed"),
        }
        let board = fixture.board(i as u64).unwrap();
        board.with_chip(|chip| {
            let expected = if fault.starts_with("already-locked") {
                LockLevel::Readout
            } else {
                LockLevel::None
            };
            assert_eq!(
                chip.lock_state().level,
                expected,
                "fault {fault}: the chip must not be locked by this run"
            );
        });
        // Units that failed after the reservation still count.
        let reserved = !matches!(*stage, "identify");
        assert_eq!(r.counter.is_some(), reserved, "fault {fault}");
    }
    // Only reserved units are in the ledger, each with its failure.
    assert_eq!(
        ledger.records().len(),
        cases.iter().filter(|(_, s)| *s != "identify").count()
    );
}

#[test]
fn quota_stops_the_run_with_a_clear_reason() {
    let lab = lab(Kind::SoftHsm);
    let (appliance, id, _) = job(
        &lab,
        |t| t.replace("quota = 1000", "quota = 5"),
        &firmware(),
    );
    let ledger = Arc::new(MemoryLedger::new(5));
    let p = Arc::new(Provisioner::open(appliance, &id, ledger.clone()).unwrap());
    let fixture = SimFixture::from_options("seed=5,timing=zero").unwrap();
    let (summary, records) = run(p.clone(), &fixture, 2, 20);
    assert_eq!(summary.passed, 5);
    assert_eq!(summary.quota_left, 0);
    assert_eq!(summary.stopped_because, "quota used up");
    // A channel takes no board once the quota is used up: at most one board
    // per channel can race the last reservation, and it is refused uncounted.
    assert!(records.len() <= 5 + 2, "{records:#?}");
    for r in records.iter().filter(|r| r.counter.is_none()) {
        let f = r.result.failure().expect("an uncounted unit failed");
        assert_eq!(f.kind, flashgate::pipeline::FailureKind::QuotaExhausted);
        assert_eq!(f.stage, flashgate::pipeline::UnitStage::Reserve);
        assert!(
            f.reason.contains("allows 5 units and 5 have been used"),
            "{f}"
        );
        assert!(!r.secrets_injected, "no refused unit received anything");
    }
    // A second run on the used-up job takes no board at all.
    let fresh = SimFixture::from_options("seed=6,timing=zero,keep=on").unwrap();
    let (summary, records) = run(p, &fresh, 2, 20);
    assert!(records.is_empty(), "{records:#?}");
    assert!(fresh.boards().is_empty(), "no board was taken");
    assert_eq!(summary.stopped_because, "quota used up");
    assert_eq!(summary.counted, 0);
}

#[test]
fn a_driver_without_a_needed_capability_is_refused_before_any_unit() {
    let lab = lab(Kind::SoftHsm);
    let (appliance, id, _) = job(&lab, |t| t, &firmware());
    let p = Provisioner::open(appliance, &id, Arc::new(MemoryLedger::new(10))).unwrap();
    use flashgate_target::{Capabilities, Capability};
    let caps = Capabilities::from([
        Capability::ProgramFlash,
        Capability::ReadFlash,
        Capability::ReadUid,
        Capability::StoreSecret,
    ]);
    let err = p.check_driver("sim", caps).unwrap_err().to_string();
    assert!(
        err.contains("answer-challenge") && err.contains("set-lock"),
        "{err}"
    );
    let err = p
        .check_driver("avr-isp", Capabilities::all())
        .unwrap_err()
        .to_string();
    assert!(err.contains("this job is for the sim driver"), "{err}");
}

/// The real STM32 and AVR drivers in the pipeline, in process (the
/// simulators behind an in-memory link): certificates from the HSM, the
/// challenge over the chip's UART, then the lock, read back.
#[test]
fn stm32_and_avr_drivers_through_the_whole_pipeline() {
    use flashgate::pipeline::BoardsFrom;
    use flashgate_serial::Loopback;
    let lab = lab(Kind::SoftHsm);

    // STM32F103: readout protection level 1 after the challenge.
    let fw = firmware();
    let (appliance, id, _) = job_from(&lab, "stm32f103.toml", |t| t, &fw, 0x0800_0000);
    let p = Arc::new(Provisioner::open(appliance, &id, Arc::new(MemoryLedger::new(100))).unwrap());
    let sims: Arc<Mutex<Vec<flashgate_stm32_uart::sim::SimHandle>>> = Arc::default();
    let s2 = sims.clone();
    let mut n = 0u64;
    let fixture = BoardsFrom::new(3, move || {
        n += 1;
        let mut options =
            flashgate_stm32_uart::sim::SimOptions::new(&flashgate_stm32_uart::STM32F103_MD)
                .instant();
        options.seed = n;
        let sim = flashgate_stm32_uart::sim::SimHandle::from_options(options).unwrap();
        s2.lock().unwrap().push(sim.clone());
        Ok(Box::new(flashgate_stm32_uart::Stm32UartTarget::new(
            Loopback::instant(sim),
        )) as Box<dyn flashgate_target::Target>)
    });
    let rt = flashgate::pipeline::runtime(4).unwrap();
    let summary = rt.block_on(p.clone().run(
        vec![Box::new(fixture)],
        RunOptions {
            units: Some(3),
            block: 4,
        },
        StopHandle::default(),
        Arc::new(|_| {}),
    ));
    assert_eq!(summary.passed, 3, "{summary:?}");
    for sim in sims.lock().unwrap().iter() {
        let rdp = sim.lock().rdp();
        assert_ne!(
            format!("{rdp:?}"),
            format!("{:?}", flashgate_stm32_uart::RdpLevel::Level0),
            "every STM32 is readout-protected"
        );
    }
    drop(p);

    // ATmega328P: the policy's lock byte, read back.
    let (appliance, id, _) = job_from(&lab, "avr-atmega328p.toml", |t| t, &fw[..4000], 0);
    let p = Arc::new(Provisioner::open(appliance, &id, Arc::new(MemoryLedger::new(100))).unwrap());
    let chips: Arc<Mutex<Vec<flashgate_avr_isp::sim::AvrSim>>> = Arc::default();
    let c2 = chips.clone();
    let mut n = 0u64;
    let fixture = BoardsFrom::new(2, move || {
        n += 1;
        let sim = flashgate_avr_isp::sim::AvrSim::new(
            &format!("avr:timing=fast,part=m328p,seed={n}")
                .parse()
                .unwrap(),
        )
        .unwrap();
        let t = flashgate_avr_isp::AvrIspTarget::new(
            Box::new(Loopback::instant(sim.programmer())),
            Some(Box::new(Loopback::instant(sim.agent()))),
            flashgate_avr_isp::AvrIspConfig::for_part(&flashgate_avr_isp::ATMEGA328P),
        );
        c2.lock().unwrap().push(sim);
        Ok(Box::new(t) as Box<dyn flashgate_target::Target>)
    });
    let summary = rt.block_on(p.clone().run(
        vec![Box::new(fixture)],
        RunOptions {
            units: Some(2),
            block: 4,
        },
        StopHandle::default(),
        Arc::new(|_| {}),
    ));
    assert_eq!(summary.passed, 2, "{summary:?}");
    for sim in chips.lock().unwrap().iter() {
        assert_eq!(
            sim.with_chip(|c| c.lock()),
            0xFC,
            "the policy's lock byte is set and read back"
        );
    }
}

/// `on-chip` identity keys: the target generates the key pair, only the
/// public key leaves it, the certificate names it, and the challenge proves
/// the chip holds it. `random` symmetric keys come from the HSM RNG.
#[test]
fn on_chip_identity_and_random_keys() {
    let lab = lab(Kind::SoftHsm);
    let (appliance, id, _) = job(
        &lab,
        |t| {
            t.replacen("source = \"derived\"", "source = \"on-chip\"", 1)
                .replacen("source = \"derived\"", "source = \"random\"", 1)
        },
        &firmware(),
    );
    let p = Arc::new(Provisioner::open(appliance, &id, Arc::new(MemoryLedger::new(100))).unwrap());
    let fixture = SimFixture::from_options("seed=77,timing=zero,keep=on").unwrap();
    let (summary, records) = run(p.clone(), &fixture, 2, 4);
    assert_eq!(summary.passed, 4, "{records:?}");
    let policy = p.policy().clone();
    let fw_key = policy.key("fw-update").unwrap();
    let mut seen = std::collections::HashSet::new();
    for board in fixture.boards() {
        board.with_chip(|chip| {
            let k = chip.inspect_keystore(fw_key.location.offset, 32).unwrap();
            assert!(k.iter().any(|b| *b != 0xFF), "a random key was injected");
            assert!(seen.insert(k.to_vec()), "random keys differ between units");
        });
    }
}

/// A board whose UID already passed for this job is refused at identify and
/// not counted; a board whose earlier attempt failed is reworked, and its
/// record names the earlier attempt.
#[test]
fn a_provisioned_uid_is_refused_and_a_failed_one_is_reworked() {
    use flashgate::pipeline::{FailureKind, UnitStage};
    let lab = lab(Kind::SoftHsm);
    let (appliance, id, _) = job(&lab, |t| t, &firmware());
    let ledger = Arc::new(MemoryLedger::new(1000));
    let p = Arc::new(Provisioner::open(appliance, &id, ledger.clone()).unwrap());

    // Board 1 fails after it was counted; boards 0 and 2 pass.
    let faulty =
        SimFixture::from_options("seed=31,timing=zero,boards=3,fault=1:contact-lost@program")
            .unwrap();
    let (first, records) = run(p.clone(), &faulty, 1, 3);
    assert_eq!(first.passed, 2, "{records:#?}");
    let failed = records
        .iter()
        .find(|r| r.result.failure().is_some())
        .unwrap();
    assert!(records.iter().all(|r| r.rework_of.is_none()));

    // The same three boards again (same seed, same UIDs), fault cleared.
    let again = SimFixture::from_options("seed=31,timing=zero,boards=3").unwrap();
    let (second, records) = run(p.clone(), &again, 1, 3);
    assert_eq!(
        second.passed, 1,
        "only the failed board is provisioned: {records:#?}"
    );
    assert_eq!(second.counted, 1, "refused boards are not counted");
    for r in &records {
        if r.uid == failed.uid {
            assert_eq!(r.result, UnitResult::Passed);
            assert_eq!(
                r.rework_of, failed.counter,
                "the rework names the failed attempt"
            );
        } else {
            let f = r.result.failure().unwrap();
            assert_eq!(
                (f.stage, f.kind),
                (UnitStage::Identify, FailureKind::BoardRefused)
            );
            assert!(f.reason.contains("already provisioned"), "{f}");
            assert!(r.counter.is_none() && !r.secrets_injected);
        }
    }
    // Now every board has passed: a third pass refuses all three.
    let (third, records) = run(p, &again, 1, 3);
    assert_eq!((third.passed, third.counted), (0, 0), "{records:#?}");
}
