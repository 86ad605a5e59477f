//! The `flashgate` command line: a thin front end over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use flashgate::appliance::{Appliance, ApplianceConfig};
use flashgate::display;
use flashgate::enrollment::VerifiedEnrollment;
use flashgate::hsm::Profile;
use flashgate::oem::{self, KeyStore, Oem, Pkcs11Uri};
use flashgate::package::build::{build, JobInput};
use flashgate::package::UnverifiedPackage;

#[derive(Parser)]
#[command(
    name = "flashgate",
    version,
    about = "Secure provisioning appliance: protected jobs, HSM-held keys, verifiable audit"
)]
struct Cli {
    /// Appliance configuration file.
    #[arg(
        long,
        global = true,
        env = "FLASHGATE_CONFIG",
        default_value = "appliance.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// CM: enroll this appliance and show its identity.
    #[command(subcommand)]
    Appliance(ApplianceCmd),
    /// OEM: create the job-signing key and device-root CA.
    #[command(subcommand)]
    Oem(OemCmd),
    /// Build, inspect, import, list and remove jobs.
    #[command(subcommand)]
    Job(JobCmd),
    /// CM: program units on N channels at once.
    Run(RunArgs),
    /// Export, verify and prove the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Serve a simulated chip on a pseudo-terminal (prints the pty path first).
    #[command(subcommand)]
    Sim(SimCmd),
    /// The whole story on fresh simulated parts: OEM keys, enrollment, job, import, a run.
    Demo(flashgate::demo::DemoArgs),
}

