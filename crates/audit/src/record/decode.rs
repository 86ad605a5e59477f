//! Reading a record strictly: keys in order, each field of the right type and belonging to
//! the record's kind, nothing left over.

use std::collections::BTreeMap;

use super::{
    field_name, key, JobImported, JobRemovalStarted, JobRemoved, LogReset, Record, RecordError,
    RecordKind, RunStarted, RunStopped, SealedCheckpoint, UnitAborted, UnitFailed, UnitPassed,
    UnitsReserved, UnitsUnused, MAX_RECORD_LEN,
};
use crate::cbor::Reader;

impl Record {
    /// Decodes a record, accepting only its deterministic encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLarge { len: bytes.len() });
        }
        let mut r = Reader::new(bytes);
        let n = r.map()?;
        let mut fields = Slots::default();
        let mut prev = None;
        for _ in 0..n {
            let (k, _) = r.uint_key(prev)?;
            prev = Some(k);
            if k >= key::END {
                return Err(RecordError::UnknownKey { key: k });
            }
            let v = if k == key::TIMINGS {
                let m = r.map()?;
                let mut entries = Vec::new();
                let mut last: Option<&str> = None;
                for _ in 0..m {
                    let name = r.text_key(last)?;
                    last = Some(name);
                    entries.push((name, r.uint()?));
                }
                In::M(entries)
            } else {
                match r.peek_major() {
                    Some(Reader::MAJOR_UINT) => In::U(r.uint()?),
                    Some(Reader::MAJOR_BYTES) => In::B(r.bytes()?),
                    Some(Reader::MAJOR_TEXT) => In::T(r.text()?),
                    _ => {
                        return Err(RecordError::WrongFieldType {
                            field: field_name(k),
                            expected: "unsigned integer, byte string or text string",
                        })
                    }
                }
            };
            // Keys are strictly increasing, so each slot is set once.
            fields.0[k as usize] = Some(v);
        }
        r.finish()?;
        fields.into_record()
    }
}

/// A field value while decoding, borrowed from the input.
enum In<'a> {
    U(u64),
    B(&'a [u8]),
    T(&'a str),
    M(Vec<(&'a str, u64)>),
}

struct Slots<'a>([Option<In<'a>>; key::END as usize]);

impl Default for Slots<'_> {
    fn default() -> Self {
        Self(std::array::from_fn(|_| None))
    }
}

