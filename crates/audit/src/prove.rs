//! Inclusion proofs for one unit's record against a signed checkpoint.
//!
//! A proof is self-contained: the record bytes, its index, the tree size,
//! the RFC 9162 audit path and the signed checkpoint. Anyone with the pinned
//! log key can check it without the log.

use std::path::Path;

use flashgate_tlog::{leaf_hash, verify_inclusion, Checkpoint, Hash, Tree};
use serde::{Deserialize, Serialize};

use crate::bundle::{CHECKPOINTS_FILE as BUNDLE_CHECKPOINTS, RECORDS_FILE};
use crate::checkpoint::{verify_checkpoint, UnverifiedCheckpoint};
use crate::error::AuditError;
use crate::log::{RecordFile, CHECKPOINTS_FILE, LOG_FILE};
use crate::record::{JobId, Record, RecordKind};

/// The value of `format` in a proof.
pub const PROOF_FORMAT: &str = "flashgate-inclusion-proof/1";

/// A self-contained inclusion proof (JSON with hex strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// [`PROOF_FORMAT`].
    pub format: String,
    /// The record's bytes, hex.
    #[serde(with = "hex_vec")]
    pub record: Vec<u8>,
    /// The record's leaf index (its sequence number).
    pub index: u64,
    /// The tree size the proof is for (the checkpoint's size).
    pub tree_size: u64,
    /// The audit path, from the leaf's sibling up, hex.
    #[serde(with = "hex_hashes")]
    pub hashes: Vec<Hash>,
    /// The signed checkpoint (tagged `COSE_Sign1`), hex.
    #[serde(with = "hex_vec")]
    pub checkpoint: Vec<u8>,
}

/// What a valid proof establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenRecord {
    /// The record, now known to be in the signed log.
    pub record: Record,
    /// The checkpoint it was proved against.
    pub checkpoint: Checkpoint,
}

fn files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    if dir.join(RECORDS_FILE).exists() {
        (dir.join(RECORDS_FILE), dir.join(BUNDLE_CHECKPOINTS))
    } else {
        (dir.join(LOG_FILE), dir.join(CHECKPOINTS_FILE))
    }
}

/// Builds the proof for the record of the unit with `uid` (a `unit-passed`
/// record, or failing that a `unit-failed` one; optionally only for `job`),
/// against the latest checkpoint in `dir` that covers it. `dir` is a log
/// directory or a bundle.
///
/// Holds one 32-byte leaf hash per record while it works.
pub fn prove_uid(
    dir: &Path,
    uid: &[u8],
    job: Option<&JobId>,
) -> Result<InclusionProof, AuditError> {
    let (records, checkpoints) = files(dir);
    let mut file = RecordFile::open(&records)?;
    let mut leaves: Vec<Hash> = Vec::new();
    let mut passed: Option<(u64, Vec<u8>)> = None;
    let mut failed: Option<(u64, Vec<u8>)> = None;
    while let Some((_, bytes)) = file.next_bytes().map_err(|e| AuditError::Corrupt {
        file: records.display().to_string(),
        offset: 0,
        detail: e.to_string(),
    })? {
        let index = leaves.len() as u64;
        leaves.push(leaf_hash(bytes));
        if passed.is_some() {
            continue;
        }
        let Ok(rec) = Record::decode(bytes) else {
            continue;
        };
        if job.is_some_and(|j| j != rec.kind.job_id()) {
            continue;
        }
        match &rec.kind {
            RecordKind::UnitPassed(r) if r.uid == uid => passed = Some((index, bytes.to_vec())),
            RecordKind::UnitFailed(r) if failed.is_none() && r.uid.as_deref() == Some(uid) => {
                failed = Some((index, bytes.to_vec()));
            }
            // Another unit, or a record that names no device.
            RecordKind::UnitPassed(_)
            | RecordKind::UnitFailed(_)
            | RecordKind::UnitAborted(_)
            | RecordKind::UnitsReserved(_)
            | RecordKind::UnitsUnused(_)
            | RecordKind::JobImported(_)
            | RecordKind::JobRemoved(_)
            | RecordKind::JobRemovalStarted(_)
            | RecordKind::LogReset(_)
            | RecordKind::RunStarted(_)
            | RecordKind::RunStopped(_) => {}
        }
    }
    let (index, record) = passed.or(failed).ok_or_else(|| {
        AuditError::NotFound(format!("no unit with UID {} in the log", hex::encode(uid)))
    })?;

    // The latest checkpoint that covers the record and matches the records.
    let mut cps = RecordFile::open(&checkpoints)?;
    let mut best: Option<(u64, Vec<u8>)> = None;
    while let Ok(Some((_, bytes))) = cps.next_bytes() {
        let Ok(u) = UnverifiedCheckpoint::parse(bytes) else {
            continue;
        };
        let cp = u.checkpoint_unverified();
        if cp.size > index
            && cp.size as usize <= leaves.len()
            && best.as_ref().is_none_or(|b| cp.size >= b.0)
        {
            let mut tree = Tree::new();
            for l in &leaves[..cp.size as usize] {
                tree.push_leaf_hash(*l)?;
            }
            if tree.root() == cp.root {
                best = Some((cp.size, bytes.to_vec()));
            }
        }
    }
    let (tree_size, checkpoint) = best.ok_or_else(|| {
        AuditError::NotFound(format!(
            "no signed checkpoint covers record {index} yet; sign one and try again"
        ))
    })?;
    let hashes = flashgate_tlog::inclusion_proof(&leaves, index, tree_size)?;
    Ok(InclusionProof {
        format: PROOF_FORMAT.to_owned(),
        record,
        index,
        tree_size,
        hashes,
        checkpoint,
    })
}

/// Checks a proof with the pinned log key: the checkpoint's signature, that
/// it is for the proof's tree size, that the record decodes and sits at its
/// own sequence number, and the audit path to the signed root.
pub fn verify_proof(
    proof: &InclusionProof,
    log_key: &[u8; 65],
) -> Result<ProvenRecord, AuditError> {
    if proof.format != PROOF_FORMAT {
        return Err(AuditError::Proof(format!(
            "unknown proof format {:?}",
            proof.format
        )));
    }
    let cp = verify_checkpoint(&proof.checkpoint, log_key)?;
    if cp.size() != proof.tree_size {
        return Err(AuditError::Proof(format!(
            "the checkpoint is for {} records, the proof for {}",
            cp.size(),
            proof.tree_size
        )));
    }
    let record = Record::decode(&proof.record)
        .map_err(|e| AuditError::Proof(format!("the record does not decode: {e}")))?;
    if record.seq != proof.index {
        return Err(AuditError::Proof(format!(
            "record number {} is claimed to be at index {}",
            record.seq, proof.index
        )));
    }
    verify_inclusion(
        &leaf_hash(&proof.record),
        proof.index,
        proof.tree_size,
        &proof.hashes,
        cp.root(),
    )
    .map_err(|e| AuditError::Proof(e.to_string()))?;
    Ok(ProvenRecord {
        record,
        checkpoint: cp.checkpoint().clone(),
    })
}

mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod hex_hashes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(hex::encode).collect::<Vec<_>>().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|h| {
                hex::decode(h)
                    .map_err(serde::de::Error::custom)?
                    .try_into()
                    .map_err(|_| serde::de::Error::custom("a hash is not 32 bytes"))
            })
            .collect()
    }
}
