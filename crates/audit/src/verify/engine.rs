//! The streaming engine behind [`super::verify_bundle`] and
//! [`super::verify_parts`]: checkpoints first, then one pass over the
//! records, then the sorted per-unit facts ([`Spill`]) are merged to find
//! duplicates, invalid reworks and certificates missing either way.

use std::collections::HashMap;
use std::io::{self, BufReader, Read};

use flashgate_tlog::{leaf_hash, Hash, Tree};
use sha2::{Digest as _, Sha256};

use super::report::{AnomalyKind, QuotaUse, Report, ResultCounts};
use super::spill::{Sorted, Spill};
use super::{kept_checkpoint, CertificateFile, CertificateStart, VerifyOptions};
use crate::bundle::CertificateList;
use crate::checkpoint::{origin_for, CheckpointError, UnverifiedCheckpoint, VerifiedCheckpoint};
use crate::frame::{read_full, FrameError, FrameReader};
use crate::intervals::Intervals;
use crate::record::{Digest, Record, RecordKind, RunId, MAX_RECORD_LEN};

/// Memory for each of the three sorts (UIDs, serials, certificates) before
/// it spills to disk.
const SORT_BUDGET: usize = 4 << 20;

/// Bytes of a UID or serial kept in a sort entry, for the report's text.
const SHOWN: usize = 32;

// UID entry: SHA-256(uid) | pos | counter | passed | has rework_of | rework_of | shown len | shown.
const UID_N: usize = 32 + 8 + 8 + 1 + 1 + 8 + 1 + SHOWN;
// Serial entry: SHA-256(serial) | pos | shown len | shown.
const SERIAL_N: usize = 32 + 8 + 1 + SHOWN;
// Certificate entry: SHA-256(DER) | 0 file / 1 record | pos | flag | notBefore.
// flag: for a record 1 = passed; for a file 0 unknown, 1 malformed, 2 parsed.
const CERT_N: usize = 32 + 1 + 8 + 1 + 8;

fn be(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn put_shown(out: &mut [u8], value: &[u8]) {
    let n = value.len().min(SHOWN);
    out[0] = n as u8;
    out[1..=n].copy_from_slice(&value[..n]);
}

/// The value kept in an entry, as text: hex for UIDs, the text for serials;
/// "..." marks a value longer than what was kept.
fn shown(entry: &[u8], hex_form: bool, full_len_known: bool) -> String {
    let n = usize::from(entry[0]).min(SHOWN);
    let v = &entry[1..=n];
    let mut s = if hex_form {
        hex::encode(v)
    } else {
        String::from_utf8_lossy(v).into_owned()
    };
    if n == SHOWN && !full_len_known {
        s.push_str("...");
    }
    s
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Bundle,
    Previous,
}

struct Target {
    size: u64,
    root: Hash,
    source: Source,
}

pub(super) struct Verifier<'a> {
    options: &'a VerifyOptions,
    pub(super) report: Report,
    origin: String,
    targets: Vec<Target>,
    last_cp_size: Option<u64>,
    // Job state.
    imported: bool,
    removed_at: Option<u64>,
    removal_started_at: Option<u64>,
    runs: HashMap<RunId, String>,
    reserved: Intervals,
    reserved_end: u64,
    closed: Intervals,
    aborted: Intervals,
    firmware_seen: Option<(Digest, u64)>,
    lock_rank: u8,
    serial_buf: String,
    uids: Spill<UID_N>,
    serials: Spill<SERIAL_N>,
    certs: Spill<CERT_N>,
    cert_list: Option<CertificateList>,
}

fn lock_rank(level: &str) -> Option<u8> {
    match level {
        "none" => Some(0),
        "readout" => Some(1),
        "permanent" => Some(2),
        _ => None,
    }
}

