//! `flashgate demo`: the whole story on fresh parts, with nothing set up
//! beforehand. A fresh token directory; OEM keys and the appliance's
//! enrollment; a job built from the example policy and an example firmware
//! image; import; then units programmed across several simulated channels
//! with realistic timing and a few injected faults; a summary and the paths
//! of everything left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::appliance::{Appliance, ApplianceConfig};
use crate::pipeline::{Provisioner, RunEvent, RunOptions, StopHandle};

/// The example policy, with its validity window moved around today.
const POLICY: &str = include_str!("../policies/sim-secure-mcu.toml");

/// Options of `flashgate demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where to put everything (emptied first).
    #[arg(long, default_value = "demo-out")]
    pub dir: PathBuf,
    /// Token to use: softhsm or kryoptic.
    #[arg(long, default_value = "softhsm")]
    pub token: String,
    /// PKCS#11 module (default: Debian's SoftHSM2, or the Kryoptic module built by scripts/tokens.sh).
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Units to program.
    #[arg(long, default_value_t = 200)]
    pub units: u64,
    /// Channels programming at once.
    #[arg(long, default_value_t = 8)]
    pub channels: u32,
    /// Simulated target options (see the `sim` target).
    #[arg(long, default_value = "seed=7,timing=realistic,fault-rate=0.03")]
    pub sim: String,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
#[error("demo: {0}")]
pub struct DemoError(String);

fn err(e: impl std::fmt::Display) -> DemoError {
    DemoError(e.to_string())
}

fn step(s: &str) {
    eprintln!("\n== {s}");
}

/// A fresh appliance on a fresh token, with OEM material beside it.
#[derive(Debug)]
pub struct Setup {
    /// The directory holding everything.
    pub dir: PathBuf,
    /// The enrolled appliance.
    pub appliance: Appliance,
    /// The OEM directory (key files).
    pub oem_dir: PathBuf,
    /// The appliance's enrollment record.
    pub enrollment: crate::enrollment::VerifiedEnrollment,
}

/// A job built and imported on a [`Setup`].
#[derive(Debug)]
pub struct ImportedDemoJob {
    /// Job id (hex).
    pub id: String,
    /// The package file.
    pub path: PathBuf,
    /// The imported job (manifest and policy).
    pub imported: crate::appliance::ImportedJob,
}

/// Creates `dir` (emptied first), a fresh `token` ("softhsm" or "kryoptic"),
/// OEM keys, and enrolls an appliance.
pub fn setup(dir: &Path, token: &str, module: Option<PathBuf>) -> Result<Setup, DemoError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(err)?;
    }
    fs::create_dir_all(dir).map_err(err)?;
    let dir = fs::canonicalize(dir).map_err(err)?;
    let now = crate::appliance::unix_now();

    step("CM: a fresh token");
    let module = init_token(token, module, &dir)?;

    step("OEM: job-signing key and device-root CA (key files: development only)");
    let oem_dir = dir.join("oem");
    crate::oem::init(&oem_dir, "Acme Corp", &crate::oem::KeyStore::Files, now).map_err(err)?;
    eprintln!("   {}", oem_dir.display());

    step("CM: enroll the appliance (keys generated inside the HSM)");
    let config_path = dir.join("appliance.toml");
    fs::write(
        &config_path,
        format!(
            "state_dir = \"state\"\n[token]\nmodule = \"{}\"\nlabel = \"appliance\"\npin_file = \"user-pin\"\n[trust]\noem_keys = [\"oem/signing-key.pub.pem\"]\n",
            module.display()
        ),
    )
    .map_err(err)?;
    let appliance =
        Appliance::open(ApplianceConfig::load(&config_path).map_err(err)?).map_err(err)?;
    let (record, enrollment) = appliance.enroll().map_err(err)?;
    fs::write(dir.join("enrollment.cbor"), &record).map_err(err)?;
    eprintln!(
        "   appliance {} on {} {}, profiles: {}",
        enrollment.record.appliance_id,
        enrollment.record.token.manufacturer,
        enrollment.record.token.model,
        enrollment
            .record
            .profiles
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("   fingerprint {}", enrollment.fingerprint());
    Ok(Setup {
        dir,
        appliance,
        oem_dir,
        enrollment,
    })
}

/// The example policy with its validity window moved around today.
pub fn example_policy() -> String {
    let now = crate::appliance::unix_now();
    with_validity(POLICY, now - 86_400, now + 180 * 86_400)
}

