//! Checkpoint cadence of a many-channel run: a channel counts its unit
//! only once the record is durable, and a checkpoint signs all that is
//! durable, so the interval must leave room for the units in flight. In a
//! process of its own: the lab's SoftHSM token is one per process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flashgate::station::{FixtureSet, JobId, StartOptions};

fn job_id(job: &flashgate::lab::ImportedLabJob) -> JobId {
    JobId::from_bytes(job.imported.manifest().job_id)
}

/// The policy's `checkpoint_every_units` bounds the units between two
/// signed checkpoints of a run however many channels record at once: a
/// checkpoint signs every unit durable by then, including those other
/// channels recorded while it was due.
#[test]
fn eight_channels_never_put_more_units_between_checkpoints_than_the_policy_allows() {
    use flashgate_audit::checkpoint::UnverifiedCheckpoint;
    use flashgate_audit::record::{Record, RecordKind};

    let base = tempfile::tempdir().unwrap();
    let setup = flashgate::lab::setup(&base.path().join("lab"), "softhsm", None).unwrap();
    let firmware: Vec<u8> = (0..4 * 1024u32).map(|i| (i * 5) as u8).collect();
    let job = flashgate::lab::build_and_import(&setup, &flashgate::lab::example_policy(), firmware)
        .unwrap();
    let every = u64::from(job.imported.policy().audit().checkpoint_every_units);
    let id = job_id(&job);
    let summary = setup
        .station
        .start_run(
            &id,
            FixtureSet::parse("sim:seed=31,timing=zero", 8).unwrap(),
            StartOptions::new("line 1").units(Some(8 * every + 40)),
        )
        .unwrap()
        .wait();
    assert_eq!(summary.passed + summary.failed(), 8 * every + 40);

    let out = base.path().join("bundle");
    setup.station.export_bundle(&id, &out).unwrap();
    let bundle = flashgate_audit::Bundle::open(&out).unwrap();
    let mut sizes = Vec::new();
    let mut file = bundle.checkpoints().unwrap();
    while let Some((_, bytes)) = file.next_bytes().unwrap() {
        sizes.push(
            UnverifiedCheckpoint::parse(bytes)
                .unwrap()
                .checkpoint_unverified()
                .size,
        );
    }
    sizes.sort_unstable();
    let (mut units, mut most, mut seq, mut next) = (0u64, 0u64, 0u64, 0usize);
    let mut file = bundle.records().unwrap();
    while let Some((_, bytes)) = file.next_bytes().unwrap() {
        while sizes.get(next).is_some_and(|s| *s <= seq) {
            units = 0;
            next += 1;
        }
        if matches!(
            Record::decode(bytes).unwrap().kind,
            RecordKind::UnitPassed(_) | RecordKind::UnitFailed(_)
        ) {
            units += 1;
            most = most.max(units);
        }
        seq += 1;
    }
    assert!(most >= every / 2, "the run checkpointed by units: {most}");
    assert!(
        most <= every,
        "{most} units between two checkpoints, against a policy of {every}"
    );
}