impl<'a> Verifier<'a> {
    pub(super) fn new(options: &'a VerifyOptions) -> Self {
        let facts = &options.facts;
        Self {
            options,
            report: Report {
                job_id: hex::encode(facts.job_id),
                product: facts.product.clone(),
                quota: QuotaUse {
                    quota: facts.quota,
                    used: 0,
                    left: facts.quota,
                },
                ..Report::default()
            },
            origin: origin_for(&options.appliance_id),
            targets: Vec::new(),
            last_cp_size: None,
            imported: false,
            removed_at: None,
            removal_started_at: None,
            runs: HashMap::new(),
            reserved: Intervals::default(),
            reserved_end: 0,
            closed: Intervals::default(),
            aborted: Intervals::default(),
            firmware_seen: None,
            // An unknown policy level cannot be met by any record.
            lock_rank: lock_rank(&facts.lock_level).unwrap_or(u8::MAX),
            serial_buf: String::new(),
            uids: Spill::new(SORT_BUDGET),
            serials: Spill::new(SORT_BUDGET),
            certs: Spill::new(SORT_BUDGET),
            cert_list: None,
        }
    }

    /// A certificate file of the bundle.
    pub(super) fn certificate_file(&mut self, file: CertificateFile) -> io::Result<()> {
        let mut e = [0u8; CERT_N];
        e[..32].copy_from_slice(&file.sha256);
        let (flag, nb) = match file.start {
            CertificateStart::Unknown => (0, 0),
            CertificateStart::Malformed => (1, 0),
            // Offset so that the stored u64 orders like the i64.
            CertificateStart::NotBefore(t) => (2, (t as u64) ^ (1 << 63)),
        };
        e[41] = flag;
        e[42..50].copy_from_slice(&nb.to_be_bytes());
        self.certs.push(e)
    }

    /// The certificate list of `bundle.json`, checked against the files.
    pub(super) fn expect_certificate_list(&mut self, list: CertificateList) {
        self.cert_list = Some(list);
    }

