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
    total: ProgressBar,
    start: Instant,
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
        let multi = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template("{prefix:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = (0..channels)
            .map(|c| {
                let b = multi.add(ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(format!("ch{c}"));
                b.set_message("waiting for a board");
                b
            })
            .collect();
        let total = multi.add(ProgressBar::new_spinner());
        total.set_style(style);
        total.set_prefix("all");
        Arc::new(Self {
            channels: bars,
            total,
            start: Instant::now(),
            quota,
            used_before,
            counts: Mutex::new((0, 0, 0)),
            cert_dir,
        })
    }

    /// Handles one event.
    pub fn event(&self, e: &RunEvent) {
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
                if let (Some(dir), Some(cert), Some(serial)) =
                    (&self.cert_dir, &unit.certificate, &unit.serial)
                {
                    let _ = std::fs::create_dir_all(dir);
                    let _ = std::fs::write(
                        dir.join(format!("{serial}.pem")),
                        flashgate::x509::der_to_pem(cert, "CERTIFICATE"),
                    );
                }
                if let Ok(mut c) = self.counts.lock() {
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
                    let left = self.quota.saturating_sub(self.used_before + counted);
                    self.total.set_message(format!(
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
        self.total.finish();
    }
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
