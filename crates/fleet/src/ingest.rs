//! Ingesting one audit bundle.
//!
//! 1. The same `bundle.json` seen before changes nothing.
//! 2. The enrollment record is pinned on first sight; another one for a
//!    known appliance is refused.
//! 3. The full offline verifier runs first, with the stored checkpoint of
//!    the appliance's log as the kept earlier one: a bundle that does not
//!    extend the stored log is a fork or a rollback, kept as evidence (the
//!    two signed checkpoints) and reported, and the stored data is left
//!    as it was. A bundle whose log cannot be trusted is refused the same
//!    way. Findings about an authentic log are stored and the bundle is
//!    flagged.
//! 4. The records the bundle adds, up to its last signed checkpoint, go in
//!    by binary COPY, with the tree nodes they complete; the stored
//!    checkpoint and the new one are checked with an RFC 9162 consistency
//!    proof from the stored nodes; the fleet-wide cross-checks run over the
//!    new rows. All of it is one transaction: a killed ingest leaves none
//!    of the bundle.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use flashgate_audit::checkpoint::UnverifiedCheckpoint;
use flashgate_audit::record::{Record, RecordKind};
use flashgate_audit::{AnomalyKind, Bundle, RecordFile};
use flashgate_formats::bundle::BundleError;
use flashgate_formats::enrollment::VerifiedEnrollment;
use flashgate_formats::package::Manifest;
use flashgate_tlog::leaf_hash;
use futures_util::pin_mut;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use crate::bundle_values::BundleValues;
use crate::error::FleetError;
use crate::tree_store;
use crate::{now_ms, to_i64, Fleet};

/// What to do beside storing.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// The CM the appliance belongs to, recorded on first sight.
    pub cm: Option<String>,
}

/// What became of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// This `bundle.json` was ingested before: nothing changed.
    AlreadyIngested,
    /// Verified clean and merged.
    Merged,
    /// Merged; the verifier's findings are stored as open anomalies.
    Flagged,
    /// The log does not extend the stored one: a fork. Not merged.
    Fork,
    /// The log is shorter than the stored one: a rollback or a stale
    /// bundle. Not merged.
    Rollback,
    /// The log cannot be trusted (edited, wrongly signed). Not merged.
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyIngested => "already-ingested",
            Self::Merged => "merged",
            Self::Flagged => "flagged",
            Self::Fork => "fork",
            Self::Rollback => "rollback",
            Self::Refused => "refused",
        }
    }

    /// True when the bundle's records are now in the store.
    #[must_use]
    pub fn merged(self) -> bool {
        matches!(self, Self::Merged | Self::Flagged)
    }
}

/// The result of one ingest.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The appliance.
    pub appliance_id: String,
    /// The bundle's job, hex.
    pub job_id: String,
    /// What happened.
    pub outcome: Outcome,
    /// Records added to the store.
    pub records_added: u64,
    /// The stored log's size (its signed checkpoint's) afterwards.
    pub log_size: u64,
    /// Anomalies opened or updated by this ingest, as `kind: detail`.
    pub anomalies: Vec<String>,
    /// The signed checkpoint now stored for the log (to cosign).
    #[serde(skip)]
    pub checkpoint: Option<Vec<u8>>,
    /// The stored log, if merged.
    #[serde(skip)]
    pub log_id: Option<i32>,
    /// The appliance's log key.
    #[serde(skip)]
    pub log_key: [u8; 65],
    /// Where the time went, phase by phase (for the benchmark).
    #[serde(skip)]
    pub phases: Vec<(&'static str, std::time::Duration)>,
}

