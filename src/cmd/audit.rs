//! `flashgate audit ...`: export, verify, prove, reset.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use flashgate::enrollment::VerifiedEnrollment;
use flashgate::oem;
use flashgate::station::{Access, JobId};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// CM: write an audit bundle for one job (records, checkpoints, enrollment, manifest, certificates).
    Export {
        /// Job id.
        #[arg(long)]
        job: String,
        /// Output directory (created; must be new or empty).
        #[arg(short, long)]
        out: PathBuf,
    },
    /// OEM security team: verify a bundle offline. Exit 0 clean, 1 anomalies, 2 could not verify.
    Verify {
        /// The bundle directory.
        bundle: PathBuf,
        /// The OEM's job-signing public key (PEM) that signed the job.
        #[arg(long)]
        oem: PathBuf,
        /// The appliance's enrollment fingerprint as pinned (SHA-256 hex); the bundle's record must match.
        #[arg(long)]
        fingerprint: Option<String>,
        /// A signed checkpoint kept from an earlier bundle, or that bundle's whole
        /// checkpoints.log (its last checkpoint is used), for fork and rollback detection.
        #[arg(long)]
        previous_checkpoint: Option<PathBuf>,
        /// A witness's verifier key file (`fleet witness init` writes it): the kept checkpoint
        /// must be cosigned by it. May be repeated.
        #[arg(long, requires = "previous_checkpoint")]
        witness: Vec<PathBuf>,
        /// Print the verdict and report as JSON (schema in docs/AUDIT-FORMAT.md), also on exit 2.
        #[arg(long)]
        json: bool,
    },
    /// Print an inclusion proof of one device's record against the latest signed checkpoint.
    Prove {
        /// Device UID (hex).
        #[arg(long)]
        uid: String,
        /// Restrict to one job.
        #[arg(long)]
        job: Option<String>,
    },
    /// CM supervisor: seal an audit log that can no longer be trusted and start a new segment.
    ///
    /// The damaged log moves, read-only, to audit/sealed/<n>/; the new segment's first
    /// record says what was lost and why. Asks for confirmation unless --yes.
    Reset {
        /// Why (recorded in the log-reset record).
        #[arg(long)]
        reason: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Check an inclusion proof against the appliance's log key.
    CheckProof {
        /// The proof (JSON, as `audit prove` prints it).
        proof: PathBuf,
        /// The appliance's enrollment record (its log key is used).
        #[arg(long)]
        appliance: PathBuf,
    },
}

