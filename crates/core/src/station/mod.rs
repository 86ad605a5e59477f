//! The station: the one API every front end (the command line, the demo,
//! a network service, line software) drives the CM side through. It owns
//! the appliance the way a debug session owns its probe: one PKCS#11
//! module and one audit log per process, the writer lock when it changes
//! state, and the live runs.
//!
//! ```text
//! Station::open(config, Access::Write { .. })   lock, then recover what a crash left
//!   .import(package) / .remove(job)              refused while that job runs
//!   .start_run(job, fixtures, options)           every check first, then RunStarted
//!       -> RunHandle: events, snapshot, stop, wait -> RunSummary
//!   .fixture_sets() / .define_fixtures(name, channels) / .remove_fixtures(name)
//!   .start_line(jobs, fixture_set, options)      one run per driver, all checked first
//!       -> LineRun: runs, channel_offset, stop, wait -> one RunSummary per job
//!   .export_bundle(job, out)
//! ```

mod fixtures;
mod job_id;
mod line;
mod run;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(crate) use fixtures::definition::{check as check_fixtures, FixtureTable};
pub use fixtures::{FixtureDef, FixtureOrigin, FixtureSet};
pub use job_id::{JobId, JobIdError};
pub use line::LineRun;
pub use run::{ChannelSnapshot, EventCursor, RunHandle, RunSnapshot, SeqEvent, StartOptions};

use crate::appliance::{
    Appliance, ApplianceConfig, ApplianceError, ImportError, ImportedJob, LogResetReport,
    WriterLock, RECOVERING,
};
use crate::bundle::BundleError;
use crate::drivers::DriverMismatch;
use crate::enrollment::VerifiedEnrollment;
use crate::pipeline::RunError;
use crate::station_ca::{StationCa, StationCaError};

