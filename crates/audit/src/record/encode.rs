//! Writing a record: its fields in key order, in deterministic CBOR.

use std::collections::BTreeMap;

use super::{key, Record, RecordKind};
use crate::cbor;

/// A field value while encoding.
enum Out<'a> {
    U(u64),
    B(&'a [u8]),
    T(&'a str),
    M(&'a BTreeMap<String, u64>),
}

/// Collects the kind-specific fields in key order.
struct Fields<'a>(Vec<(u64, Out<'a>)>);

impl<'a> Fields<'a> {
    fn u(&mut self, k: u64, v: u64) {
        self.0.push((k, Out::U(v)));
    }
    fn b(&mut self, k: u64, v: &'a [u8]) {
        self.0.push((k, Out::B(v)));
    }
    fn t(&mut self, k: u64, v: &'a str) {
        self.0.push((k, Out::T(v)));
    }
    fn ob(&mut self, k: u64, v: Option<&'a [u8]>) {
        if let Some(v) = v {
            self.b(k, v);
        }
    }
    fn ot(&mut self, k: u64, v: Option<&'a str>) {
        if let Some(v) = v {
            self.t(k, v);
        }
    }
    fn ou(&mut self, k: u64, v: Option<u64>) {
        if let Some(v) = v {
            self.u(k, v);
        }
    }
}

impl Record {
    /// Encodes the record in deterministic CBOR.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        use key::*;
        let mut f = Fields(Vec::with_capacity(20));
        f.u(SEQ, self.seq);
        f.u(TIME, self.time);
        f.b(PREV, &self.prev);
        f.t(KIND, self.kind.name());
        match &self.kind {
            RecordKind::JobImported(r) => {
                f.b(JOB_ID, &r.job_id);
                f.t(PRODUCT, &r.product);
                f.u(QUOTA, r.quota);
                f.u(SECURITY_VERSION, r.security_version);
                f.b(MANIFEST_DIGEST, &r.manifest_digest);
            }
            RecordKind::JobRemoved(r) => f.b(JOB_ID, &r.job_id),
            RecordKind::JobRemovalStarted(r) => f.b(JOB_ID, &r.job_id),
            RecordKind::LogReset(r) => {
                f.t(REASON, &r.reason);
                f.u(SEGMENT, r.segment);
                if let Some(c) = &r.checkpoint {
                    f.u(CHECKPOINT_SIZE, c.size);
                    f.b(CHECKPOINT_ROOT, &c.root);
                    f.b(CHECKPOINT_SHA256, &c.sha256);
                }
                f.u(LOST_RECORDS, r.lost_records);
                f.u(LOST_BYTES, r.lost_bytes);
                f.u(HIGH_WATER, r.high_water);
            }
            RecordKind::RunStarted(r) => {
                f.b(JOB_ID, &r.job_id);
                f.b(RUN_ID, &r.run_id);
                f.t(OPERATOR, &r.operator);
                f.u(CHANNELS, u64::from(r.channels));
            }
            RecordKind::RunStopped(r) => {
                f.b(JOB_ID, &r.job_id);
                f.b(RUN_ID, &r.run_id);
                f.t(REASON, &r.reason);
            }
            RecordKind::UnitsReserved(r) => {
                f.b(JOB_ID, &r.job_id);
                f.u(FIRST, r.first);
                f.u(COUNT, r.count);
            }
            RecordKind::UnitPassed(r) => {
                f.b(JOB_ID, &r.job_id);
                f.b(RUN_ID, &r.run_id);
                f.u(COUNTER, r.counter);
                f.u(CHANNEL, u64::from(r.channel));
                f.t(DEVICE_TYPE, &r.device_type);
                f.b(UID, &r.uid);
                f.t(SERIAL, &r.serial);
                f.b(CERT_SHA256, &r.cert_sha256);
                f.b(FIRMWARE_SHA256, &r.firmware_sha256);
                f.b(LOCK_STATE, &r.lock_state);
                f.t(LOCK_LEVEL, &r.lock_level);
                f.0.push((TIMINGS, Out::M(&r.timings)));
                f.ou(REWORK_OF, r.rework_of);
            }
            RecordKind::UnitFailed(r) => {
                f.b(JOB_ID, &r.job_id);
                f.b(RUN_ID, &r.run_id);
                f.u(COUNTER, r.counter);
                f.u(CHANNEL, u64::from(r.channel));
                f.ot(DEVICE_TYPE, r.device_type.as_deref());
                f.ob(UID, r.uid.as_deref());
                f.ot(SERIAL, r.serial.as_deref());
                f.ob(CERT_SHA256, r.cert_sha256.as_ref().map(|d| &d[..]));
                f.ob(FIRMWARE_SHA256, r.firmware_sha256.as_ref().map(|d| &d[..]));
                f.0.push((TIMINGS, Out::M(&r.timings)));
                f.t(STAGE, &r.stage);
                f.t(REASON, &r.reason);
                f.ou(REWORK_OF, r.rework_of);
            }
            RecordKind::UnitAborted(r) => {
                f.b(JOB_ID, &r.job_id);
                f.t(REASON, &r.reason);
                f.u(COUNTER, r.counter);
            }
            RecordKind::UnitsUnused(r) => {
                f.b(JOB_ID, &r.job_id);
                f.t(REASON, &r.reason);
                f.u(FIRST, r.first);
                f.u(COUNT, r.count);
            }
        }
        f.0.sort_by_key(|(k, _)| *k);
        let mut out = Vec::with_capacity(256);
        cbor::put_map(&mut out, f.0.len());
        for (k, v) in &f.0 {
            cbor::put_uint(&mut out, *k);
            match v {
                Out::U(v) => cbor::put_uint(&mut out, *v),
                Out::B(v) => cbor::put_bytes(&mut out, v),
                Out::T(v) => cbor::put_text(&mut out, v),
                Out::M(m) => {
                    let mut entries: Vec<(&String, &u64)> = m.iter().collect();
                    entries.sort_by(|a, b| cbor::text_key_order(a.0, b.0));
                    cbor::put_map(&mut out, entries.len());
                    for (name, us) in entries {
                        cbor::put_text(&mut out, name);
                        cbor::put_uint(&mut out, *us);
                    }
                }
            }
        }
        out
    }
}