/// `flashgate audit ...`.
pub fn run(config: &Path, cmd: AuditCmd, w: &mut String) -> Result<u8> {
    use std::fmt::Write as _;
    match cmd {
        AuditCmd::Export { job, out } => {
            let station = super::open(config, Access::Read)?;
            let report = station.export_bundle(&job.parse()?, &out)?;
            let _ = writeln!(
                w,
                "audit bundle for job {job} written to {} ({} certificates)",
                out.display(),
                report.certificates
            );
            if report.sealed_segments > 0 {
                let _ = writeln!(
                    w,
                    "the log was reset: {} sealed segment(s) copied into {}",
                    report.sealed_segments,
                    report.sealed_dir.display()
                );
            }
            Ok(0)
        }
        AuditCmd::Reset { reason, yes } => {
            let station = super::open_for_reset(config)?;
            if !yes && !confirm_reset()? {
                bail!("the audit log was not reset (not confirmed)");
            }
            let report = station.reset_log(&reason)?;
            let _ = writeln!(w, "{report}");
            Ok(0)
        }
        AuditCmd::Verify {
            bundle,
            oem: oem_key,
            fingerprint,
            previous_checkpoint,
            witness,
            json,
        } => {
            let mut cosigned = Vec::new();
            let verified = (|| -> Result<_> {
                let key = oem::read_public_key_pem(&oem_key)?;
                // A kept checkpoint, or a whole checkpoints.log (its last entry counts).
                let previous_checkpoint = match previous_checkpoint {
                    Some(p) => {
                        let bytes = std::fs::read(&p)
                            .with_context(|| format!("cannot read {}", p.display()))?;
                        cosigned = check_cosignatures(&p, &bytes, &witness)?;
                        Some(bytes)
                    }
                    None => None,
                };
                Ok(flashgate::bundle::verify_bundle(
                    &bundle,
                    &key,
                    fingerprint.as_deref(),
                    previous_checkpoint,
                )?)
            })();
            let v = match verified {
                Ok(v) => v,
                Err(e) => {
                    if json {
                        // The same sentence main prints.
                        let out = flashgate_audit::VerifyOutput::failed(super::sentence(&e));
                        let _ = writeln!(w, "{}", out.to_json());
                    }
                    return Err(e);
                }
            };
            let code = if v.report.is_clean() { 0 } else { 1 };
            if json {
                let out = flashgate_audit::VerifyOutput::verified(
                    v.enrollment.record().appliance_id.clone(),
                    v.enrollment.fingerprint(),
                    v.report,
                );
                let _ = writeln!(w, "{}", out.to_json());
            } else {
                for line in cosigned {
                    let _ = writeln!(w, "{line}");
                }
                let _ = writeln!(
                    w,
                    "appliance {} (fingerprint {})",
                    v.enrollment.record().appliance_id,
                    v.enrollment.fingerprint()
                );
                let _ = write!(w, "{}", v.report);
            }
            Ok(code)
        }
        AuditCmd::Prove { uid, job } => {
            let station = super::open(config, Access::Read)?;
            let uid = hex::decode(&uid).with_context(|| format!("'{uid}' is not hex"))?;
            let job: Option<JobId> = job.map(|j| j.parse()).transpose()?;
            let proof = flashgate_audit::prove_uid(
                &station.appliance().audit_dir(),
                &uid,
                job.as_ref().map(JobId::as_bytes),
            )?;
            let _ = writeln!(w, "{}", serde_json::to_string_pretty(&proof)?);
            Ok(0)
        }
        AuditCmd::CheckProof { proof, appliance } => {
            let text = std::fs::read_to_string(&proof)
                .with_context(|| format!("cannot read {}", proof.display()))?;
            let proof: flashgate_audit::InclusionProof =
                serde_json::from_str(&text).context("not an inclusion proof")?;
            let e = VerifiedEnrollment::parse(&std::fs::read(&appliance)?)?;
            let proven = flashgate_audit::verify_proof(&proof, &e.record().log_public)?;
            let _ = writeln!(
                w,
                "proof OK: record {} is in the log of appliance {} at checkpoint size {}",
                proven.record.seq,
                e.record().appliance_id,
                proven.checkpoint.size
            );
            Ok(0)
        }
    }
}

/// Asks on the terminal whether to reset the log; false without a terminal.
fn confirm_reset() -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("audit reset asks for confirmation on a terminal; run it on one, or pass --yes");
    }
    eprint!(
        "This seals the audit log as evidence and starts a new segment; records after its last verified checkpoint are lost. Type 'reset' to go on: "
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the answer")?;
    Ok(line.trim() == "reset")
}

/// Checks the kept checkpoint at `path` against each witness verifier key
/// file; returns one line per cosignature.
fn check_cosignatures(
    path: &std::path::Path,
    bytes: &[u8],
    witnesses: &[PathBuf],
) -> Result<Vec<String>> {
    if witnesses.is_empty() {
        return Ok(Vec::new());
    }
    let note = flashgate_note::SignedNote::parse(bytes).with_context(|| {
        format!(
            "{} is not a cosigned checkpoint; give the cosigned checkpoint the fleet collector wrote",
            path.display()
        )
    })?;
    let mut lines = Vec::new();
    for file in witnesses {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let key = flashgate_note::CosignerKey::parse_vkey(&text)
            .with_context(|| format!("{} is not a witness verifier key", file.display()))?;
        let at = key
            .verify(&note)
            .with_context(|| format!("the kept checkpoint {}", path.display()))?;
        lines.push(format!(
            "kept checkpoint cosigned by {} at {}: verified",
            key.name(),
            flashgate::display::time(at)
        ));
    }
    Ok(lines)
}
