//! What the operator sees during a run: a progress line per channel and a
//! total line (indicatif), or JSON lines for line-control and MES software;
//! and the summary table at the end.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use flashgate::pipeline::{RunEvent, RunSummary, UnitResult};

/// Renders run events for people.
#[derive(Debug)]
pub struct ProgressView {
    channels: Vec<ProgressBar>,
    jobs: Vec<JobTotals>,
    start: Instant,
}

/// One job of what the view shows: a run on some of the channels.
#[derive(Debug, Clone)]
pub struct ViewJob {
    /// Shown on its total line when several jobs run (else `all`).
    pub label: Option<String>,
    /// Its channels.
    pub channels: u32,
    /// The job's quota.
    pub quota: u64,
    /// Counter values it had used before this run.
    pub used_before: u64,
    /// Where PEM copies of its certificates go.
    pub cert_dir: Option<PathBuf>,
}

#[derive(Debug)]
struct JobTotals {
    total: ProgressBar,
    quota: u64,
    used_before: u64,
    counts: Mutex<(u64, u64, u64)>, // passed, failed, counted
    cert_dir: Option<PathBuf>,
}

impl ProgressView {
    /// One line per channel plus a total line, on stderr.
    pub fn new(
        channels: u32,
        quota: u64,
        used_before: u64,
        cert_dir: Option<PathBuf>,
        visible: bool,
    ) -> Arc<Self> {
        Self::for_jobs(
            &[ViewJob {
                label: None,
                channels,
                quota,
                used_before,
                cert_dir,
            }],
            visible,
        )
    }

