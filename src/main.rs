//! The `flashgate` command line: argument parsing and rendering over the
//! library's station API (see `cmd/`).

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use cmd::appliance::ApplianceCmd;
use cmd::audit::AuditCmd;
use cmd::fixtures::FixturesCmd;
use cmd::fleet::FleetCmd;
use cmd::job::{JobCmd, OemCmd};
use cmd::sim::SimCmd;

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
    Run(cmd::run::RunArgs),
    /// CM: the named fixture sets `run --fixtures` takes.
    #[command(subcommand)]
    Fixtures(FixturesCmd),
    /// Export, verify and prove the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Serve a simulated chip on a pseudo-terminal (prints the pty path first).
    #[command(subcommand)]
    Sim(SimCmd),
    /// CM: the station as a network service (mutual TLS, roles, API, console).
    Serve(cmd::serve::ServeArgs),
    /// OEM: every appliance's bundles in one PostgreSQL store, cross-checked and searchable.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// The whole story on fresh simulated parts: OEM keys, enrollment, job, import, a run.
    Demo(cmd::demo::DemoArgs),
}

fn run(cli: Cli, w: &mut String) -> Result<u8> {
    let config = &cli.config;
    match cli.command {
        Command::Appliance(c) => cmd::appliance::run(config, c, w),
        Command::Oem(c) => cmd::job::oem(c, w),
        Command::Job(c) => cmd::job::run(config, c, w),
        Command::Run(args) => cmd::run::run(config, &args, w),
        Command::Fixtures(c) => cmd::fixtures::run(config, c, w),
        Command::Audit(c) => cmd::audit::run(config, c, w),
        Command::Sim(c) => cmd::sim::run(c),
        Command::Serve(args) => cmd::serve::run(config, &args),
        Command::Fleet(c) => cmd::fleet::run(c, w),
        Command::Demo(args) => cmd::demo::run(&args),
    }
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
            eprintln!("error: {}", cmd::sentence(&e));
            ExitCode::from(2)
        }
    }
}