/// A policy text with its `[job]` validity window replaced (the first
/// `not_before` and `not_after` lines; a certificate's own `not_after`
/// stays).
pub fn with_validity(text: &str, from: u64, until: u64) -> String {
    let (mut seen_before, mut seen_after) = (false, false);
    text.lines()
        .map(|l| {
            if l.starts_with("not_before") && !seen_before {
                seen_before = true;
                format!("not_before = \"{}\"", crate::display::time(from))
            } else if l.starts_with("not_after") && !seen_after {
                seen_after = true;
                format!("not_after = \"{}\"", crate::display::time(until))
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The OEM builds a job from `policy_text` and one image at address 0; the
/// appliance imports it.
pub fn build_and_import(
    setup: &Setup,
    policy_text: &str,
    firmware: Vec<u8>,
) -> Result<ImportedDemoJob, DemoError> {
    step("OEM: build a job for this appliance");
    let dir = &setup.dir;
    fs::write(dir.join("policy.toml"), policy_text).map_err(err)?;
    let policy = flashgate_policy::Policy::from_toml_str(policy_text).map_err(err)?;
    fs::write(dir.join("firmware.bin"), &firmware).map_err(err)?;
    let oem = crate::oem::Oem::load(&setup.oem_dir).map_err(err)?;
    let job = crate::package::build::build(&crate::package::build::JobInput {
        policy_toml: policy_text,
        policy: &policy,
        images: &[flashgate_firmware::Segment {
            address: 0,
            data: firmware,
        }],
        enrollment: &setup.enrollment,
        oem: &oem,
        now: crate::appliance::unix_now(),
        profile: None,
    })
    .map_err(err)?;
    let path = dir.join("job.fgj");
    fs::write(&path, &job.bytes).map_err(err)?;
    let id = job.manifest.job_id_hex();
    fs::write(
        dir.join("job-ca.pem"),
        crate::oem::certs::der_to_pem(&job.manifest.job_ca_cert, "CERTIFICATE"),
    )
    .map_err(err)?;
    eprintln!(
        "   job {id} ({}), {} bytes",
        job.manifest.profile,
        job.bytes.len()
    );

    step("CM: import the job (verify, unwrap into the HSM, decrypt and check in the HSM)");
    let imported = setup.appliance.import(&path).map_err(err)?;
    eprintln!("   imported; quota {}", imported.policy.job().quota);
    Ok(ImportedDemoJob { id, path, imported })
}

/// Runs the demo; returns the exit code (0: the run completed).
pub fn run(args: &DemoArgs) -> Result<u8, DemoError> {
    let setup = setup(&args.dir, &args.token, args.module.clone())?;
    // An example firmware image: 64 KiB at the start of flash.
    let firmware: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect();
    let job = build_and_import(&setup, &example_policy(), firmware)?;
    let Setup {
        dir,
        appliance,
        oem_dir,
        ..
    } = setup;
    let (id, job_path) = (job.id.clone(), job.path.clone());
    let cert_dir = appliance.job_dir(&id).join("certs");

    step(&format!(
        "CM: program {} units on {} channels ({})",
        args.units, args.channels, args.sim
    ));
    let job_id = job.imported.manifest.job_id;
    let quota = job.imported.policy.job().quota;
    let (ledger, _) = crate::appliance::RunLedger::start(
        &appliance,
        job_id,
        &job.imported.policy,
        "demo operator",
        args.channels,
    )
    .map_err(err)?;
    let audit_dir = appliance.audit_dir();
    let enrollment_bytes = fs::read(appliance.enrollment_path()).map_err(err)?;
    let cert_der_dir = appliance.certificate_dir(&job_id);
    let ledger = Arc::new(ledger);
    let provisioner = Arc::new(Provisioner::open(appliance, &id, ledger).map_err(err)?);
    provisioner
        .check_driver("sim", flashgate_target::Capabilities::all())
        .map_err(err)?;
    let fixture = flashgate_target_sim::SimFixture::from_options(&args.sim).map_err(err)?;
    let fixtures = (0..args.channels)
        .map(|_| Box::new(fixture.clone()) as Box<dyn flashgate_target::Fixture>)
        .collect();
    let events_path = dir.join("run-events.jsonl");
    let events = std::sync::Mutex::new(fs::File::create(&events_path).map_err(err)?);
    let view =
        crate::run_view::ProgressView::new(args.channels, quota, 0, Some(cert_dir.clone()), true);
    let v = view.clone();
    let sink: Arc<dyn Fn(RunEvent) + Send + Sync> = Arc::new(move |e: RunEvent| {
        if let (Ok(line), Ok(mut f)) = (serde_json::to_string(&e), events.lock()) {
            use std::io::Write as _;
            let _ = writeln!(f, "{line}");
        }
        v.event(&e);
    });
    let rt = crate::pipeline::runtime(args.channels).map_err(err)?;
    let summary = rt.block_on(provisioner.clone().run(
        fixtures,
        RunOptions {
            units: Some(args.units),
            block: 16,
        },
        StopHandle::default(),
        sink,
    ));
    view.finish();
    println!("{}", crate::run_view::summary_table(&summary));
    drop(provisioner);

    step("CM: export the audit bundle for the OEM");
    let bundle_dir = dir.join("audit-bundle");
    let package = fs::read(&job_path).map_err(err)?;
    crate::bundle::export_bundle(
        &audit_dir,
        enrollment_bytes,
        &package,
        &cert_der_dir,
        &job_id,
        &bundle_dir,
    )
    .map_err(err)?;
    eprintln!("   {}", bundle_dir.display());

    step("OEM security team: verify the bundle offline (pinned OEM key and enrollment)");
    let oem_key =
        crate::oem::read_public_key_pem(&oem_dir.join("signing-key.pub.pem")).map_err(err)?;
    let pinned = crate::enrollment::VerifiedEnrollment::parse(
        &fs::read(dir.join("enrollment.cbor")).map_err(err)?,
    )
    .map_err(err)?
    .fingerprint();
    let report = crate::bundle::verify_bundle(&bundle_dir, &oem_key, Some(&pinned), None)
        .map_err(err)?
        .report;
    println!("{report}");
    println!("left behind:");
    println!("  OEM material       {}", oem_dir.display());
    println!(
        "  enrollment record  {}",
        dir.join("enrollment.cbor").display()
    );
    println!("  job package        {}", job_path.display());
    println!("  device certs       {}", cert_dir.display());
    println!("  run events (JSON)  {}", events_path.display());
    println!("  audit log          {}", audit_dir.display());
    println!("  audit bundle       {}", bundle_dir.display());
    println!("check any certificate chain with:");
    println!(
        "  openssl verify -CAfile {} -untrusted {} {}/<serial>.pem",
        oem_dir.join("root-cert.pem").display(),
        dir.join("job-ca.pem").display(),
        cert_dir.display()
    );
    println!(
        "verify again with: flashgate audit verify {} --oem {}",
        bundle_dir.display(),
        oem_dir.join("signing-key.pub.pem").display()
    );
    Ok(if report.is_clean() { 0 } else { 1 })
}

/// Creates a fresh token under `dir` and points this process at it.
fn init_token(token: &str, module: Option<PathBuf>, dir: &Path) -> Result<PathBuf, DemoError> {
    let mut pin = [0u8; 9];
    getrandom::fill(&mut pin).map_err(err)?;
    let pin = hex::encode(pin);
    write_secret(&dir.join("user-pin"), &pin)?;
    let mut so = [0u8; 9];
    getrandom::fill(&mut so).map_err(err)?;
    let so = hex::encode(so);
    let token_dir = dir.join("token");
    fs::create_dir_all(token_dir.join("objects")).map_err(err)?;
    let run = |cmd: &mut Command| -> Result<(), DemoError> {
        let out = cmd.output().map_err(|e| {
            DemoError(format!(
                "cannot run {cmd:?}: {e}; run scripts/setup.sh first"
            ))
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DemoError(format!(
                "token set-up failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    match token {
        "softhsm" => {
            let conf = token_dir.join("softhsm2.conf");
            fs::write(
                &conf,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                    token_dir.join("objects").display()
                ),
            )
            .map_err(err)?;
            // This process loads the module after this point; nothing else runs yet.
            std::env::set_var("SOFTHSM2_CONF", &conf);
            run(Command::new("softhsm2-util").args([
                "--init-token",
                "--free",
                "--label",
                "appliance",
                "--so-pin",
                &so,
                "--pin",
                &pin,
            ]))?;
            Ok(module.unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")))
        }
        "kryoptic" => {
            let module = module.unwrap_or_else(|| {
                PathBuf::from("tokens/kryoptic/target/release/libkryoptic_pkcs11.so")
            });
            let module = fs::canonicalize(&module).map_err(|_| {
                DemoError(format!(
                    "no Kryoptic module at {}; run scripts/tokens.sh modules",
                    module.display()
                ))
            })?;
            let conf = token_dir.join("kryoptic.conf");
            fs::write(
                &conf,
                format!(
                    "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
                    token_dir.join("token.sql").display()
                ),
            )
            .map_err(err)?;
            std::env::set_var("KRYOPTIC_CONF", &conf);
            let m = module.to_string_lossy().into_owned();
            run(Command::new("pkcs11-tool").args([
                "--module",
                &m,
                "--init-token",
                "--label",
                "appliance",
                "--so-pin",
                &so,
            ]))?;
            run(Command::new("pkcs11-tool").args([
                "--module",
                &m,
                "--login",
                "--login-type",
                "so",
                "--so-pin",
                &so,
                "--init-pin",
                "--pin",
                &pin,
            ]))?;
            Ok(module)
        }
        other => Err(DemoError(format!(
            "unknown token '{other}' (softhsm or kryoptic)"
        ))),
    }
}

fn write_secret(path: &Path, value: &str) -> Result<(), DemoError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    writeln!(f, "{value}").map_err(err)
}
