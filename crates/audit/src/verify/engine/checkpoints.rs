//! The signed checkpoints: each verified and compared with the one before, the one kept
//! from an earlier bundle, and the tree's root checked at each size they cover.

use std::io::{self, BufReader, Read};

use flashgate_tlog::{Hash, Tree};

use super::{Source, Target, Verifier};
use crate::checkpoint::{CheckpointError, UnverifiedCheckpoint, VerifiedCheckpoint};
use crate::frame::{FrameError, FrameReader};
use crate::verify::kept_checkpoint;
use crate::verify::report::{AnomalyKind, Report};

impl Verifier<'_> {
    /// Reads every checkpoint; returns how many entries `checkpoints.log`
    /// holds, valid or not.
    pub(in crate::verify) fn read_checkpoints<R: Read>(&mut self, reader: R) -> io::Result<u64> {
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
        let bytes = match kept_checkpoint(kept, &self.options.log_key) {
            Ok(b) => b,
            Err(why) => return invalid(&mut self.report, why),
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

    pub(super) fn check_targets(&mut self, tree: &Tree, next: &mut usize) {
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
}
