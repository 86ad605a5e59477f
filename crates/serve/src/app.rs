//! What every request shares: the station, the runs, the metrics, the
//! journal of who changed what.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use flashgate_core::station::Station;

use crate::error::ApiError;
use crate::metrics::{Metrics, StationFigures};
use crate::runs::RunTable;
use crate::unit_index::UnitIndex;
use crate::ServeOptions;

pub(crate) struct App {
    pub(crate) station: Arc<Station>,
    pub(crate) runs: RunTable,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) journal: Journal,
    pub(crate) options: ServeOptions,
    /// Where the audit log's units are, for lookups.
    pub(crate) units: Mutex<UnitIndex>,
    shutting_down: AtomicBool,
}

impl App {
    pub(crate) fn new(station: Arc<Station>, options: ServeOptions) -> Self {
        let journal = Journal::new(station_dir(&station).join("journal.jsonl"));
        // Uploads and exports a crash left half-staged: this process holds
        // the writer lock, so nothing else is using them.
        let _ = std::fs::remove_dir_all(station_dir(&station).join("uploads"));
        let metrics = Arc::new(Metrics::new());
        let observer = Arc::downgrade(&metrics);
        // One service per process: a second one keeps the first's observer.
        let _ = flashgate_core::hsm::latency::set_observer(Box::new(move |op, took| {
            if let Some(m) = observer.upgrade() {
                m.hsm_operation(op, took);
            }
        }));
        let units = Mutex::new(UnitIndex::new(
            &station.appliance().audit_dir().join("audit.log"),
        ));
        Self {
            units,
            station,
            runs: RunTable::default(),
            metrics,
            journal,
            options,
            shutting_down: AtomicBool::new(false),
        }
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Where uploads and exports are staged (inside the state directory,
    /// so nothing of a job passes through a shared temporary directory).
    pub(crate) fn upload_dir(&self) -> PathBuf {
        station_dir(&self.station).join("uploads")
    }

    pub(crate) fn upload_dir_created(&self) -> Result<PathBuf, ApiError> {
        let dir = self.upload_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Seconds since the audit log's last checkpoint was written.
    pub(crate) fn checkpoint_age(&self) -> Option<f64> {
        let path = self.station.appliance().audit_dir().join("checkpoints.log");
        let modified = std::fs::metadata(path).ok()?.modified().ok()?;
        Some(modified.elapsed().map_or(0.0, |d| d.as_secs_f64()))
    }

    /// What the metrics read from the station at a scrape.
    pub(crate) fn station_figures(&self) -> StationFigures {
        let appliance = self.station.appliance();
        let quota_left = self
            .station
            .jobs()
            .unwrap_or_default()
            .iter()
            .filter_map(|j| {
                let id = j.manifest().job_id;
                let used = appliance.quota_used(&id).ok()?;
                Some((hex::encode(id), j.policy().job().quota.saturating_sub(used)))
            })
            .collect();
        StationFigures {
            quota_left,
            checkpoint_age: self.checkpoint_age(),
            runs_live: self.runs.live().len(),
        }
    }
}

/// The service's own state directory, `STATE/station/`.
pub(crate) fn station_dir(station: &Station) -> PathBuf {
    station.appliance().config.state_dir.join("station")
}

/// Every mutating request, one JSON line each, appended and synced before
/// the answer goes out: who (certificate subject and fingerprint), what,
/// and how it ended. The signed audit log carries the operator of every
/// run and unit; this journal adds who imported, removed, exported, reset
/// and stopped.
pub(crate) struct Journal {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl Journal {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: Mutex::new(None),
        }
    }

    pub(crate) fn record(&self, who: &str, action: &str, outcome: &str) {
        let line = serde_json::json!({
            "time": flashgate_core::clock::TimeProvider::now(&flashgate_core::clock::SystemClock),
            "who": who,
            "action": action,
            "outcome": outcome,
        });
        tracing::info!(who, action, outcome, "station change");
        let mut guard = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            *guard = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
        }
        let written = guard
            .as_mut()
            .map(|f| writeln!(f, "{line}").and_then(|()| f.sync_data()));
        if !matches!(written, Some(Ok(()))) {
            tracing::error!(
                "cannot append to the station journal {}",
                self.path.display()
            );
        }
    }
}
