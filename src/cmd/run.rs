//! `flashgate run`: program units on the fixtures of a target spec.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use flashgate::station::{Access, FixtureSet, JobId, RunHandle, StartOptions};

use super::run_view::{summary_table, ProgressView};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Job id (see `flashgate job list`).
    #[arg(long)]
    pub job: String,
    /// Channels programming at once, on the one `--target` (default 1).
    #[arg(long)]
    pub channels: Option<u32>,
    /// Target: `sim[:key=value,...]` (see docs/EVENTS.md for the sim options).
    /// Repeat it for a gang of programmers of one driver, one channel each.
    #[arg(long, default_values_t = ["sim".to_owned()])]
    pub target: Vec<String>,
    /// Boards to take in all (default: until the fixtures or the quota run out).
    #[arg(long)]
    pub units: Option<u64>,
    /// Emit one JSON event per line on stdout instead of progress lines.
    #[arg(long)]
    pub json: bool,
    /// Counter values a channel reserves at a time.
    #[arg(long, default_value_t = 16)]
    pub block: u64,
    /// Who runs the line (recorded in the audit log).
    #[arg(long, env = "FLASHGATE_OPERATOR", default_value = "operator")]
    pub operator: String,
}

/// Runs `run`: exit 0 when every unit passed, 1 when some failed, 2 when
/// not one board could be reached.
pub fn run(config: &Path, args: &RunArgs, w: &mut String) -> Result<u8> {
    let job: JobId = args.job.parse()?;
    let fixtures = match (args.target.as_slice(), args.channels) {
        ([one], channels) => FixtureSet::parse(one, channels.unwrap_or(1))?,
        (_, Some(_)) => {
            anyhow::bail!("with several --target, each is one channel; leave out --channels")
        }
        (gang, None) => FixtureSet::gang(gang)?,
    };
    let channels = fixtures.channels();
    // Held until the run ends: no other process changes the state under it.
    let station = super::open(
        config,
        Access::Write {
            purpose: format!("job {job} is being run"),
        },
    )?;
    let handle = station.start_run(
        &job,
        fixtures,
        StartOptions::new(args.operator.clone())
            .units(args.units)
            .block(args.block),
    )?;
    if let Some(r) = handle.recovered() {
        eprintln!("recovered: {r}");
    }
    stop_on_ctrl_c(&handle);
    // PEM copies for people, beside the job (the DER originals are the audit's).
    let cert_dir = station.appliance().job_dir(&job.to_string()).join("certs");
    let snapshot = handle.snapshot();
    let view = ProgressView::new(
        channels,
        snapshot.quota,
        handle.used_before(),
        Some(cert_dir.clone()),
        !args.json,
    );
    let mut events = handle.events();
    for e in events.by_ref() {
        if args.json {
            if let Ok(line) = serde_json::to_string(&e.event) {
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        }
        view.event(&e.event);
    }
    if events.missed() > 0 {
        eprintln!(
            "warning: {} events were not shown (the display fell behind); the audit log has every unit",
            events.missed()
        );
    }
    let summary = handle.wait();
    view.finish();
    if args.json {
        if let Ok(line) =
            serde_json::to_string(&serde_json::json!({"event": "run-finished", "summary": summary}))
        {
            let _ = writeln!(w, "{line}");
        }
    } else {
        w.push_str(&summary_table(&summary));
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

/// Ctrl-C asks the run to finish its units in flight; a second one exits.
fn stop_on_ctrl_c(handle: &RunHandle) {
    let stop = handle.stopper();
    let watch = move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot watch for Ctrl-C")?;
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: finishing the units in flight (Ctrl-C again to force)");
                stop.stop();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        Ok(())
    };
    let _ = std::thread::Builder::new()
        .name("ctrl-c".to_owned())
        .spawn(move || {
            if let Err(e) = watch() {
                eprintln!("warning: {e}");
            }
        });
}
