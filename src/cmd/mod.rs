//! The commands: each parses its arguments, calls the station (or the OEM
//! side of the library) and renders what comes back.

pub mod appliance;
pub mod audit;
pub mod demo;
pub mod fixtures;
pub mod fleet;
pub mod job;
pub mod run;
pub mod run_view;
pub mod serve;
pub mod sim;

use std::path::Path;

use anyhow::Result;
use flashgate::appliance::ApplianceConfig;
use flashgate::station::{Access, Station};

/// Now, in Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The appliance configuration at `path`.
pub fn load_config(path: &Path) -> Result<ApplianceConfig> {
    Ok(ApplianceConfig::load(path)?)
}

fn say_recovered(station: &Station) {
    for line in station.recovered() {
        eprintln!("recovered: {line}");
    }
}

/// Opens the station, saying what recovery did.
pub fn open(config: &Path, access: Access) -> Result<Station> {
    let station = Station::open(load_config(config)?, access)?;
    say_recovered(&station);
    Ok(station)
}

/// Opens the station to reset a damaged log.
pub fn open_for_reset(config: &Path) -> Result<Station> {
    let station = Station::open_for_reset(load_config(config)?)?;
    say_recovered(&station);
    Ok(station)
}

/// An error as one sentence: the outermost context, then the causes that
/// the message before does not already quote.
pub fn sentence(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
