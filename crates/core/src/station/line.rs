//! A run on a named fixture set: one job per driver of the set, each
//! driver's channels one single-driver run with that job's quota ledger.
//! The runs are all checked before any is recorded, start together, stop
//! together, and end with one summary per job.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::fixtures::definition::{self, Group};
use super::run::{self, Checked};
use super::{FixtureDef, JobId, RunHandle, StartOptions, Station, StationError};
use crate::appliance::ImportedJob;
use crate::pipeline::{RunSummary, StopHandle};

/// The runs of one fixture set, one per job.
#[derive(Debug)]
pub struct LineRun {
    runs: Vec<RunHandle>,
    offsets: Vec<u32>,
}

impl LineRun {
    /// The runs, in the order of the set's drivers.
    pub fn runs(&self) -> &[RunHandle] {
        &self.runs
    }

    /// The first channel number of each run within the whole fixture set
    /// (the set's channel i is run r's channel i - offset(r)); 0 for a run
    /// that is not in the line.
    pub fn channel_offset(&self, run: usize) -> u32 {
        self.offsets.get(run).copied().unwrap_or(0)
    }

    /// Asks every channel of every run to finish its unit in flight and
    /// stop. The runs share one stop: stopping one of them stops the line.
    pub fn stop(&self) {
        for r in &self.runs {
            r.stop();
        }
    }

    /// The runs, each with its first channel's number in the set, for a
    /// front end that watches each on its own.
    pub fn into_runs(self) -> Vec<(RunHandle, u32)> {
        self.runs.into_iter().zip(self.offsets).collect()
    }

    /// Waits for every run to end; one summary per job.
    pub fn wait(self) -> Vec<(JobId, RunSummary)> {
        self.runs.into_iter().map(|r| (r.job(), r.wait())).collect()
    }
}

/// Marks a fixture set in use while any run of its line lives.
#[derive(Debug)]
pub(super) struct InUse {
    live: Arc<Mutex<BTreeSet<String>>>,
    name: String,
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.name);
    }
}

pub(super) fn start(
    station: &Station,
    jobs: &[JobId],
    fixtures: &FixtureDef,
    options: StartOptions,
) -> Result<LineRun, StationError> {
    let groups = definition::groups(&fixtures.channels)?;
    let matched = match_jobs(station, jobs, fixtures, groups)?;
    if !station
        .live_fixtures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(fixtures.name.clone())
    {
        return Err(StationError::FixturesInUse {
            name: fixtures.name.clone(),
        });
    }
    let in_use: Arc<dyn Send + Sync> = Arc::new(InUse {
        live: station.live_fixtures.clone(),
        name: fixtures.name.clone(),
    });
    // Every check of every run first: nothing is recorded until all pass.
    let stop = StopHandle::default();
    let mut checked: Vec<(u32, Checked)> = Vec::with_capacity(matched.len());
    for (group, id, job) in matched {
        let c = run::check(station, &id, job, &group.fixtures, options.clone())?;
        checked.push((group.offset, c.sharing(stop.clone(), in_use.clone())));
    }
    drop(in_use);
    let mut line = LineRun {
        runs: Vec::with_capacity(checked.len()),
        offsets: Vec::with_capacity(checked.len()),
    };
    let mut pending = checked.into_iter();
    while let Some((offset, c)) = pending.next() {
        match c.start() {
            Ok(run) => {
                line.runs.push(run);
                line.offsets.push(offset);
            }
            Err(e) => {
                // The line starts whole or not at all.
                drop(pending);
                stop.stop();
                let _ = line.wait();
                return Err(e);
            }
        }
    }
    Ok(line)
}

