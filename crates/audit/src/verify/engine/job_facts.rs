//! Each record of the job against the job's facts: import and removal, quota and counter
//! accounting, runs, device types, the window, serials, lock level and firmware.

use std::io;

use flashgate_device::LockLevel;
use sha2::{Digest as _, Sha256};

use super::duplicates::{put_shown, SERIAL_N};
use super::Verifier;
use crate::record::{Digest, Record, RecordKind, RunId};
use crate::verify::report::{AnomalyKind, ResultCounts};

impl Verifier<'_> {
    pub(super) fn job_record(&mut self, pos: u64, rec: &Record) -> io::Result<()> {
        let facts = &self.options.facts;
        self.report.job_records += 1;
        self.report.first_time.get_or_insert(rec.time);
        self.report.last_time = Some(rec.time);
        if let Some(at) = self.removed_at.or(self.removal_started_at) {
            let completes =
                self.removed_at.is_none() && matches!(rec.kind, RecordKind::JobRemoved(_));
            if !completes && !matches!(rec.kind, RecordKind::JobImported(_)) {
                self.report.add(
                    Some(pos),
                    AnomalyKind::RecordAfterJobRemoved,
                    format!(
                        "a {} record after the job was removed at record {at}",
                        rec.kind.name()
                    ),
                );
            }
        }
        let seq = Some(pos);
        match &rec.kind {
            RecordKind::JobImported(r) => {
                self.imported = true;
                self.removed_at = None;
                let mut diffs = Vec::new();
                if r.product != facts.product {
                    diffs.push(format!(
                        "product {:?}, the manifest {:?}",
                        r.product, facts.product
                    ));
                }
                if r.quota != facts.quota {
                    diffs.push(format!("quota {}, the manifest {}", r.quota, facts.quota));
                }
                if r.security_version != facts.security_version {
                    diffs.push(format!(
                        "security version {}, the manifest {}",
                        r.security_version, facts.security_version
                    ));
                }
                if r.manifest_digest != facts.manifest_digest {
                    diffs.push(format!(
                        "manifest digest {}, the bundle's manifest.cose has {}",
                        hex::encode(r.manifest_digest),
                        hex::encode(facts.manifest_digest)
                    ));
                }
                if !diffs.is_empty() {
                    self.report.add(
                        seq,
                        AnomalyKind::JobFactsMismatch,
                        format!("the job-imported record says {}", diffs.join("; ")),
                    );
                }
            }
            RecordKind::JobRemovalStarted(_) => self.removal_started_at = Some(pos),
            RecordKind::JobRemoved(_) => {
                if self.removal_started_at.take().is_none() {
                    self.report.add(
                        seq,
                        AnomalyKind::RemovalWithoutIntent,
                        "the job was removed without a job-removal-started record before it"
                            .to_owned(),
                    );
                }
                self.removed_at = Some(pos);
            }
            // Names no job; handled where records are read.
            RecordKind::LogReset(_) => {}
            RecordKind::RunStarted(r) => {
                self.runs.insert(r.run_id, r.operator.clone());
            }
            RecordKind::RunStopped(_) => {}
            RecordKind::UnitsReserved(r) => {
                if r.first != self.reserved_end {
                    self.report.add(
                        seq,
                        AnomalyKind::ReservationNotContiguous,
                        format!(
                            "reserves values from {}, but the previous reservation ended at {}",
                            r.first, self.reserved_end
                        ),
                    );
                }
                let end = r.first.saturating_add(r.count);
                let before = self.reserved.total;
                let dup = self.reserved.insert(r.first, end);
                if dup > 0 {
                    self.report.add(
                        seq,
                        AnomalyKind::CounterReused,
                        format!("reserves {dup} counter values that were already reserved"),
                    );
                }
                self.reserved_end = self.reserved_end.max(end);
                if self.reserved.total > facts.quota && before <= facts.quota {
                    self.report.add(
                        seq,
                        AnomalyKind::QuotaExceeded,
                        format!(
                            "job {} allows {} units; this reservation brings the count to {}",
                            hex::encode(facts.job_id),
                            facts.quota,
                            self.reserved.total
                        ),
                    );
                }
            }
            RecordKind::UnitPassed(r) => {
                self.report.units.passed += 1;
                self.close(pos, r.counter, 1, "unit-passed");
                self.by_run(pos, &r.run_id, r.channel, true);
                self.device_type(pos, &r.device_type);
                self.window(pos, rec.time);
                self.serial(pos, r.counter, &r.serial)?;
                self.lock(pos, &r.lock_level);
                self.firmware(pos, &r.firmware_sha256);
                self.uid(pos, r.counter, &r.uid, true, r.rework_of)?;
                self.certificate(pos, &r.cert_sha256, true)?;
            }
            RecordKind::UnitFailed(r) => {
                self.report.units.failed += 1;
                *self
                    .report
                    .failures_by_stage
                    .entry(r.stage.clone())
                    .or_insert(0) += 1;
                self.close(pos, r.counter, 1, "unit-failed");
                self.by_run(pos, &r.run_id, r.channel, false);
                if let Some(d) = &r.device_type {
                    self.device_type(pos, d);
                }
                self.window(pos, rec.time);
                if let Some(s) = &r.serial {
                    self.serial(pos, r.counter, s)?;
                }
                match (&r.uid, r.rework_of) {
                    (Some(uid), rework_of) => self.uid(pos, r.counter, uid, false, rework_of)?,
                    (None, Some(of)) => self.report.add(
                        seq,
                        AnomalyKind::ReworkInvalid,
                        format!("the unit names counter value {of} as the attempt it reworks but has no UID"),
                    ),
                    (None, None) => {}
                }
                if let Some(c) = &r.cert_sha256 {
                    self.certificate(pos, c, false)?;
                }
            }
            RecordKind::UnitAborted(r) => {
                self.report.units.aborted += 1;
                self.close(pos, r.counter, 1, "unit-aborted");
                self.aborted.insert(r.counter, r.counter.saturating_add(1));
            }
            RecordKind::UnitsUnused(r) => {
                if r.reason == crate::record::REASON_CARRIED_OVER {
                    self.report.units.carried_over =
                        self.report.units.carried_over.saturating_add(r.count);
                } else {
                    self.report.units.unused = self.report.units.unused.saturating_add(r.count);
                }
                self.close(pos, r.first, r.count, "units-unused");
            }
        }
        Ok(())
    }

    fn close(&mut self, pos: u64, first: u64, count: u64, what: &str) {
        let end = first.saturating_add(count);
        if !self.reserved.contains(first, end) {
            self.report.add(
                Some(pos),
                AnomalyKind::CounterNotReserved,
                if count == 1 {
                    format!("{what} uses counter value {first}, which was never reserved")
                } else {
                    format!("{what} covers counter values {first}..{end}, not all reserved")
                },
            );
        }
        let dup = self.closed.insert(first, end);
        if dup > 0 {
            self.report.add(
                Some(pos),
                AnomalyKind::CounterReused,
                if count == 1 {
                    format!("{what} uses counter value {first}, which another record already accounts for")
                } else {
                    format!("{what} covers {dup} counter values that other records already account for")
                },
            );
        }
    }

    fn by_run(&mut self, pos: u64, run: &RunId, channel: u32, passed: bool) {
        let bump = |c: &mut ResultCounts| {
            if passed {
                c.passed += 1;
            } else {
                c.failed += 1;
            }
        };
        bump(self.report.channels.entry(channel).or_default());
        match self.runs.get(run) {
            Some(op) => match self.report.operators.get_mut(op) {
                Some(c) => bump(c),
                None => bump(self.report.operators.entry(op.clone()).or_default()),
            },
            None => self.report.add(
                Some(pos),
                AnomalyKind::UnknownRun,
                format!(
                    "the unit belongs to run {}, which was never started",
                    hex::encode(run)
                ),
            ),
        }
    }

    fn device_type(&mut self, pos: u64, device_type: &str) {
        let allowed = &self.options.facts.device_types;
        if !allowed.iter().any(|d| d == device_type) {
            self.report.add(
                Some(pos),
                AnomalyKind::DeviceTypeNotAllowed,
                format!(
                    "device type {device_type:?} is not one the job allows ({})",
                    allowed.join(", ")
                ),
            );
        }
    }

    fn window(&mut self, pos: u64, time_ms: u64) {
        let f = &self.options.facts;
        let from = f.not_before.saturating_mul(1000);
        let until = f.not_after.saturating_mul(1000);
        if time_ms < from || time_ms >= until {
            self.report.add(
                Some(pos),
                AnomalyKind::UnitOutsideWindow,
                format!(
                    "the unit is dated {time_ms} (Unix ms), outside the job window {from} to {until}"
                ),
            );
        }
    }

    fn serial(&mut self, pos: u64, counter: u64, serial: &str) -> io::Result<()> {
        use std::fmt::Write as _;
        let scheme = &self.options.facts.serials;
        // Formatted into a reused buffer: this runs for every unit.
        self.serial_buf.clear();
        let expected = match scheme.start.checked_add(counter) {
            Some(n) if n <= scheme.end => {
                let _ = write!(
                    self.serial_buf,
                    "{}{:0width$}",
                    scheme.prefix,
                    n,
                    width = usize::from(scheme.width)
                );
                Some(self.serial_buf.as_str())
            }
            _ => None,
        };
        if expected != Some(serial) {
            let detail = match expected {
                Some(e) => format!(
                    "serial {serial:?} is not {e:?}, the serial the job gives counter value {counter}"
                ),
                None => format!(
                    "serial {serial:?} belongs to counter value {counter}, which is past the job's serial range"
                ),
            };
            self.report
                .add(Some(pos), AnomalyKind::SerialMismatch, detail);
        }
        let mut e = [0u8; SERIAL_N];
        e[..32].copy_from_slice(&Sha256::digest(serial.as_bytes()));
        e[32..40].copy_from_slice(&pos.to_be_bytes());
        put_shown(&mut e[40..], serial.as_bytes());
        self.serials.push(e)
    }

    fn lock(&mut self, pos: u64, level: &str) {
        // A policy word this verifier does not know: no lock can be shown
        // to meet it. A record's word it does not know meets only "none".
        let ok = match (level.parse::<LockLevel>().ok(), self.lock_required) {
            (_, None) => false,
            (Some(got), Some(required)) => got >= required,
            (None, Some(required)) => required == LockLevel::None,
        };
        if !ok {
            self.report.add(
                Some(pos),
                AnomalyKind::LockBelowPolicy,
                format!(
                    "the unit passed with lock level {level:?}; the job's policy requires {:?}",
                    self.options.facts.lock_level
                ),
            );
        }
    }

    fn firmware(&mut self, pos: u64, digest: &Digest) {
        match (self.options.facts.firmware_sha256, self.firmware_seen) {
            (Some(want), _) if *digest != want => self.report.add(
                Some(pos),
                AnomalyKind::FirmwareMismatch,
                format!(
                    "the unit measured firmware {}, the job's firmware is {}",
                    hex::encode(digest),
                    hex::encode(want)
                ),
            ),
            (Some(_), _) => {}
            (None, None) => self.firmware_seen = Some((*digest, pos)),
            (None, Some((first, at))) if *digest != first => self.report.add(
                Some(pos),
                AnomalyKind::FirmwareMismatch,
                format!(
                    "the unit measured firmware {}, the unit of record {at} measured {}",
                    hex::encode(digest),
                    hex::encode(first)
                ),
            ),
            (None, Some(_)) => {}
        }
    }
}