    /// Reads every checkpoint; returns how many entries `checkpoints.log`
    /// holds, valid or not.
    pub(super) fn read_checkpoints<R: Read>(&mut self, reader: R) -> io::Result<u64> {
        let key = self.options.log_key;
        let mut frames = FrameReader::new(BufReader::new(reader));
        let mut last: Option<(u64, Hash)> = None;
        let mut index = 0u64;
        loop {
            let (offset, bytes) = match frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(FrameError::Io(e)) => return Err(e),
                Err(e) => {
                    self.report
                        .add(None, AnomalyKind::TruncatedCheckpoints, e.to_string());
                    break;
                }
            };
            index += 1;
            let what = format!("checkpoint {index} (byte {offset} of checkpoints.log)");
            let verified = match UnverifiedCheckpoint::parse(bytes) {
                Err(e) => {
                    self.report.add(
                        None,
                        AnomalyKind::MalformedCheckpoint,
                        format!("{what}: {e}"),
                    );
                    continue;
                }
                Ok(u) => match u.verify(&key) {
                    Ok(v) => v,
                    Err(e @ CheckpointError::WrongKey { .. }) => {
                        self.report.add(
                            None,
                            AnomalyKind::CheckpointWrongKey,
                            format!("{what}: {e}"),
                        );
                        continue;
                    }
                    Err(e) => {
                        self.report.add(
                            None,
                            AnomalyKind::CheckpointBadSignature,
                            format!("{what}: {e}"),
                        );
                        continue;
                    }
                },
            };
            let cp = verified.checkpoint();
            if !cp.extensions.is_empty() {
                self.report.add(
                    None,
                    AnomalyKind::MalformedCheckpoint,
                    format!(
                        "{what} carries {} extension line(s); the appliance writes none",
                        cp.extensions.len()
                    ),
                );
                continue;
            }
            if cp.origin != self.origin {
                self.report.add(
                    None,
                    AnomalyKind::CheckpointOrigin,
                    format!(
                        "{what} is for log {:?}, not this appliance's log {:?}",
                        cp.origin, self.origin
                    ),
                );
            }
            if let Some((size, root)) = last {
                if cp.size < size {
                    self.report.add(
                        None,
                        AnomalyKind::CheckpointSizeDecreased,
                        format!(
                            "{what} covers {} records, the one before covered {size}",
                            cp.size
                        ),
                    );
                } else if cp.size == size {
                    let detail = if cp.root == root {
                        format!("{what} repeats the checkpoint for size {size}")
                    } else {
                        format!(
                            "{what} gives a different root for size {size} than the one before (fork)"
                        )
                    };
                    self.report
                        .add(None, AnomalyKind::CheckpointRepeated, detail);
                }
            }
            last = Some((cp.size, cp.root));
            self.last_cp_size = Some(self.last_cp_size.map_or(cp.size, |s| s.max(cp.size)));
            self.report.checkpoints += 1;
            self.targets.push(Target {
                size: cp.size,
                root: cp.root,
                source: Source::Bundle,
            });
        }
        if let Some(kept) = &self.options.previous_checkpoint {
            self.previous_checkpoint(kept);
        }
        // Stable: bundle checkpoints keep their order within a size.
        self.targets.sort_by_key(|t| t.size);
        Ok(index)
    }

    fn previous_checkpoint(&mut self, kept: &[u8]) {
        let invalid = |report: &mut Report, why: String| {
            report.add(
                None,
                AnomalyKind::PreviousCheckpointInvalid,
                format!("the previous checkpoint given does not verify: {why}"),
            );
        };
        let Some(bytes) = kept_checkpoint(kept) else {
            invalid(
                &mut self.report,
                "the checkpoints.log given holds no checkpoint".to_owned(),
            );
            return;
        };
        let v: VerifiedCheckpoint = match UnverifiedCheckpoint::parse(&bytes)
            .and_then(|u| u.verify(&self.options.log_key))
        {
            Ok(v) => v,
            Err(e) => return invalid(&mut self.report, e.to_string()),
        };
        let cp = v.checkpoint();
        if !cp.extensions.is_empty() {
            return invalid(
                &mut self.report,
                "it carries extension lines; the appliance writes none".to_owned(),
            );
        }
        if cp.origin != self.origin {
            self.report.add(
                None,
                AnomalyKind::PreviousCheckpointMismatch,
                format!(
                    "the previous checkpoint is for log {:?}, this appliance's log is {:?}",
                    cp.origin, self.origin
                ),
            );
        }
        self.targets.push(Target {
            size: cp.size,
            root: cp.root,
            source: Source::Previous,
        });
    }

    fn check_targets(&mut self, tree: &Tree, next: &mut usize) {
        while let Some(t) = self.targets.get(*next) {
            if t.size != tree.size() {
                break;
            }
            let root = tree.root();
            if t.root != root {
                let (kind, detail) = match t.source {
                    Source::Bundle => (
                        AnomalyKind::CheckpointRootMismatch,
                        format!(
                            "the root of the first {} records is not the signed checkpoint's: records were edited, removed, inserted or reordered",
                            t.size
                        ),
                    ),
                    Source::Previous => (
                        AnomalyKind::PreviousCheckpointMismatch,
                        format!(
                            "the root of the first {} records is not the root of the checkpoint kept from before: the log was forked or rewritten",
                            t.size
                        ),
                    ),
                };
                self.report.add(t.size.checked_sub(1), kind, detail);
            }
            *next += 1;
        }
    }

    pub(super) fn read_records<R: Read>(&mut self, reader: R) -> io::Result<()> {
        let mut frames = RecordFrames::new(reader);
        let mut tree = Tree::new();
        let mut next_target = 0usize;
        let mut expected_seq = 0u64;
        let mut last_leaf = [0u8; 32];
        let mut last_time: Option<u64> = None;
        self.check_targets(&tree, &mut next_target);
        loop {
            let pos = tree.size();
            let leaf = match frames.next()? {
                Frame::End => break,
                Frame::Truncated(detail) => {
                    self.report.add(
                        Some(pos),
                        AnomalyKind::TruncatedRecords,
                        format!("records.log: {detail}"),
                    );
                    break;
                }
                Frame::Oversized { offset, len, leaf } => {
                    self.report.add(
                        Some(pos),
                        AnomalyKind::MalformedRecord,
                        format!(
                            "the record at byte {offset} is {len} bytes long; at most {MAX_RECORD_LEN} are allowed"
                        ),
                    );
                    leaf
                }
                Frame::Record { offset, bytes } => {
                    let leaf = leaf_hash(bytes);
                    match Record::decode(bytes) {
                        Err(e) => self.report.add(
                            Some(pos),
                            AnomalyKind::MalformedRecord,
                            format!("the record at byte {offset} does not decode: {e}"),
                        ),
                        Ok(rec) => {
                            self.chain(pos, &rec, expected_seq, &last_leaf, last_time);
                            last_time = Some(rec.time);
                            expected_seq = rec.seq.wrapping_add(1);
                            if let RecordKind::LogReset(r) = &rec.kind {
                                self.log_reset(pos, rec.seq, r);
                            } else if rec.kind.job_id() == &self.options.facts.job_id {
                                self.job_record(pos, &rec)?;
                            }
                        }
                    }
                    leaf
                }
            };
            last_leaf = leaf;
            if tree.push_leaf_hash(leaf).is_err() {
                break;
            }
            self.check_targets(&tree, &mut next_target);
        }
        let n = tree.size();
        self.report.records = n;
        for t in &self.targets[next_target..] {
            if t.size > n {
                let (kind, detail) = match t.source {
                    Source::Bundle => (
                        AnomalyKind::CheckpointBeyondLog,
                        format!(
                            "a signed checkpoint covers {} records but the bundle holds {n}: records after {n} were removed",
                            t.size
                        ),
                    ),
                    Source::Previous => (
                        AnomalyKind::PreviousCheckpointBeyondLog,
                        format!(
                            "the checkpoint kept from before covers {} records but the bundle holds {n}: the log was rolled back",
                            t.size
                        ),
                    ),
                };
                self.report.add(None, kind, detail);
            }
        }
        let protected = self.last_cp_size.unwrap_or(0).min(n);
        self.report.last_checkpoint_size = self.last_cp_size;
        self.report.unprotected_records = n - protected;
        if n > protected {
            self.report.add(
                Some(protected),
                AnomalyKind::UnprotectedRecords,
                format!(
                    "records {protected} to {} come after the last valid checkpoint: no signature covers them",
                    n - 1
                ),
            );
        }
        Ok(())
    }

    /// Sequence, chaining and time order of any record.
    fn chain(
        &mut self,
        pos: u64,
        rec: &Record,
        expected_seq: u64,
        last_leaf: &[u8; 32],
        last_time: Option<u64>,
    ) {
        if rec.seq != expected_seq {
            if rec.seq < expected_seq {
                self.report.add(
                    Some(pos),
                    AnomalyKind::SequenceRepeated,
                    format!(
                        "record number {} follows number {}: duplicated or reordered",
                        rec.seq,
                        expected_seq.wrapping_sub(1)
                    ),
                );
            } else {
                self.report.add(
                    Some(pos),
                    AnomalyKind::SequenceGap,
                    format!(
                        "record number {} follows number {}: {} records missing",
                        rec.seq,
                        expected_seq.wrapping_sub(1),
                        rec.seq - expected_seq
                    ),
                );
            }
        }
        if rec.prev != *last_leaf {
            self.report.add(
                Some(pos),
                AnomalyKind::BrokenChain,
                format!(
                    "record {} does not link to the record stored before it",
                    rec.seq
                ),
            );
        }
        if let Some(t) = last_time {
            if rec.time < t {
                self.report.add(
                    Some(pos),
                    AnomalyKind::TimeWentBackwards,
                    format!(
                        "record {} is dated {} ms before the record before it",
                        rec.seq,
                        t - rec.time
                    ),
                );
            }
        }
    }

    fn job_record(&mut self, pos: u64, rec: &Record) -> io::Result<()> {
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

    /// A `log-reset` opens a segment: it belongs at seq 0 and only there.
    fn log_reset(&mut self, pos: u64, seq: u64, r: &crate::record::LogReset) {
        if seq != 0 {
            self.report.add(
                Some(pos),
                AnomalyKind::LogResetMisplaced,
                format!("a log-reset record at seq {seq}; it may only open a log segment (seq 0)"),
            );
            return;
        }
        self.report.log_reset = Some(crate::verify::report::LogResetSummary {
            segment: r.segment,
            checkpoint_size: r.checkpoint.map(|c| c.size),
            lost_records: r.lost_records,
            lost_bytes: r.lost_bytes,
            reason: r.reason.clone(),
        });
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
        let ok = match lock_rank(level) {
            Some(r) => r >= self.lock_rank,
            None => self.lock_rank == 0,
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

    fn uid(
        &mut self,
        pos: u64,
        counter: u64,
        uid: &[u8],
        passed: bool,
        rework_of: Option<u64>,
    ) -> io::Result<()> {
        let mut e = [0u8; UID_N];
        e[..32].copy_from_slice(&Sha256::digest(uid));
        e[32..40].copy_from_slice(&pos.to_be_bytes());
        e[40..48].copy_from_slice(&counter.to_be_bytes());
        e[48] = u8::from(passed);
        if let Some(of) = rework_of {
            e[49] = 1;
            e[50..58].copy_from_slice(&of.to_be_bytes());
        }
        put_shown(&mut e[58..], uid);
        self.uids.push(e)
    }

    fn certificate(&mut self, pos: u64, digest: &Digest, passed: bool) -> io::Result<()> {
        let mut e = [0u8; CERT_N];
        e[..32].copy_from_slice(digest);
        e[32] = 1;
        e[33..41].copy_from_slice(&pos.to_be_bytes());
        e[41] = u8::from(passed);
        self.certs.push(e)
    }

    /// The end-of-stream checks. `with_certs`: the bundle's certificate
    /// files were given, so missing and extra ones are reported.
    pub(super) fn finish(mut self, with_certs: bool) -> io::Result<Report> {
        if let Some(at) = self.removal_started_at {
            self.report.add(
                Some(at),
                AnomalyKind::RemovalIncomplete,
                "the job's removal was started but never recorded as complete".to_owned(),
            );
        }
        let facts = &self.options.facts;
        if !self.imported {
            self.report.add(
                None,
                AnomalyKind::JobNotImported,
                format!(
                    "the log has no job-imported record for job {}",
                    hex::encode(facts.job_id)
                ),
            );
        }
        let used = self.reserved.total;
        self.report.quota.used = used;
        self.report.quota.left = facts.quota.saturating_sub(used);
        let accounted = self
            .reserved
            .map
            .iter()
            .map(|(&s, &e)| self.closed.overlap(s, e))
            .sum::<u64>();
        let open = used.saturating_sub(accounted);
        if open > 0 {
            let mut first = Vec::new();
            for (&s, &e) in &self.reserved.map {
                self.closed.missing_in(s, e, 10, &mut first);
                if first.len() >= 10 {
                    break;
                }
            }
            let list: Vec<String> = first.iter().map(u64::to_string).collect();
            self.report.add(
                None,
                AnomalyKind::CountersUnaccounted,
                format!(
                    "{open} reserved counter values have no passed, failed, aborted or unused record (first: {})",
                    list.join(", ")
                ),
            );
        }
        let uids = std::mem::replace(&mut self.uids, Spill::new(0)).into_sorted()?;
        self.check_uids(uids)?;
        let serials = std::mem::replace(&mut self.serials, Spill::new(0)).into_sorted()?;
        self.check_serials(serials)?;
        let certs = std::mem::replace(&mut self.certs, Spill::new(0)).into_sorted()?;
        self.check_certificates(certs, with_certs)?;
        Ok(self.report)
    }

    /// Each UID's attempts in log order: at most one pass, and every
    /// repeat names the attempt it reworks.
    fn check_uids(&mut self, mut sorted: Sorted<UID_N>) -> io::Result<()> {
        // (key, pos, counter, passed) of the previous attempt of this UID,
        // and the position of its first pass.
        let mut prev: Option<([u8; 32], u64, u64, bool)> = None;
        let mut first_pass: Option<u64> = None;
        while let Some(e) = sorted.next_entry()? {
            let mut key = [0u8; 32];
            key.copy_from_slice(&e[..32]);
            let (pos, counter, passed) = (be(&e[32..]), be(&e[40..]), e[48] == 1);
            let rework_of = (e[49] == 1).then(|| be(&e[50..]));
            let uid = shown(&e[58..], true, false);
            if prev.is_some_and(|p| p.0 != key) {
                prev = None;
                first_pass = None;
            }
            let invalid = |report: &mut Report, why: String| {
                report.add(
                    Some(pos),
                    AnomalyKind::ReworkInvalid,
                    format!("UID {uid}: {why}"),
                );
            };
            match (prev, rework_of) {
                (None, None) => {}
                (None, Some(of)) if self.aborted.contains(of, of.saturating_add(1)) => {
                    self.report.reworks += 1;
                }
                (None, Some(of)) => invalid(
                    &mut self.report,
                    format!("the unit names counter value {of} as the attempt it reworks, but no earlier record has this UID and {of} was not aborted"),
                ),
                (Some(_), _) if passed && first_pass.is_some() => {
                    self.report.add(
                        Some(pos),
                        AnomalyKind::DuplicateUid,
                        format!(
                            "UID {uid} passed already at record {}",
                            first_pass.unwrap_or_default()
                        ),
                    );
                }
                (Some(_), _) if first_pass.is_some() => invalid(
                    &mut self.report,
                    format!(
                        "attempted again after it passed at record {}",
                        first_pass.unwrap_or_default()
                    ),
                ),
                (Some((_, at, _, _)), None) => invalid(
                    &mut self.report,
                    format!("attempted before at record {at}, but this record has no rework_of"),
                ),
                (Some((_, _, c, _)), Some(of))
                    if of == c || self.aborted.contains(of, of.saturating_add(1)) =>
                {
                    self.report.reworks += 1;
                }
                (Some((_, at, c, _)), Some(of)) => invalid(
                    &mut self.report,
                    format!("rework_of names counter value {of}, but the previous attempt (record {at}) used {c}"),
                ),
            }
            if passed && first_pass.is_none() {
                first_pass = Some(pos);
            }
            prev = Some((key, pos, counter, passed));
        }
        Ok(())
    }

    fn check_serials(&mut self, mut sorted: Sorted<SERIAL_N>) -> io::Result<()> {
        let mut first: Option<([u8; 32], u64)> = None;
        while let Some(e) = sorted.next_entry()? {
            let pos = be(&e[32..]);
            match first {
                Some((k, at)) if k[..] == e[..32] => self.report.add(
                    Some(pos),
                    AnomalyKind::DuplicateSerial,
                    format!(
                        "serial {:?} was issued already at record {at}",
                        shown(&e[40..], false, false)
                    ),
                ),
                _ => {
                    let mut k = [0u8; 32];
                    k.copy_from_slice(&e[..32]);
                    first = Some((k, pos));
                }
            }
        }
        Ok(())
    }

    fn check_certificates(
        &mut self,
        mut sorted: Sorted<CERT_N>,
        with_certs: bool,
    ) -> io::Result<()> {
        let mut list_hash = Sha256::new();
        let mut list_len = 0u64;
        let mut group: Option<CertGroup> = None;
        while let Some(e) = sorted.next_entry()? {
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&e[..32]);
            if group.as_ref().is_some_and(|g| g.digest != digest) {
                if let Some(g) = group.take() {
                    self.cert_group_end(&g, with_certs);
                }
            }
            let g = group.get_or_insert_with(|| CertGroup::new(digest));
            if e[32] == 0 {
                if g.file.is_none() {
                    list_hash.update(digest);
                    list_len += 1;
                }
                g.file = Some(match e[41] {
                    1 => CertificateStart::Malformed,
                    2 => CertificateStart::NotBefore((be(&e[42..]) ^ (1 << 63)) as i64),
                    _ => CertificateStart::Unknown,
                });
                continue;
            }
            let pos = be(&e[33..]);
            let passed = e[41] == 1;
            match g.first {
                Some(at) => self.report.add(
                    Some(pos),
                    AnomalyKind::DuplicateCertificate,
                    format!(
                        "certificate {} was issued already at record {at}",
                        hex::encode(digest)
                    ),
                ),
                None => g.first = Some(pos),
            }
            if passed && g.file.is_none() && with_certs {
                self.report.add(
                    Some(pos),
                    AnomalyKind::CertificateMissing,
                    format!(
                        "the certificate {} of this passed unit is not in the bundle",
                        hex::encode(digest)
                    ),
                );
            }
        }
        if let Some(g) = group {
            self.cert_group_end(&g, with_certs);
        }
        if let Some(list) = self.cert_list.take() {
            let files: [u8; 32] = list_hash.finalize().into();
            if list.count != list_len || list.sha256 != files || !list.sorted {
                self.report.add(
                    None,
                    AnomalyKind::BundleIndexMismatch,
                    format!(
                        "bundle.json lists {} certificates{}, certs/ holds {list_len}{}",
                        list.count,
                        if list.sorted {
                            ""
                        } else {
                            " (not sorted, or repeated)"
                        },
                        if list.count == list_len {
                            " with other hashes"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        Ok(())
    }

    fn cert_group_end(&mut self, g: &CertGroup, with_certs: bool) {
        let f = &self.options.facts;
        match (g.first, g.file) {
            (None, Some(_)) if with_certs => self.report.add(
                None,
                AnomalyKind::CertificateNotInLog,
                format!(
                    "certs/{}.der is in the bundle but no record of the job issued it",
                    hex::encode(g.digest)
                ),
            ),
            (Some(at), Some(CertificateStart::Malformed)) => self.report.add(
                Some(at),
                AnomalyKind::CertificateMalformed,
                format!(
                    "certs/{}.der, the unit's certificate, is not an X.509 certificate",
                    hex::encode(g.digest)
                ),
            ),
            (Some(at), Some(CertificateStart::NotBefore(t)))
                if t < i64::try_from(f.not_before).unwrap_or(i64::MAX)
                    || t >= i64::try_from(f.not_after).unwrap_or(i64::MAX) =>
            {
                self.report.add(
                    Some(at),
                    AnomalyKind::CertificateOutsideWindow,
                    format!(
                        "certs/{}.der is valid from {t} (Unix s), outside the job window {} to {}",
                        hex::encode(g.digest),
                        f.not_before,
                        f.not_after
                    ),
                );
            }
            // Nothing to report here: a file no record issued while certificates are not
            // checked, a certificate valid from within the window or whose content was not
            // read, or a record's certificate without a file (checked as it is read).
            (None, Some(_))
            | (Some(_), Some(CertificateStart::NotBefore(_) | CertificateStart::Unknown))
            | (_, None) => {}
        }
    }
}

struct CertGroup {
    digest: [u8; 32],
    file: Option<CertificateStart>,
    first: Option<u64>,
}

impl CertGroup {
    fn new(digest: [u8; 32]) -> Self {
        Self {
            digest,
            file: None,
            first: None,
        }
    }
}

enum Frame<'a> {
    Record {
        offset: u64,
        bytes: &'a [u8],
    },
    /// A complete entry over [`MAX_RECORD_LEN`]: skipped, its leaf hash
    /// computed on the way.
    Oversized {
        offset: u64,
        len: u64,
        leaf: Hash,
    },
    Truncated(String),
    End,
}

/// `records.log` entries. Unlike [`FrameReader`], an entry over the record
/// limit whose bytes are all there is returned (as oversized) and reading
/// goes on; only an entry the file ends inside stops it.
struct RecordFrames<R> {
    inner: BufReader<R>,
    offset: u64,
    buf: Vec<u8>,
}

impl<R: Read> RecordFrames<R> {
    fn new(reader: R) -> Self {
        Self {
            inner: BufReader::with_capacity(1 << 16, reader),
            offset: 0,
            buf: Vec::new(),
        }
    }

    fn next(&mut self) -> io::Result<Frame<'_>> {
        let offset = self.offset;
        let mut len = [0u8; 4];
        let got = read_full(&mut self.inner, &mut len)?;
        if got == 0 {
            return Ok(Frame::End);
        }
        let truncated = |have: u64, want: u64| {
            Frame::Truncated(format!(
                "the file ends inside the entry at byte {offset}: {have} of {want} bytes present"
            ))
        };
        if got < 4 {
            return Ok(truncated(got as u64, 4));
        }
        let n = u64::from(u32::from_be_bytes(len));
        if n > MAX_RECORD_LEN as u64 {
            let mut h = Sha256::new();
            h.update([0u8]);
            let mut chunk = [0u8; 8192];
            let mut left = n;
            while left > 0 {
                let want = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
                let got = read_full(&mut self.inner, &mut chunk[..want])?;
                h.update(&chunk[..got]);
                left -= got as u64;
                if got < want {
                    return Ok(truncated(4 + n - left, 4 + n));
                }
            }
            self.offset = offset + 4 + n;
            return Ok(Frame::Oversized {
                offset,
                len: n,
                leaf: h.finalize().into(),
            });
        }
        let n = n as usize;
        self.buf.resize(n, 0);
        let got = read_full(&mut self.inner, &mut self.buf)?;
        if got < n {
            return Ok(truncated(4 + got as u64, 4 + n as u64));
        }
        self.offset = offset + 4 + n as u64;
        Ok(Frame::Record {
            offset,
            bytes: &self.buf,
        })
    }
}