/// Pairs each driver's group with the one job whose policy names that
/// driver, refusing a job for no driver of the set, a driver without a
/// job, two jobs for one driver and a job given twice.
fn match_jobs(
    station: &Station,
    jobs: &[JobId],
    fixtures: &FixtureDef,
    groups: Vec<Group>,
) -> Result<Vec<(Group, JobId, ImportedJob)>, StationError> {
    let mut loaded: Vec<(String, JobId, ImportedJob)> = Vec::with_capacity(jobs.len());
    for (i, id) in jobs.iter().enumerate() {
        if jobs[..i].contains(id) {
            return Err(StationError::RepeatedJob { id: *id });
        }
        let job = run::load_job(station, id)?;
        let driver = job.policy().target().driver.as_str().to_owned();
        if !groups.iter().any(|g| g.driver == driver) {
            return Err(StationError::JobNotInFixtures {
                id: *id,
                driver,
                fixtures: fixtures.name.clone(),
            });
        }
        if let Some((_, first, _)) = loaded.iter().find(|(d, _, _)| *d == driver) {
            return Err(StationError::TwoJobsForDriver {
                driver,
                first: *first,
                second: *id,
            });
        }
        loaded.push((driver, *id, job));
    }
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let Some(at) = loaded.iter().position(|(d, _, _)| *d == group.driver) else {
            return Err(StationError::NoJobForDriver {
                fixtures: fixtures.name.clone(),
                driver: group.driver,
            });
        };
        let (_, id, job) = loaded.swap_remove(at);
        out.push((group, id, job));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::appliance::ApplianceConfig;
    use crate::station::{Access, FixtureOrigin, FixtureSet};

    const AVR_POLICY: &str = include_str!("../../../../policies/avr-atmega328p.toml");
    const NO_PORT: &str = "avr-isp:port=/nonexistent/programmer,agent=/nonexistent/agent";

    fn id(job: &crate::lab::ImportedLabJob) -> JobId {
        JobId::from_bytes(job.imported.manifest().job_id)
    }

    fn log_len(dir: &std::path::Path) -> usize {
        std::fs::read(dir.join("state/audit/audit.log"))
            .map(|b| b.len())
            .unwrap_or(0)
    }

    fn specs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn def(name: &str, channels: &[&str]) -> FixtureDef {
        FixtureDef {
            name: name.to_owned(),
            origin: FixtureOrigin::Station,
            channels: specs(channels),
        }
    }

    /// One token per process: every station case of the lab in one test.
    #[test]
    fn a_line_runs_one_job_per_driver_and_refuses_before_recording() {
        let base = tempfile::tempdir().unwrap();
        let setup = crate::lab::setup(&base.path().join("lab"), "softhsm", None).unwrap();
        let firmware: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
        let sim = id(&crate::lab::build_and_import(
            &setup,
            &crate::lab::example_policy(),
            firmware.clone(),
        )
        .unwrap());
        let sim2 = id(&crate::lab::build_and_import(
            &setup,
            &crate::lab::example_policy(),
            firmware.clone(),
        )
        .unwrap());
        let now = crate::appliance::unix_now();
        let avr_policy = crate::lab::with_validity(AVR_POLICY, now - 86_400, now + 86_400);
        let avr = id(&crate::lab::build_and_import(&setup, &avr_policy, firmware).unwrap());

        // The config's sets, read at open.
        let crate::lab::Setup { station, dir, .. } = setup;
        drop(station);
        let config_path = dir.join("appliance.toml");
        let mut text = std::fs::read_to_string(&config_path).unwrap();
        text.push_str(&format!(
            "[fixtures.line]\ntargets = [\"sim:seed=31,timing=zero\", \"sim:seed=32,timing=zero\", \"{NO_PORT}\"]\n[fixtures.bench]\ntarget = \"sim:seed=33,timing=zero\"\nchannels = 2\n"
        ));
        std::fs::write(&config_path, text).unwrap();
        let station = Station::open(
            ApplianceConfig::load(&config_path).unwrap(),
            Access::Write {
                purpose: "a line test".to_owned(),
            },
        )
        .unwrap();

        // The sets: config first, then the station's, each by name.
        let extra = station
            .define_fixtures("extra", &specs(&[" sim:seed=41,timing=realistic", NO_PORT]))
            .unwrap();
        assert_eq!(extra.origin, FixtureOrigin::Station);
        assert_eq!(extra.channels[0], "sim:seed=41,timing=realistic");
        let sets = station.fixture_sets().unwrap();
        let seen: Vec<(&str, FixtureOrigin, usize)> = sets
            .iter()
            .map(|d| (d.name.as_str(), d.origin, d.channels.len()))
            .collect();
        assert_eq!(
            seen,
            [
                ("bench", FixtureOrigin::Config, 2),
                ("line", FixtureOrigin::Config, 3),
                ("extra", FixtureOrigin::Station, 2)
            ]
        );
        assert_eq!(station.fixture_set("extra").unwrap(), extra);
        let e = station.fixture_set("nope").unwrap_err();
        assert!(matches!(e, StationError::NoSuchFixtures { .. }), "{e}");
        assert!(e.to_string().contains("bench, line, extra"), "{e}");
        let e = station.fixture_set("../x").unwrap_err();
        assert!(matches!(e, StationError::BadFixtureName { .. }), "{e}");
        let e = station
            .define_fixtures("line", &specs(&["sim"]))
            .unwrap_err();
        assert!(
            matches!(e, StationError::ShadowsConfigFixtures { .. }),
            "{e}"
        );
        let e = station.remove_fixtures("bench").unwrap_err();
        assert!(matches!(e, StationError::ConfigFixtures { .. }), "{e}");
        let e = station
            .define_fixtures("bad", &specs(&["sim", "stm32-uart:baud=1"]))
            .unwrap_err();
        assert!(
            matches!(e, StationError::FixtureSpec { channel: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("port=... is required"), "{e}");
        station
            .define_fixtures("gone", &specs(&["sim:seed=5"]))
            .unwrap();
        station.remove_fixtures("gone").unwrap();
        let e = station.remove_fixtures("gone").unwrap_err();
        assert!(matches!(e, StationError::NoSuchFixtures { .. }), "{e}");

        // Refusals: each before anything is recorded.
        let line = station.fixture_set("line").unwrap();
        let bench = station.fixture_set("bench").unwrap();
        let options = || StartOptions::new("line test").units(Some(4));
        let before = log_len(&dir);
        let refused = |jobs: &[JobId], set: &FixtureDef| -> StationError {
            let e = station.start_line(jobs, set, options()).unwrap_err();
            assert_eq!(log_len(&dir), before, "nothing recorded: {e}");
            assert!(station.live_jobs().is_empty(), "{e}");
            e
        };
        let e = refused(&[sim], &line);
        assert!(
            matches!(&e, StationError::NoJobForDriver { driver, .. } if driver == "avr-isp"),
            "{e}"
        );
        let e = refused(&[sim, avr, sim2], &line);
        assert!(matches!(e, StationError::TwoJobsForDriver { .. }), "{e}");
        let e = refused(&[sim, sim], &bench);
        assert!(matches!(e, StationError::RepeatedJob { .. }), "{e}");
        let e = refused(&[sim, avr], &bench);
        assert!(
            matches!(&e, StationError::JobNotInFixtures { driver, .. } if driver == "avr-isp"),
            "{e}"
        );
        let e = refused(
            &[sim],
            &def("x", &["sim:seed=1", "sim:seed=2", "sim:seed=1"]),
        );
        assert!(matches!(e, StationError::RepeatedTarget { .. }), "{e}");
        let e = refused(
            &[sim, avr],
            &def("x", &["sim:seed=1", NO_PORT, "sim:seed=2"]),
        );
        assert!(matches!(e, StationError::FixturesInterleaved { .. }), "{e}");
        let e = refused(&[JobId::from_bytes([7; 16])], &bench);
        assert!(e.to_string().contains("no imported job"), "{e}");
        // The sim run's checks pass, the AVR run's do not (no agent, and the
        // job needs a challenge): neither is recorded.
        let e = refused(
            &[sim, avr],
            &def("x", &["sim:seed=1", "avr-isp:port=/nonexistent/programmer"]),
        );
        assert!(e.to_string().contains("agent=PATH"), "{e}");

        // A line: runs in the set's driver order, whatever the jobs' order.
        let run = station.start_line(&[avr, sim], &line, options()).unwrap();
        let jobs: Vec<JobId> = run.runs().iter().map(RunHandle::job).collect();
        assert_eq!(jobs, [sim, avr]);
        assert_eq!((run.channel_offset(0), run.channel_offset(1)), (0, 2));
        assert_eq!(run.runs()[0].snapshot().channels.len(), 2);
        assert_eq!(run.runs()[1].snapshot().channels.len(), 1);
        let summaries = run.wait();
        assert_eq!(summaries[0].0, sim);
        assert_eq!(summaries[0].1.passed, 4, "{:?}", summaries[0].1);
        assert_eq!(summaries[1].0, avr);
        assert_eq!(summaries[1].1.passed + summaries[1].1.failed(), 0);
        assert_eq!(summaries[1].1.fixtures_failed, 1, "{:?}", summaries[1].1);
        assert!(station.live_jobs().is_empty());

        // While a line lives, its set and its jobs are in use; one stop
        // stops every run of it.
        let run = station
            .start_line(&[sim, avr], &extra, StartOptions::new("line test"))
            .unwrap();
        let e = station
            .define_fixtures("extra", &specs(&["sim"]))
            .unwrap_err();
        assert!(matches!(e, StationError::FixturesInUse { .. }), "{e}");
        let e = station.remove_fixtures("extra").unwrap_err();
        assert!(matches!(e, StationError::FixturesInUse { .. }), "{e}");
        let e = station
            .start_line(&[sim, avr], &extra, StartOptions::new("again"))
            .unwrap_err();
        assert!(matches!(e, StationError::FixturesInUse { .. }), "{e}");
        let e = station
            .start_run(
                &sim,
                FixtureSet::parse("sim:seed=9", 1).unwrap(),
                StartOptions::new("again"),
            )
            .unwrap_err();
        assert!(matches!(e, StationError::JobRunning { .. }), "{e}");
        run.runs()[1].stop();
        let summaries = run.wait();
        assert_eq!(summaries[0].1.stopped_because, "operator stop");
        station.remove_fixtures("extra").unwrap();
        assert!(station.live_jobs().is_empty());
    }
}
