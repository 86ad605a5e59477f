//! The one pass over `records.log`: each entry framed, hashed into the tree and decoded,
//! and every record's sequence, chaining and time order checked.

use std::io::{self, BufReader, Read};

use flashgate_tlog::{leaf_hash, Hash, Tree};
use sha2::{Digest as _, Sha256};

use super::{Source, Verifier};
use crate::frame::read_full;
use crate::record::{Record, RecordKind, MAX_RECORD_LEN};
use crate::verify::report::AnomalyKind;

impl Verifier<'_> {
    pub(in crate::verify) fn read_records<R: Read>(&mut self, reader: R) -> io::Result<()> {
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

/// `records.log` entries. Unlike [`FrameReader`](crate::frame::FrameReader),
/// an entry over the record limit whose bytes are all there is returned (as
/// oversized) and reading goes on; only an entry the file ends inside stops
/// it.
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
