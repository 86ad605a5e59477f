//! `flashgate demo`: the whole story on fresh parts, with nothing set up
//! beforehand. A fresh token directory; OEM keys and the appliance's
//! enrollment; a job built from the example policy and an example firmware
//! image; import; then units programmed across several simulated channels
//! with realistic timing and a few injected faults; a summary and the paths
//! of everything left behind.

use std::fs;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use flashgate::lab::{self, step, Setup};
use flashgate::station::{FixtureSet, StartOptions};

use super::run_view::{summary_table, ProgressView};

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
    /// Use the OEM material (`oem init` directory) of an earlier demo instead of new:
    /// a second appliance of the same OEM.
    #[arg(long)]
    pub oem_from: Option<PathBuf>,
    /// The job's first serial number (its range holds 1,000): a second job of the
    /// same product must not issue the serials of the first.
    #[arg(long, default_value_t = 1)]
    pub serial_start: u64,
    /// Simulated target options (see the `sim` target).
    #[arg(long, default_value = "seed=7,timing=realistic,fault-rate=0.03")]
    pub sim: String,
}

/// Runs the demo; returns the exit code (0: the run completed and its bundle verified clean).
pub fn run(args: &DemoArgs) -> Result<u8> {
    let setup = lab::setup_for(
        &args.dir,
        &args.token,
        args.module.clone(),
        args.oem_from.as_deref(),
    )?;
    // An example firmware image: 64 KiB at the start of flash.
    let firmware: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect();
    let range = "start = 1\nend = 1000 ";
    let policy = lab::example_policy();
    if !policy.contains(range) {
        anyhow::bail!("the example policy's [serial] range is not the one the demo expects");
    }
    let policy = policy.replacen(
        range,
        &format!(
            "start = {}\nend = {} ",
            args.serial_start,
            args.serial_start.saturating_add(999)
        ),
        1,
    );
    let job = lab::build_and_import(&setup, &policy, firmware)?;
    let Setup {
        dir,
        station,
        oem_dir,
        ..
    } = setup;
    let job_id = flashgate::station::JobId::from_bytes(job.imported.manifest().job_id);
    let cert_dir = station.appliance().job_dir(&job.id).join("certs");

    step(&format!(
        "CM: program {} units on {} channels ({})",
        args.units, args.channels, args.sim
    ));
    let fixtures = FixtureSet::parse(&format!("sim:{}", args.sim), args.channels)?;
    let handle = station.start_run(
        &job_id,
        fixtures,
        StartOptions::new("demo operator").units(Some(args.units)),
    )?;
    let events_path = dir.join("run-events.jsonl");
    let mut events_file = std::io::BufWriter::new(fs::File::create(&events_path)?);
    let view = ProgressView::new(
        args.channels,
        handle.snapshot().quota,
        handle.used_before(),
        Some(cert_dir.clone()),
        true,
    );
    for e in handle.events() {
        if let Ok(line) = serde_json::to_string(&e.event) {
            let _ = writeln!(events_file, "{line}");
        }
        view.event(&e.event);
    }
    events_file.flush()?;
    let summary = handle.wait();
    view.finish();
    println!("{}", summary_table(&summary));

    step("CM: export the audit bundle for the OEM");
    let bundle_dir = dir.join("audit-bundle");
    station.export_bundle(&job_id, &bundle_dir)?;
    eprintln!("   {}", bundle_dir.display());

    step("OEM security team: verify the bundle offline (pinned OEM key and enrollment)");
    let oem_key = flashgate::oem::read_public_key_pem(&oem_dir.join("signing-key.pub.pem"))?;
    let pinned =
        flashgate::enrollment::VerifiedEnrollment::parse(&fs::read(dir.join("enrollment.cbor"))?)?
            .fingerprint();
    let report =
        flashgate::bundle::verify_bundle(&bundle_dir, &oem_key, Some(&pinned), None)?.report;
    println!("{report}");
    let audit_dir = station.appliance().audit_dir();
    println!("left behind:");
    println!("  OEM material       {}", oem_dir.display());
    println!(
        "  enrollment record  {}",
        dir.join("enrollment.cbor").display()
    );
    println!("  job package        {}", job.path.display());
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