/// Marks the end of each phase of an ingest.
struct Clock {
    at: std::time::Instant,
    phases: Vec<(&'static str, std::time::Duration)>,
}

impl Clock {
    fn start() -> Self {
        Self {
            at: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        // A phase repeated (once per part of the values) adds up.
        match self.phases.iter_mut().find(|p| p.0 == phase) {
            Some(p) => p.1 += now - self.at,
            None => self.phases.push((phase, now - self.at)),
        }
        self.at = now;
    }
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: appliance {} job {}: {}",
            self.bundle.display(),
            self.appliance_id,
            self.job_id,
            self.outcome.as_str()
        )?;
        if self.outcome.merged() {
            write!(
                f,
                ", {} records added, log at {}",
                self.records_added, self.log_size
            )?;
        }
        // The JSON output lists them all; a terminal gets the first ten.
        for a in self.anomalies.iter().take(10) {
            write!(f, "\n  anomaly {a}")?;
        }
        if self.anomalies.len() > 10 {
            write!(
                f,
                "\n  ... and {} more (flashgate fleet report lists them)",
                self.anomalies.len() - 10
            )?;
        }
        Ok(())
    }
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> FleetError {
    FleetError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

fn bundle_err(path: &Path, e: impl std::fmt::Display) -> FleetError {
    FleetError::Bundle {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// The advisory lock that serialises the cross-checks and commits of all
/// ingests ("fgxcheck" in ASCII, as a bigint).
const CROSS_CHECK_LOCK: i64 = 0x6667_7863_6865_636b;

/// The stored state of an appliance's log segment.
struct StoredLog {
    log_id: i32,
    size: u64,
    frontier: Vec<u8>,
    checkpoint: Option<Vec<u8>>,
}

/// What the records of a bundle say about a job the store may not know.
struct JobSeen {
    product: String,
    every_units: Option<u64>,
    every_ms: Option<u64>,
}

/// One run's units since the last checkpoint boundary.
#[derive(Default)]
struct RunCadence {
    units: u64,
    first_ms: u64,
    last_ms: u64,
    flagged: bool,
}

impl Fleet {
    /// Ingests the bundle in `dir`.
    pub async fn ingest(
        &mut self,
        dir: &Path,
        options: &IngestOptions,
    ) -> Result<IngestReport, FleetError> {
        let mut clock = Clock::start();
        let index_path = dir.join(flashgate_audit::bundle::INDEX_FILE);
        let index_bytes = std::fs::read(&index_path).map_err(|e| read_err(&index_path, e))?;
        let bundle_sha: [u8; 32] = Sha256::digest(&index_bytes).into();
        let bundle = Bundle::open(dir).map_err(|e| bundle_err(dir, e))?;
        let enrollment_bytes = bundle.enrollment().map_err(|e| bundle_err(dir, e))?;
        let enrollment = VerifiedEnrollment::parse(&enrollment_bytes)
            .map_err(|e| bundle_err(dir, format!("the enrollment record: {e}")))?;
        let appliance_id = enrollment.record().appliance_id.clone();
        let log_key = enrollment.record().log_public;
        let base = IngestReport {
            bundle: dir.to_owned(),
            appliance_id: appliance_id.clone(),
            job_id: bundle.index().job_id.clone(),
            outcome: Outcome::AlreadyIngested,
            records_added: 0,
            log_size: 0,
            anomalies: Vec::new(),
            checkpoint: None,
            log_id: None,
            log_key,
            phases: Vec::new(),
        };
        if self
            .client
            .query_opt(
                "SELECT 1 FROM ingests WHERE bundle_sha256 = $1",
                &[&bundle_sha.as_slice()],
            )
            .await?
            .is_some()
        {
            return Ok(base);
        }

        // Pinned on first sight.
        let known = self
            .client
            .query_opt(
                "SELECT enrollment_sha256, cm FROM appliances WHERE appliance_id = $1",
                &[&appliance_id],
            )
            .await?;
        if let Some(row) = &known {
            let pinned: &[u8] = row.get(0);
            let cm: String = row.get(1);
            if pinned != enrollment.digest().as_slice() {
                let e = FleetError::EnrollmentChanged {
                    path: dir.display().to_string(),
                    appliance: appliance_id.clone(),
                    pinned: hex::encode(pinned),
                    found: enrollment.fingerprint(),
                };
                self.note_anomaly(
                    "enrollment-changed",
                    &format!("{appliance_id}:{}", enrollment.fingerprint()),
                    Some(&appliance_id),
                    &e.to_string(),
                )
                .await?;
                return Err(e);
            }
            if let Some(given) = &options.cm {
                if *given != cm {
                    return Err(FleetError::CmMismatch {
                        appliance: appliance_id,
                        recorded: cm,
                        given: given.clone(),
                    });
                }
            }
        }

        let segment = first_segment(&bundle)?;
        let signed = signed_checkpoints(&bundle, &log_key)?;
        clock.mark("open and checkpoints");
        let pinned = known.is_some().then(|| enrollment.fingerprint());
        // Concurrent ingests of one appliance: the second re-verifies
        // against what the first stored.
        for _attempt in 0..3 {
            let stored = self.stored_log(&appliance_id, segment).await?;
            let newer_segment: Option<i64> = self
                .client
                .query_one(
                    "SELECT max(segment) FROM logs WHERE appliance_id = $1",
                    &[&appliance_id],
                )
                .await?
                .get(0);
            let (checked, oem_key) = self.verify_manifest(dir, pinned.as_deref()).await?;
            let manifest = checked.manifest().clone();
            let policy = checked.policy().clone();
            let job_hex = hex::encode(manifest.job_id);
            // The log's full verification runs on a thread of its own while
            // the records load inside a savepoint; its report then decides
            // whether the load stays. Most bundles are clean, so this
            // overlaps the two largest parts of an ingest.
            let verifying = {
                let (dir, previous) = (
                    dir.to_owned(),
                    stored.as_ref().and_then(|s| s.checkpoint.clone()),
                );
                tokio::task::spawn_blocking(move || {
                    flashgate_formats::bundle::verify_log(&dir, checked, previous)
                        .map_err(|e| bundle_err(&dir, e))
                })
            };

            let tx = self.client.transaction().await?;
            // Serialises ingests of one appliance; re-checked below.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                &[&appliance_id],
            )
            .await?;
            let now = now_ms();
            let inserted = tx
                .execute(
                    "INSERT INTO appliances (appliance_id, cm, enrollment, enrollment_sha256, log_key, first_seen_ms, last_ingest_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (appliance_id) DO NOTHING",
                    &[
                        &appliance_id,
                        &options.cm.clone().unwrap_or_else(|| "unassigned".to_owned()),
                        &enrollment_bytes,
                        &enrollment.digest().as_slice(),
                        &log_key.as_slice(),
                        &now,
                    ],
                )
                .await?;
            let again = stored_log_in(&tx, &appliance_id, segment).await?;
            if (inserted == 0 && known.is_none())
                || again.as_ref().map(|s| s.size) != stored.as_ref().map(|s| s.size)
            {
                // Another ingest pinned it or grew the log meanwhile: start again.
                drop(tx);
                let _ = verifying.await;
                continue;
            }
            let ingest_id: i64 = tx
                .query_one(
                    "INSERT INTO ingests (bundle_sha256, appliance_id, job_id, at_ms, outcome, records_added, report) \
                     VALUES ($1, $2, $3, $4, 'pending', 0, '') RETURNING ingest_id",
                    &[
                        &bundle_sha.as_slice(),
                        &appliance_id,
                        &manifest.job_id.as_slice(),
                        &now,
                    ],
                )
                .await?
                .get(0);
            let mut out = IngestReport {
                job_id: job_hex.clone(),
                log_size: stored.as_ref().map_or(0, |s| s.size),
                ..base.clone()
            };
            let last_cp = signed.last.clone();

            // The load, speculative until the verifier has spoken.
            tx.batch_execute("SAVEPOINT load").await?;
            let log = match again {
                Some(s) => s,
                None => {
                    let log_id: i32 = tx
                        .query_one(
                            "INSERT INTO logs (appliance_id, segment, size, frontier) VALUES ($1, $2, 0, ''::bytea) RETURNING log_id",
                            &[&appliance_id, &segment],
                        )
                        .await?
                        .get(0);
                    StoredLog {
                        log_id,
                        size: 0,
                        frontier: Vec::new(),
                        checkpoint: None,
                    }
                }
            };
            let grows = last_cp
                .as_ref()
                .filter(|(size, _)| *size > log.size)
                .cloned();
            let loaded = match &grows {
                Some((new_size, _)) => {
                    let loaded = async {
                        let added = merge_records(
                            &tx,
                            &bundle,
                            (&manifest, &policy, &oem_key),
                            &appliance_id,
                            &log,
                            (*new_size, &signed.sizes),
                            ingest_id,
                            &mut out,
                            &mut clock,
                        )
                        .await?;
                        Ok::<_, FleetError>(added)
                    }
                    .await;
                    Some(loaded)
                }
                None => None,
            };
            let verification = verifying
                .await
                .map_err(|e| FleetError::Inconsistent(format!("the verifier stopped: {e}")))??;
            clock.mark("verify (rest)");
            let report = &verification.report;
            let report_json = flashgate_audit::VerifyOutput::verified(
                appliance_id.clone(),
                enrollment.fingerprint(),
                report.clone(),
            )
            .to_json();

            // What the verifier found decides whether anything is merged.
            let fork = report.has(AnomalyKind::PreviousCheckpointMismatch);
            let rollback = report.has(AnomalyKind::PreviousCheckpointBeyondLog)
                || newer_segment.is_some_and(|s| s > segment);
            let broken = report
                .anomaly_counts
                .keys()
                .any(|k| k.breaks_log_integrity());
            let outcome = if fork {
                Outcome::Fork
            } else if rollback {
                Outcome::Rollback
            } else if broken {
                Outcome::Refused
            } else if report.is_clean() {
                Outcome::Merged
            } else {
                Outcome::Flagged
            };
            out.outcome = outcome;
            if !outcome.merged() {
                // Nothing of the load stays, whatever became of it.
                tx.batch_execute("ROLLBACK TO SAVEPOINT load").await?;
                out.anomalies.clear();
                tx.execute(
                    "UPDATE ingests SET outcome = $2, report = $3 WHERE ingest_id = $1",
                    &[&ingest_id, &outcome.as_str(), &report_json],
                )
                .await?;
                let (kind, what) = match outcome {
                    Outcome::Fork => ("log-fork", "does not extend the stored log (fork)"),
                    Outcome::Rollback => (
                        "log-rollback",
                        "is behind the stored log (a rollback, or an older export)",
                    ),
                    _ => ("bundle-refused", "holds a log that cannot be trusted"),
                };
                let first = report
                    .anomalies
                    .iter()
                    .find(|a| a.kind.breaks_log_integrity())
                    .map_or(String::new(), |a| format!(": {}", a.detail));
                let detail = format!(
                    "bundle {} from appliance {appliance_id} (job {job_hex}) {what}{first}; nothing of it was merged",
                    dir.display()
                );
                add_anomaly(
                    &tx,
                    kind,
                    &format!("{appliance_id}:{}", hex::encode(bundle_sha)),
                    None,
                    Some(&appliance_id),
                    Some(&manifest.job_id),
                    &detail,
                    ingest_id,
                )
                .await?;
                out.anomalies.push(format!("{kind}: {detail}"));
                if let (Some(stored_cp), true) = (
                    stored.as_ref().and_then(|s| s.checkpoint.clone()),
                    matches!(outcome, Outcome::Fork | Outcome::Rollback),
                ) {
                    tx.execute(
                        "INSERT INTO evidence (ingest_id, appliance_id, kind, stored_checkpoint, conflicting_checkpoint) VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &ingest_id,
                            &appliance_id,
                            &(if fork { "fork" } else { "rollback" }),
                            &stored_cp,
                            &last_cp.as_ref().map(|c| c.1.clone()),
                        ],
                    )
                    .await?;
                }
                tx.commit().await?;
                return Ok(out);
            }
            tx.batch_execute("RELEASE SAVEPOINT load").await?;
            tx.execute(
                "UPDATE ingests SET outcome = $2, report = $3 WHERE ingest_id = $1",
                &[&ingest_id, &outcome.as_str(), &report_json],
            )
            .await?;
            out.log_id = Some(log.log_id);
            let (Some((new_size, new_cp)), Some(added)) = (grows, loaded) else {
                // Nothing signed beyond what is stored.
                out.log_size = log.size;
                out.checkpoint = log.checkpoint.clone();
                finish_flagged(&tx, &mut out, report, dir, ingest_id).await?;
                tx.commit().await?;
                return Ok(out);
            };
            let added = added?;
            // The stored checkpoint and the new one, by a consistency proof
            // from the stored nodes.
            let new_root = *flashgate_audit::verify_checkpoint(&new_cp, &log_key)
                .map_err(|e| bundle_err(dir, e))?
                .root();
            if let Some(old) = &log.checkpoint {
                let old_v = flashgate_audit::verify_checkpoint(old, &log_key)
                    .map_err(|e| FleetError::Inconsistent(format!("the stored checkpoint: {e}")))?;
                let proof =
                    tree_store::consistency_proof(&tx, log.log_id, old_v.size(), new_size).await?;
                flashgate_tlog::verify_consistency(
                    old_v.size(),
                    new_size,
                    &proof,
                    old_v.root(),
                    &new_root,
                )
                .map_err(|e| {
                    FleetError::Inconsistent(format!(
                        "the consistency proof from {} to {new_size} does not verify: {e}",
                        old_v.size()
                    ))
                })?;
            }
            // The cross-checks compare the new rows with everything stored,
            // so they run one ingest at a time, fleet-wide, to commit: a
            // concurrent ingest's rows are then committed before these
            // statements start, and duplicates between the two are found.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CROSS_CHECK_LOCK])
                .await?;
            clock.mark("consistency");
            cross_check(
                &tx,
                ingest_id,
                added.values,
                &added.counts,
                &mut out,
                &mut clock,
            )
            .await?;
            clock.mark("over-built check and unit counts");
            finish_flagged(&tx, &mut out, report, dir, ingest_id).await?;
            let checkpoint_ms = added.last_ms;
            tx.execute(
                "UPDATE logs SET size = $2, frontier = $3, checkpoint = $4, checkpoint_ms = coalesce($5, checkpoint_ms, $6) WHERE log_id = $1",
                &[
                    &log.log_id,
                    &to_i64(new_size)?,
                    &added.frontier,
                    &new_cp,
                    &checkpoint_ms,
                    &now,
                ],
            )
            .await?;
            tx.execute(
                "UPDATE appliances SET last_ingest_ms = $2 WHERE appliance_id = $1",
                &[&appliance_id, &now],
            )
            .await?;
            tx.execute(
                "UPDATE ingests SET records_added = $2 WHERE ingest_id = $1",
                &[&ingest_id, &to_i64(added.records)?],
            )
            .await?;
            tx.commit().await?;
            clock.mark("commit");
            out.phases = clock.phases;
            out.records_added = added.records;
            out.log_size = new_size;
            out.checkpoint = Some(new_cp);
            return Ok(out);
        }
        Err(FleetError::Database(format!(
            "{}: other ingests of appliance {appliance_id} kept changing its log; try again",
            dir.display()
        )))
    }

    async fn stored_log(
        &self,
        appliance_id: &str,
        segment: i64,
    ) -> Result<Option<StoredLog>, FleetError> {
        let row = self
            .client
            .query_opt(
                "SELECT log_id, size, frontier, checkpoint FROM logs WHERE appliance_id = $1 AND segment = $2",
                &[&appliance_id, &segment],
            )
            .await?;
        row.map(|r| stored_from_row(&r)).transpose()
    }

    /// The bundle's manifest checked with each trusted OEM key in turn.
    async fn verify_manifest(
        &self,
        dir: &Path,
        pinned: Option<&str>,
    ) -> Result<(flashgate_formats::bundle::VerifiedManifest, [u8; 65]), FleetError> {
        let keys = self.oem_keys().await?;
        if keys.is_empty() {
            return Err(FleetError::NoOemKey);
        }
        for key in &keys {
            match flashgate_formats::bundle::verify_manifest(dir, key, pinned) {
                Err(BundleError::NotSignedByOem) => continue,
                Err(e) => return Err(bundle_err(dir, e)),
                Ok(v) => return Ok((v, *key)),
            }
        }
        Err(FleetError::UnknownOemKey {
            path: dir.display().to_string(),
        })
    }

    /// Records an anomaly outside an ingest (its own transaction).
    async fn note_anomaly(
        &mut self,
        kind: &str,
        subject: &str,
        appliance: Option<&str>,
        detail: &str,
    ) -> Result<(), FleetError> {
        let tx = self.client.transaction().await?;
        add_anomaly(&tx, kind, subject, None, appliance, None, detail, 0).await?;
        tx.commit().await?;
        Ok(())
    }
}

fn stored_from_row(r: &tokio_postgres::Row) -> Result<StoredLog, FleetError> {
    let size: i64 = r.get(1);
    Ok(StoredLog {
        log_id: r.get(0),
        size: u64::try_from(size)
            .map_err(|_| FleetError::Inconsistent("a negative log size".to_owned()))?,
        frontier: r.get(2),
        checkpoint: r.get(3),
    })
}

async fn stored_log_in(
    tx: &Transaction<'_>,
    appliance_id: &str,
    segment: i64,
) -> Result<Option<StoredLog>, FleetError> {
    let row = tx
        .query_opt(
            "SELECT log_id, size, frontier, checkpoint FROM logs WHERE appliance_id = $1 AND segment = $2 FOR UPDATE",
            &[&appliance_id, &segment],
        )
        .await?;
    row.map(|r| stored_from_row(&r)).transpose()
}

/// The log segment a bundle's records belong to: 0, or the number in the
/// `log-reset` record it starts with.
fn first_segment(bundle: &Bundle) -> Result<i64, FleetError> {
    let mut file = bundle.records().map_err(|e| bundle_err(bundle.dir(), e))?;
    let segment = match file.next_bytes() {
        Ok(Some((_, bytes))) => match Record::decode(bytes).map(|r| r.kind) {
            Ok(RecordKind::LogReset(r)) => r.segment,
            _ => 0,
        },
        _ => 0,
    };
    to_i64(segment)
}

/// The checkpoints of a bundle whose signature verifies with the log key.
struct SignedCheckpoints {
    /// The one of the largest size: (size, bytes).
    last: Option<(u64, Vec<u8>)>,
    /// Their sizes, sorted and distinct (the cadence check's boundaries).
    sizes: Vec<u64>,
}

/// Reads `checkpoints.log` before the load starts, and verifies only the
/// largest checkpoint, which is the one stored. The verifier, beside the
/// load, checks every signature: one that fails is an integrity break
/// there, and nothing of the load stays. Verifying all of them here too
/// took a thousand signatures of a 100,000-unit bundle, about 0.9 s during
/// which nothing else ran. If the largest does not verify, every one is
/// verified, as before: the load then stops at the largest signed size.
fn signed_checkpoints(
    bundle: &Bundle,
    log_key: &[u8; 65],
) -> Result<SignedCheckpoints, FleetError> {
    let parsed = read_checkpoints(bundle, None)?;
    let largest_verifies = parsed.last.as_ref().is_some_and(|(_, bytes)| {
        UnverifiedCheckpoint::parse(bytes)
            .and_then(|u| u.verify(log_key))
            .is_ok()
    });
    if largest_verifies {
        Ok(parsed)
    } else {
        read_checkpoints(bundle, Some(log_key))
    }
}

/// The checkpoints that parse, and with `verify_with` whose signature
/// verifies with that key.
fn read_checkpoints(
    bundle: &Bundle,
    verify_with: Option<&[u8; 65]>,
) -> Result<SignedCheckpoints, FleetError> {
    let mut file = bundle
        .checkpoints()
        .map_err(|e| bundle_err(bundle.dir(), e))?;
    let mut last: Option<(u64, Vec<u8>)> = None;
    let mut sizes = Vec::new();
    while let Ok(Some((_, bytes))) = file.next_bytes() {
        let Ok(u) = UnverifiedCheckpoint::parse(bytes) else {
            continue;
        };
        let size = match verify_with {
            None => u.checkpoint_unverified().size,
            Some(key) => match u.verify(key) {
                Ok(v) => v.size(),
                Err(_) => continue,
            },
        };
        sizes.push(size);
        if last.as_ref().is_none_or(|b| size > b.0) {
            last = Some((size, bytes.to_vec()));
        }
    }
    sizes.sort_unstable();
    sizes.dedup();
    Ok(SignedCheckpoints { last, sizes })
}

/// Opens or refreshes an anomaly.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn add_anomaly(
    tx: &Transaction<'_>,
    kind: &str,
    subject: &str,
    product: Option<&str>,
    appliance: Option<&str>,
    job: Option<&[u8; 16]>,
    detail: &str,
    ingest_id: i64,
) -> Result<(), FleetError> {
    tx.execute(
        "INSERT INTO anomalies (kind, subject, product, appliance_id, job_id, detail, ingest_id, found_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (kind, subject) DO UPDATE SET detail = EXCLUDED.detail, ingest_id = EXCLUDED.ingest_id, open = true",
        &[
            &kind,
            &subject,
            &product,
            &appliance,
            &job.map(|j| j.as_slice()),
            &detail,
            &ingest_id,
            &now_ms(),
        ],
    )
    .await?;
    Ok(())
}

/// The verifier's findings of a merged bundle, one anomaly per kind.
async fn finish_flagged(
    tx: &Transaction<'_>,
    out: &mut IngestReport,
    report: &flashgate_audit::Report,
    dir: &Path,
    ingest_id: i64,
) -> Result<(), FleetError> {
    let job: Option<[u8; 16]> = hex::decode(&out.job_id)
        .ok()
        .and_then(|v| v.try_into().ok());
    for (kind, count) in &report.anomaly_counts {
        let first = report
            .anomalies
            .iter()
            .find(|a| a.kind == *kind)
            .map_or(String::new(), |a| a.detail.clone());
        let detail = format!(
            "bundle {} (appliance {}, job {}): {count} × {kind}, first: {first}",
            dir.display(),
            out.appliance_id,
            out.job_id
        );
        add_anomaly(
            tx,
            &format!("bundle-{kind}"),
            &format!("{}:{}:{kind}", out.appliance_id, out.job_id),
            Some(&report.product),
            Some(&out.appliance_id),
            job.as_ref(),
            &detail,
            ingest_id,
        )
        .await?;
        out.anomalies.push(format!("bundle-{kind}: {detail}"));
    }
    Ok(())
}

struct Added {
    records: u64,
    frontier: Vec<u8>,
    /// Time of the last record added: the last one the new checkpoint covers.
    last_ms: Option<i64>,
    /// The values the cross-checks look up, in bounded memory.
    values: BundleValues,
    /// Unit records added per job and outcome ("passed", "aborted" or the
    /// failing stage).
    counts: BTreeMap<([u8; 16], String), i64>,
}

/// Streams the records `stored.size .. new_size` into `units`, `runs`,
/// `jobs` and `nodes`.
#[allow(clippy::too_many_arguments)]
async fn merge_records(
    tx: &Transaction<'_>,
    bundle: &Bundle,
    (manifest, policy, oem_key): (&Manifest, &flashgate_policy::Policy, &[u8; 65]),
    appliance_id: &str,
    stored: &StoredLog,
    (new_size, boundaries): (u64, &[u64]),
    ingest_id: i64,
    out: &mut IngestReport,
    clock: &mut Clock,
) -> Result<Added, FleetError> {
    let dir = bundle.dir();
    // The jobs the store knows on this appliance, with their cadence.
    let mut jobs: HashMap<[u8; 16], JobSeen> = HashMap::new();
    for r in tx
        .query(
            "SELECT job_id, product, every_units, every_seconds FROM jobs WHERE appliance_id = $1",
            &[&appliance_id],
        )
        .await?
    {
        let id: &[u8] = r.get(0);
        let Ok(id) = <[u8; 16]>::try_from(id) else {
            continue;
        };
        let units: Option<i32> = r.get(2);
        let secs: Option<i32> = r.get(3);
        jobs.insert(
            id,
            JobSeen {
                product: r.get(1),
                every_units: units.and_then(|u| u64::try_from(u).ok()),
                every_ms: secs.and_then(|s| u64::try_from(s).ok()).map(|s| s * 1000),
            },
        );
    }
    // The bundle's own job: its cadence from the verified policy.
    let audit = policy.audit();
    let own = jobs.entry(manifest.job_id).or_insert_with(|| JobSeen {
        product: policy.job().product.as_str().to_owned(),
        every_units: None,
        every_ms: None,
    });
    own.every_units = Some(u64::from(audit.checkpoint_every_units));
    own.every_ms = Some(u64::from(audit.checkpoint_every_seconds) * 1000);

    let unit_types = [
        Type::INT4,
        Type::INT8,
        Type::TEXT,
        Type::BYTEA,
        Type::TEXT,
        Type::BYTEA,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::BYTEA,
        Type::TEXT,
        Type::BYTEA,
        Type::INT8,
        Type::INT8,
        Type::BYTEA,
        Type::INT8,
        Type::BYTEA,
        Type::BYTEA,
    ];
    // Each run's channels: the runs this log started before (asked before
    // the COPY starts, as the connection takes no query during one), then
    // this bundle's own `run-started` records as they come.
    let mut channels: HashMap<[u8; 16], u64> = HashMap::new();
    for r in tx
        .query(
            "SELECT run_id, channels FROM runs WHERE log_id = $1",
            &[&stored.log_id],
        )
        .await?
    {
        let id: &[u8] = r.get(0);
        let n: i32 = r.get(1);
        if let Ok(id) = <[u8; 16]>::try_from(id) {
            channels.insert(id, u64::try_from(n).unwrap_or(1));
        }
    }
    let sink = tx
        .copy_in(
            "COPY units (log_id, seq, appliance_id, job_id, product, run_id, counter, result, stage, uid, serial, cert_sha256, time_ms, rework_of, record, ingest_id, cert_der, spki_sha256) FROM STDIN BINARY",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &unit_types);
    pin_mut!(writer);
    let mut file = bundle.records().map_err(|e| bundle_err(dir, e))?;
    let mut imported: Vec<(flashgate_audit::record::JobImported, i64)> = Vec::new();
    let mut runs: Vec<(flashgate_audit::record::RunStarted, u64, u64)> = Vec::new();
    let mut reserved: BTreeMap<[u8; 16], u64> = BTreeMap::new();
    let mut counts: BTreeMap<([u8; 16], String), i64> = BTreeMap::new();
    let mut cadence: HashMap<[u8; 16], RunCadence> = HashMap::new();
    let mut cadence_findings: Vec<(String, String)> = Vec::new();
    let mut next_boundary = boundaries
        .iter()
        .copied()
        .filter(|b| *b > stored.size)
        .peekable();
    let mut seq_expected = 0u64;
    let mut added = 0u64;
    let mut last_ms: Option<i64> = None;
    let mut values =
        BundleValues::new(new_size.saturating_sub(stored.size)).map_err(|e| spill_err(&e))?;
    let log_id = stored.log_id;
    while let Some((_, bytes)) = file.next_bytes().map_err(|e| bundle_err(dir, e))? {
        let seq = seq_expected;
        seq_expected += 1;
        if seq < stored.size {
            continue;
        }
        if seq >= new_size {
            break;
        }
        while next_boundary.peek().is_some_and(|b| *b <= seq) {
            next_boundary.next();
            cadence.clear();
        }
        let rec =
            Record::decode(bytes).map_err(|e| bundle_err(dir, format!("record {seq}: {e}")))?;
        if rec.seq != seq {
            return Err(bundle_err(
                dir,
                format!("record {seq} carries number {}", rec.seq),
            ));
        }
        let seq_i = to_i64(seq)?;
        let time = to_i64(rec.time)?;
        match &rec.kind {
            RecordKind::JobImported(j) => {
                jobs.entry(j.job_id).or_insert_with(|| JobSeen {
                    product: j.product.clone(),
                    every_units: None,
                    every_ms: None,
                });
                imported.push((j.clone(), time));
            }
            RecordKind::RunStarted(r) => {
                channels.insert(r.run_id, u64::from(r.channels));
                runs.push((r.clone(), seq, rec.time));
            }
            RecordKind::UnitsReserved(r) => *reserved.entry(r.job_id).or_default() += r.count,
            RecordKind::UnitPassed(u) => {
                let counter = to_i64(u.counter)?;
                let rework = u.rework_of.map(to_i64).transpose()?;
                let cert = unit_certificate(bundle, &u.cert_sha256)?;
                let product = product_of(&jobs, &u.job_id);
                *counts.entry((u.job_id, "passed".to_owned())).or_default() += 1;
                keep_values(
                    &mut values,
                    Some(u.uid.as_slice()),
                    &product,
                    Some(u.serial.as_str()),
                    Some(&u.cert_sha256),
                    cert.as_ref(),
                )?;
                writer
                    .as_mut()
                    .write(&[
                        &log_id,
                        &seq_i,
                        &appliance_id,
                        &u.job_id.as_slice(),
                        &product,
                        &Some(u.run_id.as_slice()),
                        &counter,
                        &"passed",
                        &None::<&str>,
                        &Some(u.uid.as_slice()),
                        &Some(u.serial.as_str()),
                        &Some(u.cert_sha256.as_slice()),
                        &time,
                        &rework,
                        &bytes,
                        &ingest_id,
                        &cert.as_ref().map(|c| c.der.as_slice()),
                        &cert.as_ref().map(|c| c.spki_sha256.as_slice()),
                    ])
                    .await?;
                cadence_unit(
                    &jobs,
                    &mut cadence,
                    &mut cadence_findings,
                    (&u.job_id, &u.run_id, channels.get(&u.run_id).copied()),
                    seq,
                    rec.time,
                    appliance_id,
                );
            }
            RecordKind::UnitFailed(u) => {
                let counter = to_i64(u.counter)?;
                let rework = u.rework_of.map(to_i64).transpose()?;
                let cert = match &u.cert_sha256 {
                    Some(sha) => unit_certificate(bundle, sha)?,
                    None => None,
                };
                let product = product_of(&jobs, &u.job_id);
                *counts.entry((u.job_id, u.stage.clone())).or_default() += 1;
                keep_values(
                    &mut values,
                    None,
                    &product,
                    u.serial.as_deref(),
                    u.cert_sha256.as_ref(),
                    cert.as_ref(),
                )?;
                writer
                    .as_mut()
                    .write(&[
                        &log_id,
                        &seq_i,
                        &appliance_id,
                        &u.job_id.as_slice(),
                        &product,
                        &Some(u.run_id.as_slice()),
                        &counter,
                        &"failed",
                        &Some(u.stage.as_str()),
                        &u.uid.as_deref(),
                        &u.serial.as_deref(),
                        &u.cert_sha256.as_ref().map(|c| c.as_slice()),
                        &time,
                        &rework,
                        &bytes,
                        &ingest_id,
                        &cert.as_ref().map(|c| c.der.as_slice()),
                        &cert.as_ref().map(|c| c.spki_sha256.as_slice()),
                    ])
                    .await?;
                cadence_unit(
                    &jobs,
                    &mut cadence,
                    &mut cadence_findings,
                    (&u.job_id, &u.run_id, channels.get(&u.run_id).copied()),
                    seq,
                    rec.time,
                    appliance_id,
                );
            }
            RecordKind::UnitAborted(u) => {
                let counter = to_i64(u.counter)?;
                *counts.entry((u.job_id, "aborted".to_owned())).or_default() += 1;
                writer
                    .as_mut()
                    .write(&[
                        &log_id,
                        &seq_i,
                        &appliance_id,
                        &u.job_id.as_slice(),
                        &product_of(&jobs, &u.job_id),
                        &None::<&[u8]>,
                        &counter,
                        &"aborted",
                        &None::<&str>,
                        &None::<&[u8]>,
                        &None::<&str>,
                        &None::<&[u8]>,
                        &time,
                        &None::<i64>,
                        &bytes,
                        &ingest_id,
                        &None::<&[u8]>,
                        &None::<&[u8]>,
                    ])
                    .await?;
            }
            RecordKind::JobRemoved(_)
            | RecordKind::JobRemovalStarted(_)
            | RecordKind::LogReset(_)
            | RecordKind::RunStopped(_)
            | RecordKind::UnitsUnused(_) => {}
            // A kind newer than this collector: stored in the tree only.
            _ => {}
        }
        added += 1;
        last_ms = Some(time);
    }
    writer.finish().await?;
    clock.mark("COPY units");
    if seq_expected < new_size {
        return Err(bundle_err(
            dir,
            format!(
                "records.log ends at {seq_expected} records, before its checkpoint's {new_size}"
            ),
        ));
    }

    for (j, _) in &imported {
        tx.execute(
            "INSERT INTO jobs (job_id, appliance_id, product, security_version, quota, manifest_sha256) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id) DO NOTHING",
            &[
                &j.job_id.as_slice(),
                &appliance_id,
                &j.product,
                &to_i64(j.security_version)?,
                &to_i64(j.quota)?,
                &j.manifest_digest.as_slice(),
            ],
        )
        .await?;
    }
    // The bundle's own job: what only the verified manifest says.
    let job_ca = &manifest.job_ca_cert;
    tx.execute(
        "UPDATE jobs SET oem_key_id = $2, not_before = $3, not_after = $4, job_ca_cert = $5, every_units = $6, every_seconds = $7 WHERE job_id = $1",
        &[
            &manifest.job_id.as_slice(),
            &flashgate_cose::key_id(oem_key).as_slice(),
            &to_i64(policy.job().not_before)?,
            &to_i64(policy.job().not_after)?,
            job_ca,
            &i32::try_from(audit.checkpoint_every_units).unwrap_or(i32::MAX),
            &i32::try_from(audit.checkpoint_every_seconds).unwrap_or(i32::MAX),
        ],
    )
    .await?;
    for (job, n) in &reserved {
        tx.execute(
            "UPDATE jobs SET reserved = reserved + $2 WHERE job_id = $1",
            &[&job.as_slice(), &to_i64(*n)?],
        )
        .await?;
    }
    for (r, seq, time) in &runs {
        tx.execute(
            "INSERT INTO runs (run_id, log_id, seq, job_id, operator, channels, started_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id) DO NOTHING",
            &[
                &r.run_id.as_slice(),
                &log_id,
                &to_i64(*seq)?,
                &r.job_id.as_slice(),
                &r.operator,
                &i32::try_from(r.channels).unwrap_or(i32::MAX),
                &to_i64(*time)?,
            ],
        )
        .await?;
    }
    for (subject, detail) in cadence_findings {
        add_anomaly(
            tx,
            "checkpoint-cadence",
            &subject,
            None,
            Some(appliance_id),
            None,
            &detail,
            ingest_id,
        )
        .await?;
        out.anomalies.push(format!("checkpoint-cadence: {detail}"));
    }

    clock.mark("jobs, runs and cadence");
    // The tree nodes, in a second pass (one COPY at a time per connection).
    let mut tree = tree_store::tree_from(stored.size, &stored.frontier)?;
    let sink = tx
        .copy_in("COPY nodes (log_id, level, idx, hash) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::INT2, Type::INT8, Type::BYTEA]);
    pin_mut!(writer);
    let mut file: RecordFile = bundle.records().map_err(|e| bundle_err(dir, e))?;
    let mut seq = 0u64;
    let mut pending: Vec<(i16, i64, [u8; 32])> = Vec::with_capacity(64);
    while let Some((_, bytes)) = file.next_bytes().map_err(|e| bundle_err(dir, e))? {
        if seq >= new_size {
            break;
        }
        if seq >= stored.size {
            pending.clear();
            tree_store::push_leaf(&mut tree, leaf_hash(bytes), |level, idx, h| {
                pending.push((
                    i16::try_from(level).unwrap_or(i16::MAX),
                    i64::try_from(idx).unwrap_or(i64::MAX),
                    h,
                ));
            })?;
            for (level, idx, h) in &pending {
                writer
                    .as_mut()
                    .write(&[&log_id, level, idx, &h.as_slice()])
                    .await?;
            }
        }
        seq += 1;
    }
    writer.finish().await?;
    clock.mark("COPY nodes");
    Ok(Added {
        records: added,
        frontier: tree_store::frontier_bytes(&tree),
        last_ms,
        values,
        counts,
    })
}

fn product_of(jobs: &HashMap<[u8; 16], JobSeen>, job: &[u8; 16]) -> String {
    jobs.get(job).map_or(String::new(), |j| j.product.clone())
}

/// Counts one unit against its run's checkpoint cadence; a run that went
/// past `checkpoint_every_units` units (or its channel count, when that is
/// larger: each channel may have one unit recorded while a checkpoint is
/// signed, docs/FORMATS.md §11.3), or past `checkpoint_every_seconds`
/// (with one second's grace) before its last unit, without a checkpoint
/// in between, is a gap.
fn cadence_unit(
    jobs: &HashMap<[u8; 16], JobSeen>,
    cadence: &mut HashMap<[u8; 16], RunCadence>,
    findings: &mut Vec<(String, String)>,
    (job, run, channels): (&[u8; 16], &[u8; 16], Option<u64>),
    seq: u64,
    time: u64,
    appliance_id: &str,
) {
    let Some(j) = jobs.get(job) else {
        return;
    };
    let c = cadence.entry(*run).or_default();
    if c.units == 0 {
        c.first_ms = time;
    }
    let prev_ms = c.last_ms;
    c.units += 1;
    c.last_ms = time;
    if c.flagged {
        return;
    }
    let over_units = j
        .every_units
        .is_some_and(|n| c.units > n.max(channels.unwrap_or(1)));
    let over_time = c.units > 1
        && j.every_ms
            .is_some_and(|ms| prev_ms.saturating_sub(c.first_ms) > ms.saturating_add(1000));
    if over_units || over_time {
        c.flagged = true;
        findings.push((
            format!("{appliance_id}:{seq}"),
            format!(
                "appliance {appliance_id}, run {}: {} units without a signed checkpoint by record {seq}, against the job's policy of one every {} units or {} s",
                hex::encode(run),
                c.units,
                j.every_units.unwrap_or(0),
                j.every_ms.unwrap_or(0) / 1000
            ),
        ));
    }
}

/// A unit's certificate (DER) and the SHA-256 of its SubjectPublicKeyInfo.
struct UnitCertificate {
    der: Vec<u8>,
    spki_sha256: [u8; 32],
}

/// The certificate a unit record names, with the SHA-256 of its
/// SubjectPublicKeyInfo, when the bundle holds it under that name, its
/// bytes hash to it and it parses. Anything else is the verifier's finding
/// and is not stored.
fn unit_certificate(
    bundle: &Bundle,
    sha256: &[u8; 32],
) -> Result<Option<UnitCertificate>, FleetError> {
    use x509_cert::der::{Decode, Encode};
    let Some(der) = bundle
        .certificate(sha256)
        .map_err(|e| bundle_err(bundle.dir(), e))?
    else {
        return Ok(None);
    };
    if Sha256::digest(&der).as_slice() != sha256 {
        return Ok(None);
    }
    let Ok(cert) = x509_cert::Certificate::from_der(&der) else {
        return Ok(None);
    };
    let Ok(spki) = cert.tbs_certificate().subject_public_key_info().to_der() else {
        return Ok(None);
    };
    Ok(Some(UnitCertificate {
        spki_sha256: Sha256::digest(&spki).into(),
        der,
    }))
}

/// The values of one unit record that the cross-checks look up.
fn keep_values(
    values: &mut BundleValues,
    uid: Option<&[u8]>,
    product: &str,
    serial: Option<&str>,
    cert_sha256: Option<&[u8; 32]>,
    cert: Option<&UnitCertificate>,
) -> Result<(), FleetError> {
    let mut keep = || -> std::io::Result<()> {
        if let Some(uid) = uid {
            values.uid(uid)?;
        }
        if let Some(serial) = serial {
            values.serial(product, serial)?;
        }
        if let Some(sha) = cert_sha256 {
            values.cert(sha)?;
            if let Some(c) = cert {
                values.key(&c.spki_sha256, sha)?;
            }
        }
        Ok(())
    };
    keep().map_err(|e| spill_err(&e))
}

fn spill_err(e: &std::io::Error) -> FleetError {
    FleetError::Write {
        path: "the ingest's temporary files (in TMPDIR)".to_owned(),
        detail: format!("{e}; free some space there or point TMPDIR elsewhere"),
    }
}

/// The fleet-wide cross-checks over the values this ingest added.
async fn cross_check(
    tx: &Transaction<'_>,
    ingest_id: i64,
    values: BundleValues,
    counts: &BTreeMap<([u8; 16], String), i64>,
    out: &mut IngestReport,
    clock: &mut Clock,
) -> Result<(), FleetError> {
    let now = now_ms();
    // These plans are costed per new row, far above `jit_above_cost` for a
    // large bundle: compiling them took longer than running them (over
    // half a second of a 100,000-unit bundle's duplicate-serial check).
    tx.batch_execute("SET LOCAL jit = off").await?;
    // The collector sends each part of the bundle's values sorted and
    // distinct (so that the probes walk the index in order), with those
    // the part holds more than once; a part holds every repeat of its
    // values. Each value is looked for in its (value, ingest_id) index
    // among other ingests' rows only; see `duplicated`.
    let (uid_sql, serial_sql, cert_sql, key_sql) = (
        duplicate_uid_select(),
        duplicate_serial_select(),
        duplicate_certificate_select(),
        duplicate_device_key_select(),
    );
    let mut parts = values.into_parts().map_err(|e| spill_err(&e))?;
    while let Some(mut part) = parts.next_part().map_err(|e| spill_err(&e))? {
        let uids = part.uids();
        open_anomalies(
            tx,
            "duplicate-uid",
            &uid_sql,
            &[&ingest_id, &now, &uids.all, &uids.repeated],
            out,
        )
        .await?;
        clock.mark("duplicate-uid check");
        let serials = part.serials();
        let (products, numbers) = columns(&serials.all);
        let (rep_products, rep_numbers) = columns(&serials.repeated);
        open_anomalies(
            tx,
            "duplicate-serial",
            &serial_sql,
            &[
                &ingest_id,
                &now,
                &products,
                &numbers,
                &rep_products,
                &rep_numbers,
            ],
            out,
        )
        .await?;
        let certs = part.certs();
        open_anomalies(
            tx,
            "duplicate-certificate",
            &cert_sql,
            &[
                &ingest_id,
                &now,
                &slices(&certs.all),
                &slices(&certs.repeated),
            ],
            out,
        )
        .await?;
        let (pairs, shared) = part.keys();
        let (keys, key_certs): (Vec<&[u8]>, Vec<&[u8]>) = pairs
            .iter()
            .map(|(k, c)| (k.as_slice(), c.as_slice()))
            .unzip();
        open_anomalies(
            tx,
            "duplicate-device-key",
            &key_sql,
            &[&ingest_id, &now, &keys, &key_certs, &slices(&shared)],
            out,
        )
        .await?;
        clock.mark("serial, certificate and device-key checks");
    }
    // The jobs with units in this bundle.
    let mut jobs: Vec<&[u8]> = counts.keys().map(|(job, _)| job.as_slice()).collect();
    jobs.dedup();
    open_anomalies(
        tx,
        "over-built",
        "SELECT 'over-built', j.product || ':' || j.security_version, j.product, \
           'product ' || j.product || ' security version ' || j.security_version || ': ' || sum(j.reserved) || \
           ' units used against ' || sum(j.quota) || ' issued in ' || count(*) || ' job(s)' \
         FROM jobs j \
         WHERE (j.product, j.security_version) IN (SELECT product, security_version FROM jobs WHERE job_id = ANY($3::bytea[])) \
         GROUP BY j.product, j.security_version HAVING sum(j.reserved) > sum(j.quota)",
        &[&ingest_id, &now, &jobs],
        out,
    )
    .await?;
    // Counted as the records loaded, not by reading the new rows back.
    let (count_jobs, outcomes, n): (Vec<&[u8]>, Vec<&str>, Vec<i64>) = counts
        .iter()
        .map(|((job, outcome), n)| (job.as_slice(), outcome.as_str(), *n))
        .collect();
    tx.execute(
        "INSERT INTO unit_counts (job_id, outcome, n) \
         SELECT * FROM unnest($1::bytea[], $2::text[], $3::bigint[]) \
         ON CONFLICT (job_id, outcome) DO UPDATE SET n = unit_counts.n + EXCLUDED.n",
        &[&count_jobs, &outcomes, &n],
    )
    .await?;
    Ok(())
}

/// Parameters that borrow a part's values rather than copy them.
fn columns(v: &[(String, String)]) -> (Vec<&str>, Vec<&str>) {
    v.iter().map(|(p, s)| (p.as_str(), s.as_str())).unzip()
}

fn slices(v: &[[u8; 32]]) -> Vec<&[u8]> {
    v.iter().map(<[u8; 32]>::as_slice).collect()
}

/// The values of `values` (a FROM item `n(...)`, projected by `select`)
/// that another ingest's rows also hold (`cond`, over `o` and `n`), and
/// those of `repeats` (the bundle's own repeats, same columns).
///
/// Each value is probed in its (value, ingest_id) index among other
/// ingests' rows only, as two ranges of `ingest_id`: a value seen nowhere
/// else is answered from the index alone, without a visit to the wide row
/// the bundle just added. `OFFSET 0` keeps each probe a probe: without it
/// the planner may hash every stored row of the other ingests, a cost that
/// grows with the fleet (seen: 0.2 s at the second bundle, 1.1 s at the
/// tenth). Rows of a later ingest exist only when one committed while
/// this one loaded (the cross-check lock orders the rest), so that probe
/// runs only then. That guard is a `max`, which the planner always reads
/// from the end of the `ingest_id` index: as an `EXISTS` it was planned
/// from stale statistics as a scan of the whole table (0.2 s at each of a
/// bundle's sixteen checks).
fn duplicated(select: &str, values: &str, cond: &str, repeats: &str) -> String {
    format!(
        "SELECT {select} FROM {values} \
         WHERE EXISTS (SELECT 1 FROM units o WHERE {cond} AND o.ingest_id < $1 OFFSET 0) \
            OR ((SELECT max(h.ingest_id) FROM units h) > $1 \
                AND EXISTS (SELECT 1 FROM units o WHERE {cond} AND o.ingest_id > $1 OFFSET 0)) \
         UNION SELECT * FROM {repeats}"
    )
}

/// The details of a duplicated value, built only for the few found: its
/// count and where each of its records was made.
const WHERE_MADE: &str = "string_agg('appliance ' || a.appliance_id || ' job ' || encode(a.job_id, 'hex') || ' counter ' || a.counter, ', ' ORDER BY a.appliance_id, a.seq)";

/// The duplicate-UID cross-check's SELECT: `$1` is the ingest, `$3` a part
/// of its passed UIDs, sorted and distinct, `$4` those among them that the
/// bundle holds more than once. Public for the benchmark, which times this
/// text.
#[must_use]
pub fn duplicate_uid_select() -> String {
    format!(
        "SELECT 'duplicate-uid', encode(d.uid, 'hex'), x.product, \
           'UID ' || encode(d.uid, 'hex') || ' passed ' || x.n || ' times: ' || x.list \
         FROM ({}) d(uid) \
         CROSS JOIN LATERAL (SELECT count(*) AS n, min(a.product) AS product, {WHERE_MADE} AS list \
           FROM units a WHERE a.uid = d.uid AND a.result = 'passed') x",
        duplicated(
            "n.u",
            "unnest($3::bytea[]) n(u)",
            "o.uid = n.u AND o.result = 'passed'",
            "unnest($4::bytea[]) w(u)"
        )
    )
}

/// `$3`, `$4`: products and serials of a part, `$5`, `$6`: its repeats.
fn duplicate_serial_select() -> String {
    format!(
        "SELECT 'duplicate-serial', d.product || ':' || d.serial, d.product, \
           'serial ' || d.serial || ' of product ' || d.product || ' issued ' || x.n || ' times: ' || x.list \
         FROM ({}) d(product, serial) \
         CROSS JOIN LATERAL (SELECT count(*) AS n, {WHERE_MADE} AS list \
           FROM units a WHERE a.serial = d.serial AND a.product = d.product) x",
        duplicated(
            "n.p, n.s",
            "unnest($3::text[], $4::text[]) n(p, s)",
            "o.serial = n.s AND o.product = n.p",
            "unnest($5::text[], $6::text[]) w(p, s)"
        )
    )
}

/// `$3`: certificate hashes of a part, `$4`: its repeats.
fn duplicate_certificate_select() -> String {
    format!(
        "SELECT 'duplicate-certificate', encode(d.c, 'hex'), x.product, \
           'certificate ' || encode(d.c, 'hex') || ' issued ' || x.n || ' times: ' || x.list \
         FROM ({}) d(c) \
         CROSS JOIN LATERAL (SELECT count(*) AS n, min(a.product) AS product, {WHERE_MADE} AS list \
           FROM units a WHERE a.cert_sha256 = d.c) x",
        duplicated(
            "n.c",
            "unnest($3::bytea[]) n(c)",
            "o.cert_sha256 = n.c",
            "unnest($4::bytea[]) w(c)"
        )
    )
}

/// `$3`, `$4`: (device key, certificate) pairs of a part, `$5`: the keys
/// it holds in more than one certificate. The same certificate elsewhere
/// is a duplicate certificate, not a shared key.
fn duplicate_device_key_select() -> String {
    format!(
        "SELECT 'duplicate-device-key', encode(d.k, 'hex'), NULL, \
           'one device public key (SPKI SHA-256 ' || encode(d.k, 'hex') || ') in ' || x.n || ' certificates: ' || x.list \
         FROM ({}) d(k) \
         CROSS JOIN LATERAL (SELECT count(*) AS n, \
           string_agg(encode(c.cert_sha256, 'hex') || ' (job ' || encode(c.job_id, 'hex') || ')', ', ' ORDER BY c.cert_sha256) AS list \
           FROM (SELECT DISTINCT cert_sha256, job_id FROM units WHERE spki_sha256 = d.k) c) x",
        duplicated(
            "n.k",
            "unnest($3::bytea[], $4::bytea[]) n(k, c)",
            "o.spki_sha256 = n.k AND o.cert_sha256 <> n.c",
            "unnest($5::bytea[]) w(k)"
        )
    )
}

/// Opens or refreshes the anomalies a cross-check's SELECT finds (`$1` is
/// the ingest, `$2` the time) and adds their details to the report.
async fn open_anomalies(
    tx: &Transaction<'_>,
    kind: &str,
    select: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    out: &mut IngestReport,
) -> Result<(), FleetError> {
    let sql = format!(
        "INSERT INTO anomalies (kind, subject, product, detail, ingest_id, found_ms) \
         SELECT k, s, p, d, $1, $2 FROM ({select}) AS f(k, s, p, d) \
         ON CONFLICT (kind, subject) DO UPDATE SET detail = EXCLUDED.detail, ingest_id = EXCLUDED.ingest_id, open = true \
         RETURNING detail"
    );
    for row in tx.query(&sql, params).await? {
        let d: String = row.get(0);
        out.anomalies.push(format!("{kind}: {d}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Units of one run, one per `step_ms`, until the first gap is found;
    /// the number of the unit found, if any.
    fn first_gap(every_units: u64, channels: Option<u64>, units: u64) -> Option<u64> {
        let (job, run) = ([1u8; 16], [2u8; 16]);
        let jobs = HashMap::from([(
            job,
            JobSeen {
                product: "p".to_owned(),
                every_units: Some(every_units),
                every_ms: Some(60_000),
            },
        )]);
        let mut cadence = HashMap::new();
        let mut findings = Vec::new();
        for n in 1..=units {
            cadence_unit(
                &jobs,
                &mut cadence,
                &mut findings,
                (&job, &run, channels),
                n,
                1_000 + n,
                "a",
            );
            if !findings.is_empty() {
                return Some(n);
            }
        }
        None
    }

    #[test]
    fn a_run_may_reach_its_policy_count_and_no_further() {
        assert_eq!(first_gap(100, Some(8), 100), None);
        assert_eq!(first_gap(100, Some(8), 101), Some(101));
        assert_eq!(first_gap(100, None, 101), Some(101));
    }

    #[test]
    fn more_channels_than_the_policy_count_allow_one_unit_each() {
        assert_eq!(first_gap(4, Some(8), 8), None);
        assert_eq!(first_gap(4, Some(8), 9), Some(9));
        assert_eq!(first_gap(4, Some(1), 5), Some(5));
    }
}
