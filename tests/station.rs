//! The station API as a service would drive it: two runs of different jobs
//! live at once in one process on one token and one audit log, each on its
//! own fixtures; what must be refused while a run is live; events in order
//! and resumable; the snapshot; stop; and both audit bundles verifying clean.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flashgate::appliance::ApplianceConfig;
use flashgate::pipeline::RunEvent;
use flashgate::station::{Access, FixtureSet, JobId, StartOptions, Station, StationError};

fn job_id(job: &flashgate::lab::ImportedLabJob) -> JobId {
    JobId::from_bytes(job.imported.manifest().job_id)
}

#[test]
fn two_runs_live_in_one_process_and_everything_is_counted() {
    let base = tempfile::tempdir().unwrap();
    let setup = flashgate::lab::setup(&base.path().join("lab"), "softhsm", None).unwrap();
    let firmware: Vec<u8> = (0..8 * 1024u32).map(|i| (i * 7) as u8).collect();
    let policy = flashgate::lab::example_policy();
    let a = flashgate::lab::build_and_import(&setup, &policy, firmware.clone()).unwrap();
    let b = flashgate::lab::build_and_import(&setup, &policy, firmware).unwrap();
    let (ida, idb) = (job_id(&a), job_id(&b));
    let station = &setup.station;
    let config = ApplianceConfig::load(&setup.dir.join("appliance.toml")).unwrap();

    // A runs until it is stopped; B takes four boards.
    let run_a = station
        .start_run(
            &ida,
            FixtureSet::parse("sim:seed=11,timing=realistic,boards=10000", 2).unwrap(),
            StartOptions::new("line 1"),
        )
        .unwrap();
    let run_b = station
        .start_run(
            &idb,
            FixtureSet::parse("sim:seed=12,timing=zero", 1).unwrap(),
            StartOptions::new("line 2").units(Some(4)),
        )
        .unwrap();
    assert!(station.live_jobs().contains(&ida));

    // While A is live: no second run of it, no removal, no log reset.
    let again = station.start_run(
        &ida,
        FixtureSet::parse("sim:seed=13", 1).unwrap(),
        StartOptions::new("line 3"),
    );
    assert!(
        matches!(again, Err(StationError::JobRunning { id }) if id == ida),
        "{again:?}"
    );
    let e = station.remove(&ida).unwrap_err();
    assert!(e.to_string().contains("stop its run first"), "{e}");
    let e = station.reset_log("test").unwrap_err();
    assert!(matches!(e, StationError::RunsLive { .. }), "{e}");

    // Another writer, even in this process, is refused; a reader is not,
    // and it cannot change anything.
    let e = Station::open(
        config.clone(),
        Access::Write {
            purpose: "a second writer".to_owned(),
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("another flashgate process"), "{e}");
    let reader = Station::open(config, Access::Read).unwrap();
    assert_eq!(reader.jobs().unwrap().len(), 2);
    let e = reader.import(&a.path).unwrap_err();
    assert!(matches!(e, StationError::ReadOnly { .. }), "{e}");

    // B's events: ids from 1 in order; one result per board; a reader that
    // comes back after id 3 gets exactly the rest.
    let events: Vec<_> = run_b.events().collect();
    assert!(!events.is_empty());
    for (n, e) in events.iter().enumerate() {
        assert_eq!(e.id, n as u64 + 1);
    }
    let results = events
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                RunEvent::UnitPassed { .. } | RunEvent::UnitFailed { .. }
            )
        })
        .count();
    assert_eq!(results, 4);
    let resumed: Vec<u64> = run_b.events_after(3).map(|e| e.id).collect();
    assert_eq!(
        resumed,
        events[3..].iter().map(|e| e.id).collect::<Vec<_>>()
    );
    let summary_b = run_b.wait();
    assert_eq!(summary_b.passed + summary_b.failed(), 4);

    // A is still live on its own; stop finishes the units in flight.
    assert!(!run_a.snapshot().finished);
    run_a.stop();
    let snap_job = run_a.job();
    let summary_a = run_a.wait();
    assert_eq!(summary_a.stopped_because, "operator stop");
    assert_eq!(snap_job, ida);
    assert!(station.live_jobs().is_empty());

    // What the snapshot said at the end is what the summary says.
    let quota = a.imported.policy().job().quota;
    assert_eq!(summary_a.quota_left, quota - summary_a.counted);

    // Both bundles verify clean, each with the units its run counted.
    let oem =
        flashgate::oem::read_public_key_pem(&setup.oem_dir.join("signing-key.pub.pem")).unwrap();
    for (id, summary) in [(ida, &summary_a), (idb, &summary_b)] {
        let out = base.path().join(format!("bundle-{id}"));
        station.export_bundle(&id, &out).unwrap();
        let v = flashgate::bundle::verify_bundle(
            &out,
            &oem,
            Some(&setup.enrollment.fingerprint()),
            None,
        )
        .unwrap();
        assert!(v.report.is_clean(), "{}", v.report);
        assert_eq!(v.report.units.passed, summary.passed, "{id}");
    }

    // Once stopped, the job can be removed.
    station.remove(&ida).unwrap();
    assert_eq!(station.jobs().unwrap().len(), 1);

    // The station's clock decides validity: past B's window its run is
    // refused before anything is recorded, back inside it runs again.
    let records_before = log_len(&setup.dir);
    let flashgate::lab::Setup { station, dir, .. } = setup;
    drop(station);
    let window = b.imported.policy().job();
    let clock = std::sync::Arc::new(flashgate::clock::FixedClock::at(window.not_after));
    let station = Station::open_with_clock(
        ApplianceConfig::load(&dir.join("appliance.toml")).unwrap(),
        Access::Write {
            purpose: "a clock test".to_owned(),
        },
        clock.clone(),
    )
    .unwrap();
    let late = station.start_run(
        &idb,
        FixtureSet::parse("sim:seed=21,timing=zero", 1).unwrap(),
        StartOptions::new("line 2").units(Some(1)),
    );
    assert!(
        matches!(
            late,
            Err(StationError::Run(
                flashgate::pipeline::RunError::OutsideValidity { .. }
            ))
        ),
        "{late:?}"
    );
    assert_eq!(log_len(&dir), records_before, "nothing recorded");
    clock.set(window.not_after - 1);
    let summary = station
        .start_run(
            &idb,
            FixtureSet::parse("sim:seed=22,timing=zero", 1).unwrap(),
            StartOptions::new("line 2").units(Some(1)),
        )
        .unwrap()
        .wait();
    assert_eq!(summary.passed, 1, "{summary:?}");
}

/// Bytes in the appliance's audit log (it only grows).
fn log_len(dir: &std::path::Path) -> usize {
    let bytes = std::fs::read(dir.join("state/audit/audit.log")).unwrap();
    bytes.len()
}
