//! `flashgate oem init` and `flashgate job ...`: the OEM builds, the CM imports.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use flashgate::display;
use flashgate::hsm::Profile;
use flashgate::oem::job::{build_job, BuildRequest, EnrollmentTrust};
use flashgate::oem::{self, KeyStore, Pkcs11Uri};
use flashgate::package::UnverifiedPackage;
use flashgate::station::{Access, JobId};

#[derive(Subcommand)]
pub enum OemCmd {
    /// Create OEM keys and the device-root certificate in a new directory.
    Init {
        /// Directory to create (holds oem.toml).
        #[arg(long)]
        out: PathBuf,
        /// Organisation name for certificates.
        #[arg(long)]
        name: String,
        /// Keep the keys in this PKCS#11 token (RFC 7512 URI with module-path and pin-source) instead of key files.
        #[arg(long)]
        pkcs11_uri: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum JobCmd {
    /// OEM: build a job package for one appliance.
    Build {
        /// OEM directory (from `flashgate oem init`).
        #[arg(long)]
        oem: PathBuf,
        /// Job policy (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Firmware: Intel HEX, ELF, or raw binary as FILE@ADDRESS. Repeat for more images.
        #[arg(long, required = true)]
        firmware: Vec<String>,
        /// The appliance's enrollment record.
        #[arg(long)]
        appliance: PathBuf,
        /// Expected enrollment fingerprint (SHA-256, hex), as pinned out of band.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Force a key-transport profile instead of the strongest the appliance offers.
        #[arg(long)]
        profile: Option<String>,
        /// Output package.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Show what a package allows (never its secrets).
    Inspect { package: PathBuf },
    /// CM: verify a package and move its secrets into the HSM.
    Import { package: PathBuf },
    /// CM: list imported jobs.
    List,
    /// CM: remove a job and destroy its HSM keys.
    Remove { id: String },
}

/// Runs `oem CMD`.
pub fn oem(cmd: OemCmd, w: &mut String) -> Result<u8> {
    match cmd {
        OemCmd::Init {
            out,
            name,
            pkcs11_uri,
        } => {
            let store = match pkcs11_uri {
                Some(uri) => KeyStore::Token(Pkcs11Uri::parse(&uri)?),
                None => KeyStore::Files,
            };
            let cfg = oem::init(&out, &name, &store, super::now())?;
            let _ = writeln!(
                w,
                "OEM material for '{}' written to {}",
                cfg.name,
                out.display()
            );
            let _ = writeln!(w, "  signing key:     {}", cfg.signing_key);
            let _ = writeln!(w, "  device root key: {}", cfg.root_key);
            let _ = writeln!(
                w,
                "  root cert:       {}",
                out.join(&cfg.root_cert).display()
            );
            let _ = writeln!(
                w,
                "  give the CM:     {}",
                out.join("signing-key.pub.pem").display()
            );
        }
    }
    Ok(0)
}

/// Runs `job CMD`.
pub fn run(config: &Path, cmd: JobCmd, w: &mut String) -> Result<u8> {
    match cmd {
        JobCmd::Build {
            oem: oem_dir,
            policy,
            firmware,
            appliance,
            fingerprint,
            profile,
            out,
        } => {
            let policy_toml = std::fs::read_to_string(&policy)
                .with_context(|| format!("cannot read {}", policy.display()))?;
            let mut images = Vec::new();
            for spec in &firmware {
                let (path, base) = flashgate_firmware::parse_source_arg(spec)?;
                let segs = flashgate_firmware::load_path(&path, base)
                    .with_context(|| format!("{}", path.display()))?;
                images.extend(segs);
            }
            let record = std::fs::read(&appliance)
                .with_context(|| format!("cannot read {}", appliance.display()))?;
            let profile = match profile {
                Some(p) => Some(Profile::from_name(&p).with_context(|| {
                    format!(
                        "unknown profile '{p}' (one of {})",
                        Profile::ALL.map(|p| p.name()).join(", ")
                    )
                })?),
                None => None,
            };
            let job = build_job(&BuildRequest {
                oem_dir: &oem_dir,
                policy_toml: &policy_toml,
                images: &images,
                enrollment_record: &record,
                pinned_fingerprint: fingerprint.as_deref(),
                profile,
                out: &out,
                now: super::now(),
            })
            .with_context(|| format!("{}", policy.display()))?;
            if job.enrollment.trust() == EnrollmentTrust::FirstUse {
                eprintln!(
                    "warning: no --fingerprint given: the enrollment record {} (fingerprint {}) is trusted on first use; compare the fingerprint with the one the CM reads from `flashgate appliance show`, over a channel you trust",
                    appliance.display(),
                    job.enrollment.fingerprint()
                );
            }
            let _ = writeln!(
                w,
                "built job {} for appliance {} ({}, {} image(s), {}) -> {}\ndevice master kept for re-derivation in {}",
                job.manifest.job_id_hex(),
                job.manifest.appliance_id,
                job.manifest.profile,
                job.manifest.images.len(),
                display::size(job.size as u64),
                out.display(),
                job.escrow.display()
            );
        }
        JobCmd::Inspect { package } => {
            let bytes = std::fs::read(&package)
                .with_context(|| format!("cannot read {}", package.display()))?;
            let parsed = UnverifiedPackage::parse(&bytes)?;
            let (m, kid) = parsed.manifest_unverified()?;
            let _ = writeln!(
                w,
                "job {}  (signature NOT checked here; `job import` checks it)",
                m.job_id_hex()
            );
            let _ = writeln!(w, "  signed by OEM key id  {}", hex::encode(kid));
            let _ = writeln!(
                w,
                "  for appliance         {} (enrollment {})",
                m.appliance_id,
                hex::encode(m.enrollment_digest)
            );
            let _ = writeln!(w, "  key transport         {}", m.profile);
            let _ = writeln!(w, "  built                 {}", display::time(m.created));
            for (i, im) in m.images.iter().enumerate() {
                let _ = writeln!(
                    w,
                    "  image {}               0x{:08x}  {} ({} bytes)  sha256 {}",
                    i + 1,
                    im.address,
                    display::size(im.size),
                    im.size,
                    hex::encode(im.digest)
                );
            }
            match flashgate_policy::Policy::from_toml_str(&m.policy_toml) {
                Ok(p) => {
                    let j = p.job();
                    let _ = writeln!(
                        w,
                        "  product               {} (security version {})",
                        j.product.as_str(),
                        j.security_version
                    );
                    let _ = writeln!(
                        w,
                        "  valid                 {} .. {}",
                        display::time(j.not_before),
                        display::time(j.not_after)
                    );
                    let _ = writeln!(w, "  quota                 {} units", j.quota);
                }
                Err(e) => {
                    let _ = writeln!(w, "  policy                INVALID: {e}");
                }
            }
            let _ = writeln!(w, "  policy text:");
            for line in m.policy_toml.lines() {
                let _ = writeln!(w, "    | {line}");
            }
        }
        JobCmd::Import { package } => {
            let station = super::open(
                config,
                Access::Write {
                    purpose: "a job is being imported".to_owned(),
                },
            )?;
            let job = station.import(&package)?;
            let j = job.policy().job();
            let _ = writeln!(
                w,
                "imported job {}: product {} (security version {}), quota {}, valid until {}",
                job.manifest().job_id_hex(),
                j.product.as_str(),
                j.security_version,
                j.quota,
                display::time(j.not_after)
            );
        }
        JobCmd::List => {
            let station = super::open(config, Access::Read)?;
            let jobs = station.jobs()?;
            if jobs.is_empty() {
                let _ = writeln!(w, "no jobs imported");
            }
            for job in jobs {
                let j = job.policy().job();
                let _ = writeln!(
                    w,
                    "{}  {}  svn {}  quota {}  until {}  {} image(s)",
                    job.manifest().job_id_hex(),
                    j.product.as_str(),
                    j.security_version,
                    j.quota,
                    display::time(j.not_after),
                    job.manifest().images.len()
                );
            }
        }
        JobCmd::Remove { id } => {
            let job: JobId = id.parse()?;
            let station = super::open(
                config,
                Access::Write {
                    purpose: format!("job {id} is being removed"),
                },
            )?;
            station.remove(&job)?;
            let _ = writeln!(w, "removed job {id} and destroyed its HSM keys");
        }
    }
    Ok(0)
}
