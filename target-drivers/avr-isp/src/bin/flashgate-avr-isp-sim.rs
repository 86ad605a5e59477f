//! Serves a simulated ArduinoISP and AVR on pseudo-terminals (development twin of
//! `flashgate sim avr-isp`).
//!
//! ```text
//! flashgate-avr-isp-sim [--part m328p] [--state FILE] [--options avr:timing=fast,...]
//!                       [--fast] [--link PATH] [--agent-link PATH]
//! ```
//!
//! Prints the programmer's pty path, then the agent's, one per line; stops on SIGTERM or
//! SIGINT, writing the state file if one was given.

use std::path::PathBuf;
use std::process::ExitCode;

use flashgate_avr_isp::{serve_cli, ServeOptions};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flashgate-avr-isp-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut part = "m328p".to_owned();
    let mut state = None;
    let mut options = ServeOptions::default();
    let mut args = std::env::args().skip(1);
    let value = |args: &mut dyn Iterator<Item = String>, flag: &str| {
        args.next().ok_or_else(|| format!("{flag} needs a value"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--part" => part = value(&mut args, "--part")?,
            "--state" => state = Some(PathBuf::from(value(&mut args, "--state")?)),
            "--options" => {
                let keep = (
                    options.realtime,
                    options.link.clone(),
                    options.agent_link.clone(),
                );
                options = ServeOptions::from_options(&value(&mut args, "--options")?)?;
                (options.realtime, options.link, options.agent_link) = keep;
            }
            "--fast" => {
                options.sim.timing = flashgate_avr_isp::sim::AvrTiming::fast();
                options.realtime = false;
            }
            "--link" => options.link = Some(PathBuf::from(value(&mut args, "--link")?)),
            "--agent-link" => {
                options.agent_link = Some(PathBuf::from(value(&mut args, "--agent-link")?))
            }
            "-h" | "--help" => {
                println!(
                    "usage: flashgate-avr-isp-sim [--part m328p|m2560] [--state FILE] [--options avr:KEY=VALUE,...] [--fast] [--link PATH] [--agent-link PATH]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}; see --help").into()),
        }
    }
    serve_cli(&part, state, options)?;
    Ok(())
}
