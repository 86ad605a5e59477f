//! `flashgate run`: program units on the fixtures of a target spec, or on
//! a named fixture set with one job per driver.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flashgate::pipeline::{RunEvent, RunSummary, StopHandle};
use flashgate::station::{Access, FixtureSet, JobId, RunHandle, StartOptions, Station};

use super::run_view::{on_set, summary_table, ProgressView, ViewJob};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Job id (see `flashgate job list`). With --fixtures, repeat it: one
    /// job per driver of the set.
    #[arg(long, required = true)]
    pub job: Vec<String>,
    /// A named fixture set (see `flashgate fixtures list`) instead of
    /// --target and --channels.
    #[arg(long, conflicts_with_all = ["target", "channels"])]
    pub fixtures: Option<String>,
    /// Channels programming at once, on the one `--target` (default 1).
    #[arg(long)]
    pub channels: Option<u32>,
    /// Target: `sim[:key=value,...]` (see docs/EVENTS.md for the sim options).
    /// Repeat it for a gang of programmers of one driver, one channel each.
    #[arg(long, default_values_t = ["sim".to_owned()])]
    pub target: Vec<String>,
    /// Boards to take in all (default: until the fixtures or the quota run
    /// out); with --fixtures, for each job.
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
/// not one board could be reached; over several jobs, the worst of them.
pub fn run(config: &Path, args: &RunArgs, w: &mut String) -> Result<u8> {
    let jobs = args
        .job
        .iter()
        .map(|j| j.parse())
        .collect::<Result<Vec<JobId>, _>>()?;
    let options = StartOptions::new(args.operator.clone())
        .units(args.units)
        .block(args.block);
    let Some(name) = &args.fixtures else {
        let &[job] = jobs.as_slice() else {
            anyhow::bail!(
                "--job is given {} times, and several jobs run together only on a fixture set: add --fixtures NAME (see `flashgate fixtures list`), or give one --job",
                jobs.len()
            );
        };
        let fixtures = match (args.target.as_slice(), args.channels) {
            ([one], channels) => FixtureSet::parse(one, channels.unwrap_or(1))?,
            (_, Some(_)) => {
                anyhow::bail!("with several --target, each is one channel; leave out --channels")
            }
            (gang, None) => FixtureSet::gang(gang)?,
        };
        // Held until the run ends: no other process changes the state under it.
        let station = super::open(
            config,
            Access::Write {
                purpose: format!("job {job} is being run"),
            },
        )?;
        let handle = station.start_run(&job, fixtures, options)?;
        let runs = [(handle, 0)];
        follow(&station, &runs, args.json)?;
        let [(handle, _)] = runs;
        let summaries = vec![(job, handle.wait())];
        return Ok(finish(&station, &summaries, args.json, w));
    };
    let station = super::open(
        config,
        Access::Write {
            purpose: format!("fixture set {name} is being run"),
        },
    )?;
    let set = station.fixture_set(name)?;
    let line = station.start_line(&jobs, &set, options)?;
    let runs: Vec<(&RunHandle, u32)> = line
        .runs()
        .iter()
        .enumerate()
        .map(|(i, r)| (r, line.channel_offset(i)))
        .collect();
    follow_refs(&station, &runs, args.json)?;
    let summaries = line.wait();
    Ok(finish(&station, &summaries, args.json, w))
}

fn follow(station: &Station, runs: &[(RunHandle, u32)], json: bool) -> Result<()> {
    let refs: Vec<(&RunHandle, u32)> = runs.iter().map(|(r, o)| (r, *o)).collect();
    follow_refs(station, &refs, json)
}

/// The event as written with `--json`, with `job` (hex, nothing to
/// escape) as its last member when several jobs run.
fn json_line(e: &RunEvent, job: Option<&JobId>) -> Option<String> {
    let mut line = serde_json::to_string(e).ok()?;
    if let Some(job) = job {
        if line.pop() != Some('}') {
            return None;
        }
        let _ = write!(line, ",\"job\":\"{job}\"}}");
    }
    Some(line)
}