/// What went wrong at the station: the domain errors of the layers below,
/// and the station's own refusals (misuse: asking a reader to write, or
/// changing a job while it runs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StationError {
    /// The appliance (token, state, audit log).
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
    /// A package refused at import.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// A run refused at its start.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The target spec.
    #[error(transparent)]
    Spec(#[from] flashgate_target::SpecError),
    /// The fixtures' driver cannot run the job.
    #[error(transparent)]
    Driver(#[from] DriverMismatch),
    /// Export.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The station's client-certificate authority or its deny-list.
    #[error(transparent)]
    StationCa(#[from] StationCaError),
    /// A job id that does not parse.
    #[error(transparent)]
    JobId(#[from] JobIdError),
    /// A change asked of a station opened to read.
    #[error("this station was opened read-only; {what} needs the writer lock")]
    ReadOnly { what: &'static str },
    /// The job has a live run in this process.
    #[error("job {id} is running on this station; stop its run first")]
    JobRunning { id: JobId },
    /// A change that needs every run stopped.
    #[error("{what} needs every run on this station stopped; {live} run(s) are live")]
    RunsLive { what: &'static str, live: usize },
    /// A run with no channel.
    #[error("a run needs at least one channel (--channels 1 or more)")]
    NoChannels,
    /// The same target twice in a gang.
    #[error("the target {target} is given twice; give each programmer once")]
    RepeatedTarget { target: String },
    /// A gang of targets of more than one driver: a job's policy names one.
    #[error("the targets name two drivers ({first} and {other}); a run programs one job, whose policy names one driver: run each driver's boards in a run of its own")]
    MixedDrivers { first: String, other: String },
    /// The run thread could not be started.
    #[error("cannot start the run: {0}")]
    Spawn(std::io::Error),

    // A fixture set's definition: what a supervisor sends may be anything.
    /// A name that cannot name a fixture set (it names a file).
    #[error("'{name}' cannot name a fixture set: use 1 to 32 of a-z, 0-9 and '-'")]
    BadFixtureName { name: String },
    /// A channel's target spec does not parse.
    #[error("channel {channel}: {source}")]
    FixtureSpec {
        channel: u32,
        source: flashgate_target::SpecError,
    },
    /// More channels than a set may have.
    #[error(
        "a fixture set has at most {max} channels, not {channels}: split it into several sets"
    )]
    FixtureChannels { channels: usize, max: usize },
    /// A driver's channels are not consecutive in the set.
    #[error("channel {channel} is a {driver} channel after another driver's: list each driver's channels together, so that each driver's run has consecutive channels of the set")]
    FixturesInterleaved { driver: String, channel: u32 },
    /// A station-defined set's file does not read back (edited or damaged).
    #[error("the station's fixture set file {} is invalid ({detail}); define the set again or remove the file", .path.display())]
    FixtureFile { path: PathBuf, detail: String },

    // Asking for what the sets are not.
    /// No set of that name.
    #[error("there is no fixture set {name}; {}", known_sets(.known))]
    NoSuchFixtures { name: String, known: Vec<String> },
    /// A station-defined set may not take a config set's name.
    #[error("the fixture set {name} is defined in the appliance config; choose another name for a set the station defines")]
    ShadowsConfigFixtures { name: String },
    /// Config sets are changed in the config only.
    #[error("the fixture set {name} is defined in the appliance config, which the station does not change; remove it from the config")]
    ConfigFixtures { name: String },
    /// The set is in use by a live run.
    #[error("the fixture set {name} is in use by a live run; stop its run first")]
    FixturesInUse { name: String },
    /// A driver of the set has no job among those given.
    #[error("the fixture set {fixtures} has {driver} channels but no job given is for {driver}; add a job for them, or use a set without them")]
    NoJobForDriver { fixtures: String, driver: String },
    /// A job's driver has no channel in the set.
    #[error("job {id} is for the {driver} driver, which the fixture set {fixtures} has no channel of; leave the job out or use a set with {driver} channels")]
    JobNotInFixtures {
        id: JobId,
        driver: String,
        fixtures: String,
    },
    /// Two jobs for one driver: its channels run one job.
    #[error("jobs {first} and {second} are both for the {driver} driver, whose channels run one job; give one of them")]
    TwoJobsForDriver {
        driver: String,
        first: JobId,
        second: JobId,
    },
    /// The same job twice.
    #[error("job {id} is given twice; give each job once")]
    RepeatedJob { id: JobId },
}

fn known_sets(known: &[String]) -> String {
    if known.is_empty() {
        "none is defined: add a [fixtures.NAME] table to the appliance config".to_owned()
    } else {
        format!("the sets are {}", known.join(", "))
    }
}

/// How a station opens the appliance.
#[derive(Debug, Clone)]
pub enum Access {
    /// To read. It never waits for the writer lock: when no other process
    /// holds it, what a crash left is recovered first (and the lock
    /// released); when one does, the state is read as it is.
    Read,
    /// To change state: the writer lock is taken (refused at once, naming
    /// the holder, when another process has it) and held until the station
    /// drops. `purpose` completes "... by another flashgate process" in
    /// the refusal another process gets ("a job is being imported").
    Write {
        /// What this process is doing.
        purpose: String,
    },
}

/// An open station.
#[derive(Debug)]
pub struct Station {
    appliance: Arc<Appliance>,
    writer: Option<Arc<WriterLock>>,
    live: Arc<Mutex<BTreeSet<JobId>>>,
    live_fixtures: Arc<Mutex<BTreeSet<String>>>,
    recovered: Vec<String>,
}

impl Station {
    /// Opens the appliance `config` names. With [`Access::Write`] the
    /// writer lock is held from here on and recovery runs under it.
    pub fn open(config: ApplianceConfig, access: Access) -> Result<Self, StationError> {
        Self::open_with_clock(config, access, Arc::new(crate::clock::SystemClock))
    }

    /// [`open`](Self::open), reading the time from `clock` (validity
    /// windows, certificate dates, records).
    pub fn open_with_clock(
        config: ApplianceConfig,
        access: Access,
        clock: Arc<dyn crate::clock::TimeProvider>,
    ) -> Result<Self, StationError> {
        let appliance = Appliance::open_with_clock(config, clock)?;
        let mut recovered = Vec::new();
        let writer = match access {
            Access::Read => {
                if let Some(lock) = appliance.try_lock_writer(RECOVERING)? {
                    recovered = appliance.recover_all(false)?;
                    drop(lock);
                }
                None
            }
            Access::Write { purpose } => {
                let lock = appliance.lock_writer(&purpose)?;
                recovered = appliance.recover_all(true)?;
                Some(Arc::new(lock))
            }
        };
        Ok(Self::new(appliance, writer, recovered))
    }

    fn new(appliance: Appliance, writer: Option<Arc<WriterLock>>, recovered: Vec<String>) -> Self {
        Self {
            appliance: Arc::new(appliance),
            writer,
            live: Arc::default(),
            live_fixtures: Arc::default(),
            recovered,
        }
    }

    /// Opens an appliance that is not enrolled yet, with the writer lock,
    /// for [`enroll`](Self::enroll) (nothing to recover).
    pub fn open_for_enrollment(config: ApplianceConfig) -> Result<Self, StationError> {
        let appliance = Appliance::open(config)?;
        let lock = appliance.lock_writer("the appliance is being enrolled")?;
        Ok(Self::new(appliance, Some(Arc::new(lock)), Vec::new()))
    }

    /// Opens the appliance, with the writer lock, to reset a damaged audit
    /// log: only what needs no log is recovered (job files), since the log
    /// itself is what is broken.
    pub fn open_for_reset(config: ApplianceConfig) -> Result<Self, StationError> {
        let appliance = Appliance::open(config)?;
        let lock = appliance.lock_writer("the audit log is being reset")?;
        let recovered = appliance.recover()?;
        Ok(Self::new(appliance, Some(Arc::new(lock)), recovered))
    }

    /// What recovery did when the station opened, one sentence each.
    pub fn recovered(&self) -> &[String] {
        &self.recovered
    }

    /// The appliance, to read its state.
    pub fn appliance(&self) -> &Appliance {
        &self.appliance
    }

    fn writer(&self, what: &'static str) -> Result<(), StationError> {
        match self.writer {
            Some(_) => Ok(()),
            None => Err(StationError::ReadOnly { what }),
        }
    }

    fn not_running(&self, id: &JobId) -> Result<(), StationError> {
        if self.live_jobs().contains(id) {
            return Err(StationError::JobRunning { id: *id });
        }
        Ok(())
    }

    /// The jobs with a live run on this station.
    pub fn live_jobs(&self) -> BTreeSet<JobId> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `appliance init`: creates the appliance keys and writes the signed
    /// enrollment record; returns its bytes.
    pub fn enroll(&self) -> Result<(Vec<u8>, VerifiedEnrollment), StationError> {
        self.writer("enrollment")?;
        Ok(self.appliance.enroll()?)
    }

    /// The appliance's enrollment record.
    pub fn enrollment(&self) -> Result<VerifiedEnrollment, StationError> {
        Ok(self.appliance.enrollment()?)
    }

    /// Every imported job.
    pub fn jobs(&self) -> Result<Vec<ImportedJob>, StationError> {
        Ok(self.appliance.jobs()?)
    }

    /// Verifies a package and moves its secrets into the HSM.
    pub fn import(&self, package: &Path) -> Result<ImportedJob, StationError> {
        self.writer("importing a job")?;
        Ok(self.appliance.import(package)?)
    }

    /// Removes a job: its HSM keys are destroyed, its records stay.
    pub fn remove(&self, id: &JobId) -> Result<(), StationError> {
        self.writer("removing a job")?;
        self.not_running(id)?;
        Ok(self.appliance.remove_job(&id.to_string())?)
    }

    /// Seals a damaged audit log and starts a new segment.
    pub fn reset_log(&self, reason: &str) -> Result<LogResetReport, StationError> {
        self.writer("resetting the audit log")?;
        let live = self.live_jobs().len();
        if live > 0 {
            return Err(StationError::RunsLive {
                what: "resetting the audit log",
                live,
            });
        }
        Ok(self.appliance.reset_log(reason)?)
    }

    /// Writes the audit bundle of a job into `out` (new or empty), with the
    /// sealed segments of earlier resets.
    pub fn export_bundle(&self, id: &JobId, out: &Path) -> Result<ExportReport, StationError> {
        let certificates = self.appliance.export_audit_bundle(id.as_bytes(), out)?;
        let sealed_segments = self.appliance.copy_sealed_segments(out)?;
        Ok(ExportReport {
            certificates,
            sealed_segments,
            sealed_dir: out.join("sealed"),
        })
    }

    /// `appliance ca init`: makes the station CA key in the token and its
    /// self-signed certificate (state_dir/station/ca.pem); refused when the
    /// station has one.
    pub fn init_station_ca(&self, name: &str) -> Result<StationCa, StationError> {
        self.writer("creating the station CA")?;
        Ok(StationCa::init(Arc::clone(&self.appliance), name)?)
    }

    /// The station CA, its certificate checked against its key in the
    /// token. Reading changes nothing, so a read-only station can issue
    /// certificates.
    pub fn station_ca(&self) -> Result<StationCa, StationError> {
        Ok(StationCa::load(Arc::clone(&self.appliance))?)
    }

    /// Adds a client certificate's SHA-256 to the deny-list
    /// (state_dir/station/revoked), with `note` in a comment line before it;
    /// the file is replaced atomically (write temp + rename). False if it was
    /// there already.
    pub fn revoke_client(&self, fingerprint: [u8; 32], note: &str) -> Result<bool, StationError> {
        // The deny-list has a lock of its own, not the writer lock: the
        // station service holds that for as long as it runs, and a
        // certificate must be revocable while it does.
        let path = crate::station_ca::revoked_path(&self.appliance.config.state_dir);
        Ok(crate::station_ca::revoke(
            &path,
            fingerprint,
            note,
            self.appliance.now(),
        )?)
    }

    /// Starts a run of job `id` on `fixtures`. Everything is checked before
    /// anything is recorded (the job, the driver against the policy, the
    /// validity window, the quota); only then is `run-started` written and
    /// the channels start. The run goes on in the background; the handle
    /// streams its events, shows its state, stops it and gives its summary.
    pub fn start_run(
        &self,
        id: &JobId,
        fixtures: FixtureSet,
        options: StartOptions,
    ) -> Result<RunHandle, StationError> {
        self.writer("running a job")?;
        run::start(self, id, fixtures, options)
    }

    fn fixture_store(&self) -> fixtures::definition::Store {
        fixtures::definition::Store::new(&self.appliance.config.state_dir)
    }

    fn fixtures_live(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.live_fixtures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every fixture set: the config's, then the station-defined ones, each
    /// by name. A station-defined set that a config set of the same name
    /// (added to the config later) hides is left out.
    pub fn fixture_sets(&self) -> Result<Vec<FixtureDef>, StationError> {
        let mut out = self.appliance.config.fixtures.clone();
        for def in self.fixture_store().list()? {
            if !out.iter().any(|c| c.name == def.name) {
                out.push(def);
            }
        }
        Ok(out)
    }

    /// The fixture set `name`.
    pub fn fixture_set(&self, name: &str) -> Result<FixtureDef, StationError> {
        fixtures::definition::check_name(name)?;
        if let Some(def) = self
            .appliance
            .config
            .fixtures
            .iter()
            .find(|d| d.name == name)
        {
            return Ok(def.clone());
        }
        if let Some(def) = self.fixture_store().read(name)? {
            return Ok(def);
        }
        Err(StationError::NoSuchFixtures {
            name: name.to_owned(),
            known: self.fixture_sets()?.into_iter().map(|d| d.name).collect(),
        })
    }

    /// Defines (or replaces) a station fixture set: one target spec per
    /// channel, checked as a run would take them, kept in
    /// `state_dir/fixtures/NAME.toml`. Refused for a config set's name and
    /// while a live run uses the set.
    pub fn define_fixtures(
        &self,
        name: &str,
        channels: &[String],
    ) -> Result<FixtureDef, StationError> {
        self.writer("defining a fixture set")?;
        let channels: Vec<String> = channels.iter().map(|c| c.trim().to_owned()).collect();
        fixtures::definition::check(name, &channels)?;
        if self.in_config(name) {
            return Err(StationError::ShadowsConfigFixtures {
                name: name.to_owned(),
            });
        }
        // Held while writing: no line starts on the set in between.
        let live = self.fixtures_live();
        if live.contains(name) {
            return Err(StationError::FixturesInUse {
                name: name.to_owned(),
            });
        }
        let def = FixtureDef {
            name: name.to_owned(),
            origin: FixtureOrigin::Station,
            channels,
        };
        self.fixture_store().write(&def)?;
        drop(live);
        Ok(def)
    }

    fn in_config(&self, fixtures: &str) -> bool {
        self.appliance
            .config
            .fixtures
            .iter()
            .any(|d| d.name == fixtures)
    }

    /// Removes a station-defined fixture set; refused for a config set and
    /// while a live run uses the set.
    pub fn remove_fixtures(&self, name: &str) -> Result<(), StationError> {
        self.writer("removing a fixture set")?;
        fixtures::definition::check_name(name)?;
        let live = self.fixtures_live();
        if live.contains(name) {
            return Err(StationError::FixturesInUse {
                name: name.to_owned(),
            });
        }
        if self.fixture_store().remove(name)? {
            return Ok(());
        }
        drop(live);
        if self.in_config(name) {
            return Err(StationError::ConfigFixtures {
                name: name.to_owned(),
            });
        }
        Err(StationError::NoSuchFixtures {
            name: name.to_owned(),
            known: self.fixture_sets()?.into_iter().map(|d| d.name).collect(),
        })
    }

    /// Starts one run per driver of `fixtures`, each with the job of `jobs`
    /// whose policy names that driver. Every check of every run comes
    /// before any run is recorded as started; if a later start still
    /// fails, the runs already started are stopped and waited for, and the
    /// error returned.
    pub fn start_line(
        &self,
        jobs: &[JobId],
        fixtures: &FixtureDef,
        options: StartOptions,
    ) -> Result<LineRun, StationError> {
        self.writer("running a job")?;
        line::start(self, jobs, fixtures, options)
    }
}

/// What [`Station::export_bundle`] wrote.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExportReport {
    /// Device certificates in the bundle.
    pub certificates: usize,
    /// Sealed segments of earlier log resets copied along.
    pub sealed_segments: usize,
    /// Where those went.
    pub sealed_dir: PathBuf,
}
