//! The streaming engine behind [`super::verify_bundle`] and
//! [`super::verify_parts`]: checkpoints first, then one pass over the
//! records, then the sorted per-unit facts ([`Spill`]) are merged to find
//! duplicates, invalid reworks and certificates missing either way.

mod checkpoints;
mod duplicates;
mod job_facts;
mod records;

use std::collections::HashMap;
use std::io;

use flashgate_tlog::Hash;

use super::report::{AnomalyKind, QuotaUse, Report};
use super::spill::Spill;
use super::VerifyOptions;
use crate::bundle::CertificateList;
use crate::checkpoint::origin_for;
use crate::intervals::Intervals;
use crate::record::{Digest, RunId};
use duplicates::{CERT_N, SERIAL_N, UID_N};

/// Memory for each of the three sorts (UIDs, serials, certificates) before
/// it spills to disk.
const SORT_BUDGET: usize = 4 << 20;

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
    /// The policy's lock level; `None` for a word this verifier does not know.
    lock_required: Option<flashgate_device::LockLevel>,
    serial_buf: String,
    uids: Spill<UID_N>,
    serials: Spill<SERIAL_N>,
    certs: Spill<CERT_N>,
    cert_list: Option<CertificateList>,
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
            lock_required: facts.lock_level.parse().ok(),
            serial_buf: String::new(),
            uids: Spill::new(SORT_BUDGET),
            serials: Spill::new(SORT_BUDGET),
            certs: Spill::new(SORT_BUDGET),
            cert_list: None,
        }
    }

    /// The certificate list of `bundle.json`, checked against the files.
    pub(super) fn expect_certificate_list(&mut self, list: CertificateList) {
        self.cert_list = Some(list);
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
}