/// Shows the runs' events as they come (JSON lines or progress lines),
/// with the channels numbered across the whole fixture set, until every
/// run has ended.
fn follow_refs(station: &Station, runs: &[(&RunHandle, u32)], json: bool) -> Result<()> {
    let several = runs.len() > 1;
    for (r, _) in runs {
        if let Some(line) = r.recovered() {
            eprintln!("recovered: {line}");
        }
    }
    stop_on_ctrl_c(runs.iter().map(|(r, _)| r.stopper()).collect());
    let view = ProgressView::for_jobs(
        &runs
            .iter()
            .map(|(r, _)| {
                let snapshot = r.snapshot();
                ViewJob {
                    label: several.then(|| format!("job {}", short(&r.job()))),
                    channels: u32::try_from(snapshot.channels.len()).unwrap_or(u32::MAX),
                    quota: snapshot.quota,
                    used_before: r.used_before(),
                    cert_dir: Some(cert_dir(station, &r.job())),
                }
            })
            .collect::<Vec<_>>(),
        !json,
    );
    // One reader per run; the events of all of them, as they happen.
    let (tx, rx) = std::sync::mpsc::channel::<(usize, RunEvent)>();
    let mut readers = Vec::with_capacity(runs.len());
    for (i, (r, _)) in runs.iter().enumerate() {
        let mut events = r.events();
        let tx = tx.clone();
        readers.push(
            std::thread::Builder::new()
                .name(format!("events-{i}"))
                .spawn(move || {
                    for e in events.by_ref() {
                        if tx.send((i, e.event)).is_err() {
                            break;
                        }
                    }
                    events.missed()
                })
                .context("cannot follow the run's events")?,
        );
    }
    drop(tx);
    for (i, e) in rx {
        let (r, offset) = runs[i];
        let e = on_set(e, offset);
        if json {
            if let Some(line) = json_line(&e, several.then(|| r.job()).as_ref()) {
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        }
        view.event_of(i, &e);
    }
    let missed: u64 = readers.into_iter().map(|r| r.join().unwrap_or(0)).sum();
    if missed > 0 {
        eprintln!(
            "warning: {missed} events were not shown (the display fell behind); the audit log has every unit"
        );
    }
    view.finish();
    Ok(())
}

/// The first 8 hex digits of a job id, for a progress line.
fn short(job: &JobId) -> String {
    job.to_string().chars().take(8).collect()
}

/// PEM copies for people, beside the job (the DER originals are the audit's).
fn cert_dir(station: &Station, job: &JobId) -> PathBuf {
    station.appliance().job_dir(&job.to_string()).join("certs")
}

/// Writes one summary per job; the exit code is the worst job's.
fn finish(station: &Station, summaries: &[(JobId, RunSummary)], json: bool, w: &mut String) -> u8 {
    let several = summaries.len() > 1;
    let mut code = 0;
    for (i, (job, summary)) in summaries.iter().enumerate() {
        if json {
            let line = if several {
                serde_json::json!({"event": "run-finished", "job": job.to_string(), "summary": summary})
            } else {
                serde_json::json!({"event": "run-finished", "summary": summary})
            };
            if let Ok(line) = serde_json::to_string(&line) {
                let _ = writeln!(w, "{line}");
            }
        } else {
            if several {
                let _ = writeln!(w, "{}job {job}:", if i > 0 { "\n" } else { "" });
            }
            w.push_str(&summary_table(summary));
            let _ = writeln!(w, "  certificates: {}", cert_dir(station, job).display());
        }
        if summary.passed + summary.failed() == 0 && summary.fixtures_failed > 0 {
            // Not one board could be reached: the run did nothing.
            eprintln!(
                "error: no board could be reached{}: {}",
                if several {
                    format!(" for job {job}")
                } else {
                    String::new()
                },
                summary
                    .fixture_error
                    .as_deref()
                    .unwrap_or("the fixture failed")
            );
            code = 2;
        } else if summary.failed() > 0 {
            code = code.max(1);
        }
    }
    code
}

/// Ctrl-C asks the runs to finish their units in flight; a second one exits.
fn stop_on_ctrl_c(stops: Vec<StopHandle>) {
    let watch = move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot watch for Ctrl-C")?;
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: finishing the units in flight (Ctrl-C again to force)");
                for stop in &stops {
                    stop.stop();
                }
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