    /// One line per channel, numbered across the jobs in order, then a
    /// total line per job.
    pub fn for_jobs(jobs: &[ViewJob], visible: bool) -> Arc<Self> {
        let multi = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template("{prefix:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let all: u32 = jobs.iter().map(|j| j.channels).sum();
        let bars = (0..all)
            .map(|c| {
                let b = multi.add(ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(format!("ch{c}"));
                b.set_message("waiting for a board");
                b
            })
            .collect();
        let jobs = jobs
            .iter()
            .map(|j| {
                let total = multi.add(ProgressBar::new_spinner());
                total.set_style(style.clone());
                total.set_prefix(j.label.clone().unwrap_or_else(|| "all".to_owned()));
                JobTotals {
                    total,
                    quota: j.quota,
                    used_before: j.used_before,
                    counts: Mutex::new((0, 0, 0)),
                    cert_dir: j.cert_dir.clone(),
                }
            })
            .collect();
        Arc::new(Self {
            channels: bars,
            jobs,
            start: Instant::now(),
        })
    }

    /// Handles one event of a single-job run.
    pub fn event(&self, e: &RunEvent) {
        self.event_of(0, e);
    }

    /// Handles one event of job `job` (in the order given to
    /// [`for_jobs`](Self::for_jobs)), its channel already numbered across
    /// the jobs ([`on_set`]).
    pub fn event_of(&self, job: usize, e: &RunEvent) {
        match e {
            RunEvent::UnitStarted { channel, board } => {
                self.bar(*channel, format!("board {board}: identify"))
            }
            RunEvent::StageDone {
                channel,
                board,
                stage,
                ..
            } => self.bar(*channel, format!("board {board}: {stage} done")),
            RunEvent::UnitPassed { channel, unit, .. }
            | RunEvent::UnitFailed { channel, unit, .. } => {
                let serial = unit.serial.clone().unwrap_or_else(|| "-".to_owned());
                let msg = match &unit.result {
                    UnitResult::Passed => format!("{serial} PASS"),
                    UnitResult::Failed(f) => format!("{serial} FAIL at {}: {}", f.stage, f.reason),
                };
                self.bar(*channel, msg);
                let Some(totals) = self.jobs.get(job) else {
                    return;
                };
                if let (Some(dir), Some(cert), Some(serial)) =
                    (&totals.cert_dir, &unit.certificate, &unit.serial)
                {
                    let _ = std::fs::create_dir_all(dir);
                    let _ = std::fs::write(
                        dir.join(format!("{serial}.pem")),
                        flashgate::x509::der_to_pem(cert, "CERTIFICATE"),
                    );
                }
                if let Ok(mut c) = totals.counts.lock() {
                    if unit.result == UnitResult::Passed {
                        c.0 += 1;
                    } else {
                        c.1 += 1;
                    }
                    if unit.counter.is_some() {
                        c.2 += 1;
                    }
                    let (p, f, counted) = *c;
                    let hours = self.start.elapsed().as_secs_f64() / 3600.0;
                    let uph = if hours > 0.0 {
                        (p + f) as f64 / hours
                    } else {
                        0.0
                    };
                    let yield_pct = if p + f > 0 {
                        100.0 * p as f64 / (p + f) as f64
                    } else {
                        100.0
                    };
                    let left = totals.quota.saturating_sub(totals.used_before + counted);
                    totals.total.set_message(format!(
                        "{p} passed, {f} failed, {uph:.0} units/h, yield {yield_pct:.1}%, quota left ~{left}"
                    ));
                }
            }
            RunEvent::ChannelStopped { channel, reason } => {
                self.bar(*channel, format!("stopped: {reason}"))
            }
        }
    }

    fn bar(&self, channel: u32, msg: String) {
        if let Some(b) = self.channels.get(channel as usize) {
            b.set_message(msg);
        }
    }

    /// Clears the live lines.
    pub fn finish(&self) {
        for b in &self.channels {
            b.finish();
        }
        for j in &self.jobs {
            j.total.finish();
        }
    }
}

/// A run's event with its channel numbered within the whole fixture set:
/// the run's channel plus the run's first channel in the set.
pub fn on_set(mut e: RunEvent, offset: u32) -> RunEvent {
    match &mut e {
        RunEvent::UnitStarted { channel, .. }
        | RunEvent::StageDone { channel, .. }
        | RunEvent::ChannelStopped { channel, .. } => *channel += offset,
        RunEvent::UnitPassed { channel, unit, .. } | RunEvent::UnitFailed { channel, unit, .. } => {
            *channel += offset;
            unit.channel += offset;
        }
    }
    e
}

/// The summary table at the end of a run.
pub fn summary_table(s: &RunSummary) -> String {
    let mut out = String::new();
    let total = s.passed + s.failed();
    let secs = s.elapsed_ms as f64 / 1000.0;
    let _ = writeln!(
        out,
        "run finished ({}) after {secs:.1} s",
        s.stopped_because
    );
    let _ = writeln!(
        out,
        "  units:        {total} ({} passed, {} failed)",
        s.passed,
        s.failed()
    );
    if secs > 0.0 {
        let _ = writeln!(
            out,
            "  throughput:   {:.0} units/hour",
            total as f64 * 3600.0 / secs
        );
    }
    let _ = writeln!(
        out,
        "  quota:        {} counted this run ({} reserved ahead and left unused), {} left",
        s.counted, s.reserved_unused, s.quota_left
    );
    if !s.failed_by_stage.is_empty() {
        let _ = writeln!(out, "  failed by stage:");
        for (stage, n) in &s.failed_by_stage {
            let _ = writeln!(out, "    {stage:<14} {n}");
        }
    }
    let order = [
        "identify",
        "reserve",
        "erase",
        "blank-check",
        "program",
        "verify",
        "derive",
        "certificate",
        "inject",
        "challenge",
        "lock",
        "lock-readback",
    ];
    // Stages in the order a unit goes through them; unknown names last.
    let mut by: Vec<(&String, &u64)> = s.mean_stage_us.iter().collect();
    by.sort_by_key(|(stage, _)| order.iter().position(|o| o == stage).unwrap_or(order.len()));
    let _ = writeln!(out, "  mean time per stage:");
    for (stage, us) in by {
        let _ = writeln!(out, "    {stage:<14} {:>10.3} ms", *us as f64 / 1000.0);
    }
    out
}
