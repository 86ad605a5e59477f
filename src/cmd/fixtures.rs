//! `flashgate fixtures`: the named fixture sets a run can take.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use clap::Subcommand;
use flashgate::station::{Access, FixtureOrigin};

#[derive(Subcommand)]
pub enum FixturesCmd {
    /// Every fixture set: its name, where it is defined and its channels.
    List,
}

pub fn run(config: &Path, cmd: FixturesCmd, w: &mut String) -> Result<u8> {
    match cmd {
        FixturesCmd::List => {
            let station = super::open(config, Access::Read)?;
            let sets = station.fixture_sets()?;
            if sets.is_empty() {
                let _ = writeln!(
                    w,
                    "no fixture sets; add a [fixtures.NAME] table to the appliance config"
                );
            }
            for set in sets {
                let origin = match set.origin {
                    FixtureOrigin::Config => "config",
                    FixtureOrigin::Station => "station",
                };
                let _ = writeln!(
                    w,
                    "{} ({origin}): {} channel(s), {}",
                    set.name,
                    set.channels.len(),
                    set.drivers().join(", ")
                );
                // Runs of one spec on one line: a bench of 8 is one line.
                let mut at = 0;
                while at < set.channels.len() {
                    let spec = &set.channels[at];
                    let end = set.channels[at..]
                        .iter()
                        .position(|c| c != spec)
                        .map_or(set.channels.len(), |n| at + n);
                    let channels = if end - at > 1 {
                        format!("ch{at}-ch{}", end - 1)
                    } else {
                        format!("ch{at}")
                    };
                    let _ = writeln!(w, "  {channels:<10} {spec}");
                    at = end;
                }
            }
            Ok(0)
        }
    }
}