impl<'a> Slots<'a> {
    fn take(&mut self, k: u64) -> Option<In<'a>> {
        self.0[k as usize].take()
    }

    fn has(&self, k: u64) -> bool {
        self.0[k as usize].is_some()
    }

    fn opt_u(&mut self, k: u64) -> Result<Option<u64>, RecordError> {
        match self.take(k) {
            None => Ok(None),
            Some(In::U(v)) => Ok(Some(v)),
            Some(_) => Err(RecordError::WrongFieldType {
                field: field_name(k),
                expected: "unsigned integer",
            }),
        }
    }

    fn opt_b(&mut self, k: u64) -> Result<Option<&'a [u8]>, RecordError> {
        match self.take(k) {
            None => Ok(None),
            Some(In::B(v)) => Ok(Some(v)),
            Some(_) => Err(RecordError::WrongFieldType {
                field: field_name(k),
                expected: "byte string",
            }),
        }
    }

    fn opt_t(&mut self, k: u64) -> Result<Option<&'a str>, RecordError> {
        match self.take(k) {
            None => Ok(None),
            Some(In::T(v)) => Ok(Some(v)),
            Some(_) => Err(RecordError::WrongFieldType {
                field: field_name(k),
                expected: "text string",
            }),
        }
    }

    fn u(&mut self, k: u64, kind: &'static str) -> Result<u64, RecordError> {
        self.opt_u(k)?.ok_or(missing(k, kind))
    }

    fn u32(&mut self, k: u64, kind: &'static str) -> Result<u32, RecordError> {
        u32::try_from(self.u(k, kind)?).map_err(|_| RecordError::WrongFieldType {
            field: field_name(k),
            expected: "32-bit unsigned integer",
        })
    }

    fn b(&mut self, k: u64, kind: &'static str) -> Result<&'a [u8], RecordError> {
        self.opt_b(k)?.ok_or(missing(k, kind))
    }

    fn t(&mut self, k: u64, kind: &'static str) -> Result<String, RecordError> {
        Ok(self.opt_t(k)?.ok_or(missing(k, kind))?.to_owned())
    }

    fn fixed<const N: usize>(
        &mut self,
        k: u64,
        kind: &'static str,
    ) -> Result<[u8; N], RecordError> {
        fixed(k, self.b(k, kind)?)
    }

    fn opt_fixed<const N: usize>(&mut self, k: u64) -> Result<Option<[u8; N]>, RecordError> {
        self.opt_b(k)?.map(|b| fixed(k, b)).transpose()
    }

    fn timings(&mut self, kind: &'static str) -> Result<BTreeMap<String, u64>, RecordError> {
        match self.take(key::TIMINGS) {
            Some(In::M(entries)) => Ok(entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()),
            Some(_) => Err(RecordError::WrongFieldType {
                field: "timings",
                expected: "map",
            }),
            None => Err(missing(key::TIMINGS, kind)),
        }
    }

    fn into_record(mut self) -> Result<Record, RecordError> {
        use key::*;
        let rec = "record";
        let seq = self.u(SEQ, rec)?;
        let time = self.u(TIME, rec)?;
        let prev = self.fixed::<32>(PREV, rec)?;
        let kind_text = self.opt_t(KIND)?.ok_or(missing(KIND, rec))?;
        let kind = match kind_text {
            "job-imported" => {
                let k = "job-imported";
                RecordKind::JobImported(JobImported {
                    job_id: self.fixed(JOB_ID, k)?,
                    product: self.t(PRODUCT, k)?,
                    quota: self.u(QUOTA, k)?,
                    security_version: self.u(SECURITY_VERSION, k)?,
                    manifest_digest: self.fixed(MANIFEST_DIGEST, k)?,
                })
            }
            "job-removed" => RecordKind::JobRemoved(JobRemoved {
                job_id: self.fixed(JOB_ID, "job-removed")?,
            }),
            "job-removal-started" => RecordKind::JobRemovalStarted(JobRemovalStarted {
                job_id: self.fixed(JOB_ID, "job-removal-started")?,
            }),
            "log-reset" => {
                let k = "log-reset";
                let size = self.opt_u(CHECKPOINT_SIZE)?;
                let root = self.opt_fixed::<32>(CHECKPOINT_ROOT)?;
                let sha256 = self.opt_fixed::<32>(CHECKPOINT_SHA256)?;
                let checkpoint = match (size, root, sha256) {
                    (None, None, None) => None,
                    (Some(size), Some(root), Some(sha256)) => {
                        Some(SealedCheckpoint { size, root, sha256 })
                    }
                    // All three or none: name the first one missing.
                    (s, r, _) => {
                        let absent = if s.is_none() {
                            CHECKPOINT_SIZE
                        } else if r.is_none() {
                            CHECKPOINT_ROOT
                        } else {
                            CHECKPOINT_SHA256
                        };
                        return Err(missing(absent, k));
                    }
                };
                RecordKind::LogReset(LogReset {
                    segment: self.u(SEGMENT, k)?,
                    checkpoint,
                    lost_records: self.u(LOST_RECORDS, k)?,
                    lost_bytes: self.u(LOST_BYTES, k)?,
                    high_water: self.u(HIGH_WATER, k)?,
                    reason: self.t(REASON, k)?,
                })
            }
            "run-started" => {
                let k = "run-started";
                RecordKind::RunStarted(RunStarted {
                    job_id: self.fixed(JOB_ID, k)?,
                    run_id: self.fixed(RUN_ID, k)?,
                    operator: self.t(OPERATOR, k)?,
                    channels: self.u32(CHANNELS, k)?,
                })
            }
            "run-stopped" => {
                let k = "run-stopped";
                RecordKind::RunStopped(RunStopped {
                    job_id: self.fixed(JOB_ID, k)?,
                    run_id: self.fixed(RUN_ID, k)?,
                    reason: self.t(REASON, k)?,
                })
            }
            "units-reserved" => {
                let k = "units-reserved";
                RecordKind::UnitsReserved(UnitsReserved {
                    job_id: self.fixed(JOB_ID, k)?,
                    first: self.u(FIRST, k)?,
                    count: self.u(COUNT, k)?,
                })
            }
            "unit-passed" => {
                let k = "unit-passed";
                RecordKind::UnitPassed(UnitPassed {
                    job_id: self.fixed(JOB_ID, k)?,
                    run_id: self.fixed(RUN_ID, k)?,
                    counter: self.u(COUNTER, k)?,
                    channel: self.u32(CHANNEL, k)?,
                    device_type: self.t(DEVICE_TYPE, k)?,
                    uid: self.b(UID, k)?.to_vec(),
                    serial: self.t(SERIAL, k)?,
                    cert_sha256: self.fixed(CERT_SHA256, k)?,
                    firmware_sha256: self.fixed(FIRMWARE_SHA256, k)?,
                    lock_state: self.b(LOCK_STATE, k)?.to_vec(),
                    lock_level: self.t(LOCK_LEVEL, k)?,
                    timings: self.timings(k)?,
                    rework_of: self.opt_u(REWORK_OF)?,
                })
            }
            "unit-failed" => {
                let k = "unit-failed";
                RecordKind::UnitFailed(UnitFailed {
                    job_id: self.fixed(JOB_ID, k)?,
                    run_id: self.fixed(RUN_ID, k)?,
                    counter: self.u(COUNTER, k)?,
                    channel: self.u32(CHANNEL, k)?,
                    device_type: self.opt_t(DEVICE_TYPE)?.map(str::to_owned),
                    uid: self.opt_b(UID)?.map(<[u8]>::to_vec),
                    serial: self.opt_t(SERIAL)?.map(str::to_owned),
                    cert_sha256: self.opt_fixed(CERT_SHA256)?,
                    firmware_sha256: self.opt_fixed(FIRMWARE_SHA256)?,
                    stage: self.t(STAGE, k)?,
                    reason: self.t(REASON, k)?,
                    timings: self.timings(k)?,
                    rework_of: self.opt_u(REWORK_OF)?,
                })
            }
            "unit-aborted" => {
                let k = "unit-aborted";
                RecordKind::UnitAborted(UnitAborted {
                    job_id: self.fixed(JOB_ID, k)?,
                    counter: self.u(COUNTER, k)?,
                    reason: self.t(REASON, k)?,
                })
            }
            "units-unused" => {
                let k = "units-unused";
                RecordKind::UnitsUnused(UnitsUnused {
                    job_id: self.fixed(JOB_ID, k)?,
                    first: self.u(FIRST, k)?,
                    count: self.u(COUNT, k)?,
                    reason: self.t(REASON, k)?,
                })
            }
            other => {
                return Err(RecordError::UnknownKind {
                    kind: other.chars().take(64).collect(),
                })
            }
        };
        let kind_name = kind.name();
        if let Some(k) = (0..END).find(|&k| self.has(k)) {
            return Err(RecordError::UnexpectedField {
                field: field_name(k),
                kind: kind_name,
            });
        }
        Ok(Record {
            seq,
            time,
            prev,
            kind,
        })
    }
}

fn missing(k: u64, kind: &'static str) -> RecordError {
    RecordError::MissingField {
        field: field_name(k),
        kind,
    }
}

fn fixed<const N: usize>(k: u64, b: &[u8]) -> Result<[u8; N], RecordError> {
    b.try_into().map_err(|_| RecordError::WrongLength {
        field: field_name(k),
        expected: N,
        found: b.len(),
    })
}