#[derive(Subcommand)]
enum SimCmd {
    /// An ArduinoISP (STK500v1) programmer wired to an AVR; the agent UART on a second pty.
    AvrIsp {
        /// Part: m328p or m2560.
        #[arg(long, default_value = "m328p")]
        part: String,
        /// Load the chip from this file if it exists, and save it there on exit.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Simulator options, e.g. `timing=realistic,seed=3` (see target-drivers/avr-isp/README.md).
        #[arg(long, default_value = "")]
        options: String,
    },
    /// The STM32 system bootloader (AN3155); the agent answers on the same pty after Go.
    Stm32Uart {
        /// Part: f103 or f4.
        #[arg(long, default_value = "f103")]
        part: String,
        /// Load the chip from this file if it exists, and save it there on exit.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Simulator options (see target-drivers/stm32-uart/README.md).
        #[arg(long, default_value = "")]
        options: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
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

#[derive(clap::Args)]
struct RunArgs {
    /// Job id (see `flashgate job list`).
    #[arg(long)]
    job: String,
    /// Channels programming at once.
    #[arg(long, default_value_t = 1)]
    channels: u32,
    /// Target: `sim[:key=value,...]` (see docs/EVENTS.md for the sim options).
    #[arg(long, default_value = "sim")]
    target: String,
    /// Boards to take in all (default: until the fixtures or the quota run out).
    #[arg(long)]
    units: Option<u64>,
    /// Emit one JSON event per line on stdout instead of progress lines.
    #[arg(long)]
    json: bool,
    /// Counter values a channel reserves at a time.
    #[arg(long, default_value_t = 16)]
    block: u64,
    /// Who runs the line (recorded in the audit log).
    #[arg(long, env = "FLASHGATE_OPERATOR", default_value = "operator")]
    operator: String,
}

#[derive(Subcommand)]
enum ApplianceCmd {
    /// Create the appliance keys in the token and write the enrollment record.
    Init {
        /// Also write the enrollment record here (to send to the OEM).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Show the appliance identity, profiles and token objects.
    Show,
}

#[derive(Subcommand)]
enum OemCmd {
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
enum JobCmd {
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

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens the appliance for a read-only command. It never waits for the
/// writer lock: when no other process holds it, what a crash left is
/// recovered first (and the lock released); when one does, nothing crashed
/// and the state is read as it is.
fn open_appliance(config: &Path) -> Result<Appliance> {
    let cfg = ApplianceConfig::load(config)?;
    let appliance = Appliance::open(cfg)?;
    if let Some(lock) = appliance.try_lock_writer(flashgate::appliance::RECOVERING)? {
        for line in appliance.recover_all(false)? {
            eprintln!("recovered: {line}");
        }
        drop(lock);
    }
    Ok(appliance)
}

/// Opens the appliance for a command that changes its state: takes the
/// writer lock (refused at once, naming the holder, when another process
/// has it; `what` completes "... by another flashgate process"), then
/// recovers what a crash left. The lock is held until the guard drops.
fn open_writer(config: &Path, what: &str) -> Result<(Appliance, flashgate::appliance::WriterLock)> {
    let cfg = ApplianceConfig::load(config)?;
    let appliance = Appliance::open(cfg)?;
    let lock = appliance.lock_writer(what)?;
    for line in appliance.recover_all(true)? {
        eprintln!("recovered: {line}");
    }
    Ok((appliance, lock))
}

fn run(cli: Cli, w: &mut String) -> Result<u8> {
    use std::fmt::Write as _;
    match cli.command {
        Command::Run(args) => return run_units(&cli.config, &args, w),
        Command::Audit(cmd) => return audit(&cli.config, cmd, w),
        Command::Sim(SimCmd::AvrIsp {
            part,
            state,
            options,
        }) => {
            let sim = format!("avr:{options}")
                .parse()
                .map_err(|e| anyhow::anyhow!("--options: {e}"))?;
            flashgate_avr_isp::serve_cli(
                &part,
                state,
                flashgate_avr_isp::ServeOptions {
                    sim,
                    ..Default::default()
                },
            )?;
            return Ok(0);
        }
        Command::Sim(SimCmd::Stm32Uart {
            part,
            state,
            options,
        }) => {
            flashgate_stm32_uart::serve_cli(&part, state, &options)?;
            return Ok(0);
        }
        Command::Demo(args) => return Ok(flashgate::demo::run(&args)?),
        Command::Appliance(ApplianceCmd::Init { out }) => {
            let appliance = Appliance::open(ApplianceConfig::load(&cli.config)?)?;
            let _lock = appliance.lock_writer("the appliance is being enrolled")?;
            let (bytes, e) = appliance.enroll()?;
            if let Some(out) = out {
                std::fs::write(&out, &bytes)
                    .with_context(|| format!("cannot write {}", out.display()))?;
            }
            print_enrollment(w, &e);
            let _ = writeln!(w, "record:       {}", appliance.enrollment_path().display());
        }
        Command::Appliance(ApplianceCmd::Show) => {
            let appliance = open_appliance(&cli.config)?;
            let e = appliance.enrollment()?;
            print_enrollment(w, &e);
            let _ = writeln!(w, "token objects:");
            for (h, label) in appliance.token.labelled_objects()? {
                let class = appliance.token.object_class(h)?;
                let a = appliance.token.key_attributes(h)?;
                print_object(w, &label, class, &a);
            }
        }
        Command::Oem(OemCmd::Init {
            out,
            name,
            pkcs11_uri,
        }) => {
            let store = match pkcs11_uri {
                Some(uri) => KeyStore::Token(Pkcs11Uri::parse(&uri)?),
                None => KeyStore::Files,
            };
            let cfg = oem::init(&out, &name, &store, now())?;
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
        Command::Job(JobCmd::Build {
            oem: oem_dir,
            policy,
            firmware,
            appliance,
            fingerprint,
            profile,
            out,
        }) => {
            let policy_toml = std::fs::read_to_string(&policy)
                .with_context(|| format!("cannot read {}", policy.display()))?;
            let parsed = flashgate_policy::Policy::from_toml_str(&policy_toml)
                .with_context(|| format!("{}", policy.display()))?;
            let mut images = Vec::new();
            for spec in &firmware {
                let (path, base) = flashgate_firmware::parse_source_arg(spec)?;
                let segs = flashgate_firmware::load_path(&path, base)
                    .with_context(|| format!("{}", path.display()))?;
                images.extend(segs);
            }
            let record = std::fs::read(&appliance)
                .with_context(|| format!("cannot read {}", appliance.display()))?;
            let enrollment = VerifiedEnrollment::parse(&record)
                .with_context(|| format!("{}", appliance.display()))?;
            if let Some(fp) = fingerprint {
                if !fp.eq_ignore_ascii_case(&enrollment.fingerprint()) {
                    bail!(
                        "the enrollment record {} has fingerprint {}, not the pinned {fp}; get the record from the CM again",
                        appliance.display(),
                        enrollment.fingerprint()
                    );
                }
            } else {
                eprintln!(
                    "warning: no --fingerprint given: the enrollment record {} (fingerprint {}) is trusted on first use; compare the fingerprint with the one the CM reads from `flashgate appliance show`, over a channel you trust",
                    appliance.display(),
                    enrollment.fingerprint()
                );
            }
            let profile = match profile {
                Some(p) => Some(Profile::from_name(&p).with_context(|| {
                    format!(
                        "unknown profile '{p}' (one of {})",
                        flashgate::hsm::Profile::ALL.map(|p| p.name()).join(", ")
                    )
                })?),
                None => None,
            };
            let oem = Oem::load(&oem_dir)?;
            let job = build(&JobInput {
                policy_toml: &policy_toml,
                policy: &parsed,
                images: &images,
                enrollment: &enrollment,
                oem: &oem,
                now: now(),
                profile,
            })?;
            // The OEM keeps the device master (mode 0600) to re-derive device
            // keys; written first, so no package exists whose master was lost.
            let escrow_dir = oem_dir.join("jobs");
            std::fs::create_dir_all(&escrow_dir)
                .with_context(|| format!("cannot create {}", escrow_dir.display()))?;
            let escrow = escrow_dir.join(format!("{}.device-master", job.manifest.job_id_hex()));
            oem::write_file(
                &escrow,
                hex::encode(&job.device_master[..]).as_bytes(),
                0o600,
            )?;
            oem::write_file(&out, &job.bytes, 0o644)?;
            let _ = writeln!(
                w,
                "built job {} for appliance {} ({}, {} image(s), {}) -> {}\ndevice master kept for re-derivation in {}",
                job.manifest.job_id_hex(),
                job.manifest.appliance_id,
                job.manifest.profile,
                job.manifest.images.len(),
                display::size(job.bytes.len() as u64),
                out.display(),
                escrow.display()
            );
        }
        Command::Job(JobCmd::Inspect { package }) => {
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
        Command::Job(JobCmd::Import { package }) => {
            let (appliance, _lock) = open_writer(&cli.config, "a job is being imported")?;
            let job = appliance.import(&package)?;
            let j = job.policy.job();
            let _ = writeln!(
                w,
                "imported job {}: product {} (security version {}), quota {}, valid until {}",
                job.manifest.job_id_hex(),
                j.product.as_str(),
                j.security_version,
                j.quota,
                display::time(j.not_after)
            );
        }
        Command::Job(JobCmd::List) => {
            let appliance = open_appliance(&cli.config)?;
            let jobs = appliance.jobs()?;
            if jobs.is_empty() {
                let _ = writeln!(w, "no jobs imported");
            }
            for job in jobs {
                let j = job.policy.job();
                let _ = writeln!(
                    w,
                    "{}  {}  svn {}  quota {}  until {}  {} image(s)",
                    job.manifest.job_id_hex(),
                    j.product.as_str(),
                    j.security_version,
                    j.quota,
                    display::time(j.not_after),
                    job.manifest.images.len()
                );
            }
        }
        Command::Job(JobCmd::Remove { id }) => {
            let (appliance, _lock) =
                open_writer(&cli.config, &format!("job {id} is being removed"))?;
            appliance.remove_job(&id)?;
            let _ = writeln!(w, "removed job {id} and destroyed its HSM keys");
        }
    }
    Ok(0)
}

/// `flashgate run`: exit 0 when every unit passed, 1 when some failed.
fn run_units(config: &Path, args: &RunArgs, w: &mut String) -> Result<u8> {
    use flashgate::pipeline::{Provisioner, RunEvent, RunOptions, StopHandle};
    use std::fmt::Write as _;
    use std::sync::Arc;
    // Held until the run ends: no other process changes the state under it.
    let (appliance, _lock) = open_writer(config, &format!("job {} is being run", args.job))?;
    let job_dir = appliance.job_dir(&args.job);
    let job = flashgate::appliance::ImportedJob::load(&job_dir, &appliance.config.trust.keys)
        .map_err(|_| flashgate::appliance::ApplianceError::NoSuchJob {
            id: args.job.clone(),
        })?;
    let quota = job.policy.job().quota;
    if args.channels == 0 {
        bail!("--channels must be at least 1");
    }
    let (driver, spec) = flashgate_target::parse_target(flashgate::drivers::DRIVERS, &args.target)?;
    if let Some(max) = spec.max_channels() {
        if args.channels > max {
            return Err(flashgate_target::SpecError::Channels { driver, max }.into());
        }
    }
    flashgate::pipeline::check_driver(&job.policy, driver, spec.capabilities())?;
    let fixtures = spec.fixtures(
        &flashgate_target::RunWiring::new(args.channels)
            .with_boards(args.units)
            .with_lock_byte(job.policy.lock().avr_lock_byte),
    );
    // Everything is checked: only now is the run recorded as started.
    flashgate::pipeline::check_validity(&job.policy, &args.job)?;
    flashgate::pipeline::check_quota(
        &job.policy,
        &args.job,
        appliance.quota_used(&job.manifest.job_id)?,
    )?;
    let (ledger, recovery) = flashgate::appliance::RunLedger::start(
        &appliance,
        job.manifest.job_id,
        &job.policy,
        &args.operator,
        args.channels,
    )?;
    if !recovery.was_clean() {
        eprintln!("recovered: {recovery}");
    }
    let used_before = recovery.counter;
    let provisioner = Arc::new(Provisioner::open(appliance, &args.job, Arc::new(ledger))?);

    let stop = StopHandle::default();
    let cert_dir = job_dir.join("certs");
    let view = flashgate::run_view::ProgressView::new(
        args.channels,
        quota,
        used_before,
        Some(cert_dir.clone()),
        !args.json,
    );
    let json = args.json;
    let v = view.clone();
    let sink: Arc<dyn Fn(RunEvent) + Send + Sync> = Arc::new(move |e: RunEvent| {
        if json {
            if let Ok(line) = serde_json::to_string(&e) {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
        }
        v.event(&e);
    });
    let rt = flashgate::pipeline::runtime(args.channels).context("cannot start the runtime")?;
    let summary = rt.block_on(async {
        let s2 = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: finishing the units in flight (Ctrl-C again to force)");
                s2.stop();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        provisioner
            .clone()
            .run(
                fixtures,
                RunOptions {
                    units: args.units,
                    block: args.block,
                },
                stop,
                sink,
            )
            .await
    });
    view.finish();
    if args.json {
        if let Ok(line) =
            serde_json::to_string(&serde_json::json!({"event": "run-finished", "summary": summary}))
        {
            let _ = writeln!(w, "{line}");
        }
    } else {
        w.push_str(&flashgate::run_view::summary_table(&summary));
        let _ = writeln!(w, "  certificates: {}", cert_dir.display());
    }
    if summary.passed + summary.failed() == 0 && summary.fixtures_failed > 0 {
        // Not one board could be reached: the run did nothing.
        eprintln!(
            "error: no board could be reached: {}",
            summary
                .fixture_error
                .as_deref()
                .unwrap_or("the fixture failed")
        );
        return Ok(2);
    }
    Ok(u8::from(summary.failed() > 0))
}

fn print_enrollment(w: &mut String, e: &VerifiedEnrollment) {
    use std::fmt::Write as _;
    let r = &e.record;
    let _ = writeln!(w, "appliance:    {}", r.appliance_id);
    let _ = writeln!(
        w,
        "token:        {} {} serial {} label '{}'",
        r.token.manufacturer, r.token.model, r.token.serial, r.token.label
    );
    let _ = writeln!(
        w,
        "profiles:     {}",
        r.profiles
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(w, "enrolled:     {}", display::time(r.created));
    let _ = writeln!(w, "fingerprint:  {}", e.fingerprint());
    let _ = writeln!(
        w,
        "pin-holder extraction (measured on this token at enrollment):"
    );
    for p in &r.profiles {
        let verdict = r.extraction(*p).map_or("not measured", |x| x.name());
        let _ = writeln!(w, "  {p}: {verdict}");
    }
    for (path, outcome) in &r.extraction_paths {
        if outcome.starts_with("possible") {
            let _ = writeln!(w, "    {path}: {outcome}");
        }
    }
    let refused = |p: &flashgate::hsm::Profile| {
        r.extraction(*p) == Some(flashgate::hsm::probe::Extraction::Refused)
    };
    match r.profiles.first() {
        Some(first) if refused(first) => {
            if !r.profiles.iter().all(refused) {
                let _ = writeln!(
                    w,
                    "note:         job build chooses {first}, under which the PIN holder cannot extract job secrets; \
                     a job forced to a profile marked possible can be opened by whoever holds this HSM's user PIN"
                );
            }
        }
        _ => {
            let _ = writeln!(
                w,
                "note:         whoever holds this HSM's user PIN can extract job secrets under a profile marked possible; \
                 use this appliance for development only (an OEM policy with `[job] require_pin_holder_safe = true` refuses to build for it)"
            );
        }
    }
}

/// One token object for `appliance show`: only the attributes its class has.
fn print_object(
    w: &mut String,
    label: &str,
    class: cryptoki::object::ObjectClass,
    a: &flashgate::hsm::KeyAttributes,
) {
    use cryptoki::object::ObjectClass;
    use std::fmt::Write as _;
    let flags: Vec<(bool, &str)> = if class == ObjectClass::PRIVATE_KEY {
        vec![
            (a.sign, "sign"),
            (a.sign_recover, "sign-recover"),
            (a.decrypt, "decrypt"),
            (a.unwrap, "unwrap"),
            (a.derive, "derive"),
        ]
    } else if class == ObjectClass::PUBLIC_KEY {
        vec![
            (a.verify, "verify"),
            (a.verify_recover, "verify-recover"),
            (a.encrypt, "encrypt"),
            (a.wrap, "wrap"),
            (a.derive, "derive"),
        ]
    } else if class == ObjectClass::SECRET_KEY {
        vec![
            (a.encrypt, "encrypt"),
            (a.decrypt, "decrypt"),
            (a.sign, "sign"),
            (a.verify, "verify"),
            (a.wrap, "wrap"),
            (a.unwrap, "unwrap"),
            (a.derive, "derive"),
        ]
    } else {
        Vec::new()
    };
    let on: Vec<&str> = flags
        .iter()
        .filter_map(|(on, n)| on.then_some(*n))
        .collect();
    let usage = if on.is_empty() {
        "-".to_owned()
    } else {
        on.join(",")
    };
    let storage = format!("modifiable={} copyable={}", a.modifiable, a.copyable);
    if flags.is_empty() {
        let _ = writeln!(w, "  {label}  class={class} {storage}");
        return;
    }
    if class == ObjectClass::PUBLIC_KEY {
        let _ = writeln!(w, "  {label}  class={class} usage={usage}");
    } else {
        let _ = writeln!(
            w,
            "  {label}  class={class} sensitive={} extractable={} usage={usage}",
            a.sensitive, a.extractable
        );
    }
    let all: Vec<String> = flags.iter().map(|(v, n)| format!("{n}={v}")).collect();
    let mechanisms = a.allowed_mechanisms.as_ref().map_or_else(
        || "any".to_owned(),
        |m| {
            m.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
    );
    let _ = writeln!(
        w,
        "      {} {storage} mechanisms={mechanisms}",
        all.join(" ")
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = String::new();
    let result = run(cli, &mut out);
    // Output goes out in one write; a closed pipe (`| head`) is not an error.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the outermost context, then the causes.
            // Causes already quoted by their parent's message are not repeated.
            let mut parts: Vec<String> = Vec::new();
            for cause in e.chain() {
                let text = cause.to_string();
                if !parts.last().is_some_and(|p| p.contains(&text)) {
                    parts.push(text);
                }
            }
            let msg = parts.join(": ");
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn job_id_arg(id: &str) -> Result<[u8; 16]> {
    flashgate::package::Manifest::job_id_from_hex(id).with_context(|| {
        format!("'{id}' is not a job id (32 hex digits; see `flashgate job list`)")
    })
}

/// `flashgate audit ...`.
fn audit(config: &Path, cmd: AuditCmd, w: &mut String) -> Result<u8> {
    use std::fmt::Write as _;
    match cmd {
        AuditCmd::Export { job, out } => {
            let appliance = open_appliance(config)?;
            let n = appliance.export_audit_bundle(&job_id_arg(&job)?, &out)?;
            let _ = writeln!(
                w,
                "audit bundle for job {job} written to {} ({n} certificates)",
                out.display()
            );
            let sealed = appliance.copy_sealed_segments(&out)?;
            if sealed > 0 {
                let _ = writeln!(
                    w,
                    "the log was reset: {sealed} sealed segment(s) copied into {}",
                    out.join("sealed").display()
                );
            }
            Ok(0)
        }
        AuditCmd::Reset { reason, yes } => {
            let appliance = Appliance::open(ApplianceConfig::load(config)?)?;
            let _lock = appliance.lock_writer("the audit log is being reset")?;
            for line in appliance.recover()? {
                eprintln!("recovered: {line}");
            }
            if !yes && !confirm_reset()? {
                bail!("the audit log was not reset (not confirmed)");
            }
            let report = appliance.reset_log(&reason)?;
            let _ = writeln!(w, "{report}");
            Ok(0)
        }
        AuditCmd::Verify {
            bundle,
            oem: oem_key,
            fingerprint,
            previous_checkpoint,
            json,
        } => {
            let verified = (|| -> Result<_> {
                let key = oem::read_public_key_pem(&oem_key)?;
                // A kept checkpoint, or a whole checkpoints.log (its last entry counts).
                let previous_checkpoint = match previous_checkpoint {
                    Some(p) => Some(
                        std::fs::read(&p)
                            .with_context(|| format!("cannot read {}", p.display()))?,
                    ),
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
                        // The same sentence main prints: causes not already quoted.
                        let mut parts: Vec<String> = Vec::new();
                        for cause in e.chain() {
                            let text = cause.to_string();
                            if !parts.last().is_some_and(|p| p.contains(&text)) {
                                parts.push(text);
                            }
                        }
                        let out = flashgate_audit::VerifyOutput::failed(parts.join(": "));
                        let _ = writeln!(w, "{}", out.to_json());
                    }
                    return Err(e);
                }
            };
            let code = if v.report.is_clean() { 0 } else { 1 };
            if json {
                let out = flashgate_audit::VerifyOutput::verified(
                    v.enrollment.record.appliance_id.clone(),
                    v.enrollment.fingerprint(),
                    v.report,
                );
                let _ = writeln!(w, "{}", out.to_json());
            } else {
                let _ = writeln!(
                    w,
                    "appliance {} (fingerprint {})",
                    v.enrollment.record.appliance_id,
                    v.enrollment.fingerprint()
                );
                let _ = write!(w, "{}", v.report);
            }
            Ok(code)
        }
        AuditCmd::Prove { uid, job } => {
            let appliance = open_appliance(config)?;
            let uid = hex::decode(&uid).with_context(|| format!("'{uid}' is not hex"))?;
            let job = match job {
                Some(j) => Some(job_id_arg(&j)?),
                None => None,
            };
            let proof = flashgate_audit::prove_uid(&appliance.audit_dir(), &uid, job.as_ref())?;
            let _ = writeln!(w, "{}", serde_json::to_string_pretty(&proof)?);
            Ok(0)
        }
        AuditCmd::CheckProof { proof, appliance } => {
            let text = std::fs::read_to_string(&proof)
                .with_context(|| format!("cannot read {}", proof.display()))?;
            let proof: flashgate_audit::InclusionProof =
                serde_json::from_str(&text).context("not an inclusion proof")?;
            let e = VerifiedEnrollment::parse(&std::fs::read(&appliance)?)?;
            let proven = flashgate_audit::verify_proof(&proof, &e.record.log_public)?;
            let _ = writeln!(
                w,
                "proof OK: record {} is in the log of appliance {} at checkpoint size {}",
                proven.record.seq, e.record.appliance_id, proven.checkpoint.size
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
