//! Starting a run on a named fixture set: one station run per driver of
//! the set, each with its first channel's number in the set.

use flashgate_core::station::{JobId, RunHandle, StartOptions, Station};

use crate::error::ApiError;

pub(crate) fn start(
    station: &Station,
    jobs: &[JobId],
    fixtures: &str,
    options: StartOptions,
) -> Result<Vec<(RunHandle, u32)>, ApiError> {
    let set = station.fixture_set(fixtures)?;
    Ok(station.start_line(jobs, &set, options)?.into_runs())
}
