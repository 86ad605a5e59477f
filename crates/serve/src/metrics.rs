//! Prometheus metrics at `/metrics` (text exposition format), for a
//! certificate with the `metrics`, `supervisor` or `auditor` role. What the
//! runs report is counted as their events arrive; what the station knows
//! (quota, checkpoint age, HSM latency) is read at each scrape.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flashgate_core::pipeline::RunEvent;
use flashgate_core::station::JobId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnitLabels {
    job: String,
    result: &'static str,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

fn stage_histogram() -> Histogram {
    // 10 µs … ~10 min.
    Histogram::new(exponential_buckets(1e-5, 4.0, 14))
}

/// Passes in each of the last 60 minutes, for units per hour.
#[derive(Debug)]
struct Hourly {
    start: Instant,
    minutes: [(u64, u64); 60],
}

impl Hourly {
    fn minute(&self) -> u64 {
        self.start.elapsed().as_secs() / 60
    }

    fn count(&mut self) {
        let m = self.minute();
        let slot = &mut self.minutes[(m % 60) as usize];
        if slot.0 != m {
            *slot = (m, 0);
        }
        slot.1 += 1;
    }

    fn last_hour(&self) -> u64 {
        let m = self.minute();
        self.minutes
            .iter()
            .filter(|(at, _)| m.saturating_sub(*at) < 60)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    units: Family<UnitLabels, Counter>,
    stages: Family<StageLabels, Histogram, fn() -> Histogram>,
    hsm: Family<OperationLabels, Histogram, fn() -> Histogram>,
    quota_left: Family<JobLabels, Gauge>,
    units_per_hour: Gauge,
    checkpoint_age: Gauge<f64, AtomicU64>,
    runs_live: Gauge,
    hourly: Mutex<Hourly>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flashgate");
        let units = Family::<UnitLabels, Counter>::default();
        registry.register(
            "units",
            "Units that ended, by job, result (passed, failed) and failing stage",
            units.clone(),
        );
        let stages: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(stage_histogram);
        registry.register(
            "stage_duration_seconds",
            "Time per pipeline stage",
            stages.clone(),
        );
        let hsm: Family<OperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(stage_histogram);
        registry.register(
            "hsm_operation_duration_seconds",
            "Time per HSM operation, by operation",
            hsm.clone(),
        );
        let quota_left = Family::<JobLabels, Gauge>::default();
        registry.register(
            "quota_left",
            "Counter values a job may still use",
            quota_left.clone(),
        );
        let units_per_hour = Gauge::default();
        registry.register(
            "units_passed_last_hour",
            "Units passed in the last 60 minutes (units per hour)",
            units_per_hour.clone(),
        );
        let checkpoint_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_checkpoint_age_seconds",
            "Seconds since the audit log's last signed checkpoint",
            checkpoint_age.clone(),
        );
        let runs_live = Gauge::default();
        registry.register("runs_live", "Runs in progress", runs_live.clone());
        Self {
            registry,
            units,
            stages,
            hsm,
            quota_left,
            units_per_hour,
            checkpoint_age,
            runs_live,
            hourly: Mutex::new(Hourly {
                start: Instant::now(),
                minutes: [(u64::MAX, 0); 60],
            }),
        }
    }

    /// Counts a run event.
    pub fn observe(&self, job: &JobId, event: &RunEvent) {
        match event {
            RunEvent::StageDone { stage, us, .. } => {
                self.stages
                    .get_or_create(&StageLabels {
                        stage: stage.clone(),
                    })
                    .observe(Duration::from_micros(*us).as_secs_f64());
            }
            RunEvent::UnitPassed { .. } => {
                self.units
                    .get_or_create(&UnitLabels {
                        job: job.to_string(),
                        result: "passed",
                        stage: String::new(),
                    })
                    .inc();
                self.hourly
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .count();
            }
            RunEvent::UnitFailed { unit, .. } => {
                let stage = unit
                    .result
                    .failure()
                    .map(|f| f.stage.to_string())
                    .unwrap_or_default();
                self.units
                    .get_or_create(&UnitLabels {
                        job: job.to_string(),
                        result: "failed",
                        stage,
                    })
                    .inc();
            }
            RunEvent::UnitStarted { .. } | RunEvent::ChannelStopped { .. } => {}
        }
    }

    /// Counts one HSM operation (the core's latency observer).
    pub fn hsm_operation(&self, operation: &'static str, took: Duration) {
        self.hsm
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// The exposition text, with the station's figures as of now.
    pub fn render(&self, station: &StationFigures) -> String {
        for (job, left) in &station.quota_left {
            self.quota_left
                .get_or_create(&JobLabels { job: job.clone() })
                .set(i64::try_from(*left).unwrap_or(i64::MAX));
        }
        if let Some(age) = station.checkpoint_age {
            self.checkpoint_age.set(age);
        }
        self.runs_live
            .set(i64::try_from(station.runs_live).unwrap_or(i64::MAX));
        let hour = self
            .hourly
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last_hour();
        self.units_per_hour
            .set(i64::try_from(hour).unwrap_or(i64::MAX));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What the station says at a scrape.
#[derive(Debug, Default)]
pub struct StationFigures {
    /// Quota left per job (hex id).
    pub quota_left: Vec<(String, u64)>,
    /// Seconds since the last checkpoint.
    pub checkpoint_age: Option<f64>,
    /// Runs in progress.
    pub runs_live: usize,
}
